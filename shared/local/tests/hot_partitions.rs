//! The embedded store's realistic mode: DynamoDB's per-partition-key limits
//! (1,000 writes/s, 3,000 reads/s) make a hot key cost throughput, and the
//! patient-data key layout (a partition per chunk, dedupe keys in shards)
//! keeps a campaign's writes off any one key.

use hub_core::domain::{AuditEvent, CampaignId, ChunkId, DedupeKey, DeliveryStatus, Recipient};
use hub_core::ports::{HubStore, PatientDataStore};
use hub_local::embedded::{PartitionLimits, SqliteStore};
use hub_testkit::fixtures::{chunk_record, later, nhs, ods, recipient};
use std::time::{Duration, Instant};

fn realistic() -> SqliteStore {
    SqliteStore::in_memory()
        .unwrap()
        .with_partition_limits(PartitionLimits::DYNAMODB)
}

/// GIVEN 3,000 recipient writes, WHEN they all land on one partition key
/// (one oversized chunk) THEN they take at least two seconds (a second's
/// burst, then 1,000/s), AND WHEN the same writes are spread as the hub
/// stores them (chunks of 250) THEN they take a fraction of that.
#[tokio::test]
async fn a_hot_partition_key_shows_up_as_lost_throughput() {
    let store = realistic();
    let campaign = CampaignId::new();
    let hot_chunk = ChunkId::new(&ods(1), 0);
    let hot: Vec<Recipient> = (0..3_000).map(|i| recipient(&hot_chunk, i)).collect();
    let started = Instant::now();
    for batch in hot.chunks(250) {
        store
            .put_recipients(&campaign, batch, later())
            .await
            .unwrap();
    }
    let hot_time = started.elapsed();

    let spread: Vec<Recipient> = (0..12u32)
        .flat_map(|c| {
            let chunk = ChunkId::new(&ods(2), c);
            (0..250).map(move |i| recipient(&chunk, i))
        })
        .collect();
    let started = Instant::now();
    for batch in spread.chunks(250) {
        store
            .put_recipients(&campaign, batch, later())
            .await
            .unwrap();
    }
    let spread_time = started.elapsed();

    assert!(hot_time >= Duration::from_millis(1_900), "{hot_time:?}");
    assert!(
        spread_time < Duration::from_millis(900),
        "spread: {spread_time:?} (hot: {hot_time:?})"
    );
}

/// Dedupe keys spread over shards: 4,000 keys of one campaign are placed
/// well within the time one key would need (three seconds).
#[tokio::test]
async fn dedupe_keys_of_one_campaign_are_spread_over_partitions() {
    let store = realistic();
    let campaign = CampaignId::new();
    let keys: Vec<DedupeKey> = (0..4_000).map(|n| DedupeKey::Patient(nhs(n))).collect();
    let shards: std::collections::HashSet<u32> = keys.iter().map(|k| k.shard(64)).collect();
    assert!(shards.len() >= 60, "{} shards used", shards.len());
    let started = Instant::now();
    for batch in keys.chunks(500) {
        store
            .place_keys(&campaign, &ods(1), batch, later())
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1_500), "{elapsed:?}");
}

/// GIVEN the hub table in realistic mode, WHEN 3,000 writes land on a
/// campaign's own key (`CAMPAIGN#id`, here audit events) THEN they take at
/// least two seconds, AND WHEN 3,000 delivery receipts of that campaign are
/// recorded and counted THEN they take a fraction of that: their counts
/// are spread over the receipts partitions, off the campaign's key.
#[tokio::test]
async fn delivery_receipts_are_counted_off_the_campaigns_hot_key() {
    let store = realistic();
    let campaign = CampaignId::new();
    let chunks: Vec<ChunkId> = (0..12).map(|c| ChunkId::new(&ods(3), c)).collect();
    let records: Vec<_> = (0..12)
        .map(|c| chunk_record(&campaign, &ods(3), c))
        .collect();
    store.put_chunks(&records).await.unwrap();
    for chunk in &chunks {
        let recipients: Vec<Recipient> = (0..250).map(|i| recipient(chunk, i)).collect();
        store
            .put_recipients(&campaign, &recipients, later())
            .await
            .unwrap();
    }
    // Past the partitions' burst from the set-up.
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let started = Instant::now();
    for chunk in &chunks {
        for index in 0..250 {
            assert!(store
                .record_delivery(&campaign, chunk, index, DeliveryStatus::Delivered)
                .await
                .unwrap());
        }
    }
    let receipts_time = started.elapsed();
    let counted: u64 = store
        .list_chunks(&campaign)
        .await
        .unwrap()
        .iter()
        .map(|c| c.counts.delivered)
        .sum();
    assert_eq!(counted, 3_000);

    let started = Instant::now();
    for n in 0..3_000 {
        store
            .append_audit(&AuditEvent {
                campaign: Some(campaign.clone()),
                at: later(),
                actor: "hub".into(),
                action: "step".into(),
                detail: serde_json::json!({ "n": n }),
            })
            .await
            .unwrap();
    }
    let hot_time = started.elapsed();
    eprintln!(
        "3,000 receipts: {receipts_time:?}; 3,000 writes on the campaign's key: {hot_time:?}"
    );

    assert!(hot_time >= Duration::from_millis(1_900), "{hot_time:?}");
    assert!(
        receipts_time < Duration::from_millis(1_200),
        "receipts: {receipts_time:?} (the campaign's key: {hot_time:?})"
    );
}
