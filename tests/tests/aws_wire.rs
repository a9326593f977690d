//! The AWS adapters over the wire, against an AWS API emulator (moto) on
//! loopback, with tables, queues, secrets and schedule groups created from
//! `template.yaml`; plus checks of the template's own rules.
//!
//! Run: `cargo test -p hub-tests --features aws --test aws_wire`
//! (see `tests/src/aws/mod.rs` for how the emulator is found or started).

#[path = "../src/aws/mod.rs"]
mod aws;

use aws::template::{as_u64, intrinsic, Template};
use aws::Stack;
use chrono::{DateTime, Duration, TimeZone, Utc};
use hub_adapters::aws::{
    env, DynamoHubStore, DynamoPatientStore, Secrets, SecretsError, SecretsManagerSecrets,
};
use hub_core::domain::{
    check_digit, AuditEvent, Campaign, CampaignId, CampaignOptions, CampaignState, ChunkId,
    ChunkRecord, ChunkStage, Contact, DedupeKey, DeliveryStatus, ExclusionReason, MessageTemplate,
    NhsNumber, OdsCode, OutcomeCounts, Participation, ParticipationState, Personal, Progress,
    Recipient, RecipientStatus, StaffId, Target, TemplateRules, UkMobile,
};
use hub_core::ports::{
    GpConnection, HubStore, Job, JobQueue, PatientDataStore, Placement, Practice, QueueName,
    ScheduledAction, Scheduler, StatusUpdate, StoreError,
};
use secrecy::ExposeSecret;
use serde_yaml::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

// ------------------------------------------------------------------ fixtures

fn ods(n: u32) -> OdsCode {
    OdsCode::parse(&format!("G{:05}", 80000 + n)).expect("valid ODS code")
}

fn campaign(now: DateTime<Utc>) -> Campaign {
    Campaign {
        id: CampaignId::new(),
        name: "Heatwave".into(),
        template: MessageTemplate::parse("Stay cool and drink water.", &TemplateRules::default())
            .expect("valid template"),
        target: Target::default(),
        options: CampaignOptions::default(),
        optout_deadline: now + Duration::hours(2),
        justification: "Red heat health alert".into(),
        created_by: StaffId("arn:aws:iam::123456789012:user/alice".into()),
        created_at: now,
        approved_by: None,
        approved_at: None,
        state: CampaignState::PendingApproval,
        state_changed_at: now,
        cancelled_by: None,
        cancel_reason: None,
        extraction_jobs_queued: false,
        progress: Progress::default(),
        purged_at: None,
        purged_items: None,
        version: 0,
    }
}

fn practice(n: u32) -> Practice {
    Practice {
        ods: ods(n),
        name: format!("Practice {n}"),
        notice_email: format!("practice{n}@nhs.invalid"),
        dsa_signed: chrono::NaiveDate::from_ymd_opt(2026, 1, 1),
        connection: GpConnection::Simulated,
        list_size: 10_000 + u64::from(n),
    }
}

fn chunk_record(campaign: &CampaignId, practice: &OdsCode, sequence: u32) -> ChunkRecord {
    ChunkRecord {
        campaign: campaign.clone(),
        chunk: ChunkId::new(practice, sequence),
        ods: practice.clone(),
        sms_recipients: 10,
        letter_recipients: 0,
        send_done: false,
        letters_done: false,
        writeback_done: false,
        counted_final: false,
        counts: OutcomeCounts::default(),
    }
}

/// The `n`th valid NHS number (skipping prefixes with no check digit).
fn nhs(n: u32) -> NhsNumber {
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

fn mobile(n: u32) -> UkMobile {
    UkMobile::parse(&format!("07700900{:03}", n % 1000)).expect("drama-range mobile")
}

fn recipient(chunk: &ChunkId, index: u32) -> Recipient {
    Recipient {
        chunk: chunk.clone(),
        index,
        nhs_number: nhs(index),
        contact: Contact::Sms {
            mobile: mobile(index),
        },
        first_name: Personal::new(format!("First{index}")),
        last_name: Personal::new("Test".to_string()),
        status: RecipientStatus::Pending,
        delivery: None,
        written_back: false,
    }
}

fn later() -> DateTime<Utc> {
    Utc::now() + Duration::days(30)
}

async fn stack() -> Stack {
    Stack::create()
        .await
        .expect("emulator stack from template.yaml")
}

async fn stores(stack: &Stack) -> (DynamoHubStore, DynamoPatientStore) {
    (
        stack.hub_store().expect("hub store"),
        stack.patient_store().expect("patient store"),
    )
}

fn conflict<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Conflict(_)))
}

fn not_found<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::NotFound(_)))
}

/// A campaign in `Extracting` with `practices` notified participations.
async fn seeded(hub: &DynamoHubStore, practices: u32) -> (Campaign, Vec<Participation>) {
    let c = campaign(Utc::now());
    hub.create_campaign(&c).await.unwrap();
    let ps: Vec<Participation> = (0..practices)
        .map(|n| Participation::notified(c.id.clone(), ods(n)))
        .collect();
    hub.create_participations(&ps).await.unwrap();
    (c, ps)
}

// ------------------------------------------------------------------ hub store

#[tokio::test]
async fn practices_round_trip_and_list_without_a_scan() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    assert_eq!(hub.get_practice(&ods(1)).await.unwrap(), None);
    for n in 0..5 {
        hub.put_practice(&practice(n)).await.unwrap();
    }
    let mut changed = practice(2);
    changed.notice_email = "new@nhs.invalid".into();
    changed.connection = GpConnection::Fhir {
        base_url: "https://gp.example/fhir".into(),
        bulk_export: true,
        secret: Some("sms-hub/gp/G80002".into()),
    };
    hub.put_practice(&changed).await.unwrap();

    assert_eq!(
        hub.get_practice(&ods(2)).await.unwrap(),
        Some(changed.clone())
    );
    let listed = hub.list_practices().await.unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[2], changed);
    assert_eq!(
        listed.iter().map(|p| p.ods.clone()).collect::<Vec<_>>(),
        (0..5).map(ods).collect::<Vec<_>>(),
        "listed in ODS order"
    );
}

#[tokio::test]
async fn campaigns_are_created_once_and_listed() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    let first = campaign(Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap());
    let second = campaign(Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap());
    hub.create_campaign(&second).await.unwrap();
    hub.create_campaign(&first).await.unwrap();

    assert!(
        conflict(hub.create_campaign(&first).await),
        "ids are unique"
    );
    assert_eq!(
        hub.get_campaign(&first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(hub.get_campaign(&CampaignId::new()).await.unwrap(), None);
    let listed = hub.list_campaigns().await.unwrap();
    assert_eq!(listed, vec![first, second], "oldest first");
}

#[tokio::test]
async fn update_campaign_is_compare_and_set() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    let c = campaign(Utc::now());
    hub.create_campaign(&c).await.unwrap();

    let mut edit = c.clone();
    edit.name = "Heatwave (amber)".into();
    let stored = hub.update_campaign(&edit).await.unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(stored.name, "Heatwave (amber)");
    assert_eq!(hub.get_campaign(&c.id).await.unwrap(), Some(stored.clone()));

    // GIVEN a copy read before that write WHEN it is written THEN it loses.
    let mut stale = c.clone();
    stale.name = "stale".into();
    assert!(conflict(hub.update_campaign(&stale).await));
    assert_eq!(hub.get_campaign(&c.id).await.unwrap(), Some(stored.clone()));

    assert!(not_found(hub.update_campaign(&campaign(Utc::now())).await));

    // The counters belong to the atomic operations: a copy's progress is
    // not written over them.
    let mut meddling = stored.clone();
    meddling.progress.chunks_outstanding = 99;
    let written = hub.update_campaign(&meddling).await.unwrap();
    assert_eq!(written.progress, Progress::default());
}

#[tokio::test]
async fn participations_are_created_once_and_compare_and_set() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    let (c, ps) = seeded(&hub, 3).await;

    let mut opted = ps[0].clone();
    opted.state = ParticipationState::OptedOut;
    opted.opted_out_by = Some("practice-link".into());
    let stored = hub.update_participation(&opted).await.unwrap();
    assert_eq!(stored.version, 1);

    // Creating again leaves existing ones (and the opt-out) alone.
    hub.create_participations(&ps).await.unwrap();
    assert_eq!(
        hub.get_participation(&c.id, &ods(0)).await.unwrap(),
        Some(stored.clone())
    );
    assert!(conflict(hub.update_participation(&ps[0]).await));
    let missing = Participation::notified(c.id.clone(), ods(77));
    assert!(not_found(hub.update_participation(&missing).await));
    assert_eq!(hub.get_participation(&c.id, &ods(77)).await.unwrap(), None);

    let listed = hub.list_participations(&c.id).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0], stored);
    assert_eq!(&listed[1..], &ps[1..]);
}

/// Freezes `frozen` of `ps` (all Participating) for `c`.
fn freeze_input(c: &Campaign, ps: &[Participation]) -> (Campaign, Vec<Participation>) {
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

async fn open_window(hub: &DynamoHubStore, c: &Campaign) -> Campaign {
    let mut open = c.clone();
    open.state = CampaignState::OptOutWindow;
    hub.update_campaign(&open).await.unwrap()
}

#[tokio::test]
async fn freeze_participants_is_all_or_nothing() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    let (c, ps) = seeded(&hub, 5).await;
    let c = open_window(&hub, &c).await;

    // GIVEN one practice opts out after the deadline handler read it
    let mut opted = ps[3].clone();
    opted.state = ParticipationState::OptedOut;
    hub.update_participation(&opted).await.unwrap();

    // WHEN the handler freezes its stale view THEN nothing changes at all
    let (frozen_campaign, frozen) = freeze_input(&c, &ps);
    assert!(conflict(
        hub.freeze_participants(&frozen_campaign, &frozen).await
    ));
    assert_eq!(hub.get_campaign(&c.id).await.unwrap(), Some(c.clone()));
    let after = hub.list_participations(&c.id).await.unwrap();
    assert_eq!(
        after
            .iter()
            .filter(|p| p.state == ParticipationState::Notified)
            .count(),
        4
    );

    // WHEN it re-reads and freezes the four left THEN all move together
    let fresh: Vec<Participation> = after
        .into_iter()
        .filter(|p| p.state == ParticipationState::Notified)
        .collect();
    let (frozen_campaign, frozen) = freeze_input(&c, &fresh);
    let stored = hub
        .freeze_participants(&frozen_campaign, &frozen)
        .await
        .unwrap();
    assert_eq!(stored.version, c.version + 1);
    assert_eq!(stored.state, CampaignState::Extracting);
    let read = hub.get_campaign(&c.id).await.unwrap().unwrap();
    assert_eq!(read, stored);
    assert_eq!(read.progress.practices_pending, 4);
    let participating = hub
        .list_participations(&c.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.state == ParticipationState::Participating)
        .inspect(|p| assert_eq!(p.version, 1))
        .count();
    assert_eq!(participating, 4);

    // A second freeze (a redelivered deadline) loses on the campaign.
    assert!(conflict(
        hub.freeze_participants(&frozen_campaign, &frozen).await
    ));
}

#[tokio::test]
async fn freeze_participants_beyond_one_transaction() {
    // More participations than one TransactWriteItems call can hold (100).
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    let (c, ps) = seeded(&hub, 150).await;
    let c = open_window(&hub, &c).await;

    // GIVEN a participation in the second transaction changed meanwhile
    let mut opted = ps[120].clone();
    opted.state = ParticipationState::OptedOut;
    hub.update_participation(&opted).await.unwrap();
    let (frozen_campaign, frozen) = freeze_input(&c, &ps);
    assert!(conflict(
        hub.freeze_participants(&frozen_campaign, &frozen).await
    ));

    // THEN the first part was put back and the campaign never moved
    assert_eq!(hub.get_campaign(&c.id).await.unwrap(), Some(c.clone()));
    let after = hub.list_participations(&c.id).await.unwrap();
    assert_eq!(
        after
            .iter()
            .filter(|p| p.state == ParticipationState::Participating)
            .count(),
        0
    );
    assert_eq!(
        after
            .iter()
            .filter(|p| p.state == ParticipationState::Notified)
            .count(),
        149
    );

    // A fresh read freezes all 149 in parts.
    let fresh: Vec<Participation> = after
        .into_iter()
        .filter(|p| p.state == ParticipationState::Notified)
        .collect();
    let (frozen_campaign, frozen) = freeze_input(&c, &fresh);
    let stored = hub
        .freeze_participants(&frozen_campaign, &frozen)
        .await
        .unwrap();
    assert_eq!(stored.progress.practices_pending, 149);
    assert_eq!(
        hub.list_participations(&c.id)
            .await
            .unwrap()
            .iter()
            .filter(|p| p.state == ParticipationState::Participating)
            .count(),
        149
    );
}

#[tokio::test]
async fn chunks_are_stored_once() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    let (c, _) = seeded(&hub, 1).await;
    let chunks: Vec<ChunkRecord> = (0..30).map(|s| chunk_record(&c.id, &ods(0), s)).collect();
    hub.put_chunks(&chunks).await.unwrap();

    // A later attempt with other content leaves stored chunks alone.
    let mut again = chunks[0].clone();
    again.sms_recipients = 999;
    hub.put_chunks(&[again]).await.unwrap();
    assert_eq!(
        hub.get_chunk(&c.id, &chunks[0].chunk).await.unwrap(),
        Some(chunks[0].clone())
    );
    assert_eq!(hub.list_chunks(&c.id).await.unwrap(), chunks);
    assert_eq!(
        hub.get_chunk(&c.id, &ChunkId::new(&ods(9), 1))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn commit_extraction_moves_participation_and_counters_together() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    let (c, ps) = seeded(&hub, 2).await;
    let c = open_window(&hub, &c).await;
    let (frozen_campaign, frozen) = freeze_input(&c, &ps);
    hub.freeze_participants(&frozen_campaign, &frozen)
        .await
        .unwrap();
    let frozen: Vec<Participation> = hub.list_participations(&c.id).await.unwrap();

    let mut done = frozen[0].clone();
    done.state = ParticipationState::Extracted;
    done.chunks = 3;
    let progress = hub.commit_extraction(&done, 3).await.unwrap();
    assert_eq!(
        progress,
        Progress {
            practices_pending: 1,
            chunks_outstanding: 3
        }
    );
    let stored = hub
        .get_participation(&c.id, &done.ods)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.state, stored.version),
        (ParticipationState::Extracted, 2)
    );

    // A redelivered commit loses on the participation and moves nothing.
    assert!(conflict(hub.commit_extraction(&done, 3).await));
    let campaign_now = hub.get_campaign(&c.id).await.unwrap().unwrap();
    assert_eq!(campaign_now.progress, progress);

    // A commit for a campaign that is gone changes nothing either.
    let orphan = Participation::notified(CampaignId::new(), ods(5));
    hub.create_participations(std::slice::from_ref(&orphan))
        .await
        .unwrap();
    let mut orphan_done = orphan.clone();
    orphan_done.state = ParticipationState::Extracted;
    assert!(not_found(hub.commit_extraction(&orphan_done, 1).await));
    assert_eq!(
        hub.get_participation(&orphan.campaign, &orphan.ods)
            .await
            .unwrap(),
        Some(orphan)
    );

    let mut second = frozen[1].clone();
    second.state = ParticipationState::Extracted;
    let progress = hub.commit_extraction(&second, 2).await.unwrap();
    assert_eq!(
        progress,
        Progress {
            practices_pending: 0,
            chunks_outstanding: 5
        }
    );
}

fn counts(sent: u64, excluded: u64) -> OutcomeCounts {
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

/// A campaign with `chunks` committed chunks of practice 0.
async fn with_chunks(hub: &DynamoHubStore, chunks: u32) -> (Campaign, Vec<ChunkRecord>) {
    let (c, ps) = seeded(hub, 1).await;
    let c = open_window(hub, &c).await;
    let (frozen_campaign, frozen) = freeze_input(&c, &ps);
    hub.freeze_participants(&frozen_campaign, &frozen)
        .await
        .unwrap();
    let records: Vec<ChunkRecord> = (0..chunks)
        .map(|s| chunk_record(&c.id, &ods(0), s))
        .collect();
    hub.put_chunks(&records).await.unwrap();
    let mut p = hub
        .get_participation(&c.id, &ods(0))
        .await
        .unwrap()
        .unwrap();
    p.state = ParticipationState::Extracted;
    hub.commit_extraction(&p, u64::from(chunks)).await.unwrap();
    (c, records)
}

#[tokio::test]
async fn complete_chunk_stage_counts_each_stage_once() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    let (c, chunks) = with_chunks(&hub, 2).await;
    let chunk = &chunks[0].chunk;

    let (record, progress) = hub
        .complete_chunk_stage(&c.id, chunk, ChunkStage::Send, &counts(8, 2))
        .await
        .unwrap()
        .expect("first completion");
    assert!(record.send_done && !record.is_final());
    assert_eq!((record.counts.sent, record.counts.excluded_total()), (8, 2));
    assert_eq!(progress.chunks_outstanding, 2);

    // Repeated: nothing added.
    assert_eq!(
        hub.complete_chunk_stage(&c.id, chunk, ChunkStage::Send, &counts(8, 2))
            .await
            .unwrap(),
        None
    );
    hub.complete_chunk_stage(&c.id, chunk, ChunkStage::Letters, &OutcomeCounts::default())
        .await
        .unwrap()
        .expect("letters");
    let written_back = OutcomeCounts {
        written_back: 8,
        ..OutcomeCounts::default()
    };
    let (record, progress) = hub
        .complete_chunk_stage(&c.id, chunk, ChunkStage::Writeback, &written_back)
        .await
        .unwrap()
        .expect("writeback");
    assert!(record.is_final() && record.counted_final);
    assert_eq!(record.counts.written_back, 8);
    assert_eq!(
        progress.chunks_outstanding, 1,
        "the final stage counts it once"
    );
    assert_eq!(hub.get_chunk(&c.id, chunk).await.unwrap(), Some(record));

    assert!(not_found(
        hub.complete_chunk_stage(
            &c.id,
            &ChunkId::new(&ods(0), 99),
            ChunkStage::Send,
            &counts(1, 0)
        )
        .await
    ));
}

#[tokio::test]
async fn concurrent_stage_completions_decrement_once() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    let (c, chunks) = with_chunks(&hub, 3).await;
    let hub = Arc::new(hub);
    let chunk = chunks[1].chunk.clone();

    // Every stage twice (redeliveries), all at once.
    let mut tasks = Vec::new();
    for stage in [ChunkStage::Send, ChunkStage::Letters, ChunkStage::Writeback] {
        for _ in 0..2 {
            let (hub, id, chunk) = (hub.clone(), c.id.clone(), chunk.clone());
            tasks.push(tokio::spawn(async move {
                hub.complete_chunk_stage(&id, &chunk, stage, &counts(1, 0))
                    .await
            }));
        }
    }
    let mut applied = 0;
    for task in tasks {
        if task.await.unwrap().unwrap().is_some() {
            applied += 1;
        }
    }
    assert_eq!(applied, 3, "each stage applied exactly once");
    let record = hub.get_chunk(&c.id, &chunk).await.unwrap().unwrap();
    assert!(record.is_final() && record.counted_final);
    assert_eq!(record.counts.sent, 3);
    let campaign_now = hub.get_campaign(&c.id).await.unwrap().unwrap();
    assert_eq!(campaign_now.progress.chunks_outstanding, 2);
}

#[tokio::test]
async fn a_chunk_stage_with_no_campaign_changes_nothing() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    // GIVEN a chunk whose final stage would decrement a missing campaign
    let id = CampaignId::new();
    let mut record = chunk_record(&id, &ods(0), 0);
    record.send_done = true;
    record.letters_done = true;
    hub.put_chunks(&[record.clone()]).await.unwrap();
    // WHEN the last stage completes THEN the transaction fails as a whole
    assert!(not_found(
        hub.complete_chunk_stage(&id, &record.chunk, ChunkStage::Writeback, &counts(1, 0))
            .await
    ));
    assert_eq!(
        hub.get_chunk(&id, &record.chunk).await.unwrap(),
        Some(record)
    );
}

#[tokio::test]
async fn delivery_receipts_add_to_chunk_counts() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    let (c, chunks) = with_chunks(&hub, 1).await;
    let chunk = &chunks[0].chunk;
    hub.add_chunk_deliveries(&c.id, chunk, 5, 1).await.unwrap();
    hub.complete_chunk_stage(&c.id, chunk, ChunkStage::Send, &counts(7, 0))
        .await
        .unwrap()
        .unwrap();
    hub.add_chunk_deliveries(&c.id, chunk, 2, 0).await.unwrap();
    let record = hub.get_chunk(&c.id, chunk).await.unwrap().unwrap();
    assert_eq!(
        (
            record.counts.sent,
            record.counts.delivered,
            record.counts.failed
        ),
        (7, 7, 1)
    );
    assert!(not_found(
        hub.add_chunk_deliveries(&c.id, &ChunkId::new(&ods(0), 42), 1, 0)
            .await
    ));
}

#[tokio::test]
async fn audit_events_list_oldest_first() {
    let stack = stack().await;
    let (hub, _) = stores(&stack).await;
    let c = campaign(Utc::now());
    let base = Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap();
    let event = |minutes: i64, action: &str, campaign: Option<CampaignId>| AuditEvent {
        campaign,
        at: base + Duration::minutes(minutes),
        actor: "arn:aws:iam::123456789012:user/bob".into(),
        action: action.into(),
        detail: serde_json::json!({ "practices": 3 }),
    };
    hub.append_audit(&event(5, "approved", Some(c.id.clone())))
        .await
        .unwrap();
    hub.append_audit(&event(0, "created", Some(c.id.clone())))
        .await
        .unwrap();
    hub.append_audit(&event(1, "practice_added", None))
        .await
        .unwrap();
    hub.append_audit(&event(9, "cancelled", Some(c.id.clone())))
        .await
        .unwrap();
    let listed = hub.list_audit(&c.id).await.unwrap();
    assert_eq!(
        listed.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["created", "approved", "cancelled"]
    );
    assert_eq!(listed[0], event(0, "created", Some(c.id.clone())));
}

// ------------------------------------------------------------------ patient data

#[tokio::test]
async fn dedupe_keys_are_placed_once_across_practices() {
    let stack = stack().await;
    let (_, patients) = stores(&stack).await;
    let c = CampaignId::new();
    let keys: Vec<DedupeKey> = (0..40)
        .map(|n| {
            if n % 2 == 0 {
                DedupeKey::Patient(nhs(n))
            } else {
                DedupeKey::Mobile(mobile(n))
            }
        })
        .collect();
    let placed = patients
        .place_keys(&c, &ods(1), &keys[..30], later())
        .await
        .unwrap();
    assert_eq!(placed, vec![Placement::Placed; 30]);

    // The same practice again (a retried extraction) still holds its keys;
    // another practice gets "held elsewhere" for those, in order.
    let again = patients
        .place_keys(&c, &ods(1), &keys[..30], later())
        .await
        .unwrap();
    assert_eq!(again, vec![Placement::Placed; 30]);
    let other = patients
        .place_keys(&c, &ods(2), &keys[20..], later())
        .await
        .unwrap();
    let expected: Vec<Placement> = (20..40)
        .map(|n| {
            if n < 30 {
                Placement::HeldElsewhere
            } else {
                Placement::Placed
            }
        })
        .collect();
    assert_eq!(other, expected);

    // Keys are per campaign.
    let elsewhere = patients
        .place_keys(&CampaignId::new(), &ods(2), &keys[..5], later())
        .await
        .unwrap();
    assert_eq!(elsewhere, vec![Placement::Placed; 5]);
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 40);
}

#[tokio::test]
async fn recipients_are_batch_written_and_loaded_in_order() {
    let stack = stack().await;
    let (_, patients) = stores(&stack).await;
    let c = CampaignId::new();
    let until = later();
    let a = ChunkId::new(&ods(1), 0);
    let b = ChunkId::new(&ods(1), 1);
    // 60 + 12: several BatchWriteItem calls of 25.
    let mut all: Vec<Recipient> = (0..60).rev().map(|i| recipient(&a, i)).collect();
    all.extend((0..12).map(|i| recipient(&b, i)));
    patients.put_recipients(&c, &all, until).await.unwrap();

    let loaded = patients.load_chunk(&c, &a).await.unwrap();
    assert_eq!(loaded.len(), 60);
    assert_eq!(
        loaded.iter().map(|r| r.index).collect::<Vec<_>>(),
        (0..60).collect::<Vec<_>>(),
        "index order, not string order"
    );
    assert_eq!(loaded[7], recipient(&a, 7));
    assert_eq!(patients.load_chunk(&c, &b).await.unwrap().len(), 12);

    // Overwriting with a retried attempt replaces, never duplicates.
    let mut retry = recipient(&a, 7);
    retry.first_name = Personal::new("Changed".into());
    patients
        .put_recipients(&c, &[retry.clone()], until)
        .await
        .unwrap();
    let loaded = patients.load_chunk(&c, &a).await.unwrap();
    assert_eq!(loaded.len(), 60);
    assert_eq!(loaded[7], retry);

    // Every item carries the TTL attribute.
    let item = stack
        .clients
        .dynamodb
        .get_item()
        .table_name(patients.table_name())
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("CAMPAIGN#{c}")),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("R#{a}#0000000003")),
        )
        .send()
        .await
        .unwrap()
        .item
        .expect("recipient item");
    let expires: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
    assert_eq!(expires, until.timestamp());
}

#[tokio::test]
async fn claims_race_and_each_recipient_is_claimed_once() {
    let stack = stack().await;
    let (_, patients) = stores(&stack).await;
    let patients = Arc::new(patients);
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(3), 0);
    let all: Vec<Recipient> = (0..200).map(|i| recipient(&chunk, i)).collect();
    patients.put_recipients(&c, &all, later()).await.unwrap();

    // 8 workers claim overlapping ranges at once.
    let mut tasks = Vec::new();
    for worker in 0..8u32 {
        let (patients, c, chunk) = (patients.clone(), c.clone(), chunk.clone());
        tasks.push(tokio::spawn(async move {
            let start = worker * 20;
            let indexes: Vec<u32> = (start..(start + 60).min(200)).collect();
            patients.claim(&c, &chunk, &indexes, Utc::now()).await
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap().unwrap());
    }
    let unique: HashSet<u32> = claimed.iter().copied().collect();
    assert_eq!(unique.len(), claimed.len(), "no index claimed twice");
    assert_eq!(unique, (0..200).collect::<HashSet<u32>>());

    // Claimed is not pending: a later claim gets nothing; a missing one neither.
    assert!(patients
        .claim(&c, &chunk, &[0, 1, 500], Utc::now())
        .await
        .unwrap()
        .is_empty());
    assert!(patients
        .load_chunk(&c, &chunk)
        .await
        .unwrap()
        .iter()
        .all(|r| matches!(r.status, RecipientStatus::Claimed { .. })));
}

#[tokio::test]
async fn statuses_deliveries_and_write_backs() {
    let stack = stack().await;
    let (_, patients) = stores(&stack).await;
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(4), 0);
    let all: Vec<Recipient> = (0..5).map(|i| recipient(&chunk, i)).collect();
    patients.put_recipients(&c, &all, later()).await.unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();

    assert_eq!(
        patients.claim(&c, &chunk, &[0, 1, 2], now).await.unwrap(),
        [0, 1, 2]
    );
    let sent = RecipientStatus::Sent {
        provider: "notify".into(),
        provider_id: "abc".into(),
        at: now,
    };
    patients
        .set_status(
            &c,
            &[
                StatusUpdate {
                    chunk: chunk.clone(),
                    index: 0,
                    status: sent.clone(),
                },
                StatusUpdate {
                    chunk: chunk.clone(),
                    index: 1,
                    status: RecipientStatus::Rejected,
                },
                // A released claim goes back to pending and can be claimed again.
                StatusUpdate {
                    chunk: chunk.clone(),
                    index: 2,
                    status: RecipientStatus::Pending,
                },
                // An update for a deleted (or never written) item is ignored.
                StatusUpdate {
                    chunk: chunk.clone(),
                    index: 99,
                    status: sent.clone(),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        patients.claim(&c, &chunk, &[0, 1, 2], now).await.unwrap(),
        [2]
    );

    assert!(patients
        .record_delivery(&c, &chunk, 0, DeliveryStatus::Delivered)
        .await
        .unwrap());
    assert!(!patients
        .record_delivery(&c, &chunk, 0, DeliveryStatus::PermanentFailure)
        .await
        .unwrap());
    assert!(!patients
        .record_delivery(&c, &chunk, 99, DeliveryStatus::Delivered)
        .await
        .unwrap());
    patients
        .mark_written_back(&c, &chunk, &[0, 99])
        .await
        .unwrap();

    let loaded = patients.load_chunk(&c, &chunk).await.unwrap();
    assert_eq!(loaded.len(), 5, "ignored updates created no items");
    assert_eq!(loaded[0].status, sent);
    assert_eq!(loaded[0].delivery, Some(DeliveryStatus::Delivered));
    assert!(loaded[0].written_back);
    assert_eq!(loaded[1].status, RecipientStatus::Rejected);
    assert!(matches!(loaded[2].status, RecipientStatus::Claimed { .. }));
    assert_eq!(loaded[3].status, RecipientStatus::Pending);
    assert!(!loaded[3].written_back);
}

#[tokio::test]
async fn an_unfinished_attempt_of_one_practice_is_taken_back() {
    let stack = stack().await;
    let (_, patients) = stores(&stack).await;
    let c = CampaignId::new();
    let mine: Vec<Recipient> = (0..3)
        .flat_map(|s| {
            let chunk = ChunkId::new(&ods(1), s);
            (0..20).map(move |i| recipient(&chunk, i))
        })
        .collect();
    let theirs: Vec<Recipient> = (0..15)
        .map(|i| recipient(&ChunkId::new(&ods(10), 0), i))
        .collect();
    patients.put_recipients(&c, &mine, later()).await.unwrap();
    patients.put_recipients(&c, &theirs, later()).await.unwrap();
    let keys = vec![DedupeKey::Patient(nhs(1))];
    patients
        .place_keys(&c, &ods(1), &keys, later())
        .await
        .unwrap();

    assert_eq!(
        patients
            .delete_practice_recipients(&c, &ods(1))
            .await
            .unwrap(),
        60
    );
    assert_eq!(
        patients
            .delete_practice_recipients(&c, &ods(1))
            .await
            .unwrap(),
        0
    );
    // The other practice's recipients and the dedupe keys stay.
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 16);
}

#[tokio::test]
async fn purge_deletes_a_campaign_to_zero() {
    let stack = stack().await;
    let (_, patients) = stores(&stack).await;
    let c = CampaignId::new();
    let other = CampaignId::new();
    let recipients: Vec<Recipient> = (0..4)
        .flat_map(|s| {
            let chunk = ChunkId::new(&ods(s), 0);
            (0..40).map(move |i| recipient(&chunk, i))
        })
        .collect();
    let keys: Vec<DedupeKey> = (0..90).map(|n| DedupeKey::Patient(nhs(n))).collect();
    patients
        .put_recipients(&c, &recipients, later())
        .await
        .unwrap();
    patients
        .place_keys(&c, &ods(0), &keys, later())
        .await
        .unwrap();
    patients
        .put_recipients(&other, &recipients[..10], later())
        .await
        .unwrap();
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 250);
    assert_eq!(patients.count_all().await.unwrap(), 260);

    assert_eq!(patients.purge_campaign(&c).await.unwrap(), 250);
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 0);
    assert_eq!(patients.purge_campaign(&c).await.unwrap(), 0, "idempotent");
    assert_eq!(patients.count_campaign(&other).await.unwrap(), 10);
    assert_eq!(patients.purge_campaign(&other).await.unwrap(), 10);
    assert_eq!(patients.count_all().await.unwrap(), 0, "the store is empty");
}

#[tokio::test]
async fn reads_follow_pagination_past_one_megabyte() {
    // DynamoDB (and moto) return at most 1 MB per query page.
    let stack = stack().await;
    let (hub, patients) = stores(&stack).await;
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(6), 0);
    let padding = "x".repeat(5_000);
    let big: Vec<Recipient> = (0..300)
        .map(|i| {
            let mut r = recipient(&chunk, i);
            r.last_name = Personal::new(padding.clone());
            r
        })
        .collect();
    patients.put_recipients(&c, &big, later()).await.unwrap();
    let loaded = patients.load_chunk(&c, &chunk).await.unwrap();
    assert_eq!(
        loaded.iter().map(|r| r.index).collect::<Vec<_>>(),
        (0..300).collect::<Vec<_>>()
    );
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 300);
    assert_eq!(patients.purge_campaign(&c).await.unwrap(), 300);
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 0);

    let detail = serde_json::json!({ "note": "y".repeat(20_000) });
    for minute in 0..80 {
        hub.append_audit(&AuditEvent {
            campaign: Some(c.clone()),
            at: Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap() + Duration::minutes(minute),
            actor: "hub".into(),
            action: format!("step_{minute:02}"),
            detail: detail.clone(),
        })
        .await
        .unwrap();
    }
    let listed = hub.list_audit(&c).await.unwrap();
    assert_eq!(listed.len(), 80);
    assert_eq!(listed[79].action, "step_79");
}

// ------------------------------------------------------------------ errors

#[tokio::test]
async fn faults_map_to_the_right_store_errors() {
    let stack = stack().await;
    // A table that does not exist is a misconfiguration, not "try later".
    let missing = DynamoHubStore::new(stack.clients.dynamodb.clone(), "no-such-table");
    assert!(matches!(
        missing.get_campaign(&CampaignId::new()).await,
        Err(StoreError::Unexpected(_))
    ));
    // Nothing listening: a transient fault the caller retries.
    let config = aws_sdk_dynamodb::config::Builder::from(&stack.clients.config)
        .endpoint_url("http://127.0.0.1:9")
        .build();
    let unreachable = DynamoPatientStore::new(aws_sdk_dynamodb::Client::from_conf(config), "t");
    match unreachable.count_campaign(&CampaignId::new()).await {
        Err(StoreError::Unavailable {
            what: message,
            source,
        }) => {
            assert!(message.contains("Query"), "{message}");
            // The SDK's fault stays attached as the cause.
            assert!(source.is_some_and(|cause| cause.to_string().contains("Query failed")));
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

// ------------------------------------------------------------------ queues

#[tokio::test]
async fn jobs_are_sent_in_batches_to_their_queues() {
    let stack = stack().await;
    let queue = stack.job_queue().unwrap();
    let c = CampaignId::new();
    // 23 send jobs (3 batches), 12 extract jobs (2 batches), 1 purge.
    let mut jobs: Vec<Job> = (0..23)
        .map(|s| Job::Send {
            campaign: c.clone(),
            chunk: ChunkId::new(&ods(1), s),
        })
        .collect();
    jobs.extend((0..12).map(|n| Job::Extract {
        campaign: c.clone(),
        ods: ods(n),
    }));
    jobs.push(Job::Purge {
        campaign: c.clone(),
    });
    queue.send(&jobs).await.unwrap();

    for (logical_id, name) in [
        ("SendQueue", QueueName::Send),
        ("ExtractQueue", QueueName::Extract),
        ("PurgeQueue", QueueName::Purge),
        ("NoticesQueue", QueueName::Notices),
    ] {
        let received: Vec<Job> = stack
            .drain(logical_id)
            .await
            .unwrap()
            .iter()
            .map(|body| serde_json::from_str(body).expect("a job body"))
            .collect();
        let mut expected: Vec<String> = jobs
            .iter()
            .filter(|j| j.queue() == name)
            .map(|j| serde_json::to_string(j).unwrap())
            .collect();
        let mut got: Vec<String> = received
            .iter()
            .map(|j| serde_json::to_string(j).unwrap())
            .collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "{logical_id}");
    }
    queue.send(&[]).await.unwrap();
}

#[tokio::test]
async fn a_queue_without_a_url_is_a_configuration_error() {
    let stack = stack().await;
    let queue = hub_adapters::aws::SqsJobQueue::new(stack.clients.sqs.clone(), HashMap::new());
    let result = queue
        .send(&[Job::Purge {
            campaign: CampaignId::new(),
        }])
        .await;
    assert!(matches!(
        result,
        Err(hub_core::ports::QueueError::Unexpected(_))
    ));
}

#[tokio::test]
async fn every_queue_redrives_to_its_dead_letter_queue() {
    let stack = stack().await;
    for name in QueueName::ALL {
        let url =
            stack.lookup().unwrap()(env::queue_url(name)).expect("queue URL in the environment");
        let attributes = stack
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default();
        let policy: serde_json::Value = serde_json::from_str(
            attributes
                .get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
                .expect("a redrive policy"),
        )
        .unwrap();
        assert!(
            policy["deadLetterTargetArn"]
                .as_str()
                .unwrap()
                .ends_with("DLQ"),
            "{name:?}: {policy}"
        );
    }
}

// ------------------------------------------------------------------ scheduler

async fn get_schedule(
    stack: &Stack,
    group: &str,
    name: &str,
) -> Option<aws_sdk_scheduler::operation::get_schedule::GetScheduleOutput> {
    match stack
        .clients
        .scheduler
        .get_schedule()
        .group_name(group)
        .name(name)
        .send()
        .await
    {
        Ok(out) => Some(out),
        Err(err) => {
            assert!(
                err.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()),
                "{err:?}"
            );
            None
        }
    }
}

#[tokio::test]
async fn schedules_are_created_replaced_and_cancelled() {
    let stack = stack().await;
    let scheduler = stack.scheduler().unwrap();
    let targets = stack.schedule_targets().unwrap();
    let c = CampaignId::new();
    let deadline = ScheduledAction::Deadline {
        campaign: c.clone(),
    };
    let at = Utc::now() + Duration::days(2);
    let at = at - Duration::nanoseconds(i64::from(at.timestamp_subsec_nanos()));

    scheduler.schedule(&deadline, at).await.unwrap();
    let got = get_schedule(&stack, &targets.group, &deadline.name())
        .await
        .expect("created");
    assert_eq!(
        got.schedule_expression(),
        Some(format!("at({})", at.format("%Y-%m-%dT%H:%M:%S")).as_str())
    );
    assert_eq!(got.schedule_expression_timezone(), Some("UTC"));
    assert_eq!(
        got.flexible_time_window().map(|w| w.mode().as_str()),
        Some("OFF")
    );
    assert_eq!(
        got.action_after_completion().map(|a| a.as_str()),
        Some("DELETE")
    );
    let target = got.target().expect("a target");
    assert_eq!(target.arn(), targets.deadline_function_arn);
    assert!(target
        .arn()
        .ends_with(&format!("{}-deadline", stack.prefix)));
    assert_eq!(target.role_arn(), targets.role_arn);
    let input: ScheduledAction = serde_json::from_str(target.input().unwrap()).unwrap();
    assert_eq!(input, deadline);

    // Scheduling again replaces (the deadline moved).
    let moved = at + Duration::hours(3);
    scheduler.schedule(&deadline, moved).await.unwrap();
    let got = get_schedule(&stack, &targets.group, &deadline.name())
        .await
        .unwrap();
    assert_eq!(
        got.schedule_expression(),
        Some(format!("at({})", moved.format("%Y-%m-%dT%H:%M:%S")).as_str())
    );

    // A purge goes to the purge queue with a purge job body.
    let purge = ScheduledAction::Purge {
        campaign: c.clone(),
    };
    scheduler.schedule(&purge, moved).await.unwrap();
    let got = get_schedule(&stack, &targets.group, &purge.name())
        .await
        .unwrap();
    let target = got.target().unwrap();
    assert_eq!(target.arn(), targets.purge_queue_arn);
    let job: Job = serde_json::from_str(target.input().unwrap()).unwrap();
    assert_eq!(
        job,
        Job::Purge {
            campaign: c.clone()
        }
    );

    scheduler.cancel(&deadline).await.unwrap();
    assert!(get_schedule(&stack, &targets.group, &deadline.name())
        .await
        .is_none());
    scheduler.cancel(&deadline).await.unwrap();
    assert!(get_schedule(&stack, &targets.group, &purge.name())
        .await
        .is_some());
    scheduler.cancel(&purge).await.unwrap();
}

// ------------------------------------------------------------------ secrets

#[tokio::test]
async fn secrets_are_fetched_once_and_cached() {
    let stack = stack().await;
    let lookup = stack.lookup().unwrap();
    let arn = lookup(env::OPTOUT_LINK_KEY_SECRET_ARN).unwrap();
    let secrets = stack.secrets();

    let key = secrets.secret_field(&arn, "key").await.unwrap();
    assert_eq!(
        key.expose_secret().len(),
        64,
        "generated as the template says"
    );
    assert!(!format!("{key:?}").contains(key.expose_secret()));

    // GIVEN the secret rotates WHEN read again THEN this process keeps its copy
    stack
        .clients
        .secrets
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(r#"{"key":"rotated"}"#)
        .send()
        .await
        .unwrap();
    let again = secrets.secret_field(&arn, "key").await.unwrap();
    assert_eq!(again.expose_secret(), key.expose_secret());
    // ... and a new execution environment sees the new value.
    let fresh = SecretsManagerSecrets::new(stack.clients.secrets.clone());
    assert_eq!(
        fresh
            .secret_field(&arn, "key")
            .await
            .unwrap()
            .expose_secret(),
        "rotated"
    );

    // Concurrent first reads agree.
    let shared_secrets = Arc::new(SecretsManagerSecrets::new(stack.clients.secrets.clone()));
    let callback = lookup(env::CALLBACK_TOKEN_SECRET_ARN).unwrap();
    let reads = futures::future::join_all((0..8).map(|_| {
        let (secrets, id) = (shared_secrets.clone(), callback.clone());
        async move {
            secrets
                .secret_field(&id, "token")
                .await
                .unwrap()
                .expose_secret()
                .to_string()
        }
    }))
    .await;
    assert!(reads.iter().all(|r| r == &reads[0] && r.len() == 64));

    assert!(matches!(
        secrets.secret("no-such-secret").await,
        Err(SecretsError::NotFound(_))
    ));
    assert!(matches!(
        secrets.secret_field(&arn, "missing").await,
        Err(SecretsError::Malformed { .. })
    ));
    let notify = lookup(env::NOTIFY_SECRET_ARN).unwrap();
    assert!(secrets.secret_field(&notify, "api_key").await.is_ok());
}

// ------------------------------------------------------------------ template rules
// (no emulator needed)

const FUNCTIONS: [(&str, &str); 10] = [
    ("ApiFunction", "api"),
    ("OptoutLinkFunction", "optout-link"),
    ("PracticeNoticesFunction", "practice-notices"),
    ("DeadlineFunction", "deadline"),
    ("ExtractFunction", "extract"),
    ("SendFunction", "send"),
    ("WritebackFunction", "writeback"),
    ("LettersFunction", "letters"),
    ("ReceiptsFunction", "receipts"),
    ("PurgeFunction", "purge"),
];

fn template() -> Template {
    Template::load().expect("template.yaml parses")
}

fn str_of(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str)
}

#[test]
fn one_binary_per_function_built_with_cargo_lambda_on_arm64() {
    let t = template();
    let functions = t.resources_of("AWS::Serverless::Function");
    assert_eq!(functions.len(), FUNCTIONS.len());
    let root = aws::template::template_path();
    let root = root.parent().unwrap();
    for (logical_id, package) in FUNCTIONS {
        let f = t
            .resource(logical_id)
            .unwrap_or_else(|| panic!("{logical_id} missing"));
        let code = str_of(f.properties.get("CodeUri")).unwrap();
        assert_eq!(code, "functions");
        let manifest = std::fs::read_to_string(root.join(code).join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!(
                "[[bin]]\nname = \"{package}\"\npath = \"src/bin/{package}.rs\""
            )),
            "{logical_id}"
        );
        assert!(
            root.join(code)
                .join(format!("src/bin/{package}.rs"))
                .is_file(),
            "{logical_id}"
        );
        let metadata = f.body.get("Metadata").unwrap();
        assert_eq!(
            str_of(metadata.get("BuildMethod")),
            Some("rust-cargolambda")
        );
        assert_eq!(
            str_of(
                metadata
                    .get("BuildProperties")
                    .and_then(|b| b.get("Binary"))
            ),
            Some(package)
        );
        assert_eq!(
            str_of(t.function_property(&f, "Runtime")),
            Some("provided.al2023")
        );
        assert_eq!(
            str_of(t.function_property(&f, "Handler")),
            Some("bootstrap")
        );
        let arch = t
            .function_property(&f, "Architectures")
            .and_then(Value::as_sequence)
            .unwrap();
        assert_eq!(arch, &vec![Value::String("arm64".into())]);
        assert!(f.properties.get("VpcConfig").is_none(), "no VPC");
        assert!(f.properties.get("ProvisionedConcurrencyConfig").is_none());
    }
    assert!(t
        .resources()
        .iter()
        .all(|r| !r.kind.starts_with("AWS::EC2::")));
}

#[test]
fn sqs_consumers_report_partial_failures_and_have_room_to_finish() {
    let t = template();
    let mut consumed = HashSet::new();
    for f in t.resources_of("AWS::Serverless::Function") {
        let timeout = as_u64(t.function_property(&f, "Timeout").unwrap()).unwrap();
        let Some(events) = f.properties.get("Events").and_then(Value::as_mapping) else {
            continue;
        };
        for (name, event) in events {
            if str_of(event.get("Type")) != Some("SQS") {
                continue;
            }
            let props = event.get("Properties").unwrap();
            let types = props
                .get("FunctionResponseTypes")
                .and_then(Value::as_sequence);
            assert_eq!(
                types.map(|t| t.iter().filter_map(Value::as_str).collect::<Vec<_>>()),
                Some(vec!["ReportBatchItemFailures"]),
                "{}.{name:?}",
                f.logical_id
            );
            let (function, queue_ref) = intrinsic(props.get("Queue").unwrap()).unwrap();
            assert_eq!(function, "Fn::GetAtt");
            let queue_id = queue_ref
                .as_str()
                .unwrap()
                .trim_end_matches(".Arn")
                .to_string();
            let queue = t.resource(&queue_id).unwrap();
            let visibility = as_u64(queue.properties.get("VisibilityTimeout").unwrap()).unwrap();
            assert!(
                visibility >= 6 * timeout,
                "{queue_id}: visibility {visibility}s < 6 x {timeout}s"
            );
            let redrive = queue.properties.get("RedrivePolicy").expect("a DLQ");
            assert!(as_u64(redrive.get("maxReceiveCount").unwrap()).unwrap() >= 1);
            if queue_id == "SendQueue" {
                let max = props
                    .get("ScalingConfig")
                    .and_then(|s| s.get("MaximumConcurrency"));
                let (function, parameter) = intrinsic(max.expect("send concurrency")).unwrap();
                assert_eq!(
                    (function.as_str(), parameter.as_str()),
                    ("Ref", Some("SendMaxConcurrency"))
                );
            }
            consumed.insert(queue_id);
        }
    }
    let expected: HashSet<String> = QueueName::ALL
        .iter()
        .map(|q| {
            let name = q.as_str();
            format!("{}{}Queue", name[..1].to_uppercase(), &name[1..])
        })
        .collect();
    assert_eq!(consumed, expected);
}

#[test]
fn staff_routes_are_signed_and_only_two_routes_are_public() {
    let t = template();
    let api = t.resource("HubApi").unwrap();
    let auth = api.properties.get("Auth").unwrap();
    assert_eq!(str_of(auth.get("DefaultAuthorizer")), Some("AWS_IAM"));
    let mut public = Vec::new();
    for f in t.resources_of("AWS::Serverless::Function") {
        let Some(events) = f.properties.get("Events").and_then(Value::as_mapping) else {
            continue;
        };
        for event in events.values() {
            if str_of(event.get("Type")) != Some("Api") {
                continue;
            }
            let props = event.get("Properties").unwrap();
            let authorizer = props.get("Auth").and_then(|a| a.get("Authorizer"));
            if str_of(authorizer) == Some("NONE") {
                public.push((
                    f.logical_id.to_string(),
                    str_of(props.get("Path")).unwrap().to_string(),
                ));
            } else {
                assert!(
                    authorizer.is_none(),
                    "{}: only NONE overrides IAM",
                    f.logical_id
                );
            }
        }
    }
    public.sort();
    assert_eq!(
        public,
        [
            ("OptoutLinkFunction".to_string(), "/optout".to_string()),
            ("OptoutLinkFunction".to_string(), "/optout".to_string()),
            (
                "ReceiptsFunction".to_string(),
                "/receipts/{provider}".to_string()
            ),
        ]
    );
}

#[test]
fn the_functions_environment_is_what_the_adapters_read() {
    let t = template();
    let names: BTreeMap<String, Value> = t
        .global_environment()
        .into_iter()
        .filter(|(name, _)| name != "RUST_LOG")
        .collect();
    let expected: Vec<&str> = {
        let mut all = env::ALL.to_vec();
        all.sort();
        all
    };
    assert_eq!(
        names.keys().map(String::as_str).collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn tables_are_on_demand_encrypted_and_patient_data_expires() {
    let t = template();
    for table in t.resources_of("AWS::DynamoDB::Table") {
        assert_eq!(
            str_of(table.properties.get("BillingMode")),
            Some("PAY_PER_REQUEST")
        );
        let sse = table.properties.get("SSESpecification").unwrap();
        assert_eq!(sse.get("SSEEnabled").and_then(Value::as_bool), Some(true));
    }
    let patient = t.resource("PatientDataTable").unwrap().properties;
    let ttl = patient.get("TimeToLiveSpecification").unwrap();
    assert_eq!(str_of(ttl.get("AttributeName")), Some("expires_at"));
    assert_eq!(ttl.get("Enabled").and_then(Value::as_bool), Some(true));
    let pitr = patient.get("PointInTimeRecoverySpecification").unwrap();
    assert_eq!(
        pitr.get("PointInTimeRecoveryEnabled")
            .and_then(Value::as_bool),
        Some(false)
    );
}

#[test]
fn every_failure_signal_has_an_alarm_on_the_topic() {
    let t = template();
    let alarms = t.resources_of("AWS::CloudWatch::Alarm");
    let dimension_refs = |alarm: &aws::template::Resource| -> Vec<String> {
        alarm
            .properties
            .get("Dimensions")
            .and_then(Value::as_sequence)
            .map(|dims| {
                dims.iter()
                    .filter_map(|d| intrinsic(d.get("Value")?))
                    .filter_map(|(_, v)| {
                        v.as_str().map(|s| s.split('.').next().unwrap().to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let has = |namespace: &str, metric: &str, resource: Option<&str>| {
        alarms.iter().any(|a| {
            str_of(a.properties.get("Namespace")) == Some(namespace)
                && str_of(a.properties.get("MetricName")) == Some(metric)
                && resource.is_none_or(|r| dimension_refs(a).iter().any(|d| d == r))
        })
    };
    for (logical_id, _) in FUNCTIONS {
        assert!(
            has("AWS/Lambda", "Errors", Some(logical_id)),
            "{logical_id} errors"
        );
        assert!(
            has("AWS/Lambda", "Throttles", Some(logical_id)),
            "{logical_id} throttles"
        );
    }
    for queue in t.resources_of("AWS::SQS::Queue") {
        if queue.logical_id.ends_with("DLQ") {
            assert!(
                has(
                    "AWS/SQS",
                    "ApproximateNumberOfMessagesVisible",
                    Some(queue.logical_id)
                ),
                "{}",
                queue.logical_id
            );
        }
    }
    assert!(has(
        "AWS/SQS",
        "ApproximateAgeOfOldestMessage",
        Some("SendQueue")
    ));
    assert!(has("SmsHub", "ProviderErrors", None));
    for alarm in &alarms {
        let actions = alarm
            .properties
            .get("AlarmActions")
            .and_then(Value::as_sequence)
            .unwrap();
        let (function, target) = intrinsic(&actions[0]).unwrap();
        assert_eq!(
            (function.as_str(), target.as_str()),
            ("Ref", Some("AlarmTopicArn"))
        );
    }
}

#[test]
fn secrets_are_generated_not_written_in_the_template() {
    let t = template();
    let secrets = t.resources_of("AWS::SecretsManager::Secret");
    let mut ids: Vec<&str> = secrets.iter().map(|s| s.logical_id).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["CallbackTokenSecret", "NotifySecret", "OptoutLinkKeySecret"]
    );
    for secret in secrets {
        assert!(
            secret.properties.get("SecretString").is_none(),
            "{}",
            secret.logical_id
        );
        assert!(secret.properties.get("GenerateSecretString").is_some());
    }
}
