//! DynamoDB's per-partition-key throughput, for the embedded store's
//! realistic mode: each partition key may take at most 1,000 write units
//! and 3,000 read units a second, whatever the table's capacity. Over the
//! limit DynamoDB throttles and the SDK backs off; here the call waits for
//! the key's bucket, so a hot key shows up as lost throughput, not errors.
//!
//! The partition keys are the DynamoDB adapter's (patient data:
//! `CAMPAIGN#id#R#<chunk>`, `CAMPAIGN#id#K#<shard>`, `CAMPAIGN#id#CHUNKS`;
//! hub table: `CAMPAIGN#id` for the campaign, its chunk records and audit
//! events, `CAMPAIGN#id#RECEIPTS#<shard>` for delivery-receipt counts), so
//! the embedded store feels the same heat the real tables would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Dedupe-key partitions per campaign (the DynamoDB adapter's `KEY_SHARDS`).
pub(crate) const KEY_SHARDS: u32 = 64;

pub(crate) fn chunk_partition(campaign: &str, chunk: &str) -> String {
    format!("CAMPAIGN#{campaign}#R#{chunk}")
}

pub(crate) fn key_partition(campaign: &str, shard: u32) -> String {
    format!("CAMPAIGN#{campaign}#K#{shard:02}")
}

pub(crate) fn chunks_partition(campaign: &str) -> String {
    format!("CAMPAIGN#{campaign}#CHUNKS")
}

/// Receipt-counter partitions per campaign (the DynamoDB adapter's
/// `RECEIPT_SHARDS`).
pub(crate) const RECEIPT_SHARDS: u32 = 32;

/// The hub table's key of a campaign (its record, participations, chunk
/// records, audit events); `hub/` keeps it apart from the patient table's.
pub(crate) fn campaign_partition(campaign: &str) -> String {
    format!("hub/CAMPAIGN#{campaign}")
}

/// The hub table's key where a chunk's delivery receipts are counted.
pub(crate) fn receipts_partition(campaign: &str, chunk: &hub_core::domain::ChunkId) -> String {
    receipts_shard_partition(campaign, chunk.shard(RECEIPT_SHARDS))
}

pub(crate) fn receipts_shard_partition(campaign: &str, shard: u32) -> String {
    format!("hub/CAMPAIGN#{campaign}#RECEIPTS#{shard:02}")
}

/// Units a second one partition key serves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionLimits {
    pub writes_per_second: f64,
    pub reads_per_second: f64,
}

impl PartitionLimits {
    /// DynamoDB's published per-partition-key maxima.
    pub const DYNAMODB: Self = Self {
        writes_per_second: 1_000.0,
        reads_per_second: 3_000.0,
    };
}

/// One write unit is an item up to 1 KB; one strongly consistent read unit
/// reads up to 4 KB. A recipient item is about half a kilobyte.
pub(crate) fn read_units(items: usize) -> u32 {
    u32::try_from(items.div_ceil(8)).unwrap_or(u32::MAX).max(1)
}

/// Buckets are forgotten after this long unused (full again by then).
const IDLE: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Bucket {
    writes: f64,
    reads: f64,
    at: Instant,
}

/// Token buckets per partition key (one second of burst each).
#[derive(Debug, Clone)]
pub(crate) struct PartitionThrottle {
    limits: PartitionLimits,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl PartitionThrottle {
    pub(crate) fn new(limits: PartitionLimits) -> Self {
        Self {
            limits,
            buckets: Arc::default(),
        }
    }

    /// Spends `writes` and `reads` units on `key`, waiting as long as the
    /// key's buckets are in debt.
    pub(crate) async fn spend(&self, key: &str, writes: u32, reads: u32) {
        let wait = self.reserve(key, f64::from(writes), f64::from(reads), Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    fn reserve(&self, key: &str, writes: f64, reads: f64, now: Instant) -> Duration {
        let PartitionLimits {
            writes_per_second: w_rate,
            reads_per_second: r_rate,
        } = self.limits;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < IDLE);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            writes: w_rate,
            reads: r_rate,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.writes = (bucket.writes + elapsed * w_rate).min(w_rate) - writes;
        bucket.reads = (bucket.reads + elapsed * r_rate).min(r_rate) - reads;
        bucket.at = now;
        let wait = (-bucket.writes / w_rate)
            .max(-bucket.reads / r_rate)
            .max(0.0);
        Duration::from_secs_f64(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_gets_its_limit_and_other_keys_their_own() {
        let throttle = PartitionThrottle::new(PartitionLimits::DYNAMODB);
        let now = Instant::now();
        // A second's burst is free; 2,000 more writes cost two seconds.
        assert_eq!(throttle.reserve("hot", 1_000.0, 0.0, now), Duration::ZERO);
        let wait = throttle.reserve("hot", 2_000.0, 0.0, now);
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-6, "{wait:?}");
        // Another key is not slowed by it.
        assert_eq!(throttle.reserve("cold", 1_000.0, 0.0, now), Duration::ZERO);
        // Reads have their own, larger bucket.
        assert_eq!(throttle.reserve("cold", 0.0, 3_000.0, now), Duration::ZERO);
        let wait = throttle.reserve("cold", 0.0, 300.0, now);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // The debt is paid at the rate.
        let later = now + Duration::from_secs(3);
        assert_eq!(throttle.reserve("hot", 0.0, 0.0, later), Duration::ZERO);
        assert_eq!(read_units(1), 1);
        assert_eq!(read_units(250), 32);
    }
}
