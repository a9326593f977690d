//! A synthetic GP estate for a South-East-London-like region.
//!
//! Practices are generated once (a few hundred small records); patients are
//! generated on demand from `(seed, global index)`, so a region of millions
//! streams in bounded memory and every call yields the same rows. The rows
//! carry the defects a real extract has: missing and invalid mobiles, SMS
//! opt-outs, deceased patients, invalid NHS numbers, missing birth dates,
//! patients registered at two practices, exact duplicate rows and
//! households sharing one mobile.
//!
//! Row layout: practice `p` has `list_size` rows; row `i` has the global
//! index `offset(p) + i`. Most rows are the practice's own patient for that
//! index; about 0.5% are a copy of another practice's patient (a dual
//! registration) and a few are an exact copy of an earlier row of the same
//! list. The NHS number and the mobile are bijections of the global index, so
//! they are unique per person, and the NHS number maps back to the person
//! (which is how write-back knows whether a practice has a patient).

mod identifiers;
mod people;
mod random;
mod region;
#[cfg(test)]
mod tests;
mod words;

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use hub_core::domain::{ContactPreference, GpPatient, NhsNumber, OdsCode, Personal};
use hub_core::ports::{
    GpConnection, GpConnector, GpError, Practice, WritebackEntry, WritebackResult,
};
pub(crate) use identifiers::{global_index_of, nhs_number_for};
use identifiers::{invalid_nhs_number, mobile};
use people::{address_lines, birth_date, postcode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use random::{date, hash, pick, ppm, random_date};
use region::{
    list_sizes, nth_ods, pick_borough, pick_districts, pick_without_dsa, practice_name, BOROUGHS,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use words::{FAMILY_NAMES, GIVEN_NAMES};

/// The size and seed of a synthetic region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpec {
    pub practices: usize,
    /// Registered list rows across the region; the practices' list sizes
    /// add up to exactly this.
    pub patients: u64,
    pub seed: u64,
}

impl RegionSpec {
    /// The reference region: about 200 practices and 2,000,000 patients.
    pub fn south_east_london(seed: u64) -> Self {
        Self {
            practices: 200,
            patients: 2_000_000,
            seed,
        }
    }
}

/// Most patients the NHS number and mobile bijections can number uniquely.
pub const MAX_PATIENTS: u64 = 90_000_000;

/// The extract stream yields to the runtime after this many records.
const YIELD_EVERY: u64 = 500;

// Rates, in parts per million.
const CROSS_PPM: u64 = 5_000; // also registered at a second practice
const INTERNAL_DUP_PPM: u64 = 500; // exact duplicate row in the same list
const HOUSEHOLD_PPM: u64 = 30_000; // shares the mobile of an earlier patient
const DECEASED_PPM: u32 = 5_000;
const INVALID_NHS_PPM: u32 = 3_000;
const NO_BIRTH_DATE_PPM: u32 = 2_000;
const NO_TELEPHONE_PPM: u32 = 30_000;
const SMS_PREF_PPM: u32 = 150_000;
const LETTER_PREF_PPM: u32 = 20_000;

// Hash tags, so each decision has its own stream.
const TAG_CROSS: u64 = 0x01;
const TAG_CROSS_SOURCE: u64 = 0x02;
const TAG_DUP: u64 = 0x03;
const TAG_HOUSEHOLD: u64 = 0x04;
const TAG_PERSON: u64 = 0x05;
const TAG_PRACTICES: u64 = 0x06;

/// The simulated GP estate: a practice registry, every practice's list on
/// demand, and a [`GpConnector`] with fault injection. Cheap to clone (the
/// clones share state).
#[derive(Clone)]
pub struct GpEstate {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GpEstate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpEstate")
            .field("practices", &self.inner.practices.len())
            .field("patients", &self.inner.total)
            .finish()
    }
}

struct PracticeInfo {
    practice: Practice,
    /// Index into [`BOROUGHS`].
    borough: usize,
    /// The practice's postcode districts; the first is its main one.
    districts: Vec<&'static str>,
    offset: u64,
}

#[derive(Default)]
struct Faults {
    extract_calls: u64,
    down: Option<Down>,
    writeback_failures: u32,
}

#[derive(Clone, Copy)]
enum Down {
    Always,
    Next(u32),
}

struct Inner {
    seed: u64,
    reference_date: NaiveDate,
    total: u64,
    practices: Vec<PracticeInfo>,
    by_ods: HashMap<OdsCode, usize>,
    /// Copy rows of dual registrations: global index of the row -> global
    /// index of the patient it copies (from another practice).
    cross: HashMap<u64, u64>,
    /// (practice, global index of a patient of another practice) for every
    /// dual registration, to answer "does this practice have this patient".
    cross_members: HashSet<(usize, u64)>,
    faults: Mutex<HashMap<OdsCode, Faults>>,
    /// Recorded write-backs: reference -> practice index.
    /// Write-backs recorded: the reference's hash and the practice index
    /// (a few bytes each, whatever the cohort).
    writebacks: Mutex<HashMap<u64, u32>>,
    writeback_repeats: AtomicU64,
}

/// Where a row's person comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Own,
    Copy(u64),
}

/// One person as generated, before wrapping in [`GpPatient`].
struct Person {
    nhs_number: String,
    given_name: String,
    family_name: String,
    address_lines: Vec<String>,
    postcode: String,
    birth_date: Option<NaiveDate>,
    mobile: Option<String>,
    deceased: bool,
    contact_preference: ContactPreference,
}

impl Person {
    fn into_patient(self) -> GpPatient {
        GpPatient {
            nhs_number: Personal::new(self.nhs_number),
            given_name: Personal::new(self.given_name),
            family_name: Personal::new(self.family_name),
            address_lines: Personal::new(self.address_lines),
            postcode: Personal::new(self.postcode),
            birth_date: Personal::new(self.birth_date),
            birth_date_precision: hub_core::domain::DatePrecision::Day,
            mobile: Personal::new(self.mobile),
            deceased: self.deceased,
            contact_preference: self.contact_preference,
            active: true,
        }
    }
}

impl GpEstate {
    /// Generates the region with birth dates relative to today.
    ///
    /// # Panics
    /// If `spec.patients` exceeds [`MAX_PATIENTS`].
    pub fn generate(spec: RegionSpec) -> Self {
        Self::generate_as_of(spec, Utc::now().date_naive())
    }

    /// Generates the region with birth dates relative to `today` (fully
    /// deterministic: same spec and date, same estate).
    ///
    /// # Panics
    /// If `spec.patients` exceeds [`MAX_PATIENTS`].
    pub fn generate_as_of(spec: RegionSpec, today: NaiveDate) -> Self {
        assert!(
            spec.patients <= MAX_PATIENTS,
            "the simulated estate numbers at most {MAX_PATIENTS} patients"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(hash(spec.seed, TAG_PRACTICES, 0, 0));
        let sizes = list_sizes(&mut rng, spec.practices, spec.patients);
        let without_dsa = pick_without_dsa(&mut rng, spec.practices);
        let mut names = HashSet::new();
        let mut practices = Vec::with_capacity(spec.practices);
        let mut by_ods = HashMap::with_capacity(spec.practices);
        let mut offset = 0;
        for (k, size) in sizes.into_iter().enumerate() {
            let ods = nth_ods(k);
            let borough = pick_borough(&mut rng);
            let districts = pick_districts(&mut rng, borough);
            let name = practice_name(&mut rng, borough, &mut names);
            let dsa_signed = if without_dsa.contains(&k) {
                None
            } else {
                Some(random_date(&mut rng, date(2023, 1, 9), 900))
            };
            let practice = Practice {
                notice_email: format!("practice-{}@nhs.invalid", ods.as_str().to_lowercase()),
                ods: ods.clone(),
                name,
                dsa_signed,
                connection: GpConnection::Simulated,
                list_size: size,
            };
            by_ods.insert(ods, k);
            practices.push(PracticeInfo {
                practice,
                borough,
                districts,
                offset,
            });
            offset += size;
        }
        let mut inner = Inner {
            seed: spec.seed,
            reference_date: today,
            total: offset,
            practices,
            by_ods,
            cross: HashMap::new(),
            cross_members: HashSet::new(),
            faults: Mutex::new(HashMap::new()),
            writebacks: Mutex::new(HashMap::new()),
            writeback_repeats: AtomicU64::new(0),
        };
        inner.place_dual_registrations();
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The practice registry (no patient data).
    pub fn practices(&self) -> Vec<Practice> {
        self.inner
            .practices
            .iter()
            .map(|info| info.practice.clone())
            .collect()
    }

    pub fn practice(&self, ods: &OdsCode) -> Option<Practice> {
        let index = self.inner.by_ods.get(ods)?;
        Some(self.inner.practices[*index].practice.clone())
    }

    /// The practice's postcode districts (its main one first).
    pub fn districts(&self, ods: &OdsCode) -> Vec<String> {
        self.inner
            .by_ods
            .get(ods)
            .map(|index| {
                self.inner.practices[*index]
                    .districts
                    .iter()
                    .map(|d| d.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The practice's home borough.
    pub fn borough(&self, ods: &OdsCode) -> Option<&'static str> {
        let index = self.inner.by_ods.get(ods)?;
        Some(BOROUGHS[self.inner.practices[*index].borough].name)
    }

    /// Rows across the region (the sum of the list sizes).
    pub fn total_patients(&self) -> u64 {
        self.inner.total
    }

    /// The date birth dates are generated against.
    pub fn reference_date(&self) -> NaiveDate {
        self.inner.reference_date
    }

    /// Rows that are a second registration of a patient of another practice.
    pub fn dual_registrations(&self) -> usize {
        self.inner.cross.len()
    }

    /// The practice's registered list, generated on demand; the same on
    /// every call. Empty for an unknown practice.
    pub fn patients(&self, ods: &OdsCode) -> PracticePatients {
        let (practice, end) = match self.inner.by_ods.get(ods) {
            Some(index) => (*index, self.inner.practices[*index].practice.list_size),
            None => (0, 0),
        };
        PracticePatients {
            inner: self.inner.clone(),
            practice,
            next: 0,
            end,
        }
    }

    /// One row of a practice's list.
    pub fn patient(&self, ods: &OdsCode, index: u64) -> Option<GpPatient> {
        let practice = *self.inner.by_ods.get(ods)?;
        (index < self.inner.practices[practice].practice.list_size)
            .then(|| self.inner.row(practice, index))
    }

    /// Every practice's list, practice after practice.
    pub fn all_patients(&self) -> RegionPatients {
        RegionPatients {
            inner: self.inner.clone(),
            practice: 0,
            next: 0,
        }
    }

    /// Whether the practice's list holds a patient with this NHS number
    /// (what write-back checks).
    pub fn has_patient(&self, ods: &OdsCode, nhs_number: &NhsNumber) -> bool {
        self.inner
            .by_ods
            .get(ods)
            .is_some_and(|index| self.inner.practice_has(*index, nhs_number))
    }

    // ----- fault injection -----

    /// The practice's next `failures` extractions fail with
    /// `GpError::Unavailable`; `None` fails every one until
    /// [`GpEstate::clear_down`]. `Some(0)` clears.
    pub fn set_down(&self, ods: &OdsCode, failures: Option<u32>) {
        let mut faults = lock(&self.inner.faults);
        faults.entry(ods.clone()).or_default().down = match failures {
            None => Some(Down::Always),
            Some(0) => None,
            Some(n) => Some(Down::Next(n)),
        };
    }

    pub fn clear_down(&self, ods: &OdsCode) {
        self.set_down(ods, Some(0));
    }

    /// The practice's next `n` write-back calls fail with
    /// `GpError::Unavailable` (nothing recorded). `0` clears.
    pub fn set_writeback_failures(&self, ods: &OdsCode, n: u32) {
        lock(&self.inner.faults)
            .entry(ods.clone())
            .or_default()
            .writeback_failures = n;
    }

    // ----- inspection -----

    /// Calls of `extract` for the practice, failed ones included.
    pub fn extract_calls(&self, ods: &OdsCode) -> u64 {
        lock(&self.inner.faults)
            .get(ods)
            .map_or(0, |faults| faults.extract_calls)
    }

    /// Distinct write-backs recorded for the practice.
    pub fn writebacks(&self, ods: &OdsCode) -> usize {
        let Some(index) = self.inner.by_ods.get(ods) else {
            return 0;
        };
        lock(&self.inner.writebacks)
            .values()
            .filter(|practice| **practice as usize == *index)
            .count()
    }

    /// Whether a write-back with this reference was recorded.
    pub fn has_writeback(&self, reference: &str) -> bool {
        lock(&self.inner.writebacks).contains_key(&reference_key(reference))
    }

    /// Write-back entries whose reference was already recorded (answered
    /// `Recorded`, not recorded twice).
    pub fn writeback_repeats(&self) -> u64 {
        self.inner.writeback_repeats.load(Ordering::Relaxed)
    }
}

/// A practice's list, generated row by row.
pub struct PracticePatients {
    inner: Arc<Inner>,
    practice: usize,
    next: u64,
    end: u64,
}

impl Iterator for PracticePatients {
    type Item = GpPatient;

    fn next(&mut self) -> Option<GpPatient> {
        if self.next >= self.end {
            return None;
        }
        let row = self.inner.row(self.practice, self.next);
        self.next += 1;
        Some(row)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.end - self.next).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl ExactSizeIterator for PracticePatients {}

/// Every practice's list in registry order, generated row by row.
pub struct RegionPatients {
    inner: Arc<Inner>,
    practice: usize,
    next: u64,
}

impl Iterator for RegionPatients {
    type Item = GpPatient;

    fn next(&mut self) -> Option<GpPatient> {
        loop {
            let info = self.inner.practices.get(self.practice)?;
            if self.next < info.practice.list_size {
                let row = self.inner.row(self.practice, self.next);
                self.next += 1;
                return Some(row);
            }
            self.practice += 1;
            self.next = 0;
        }
    }
}

impl Inner {
    fn slot_hash(&self, tag: u64, g: u64) -> u64 {
        hash(self.seed, tag, g, 0)
    }

    fn cross_flag(&self, g: u64) -> bool {
        self.slot_hash(TAG_CROSS, g) % 1_000_000 < CROSS_PPM
    }

    fn dup_flag(&self, g: u64) -> bool {
        self.slot_hash(TAG_DUP, g) % 1_000_000 < INTERNAL_DUP_PPM
    }

    fn household_flag(&self, g: u64) -> bool {
        self.slot_hash(TAG_HOUSEHOLD, g) % 1_000_000 < HOUSEHOLD_PPM
    }

    /// Chooses, once, which patient each dual-registration row copies. A
    /// source is a row that is certainly its own patient: not flagged as a
    /// copy of any kind, in another practice, and not used twice.
    fn place_dual_registrations(&mut self) {
        if self.practices.len() < 2 {
            return;
        }
        let flagged: Vec<u64> = (0..self.total).filter(|g| self.cross_flag(*g)).collect();
        let flagged_set: HashSet<u64> = flagged.iter().copied().collect();
        let mut used = HashSet::new();
        for g in flagged {
            let Some((p, _)) = self.locate(g) else {
                continue;
            };
            let mut rng = ChaCha8Rng::seed_from_u64(self.slot_hash(TAG_CROSS_SOURCE, g));
            for _ in 0..32 {
                let q = rng.gen_range(0..self.practices.len());
                let size = self.practices[q].practice.list_size;
                if q == p || size == 0 {
                    continue;
                }
                let source = self.practices[q].offset + rng.gen_range(0..size);
                if flagged_set.contains(&source) || self.dup_flag(source) || used.contains(&source)
                {
                    continue;
                }
                used.insert(source);
                self.cross.insert(g, source);
                self.cross_members.insert((p, source));
                break;
            }
        }
    }

    /// (practice, local index) of a global index.
    fn locate(&self, g: u64) -> Option<(usize, u64)> {
        if g >= self.total {
            return None;
        }
        let p = self
            .practices
            .partition_point(|info| info.offset <= g)
            .checked_sub(1)?;
        // Skip empty practices that share the offset.
        let info = &self.practices[p];
        (g < info.offset + info.practice.list_size).then_some((p, g - info.offset))
    }

    fn slot(&self, p: usize, i: u64) -> Slot {
        let offset = self.practices[p].offset;
        let g = offset + i;
        if let Some(source) = self.cross.get(&g) {
            return Slot::Copy(*source);
        }
        if i > 0 && self.dup_flag(g) {
            let back = 1 + self.slot_hash(TAG_DUP, g) / 1_000_000 % i.min(20);
            let source = g - back;
            if !self.cross.contains_key(&source) && !self.dup_flag(source) {
                return Slot::Copy(source);
            }
        }
        Slot::Own
    }

    fn row(&self, p: usize, i: u64) -> GpPatient {
        match self.slot(p, i) {
            Slot::Own => self.own(p, i),
            Slot::Copy(source) => match self.locate(source) {
                Some((q, j)) => self.own(q, j),
                None => self.own(p, i),
            },
        }
    }

    /// The practice's own patient at row `i`, with its household applied.
    fn own(&self, p: usize, i: u64) -> GpPatient {
        let g = self.practices[p].offset + i;
        let mut person = self.person(p, g);
        if let Some(head) = self.household_head(p, i) {
            let head = self.person(p, head);
            person.family_name = head.family_name;
            person.address_lines = head.address_lines;
            person.postcode = head.postcode;
            person.mobile = head.mobile;
        }
        person.into_patient()
    }

    /// The earlier patient of the same list whose household (surname,
    /// address, mobile) a household member shares.
    fn household_head(&self, p: usize, i: u64) -> Option<u64> {
        let offset = self.practices[p].offset;
        if !self.household_flag(offset + i) {
            return None;
        }
        (1..=8u64).filter(|step| *step <= i).find_map(|step| {
            let j = i - step;
            let head = offset + j;
            (self.slot(p, j) == Slot::Own && !self.household_flag(head)).then_some(head)
        })
    }

    /// The person behind global index `g`, registered at practice `p`.
    fn person(&self, p: usize, g: u64) -> Person {
        let info = &self.practices[p];
        let mut rng = ChaCha8Rng::seed_from_u64(hash(self.seed, TAG_PERSON, g, 0));
        let given_name = pick(&mut rng, GIVEN_NAMES).to_string();
        let family_name = pick(&mut rng, FAMILY_NAMES).to_string();
        let birth_date = if ppm(&mut rng) < NO_BIRTH_DATE_PPM {
            None
        } else {
            Some(birth_date(&mut rng, self.reference_date))
        };
        let address_lines = address_lines(&mut rng, info.borough);
        let postcode = postcode(&mut rng, &info.districts);
        let mobile = mobile(&mut rng, g);
        let deceased = ppm(&mut rng) < DECEASED_PPM;
        let contact_preference = match ppm(&mut rng) {
            r if r < NO_TELEPHONE_PPM => ContactPreference::NoTelephoneContact,
            r if r < NO_TELEPHONE_PPM + SMS_PREF_PPM => ContactPreference::Sms,
            r if r < NO_TELEPHONE_PPM + SMS_PREF_PPM + LETTER_PREF_PPM => ContactPreference::Letter,
            _ => ContactPreference::NotRecorded,
        };
        let nhs_number = if ppm(&mut rng) < INVALID_NHS_PPM {
            invalid_nhs_number(&mut rng, g)
        } else {
            nhs_number_for(g)
        };
        Person {
            nhs_number,
            given_name,
            family_name,
            address_lines,
            postcode,
            birth_date,
            mobile,
            deceased,
            contact_preference,
        }
    }

    fn practice_has(&self, p: usize, nhs_number: &NhsNumber) -> bool {
        let Some(g) = global_index_of(nhs_number.as_str()) else {
            return false;
        };
        let Some((q, j)) = self.locate(g) else {
            return false;
        };
        if self.slot(q, j) != Slot::Own {
            // That row holds a copy: the person numbered g does not exist.
            return false;
        }
        let listed = q == p || self.cross_members.contains(&(p, g));
        // The person's record may carry an invalid variant of the number.
        listed && self.person(q, g).nhs_number == nhs_number.as_str()
    }

    fn index_of(&self, ods: &OdsCode) -> Result<usize, GpError> {
        self.by_ods.get(ods).copied().ok_or_else(|| {
            GpError::Misconfigured(format!("practice {ods} is not in the simulated estate"))
        })
    }
}

/// A stable 64-bit key for a write-back reference.
fn reference_key(reference: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    reference.hash(&mut hasher);
    hasher.finish()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl GpConnector for GpEstate {
    async fn extract(
        &self,
        practice: &Practice,
    ) -> Result<BoxStream<'static, Result<GpPatient, GpError>>, GpError> {
        let index = self.inner.index_of(&practice.ods)?;
        {
            let mut faults = lock(&self.inner.faults);
            let entry = faults.entry(practice.ods.clone()).or_default();
            entry.extract_calls += 1;
            match entry.down {
                Some(Down::Always) => {
                    return Err(GpError::Unavailable(format!(
                        "simulated outage of {}",
                        practice.ods
                    )))
                }
                Some(Down::Next(n)) => {
                    entry.down = (n > 1).then(|| Down::Next(n - 1));
                    return Err(GpError::Unavailable(format!(
                        "simulated outage of {}",
                        practice.ods
                    )));
                }
                None => {}
            }
        }
        let rows = PracticePatients {
            inner: self.inner.clone(),
            practice: index,
            next: 0,
            end: self.inner.practices[index].practice.list_size,
        };
        let stream = stream::unfold((rows, 0u64), |(mut rows, read)| async move {
            if read > 0 && read % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            let patient = rows.next()?;
            Some((Ok(patient), (rows, read + 1)))
        });
        Ok(stream.boxed())
    }

    async fn write_back(
        &self,
        practice: &Practice,
        entries: &[WritebackEntry],
    ) -> Result<Vec<WritebackResult>, GpError> {
        let index = self.inner.index_of(&practice.ods)?;
        {
            let mut faults = lock(&self.inner.faults);
            let entry = faults.entry(practice.ods.clone()).or_default();
            if entry.writeback_failures > 0 {
                entry.writeback_failures -= 1;
                return Err(GpError::Unavailable(format!(
                    "simulated write-back failure at {}",
                    practice.ods
                )));
            }
        }
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            if !self.inner.practice_has(index, &entry.nhs_number) {
                results.push(WritebackResult::Rejected);
                continue;
            }
            let mut recorded = lock(&self.inner.writebacks);
            let key = reference_key(&entry.reference);
            match recorded.entry(key) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    self.inner.writeback_repeats.fetch_add(1, Ordering::Relaxed);
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(index as u32);
                }
            }
            results.push(WritebackResult::Recorded);
        }
        Ok(results)
    }
}
