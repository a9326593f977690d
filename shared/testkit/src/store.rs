//! The store contract: what `HubStore` and `PatientDataStore` promise,
//! checked the same way on every adapter (SQLite, DynamoDB).
//!
//! Each case takes a fresh pair of stores; [`store_contract!`](crate::store_contract)
//! turns every case into one named test for a backend.

use crate::fixtures::*;
use async_trait::async_trait;
use chrono::{Duration, TimeZone, Utc};
use hub_core::domain::pacing::{PaceBucket, PaceGrant, PaceOp, SendLimit};
use hub_core::domain::{
    AuditEvent, CampaignId, CampaignState, ChunkId, ChunkStage, DedupeKey, DeliveryStatus,
    OutcomeCounts, Participation, ParticipationState, Personal, Progress, Recipient,
    RecipientStatus,
};
use hub_core::handlers::router::pace_shared;
use hub_core::ports::{
    GpConnection, HubStore, PatientDataStore, Placement, StatusUpdate, StoreError,
};
use std::collections::HashSet;
use std::sync::Arc;

/// Fresh, empty stores of one backend.
#[derive(Clone)]
pub struct Stores {
    pub hub: Arc<dyn HubStore>,
    pub patients: Arc<dyn PatientDataStore>,
    /// Writes to the backend behind the ports' back.
    pub tamper: Arc<dyn Tamper>,
}

/// What a test does to a backend's stored records without the ports, as a
/// bug or a bad migration might. Each backend knows its own layout.
#[async_trait]
pub trait Tamper: Send + Sync {
    /// Replaces the stored NHS number of one recipient with `value`.
    async fn set_stored_nhs_number(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        index: u32,
        value: &str,
    ) -> anyhow::Result<()>;
}

// ------------------------------------------------------------------ hub store

pub async fn pace_buckets_are_compare_and_set(s: &Stores) {
    let hub = &*s.hub;
    let fresh = hub.get_pace_bucket("sms:notify-1").await.unwrap();
    assert_eq!(fresh, PaceBucket::default(), "never written: version 0");
    let first = PaceBucket {
        full_at_us: 1_800_000_000_000_000,
        day: chrono::NaiveDate::from_ymd_opt(2027, 1, 15),
        sent_today: 1,
        day_full: false,
        version: 1,
    };
    hub.put_pace_bucket("sms:notify-1", &first).await.unwrap();
    // A second writer that read version 0 loses.
    let lost = hub.put_pace_bucket("sms:notify-1", &first).await;
    assert!(matches!(lost, Err(StoreError::Conflict(_))), "{lost:?}");
    let second = PaceBucket {
        sent_today: 2,
        version: 2,
        ..first
    };
    hub.put_pace_bucket("sms:notify-1", &second).await.unwrap();
    let stale = PaceBucket {
        version: 2,
        day_full: true,
        ..first
    };
    let lost = hub.put_pace_bucket("sms:notify-1", &stale).await;
    assert!(matches!(lost, Err(StoreError::Conflict(_))), "{lost:?}");
    assert_eq!(hub.get_pace_bucket("sms:notify-1").await.unwrap(), second);
    assert_eq!(
        hub.get_pace_bucket("sms:notify-2").await.unwrap(),
        PaceBucket::default(),
        "keys are independent"
    );
}

/// Eight workers reserve from one shared key at once: together they get
/// exactly the schedule one worker alone would (the burst at once, then one
/// slot every 1/rate), none lost and none doubled.
pub async fn racing_reservations_share_one_rate(s: &Stores) {
    let limit = SendLimit {
        per_second: 50.0,
        burst: 10.0,
        daily_cap: Some(1_000),
    };
    let now = Utc.with_ymd_and_hms(2027, 1, 15, 9, 0, 0).unwrap();
    let latest = now + Duration::hours(1);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let hub = s.hub.clone();
            tokio::spawn(async move {
                let mut granted = Vec::new();
                for _ in 0..15 {
                    let op = PaceOp::Reserve { cost: 1.0, latest };
                    match pace_shared(&*hub, "sms:shared", &limit, op, now)
                        .await
                        .unwrap()
                    {
                        PaceGrant::SendAt(at) => granted.push(at),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                granted
            })
        })
        .collect();
    let mut granted = Vec::new();
    for worker in workers {
        granted.extend(worker.await.unwrap());
    }
    granted.sort();
    let expected: Vec<_> = (0..120)
        .map(|i: i64| now + Duration::microseconds((i - 9).max(0) * 20_000))
        .collect();
    assert_eq!(granted, expected);
    let bucket = s.hub.get_pace_bucket("sms:shared").await.unwrap();
    assert_eq!(bucket.sent_today, 120);
}

pub async fn practices_are_upserted_and_listed_in_ods_order(s: &Stores) {
    let hub = &*s.hub;
    assert_eq!(hub.get_practice(&ods(1)).await.unwrap(), None);
    for n in [3, 0, 4, 1, 2] {
        hub.put_practice(&practice(n)).await.unwrap();
    }
    // GIVEN a practice signs its agreement and moves to a FHIR server
    let mut changed = practice(2);
    changed.dsa_signed = chrono::NaiveDate::from_ymd_opt(2026, 1, 2);
    changed.notice_email = "new@nhs.invalid".into();
    changed.connection = GpConnection::Fhir {
        base_url: "https://gp.example/fhir".into(),
        bulk_export: true,
        secret: Some("sms-hub/gp/G80002".into()),
        patient_search: hub_core::ports::PatientSearch::Reference,
        link_base: Some("http://fhir-internal:8080/fhir".into()),
    };
    // WHEN it is put again THEN it is replaced, not added
    hub.put_practice(&changed).await.unwrap();
    assert_eq!(
        hub.get_practice(&ods(2)).await.unwrap(),
        Some(changed.clone())
    );
    let listed = hub.list_practices().await.unwrap();
    let mut expected: Vec<_> = (0..5).map(practice).collect();
    expected[2] = changed;
    assert_eq!(listed, expected, "listed in ODS order");
    assert_eq!(hub.get_practice(&ods(99)).await.unwrap(), None);
}

pub async fn campaigns_are_created_once_and_listed_oldest_first(s: &Stores) {
    let hub = &*s.hub;
    let first = campaign_at(Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap());
    let second = campaign_at(Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap());
    hub.create_campaign(&second).await.unwrap();
    hub.create_campaign(&first).await.unwrap();

    // An existing id is refused and nothing is written.
    let mut again = first.clone();
    again.name = "Other".into();
    assert!(
        conflict(hub.create_campaign(&again).await),
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

pub async fn update_campaign_is_compare_and_set(s: &Stores) {
    let hub = &*s.hub;
    let c = campaign();
    hub.create_campaign(&c).await.unwrap();

    let mut edit = c.clone();
    edit.name = "Heatwave (amber)".into();
    let stored = hub.update_campaign(&edit).await.unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(stored.name, "Heatwave (amber)");
    assert_eq!(hub.get_campaign(&c.id).await.unwrap(), Some(stored.clone()));

    // GIVEN a copy read before that write WHEN it is written THEN it loses
    // and nothing is written.
    let mut stale = c.clone();
    stale.name = "stale".into();
    assert!(conflict(hub.update_campaign(&stale).await));
    assert_eq!(hub.get_campaign(&c.id).await.unwrap(), Some(stored.clone()));

    assert!(not_found(hub.update_campaign(&campaign()).await));
}

/// The counters belong to the atomic operations that move them; a copy's
/// `progress` is not written over them.
pub async fn update_campaign_keeps_the_stored_counters(s: &Stores) {
    let hub = &*s.hub;
    let c = campaign();
    hub.create_campaign(&c).await.unwrap();
    let stored = hub.update_campaign(&c).await.unwrap();

    let mut meddling = stored.clone();
    meddling.progress.chunks_outstanding = 99;
    let written = hub.update_campaign(&meddling).await.unwrap();
    assert_eq!(written.progress, Progress::default());
    assert_eq!(
        hub.get_campaign(&c.id).await.unwrap().unwrap().progress,
        Progress::default()
    );
}

pub async fn update_participation_is_compare_and_set(s: &Stores) {
    let hub = &*s.hub;
    let (c, ps) = seeded(hub, 3).await;

    let mut opted = ps[0].clone();
    opted.state = ParticipationState::OptedOut;
    opted.opted_out_by = Some("practice-link".into());
    let stored = hub.update_participation(&opted).await.unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(
        hub.get_participation(&c.id, &ods(0)).await.unwrap(),
        Some(stored.clone())
    );

    // The stale copy loses and nothing is written.
    assert!(conflict(hub.update_participation(&ps[0]).await));
    assert_eq!(
        hub.get_participation(&c.id, &ods(0)).await.unwrap(),
        Some(stored.clone())
    );
    let missing = Participation::notified(c.id.clone(), ods(77));
    assert!(not_found(hub.update_participation(&missing).await));
    assert_eq!(hub.get_participation(&c.id, &ods(77)).await.unwrap(), None);

    let listed = hub.list_participations(&c.id).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0], stored);
    assert_eq!(&listed[1..], &ps[1..]);
}

pub async fn create_participations_leaves_existing_ones_alone(s: &Stores) {
    let hub = &*s.hub;
    let (c, ps) = seeded(hub, 2).await;
    let mut opted = ps[0].clone();
    opted.state = ParticipationState::OptedOut;
    let opted = hub.update_participation(&opted).await.unwrap();

    // Creating again (a redelivered approval) leaves existing ones, and the
    // opt-out, alone; a new one is added.
    let mut changed = ps[1].clone();
    changed.state = ParticipationState::OptedOut;
    let third = Participation::notified(c.id.clone(), ods(3));
    hub.create_participations(&[ps[0].clone(), changed, third.clone()])
        .await
        .unwrap();
    let listed = hub.list_participations(&c.id).await.unwrap();
    assert_eq!(listed, vec![opted, ps[1].clone(), third], "in ODS order");
    assert!(hub
        .list_participations(&CampaignId::new())
        .await
        .unwrap()
        .is_empty());
}

pub async fn freeze_writes_campaign_and_participations_together(s: &Stores) {
    let hub = &*s.hub;
    let (c, ps) = seeded(hub, 2).await;
    let (frozen_campaign, frozen) = freeze_input(&c, &ps);
    let stored = hub
        .freeze_participants(&frozen_campaign, &frozen)
        .await
        .unwrap();
    assert_eq!(stored.version, c.version + 1);
    assert_eq!(stored.state, CampaignState::Extracting);
    let read = hub.get_campaign(&c.id).await.unwrap().unwrap();
    assert_eq!(read, stored);
    assert_eq!(read.progress.practices_pending, 2);
    let listed = hub.list_participations(&c.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    for p in listed {
        assert_eq!(p.state, ParticipationState::Participating);
        assert_eq!(p.version, 1);
    }
    // Replaying the same freeze (a redelivered deadline) loses on the
    // campaign's version.
    assert!(conflict(
        hub.freeze_participants(&frozen_campaign, &frozen).await
    ));
}

pub async fn freeze_is_all_or_nothing(s: &Stores) {
    let hub = &*s.hub;
    let (c, ps) = seeded(hub, 5).await;

    // GIVEN one practice opts out after the deadline handler read it
    let mut opted = ps[3].clone();
    opted.state = ParticipationState::OptedOut;
    let opted = hub.update_participation(&opted).await.unwrap();

    // WHEN the handler freezes its stale view THEN nothing changes at all
    let (frozen_campaign, frozen) = freeze_input(&c, &ps);
    assert!(conflict(
        hub.freeze_participants(&frozen_campaign, &frozen).await
    ));
    assert_eq!(hub.get_campaign(&c.id).await.unwrap(), Some(c.clone()));
    let after = hub.list_participations(&c.id).await.unwrap();
    let mut expected = ps.clone();
    expected[3] = opted;
    assert_eq!(after, expected);

    // WHEN it re-reads and freezes the four left THEN all move together
    let fresh: Vec<Participation> = after
        .into_iter()
        .filter(|p| p.state == ParticipationState::Notified)
        .collect();
    assert_eq!(fresh.len(), 4);
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

/// A missing participation fails the freeze (`NotFound` or `Conflict`: the
/// port does not say which) and nothing moves.
pub async fn freeze_with_a_missing_participation_changes_nothing(s: &Stores) {
    let hub = &*s.hub;
    let (c, ps) = seeded(hub, 2).await;
    let (frozen_campaign, frozen) = freeze_input(&c, &ps);
    let missing = Participation::notified(c.id.clone(), ods(99));
    let result = hub
        .freeze_participants(&frozen_campaign, &[frozen[0].clone(), missing])
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::NotFound(_) | StoreError::Conflict(_))
        ),
        "{result:?}"
    );
    assert_eq!(hub.get_campaign(&c.id).await.unwrap(), Some(c.clone()));
    assert_eq!(
        hub.get_participation(&c.id, &ps[0].ods).await.unwrap(),
        Some(ps[0].clone())
    );
    assert_eq!(hub.get_participation(&c.id, &ods(99)).await.unwrap(), None);
}

/// More participations than one DynamoDB transaction holds (100): still
/// all or nothing.
pub async fn freeze_beyond_one_transaction(s: &Stores) {
    let hub = &*s.hub;
    let (c, ps) = seeded(hub, 150).await;

    // GIVEN a participation late in the list changed meanwhile
    let mut opted = ps[120].clone();
    opted.state = ParticipationState::OptedOut;
    hub.update_participation(&opted).await.unwrap();
    let (frozen_campaign, frozen) = freeze_input(&c, &ps);
    assert!(conflict(
        hub.freeze_participants(&frozen_campaign, &frozen).await
    ));

    // THEN every participation is as it was and the campaign never moved
    assert_eq!(hub.get_campaign(&c.id).await.unwrap(), Some(c.clone()));
    let after = hub.list_participations(&c.id).await.unwrap();
    let count = |state: ParticipationState| after.iter().filter(|p| p.state == state).count();
    assert_eq!(count(ParticipationState::Participating), 0);
    assert_eq!(count(ParticipationState::Notified), 149);

    // A fresh read freezes all 149.
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

pub async fn put_chunks_keeps_an_existing_chunk(s: &Stores) {
    let hub = &*s.hub;
    let (c, _) = seeded(hub, 1).await;
    let chunks: Vec<_> = (0..30).map(|s| chunk_record(&c.id, &ods(0), s)).collect();
    hub.put_chunks(&chunks).await.unwrap();

    // A later attempt with other content leaves stored chunks alone.
    let mut again = chunks[0].clone();
    again.sms_recipients = 999;
    again.send_done = true;
    let extra = chunk_record(&c.id, &ods(0), 30);
    hub.put_chunks(&[again, extra.clone()]).await.unwrap();
    assert_eq!(
        hub.get_chunk(&c.id, &chunks[0].chunk).await.unwrap(),
        Some(chunks[0].clone())
    );
    let mut expected = chunks.clone();
    expected.push(extra);
    assert_eq!(hub.list_chunks(&c.id).await.unwrap(), expected);
    assert_eq!(
        hub.get_chunk(&c.id, &ChunkId::new(&ods(9), 1))
            .await
            .unwrap(),
        None
    );
    assert!(hub
        .list_chunks(&CampaignId::new())
        .await
        .unwrap()
        .is_empty());
}

pub async fn commit_extraction_moves_participation_and_counters_together(s: &Stores) {
    let hub = &*s.hub;
    let (c, ps) = seeded(hub, 2).await;
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
    let stored_campaign = hub.get_campaign(&c.id).await.unwrap().unwrap();
    assert_eq!(stored_campaign.progress, progress);
    let stored = hub
        .get_participation(&c.id, &done.ods)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.state, stored.chunks, stored.version),
        (ParticipationState::Extracted, 3, 2)
    );

    // A redelivered commit loses on the participation and moves nothing.
    assert!(conflict(hub.commit_extraction(&done, 3).await));
    assert_eq!(
        hub.get_campaign(&c.id).await.unwrap(),
        Some(stored_campaign)
    );

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

    // practices_pending does not go below zero.
    let mut again = hub
        .get_participation(&c.id, &second.ods)
        .await
        .unwrap()
        .unwrap();
    again.last_error = Some("retry".into());
    let progress = hub.commit_extraction(&again, 0).await.unwrap();
    assert_eq!(
        progress,
        Progress {
            practices_pending: 0,
            chunks_outstanding: 5
        }
    );
    assert_eq!(
        hub.get_campaign(&c.id).await.unwrap().unwrap().progress,
        progress
    );
}

pub async fn complete_chunk_stage_counts_each_stage_once(s: &Stores) {
    let hub = &*s.hub;
    let (c, chunks) = with_chunks(hub, 2).await;
    let chunk = &chunks[0].chunk;

    let sent = counts(8, 2);
    let (record, progress) = hub
        .complete_chunk_stage(&c.id, chunk, ChunkStage::Send, &sent)
        .await
        .unwrap()
        .expect("first completion");
    assert!(record.send_done && !record.is_final());
    assert_eq!(record.counts, sent);
    assert_eq!((record.counts.sent, record.counts.excluded_total()), (8, 2));
    assert_eq!(progress.chunks_outstanding, 2);

    // The same stage again: nothing added.
    assert_eq!(
        hub.complete_chunk_stage(&c.id, chunk, ChunkStage::Send, &sent)
            .await
            .unwrap(),
        None
    );
    let letters = OutcomeCounts {
        letters: 2,
        ..OutcomeCounts::default()
    };
    let (_, progress) = hub
        .complete_chunk_stage(&c.id, chunk, ChunkStage::Letters, &letters)
        .await
        .unwrap()
        .expect("letters");
    assert_eq!(progress.chunks_outstanding, 2);

    // The third stage makes the chunk final: outstanding goes down once.
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
    assert_eq!(
        hub.get_campaign(&c.id).await.unwrap().unwrap().progress,
        progress
    );
    assert_eq!(
        hub.get_chunk(&c.id, chunk).await.unwrap(),
        Some(record.clone())
    );
    assert!(hub
        .complete_chunk_stage(&c.id, chunk, ChunkStage::Writeback, &written_back)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        hub.get_campaign(&c.id).await.unwrap().unwrap().progress,
        progress
    );

    let mut expected = sent.clone();
    expected.add(&letters);
    expected.add(&written_back);
    assert_eq!(
        hub.get_chunk(&c.id, chunk).await.unwrap().unwrap().counts,
        expected
    );
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

pub async fn concurrent_stage_completions_decrement_once(s: &Stores) {
    let (c, chunks) = with_chunks(&*s.hub, 3).await;
    let chunk = chunks[1].chunk.clone();

    // Every stage twice (redeliveries), all at once.
    let mut tasks = Vec::new();
    for stage in [ChunkStage::Send, ChunkStage::Letters, ChunkStage::Writeback] {
        for _ in 0..2 {
            let (hub, id, chunk) = (s.hub.clone(), c.id.clone(), chunk.clone());
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
    let record = s.hub.get_chunk(&c.id, &chunk).await.unwrap().unwrap();
    assert!(record.is_final() && record.counted_final);
    assert_eq!(record.counts.sent, 3);
    let campaign_now = s.hub.get_campaign(&c.id).await.unwrap().unwrap();
    assert_eq!(campaign_now.progress.chunks_outstanding, 2);
}

pub async fn a_chunk_stage_with_no_campaign_changes_nothing(s: &Stores) {
    let hub = &*s.hub;
    // GIVEN a chunk whose final stage would decrement a missing campaign
    let id = CampaignId::new();
    let mut record = chunk_record(&id, &ods(0), 0);
    record.send_done = true;
    record.letters_done = true;
    hub.put_chunks(std::slice::from_ref(&record)).await.unwrap();
    // WHEN the last stage completes THEN it fails as a whole
    assert!(not_found(
        hub.complete_chunk_stage(&id, &record.chunk, ChunkStage::Writeback, &counts(1, 0))
            .await
    ));
    assert_eq!(
        hub.get_chunk(&id, &record.chunk).await.unwrap(),
        Some(record)
    );
}

pub async fn delivery_receipts_are_recorded_and_counted_once_together(s: &Stores) {
    let (hub, patients) = (&*s.hub, &*s.patients);
    let (c, chunks) = with_chunks(hub, 1).await;
    let chunk = &chunks[0].chunk;
    let all: Vec<Recipient> = (0..4).map(|i| recipient(chunk, i)).collect();
    patients.put_recipients(&c.id, &all, later()).await.unwrap();
    let id = &c.id;
    let deliver =
        |index: u32, status: DeliveryStatus| patients.record_delivery(id, chunk, index, status);
    assert!(deliver(0, DeliveryStatus::Delivered).await.unwrap());
    assert!(deliver(1, DeliveryStatus::PermanentFailure).await.unwrap());
    // A stage completion in between keeps the receipts counted so far.
    hub.complete_chunk_stage(&c.id, chunk, ChunkStage::Send, &counts(7, 0))
        .await
        .unwrap()
        .unwrap();
    assert!(deliver(3, DeliveryStatus::Delivered).await.unwrap());
    // A repeated or later receipt for a recipient, or one for a recipient
    // that does not exist, records and counts nothing.
    assert!(!deliver(0, DeliveryStatus::Delivered).await.unwrap());
    assert!(!deliver(1, DeliveryStatus::Delivered).await.unwrap());
    assert!(!deliver(99, DeliveryStatus::Delivered).await.unwrap());
    let record = hub.get_chunk(&c.id, chunk).await.unwrap().unwrap();
    assert_eq!(
        (
            record.counts.sent,
            record.counts.delivered,
            record.counts.failed
        ),
        (7, 2, 1)
    );

    // WHEN the count cannot be written (no chunk record) THEN the status is
    // not recorded either: one atomic write, so the provider's retry of the
    // callback counts it later, exactly once.
    let orphan = ChunkId::new(&ods(0), 42);
    patients
        .put_recipients(&c.id, &[recipient(&orphan, 0)], later())
        .await
        .unwrap();
    assert!(not_found(
        patients
            .record_delivery(&c.id, &orphan, 0, DeliveryStatus::Delivered)
            .await
    ));
    let loaded = patients.load_chunk(&c.id, &orphan).await.unwrap();
    assert_eq!(loaded[0].delivery, None, "no status without its count");
}

/// Events of one campaign, oldest first. (Events appended out of time
/// order are listed differently by the backends: see their own tests.)
pub async fn audit_is_listed_per_campaign_oldest_first(s: &Stores) {
    let hub = &*s.hub;
    let c = campaign();
    let base = Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap();
    let event = |minutes: i64, action: &str, campaign: Option<CampaignId>| AuditEvent {
        campaign,
        at: base + Duration::minutes(minutes),
        actor: "arn:aws:iam::123456789012:user/bob".into(),
        action: action.into(),
        detail: serde_json::json!({ "practices": 3, "n": minutes }),
    };
    let events = [
        event(0, "created", Some(c.id.clone())),
        event(1, "practice_registered", None),
        event(2, "created", Some(CampaignId::new())),
        event(5, "approved", Some(c.id.clone())),
        event(9, "cancelled", Some(c.id.clone())),
    ];
    for e in &events {
        hub.append_audit(e).await.unwrap();
    }
    assert_eq!(
        hub.list_audit(&c.id).await.unwrap(),
        vec![events[0].clone(), events[3].clone(), events[4].clone()]
    );
    assert!(hub.list_audit(&CampaignId::new()).await.unwrap().is_empty());
    // Events of no campaign are listed on their own (the registry's audit).
    let hub_events = hub.list_hub_audit().await.unwrap();
    assert!(hub_events.contains(&events[1]), "{hub_events:?}");
    assert!(hub_events.iter().all(|e| e.campaign.is_none()));
}

// ------------------------------------------------------------------ patient data

pub async fn dedupe_keys_are_held_by_one_practice(s: &Stores) {
    let patients = &*s.patients;
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

    // The same practice again (a retried extraction) still holds its keys,
    // all or some of them.
    let again = patients
        .place_keys(&c, &ods(1), &keys[..30], later())
        .await
        .unwrap();
    assert_eq!(again, vec![Placement::Placed; 30]);
    let some = patients
        .place_keys(&c, &ods(1), &keys[3..4], later())
        .await
        .unwrap();
    assert_eq!(some, vec![Placement::Placed]);

    // Another practice: held elsewhere, in order, except for keys nobody holds.
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

pub async fn key_holders_are_read_without_placing(s: &Stores) {
    use hub_core::domain::Restriction;
    let patients = &*s.patients;
    let c = CampaignId::new();
    // GIVEN a patient key, a letter key and two restrictions held by
    // different practices
    patients
        .place_keys(
            &c,
            &ods(1),
            &[
                DedupeKey::Patient(nhs(1)),
                DedupeKey::Restricted(nhs(2), Restriction::Deceased),
            ],
            later(),
        )
        .await
        .unwrap();
    patients
        .place_keys(
            &c,
            &ods(2),
            &[
                DedupeKey::Letter(nhs(1)),
                DedupeKey::Restricted(nhs(1), Restriction::NoTelephoneContact),
            ],
            later(),
        )
        .await
        .unwrap();
    let asked = [
        DedupeKey::Patient(nhs(1)),
        DedupeKey::Letter(nhs(1)),
        DedupeKey::Restricted(nhs(1), Restriction::NoTelephoneContact),
        DedupeKey::Restricted(nhs(1), Restriction::Deceased),
        DedupeKey::Restricted(nhs(2), Restriction::Deceased),
        DedupeKey::Patient(nhs(2)),
    ];
    // WHEN their holders are read THEN each is found with its holder, in
    // order, each kind a key of its own
    let holders = patients.key_holders(&c, &asked).await.unwrap();
    assert_eq!(
        holders,
        vec![
            Some(ods(1)),
            Some(ods(2)),
            Some(ods(2)),
            None,
            Some(ods(1)),
            None
        ]
    );
    // AND reading placed nothing; another campaign holds none of them
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 4);
    let none = patients
        .key_holders(&CampaignId::new(), &asked)
        .await
        .unwrap();
    assert!(none.iter().all(Option::is_none));
    assert!(patients.key_holders(&c, &[]).await.unwrap().is_empty());
}

pub async fn a_key_is_taken_over_only_from_its_holder(s: &Stores) {
    let patients = &*s.patients;
    let c = CampaignId::new();
    let (a, b, third) = (ods(1), ods(2), ods(3));
    let held = DedupeKey::Patient(nhs(1));
    let letter = DedupeKey::Letter(nhs(1));
    // GIVEN practice A holding a patient's text key
    patients
        .place_keys(&c, &a, std::slice::from_ref(&held), later())
        .await
        .unwrap();
    // WHEN a third practice claims to take it from someone else THEN nothing moves
    assert!(!patients.take_over_key(&c, &held, &b, &third).await.unwrap());
    // AND a key nobody holds, or of another campaign, cannot be taken over
    assert!(!patients.take_over_key(&c, &letter, &a, &b).await.unwrap());
    assert!(!patients
        .take_over_key(&CampaignId::new(), &held, &a, &b)
        .await
        .unwrap());
    assert_eq!(
        patients
            .key_holders(&c, &[held.clone(), letter.clone()])
            .await
            .unwrap(),
        vec![Some(a.clone()), None]
    );
    // WHEN B and the third practice race to take it from A THEN exactly one wins
    let (by_b, by_third) = tokio::join!(
        patients.take_over_key(&c, &held, &a, &b),
        patients.take_over_key(&c, &held, &a, &third),
    );
    let (by_b, by_third) = (by_b.unwrap(), by_third.unwrap());
    assert!(by_b ^ by_third, "b {by_b}, third {by_third}");
    let winner = if by_b { b.clone() } else { third.clone() };
    let loser = if by_b { third.clone() } else { b.clone() };
    assert_eq!(
        patients
            .key_holders(&c, std::slice::from_ref(&held))
            .await
            .unwrap(),
        vec![Some(winner.clone())]
    );
    // AND the winner asking again still holds it; the loser asking again does not
    assert!(patients
        .take_over_key(&c, &held, &a, &winner)
        .await
        .unwrap());
    assert!(!patients.take_over_key(&c, &held, &a, &loser).await.unwrap());
    // AND the winner now places the key as its own, A no longer can
    assert_eq!(
        patients
            .place_keys(&c, &winner, std::slice::from_ref(&held), later())
            .await
            .unwrap(),
        vec![Placement::Placed]
    );
    assert_eq!(
        patients
            .place_keys(&c, &a, std::slice::from_ref(&held), later())
            .await
            .unwrap(),
        vec![Placement::HeldElsewhere]
    );
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 1);
}

pub async fn standby_recipients_are_decided_once_and_only_as_standby(s: &Stores) {
    let patients = &*s.patients;
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(6), 0);
    // GIVEN a chunk of two pending recipients and three on standby
    let recipients: Vec<_> = (0..5)
        .map(|i| Recipient {
            status: if i < 2 {
                RecipientStatus::Pending
            } else {
                RecipientStatus::Standby
            },
            ..recipient(&chunk, i)
        })
        .collect();
    patients
        .put_recipients(&c, &recipients, later())
        .await
        .unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    // THEN a standby recipient is never claimed, nor changed as an outcome
    assert_eq!(
        patients.claim(&c, &chunk, &[0, 2, 3], now).await.unwrap(),
        vec![0]
    );
    let update = |index: u32, status: RecipientStatus| StatusUpdate {
        chunk: chunk.clone(),
        index,
        status,
    };
    let sent = RecipientStatus::Sent {
        provider: "notify".into(),
        provider_id: "p".into(),
        at: now,
    };
    patients
        .set_status(&c, &[update(2, sent.clone())])
        .await
        .unwrap();
    let withheld = RecipientStatus::Withheld {
        reason: hub_core::domain::ExclusionReason::DuplicatePatient,
    };
    // WHEN standbys are decided (and a pending and a claimed one named too)
    patients
        .decide_standby(
            &c,
            &[
                update(0, withheld.clone()),
                update(1, withheld.clone()),
                update(2, RecipientStatus::Pending),
                update(3, withheld.clone()),
                update(9, RecipientStatus::Pending),
            ],
        )
        .await
        .unwrap();
    // THEN only the standbys changed, and a missing one was ignored
    let loaded = patients.load_chunk(&c, &chunk).await.unwrap();
    let statuses: Vec<_> = loaded.iter().map(|r| r.status.clone()).collect();
    assert_eq!(
        statuses,
        vec![
            RecipientStatus::Claimed { at: now },
            RecipientStatus::Pending,
            RecipientStatus::Pending,
            withheld.clone(),
            RecipientStatus::Standby,
        ]
    );
    // AND a second decision does not overturn the first
    patients
        .decide_standby(
            &c,
            &[
                update(2, withheld.clone()),
                update(3, RecipientStatus::Pending),
            ],
        )
        .await
        .unwrap();
    let again = patients.load_chunk(&c, &chunk).await.unwrap();
    assert_eq!(again[2].status, RecipientStatus::Pending);
    assert_eq!(again[3].status, withheld);
    // AND the promoted one is claimable like any pending recipient
    assert_eq!(
        patients.claim(&c, &chunk, &[2, 3, 4], now).await.unwrap(),
        vec![2]
    );
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 5);
}

pub async fn recipients_round_trip_in_index_order_and_are_overwritten(s: &Stores) {
    let patients = &*s.patients;
    let c = CampaignId::new();
    let a = ChunkId::new(&ods(1), 0);
    let b = ChunkId::new(&ods(1), 1);
    // Written out of order; 60 + 12 (several DynamoDB batches of 25).
    let mut all: Vec<Recipient> = (0..60).rev().map(|i| recipient(&a, i)).collect();
    all.extend((0..12).map(|i| recipient(&b, i)));
    patients.put_recipients(&c, &all, later()).await.unwrap();

    let loaded = patients.load_chunk(&c, &a).await.unwrap();
    let expected: Vec<Recipient> = (0..60).map(|i| recipient(&a, i)).collect();
    assert_eq!(loaded, expected, "index order, not string order");
    assert_eq!(
        patients.load_chunk(&c, &b).await.unwrap(),
        (0..12).map(|i| recipient(&b, i)).collect::<Vec<_>>()
    );

    // A retried extraction overwrites the earlier attempt's records, every
    // field of them, and never duplicates.
    let mut retry = recipient(&a, 7);
    retry.first_name = Personal::new("Grace".into());
    retry.status = RecipientStatus::Rejected;
    retry.delivery = Some(DeliveryStatus::PermanentFailure);
    retry.written_back = true;
    patients
        .put_recipients(&c, std::slice::from_ref(&retry), later())
        .await
        .unwrap();
    let loaded = patients.load_chunk(&c, &a).await.unwrap();
    assert_eq!(loaded.len(), 60);
    assert_eq!(loaded[7], retry);
    assert_eq!(loaded[6], recipient(&a, 6));
    assert!(patients
        .load_chunk(&c, &ChunkId::new(&ods(1), 2))
        .await
        .unwrap()
        .is_empty());
    assert!(patients
        .load_chunk(&CampaignId::new(), &a)
        .await
        .unwrap()
        .is_empty());
}

pub async fn claim_takes_only_pending_recipients(s: &Stores) {
    let patients = &*s.patients;
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(1), 1);
    let recipients: Vec<_> = (0..4).map(|i| recipient(&chunk, i)).collect();
    patients
        .put_recipients(&c, &recipients, later())
        .await
        .unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    assert_eq!(
        patients.claim(&c, &chunk, &[0, 1], now).await.unwrap(),
        vec![0, 1]
    );
    let sent = RecipientStatus::Sent {
        provider: "notify".into(),
        provider_id: "abc".into(),
        at: now,
    };
    let update = |index: u32, status: &RecipientStatus| StatusUpdate {
        chunk: chunk.clone(),
        index,
        status: status.clone(),
    };
    patients
        .set_status(
            &c,
            &[
                update(1, &sent),
                update(2, &RecipientStatus::Rejected),
                // Deleted or never written: ignored.
                update(77, &RecipientStatus::Rejected),
            ],
        )
        .await
        .unwrap();
    // Claimed, sent and rejected are not claimable; 3 is; 9 does not exist.
    assert_eq!(
        patients
            .claim(&c, &chunk, &[0, 1, 2, 3, 9], now)
            .await
            .unwrap(),
        vec![3]
    );
    let loaded = patients.load_chunk(&c, &chunk).await.unwrap();
    assert_eq!(loaded.len(), 4, "ignored updates created no records");
    assert_eq!(loaded[0].status, RecipientStatus::Claimed { at: now });
    assert_eq!(loaded[1].status, sent);
    assert_eq!(loaded[2].status, RecipientStatus::Rejected);
    assert_eq!(loaded[3].status, RecipientStatus::Claimed { at: now });

    // A released claim is claimable again.
    patients
        .set_status(&c, &[update(0, &RecipientStatus::Pending)])
        .await
        .unwrap();
    assert_eq!(
        patients.load_chunk(&c, &chunk).await.unwrap()[0].status,
        RecipientStatus::Pending
    );
    assert_eq!(
        patients.claim(&c, &chunk, &[0], now).await.unwrap(),
        vec![0]
    );
}

pub async fn a_stale_claim_is_released_once_and_never_over_a_newer_one(s: &Stores) {
    let patients = &*s.patients;
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(1), 1);
    s.hub
        .put_chunks(&[chunk_record(&c, &ods(1), 1)])
        .await
        .unwrap();
    let recipients: Vec<_> = (0..3).map(|i| recipient(&chunk, i)).collect();
    patients
        .put_recipients(&c, &recipients, later())
        .await
        .unwrap();
    let first = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    let second = first + chrono::Duration::minutes(30);
    assert_eq!(
        patients.claim(&c, &chunk, &[0, 1], first).await.unwrap(),
        vec![0, 1]
    );
    // GIVEN two workers that both found claim 0 stale: one releases it
    assert!(patients.release_claim(&c, &chunk, 0, first).await.unwrap());
    assert!(!patients.release_claim(&c, &chunk, 0, first).await.unwrap());
    // AND the winner claims it afresh: the loser's late release of the
    // old claim changes nothing
    assert_eq!(
        patients.claim(&c, &chunk, &[0], second).await.unwrap(),
        vec![0]
    );
    assert!(!patients.release_claim(&c, &chunk, 0, first).await.unwrap());
    // A release names the exact claim; a pending recipient or a missing one
    // is not released.
    assert!(!patients.release_claim(&c, &chunk, 1, second).await.unwrap());
    assert!(!patients.release_claim(&c, &chunk, 2, first).await.unwrap());
    assert!(!patients.release_claim(&c, &chunk, 9, first).await.unwrap());
    let loaded = patients.load_chunk(&c, &chunk).await.unwrap();
    assert_eq!(loaded.len(), 3, "a release creates no records");
    assert_eq!(loaded[0].status, RecipientStatus::Claimed { at: second });
    assert_eq!(loaded[1].status, RecipientStatus::Claimed { at: first });
    assert_eq!(loaded[2].status, RecipientStatus::Pending);
}

pub async fn a_final_outcome_is_never_overwritten(s: &Stores) {
    let patients = &*s.patients;
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(5), 2);
    let recipients: Vec<_> = (0..3).map(|i| recipient(&chunk, i)).collect();
    patients
        .put_recipients(&c, &recipients, later())
        .await
        .unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    patients.claim(&c, &chunk, &[0, 1, 2], now).await.unwrap();
    let sent = RecipientStatus::Sent {
        provider: "notify".into(),
        provider_id: "first".into(),
        at: now,
    };
    let update = |index: u32, status: &RecipientStatus| StatusUpdate {
        chunk: chunk.clone(),
        index,
        status: status.clone(),
    };
    patients
        .set_status(
            &c,
            &[update(0, &sent), update(1, &RecipientStatus::Rejected)],
        )
        .await
        .unwrap();
    // GIVEN a late or repeated worker writing over final outcomes
    let other = RecipientStatus::Sent {
        provider: "other".into(),
        provider_id: "second".into(),
        at: now,
    };
    patients
        .set_status(
            &c,
            &[
                update(0, &RecipientStatus::Pending),
                update(1, &other),
                update(2, &other),
            ],
        )
        .await
        .unwrap();
    // THEN only the recipient still claimed changed
    let loaded = patients.load_chunk(&c, &chunk).await.unwrap();
    assert_eq!(loaded[0].status, sent, "a sent text is not made pending");
    assert_eq!(loaded[1].status, RecipientStatus::Rejected);
    assert_eq!(loaded[2].status, other);
    assert!(patients
        .claim(&c, &chunk, &[0, 1, 2], now)
        .await
        .unwrap()
        .is_empty());
}

pub async fn statuses_deliveries_and_write_backs(s: &Stores) {
    let patients = &*s.patients;
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(4), 0);
    // Receipts are counted on the chunk's record in the hub table.
    s.hub
        .put_chunks(&[chunk_record(&c, &ods(4), 0)])
        .await
        .unwrap();
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
    let update = |index: u32, status: &RecipientStatus| StatusUpdate {
        chunk: chunk.clone(),
        index,
        status: status.clone(),
    };
    patients
        .set_status(
            &c,
            &[
                update(0, &sent),
                update(1, &RecipientStatus::Rejected),
                // A released claim goes back to pending and can be claimed again.
                update(2, &RecipientStatus::Pending),
                // An update for a deleted (or never written) record is ignored.
                update(99, &sent),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        patients.claim(&c, &chunk, &[0, 1, 2], now).await.unwrap(),
        [2]
    );

    // A receipt is recorded once; a missing recipient records nothing.
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
    assert_eq!(loaded.len(), 5, "ignored updates created no records");
    assert_eq!(loaded[0].status, sent);
    assert_eq!(loaded[0].delivery, Some(DeliveryStatus::Delivered));
    assert!(loaded[0].written_back);
    assert_eq!(loaded[1].status, RecipientStatus::Rejected);
    assert!(matches!(loaded[2].status, RecipientStatus::Claimed { .. }));
    assert_eq!(loaded[3].status, RecipientStatus::Pending);
    assert!(!loaded[3].written_back);
}

pub async fn delivery_is_recorded_once_and_write_back_marked(s: &Stores) {
    let patients = &*s.patients;
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(1), 1);
    s.hub
        .put_chunks(&[chunk_record(&c, &ods(1), 1)])
        .await
        .unwrap();
    let recipients: Vec<_> = (0..3).map(|i| recipient(&chunk, i)).collect();
    patients
        .put_recipients(&c, &recipients, later())
        .await
        .unwrap();
    // A temporary failure is a final delivery status too.
    assert!(patients
        .record_delivery(&c, &chunk, 1, DeliveryStatus::TemporaryFailure)
        .await
        .unwrap());
    assert!(!patients
        .record_delivery(&c, &chunk, 1, DeliveryStatus::Delivered)
        .await
        .unwrap());
    assert!(!patients
        .record_delivery(&c, &chunk, 42, DeliveryStatus::Delivered)
        .await
        .unwrap());
    patients
        .mark_written_back(&c, &chunk, &[0, 1, 42])
        .await
        .unwrap();
    let loaded = patients.load_chunk(&c, &chunk).await.unwrap();
    assert_eq!(loaded.len(), 3);
    assert_eq!(loaded[1].delivery, Some(DeliveryStatus::TemporaryFailure));
    assert_eq!(loaded[0].delivery, None);
    assert_eq!(
        loaded.iter().map(|r| r.written_back).collect::<Vec<_>>(),
        vec![true, true, false]
    );
}

/// The second double-send path: two deliveries of one chunk both find the
/// same claims stale and each releases and re-claims them. Every recipient
/// ends with exactly one new claim, so exactly one worker sends it.
pub async fn racing_releases_of_stale_claims_let_one_worker_resend(s: &Stores) {
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(6), 0);
    let all: Vec<Recipient> = (0..100).map(|i| recipient(&chunk, i)).collect();
    s.patients.put_recipients(&c, &all, later()).await.unwrap();
    let dead = Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap();
    let indexes: Vec<u32> = (0..100).collect();
    assert_eq!(
        s.patients.claim(&c, &chunk, &indexes, dead).await.unwrap(),
        indexes
    );
    let workers: Vec<_> = (0..4i64)
        .map(|worker| {
            let (patients, c, chunk) = (s.patients.clone(), c.clone(), chunk.clone());
            tokio::spawn(async move {
                let now = dead + Duration::minutes(30 + worker);
                let mut order: Vec<u32> = (0..100).collect();
                if worker % 2 == 1 {
                    order.reverse();
                }
                let mut resend = Vec::new();
                for index in order {
                    // What the send handler does with a stale claim.
                    if patients.release_claim(&c, &chunk, index, dead).await? {
                        resend.extend(patients.claim(&c, &chunk, &[index], now).await?);
                    }
                }
                Ok::<_, StoreError>(resend)
            })
        })
        .collect();
    let mut resent = Vec::new();
    for task in workers {
        resent.extend(task.await.unwrap().unwrap());
    }
    resent.sort_unstable();
    assert_eq!(resent, indexes, "each stale claim re-sent by one worker");
}

pub async fn racing_claims_take_each_recipient_exactly_once(s: &Stores) {
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(3), 0);
    let all: Vec<Recipient> = (0..200).map(|i| recipient(&chunk, i)).collect();
    s.patients.put_recipients(&c, &all, later()).await.unwrap();

    // 8 workers claim at once: small batches of different sizes, every
    // other worker in reverse order...
    let indexes: Arc<Vec<u32>> = Arc::new((0..200).collect());
    let batched: Vec<_> = (0..8)
        .map(|worker| {
            let (patients, c, chunk, indexes) = (
                s.patients.clone(),
                c.clone(),
                chunk.clone(),
                Arc::clone(&indexes),
            );
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for batch in indexes.chunks(10 + worker) {
                    let mut batch = batch.to_vec();
                    if worker % 2 == 1 {
                        batch.reverse();
                    }
                    mine.extend(patients.claim(&c, &chunk, &batch, Utc::now()).await?);
                }
                Ok::<_, StoreError>(mine)
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for task in batched {
        claimed.extend(task.await.unwrap().unwrap());
    }
    claimed.sort_unstable();
    assert_eq!(claimed, (0..200).collect::<Vec<_>>(), "each index once");

    // ... and, on a second chunk, overlapping ranges in one call each.
    let chunk = ChunkId::new(&ods(3), 1);
    let all: Vec<Recipient> = (0..200).map(|i| recipient(&chunk, i)).collect();
    s.patients.put_recipients(&c, &all, later()).await.unwrap();
    let ranged: Vec<_> = (0..8u32)
        .map(|worker| {
            let (patients, c, chunk) = (s.patients.clone(), c.clone(), chunk.clone());
            tokio::spawn(async move {
                let start = worker * 20;
                let indexes: Vec<u32> = (start..(start + 60).min(200)).collect();
                patients.claim(&c, &chunk, &indexes, Utc::now()).await
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for task in ranged {
        claimed.extend(task.await.unwrap().unwrap());
    }
    let unique: HashSet<u32> = claimed.iter().copied().collect();
    assert_eq!(unique.len(), claimed.len(), "no index claimed twice");
    assert_eq!(unique, (0..200).collect::<HashSet<u32>>());

    // Claimed is not pending: a later claim gets nothing; a missing one neither.
    assert!(s
        .patients
        .claim(&c, &chunk, &[0, 1, 500], Utc::now())
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .patients
        .load_chunk(&c, &chunk)
        .await
        .unwrap()
        .iter()
        .all(|r| matches!(r.status, RecipientStatus::Claimed { .. })));
}

pub async fn a_practice_retry_deletes_only_its_recipients(s: &Stores) {
    let patients = &*s.patients;
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
    // The same practice's recipients in another campaign are not this one's.
    patients
        .put_recipients(&CampaignId::new(), &mine[..5], later())
        .await
        .unwrap();
    patients
        .place_keys(&c, &ods(1), &[DedupeKey::Patient(nhs(1))], later())
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
    // The other practice's recipients and the dedupe key stay.
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 16);
    assert_eq!(
        patients
            .load_chunk(&c, &ChunkId::new(&ods(10), 0))
            .await
            .unwrap(),
        theirs
    );
    assert_eq!(patients.count_all().await.unwrap(), 21);
}

pub async fn purge_deletes_a_campaign_to_zero(s: &Stores) {
    let patients = &*s.patients;
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
    patients
        .place_keys(&other, &ods(0), &keys[..5], later())
        .await
        .unwrap();
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 250);
    assert_eq!(patients.count_campaign(&other).await.unwrap(), 15);
    assert_eq!(patients.count_all().await.unwrap(), 265);

    assert_eq!(patients.purge_campaign(&c).await.unwrap(), 250);
    assert_eq!(patients.count_campaign(&c).await.unwrap(), 0);
    assert_eq!(patients.purge_campaign(&c).await.unwrap(), 0, "idempotent");
    assert_eq!(patients.count_all().await.unwrap(), 15);
    assert_eq!(patients.count_campaign(&other).await.unwrap(), 15);
    assert_eq!(patients.purge_campaign(&other).await.unwrap(), 15);
    assert_eq!(patients.count_all().await.unwrap(), 0, "the store is empty");
}

/// Reads return everything, however large (DynamoDB pages at 1 MB).
pub async fn large_reads_return_everything(s: &Stores) {
    let (hub, patients) = (&*s.hub, &*s.patients);
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

/// A stored record that no longer parses fails the read, and the error
/// quotes none of the patient data around it.
pub async fn errors_never_quote_stored_patient_data(s: &Stores) {
    let patients = &*s.patients;
    let c = CampaignId::new();
    let chunk = ChunkId::new(&ods(1), 1);
    let all: Vec<Recipient> = (0..3).map(|i| recipient(&chunk, i)).collect();
    patients.put_recipients(&c, &all, later()).await.unwrap();
    // GIVEN a stored NHS number that fails its check digit
    s.tamper
        .set_stored_nhs_number(&c, &chunk, 1, "9434765918")
        .await
        .expect("tampering with the stored record");
    // WHEN the chunk is read THEN it fails, naming no patient data
    let error = patients.load_chunk(&c, &chunk).await.unwrap_err();
    let text = format!("{error:#} {error:?}");
    for secret in ["9434765918", "Ada", "Lovelace", "High Street", "7700900"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}
