//! Extraction of one practice at the deadline: read the registered list,
//! keep the target cohort, exclude with reasons, deduplicate, split into
//! chunks, store them in the patient-data table and queue the sends.
//!
//! Nothing is sent until every practice's extraction is final (extracted
//! or failed): a patient registered at two practices is decided on all
//! their records, and the most careful one wins (`restrictions.rs`). A
//! retried extraction simply starts again.

use super::{Hub, JobError};
use crate::domain::{
    CampaignId, CampaignState, ChunkId, ChunkRecord, Contact, ContactPreference, DedupeKey,
    ExclusionReason, ExtractionDecision, ExtractionStart, GpPatient, NhsNumber, OdsCode,
    OutcomeCounts, Participation, ParticipationState, Personal, PostalAddress, Postcode, Recipient,
    RecipientStatus, Restriction, UkMobile,
};
use crate::ports::{GpError, Job, Placement, Practice, StoreError};
use futures::StreamExt;
use std::collections::HashSet;

/// A patient in the cohort who passed every check but deduplication.
struct Candidate {
    nhs_number: NhsNumber,
    contact: Contact,
    mobile: Option<UkMobile>,
    first_name: Personal<String>,
    last_name: Personal<String>,
}

enum Classified {
    NotInCohort,
    Excluded(ExclusionReason),
    Candidate(Box<Candidate>),
}

/// Decides what happens to one patient. Pure: no I/O.
fn classify(
    patient: GpPatient,
    campaign: &crate::domain::Campaign,
    keep_names: bool,
) -> Classified {
    let on = campaign.optout_deadline.date_naive();
    let postcode = Postcode::parse(patient.postcode.expose()).ok();
    let born_within = patient
        .birth_date
        .expose()
        .map(|first| (first, patient.birth_date_precision.last_day(first)));
    if !campaign
        .target
        .includes_patient_born(born_within, postcode.as_ref(), on)
    {
        return Classified::NotInCohort;
    }
    if !patient.active {
        return Classified::Excluded(ExclusionReason::InactiveRecord);
    }
    if patient.deceased {
        return Classified::Excluded(ExclusionReason::Deceased);
    }
    let Ok(nhs_number) = NhsNumber::parse(patient.nhs_number.expose()) else {
        return Classified::Excluded(ExclusionReason::InvalidNhsNumber);
    };
    if patient.contact_preference == ContactPreference::NoTelephoneContact {
        return Classified::Excluded(ExclusionReason::SmsOptOut);
    }
    let postal = campaign.options.postal_fallback;
    let mobile = match patient.mobile.expose() {
        Some(raw) => UkMobile::parse(raw).map_err(|_| ExclusionReason::InvalidMobile),
        None => Err(ExclusionReason::NoMobile),
    };
    // A patient who asked for letters gets one when the campaign sends letters.
    let wants_letter = postal && patient.contact_preference == ContactPreference::Letter;
    let contact = match mobile {
        Ok(mobile) if !wants_letter => Contact::Sms { mobile },
        Err(reason) if !postal => return Classified::Excluded(reason),
        _ => {
            let lines: Vec<String> = patient
                .address_lines
                .expose()
                .iter()
                .map(|line| line.trim().to_string())
                .filter(|line| !line.is_empty())
                .collect();
            match postcode {
                Some(postcode) if !lines.is_empty() => Contact::Letter {
                    address: PostalAddress {
                        name: Personal::new(addressee(&patient)),
                        lines: Personal::new(lines),
                        postcode,
                    },
                },
                _ => return Classified::Excluded(ExclusionReason::NoPostalAddress),
            }
        }
    };
    let mobile = match &contact {
        Contact::Sms { mobile } => Some(mobile.clone()),
        Contact::Letter { .. } => None,
    };
    // Names are kept only when the message uses them.
    let (first_name, last_name) = if keep_names {
        (patient.given_name, patient.family_name)
    } else {
        (Personal::default(), Personal::default())
    };
    Classified::Candidate(Box::new(Candidate {
        nhs_number,
        contact,
        mobile,
        first_name,
        last_name,
    }))
}

/// The name a letter is addressed to, NFC-normalised like every rendered
/// name; with none recorded, "The patient" (a letter is never addressed to
/// a blank line).
fn addressee(patient: &GpPatient) -> String {
    use unicode_normalization::UnicodeNormalization;
    let name = format!(
        "{} {}",
        patient.given_name.expose().trim(),
        patient.family_name.expose().trim()
    );
    let name: String = name.trim().nfc().collect();
    if name.is_empty() {
        "The patient".to_string()
    } else {
        name
    }
}

/// Chunks being built for one practice.
struct ChunkBuilder<'a> {
    hub: &'a Hub,
    campaign: &'a crate::domain::Campaign,
    ods: &'a OdsCode,
    pending: Vec<Candidate>,
    chunks: Vec<ChunkRecord>,
    counts: OutcomeCounts,
    /// Patients this practice texts, and those it writes to: a patient may
    /// be in both until the release, where the text wins.
    seen_patients: HashSet<NhsNumber>,
    seen_letters: HashSet<NhsNumber>,
    seen_mobiles: HashSet<UkMobile>,
    /// Restrictions read in this practice's records, not yet stored.
    restrictions: Vec<DedupeKey>,
}

impl ChunkBuilder<'_> {
    async fn push(&mut self, candidate: Candidate) -> Result<(), JobError> {
        let seen = match candidate.contact {
            Contact::Sms { .. } => &mut self.seen_patients,
            Contact::Letter { .. } => &mut self.seen_letters,
        };
        if !seen.insert(candidate.nhs_number.clone()) {
            self.counts.exclude(ExclusionReason::DuplicatePatient);
            return Ok(());
        }
        self.pending.push(candidate);
        if self.pending.len() >= self.hub.config.chunk_size {
            self.flush().await?;
        }
        Ok(())
    }

    /// Notes what this record says that binds the patient's other records.
    async fn restrict(&mut self, patient: &GpPatient) -> Result<(), JobError> {
        let Ok(nhs_number) = NhsNumber::parse(patient.nhs_number.expose()) else {
            return Ok(());
        };
        if patient.deceased {
            self.restrictions.push(DedupeKey::Restricted(
                nhs_number.clone(),
                Restriction::Deceased,
            ));
        }
        if patient.contact_preference == ContactPreference::NoTelephoneContact {
            self.restrictions.push(DedupeKey::Restricted(
                nhs_number,
                Restriction::NoTelephoneContact,
            ));
        }
        if self.restrictions.len() >= self.hub.config.chunk_size {
            self.store_restrictions().await?;
        }
        Ok(())
    }

    /// Stores the restrictions: whoever holds a key, it exists, and that is
    /// all the release asks.
    async fn store_restrictions(&mut self) -> Result<(), JobError> {
        if self.restrictions.is_empty() {
            return Ok(());
        }
        let expires = self.hub.now() + self.hub.config.patient_data_ttl;
        let keys = std::mem::take(&mut self.restrictions);
        self.hub
            .patients
            .place_keys(&self.campaign.id, self.ods, &keys, expires)
            .await?;
        Ok(())
    }

    /// Places the pending candidates' dedupe keys, then stores the ones that
    /// are ours as the next chunk.
    async fn flush(&mut self) -> Result<(), JobError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let expires = self.hub.now() + self.hub.config.patient_data_ttl;
        let candidates = std::mem::take(&mut self.pending);
        let patient_keys: Vec<DedupeKey> = candidates
            .iter()
            .map(|c| match c.contact {
                Contact::Sms { .. } => DedupeKey::Patient(c.nhs_number.clone()),
                Contact::Letter { .. } => DedupeKey::Letter(c.nhs_number.clone()),
            })
            .collect();
        let placed = self
            .hub
            .patients
            .place_keys(&self.campaign.id, self.ods, &patient_keys, expires)
            .await?;
        let mut survivors = Vec::with_capacity(candidates.len());
        // Held by another practice: kept in reserve in case that practice
        // sends nothing (`standby.rs`), and decided at the release.
        let mut standby = Vec::new();
        for (candidate, placement) in candidates.into_iter().zip(placed) {
            match placement {
                Placement::Placed => survivors.push(candidate),
                Placement::HeldElsewhere => standby.push(candidate),
            }
        }
        if self.campaign.options.one_message_per_mobile {
            survivors = self.dedupe_mobiles(survivors, expires).await?;
        }
        if survivors.is_empty() && standby.is_empty() {
            return Ok(());
        }
        let chunk = ChunkId::new(self.ods, self.chunks.len() as u32);
        let statuses = std::iter::repeat_n(RecipientStatus::Pending, survivors.len())
            .chain(std::iter::repeat(RecipientStatus::Standby));
        let recipients: Vec<Recipient> = survivors
            .into_iter()
            .chain(standby)
            .zip(statuses)
            .enumerate()
            .map(|(index, (c, status))| Recipient {
                chunk: chunk.clone(),
                index: index as u32,
                nhs_number: c.nhs_number,
                contact: c.contact,
                first_name: c.first_name,
                last_name: c.last_name,
                status,
                delivery: None,
                written_back: false,
            })
            .collect();
        self.hub
            .patients
            .put_recipients(&self.campaign.id, &recipients, expires)
            .await?;
        let sms = recipients.iter().filter(|r| r.is_sms()).count() as u32;
        let letters = recipients.len() as u32 - sms;
        self.chunks.push(ChunkRecord {
            campaign: self.campaign.id.clone(),
            chunk,
            ods: self.ods.clone(),
            sms_recipients: sms,
            letter_recipients: letters,
            send_done: sms == 0,
            letters_done: letters == 0,
            // Letters are written back too.
            writeback_done: false,
            counted_final: false,
            counts: OutcomeCounts::default(),
        });
        Ok(())
    }

    async fn dedupe_mobiles(
        &mut self,
        survivors: Vec<Candidate>,
        expires: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Candidate>, JobError> {
        let mut kept = Vec::with_capacity(survivors.len());
        let mut to_place = Vec::new();
        for candidate in survivors {
            match &candidate.mobile {
                Some(mobile) if !self.seen_mobiles.insert(mobile.clone()) => {
                    self.counts.exclude(ExclusionReason::DuplicateMobile);
                }
                Some(mobile) => {
                    to_place.push(DedupeKey::Mobile(mobile.clone()));
                    kept.push(candidate);
                }
                None => kept.push(candidate),
            }
        }
        let placed = self
            .hub
            .patients
            .place_keys(&self.campaign.id, self.ods, &to_place, expires)
            .await?;
        let mut placements = placed.into_iter();
        let mut result = Vec::with_capacity(kept.len());
        for candidate in kept {
            if candidate.mobile.is_some() && placements.next() == Some(Placement::HeldElsewhere) {
                self.counts.exclude(ExclusionReason::DuplicateMobile);
            } else {
                result.push(candidate);
            }
        }
        Ok(result)
    }
}

/// The extract function: one practice of one campaign.
pub async fn extract_practice(
    hub: &Hub,
    campaign_id: &CampaignId,
    ods: &OdsCode,
    receive_count: u32,
) -> Result<(), JobError> {
    let campaign = hub.campaign(campaign_id).await?;
    if !campaign.state.allows_sending() {
        tracing::info!(campaign = %campaign_id, ods = %ods, state = %campaign.state, "extraction skipped");
        return Ok(());
    }
    let Some(mut participation) = hub.store.get_participation(campaign_id, ods).await? else {
        return Err(JobError::Malformed(format!(
            "practice {ods} does not take part in campaign {campaign_id}"
        )));
    };
    if participation.state == ParticipationState::ExtractionSuspect {
        match carry_out_decision(hub, participation).await? {
            // Retry: read the practice again now.
            Some(retried) => participation = retried,
            None => return Ok(()),
        }
    }
    let was = participation.state;
    match participation.start_extraction(hub.now(), hub.config.stale_after) {
        ExtractionStart::Started if was == ParticipationState::Extracting => {
            tracing::warn!(campaign = %campaign_id, ods = %ods, "taking over a stale extraction");
        }
        ExtractionStart::Started => {}
        ExtractionStart::Busy => {
            return Err(JobError::retry(format!(
                "practice {ods} is being extracted by another worker"
            )))
        }
        ExtractionStart::AlreadyExtracted => return queue_chunks(hub, &participation).await,
        // An excluded practice's job redelivered: the release may not have
        // happened yet.
        ExtractionStart::NotTakingPart if participation.decision.is_some() => {
            return queue_chunks(hub, &participation).await
        }
        ExtractionStart::NotTakingPart => return Ok(()),
    }
    participation = match hub.store.update_participation(&participation).await {
        Ok(stored) => stored,
        // Another delivery of the same job took it: that worker does the work.
        Err(StoreError::Conflict(_)) => return Ok(()),
        Err(other) => return Err(other.into()),
    };
    let practice = hub
        .store
        .get_practice(ods)
        .await?
        .ok_or_else(|| JobError::Malformed(format!("practice {ods} is not in the registry")))?;
    if participation.extraction_attempts > 1 {
        let removed = hub
            .patients
            .delete_practice_recipients(campaign_id, ods)
            .await?;
        tracing::info!(campaign = %campaign_id, ods = %ods, removed, "cleared an earlier attempt");
    }

    match read_practice(hub, &campaign, &practice).await {
        Ok(built) if suspect(hub, &practice, built.records_read) => {
            hold(hub, participation, &practice, built).await
        }
        Ok(built) => commit(hub, participation, built).await,
        Err(ReadError::Cancelled) => {
            hub.patients.purge_campaign(campaign_id).await?;
            Ok(())
        }
        Err(ReadError::Job(error)) => Err(error),
        Err(ReadError::Gp(error)) => {
            give_up_or_retry(hub, participation, error, receive_count).await
        }
    }
}

enum ReadError {
    Gp(GpError),
    Job(JobError),
    Cancelled,
}

impl From<JobError> for ReadError {
    fn from(error: JobError) -> Self {
        Self::Job(error)
    }
}

impl From<StoreError> for ReadError {
    fn from(error: StoreError) -> Self {
        Self::Job(error.into())
    }
}

struct Built {
    chunks: Vec<ChunkRecord>,
    counts: OutcomeCounts,
    malformed: u64,
    /// Records the GP system returned, readable or not.
    records_read: u64,
}

/// Far fewer records than the practice's registered list: a wrong search
/// form, a broken feed or an empty export reads as a small practice, so it
/// is held rather than completed.
fn suspect(hub: &Hub, practice: &Practice, records_read: u64) -> bool {
    let expected = practice.list_size as f64 * hub.config.suspect_below;
    practice.list_size > 0 && (records_read as f64) < expected
}

async fn read_practice(
    hub: &Hub,
    campaign: &crate::domain::Campaign,
    practice: &Practice,
) -> Result<Built, ReadError> {
    let keep_names = campaign.template.uses(crate::domain::Field::FirstName)
        || campaign.template.uses(crate::domain::Field::LastName);
    let mut stream = hub.gp.extract(practice).await.map_err(ReadError::Gp)?;
    let mut builder = ChunkBuilder {
        hub,
        campaign,
        ods: &practice.ods,
        pending: Vec::new(),
        chunks: Vec::new(),
        counts: OutcomeCounts::default(),
        seen_patients: HashSet::new(),
        seen_letters: HashSet::new(),
        seen_mobiles: HashSet::new(),
        restrictions: Vec::new(),
    };
    let mut malformed = 0u64;
    let mut records_read = 0u64;
    let mut chunks_checked = 0;
    while let Some(item) = stream.next().await {
        if matches!(item, Ok(_) | Err(GpError::MalformedRecord(_))) {
            records_read += 1;
        }
        let patient = match item {
            Ok(patient) => patient,
            Err(GpError::MalformedRecord(_)) => {
                malformed += 1;
                continue;
            }
            Err(other) => return Err(ReadError::Gp(other)),
        };
        // Every record counts here, in the cohort or not: a death recorded
        // at one practice stops the text another practice's record allows.
        builder.restrict(&patient).await?;
        match classify(patient, campaign, keep_names) {
            Classified::NotInCohort => {}
            Classified::Excluded(reason) => {
                builder.counts.cohort += 1;
                builder.counts.exclude(reason);
            }
            Classified::Candidate(candidate) => {
                builder.counts.cohort += 1;
                builder.push(*candidate).await?;
            }
        }
        // Stop promptly if the campaign is cancelled mid-extraction.
        if builder.chunks.len() > chunks_checked + 20 {
            chunks_checked = builder.chunks.len();
            if hub.campaign(&campaign.id).await?.state == CampaignState::Cancelled {
                return Err(ReadError::Cancelled);
            }
        }
    }
    builder.flush().await?;
    builder.store_restrictions().await?;
    Ok(Built {
        chunks: builder.chunks,
        counts: builder.counts,
        malformed,
        records_read,
    })
}

/// Holds a suspect extraction for a staff decision: its recipients stay
/// stored, but no chunk is recorded or counted and the practice stays
/// pending, so nothing is sent and the campaign cannot complete. Loud: a
/// warning, an audit event, and the state in `watch` and the report.
async fn hold(
    hub: &Hub,
    mut participation: Participation,
    practice: &Practice,
    built: Built,
) -> Result<(), JobError> {
    let campaign_id = participation.campaign.clone();
    if hub.campaign(&campaign_id).await?.state == CampaignState::Cancelled {
        hub.patients.purge_campaign(&campaign_id).await?;
        return Ok(());
    }
    participation.hold_as_suspect(
        built.chunks.len() as u32,
        built.counts,
        built.malformed,
        built.records_read,
    );
    participation.held_since = Some(hub.now());
    hub.store.update_participation(&participation).await?;
    tracing::warn!(
        campaign = %campaign_id,
        ods = %participation.ods,
        records_read = built.records_read,
        list_size = practice.list_size,
        "extraction far below the registered list size; held for a staff decision"
    );
    hub.audit(
        Some(&campaign_id),
        "hub",
        "practice_extraction_suspect",
        serde_json::json!({
            "ods": participation.ods,
            "records_read": built.records_read,
            "list_size": practice.list_size,
            "malformed_records": built.malformed,
        }),
    )
    .await?;
    Ok(())
}

/// Carries out the staff decision the api recorded on a held practice
/// (nothing if none is recorded yet). Proceed and exclude finish the
/// practice's part; retry discards what was read and returns the practice,
/// back in line, to be extracted again. Each step is idempotent and the
/// participation moves on by compare-and-set, so a redelivered job finds
/// the decision carried out and only re-releases the chunks.
async fn carry_out_decision(
    hub: &Hub,
    mut participation: Participation,
) -> Result<Option<Participation>, JobError> {
    let Some(recorded) = participation.decision.clone() else {
        return Ok(None);
    };
    let campaign_id = participation.campaign.clone();
    participation
        .decide(recorded.decision)
        .map_err(|refused| JobError::Malformed(refused.to_string()))?;
    let retried = match recorded.decision {
        ExtractionDecision::Proceed => {
            let progress = proceed_with_held(hub, &participation).await?;
            hub.after_progress(&campaign_id, progress).await?;
            None
        }
        ExtractionDecision::Exclude => {
            discard_held(hub, &participation).await?;
            let progress = hub.store.commit_extraction(&participation, 0).await?;
            if progress.practices_pending == 0 {
                release(hub, &campaign_id).await?;
            }
            hub.after_progress(&campaign_id, progress).await?;
            None
        }
        ExtractionDecision::Retry => {
            discard_held(hub, &participation).await?;
            Some(hub.store.update_participation(&participation).await?)
        }
    };
    tracing::info!(campaign = %campaign_id, ods = %participation.ods, decision = recorded.decision.as_str(), "extraction decision carried out");
    hub.audit(
        Some(&campaign_id),
        "hub",
        "extraction_decision_carried_out",
        serde_json::json!({
            "ods": participation.ods,
            "decision": recorded.decision.as_str(),
            "decided_by": recorded.by.as_str(),
        }),
    )
    .await?;
    Ok(retried)
}

/// Staff proceed with a held extraction: its chunks are rebuilt from the
/// stored recipients, recorded and counted, as a commit would have.
async fn proceed_with_held(
    hub: &Hub,
    participation: &Participation,
) -> Result<crate::domain::Progress, JobError> {
    let mut chunks = Vec::with_capacity(participation.chunks as usize);
    for sequence in 0..participation.chunks {
        let chunk = ChunkId::new(&participation.ods, sequence);
        let recipients = hub
            .patients
            .load_chunk(&participation.campaign, &chunk)
            .await?;
        let sms = recipients.iter().filter(|r| r.is_sms()).count() as u32;
        let letters = recipients.len() as u32 - sms;
        chunks.push(ChunkRecord {
            campaign: participation.campaign.clone(),
            chunk,
            ods: participation.ods.clone(),
            sms_recipients: sms,
            letter_recipients: letters,
            send_done: sms == 0,
            letters_done: letters == 0,
            writeback_done: false,
            counted_final: false,
            counts: OutcomeCounts::default(),
        });
    }
    hub.store.put_chunks(&chunks).await?;
    let progress = hub
        .store
        .commit_extraction(participation, chunks.len() as u64)
        .await?;
    if progress.practices_pending == 0 {
        release(hub, &participation.campaign).await?;
    }
    Ok(progress)
}

/// Staff exclude a held practice (or a retry starts it again): what it
/// read is deleted.
async fn discard_held(hub: &Hub, participation: &Participation) -> Result<(), JobError> {
    hub.patients
        .delete_practice_recipients(&participation.campaign, &participation.ods)
        .await?;
    Ok(())
}

async fn commit(hub: &Hub, mut participation: Participation, built: Built) -> Result<(), JobError> {
    let campaign_id = participation.campaign.clone();
    // A cancel during extraction: commit nothing, and delete what the
    // campaign holds (the purge may already have run).
    if hub.campaign(&campaign_id).await?.state == CampaignState::Cancelled {
        hub.patients.purge_campaign(&campaign_id).await?;
        return Ok(());
    }
    hub.store.put_chunks(&built.chunks).await?;
    participation.finish_extraction(built.chunks.len() as u32, built.counts, built.malformed);
    participation.records_read = built.records_read;
    let progress = hub
        .store
        .commit_extraction(&participation, built.chunks.len() as u64)
        .await?;
    participation.version += 1;
    let counts = &participation.counts;
    tracing::info!(
        campaign = %campaign_id,
        ods = %participation.ods,
        cohort = counts.cohort,
        excluded = counts.excluded_total(),
        chunks = built.chunks.len(),
        malformed = built.malformed,
        "practice extracted"
    );
    hub.audit(
        Some(&campaign_id),
        "hub",
        "practice_extracted",
        serde_json::json!({
            "ods": participation.ods,
            "cohort": counts.cohort,
            "excluded": counts.excluded,
            "chunks": built.chunks.len(),
            "malformed_records": built.malformed,
        }),
    )
    .await?;
    if progress.practices_pending == 0 {
        release(hub, &campaign_id).await?;
    }
    hub.after_progress(&campaign_id, progress).await
}

/// Once every practice's extraction is final, every restriction of every
/// record is stored: the chunks are released for sending (the send and
/// letter handlers withhold what another record forbids). Repeating it
/// only queues jobs the handlers absorb.
pub(crate) async fn release(hub: &Hub, campaign: &CampaignId) -> Result<(), JobError> {
    // Only chunks of practices whose extraction stands.
    let extracted: HashSet<OdsCode> = hub
        .store
        .list_participations(campaign)
        .await?
        .into_iter()
        .filter(|p| p.state == ParticipationState::Extracted)
        .map(|p| p.ods)
        .collect();
    let chunks: Vec<ChunkRecord> = hub
        .store
        .list_chunks(campaign)
        .await?
        .into_iter()
        .filter(|c| extracted.contains(&c.ods))
        .collect();
    tracing::info!(campaign = %campaign, chunks = chunks.len(), "every practice extracted; chunks released");
    send_jobs(hub, campaign, &chunks).await
}

async fn send_jobs(
    hub: &Hub,
    campaign: &CampaignId,
    chunks: &[ChunkRecord],
) -> Result<(), JobError> {
    let mut jobs = Vec::new();
    for chunk in chunks {
        if chunk.sms_recipients > 0 && !chunk.send_done {
            jobs.push(Job::Send {
                campaign: campaign.clone(),
                chunk: chunk.chunk.clone(),
            });
        }
        if chunk.letter_recipients > 0 && !chunk.letters_done {
            jobs.push(Job::Letters {
                campaign: campaign.clone(),
                chunk: chunk.chunk.clone(),
            });
        }
    }
    hub.queue.send(&jobs).await?;
    Ok(())
}

/// A redelivered job for an extracted practice releases the chunks again
/// if every practice is done (the worker that finished last may have
/// stopped before queueing them).
async fn queue_chunks(hub: &Hub, participation: &Participation) -> Result<(), JobError> {
    let campaign = hub.campaign(&participation.campaign).await?;
    if campaign.progress.practices_pending > 0 {
        return Ok(());
    }
    release(hub, &participation.campaign).await
}

/// The GP system could not be read: retry through the queue, or after the
/// last attempt record the practice as failed so the rest can finish.
async fn give_up_or_retry(
    hub: &Hub,
    mut participation: Participation,
    error: GpError,
    receive_count: u32,
) -> Result<(), JobError> {
    let campaign_id = participation.campaign.clone();
    let ods = participation.ods.clone();
    let last_attempt = receive_count >= hub.config.max_extract_attempts;
    // The error text comes from our adapters and names the system, not patients.
    participation.extraction_failed(error.to_string(), last_attempt);
    if !last_attempt {
        hub.store.update_participation(&participation).await?;
        tracing::warn!(campaign = %campaign_id, ods = %ods, attempt = receive_count, %error, "extraction failed; will retry");
        return Err(JobError::retry_because(
            format!("GP system of {ods}"),
            error,
        ));
    }
    let progress = hub.store.commit_extraction(&participation, 0).await?;
    hub.patients
        .delete_practice_recipients(&campaign_id, &ods)
        .await?;
    tracing::error!(campaign = %campaign_id, ods = %ods, attempts = receive_count, %error, "extraction failed for good");
    hub.audit(
        Some(&campaign_id),
        "hub",
        "practice_extraction_failed",
        serde_json::json!({ "ods": ods, "attempts": receive_count, "error": error.to_string() }),
    )
    .await?;
    if progress.practices_pending == 0 {
        release(hub, &campaign_id).await?;
    }
    hub.after_progress(&campaign_id, progress).await
}
