//! The embedded store's realistic mode: DynamoDB's per-partition-key limits
//! (1,000 writes/s, 3,000 reads/s) make a hot key cost throughput, and the
//! patient-data key layout (a partition per chunk, dedupe keys in shards)
//! keeps a campaign's writes off any one key.

use hub_core::domain::{CampaignId, ChunkId, DedupeKey, Recipient};
use hub_core::ports::PatientDataStore;
use hub_local::embedded::{PartitionLimits, SqliteStore};
use hub_testkit::fixtures::{later, nhs, ods, recipient};
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
