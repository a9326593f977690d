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

use async_trait::async_trait;
use chrono::{Days, NaiveDate, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use hub_core::domain::{check_digit, ContactPreference, GpPatient, NhsNumber, OdsCode, Personal};
use hub_core::ports::{
    GpConnection, GpConnector, GpError, Practice, WritebackEntry, WritebackResult,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
const NO_MOBILE_PPM: u32 = 100_000;
const INVALID_MOBILE_PPM: u32 = 10_000;
const REJECTED_MOBILE_PPM: u32 = 500; // 07700 900999: the gateway rejects it
const DECEASED_PPM: u32 = 5_000;
const INVALID_NHS_PPM: u32 = 3_000;
const NO_BIRTH_DATE_PPM: u32 = 2_000;
const NO_TELEPHONE_PPM: u32 = 30_000;
const SMS_PREF_PPM: u32 = 150_000;
const LETTER_PREF_PPM: u32 = 20_000;
const NO_DSA_PPM: u64 = 50_000;

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
    writebacks: Mutex<HashMap<String, usize>>,
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
            mobile: Personal::new(self.mobile),
            deceased: self.deceased,
            contact_preference: self.contact_preference,
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
            .filter(|practice| *practice == index)
            .count()
    }

    /// Every reference recorded, across the region.
    pub fn writeback_references(&self) -> HashSet<String> {
        lock(&self.inner.writebacks).keys().cloned().collect()
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
            if recorded.contains_key(&entry.reference) {
                self.inner.writeback_repeats.fetch_add(1, Ordering::Relaxed);
            } else {
                recorded.insert(entry.reference.clone(), index);
            }
            results.push(WritebackResult::Recorded);
        }
        Ok(results)
    }
}

// ----- numbering -----

const NHS_SPACE: u64 = 10_000_000;
const NHS_MUL: u64 = 7_654_321;
const NHS_MUL_INVERSE: u64 = 81;
const NHS_ADD: u64 = 1_234_567;
const MOBILE_SPACE: u64 = 100_000_000;
const MOBILE_MUL: u64 = 48_271_693;
const MOBILE_ADD: u64 = 31_415_926;

/// Choices of the ninth digit that give a valid number, in order (nine or ten).
fn ninth_digit_choices(first_eight: &[u32; 8]) -> impl Iterator<Item = u32> + '_ {
    (0..10).filter(move |d| {
        let mut nine = [0; 9];
        nine[..8].copy_from_slice(first_eight);
        nine[8] = *d;
        check_digit(&nine).is_some()
    })
}

fn prefix_digits(g: u64) -> [u32; 8] {
    let permuted = (g / 9 % NHS_SPACE * NHS_MUL + NHS_ADD) % NHS_SPACE;
    let mut digits = [0; 8];
    digits[0] = 9;
    let mut rest = permuted;
    for position in (1..8).rev() {
        digits[position] = (rest % 10) as u32;
        rest /= 10;
    }
    digits
}

/// The valid NHS number of global index `g` (a bijection for
/// `g < MAX_PATIENTS`): `9`, seven permuted digits of `g / 9`, the
/// `(g % 9)`-th valid ninth digit, the check digit.
pub(crate) fn nhs_number_for(g: u64) -> String {
    let first_eight = prefix_digits(g);
    let skip = usize::try_from(g % 9).unwrap_or(0);
    let ninth = ninth_digit_choices(&first_eight).nth(skip).unwrap_or(0);
    let mut nine = [0; 9];
    nine[..8].copy_from_slice(&first_eight);
    nine[8] = ninth;
    let check = check_digit(&nine).unwrap_or(0);
    nine.iter()
        .chain(std::iter::once(&check))
        .map(|d| char::from(b'0' + *d as u8))
        .collect()
}

/// The inverse of [`nhs_number_for`].
pub(crate) fn global_index_of(nhs_number: &str) -> Option<u64> {
    let digits: Vec<u32> = nhs_number.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() != 10 || digits[0] != 9 {
        return None;
    }
    let permuted = digits[1..8]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(*d));
    let prefix = (permuted + NHS_SPACE - NHS_ADD) % NHS_SPACE * NHS_MUL_INVERSE % NHS_SPACE;
    let mut first_eight = [0; 8];
    first_eight.copy_from_slice(&digits[..8]);
    let k = ninth_digit_choices(&first_eight).position(|d| d == digits[8])?;
    let g = prefix * 9 + k as u64;
    (k < 9 && nhs_number_for(g) == nhs_number).then_some(g)
}

fn invalid_nhs_number(rng: &mut ChaCha8Rng, g: u64) -> String {
    let valid = nhs_number_for(g);
    match rng.gen_range(0..20) {
        // A typo in the check digit.
        0..=11 => {
            let check = valid.as_bytes()[9] - b'0';
            let wrong = (check + rng.gen_range(1..10)) % 10;
            format!("{}{}", &valid[..9], wrong)
        }
        // A digit lost.
        12..=16 => valid[..9].to_string(),
        // Not recorded.
        _ => String::new(),
    }
}

/// A unique valid UK mobile for global index `g` (national digits).
fn mobile_national(rng: &mut ChaCha8Rng, g: u64) -> String {
    const FIRST: [u32; 8] = [1, 2, 3, 4, 5, 7, 8, 9];
    let rest = (g % MOBILE_SPACE * MOBILE_MUL + MOBILE_ADD) % MOBILE_SPACE;
    let mut first = FIRST[rng.gen_range(0..FIRST.len())];
    if first == 7 && rest / 100 == 700_900 {
        // Keep clear of the drama range the gateway treats specially.
        first = 8;
    }
    format!("07{first}{rest:08}")
}

fn format_mobile(rng: &mut ChaCha8Rng, national: &str) -> String {
    let (head, tail) = national.split_at(5);
    match rng.gen_range(0..100) {
        0..=39 => national.to_string(),
        40..=64 => format!("{head} {tail}"),
        65..=74 => format!("+44{}", &national[1..]),
        75..=86 => format!("+44 {} {tail}", &head[1..]),
        87..=91 => format!("{head}-{}-{}", &tail[..3], &tail[3..]),
        _ => format!("+44 (0){} {tail}", &head[1..]),
    }
}

fn mobile(rng: &mut ChaCha8Rng, g: u64) -> Option<String> {
    let roll = ppm(rng);
    let national = mobile_national(rng, g);
    if roll < NO_MOBILE_PPM {
        return None;
    }
    if roll < NO_MOBILE_PPM + INVALID_MOBILE_PPM {
        let n = rng.gen_range(0..1000);
        return Some(match rng.gen_range(0..10) {
            0..=3 => format!("020 7946 0{n:03}"),
            4 => format!("0161 496 0{n:03}"),
            5 => ["n/a", "unknown", "none", "see notes", "0"][rng.gen_range(0..5)].to_string(),
            6 => national[..10].to_string(),
            7 => format!("{national}{}", n % 10),
            8 => format!("07012 345{n:03}"),
            _ => format!("+1 202 555 0{n:03}"),
        });
    }
    if roll < NO_MOBILE_PPM + INVALID_MOBILE_PPM + REJECTED_MOBILE_PPM {
        return Some("07700 900999".to_string());
    }
    Some(format_mobile(rng, &national))
}

// ----- people -----

/// UK age structure in 5-year bands 0–4 … 95–100, per mille (ONS-like).
const AGE_BANDS: [u32; 20] = [
    54, 59, 60, 56, 60, 66, 69, 67, 63, 64, 69, 68, 59, 51, 50, 36, 25, 15, 7, 2,
];

fn birth_date(rng: &mut ChaCha8Rng, today: NaiveDate) -> NaiveDate {
    let mut roll = rng.gen_range(0..AGE_BANDS.iter().sum::<u32>());
    let mut band = 0;
    for (index, weight) in AGE_BANDS.iter().enumerate() {
        if roll < *weight {
            band = index;
            break;
        }
        roll -= weight;
    }
    let low = band as u64 * 5;
    let high = if band == AGE_BANDS.len() - 1 {
        100
    } else {
        low + 4
    };
    let age = rng.gen_range(low..=high);
    // Somewhere in the year after the `age`-th birthday (0 = born today).
    let days = age * 365 + age / 4 + rng.gen_range(0..365);
    today.checked_sub_days(Days::new(days)).unwrap_or(today)
}

fn address_lines(rng: &mut ChaCha8Rng, borough: usize) -> Vec<String> {
    let mut lines = Vec::with_capacity(3);
    let number = rng.gen_range(1..=250);
    let street = pick(rng, STREETS);
    if rng.gen_bool(0.25) {
        lines.push(format!("Flat {}", rng.gen_range(1..=40)));
    }
    lines.push(format!("{number} {street}"));
    if rng.gen_bool(0.6) {
        lines.push(pick(rng, BOROUGHS[borough].places).to_string());
    }
    lines
}

/// Inward unit letters: never C, I, K, M, O or V.
const UNIT_LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";

fn postcode(rng: &mut ChaCha8Rng, districts: &[&'static str]) -> String {
    let district = if districts.len() == 1 || rng.gen_bool(0.7) {
        districts.first().copied().unwrap_or("SE13")
    } else {
        districts[rng.gen_range(0..districts.len())]
    };
    let sector = rng.gen_range(1..=9);
    let a = char::from(UNIT_LETTERS[rng.gen_range(0..UNIT_LETTERS.len())]);
    let b = char::from(UNIT_LETTERS[rng.gen_range(0..UNIT_LETTERS.len())]);
    format!("{district} {sector}{a}{b}")
}

// ----- practices -----

struct Borough {
    name: &'static str,
    /// Share of the region's practices, per mille.
    share: u32,
    districts: &'static [&'static str],
    places: &'static [&'static str],
}

const BOROUGHS: [Borough; 6] = [
    Borough {
        name: "Bexley",
        share: 130,
        districts: &[
            "DA5", "DA6", "DA7", "DA8", "DA14", "DA15", "DA16", "DA17", "DA18",
        ],
        places: &[
            "Bexleyheath",
            "Sidcup",
            "Welling",
            "Erith",
            "Crayford",
            "Belvedere",
            "Blackfen",
            "Barnehurst",
            "Albany Park",
            "Northumberland Heath",
            "Foots Cray",
            "Falconwood",
        ],
    },
    Borough {
        name: "Bromley",
        share: 170,
        districts: &["BR1", "BR2", "BR3", "BR4", "BR5", "BR6", "BR7", "SE20"],
        places: &[
            "Bromley",
            "Beckenham",
            "Orpington",
            "Penge",
            "Chislehurst",
            "Petts Wood",
            "West Wickham",
            "Hayes",
            "Shortlands",
            "Bickley",
            "Mottingham",
            "Anerley",
        ],
    },
    Borough {
        name: "Greenwich",
        share: 160,
        districts: &["SE3", "SE7", "SE9", "SE10", "SE18", "SE28"],
        places: &[
            "Greenwich",
            "Woolwich",
            "Eltham",
            "Charlton",
            "Blackheath",
            "Plumstead",
            "Abbey Wood",
            "Kidbrooke",
            "Thamesmead",
            "Shooters Hill",
            "Westcombe Park",
            "New Eltham",
        ],
    },
    Borough {
        name: "Lambeth",
        share: 180,
        districts: &["SE11", "SE27", "SW2", "SW4", "SW8", "SW9"],
        places: &[
            "Brixton",
            "Clapham",
            "Streatham",
            "Stockwell",
            "Kennington",
            "Vauxhall",
            "Herne Hill",
            "West Norwood",
            "Tulse Hill",
            "Oval",
            "Gipsy Hill",
            "Larkhall",
        ],
    },
    Borough {
        name: "Lewisham",
        share: 170,
        districts: &["SE4", "SE6", "SE8", "SE12", "SE13", "SE14", "SE23"],
        places: &[
            "Lewisham Park",
            "Catford",
            "Brockley",
            "Sydenham",
            "Forest Hill",
            "Deptford",
            "New Cross",
            "Hither Green",
            "Lee",
            "Ladywell",
            "Grove Park",
            "Bellingham",
        ],
    },
    Borough {
        name: "Southwark",
        share: 190,
        districts: &["SE1", "SE5", "SE15", "SE16", "SE17", "SE21", "SE22"],
        places: &[
            "Peckham",
            "Camberwell",
            "Bermondsey",
            "Rotherhithe",
            "Dulwich",
            "Walworth",
            "Nunhead",
            "East Dulwich",
            "Borough",
            "Elephant and Castle",
            "Surrey Docks",
            "Peckham Rye",
        ],
    },
];

const PRACTICE_SUFFIXES: &[&str] = &[
    "Surgery",
    "Surgery",
    "Medical Centre",
    "Health Centre",
    "Medical Practice",
    "Group Practice",
    "Family Practice",
    "Primary Care Centre",
];

/// ODS codes `G85001`, `G85002`, … (then `H00000` …): unique, letter + 5 digits.
fn nth_ods(k: usize) -> OdsCode {
    let n = 85_001 + k;
    let letter = char::from(b'G' + u8::try_from(n / 100_000).unwrap_or(0).min(19));
    let code = format!("{letter}{:05}", n % 100_000);
    OdsCode::parse(&code).expect("generated ODS codes are well-formed")
}

fn pick_borough(rng: &mut ChaCha8Rng) -> usize {
    let total: u32 = BOROUGHS.iter().map(|b| b.share).sum();
    let mut roll = rng.gen_range(0..total);
    for (index, borough) in BOROUGHS.iter().enumerate() {
        if roll < borough.share {
            return index;
        }
        roll -= borough.share;
    }
    BOROUGHS.len() - 1
}

/// A main district and one or two neighbours from the same borough.
fn pick_districts(rng: &mut ChaCha8Rng, borough: usize) -> Vec<&'static str> {
    let all = BOROUGHS[borough].districts;
    let main = rng.gen_range(0..all.len());
    let extra = rng.gen_range(1..=2).min(all.len() - 1);
    (0..=extra)
        .map(|step| all[(main + step) % all.len()])
        .collect()
}

fn practice_name(rng: &mut ChaCha8Rng, borough: usize, used: &mut HashSet<String>) -> String {
    let places = BOROUGHS[borough].places;
    let mut candidate = String::new();
    for _ in 0..24 {
        candidate = match rng.gen_range(0..10) {
            0 => format!("The {} Surgery", pick(rng, STREETS)),
            1 => format!("Dr {} and Partners", pick(rng, FAMILY_NAMES)),
            _ => format!("{} {}", pick(rng, places), pick(rng, PRACTICE_SUFFIXES)),
        };
        if !used.contains(&candidate) {
            used.insert(candidate.clone());
            return candidate;
        }
    }
    let mut n = 2;
    loop {
        let numbered = format!("{candidate} ({n})");
        if used.insert(numbered.clone()) {
            return numbered;
        }
        n += 1;
    }
}

/// Skewed list sizes (log-normal around 8,000, clamped to 2,000–30,000),
/// scaled so that they add up to `total` exactly.
fn list_sizes(rng: &mut ChaCha8Rng, practices: usize, total: u64) -> Vec<u64> {
    if practices == 0 {
        return Vec::new();
    }
    let weights: Vec<u64> = (0..practices)
        .map(|_| {
            let z = standard_normal(rng);
            (8_000.0 * (0.55 * z).exp()).clamp(2_000.0, 30_000.0) as u64
        })
        .collect();
    let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    let mut sizes = Vec::with_capacity(practices);
    let mut remainders = Vec::with_capacity(practices);
    for (index, weight) in weights.iter().enumerate() {
        let exact = u128::from(total) * u128::from(*weight);
        sizes.push(u64::try_from(exact / sum).unwrap_or(0));
        remainders.push((exact % sum, index));
    }
    let assigned: u64 = sizes.iter().sum();
    let left = usize::try_from(total.saturating_sub(assigned)).unwrap_or(0);
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, index) in remainders.into_iter().take(left) {
        sizes[index] += 1;
    }
    sizes
}

/// About 5% of practices have not signed the data sharing agreement; at
/// least one when there are 10 or more.
fn pick_without_dsa(rng: &mut ChaCha8Rng, practices: usize) -> HashSet<usize> {
    if practices < 10 {
        return HashSet::new();
    }
    let count = ((practices as u64 * NO_DSA_PPM + 500_000) / 1_000_000).max(1) as usize;
    let mut chosen = HashSet::new();
    while chosen.len() < count {
        chosen.insert(rng.gen_range(0..practices));
    }
    chosen
}

// ----- helpers -----

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn hash(seed: u64, tag: u64, a: u64, b: u64) -> u64 {
    splitmix(splitmix(splitmix(seed ^ tag.rotate_left(56)) ^ a) ^ b)
}

fn ppm(rng: &mut ChaCha8Rng) -> u32 {
    rng.gen_range(0..1_000_000)
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).unwrap_or_default()
}

fn random_date(rng: &mut ChaCha8Rng, from: NaiveDate, span_days: u64) -> NaiveDate {
    from.checked_add_days(Days::new(rng.gen_range(0..span_days)))
        .unwrap_or(from)
}

const GIVEN_NAMES: &[&str] = &[
    "Oliver",
    "Amelia",
    "George",
    "Olivia",
    "Muhammad",
    "Isla",
    "Noah",
    "Ava",
    "Jack",
    "Mia",
    "Leo",
    "Ivy",
    "Oscar",
    "Lily",
    "Harry",
    "Freya",
    "Arthur",
    "Grace",
    "Jacob",
    "Sophia",
    "Chinedu",
    "Adaeze",
    "Kwame",
    "Abena",
    "Tunde",
    "Folake",
    "Kofi",
    "Ama",
    "Emeka",
    "Ngozi",
    "Mohammed",
    "Fatima",
    "Ali",
    "Aisha",
    "Omar",
    "Maryam",
    "Yusuf",
    "Zainab",
    "Ibrahim",
    "Hafsa",
    "Arjun",
    "Priya",
    "Rohan",
    "Ananya",
    "Sanjay",
    "Deepa",
    "Ravi",
    "Meena",
    "Wei",
    "Mei",
    "Tomasz",
    "Agnieszka",
    "Piotr",
    "Katarzyna",
    "Mateo",
    "Sofia",
    "Luca",
    "Giulia",
    "Diego",
    "Lucia",
    "David",
    "Susan",
    "John",
    "Margaret",
    "Michael",
    "Patricia",
    "Peter",
    "Janet",
    "Paul",
    "Elizabeth",
    "James",
    "Mary",
    "Robert",
    "Linda",
    "Daniel",
    "Sarah",
    "Thomas",
    "Emma",
    "Samuel",
    "Chloe",
    "Kemi",
    "Dami",
    "Jamal",
    "Shanice",
    "Tyrone",
    "Keisha",
    "Liam",
    "Niamh",
    "Sean",
    "Siobhan",
    "Ewan",
    "Eilidh",
    "Rhys",
    "Cerys",
    "Hassan",
    "Leila",
];

const FAMILY_NAMES: &[&str] = &[
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Brown",
    "Davies",
    "Evans",
    "Wilson",
    "Thomas",
    "Johnson",
    "Roberts",
    "Robinson",
    "Thompson",
    "Wright",
    "Walker",
    "White",
    "Edwards",
    "Hughes",
    "Green",
    "Hall",
    "Lewis",
    "Harris",
    "Clarke",
    "Patel",
    "Jackson",
    "Wood",
    "Turner",
    "Martin",
    "Cooper",
    "Hill",
    "Ward",
    "Morris",
    "Moore",
    "Clark",
    "Lee",
    "King",
    "Baker",
    "Harrison",
    "Morgan",
    "Allen",
    "Okafor",
    "Adeyemi",
    "Mensah",
    "Owusu",
    "Boateng",
    "Okonkwo",
    "Adebayo",
    "Asante",
    "Nwosu",
    "Oyelaran",
    "Khan",
    "Ahmed",
    "Hussain",
    "Ali",
    "Begum",
    "Rahman",
    "Islam",
    "Uddin",
    "Shah",
    "Iqbal",
    "Singh",
    "Kaur",
    "Sharma",
    "Gupta",
    "Kumar",
    "Chen",
    "Wang",
    "Li",
    "Nguyen",
    "Tran",
    "Kowalski",
    "Nowak",
    "Wisniewski",
    "Rossi",
    "Silva",
    "Santos",
    "Pereira",
    "Garcia",
    "Rodriguez",
    "Murphy",
    "Kelly",
    "O'Brien",
    "Stewart",
    "MacDonald",
    "Reid",
    "Francis",
    "Campbell-Brown",
    "St Clair",
];

const STREETS: &[&str] = &[
    "High Street",
    "Church Road",
    "Station Road",
    "Lewisham Way",
    "Rye Lane",
    "Brockley Rise",
    "Coldharbour Lane",
    "Old Kent Road",
    "Lordship Lane",
    "Bromley Road",
    "Woolwich Road",
    "Shooters Hill Road",
    "Burnt Ash Hill",
    "Stanstead Road",
    "Westwood Hill",
    "Brixton Hill",
    "Acre Lane",
    "Denmark Hill",
    "Peckham Road",
    "Walworth Road",
    "Jamaica Road",
    "The Broadway",
    "Bexley Road",
    "Sidcup Hill",
    "Croydon Road",
    "Widmore Road",
    "Park Road",
    "Manor Road",
    "Albert Road",
    "Victoria Road",
    "Queens Road",
    "Kings Road",
    "Baring Road",
    "Court Lane",
    "Wells Park Road",
    "Sydenham Road",
    "Hither Green Lane",
    "Eltham Hill",
    "Well Hall Road",
    "Blackheath Hill",
    "Tulse Hill",
    "Norwood Road",
    "Streatham High Road",
    "Clapham Road",
    "Kennington Lane",
    "Camberwell Grove",
    "Evelina Road",
    "Chislehurst Road",
    "Mottingham Lane",
    "Belvedere Road",
];

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use hub_core::domain::{Postcode, UkMobile};
    use std::sync::atomic::AtomicBool;

    fn today() -> NaiveDate {
        date(2025, 6, 1)
    }

    fn estate(practices: usize, patients: u64, seed: u64) -> GpEstate {
        GpEstate::generate_as_of(
            RegionSpec {
                practices,
                patients,
                seed,
            },
            today(),
        )
    }

    fn all_districts() -> HashSet<&'static str> {
        BOROUGHS
            .iter()
            .flat_map(|b| b.districts.iter().copied())
            .collect()
    }

    #[test]
    fn nhs_numbering_is_a_valid_bijection() {
        let mut seen = HashSet::new();
        for g in (0..200_000).chain(MAX_PATIENTS - 1_000..MAX_PATIENTS) {
            let number = nhs_number_for(g);
            let parsed = NhsNumber::parse(&number).expect("valid NHS number");
            assert_eq!(parsed.as_str(), number);
            assert!(number.starts_with('9'));
            assert_eq!(global_index_of(&number), Some(g));
            assert!(seen.insert(number));
        }
        assert_eq!(global_index_of("123"), None);
    }

    #[test]
    fn same_seed_same_estate_other_seed_other_estate() {
        let a = estate(12, 6_000, 7);
        let b = estate(12, 6_000, 7);
        let c = estate(12, 6_000, 8);
        assert_eq!(a.practices(), b.practices());
        assert!(a.all_patients().eq(b.all_patients()));
        let first = a.practices()[0].ods.clone();
        assert!(a.patients(&first).eq(a.patients(&first)), "same every call");
        assert!(!a.all_patients().eq(c.all_patients()));
        assert_eq!(a.patient(&first, 3), a.patients(&first).nth(3));
        assert_eq!(a.patient(&first, u64::MAX), None);
    }

    #[test]
    fn practices_look_like_a_region() {
        let region = estate(200, 2_000_000, 1);
        let practices = region.practices();
        assert_eq!(practices.len(), 200);
        assert_eq!(
            practices.iter().map(|p| p.list_size).sum::<u64>(),
            2_000_000
        );
        assert_eq!(region.total_patients(), 2_000_000);
        let codes: HashSet<_> = practices.iter().map(|p| p.ods.clone()).collect();
        assert_eq!(codes.len(), 200);
        assert_eq!(practices[0].ods.as_str(), "G85001");
        let names: HashSet<_> = practices.iter().map(|p| p.name.clone()).collect();
        assert_eq!(names.len(), 200, "names are unique");
        let min = practices.iter().map(|p| p.list_size).min().unwrap();
        let max = practices.iter().map(|p| p.list_size).max().unwrap();
        assert!(
            min >= 1_500 && max <= 40_000 && max > 3 * min,
            "{min}..{max}"
        );
        let without_dsa = practices.iter().filter(|p| p.dsa_signed.is_none()).count();
        assert!((4..=16).contains(&without_dsa), "{without_dsa}");
        let districts = all_districts();
        for practice in &practices {
            let code = practice.ods.as_str();
            assert!(code.len() == 6 && code[1..].chars().all(|c| c.is_ascii_digit()));
            assert_eq!(
                practice.notice_email,
                format!("practice-{}@nhs.invalid", code.to_lowercase())
            );
            assert_eq!(practice.connection, GpConnection::Simulated);
            let own = region.districts(&practice.ods);
            assert!(!own.is_empty() && own.iter().all(|d| districts.contains(d.as_str())));
            assert!(region.borough(&practice.ods).is_some());
        }
        let boroughs: HashSet<_> = practices
            .iter()
            .filter_map(|p| region.borough(&p.ods))
            .collect();
        assert_eq!(boroughs.len(), 6);
    }

    #[test]
    fn small_regions_still_add_up() {
        for (practices, patients) in [(1, 0), (1, 7), (3, 2), (10, 10_001), (37, 123_457)] {
            let region = estate(practices, patients, 3);
            let sizes: Vec<u64> = region.practices().iter().map(|p| p.list_size).collect();
            assert_eq!(sizes.iter().sum::<u64>(), patients);
            assert_eq!(region.all_patients().count() as u64, patients);
            let without_dsa = region
                .practices()
                .iter()
                .filter(|p| p.dsa_signed.is_none())
                .count();
            assert_eq!(without_dsa >= 1, practices >= 10);
        }
        let empty = estate(0, 0, 1);
        assert!(empty.practices().is_empty());
        assert_eq!(empty.all_patients().count(), 0);
    }

    /// Ground truth over ~20k rows: the defects come in the intended
    /// proportions.
    #[test]
    fn defects_come_in_realistic_proportions() {
        let region = estate(20, 20_000, 42);
        let districts = all_districts();
        let rows = 20_000.0;
        let (mut invalid_nhs, mut no_mobile, mut bad_mobile, mut no_tel, mut sms_pref) =
            (0, 0, 0, 0, 0);
        let (mut letter_pref, mut not_recorded, mut deceased, mut no_birth, mut children) =
            (0, 0, 0, 0, 0);
        let (mut international, mut spaced) = (0, 0);
        let mut by_number: HashMap<String, (GpPatient, HashSet<OdsCode>)> = HashMap::new();
        let mut exact_duplicates = 0;
        let mut sharing = 0usize;
        let mut in_own_districts = 0;
        for practice in region.practices() {
            let own_districts = region.districts(&practice.ods);
            let mut mobiles: HashMap<String, usize> = HashMap::new();
            for patient in region.patients(&practice.ods) {
                let number = patient.nhs_number.expose();
                match NhsNumber::parse(number) {
                    Ok(_) => {
                        let entry = by_number
                            .entry(number.clone())
                            .or_insert_with(|| (patient.clone(), HashSet::new()));
                        assert_eq!(entry.0, patient, "one NHS number, one person");
                        if !entry.1.insert(practice.ods.clone()) {
                            exact_duplicates += 1;
                        }
                    }
                    Err(_) => invalid_nhs += 1,
                }
                let postcode = Postcode::parse(patient.postcode.expose()).expect("valid postcode");
                assert!(districts.contains(postcode.district()));
                if own_districts.iter().any(|d| d == postcode.district()) {
                    in_own_districts += 1;
                }
                let lines = patient.address_lines.expose().len();
                assert!((1..=3).contains(&lines));
                match patient.mobile.expose() {
                    None => no_mobile += 1,
                    Some(raw) => match UkMobile::parse(raw) {
                        Ok(mobile) => {
                            if !mobile.is_drama_range() {
                                *mobiles.entry(mobile.e164().to_string()).or_default() += 1;
                            }
                            international += usize::from(raw.starts_with("+44"));
                            spaced += usize::from(raw.contains(' '));
                        }
                        Err(_) => bad_mobile += 1,
                    },
                }
                match patient.contact_preference {
                    ContactPreference::NoTelephoneContact => no_tel += 1,
                    ContactPreference::Sms => sms_pref += 1,
                    ContactPreference::Letter => letter_pref += 1,
                    ContactPreference::NotRecorded => not_recorded += 1,
                }
                deceased += usize::from(patient.deceased);
                match patient.birth_date.expose() {
                    None => no_birth += 1,
                    Some(born) => {
                        assert!(*born <= today());
                        let age = hub_core::domain::age_on(*born, today());
                        assert!(age <= 101);
                        children += usize::from(age < 18);
                    }
                }
            }
            sharing += mobiles.values().filter(|n| **n > 1).sum::<usize>();
        }
        let share = |n: usize| n as f64 / rows;
        assert!(
            (0.001..0.006).contains(&share(invalid_nhs)),
            "{invalid_nhs}"
        );
        assert!((0.08..0.12).contains(&share(no_mobile)), "{no_mobile}");
        assert!((0.005..0.016).contains(&share(bad_mobile)), "{bad_mobile}");
        assert!((0.02..0.04).contains(&share(no_tel)), "{no_tel}");
        assert!((0.12..0.18).contains(&share(sms_pref)), "{sms_pref}");
        assert!((0.01..0.03).contains(&share(letter_pref)), "{letter_pref}");
        assert!(share(not_recorded) > 0.7);
        assert!((0.002..0.009).contains(&share(deceased)), "{deceased}");
        assert!((0.0005..0.0045).contains(&share(no_birth)), "{no_birth}");
        assert!((0.15..0.30).contains(&share(children)), "{children}");
        assert!(share(international) > 0.2 && share(spaced) > 0.3);
        assert!(share(in_own_districts) > 0.97, "{in_own_districts}");
        let dual = by_number.values().filter(|(_, p)| p.len() > 1).count();
        assert!((0.0025..0.008).contains(&share(dual)), "{dual}");
        assert_eq!(dual, region.dual_registrations());
        assert!((1..60).contains(&exact_duplicates), "{exact_duplicates}");
        // Households (duplicate rows add a little).
        assert!((0.03..0.09).contains(&share(sharing)), "{sharing}");
    }

    #[test]
    fn invalid_mobiles_really_are_invalid() {
        let region = estate(5, 20_000, 9);
        let mut invalid = 0;
        for patient in region.all_patients() {
            if let Some(raw) = patient.mobile.expose() {
                if UkMobile::parse(raw).is_err() {
                    invalid += 1;
                    assert!(!raw.is_empty());
                }
            }
        }
        assert!(invalid > 100);
    }

    #[test]
    fn a_large_practice_streams_without_holding_its_list() {
        let region = estate(1, 100_000, 5);
        let ods = region.practices()[0].ods.clone();
        let rows = region.patients(&ods);
        assert_eq!(rows.len(), 100_000);
        // Consumed one row at a time; nothing is collected.
        let valid = rows
            .filter(|p| NhsNumber::parse(p.nhs_number.expose()).is_ok())
            .count();
        assert!(valid > 99_000);
        assert_eq!(region.dual_registrations(), 0, "one practice: nowhere else");
    }

    #[tokio::test]
    async fn extract_streams_the_list_and_yields_to_the_runtime() {
        let region = estate(3, 6_000, 11);
        let practice = region.practices()[1].clone();
        let ticks = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (ticks, stop) = (ticks.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let stream = region.extract(&practice).await.expect("extract");
        let rows: Vec<GpPatient> = stream.map(|r| r.expect("record")).collect().await;
        stop.store(true, Ordering::Relaxed);
        ticker.await.expect("ticker");
        assert_eq!(rows.len() as u64, practice.list_size);
        assert!(rows.iter().cloned().eq(region.patients(&practice.ods)));
        assert!(ticks.load(Ordering::Relaxed) >= (practice.list_size / 500).saturating_sub(1));
        assert_eq!(region.extract_calls(&practice.ods), 1);
    }

    #[tokio::test]
    async fn outages_are_injected_per_practice() {
        let region = estate(3, 3_000, 11);
        let practices = region.practices();
        let (down, up) = (&practices[0], &practices[1]);
        region.set_down(&down.ods, Some(2));
        for _ in 0..2 {
            assert!(matches!(
                region.extract(down).await,
                Err(GpError::Unavailable(_))
            ));
        }
        assert!(region.extract(down).await.is_ok());
        assert!(region.extract(up).await.is_ok());
        region.set_down(&down.ods, None);
        for _ in 0..5 {
            assert!(region.extract(down).await.is_err());
        }
        region.clear_down(&down.ods);
        assert!(region.extract(down).await.is_ok());
        assert_eq!(region.extract_calls(&down.ods), 9);
        assert_eq!(region.extract_calls(&up.ods), 1);

        let mut stranger = down.clone();
        stranger.ods = OdsCode::parse("Y99999").unwrap();
        assert!(matches!(
            region.extract(&stranger).await,
            Err(GpError::Misconfigured(_))
        ));
    }

    fn entry(nhs: &str, reference: &str) -> WritebackEntry {
        WritebackEntry {
            nhs_number: NhsNumber::parse(nhs).unwrap(),
            reference: reference.to_string(),
            sent_at: Utc::now(),
            message: Personal::new("Please book your vaccination".to_string()),
        }
    }

    #[tokio::test]
    async fn write_back_records_once_and_rejects_strangers() {
        let region = estate(4, 8_000, 13);
        let practices = region.practices();
        let (home, other) = (&practices[0], &practices[1]);
        let valid: Vec<String> = region
            .patients(&home.ods)
            .map(|p| p.nhs_number.into_inner())
            .filter(|n| NhsNumber::parse(n).is_ok())
            .take(3)
            .collect();
        let foreign = region
            .patients(&other.ods)
            .map(|p| p.nhs_number.into_inner())
            .find(|n| NhsNumber::parse(n).is_ok_and(|nhs| !region.has_patient(&home.ods, &nhs)))
            .unwrap();
        let entries = vec![
            entry(&valid[0], "c.G85001-0000.0"),
            entry(&valid[1], "c.G85001-0000.1"),
            entry(&foreign, "c.G85001-0000.2"),
            entry(&valid[2], "c.G85001-0000.0"),
        ];
        let results = region.write_back(home, &entries).await.unwrap();
        assert_eq!(
            results,
            vec![
                WritebackResult::Recorded,
                WritebackResult::Recorded,
                WritebackResult::Rejected,
                WritebackResult::Recorded,
            ]
        );
        assert_eq!(region.writebacks(&home.ods), 2);
        assert_eq!(region.writeback_repeats(), 1);
        // Redelivered: recognised, not recorded again.
        let again = region.write_back(home, &entries[..2]).await.unwrap();
        assert_eq!(again, vec![WritebackResult::Recorded; 2]);
        assert_eq!(region.writebacks(&home.ods), 2);
        assert_eq!(region.writebacks(&other.ods), 0);
        assert_eq!(
            region.writeback_references(),
            HashSet::from(["c.G85001-0000.0".into(), "c.G85001-0000.1".into()])
        );
        // A number that was never issued.
        let unknown = nhs_number_for(MAX_PATIENTS - 1);
        let result = region
            .write_back(home, &[entry(&unknown, "x")])
            .await
            .unwrap();
        assert_eq!(result, vec![WritebackResult::Rejected]);

        region.set_writeback_failures(&home.ods, 1);
        assert!(matches!(
            region.write_back(home, &entries[..1]).await,
            Err(GpError::Unavailable(_))
        ));
        assert!(region.write_back(home, &entries[..1]).await.is_ok());
    }

    #[tokio::test]
    async fn dual_registrations_are_known_to_both_practices() {
        let region = estate(6, 30_000, 17);
        let mut homes: HashMap<String, OdsCode> = HashMap::new();
        let mut pair = None;
        for practice in region.practices() {
            for patient in region.patients(&practice.ods) {
                let number = patient.nhs_number.into_inner();
                if NhsNumber::parse(&number).is_err() {
                    continue;
                }
                match homes.get(&number) {
                    Some(first) if *first != practice.ods => {
                        pair = Some((number, first.clone(), practice.ods.clone()));
                    }
                    _ => {
                        homes.insert(number, practice.ods.clone());
                    }
                }
            }
        }
        let (number, first, second) = pair.expect("a dual registration");
        let nhs = NhsNumber::parse(&number).unwrap();
        assert!(region.has_patient(&first, &nhs));
        assert!(region.has_patient(&second, &nhs));
        let practice = region.practice(&second).unwrap();
        let result = region
            .write_back(&practice, &[entry(&number, "dual")])
            .await
            .unwrap();
        assert_eq!(result, vec![WritebackResult::Recorded]);
    }
}
