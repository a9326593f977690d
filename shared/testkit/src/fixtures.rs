//! Records for store and queue tests: valid, distinct, and cheap to make.

use chrono::{DateTime, Duration, Utc};
use hub_core::domain::{
    check_digit, Campaign, CampaignId, CampaignOptions, CampaignState, ChunkId, ChunkRecord,
    Contact, ExclusionReason, MessageTemplate, NhsNumber, OdsCode, OutcomeCounts, Participation,
    ParticipationState, Personal, PostalAddress, Postcode, Progress, Recipient, RecipientStatus,
    StaffId, Target, TemplateRules, UkMobile,
};
use hub_core::ports::{GpConnection, HubStore, Practice, StoreError};

/// The `n`th practice code: `G80000`, `G80001`, ...
pub fn ods(n: u32) -> OdsCode {
    OdsCode::parse(&format!("G{:05}", 80000 + n)).expect("valid ODS code")
}

/// A campaign in its opt-out window, created now.
pub fn campaign() -> Campaign {
    campaign_at(Utc::now())
}

/// A campaign in its opt-out window, created at `now`.
pub fn campaign_at(now: DateTime<Utc>) -> Campaign {
    Campaign {
        id: CampaignId::new(),
        name: "Heatwave".into(),
        template: MessageTemplate::parse("Stay cool and drink water.", &TemplateRules::default())
            .expect("valid template"),
        target: Target::default(),
        options: CampaignOptions::default(),
        optout_deadline: now + Duration::hours(2),
        justification: "Red heat health alert".into(),
        created_by: StaffId::new("arn:aws:iam::123456789012:user/alice"),
        created_at: now,
        approved_by: None,
        approved_at: None,
        state: CampaignState::OptOutWindow,
        state_changed_at: now,
        cancelled_by: None,
        cancel_reason: None,
        extraction_jobs_queued: false,
        progress: Progress::default(),
        purged_at: None,
        purged_items: None,
        deadline_change: None,
        paused_until: None,
        version: 0,
    }
}

pub fn practice(n: u32) -> Practice {
    Practice {
        ods: ods(n),
        name: format!("Practice {n}"),
        notice_email: format!("practice{n}@nhs.invalid"),
        dsa_signed: None,
        connection: GpConnection::Simulated,
        list_size: 10_000 + u64::from(n),
    }
}

pub fn chunk_record(campaign: &CampaignId, practice: &OdsCode, sequence: u32) -> ChunkRecord {
    ChunkRecord {
        campaign: campaign.clone(),
        chunk: ChunkId::new(practice, sequence),
        ods: practice.clone(),
        sms_recipients: 10,
        letter_recipients: 2,
        send_done: false,
        letters_done: false,
        writeback_done: false,
        counted_final: false,
        counts: OutcomeCounts::default(),
    }
}

/// The `n`th valid NHS number (skipping prefixes with no check digit).
pub fn nhs(n: u32) -> NhsNumber {
    let mut candidate = 400_000_000 + n * 13;
    loop {
        let digits: Vec<u32> = format!("{candidate:09}")
            .chars()
            .filter_map(|c| c.to_digit(10))
            .collect();
        if let Some(check) = check_digit(&digits) {
            return NhsNumber::parse(&format!("{candidate:09}{check}")).expect("valid NHS number");
        }
        candidate += 1;
    }
}

/// A mobile in the drama range (`07700 900xxx`).
pub fn mobile(n: u32) -> UkMobile {
    UkMobile::parse(&format!("07700900{:03}", n % 1000)).expect("drama-range mobile")
}

/// A pending recipient; every third one (index 2, 5, ...) gets a letter.
pub fn recipient(chunk: &ChunkId, index: u32) -> Recipient {
    let contact = if index % 3 == 2 {
        Contact::Letter {
            address: PostalAddress {
                name: Personal::new("Ada Lovelace".into()),
                lines: Personal::new(vec!["1 High Street".into(), "London".into()]),
                postcode: Postcode::parse("SE1 7EH").expect("valid postcode"),
            },
        }
    } else {
        Contact::Sms {
            mobile: mobile(index),
        }
    };
    Recipient {
        chunk: chunk.clone(),
        index,
        nhs_number: nhs(index),
        contact,
        first_name: Personal::new(format!("Ada{index}")),
        last_name: Personal::new("Lovelace".into()),
        status: RecipientStatus::Pending,
        delivery: None,
        written_back: false,
    }
}

/// An expiry (TTL) comfortably in the future.
pub fn later() -> DateTime<Utc> {
    Utc::now() + Duration::days(30)
}

/// Counts of a send stage: `sent` texts and `excluded` rejections.
pub fn counts(sent: u64, excluded: u64) -> OutcomeCounts {
    let mut counts = OutcomeCounts {
        cohort: sent + excluded,
        sent,
        ..OutcomeCounts::default()
    };
    for _ in 0..excluded {
        counts.exclude(ExclusionReason::ProviderRejected);
    }
    counts
}

pub fn conflict<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Conflict(_)))
}

pub fn not_found<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::NotFound(_)))
}

/// A campaign in its opt-out window with `practices` notified
/// participations (practices `0..practices`).
pub async fn seeded(hub: &dyn HubStore, practices: u32) -> (Campaign, Vec<Participation>) {
    let c = campaign();
    hub.create_campaign(&c).await.expect("create campaign");
    let ps: Vec<Participation> = (0..practices)
        .map(|n| Participation::notified(c.id.clone(), ods(n)))
        .collect();
    hub.create_participations(&ps)
        .await
        .expect("create participations");
    (c, ps)
}

/// What the deadline handler writes to freeze `ps` of `c`: the campaign
/// extracting, every participation participating.
pub fn freeze_input(c: &Campaign, ps: &[Participation]) -> (Campaign, Vec<Participation>) {
    let mut campaign = c.clone();
    campaign.state = CampaignState::OptOutWindow;
    let frozen: Vec<Participation> = ps
        .iter()
        .map(|p| Participation {
            state: ParticipationState::Participating,
            ..p.clone()
        })
        .collect();
    campaign
        .begin_extraction(frozen.len() as u64, Utc::now())
        .expect("from the opt-out window");
    (campaign, frozen)
}

/// A frozen campaign of one practice (practice 0) whose extraction
/// committed `chunks` chunks.
pub async fn with_chunks(hub: &dyn HubStore, chunks: u32) -> (Campaign, Vec<ChunkRecord>) {
    let (c, ps) = seeded(hub, 1).await;
    let (frozen_campaign, frozen) = freeze_input(&c, &ps);
    hub.freeze_participants(&frozen_campaign, &frozen)
        .await
        .expect("freeze");
    let records: Vec<ChunkRecord> = (0..chunks)
        .map(|s| chunk_record(&c.id, &ods(0), s))
        .collect();
    hub.put_chunks(&records).await.expect("put chunks");
    let mut p = hub
        .get_participation(&c.id, &ods(0))
        .await
        .expect("get participation")
        .expect("participation");
    p.state = ParticipationState::Extracted;
    hub.commit_extraction(&p, u64::from(chunks))
        .await
        .expect("commit extraction");
    (c, records)
}
