//! Both tables of the hub on one SQLite database: `hub_*` tables (kept, no
//! patient data) and `patient_*` tables (short-lived, each row with
//! `expires_at`, the TTL). Records are JSON text plus the key columns the
//! queries need.

use super::db::{from_json, to_json, Db, DbError, SqlContext};
use super::partitions::{
    campaign_partition, chunk_partition, chunks_partition, key_partition, read_units,
    receipts_partition, receipts_shard_partition, PartitionLimits, PartitionThrottle, KEY_SHARDS,
    RECEIPT_SHARDS,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hub_core::domain::pacing::PaceBucket;
use hub_core::domain::{
    AuditEvent, Campaign, CampaignId, ChunkId, ChunkRecord, ChunkStage, Contact, DedupeKey,
    DeliveryStatus, NhsNumber, OdsCode, OutcomeCounts, Participation, Personal, Progress,
    Recipient, RecipientStatus,
};
use hub_core::ports::{HubStore, PatientDataStore, Placement, Practice, StatusUpdate, StoreError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hub_practices (
    ods TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hub_campaigns (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hub_participations (
    campaign TEXT NOT NULL,
    ods TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (campaign, ods)
);
CREATE TABLE IF NOT EXISTS hub_chunks (
    campaign TEXT NOT NULL,
    chunk TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (campaign, chunk)
);
CREATE TABLE IF NOT EXISTS hub_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS hub_audit_by_campaign ON hub_audit (campaign, id);
CREATE TABLE IF NOT EXISTS hub_pace_buckets (
    key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    data TEXT NOT NULL
);

-- status, pending, delivery and written_back change after the write; data
-- holds what does not (NHS number, contact, names).
CREATE TABLE IF NOT EXISTS patient_recipients (
    campaign TEXT NOT NULL,
    chunk TEXT NOT NULL,
    idx INTEGER NOT NULL,
    ods TEXT NOT NULL,
    data TEXT NOT NULL,
    status TEXT NOT NULL,
    pending INTEGER NOT NULL,
    delivery TEXT,
    written_back INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (campaign, chunk, idx)
);
CREATE INDEX IF NOT EXISTS patient_recipients_by_practice ON patient_recipients (campaign, ods);
CREATE TABLE IF NOT EXISTS patient_dedupe_keys (
    campaign TEXT NOT NULL,
    key TEXT NOT NULL,
    ods TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (campaign, key)
) WITHOUT ROWID;
";

/// The embedded `HubStore` and `PatientDataStore`. Clones share one
/// connection.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Db,
    /// Realistic mode: DynamoDB's per-partition-key limits on both tables.
    partitions: Option<PartitionThrottle>,
}

impl SqliteStore {
    /// Opens (or creates) the database file, in WAL mode.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            db: Db::open(path, SCHEMA)?,
            partitions: None,
        })
    }

    /// A private in-memory database (tests, throwaway demos).
    pub fn in_memory() -> anyhow::Result<Self> {
        Ok(Self {
            db: Db::in_memory(SCHEMA)?,
            partitions: None,
        })
    }

    /// A throwaway database: commits never wait for the disk.
    pub fn without_fsync(mut self) -> anyhow::Result<Self> {
        self.db = self.db.without_fsync()?;
        Ok(self)
    }

    /// Runs its SQLite calls on the calling thread, not the blocking pool:
    /// for a current-thread runtime with paused time, whose clock then
    /// cannot move while the store works.
    pub fn with_inline_calls(mut self) -> Self {
        self.db = self.db.inline();
        self
    }

    /// Realistic mode: patient-data calls, and the hub-table calls made per
    /// chunk or per receipt, wait as DynamoDB would make them
    /// wait when one partition key takes more than `limits` (see
    /// [`PartitionLimits::DYNAMODB`]), so a hot key costs throughput here too.
    pub fn with_partition_limits(mut self, limits: PartitionLimits) -> Self {
        self.partitions = Some(PartitionThrottle::new(limits));
        self
    }

    /// Charges units to partition keys (realistic mode only).
    async fn spend(&self, charges: impl IntoIterator<Item = (String, u32, u32)>) {
        if let Some(throttle) = &self.partitions {
            let waits = charges.into_iter().map(|(key, writes, reads)| async move {
                throttle.spend(&key, writes, reads).await
            });
            futures::future::join_all(waits).await;
        }
    }

    /// Write charges for items grouped by partition key.
    fn writes_per_partition(keys: impl IntoIterator<Item = String>) -> Vec<(String, u32, u32)> {
        let mut counts: std::collections::BTreeMap<String, u32> = Default::default();
        for key in keys {
            *counts.entry(key).or_default() += 1;
        }
        counts.into_iter().map(|(key, n)| (key, n, 0)).collect()
    }

    /// The TTL sweep DynamoDB would do: deletes patient rows whose
    /// `expires_at` has passed. The safety net, never the plan.
    pub async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let now = now.timestamp();
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                let mut deleted = 0;
                for sql in [
                    "DELETE FROM patient_recipients WHERE expires_at <= ?1",
                    "DELETE FROM patient_dedupe_keys WHERE expires_at <= ?1",
                ] {
                    deleted += tx
                        .prepare_cached(sql)
                        .and_then(|mut s| s.execute([now]))
                        .op("purge_expired")?;
                }
                tx.commit().op("purge_expired: commit")?;
                Ok(deleted as u64)
            })
            .await
    }
}

/// Every write is one IMMEDIATE transaction: the write lock is taken up
/// front, so another connection cannot force a mid-transaction abort.
fn write_tx(conn: &mut Connection) -> Result<rusqlite::Transaction<'_>, DbError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .op("begin transaction")
}

/// Runs a single-row query through the statement cache.
fn query_opt<T>(
    conn: &Connection,
    op: &'static str,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, DbError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.query_row(params, map).optional())
        .op(op)
}

/// Runs a query returning JSON records through the statement cache.
fn query_json<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    op: &'static str,
    kind: &'static str,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<T>, DbError> {
    let texts = conn
        .prepare_cached(sql)
        .and_then(|mut s| {
            s.query_map(params, |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .op(op)?;
    texts.iter().map(|t| from_json(kind, t)).collect()
}

fn load_campaign(conn: &Connection, id: &CampaignId) -> Result<Option<Campaign>, DbError> {
    query_opt(
        conn,
        "load campaign",
        "SELECT data FROM hub_campaigns WHERE id = ?1",
        [id.as_str()],
        |row| row.get::<_, String>(0),
    )?
    .map(|t| from_json("campaign", &t))
    .transpose()
}

/// Writes the campaign with `version + 1` if the stored version is still
/// `campaign.version`.
fn cas_campaign(conn: &Connection, campaign: &Campaign) -> Result<Campaign, StoreError> {
    let mut stored = campaign.clone();
    stored.version = campaign.version + 1;
    let data = to_json("campaign", &stored)?;
    let changed = conn
        .prepare_cached(
            "UPDATE hub_campaigns SET version = ?1, data = ?2 WHERE id = ?3 AND version = ?4",
        )
        .and_then(|mut s| {
            s.execute(params![
                stored.version,
                data,
                campaign.id.as_str(),
                campaign.version
            ])
        })
        .op("update campaign")?;
    if changed == 1 {
        return Ok(stored);
    }
    let current: Option<u64> = query_opt(
        conn,
        "update campaign",
        "SELECT version FROM hub_campaigns WHERE id = ?1",
        [campaign.id.as_str()],
        |row| row.get(0),
    )?;
    Err(match current {
        Some(current) => StoreError::Conflict(format!(
            "campaign {} is at version {current}, not {}",
            campaign.id, campaign.version
        )),
        None => StoreError::NotFound(format!("campaign {}", campaign.id)),
    })
}

/// Applies a change to the stored campaign's progress, bumping its version
/// (the caller holds the write transaction, so this cannot race).
fn bump_progress(
    conn: &Connection,
    id: &CampaignId,
    change: impl FnOnce(&mut Progress),
) -> Result<Progress, StoreError> {
    let mut campaign =
        load_campaign(conn, id)?.ok_or_else(|| StoreError::NotFound(format!("campaign {id}")))?;
    change(&mut campaign.progress);
    Ok(cas_campaign(conn, &campaign)?.progress)
}

fn cas_participation(conn: &Connection, p: &Participation) -> Result<Participation, StoreError> {
    let mut stored = p.clone();
    stored.version = p.version + 1;
    let data = to_json("participation", &stored)?;
    let changed = conn
        .prepare_cached(
            "UPDATE hub_participations SET version = ?1, data = ?2
             WHERE campaign = ?3 AND ods = ?4 AND version = ?5",
        )
        .and_then(|mut s| {
            s.execute(params![
                stored.version,
                data,
                p.campaign.as_str(),
                p.ods.as_str(),
                p.version
            ])
        })
        .op("update participation")?;
    if changed == 1 {
        return Ok(stored);
    }
    let current: Option<u64> = query_opt(
        conn,
        "update participation",
        "SELECT version FROM hub_participations WHERE campaign = ?1 AND ods = ?2",
        [p.campaign.as_str(), p.ods.as_str()],
        |row| row.get(0),
    )?;
    Err(match current {
        Some(current) => StoreError::Conflict(format!(
            "participation {}/{} is at version {current}, not {}",
            p.campaign, p.ods, p.version
        )),
        None => StoreError::NotFound(format!("participation {}/{}", p.campaign, p.ods)),
    })
}

fn load_chunk_record(
    conn: &Connection,
    campaign: &CampaignId,
    chunk: &ChunkId,
) -> Result<Option<ChunkRecord>, DbError> {
    query_opt(
        conn,
        "load chunk",
        "SELECT data FROM hub_chunks WHERE campaign = ?1 AND chunk = ?2",
        [campaign.as_str(), chunk.as_str()],
        |row| row.get::<_, String>(0),
    )?
    .map(|t| from_json("chunk", &t))
    .transpose()
}

fn save_chunk_record(conn: &Connection, record: &ChunkRecord) -> Result<(), DbError> {
    let data = to_json("chunk", record)?;
    conn.prepare_cached("UPDATE hub_chunks SET data = ?1 WHERE campaign = ?2 AND chunk = ?3")
        .and_then(|mut s| {
            s.execute(params![
                data,
                record.campaign.as_str(),
                record.chunk.as_str()
            ])
        })
        .op("save chunk")?;
    Ok(())
}

/// The unchanging part of a recipient, as stored in `data`. Chunk and index
/// are key columns; status, delivery and write-back are columns of their own
/// so the hot updates never rewrite the record.
#[derive(Serialize)]
struct RecipientDataRef<'a> {
    nhs_number: &'a NhsNumber,
    contact: &'a Contact,
    first_name: &'a Personal<String>,
    last_name: &'a Personal<String>,
}

#[derive(Deserialize)]
struct RecipientData {
    nhs_number: NhsNumber,
    contact: Contact,
    first_name: Personal<String>,
    last_name: Personal<String>,
}

fn status_columns(status: &RecipientStatus) -> Result<(String, bool), DbError> {
    Ok((
        to_json("recipient status", status)?,
        matches!(status, RecipientStatus::Pending),
    ))
}

fn chunk_ods(chunk: &ChunkId) -> Result<OdsCode, StoreError> {
    chunk.ods().ok_or_else(|| {
        StoreError::Unexpected(anyhow::anyhow!(
            "chunk id {chunk} does not start with an ODS code"
        ))
    })
}

#[async_trait]
impl HubStore for SqliteStore {
    async fn put_practice(&self, practice: &Practice) -> Result<(), StoreError> {
        let ods = practice.ods.clone();
        let data = to_json("practice", practice)?;
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO hub_practices (ods, data) VALUES (?1, ?2)
                     ON CONFLICT (ods) DO UPDATE SET data = excluded.data",
                )
                .and_then(|mut s| s.execute(params![ods.as_str(), data]))
                .op("put_practice")?;
                Ok(())
            })
            .await
    }

    async fn get_practice(&self, ods: &OdsCode) -> Result<Option<Practice>, StoreError> {
        let ods = ods.clone();
        self.db
            .call(move |conn| {
                let mut found = query_json(
                    conn,
                    "get_practice",
                    "practice",
                    "SELECT data FROM hub_practices WHERE ods = ?1",
                    [ods.as_str()],
                )?;
                Ok(found.pop())
            })
            .await
    }

    async fn list_practices(&self) -> Result<Vec<Practice>, StoreError> {
        self.db
            .call(|conn| {
                Ok(query_json(
                    conn,
                    "list_practices",
                    "practice",
                    "SELECT data FROM hub_practices ORDER BY ods",
                    [],
                )?)
            })
            .await
    }

    async fn create_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        let id = campaign.id.clone();
        let version = campaign.version;
        let data = to_json("campaign", campaign)?;
        self.db
            .call(move |conn| {
                let inserted = conn
                    .prepare_cached(
                        "INSERT INTO hub_campaigns (id, version, data) VALUES (?1, ?2, ?3)
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .and_then(|mut s| s.execute(params![id.as_str(), version, data]))
                    .op("create_campaign")?;
                if inserted == 0 {
                    return Err(StoreError::Conflict(format!(
                        "campaign {id} already exists"
                    )));
                }
                Ok(())
            })
            .await
    }

    async fn get_campaign(&self, id: &CampaignId) -> Result<Option<Campaign>, StoreError> {
        let id = id.clone();
        self.db
            .call(move |conn| Ok(load_campaign(conn, &id)?))
            .await
    }

    async fn list_campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        let mut campaigns: Vec<Campaign> = self
            .db
            .call(|conn| {
                query_json(
                    conn,
                    "list_campaigns",
                    "campaign",
                    "SELECT data FROM hub_campaigns ORDER BY rowid",
                    [],
                )
                .map_err(StoreError::from)
            })
            .await?;
        // Oldest first, as DynamoDB's index lists them (a stable sort: ties
        // stay in insertion order).
        campaigns.sort_by_key(|c| c.created_at);
        Ok(campaigns)
    }

    async fn update_campaign(&self, campaign: &Campaign) -> Result<Campaign, StoreError> {
        let mut campaign = campaign.clone();
        self.db
            .call(move |conn| {
                // The counters belong to the operations that move them: the
                // stored ones win over the copy's.
                let tx = write_tx(conn)?;
                if let Some(stored) = load_campaign(&tx, &campaign.id)? {
                    campaign.progress = stored.progress;
                }
                let stored = cas_campaign(&tx, &campaign)?;
                tx.commit().op("update_campaign: commit")?;
                Ok(stored)
            })
            .await
    }

    async fn create_participations(&self, items: &[Participation]) -> Result<(), StoreError> {
        let rows = items
            .iter()
            .map(|p| {
                Ok((
                    p.campaign.clone(),
                    p.ods.clone(),
                    p.version,
                    to_json("participation", p)?,
                ))
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO hub_participations (campaign, ods, version, data)
                             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (campaign, ods) DO NOTHING",
                        )
                        .op("create_participations")?;
                    for (campaign, ods, version, data) in &rows {
                        insert
                            .execute(params![campaign.as_str(), ods.as_str(), version, data])
                            .op("create_participations")?;
                    }
                }
                tx.commit().op("create_participations: commit")?;
                Ok(())
            })
            .await
    }

    async fn get_participation(
        &self,
        campaign: &CampaignId,
        ods: &OdsCode,
    ) -> Result<Option<Participation>, StoreError> {
        let (campaign, ods) = (campaign.clone(), ods.clone());
        self.db
            .call(move |conn| {
                let mut found = query_json(
                    conn,
                    "get_participation",
                    "participation",
                    "SELECT data FROM hub_participations WHERE campaign = ?1 AND ods = ?2",
                    [campaign.as_str(), ods.as_str()],
                )?;
                Ok(found.pop())
            })
            .await
    }

    async fn list_participations(
        &self,
        campaign: &CampaignId,
    ) -> Result<Vec<Participation>, StoreError> {
        let campaign = campaign.clone();
        self.db
            .call(move |conn| {
                Ok(query_json(
                    conn,
                    "list_participations",
                    "participation",
                    "SELECT data FROM hub_participations WHERE campaign = ?1 ORDER BY ods",
                    [campaign.as_str()],
                )?)
            })
            .await
    }

    async fn update_participation(
        &self,
        participation: &Participation,
    ) -> Result<Participation, StoreError> {
        let participation = participation.clone();
        self.db
            .call(move |conn| cas_participation(conn, &participation))
            .await
    }

    async fn freeze_participants(
        &self,
        campaign: &Campaign,
        participations: &[Participation],
    ) -> Result<Campaign, StoreError> {
        let campaign = campaign.clone();
        let participations = participations.to_vec();
        self.db
            .call(move |conn| {
                // Any error returns before commit: dropping `tx` rolls back.
                let tx = write_tx(conn)?;
                let stored = cas_campaign(&tx, &campaign)?;
                for p in &participations {
                    cas_participation(&tx, p)?;
                }
                tx.commit().op("freeze_participants: commit")?;
                Ok(stored)
            })
            .await
    }

    async fn put_chunks(&self, chunks: &[ChunkRecord]) -> Result<(), StoreError> {
        self.spend(Self::writes_per_partition(chunks.iter().flat_map(|c| {
            [
                campaign_partition(c.campaign.as_str()),
                receipts_partition(c.campaign.as_str(), &c.chunk),
            ]
        })))
        .await;
        let rows = chunks
            .iter()
            .map(|c| Ok((c.campaign.clone(), c.chunk.clone(), to_json("chunk", c)?)))
            .collect::<Result<Vec<_>, DbError>>()?;
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO hub_chunks (campaign, chunk, data) VALUES (?1, ?2, ?3)
                             ON CONFLICT (campaign, chunk) DO NOTHING",
                        )
                        .op("put_chunks")?;
                    for (campaign, chunk, data) in &rows {
                        insert
                            .execute(params![campaign.as_str(), chunk.as_str(), data])
                            .op("put_chunks")?;
                    }
                }
                tx.commit().op("put_chunks: commit")?;
                Ok(())
            })
            .await
    }

    async fn get_chunk(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
    ) -> Result<Option<ChunkRecord>, StoreError> {
        self.spend([
            (campaign_partition(campaign.as_str()), 0, 1),
            (receipts_partition(campaign.as_str(), chunk), 0, 1),
        ])
        .await;
        let (campaign, chunk) = (campaign.clone(), chunk.clone());
        self.db
            .call(move |conn| Ok(load_chunk_record(conn, &campaign, &chunk)?))
            .await
    }

    async fn list_chunks(&self, campaign: &CampaignId) -> Result<Vec<ChunkRecord>, StoreError> {
        let id = campaign.clone();
        let chunks: Vec<ChunkRecord> = self
            .db
            .call(move |conn| -> Result<Vec<ChunkRecord>, StoreError> {
                Ok(query_json(
                    conn,
                    "list_chunks",
                    "chunk",
                    "SELECT data FROM hub_chunks WHERE campaign = ?1 ORDER BY chunk",
                    [id.as_str()],
                )?)
            })
            .await?;
        // The chunk records from the campaign's key, their receipts from
        // every receipts partition.
        let receipts = (0..RECEIPT_SHARDS).map(|shard| {
            let items = chunks
                .iter()
                .filter(|c| c.chunk.shard(RECEIPT_SHARDS) == shard)
                .count();
            (
                receipts_shard_partition(campaign.as_str(), shard),
                0,
                read_units(items),
            )
        });
        self.spend(
            std::iter::once((
                campaign_partition(campaign.as_str()),
                0,
                read_units(chunks.len()),
            ))
            .chain(receipts),
        )
        .await;
        Ok(chunks)
    }

    async fn commit_extraction(
        &self,
        participation: &Participation,
        chunks: u64,
    ) -> Result<Progress, StoreError> {
        // The participation and the campaign's counters.
        self.spend([(campaign_partition(participation.campaign.as_str()), 2, 0)])
            .await;
        let participation = participation.clone();
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                cas_participation(&tx, &participation)?;
                let progress = bump_progress(&tx, &participation.campaign, |p| {
                    p.practices_pending = p.practices_pending.saturating_sub(1);
                    p.chunks_outstanding += chunks;
                })?;
                tx.commit().op("commit_extraction: commit")?;
                Ok(progress)
            })
            .await
    }

    async fn complete_chunk_stage(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        stage: ChunkStage,
        counts: &OutcomeCounts,
    ) -> Result<Option<(ChunkRecord, Progress)>, StoreError> {
        // Read the chunk and its receipts; write it and the counters.
        self.spend([
            (campaign_partition(campaign.as_str()), 2, 1),
            (receipts_partition(campaign.as_str(), chunk), 0, 1),
        ])
        .await;
        let (campaign, chunk, counts) = (campaign.clone(), chunk.clone(), counts.clone());
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                let mut record = load_chunk_record(&tx, &campaign, &chunk)?.ok_or_else(|| {
                    StoreError::NotFound(format!("chunk {chunk} of campaign {campaign}"))
                })?;
                let flag = match stage {
                    ChunkStage::Send => &mut record.send_done,
                    ChunkStage::Letters => &mut record.letters_done,
                    ChunkStage::Writeback => &mut record.writeback_done,
                };
                if *flag {
                    return Ok(None);
                }
                *flag = true;
                record.counts.add(&counts);
                let progress = if record.is_final() && !record.counted_final {
                    record.counted_final = true;
                    bump_progress(&tx, &campaign, |p| {
                        p.chunks_outstanding = p.chunks_outstanding.saturating_sub(1);
                    })?
                } else {
                    load_campaign(&tx, &campaign)?
                        .ok_or_else(|| StoreError::NotFound(format!("campaign {campaign}")))?
                        .progress
                };
                save_chunk_record(&tx, &record)?;
                tx.commit().op("complete_chunk_stage: commit")?;
                Ok(Some((record, progress)))
            })
            .await
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let campaign = event.campaign.as_ref().map(|c| c.as_str().to_string());
        let partition = campaign
            .as_deref()
            .map_or_else(|| "hub/AUDIT".to_string(), campaign_partition);
        self.spend([(partition, 1, 0)]).await;
        let data = to_json("audit event", event)?;
        self.db
            .call(move |conn| {
                conn.prepare_cached("INSERT INTO hub_audit (campaign, data) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![campaign, data]))
                    .op("append_audit")?;
                Ok(())
            })
            .await
    }

    async fn list_audit(&self, campaign: &CampaignId) -> Result<Vec<AuditEvent>, StoreError> {
        let campaign = campaign.clone();
        self.db
            .call(move |conn| {
                Ok(query_json(
                    conn,
                    "list_audit",
                    "audit event",
                    "SELECT data FROM hub_audit WHERE campaign = ?1 ORDER BY id",
                    [campaign.as_str()],
                )?)
            })
            .await
    }

    async fn list_hub_audit(&self) -> Result<Vec<AuditEvent>, StoreError> {
        self.db
            .call(move |conn| {
                Ok(query_json(
                    conn,
                    "list_hub_audit",
                    "audit event",
                    "SELECT data FROM hub_audit WHERE campaign IS NULL ORDER BY id",
                    [],
                )?)
            })
            .await
    }

    async fn get_pace_bucket(&self, key: &str) -> Result<PaceBucket, StoreError> {
        let key = key.to_string();
        self.db
            .call(move |conn| {
                let data: Option<String> = query_opt(
                    conn,
                    "get_pace_bucket",
                    "SELECT data FROM hub_pace_buckets WHERE key = ?1",
                    [key.as_str()],
                    |row| row.get(0),
                )?;
                match data {
                    Some(data) => Ok(from_json("pace bucket", &data)?),
                    None => Ok(PaceBucket::default()),
                }
            })
            .await
    }

    async fn put_pace_bucket(&self, key: &str, bucket: &PaceBucket) -> Result<(), StoreError> {
        let key = key.to_string();
        let data = to_json("pace bucket", bucket)?;
        let (version, previous) = (bucket.version, bucket.version.saturating_sub(1));
        self.db
            .call(move |conn| {
                // The version condition is the compare-and-set.
                let changed = if previous == 0 {
                    conn.prepare_cached(
                        "INSERT INTO hub_pace_buckets (key, version, data) VALUES (?1, ?2, ?3)
                         ON CONFLICT (key) DO NOTHING",
                    )
                    .and_then(|mut s| s.execute(params![key, version, data]))
                } else {
                    conn.prepare_cached(
                        "UPDATE hub_pace_buckets SET version = ?2, data = ?3
                         WHERE key = ?1 AND version = ?4",
                    )
                    .and_then(|mut s| s.execute(params![key, version, data, previous]))
                }
                .op("put_pace_bucket")?;
                if changed == 1 {
                    Ok(())
                } else {
                    Err(StoreError::Conflict(format!(
                        "pace bucket {key} is no longer at version {previous}"
                    )))
                }
            })
            .await
    }
}

impl SqliteStore {
    /// Sets each recipient's status if its current status tag is in `from`
    /// (an SQL list of literals); other rows are left alone.
    async fn write_statuses(
        &self,
        campaign: &CampaignId,
        updates: &[StatusUpdate],
        from: &'static str,
    ) -> Result<(), StoreError> {
        self.spend(Self::writes_per_partition(
            updates
                .iter()
                .map(|u| chunk_partition(campaign.as_str(), u.chunk.as_str())),
        ))
        .await;
        let campaign = campaign.clone();
        let rows = updates
            .iter()
            .map(|u| {
                let (status, pending) = status_columns(&u.status)?;
                Ok((u.chunk.clone(), u.index, status, pending))
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                {
                    let mut update = tx
                        .prepare_cached(&format!(
                            "UPDATE patient_recipients SET status = ?1, pending = ?2
                             WHERE campaign = ?3 AND chunk = ?4 AND idx = ?5
                               AND json_extract(status, '$.status') IN {from}"
                        ))
                        .op("set_status")?;
                    for (chunk, index, status, pending) in &rows {
                        update
                            .execute(params![
                                status,
                                pending,
                                campaign.as_str(),
                                chunk.as_str(),
                                index
                            ])
                            .op("set_status")?;
                    }
                }
                tx.commit().op("set_status: commit")?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl PatientDataStore for SqliteStore {
    async fn place_keys(
        &self,
        campaign: &CampaignId,
        ods: &OdsCode,
        keys: &[DedupeKey],
        expires_at: DateTime<Utc>,
    ) -> Result<Vec<Placement>, StoreError> {
        self.spend(Self::writes_per_partition(keys.iter().map(|key| {
            key_partition(campaign.as_str(), key.shard(KEY_SHARDS))
        })))
        .await;
        let (campaign, ods) = (campaign.clone(), ods.clone());
        let keys: Vec<String> = keys.iter().map(DedupeKey::storage_key).collect();
        let expires_at = expires_at.timestamp();
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                let mut placements = Vec::with_capacity(keys.len());
                {
                    // One statement per key: a new key is inserted; a key this
                    // practice already holds is "updated" (TTL extended), so it
                    // counts as a change; a key another practice holds is not.
                    let mut place = tx
                        .prepare_cached(
                            "INSERT INTO patient_dedupe_keys (campaign, key, ods, expires_at)
                             VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (campaign, key) DO UPDATE
                                 SET expires_at = max(expires_at, excluded.expires_at)
                                 WHERE ods = excluded.ods",
                        )
                        .op("place_keys")?;
                    for key in &keys {
                        let changed = place
                            .execute(params![campaign.as_str(), key, ods.as_str(), expires_at])
                            .op("place_keys")?;
                        placements.push(if changed == 1 {
                            Placement::Placed
                        } else {
                            Placement::HeldElsewhere
                        });
                    }
                }
                tx.commit().op("place_keys: commit")?;
                Ok(placements)
            })
            .await
    }

    async fn key_holders(
        &self,
        campaign: &CampaignId,
        keys: &[DedupeKey],
    ) -> Result<Vec<Option<OdsCode>>, StoreError> {
        let campaign = campaign.clone();
        let keys: Vec<String> = keys.iter().map(DedupeKey::storage_key).collect();
        let holders: Vec<Option<String>> = self
            .db
            .call(move |conn| -> Result<_, StoreError> {
                let mut find = conn
                    .prepare_cached(
                        "SELECT ods FROM patient_dedupe_keys WHERE campaign = ?1 AND key = ?2",
                    )
                    .op("key_holders")?;
                let mut holders = Vec::with_capacity(keys.len());
                for key in &keys {
                    holders.push(
                        find.query_row(params![campaign.as_str(), key], |row| row.get(0))
                            .optional()
                            .op("key_holders")?,
                    );
                }
                Ok(holders)
            })
            .await?;
        holders
            .into_iter()
            .map(|ods| {
                ods.map(|ods| {
                    OdsCode::parse(&ods).map_err(|_| {
                        StoreError::Unexpected(anyhow::anyhow!(
                            "a dedupe key is held by an unreadable ODS code"
                        ))
                    })
                })
                .transpose()
            })
            .collect()
    }

    async fn take_over_key(
        &self,
        campaign: &CampaignId,
        key: &DedupeKey,
        from: &OdsCode,
        to: &OdsCode,
    ) -> Result<bool, StoreError> {
        self.spend(Self::writes_per_partition([key_partition(
            campaign.as_str(),
            key.shard(KEY_SHARDS),
        )]))
        .await;
        let (campaign, key) = (campaign.clone(), key.storage_key());
        let (from, to) = (from.clone(), to.clone());
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                // `to` already holding it: a repeated take-over by the winner.
                let changed = tx
                    .prepare_cached(
                        "UPDATE patient_dedupe_keys SET ods = ?3
                         WHERE campaign = ?1 AND key = ?2 AND ods IN (?3, ?4)",
                    )
                    .op("take_over_key")?
                    .execute(params![campaign.as_str(), key, to.as_str(), from.as_str()])
                    .op("take_over_key")?;
                tx.commit().op("take_over_key: commit")?;
                Ok(changed == 1)
            })
            .await
    }

    async fn put_recipients(
        &self,
        campaign: &CampaignId,
        recipients: &[Recipient],
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // The recipients' chunks, and one chunk entry each.
        let mut charges = Self::writes_per_partition(
            recipients
                .iter()
                .map(|r| chunk_partition(campaign.as_str(), r.chunk.as_str())),
        );
        charges.push((chunks_partition(campaign.as_str()), charges.len() as u32, 0));
        self.spend(charges).await;
        let campaign = campaign.clone();
        let recipients = recipients.to_vec();
        let expires_at = expires_at.timestamp();
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                {
                    let mut upsert = tx
                        .prepare_cached(
                            "INSERT INTO patient_recipients
                                 (campaign, chunk, idx, ods, data, status, pending, delivery,
                                  written_back, expires_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                             ON CONFLICT (campaign, chunk, idx) DO UPDATE SET
                                 ods = excluded.ods, data = excluded.data,
                                 status = excluded.status, pending = excluded.pending,
                                 delivery = excluded.delivery,
                                 written_back = excluded.written_back,
                                 expires_at = excluded.expires_at",
                        )
                        .op("put_recipients")?;
                    for r in &recipients {
                        let ods = chunk_ods(&r.chunk)?;
                        let data = to_json(
                            "recipient",
                            &RecipientDataRef {
                                nhs_number: &r.nhs_number,
                                contact: &r.contact,
                                first_name: &r.first_name,
                                last_name: &r.last_name,
                            },
                        )?;
                        let (status, pending) = status_columns(&r.status)?;
                        let delivery = r
                            .delivery
                            .map(|d| to_json("delivery status", &d))
                            .transpose()?;
                        upsert
                            .execute(params![
                                campaign.as_str(),
                                r.chunk.as_str(),
                                r.index,
                                ods.as_str(),
                                data,
                                status,
                                pending,
                                delivery,
                                r.written_back,
                                expires_at
                            ])
                            .op("put_recipients")?;
                    }
                }
                tx.commit().op("put_recipients: commit")?;
                Ok(())
            })
            .await
    }

    async fn delete_practice_recipients(
        &self,
        campaign: &CampaignId,
        ods: &OdsCode,
    ) -> Result<u64, StoreError> {
        let (campaign, ods) = (campaign.clone(), ods.clone());
        self.db
            .call(move |conn| {
                let deleted = conn
                    .prepare_cached(
                        "DELETE FROM patient_recipients WHERE campaign = ?1 AND ods = ?2",
                    )
                    .and_then(|mut s| s.execute([campaign.as_str(), ods.as_str()]))
                    .op("delete_practice_recipients")?;
                Ok(deleted as u64)
            })
            .await
    }

    async fn load_chunk(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
    ) -> Result<Vec<Recipient>, StoreError> {
        let partition = chunk_partition(campaign.as_str(), chunk.as_str());
        let (campaign, chunk) = (campaign.clone(), chunk.clone());
        let loaded = self
            .db
            .call(move |conn| {
                type Row = (u32, String, String, Option<String>, bool);
                let rows: Vec<Row> = conn
                    .prepare_cached(
                        "SELECT idx, data, status, delivery, written_back FROM patient_recipients
                         WHERE campaign = ?1 AND chunk = ?2 ORDER BY idx",
                    )
                    .and_then(|mut s| {
                        s.query_map([campaign.as_str(), chunk.as_str()], |row| {
                            Ok((
                                row.get(0)?,
                                row.get(1)?,
                                row.get(2)?,
                                row.get(3)?,
                                row.get(4)?,
                            ))
                        })?
                        .collect()
                    })
                    .op("load_chunk")?;
                let recipients = rows
                    .into_iter()
                    .map(|(index, data, status, delivery, written_back)| {
                        let data: RecipientData = from_json("recipient", &data)?;
                        Ok(Recipient {
                            chunk: chunk.clone(),
                            index,
                            nhs_number: data.nhs_number,
                            contact: data.contact,
                            first_name: data.first_name,
                            last_name: data.last_name,
                            status: from_json("recipient status", &status)?,
                            delivery: delivery
                                .map(|d| from_json("delivery status", &d))
                                .transpose()?,
                            written_back,
                        })
                    })
                    .collect::<Result<Vec<_>, DbError>>()?;
                Ok::<_, StoreError>(recipients)
            })
            .await?;
        self.spend([(partition, 0, read_units(loaded.len()))]).await;
        Ok(loaded)
    }

    async fn claim(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        indexes: &[u32],
        now: DateTime<Utc>,
    ) -> Result<Vec<u32>, StoreError> {
        self.spend([(
            chunk_partition(campaign.as_str(), chunk.as_str()),
            indexes.len() as u32,
            0,
        )])
        .await;
        let (campaign, chunk) = (campaign.clone(), chunk.clone());
        let indexes = indexes.to_vec();
        let (claimed_status, _) = status_columns(&RecipientStatus::Claimed { at: now })?;
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                let mut claimed = Vec::with_capacity(indexes.len());
                {
                    // The `pending = 1` condition is the conditional write.
                    let mut claim = tx
                        .prepare_cached(
                            "UPDATE patient_recipients SET status = ?1, pending = 0
                             WHERE campaign = ?2 AND chunk = ?3 AND idx = ?4 AND pending = 1",
                        )
                        .op("claim")?;
                    for index in indexes {
                        let changed = claim
                            .execute(params![
                                claimed_status,
                                campaign.as_str(),
                                chunk.as_str(),
                                index
                            ])
                            .op("claim")?;
                        if changed == 1 {
                            claimed.push(index);
                        }
                    }
                }
                tx.commit().op("claim: commit")?;
                Ok(claimed)
            })
            .await
    }

    async fn release_claim(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        index: u32,
        claimed_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.spend([(chunk_partition(campaign.as_str(), chunk.as_str()), 1, 0)])
            .await;
        let (campaign, chunk) = (campaign.clone(), chunk.clone());
        let (held, _) = status_columns(&RecipientStatus::Claimed { at: claimed_at })?;
        let (pending_status, _) = status_columns(&RecipientStatus::Pending)?;
        self.db
            .call(move |conn| {
                // The `status = <that claim>` condition is the conditional write.
                let changed = conn
                    .prepare_cached(
                        "UPDATE patient_recipients SET status = ?1, pending = 1
                         WHERE campaign = ?2 AND chunk = ?3 AND idx = ?4 AND status = ?5",
                    )
                    .op("release claim")?
                    .execute(params![
                        pending_status,
                        campaign.as_str(),
                        chunk.as_str(),
                        index,
                        held
                    ])
                    .op("release claim")?;
                Ok(changed == 1)
            })
            .await
    }

    async fn set_status(
        &self,
        campaign: &CampaignId,
        updates: &[StatusUpdate],
    ) -> Result<(), StoreError> {
        // A missing row changes nothing, which is what the port asks; nor
        // does a row whose outcome is already final.
        self.write_statuses(campaign, updates, "('pending', 'claimed')")
            .await
    }

    async fn decide_standby(
        &self,
        campaign: &CampaignId,
        updates: &[StatusUpdate],
    ) -> Result<(), StoreError> {
        self.write_statuses(campaign, updates, "('standby')").await
    }

    async fn record_delivery(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        index: u32,
        status: DeliveryStatus,
    ) -> Result<bool, StoreError> {
        // The recipient's status and, in the same transaction, its count on
        // the chunk's receipts partition (the hub table, off the campaign's key).
        self.spend([
            (chunk_partition(campaign.as_str(), chunk.as_str()), 1, 0),
            (receipts_partition(campaign.as_str(), chunk), 1, 0),
        ])
        .await;
        let (campaign, chunk) = (campaign.clone(), chunk.clone());
        let delivery = to_json("delivery status", &status)?;
        // The status and its count in one transaction, the count only if
        // this call set the status: never lost, never twice.
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                let changed = tx
                    .prepare_cached(
                        "UPDATE patient_recipients SET delivery = ?1
                         WHERE campaign = ?2 AND chunk = ?3 AND idx = ?4 AND delivery IS NULL",
                    )
                    .and_then(|mut s| {
                        s.execute(params![delivery, campaign.as_str(), chunk.as_str(), index])
                    })
                    .op("record_delivery")?;
                if changed != 1 {
                    return Ok(false);
                }
                let mut record = load_chunk_record(&tx, &campaign, &chunk)?.ok_or_else(|| {
                    StoreError::NotFound(format!("chunk {chunk} of campaign {campaign}"))
                })?;
                if status.is_delivered() {
                    record.counts.delivered += 1;
                } else {
                    record.counts.failed += 1;
                }
                save_chunk_record(&tx, &record)?;
                tx.commit().op("record_delivery: commit")?;
                Ok(true)
            })
            .await
    }

    async fn mark_written_back(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        indexes: &[u32],
    ) -> Result<(), StoreError> {
        self.spend([(
            chunk_partition(campaign.as_str(), chunk.as_str()),
            indexes.len() as u32,
            0,
        )])
        .await;
        let (campaign, chunk) = (campaign.clone(), chunk.clone());
        let indexes = indexes.to_vec();
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                {
                    let mut mark = tx
                        .prepare_cached(
                            "UPDATE patient_recipients SET written_back = 1
                             WHERE campaign = ?1 AND chunk = ?2 AND idx = ?3",
                        )
                        .op("mark_written_back")?;
                    for index in indexes {
                        mark.execute(params![campaign.as_str(), chunk.as_str(), index])
                            .op("mark_written_back")?;
                    }
                }
                tx.commit().op("mark_written_back: commit")?;
                Ok(())
            })
            .await
    }

    async fn purge_campaign(&self, campaign: &CampaignId) -> Result<u64, StoreError> {
        let campaign = campaign.clone();
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                let mut deleted = 0;
                for sql in [
                    "DELETE FROM patient_recipients WHERE campaign = ?1",
                    "DELETE FROM patient_dedupe_keys WHERE campaign = ?1",
                ] {
                    deleted += tx
                        .prepare_cached(sql)
                        .and_then(|mut s| s.execute([campaign.as_str()]))
                        .op("purge_campaign")?;
                }
                tx.commit().op("purge_campaign: commit")?;
                Ok(deleted as u64)
            })
            .await
    }

    async fn count_campaign(&self, campaign: &CampaignId) -> Result<u64, StoreError> {
        let campaign = campaign.clone();
        self.db
            .call(move |conn| {
                let count: Option<u64> = query_opt(
                    conn,
                    "count_campaign",
                    "SELECT (SELECT count(*) FROM patient_recipients WHERE campaign = ?1)
                          + (SELECT count(*) FROM patient_dedupe_keys WHERE campaign = ?1)",
                    [campaign.as_str()],
                    |row| row.get(0),
                )?;
                Ok(count.unwrap_or(0))
            })
            .await
    }

    async fn count_all(&self) -> Result<u64, StoreError> {
        self.db
            .call(|conn| {
                let count: Option<u64> = query_opt(
                    conn,
                    "count_all",
                    "SELECT (SELECT count(*) FROM patient_recipients)
                          + (SELECT count(*) FROM patient_dedupe_keys)",
                    [],
                    |row| row.get(0),
                )?;
                Ok(count.unwrap_or(0))
            })
            .await
    }
}

// The store contract every adapter keeps runs from `tests/contract.rs`
// (`hub-testkit`); these are what only SQLite does.
#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use hub_core::domain::ParticipationState;
    use hub_testkit::fixtures::{
        campaign, chunk_record, freeze_input, later, nhs, not_found, ods, recipient, seeded,
    };

    /// Inline calls finish in their first poll: the task never yields while
    /// SQLite works, so a paused runtime cannot move its clock meanwhile.
    #[tokio::test]
    async fn inline_calls_complete_without_yielding() {
        use futures::FutureExt;
        let inline = SqliteStore::in_memory().unwrap().with_inline_calls();
        let (c, _) = seeded(&inline, 2).await;
        let got = inline.get_campaign(&c.id).now_or_never();
        assert_eq!(
            got.unwrap().unwrap().map(|found| found.id),
            Some(c.id.clone())
        );
        let participations = inline.list_participations(&c.id).now_or_never();
        assert_eq!(participations.unwrap().unwrap().len(), 2);
    }

    /// Every write to the campaign record moves its version here, counters
    /// included (DynamoDB keeps the counters beside the record and leaves
    /// the version alone: the port does not say).
    #[tokio::test]
    async fn counters_move_the_campaign_version() {
        let store = SqliteStore::in_memory().unwrap();
        let (c, ps) = seeded(&store, 2).await;
        let (frozen_campaign, frozen) = freeze_input(&c, &ps);
        let frozen_campaign = store
            .freeze_participants(&frozen_campaign, &frozen)
            .await
            .unwrap();
        let mut done = store
            .get_participation(&c.id, &frozen[0].ods)
            .await
            .unwrap()
            .unwrap();
        done.state = ParticipationState::Extracted;
        store.commit_extraction(&done, 2).await.unwrap();
        let stored = store.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(
            stored.version,
            frozen_campaign.version + 1,
            "the campaign version moves too"
        );

        let record = chunk_record(&c.id, &ps[0].ods, 1);
        store
            .put_chunks(std::slice::from_ref(&record))
            .await
            .unwrap();
        for stage in [ChunkStage::Send, ChunkStage::Letters] {
            store
                .complete_chunk_stage(&c.id, &record.chunk, stage, &OutcomeCounts::default())
                .await
                .unwrap()
                .unwrap();
        }
        let version_before = store.get_campaign(&c.id).await.unwrap().unwrap().version;
        assert_eq!(version_before, stored.version, "no final chunk yet");
        store
            .complete_chunk_stage(
                &c.id,
                &record.chunk,
                ChunkStage::Writeback,
                &OutcomeCounts::default(),
            )
            .await
            .unwrap()
            .unwrap();
        let stored = store.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(stored.progress.chunks_outstanding, 1);
        assert_eq!(stored.version, version_before + 1);
    }

    /// The audit trail is listed in append order, whatever the events'
    /// timestamps (DynamoDB lists by timestamp: see `aws_wire`).
    #[tokio::test]
    async fn audit_is_listed_in_append_order() {
        let store = SqliteStore::in_memory().unwrap();
        let (c, _) = seeded(&store, 0).await;
        let t0 = Utc::now();
        let event = |campaign: Option<CampaignId>, action: &str, offset: i64| AuditEvent {
            campaign,
            // Out-of-order timestamps: the append order is what counts.
            at: t0 - Duration::seconds(offset),
            actor: "alice".into(),
            action: action.into(),
            detail: serde_json::json!({ "n": offset }),
        };
        let events = [
            event(Some(c.id.clone()), "create", 1),
            event(None, "practice_registered", 2),
            event(Some(CampaignId::new()), "create", 3),
            event(Some(c.id.clone()), "approve", 4),
        ];
        for e in &events {
            store.append_audit(e).await.unwrap();
        }
        assert_eq!(
            store.list_audit(&c.id).await.unwrap(),
            vec![events[0].clone(), events[3].clone()]
        );
    }

    /// A freeze naming a participation that does not exist is `NotFound`
    /// here (DynamoDB says `Conflict`; the contract accepts either).
    #[tokio::test]
    async fn freeze_with_a_missing_participation_is_not_found() {
        let store = SqliteStore::in_memory().unwrap();
        let (c, ps) = seeded(&store, 2).await;
        let (frozen_campaign, frozen) = freeze_input(&c, &ps);
        let missing = Participation::notified(c.id.clone(), ods(99));
        assert!(not_found(
            store
                .freeze_participants(&frozen_campaign, &[frozen[0].clone(), missing])
                .await
        ));
    }

    #[tokio::test]
    async fn the_ttl_sweep_deletes_only_expired_rows() {
        let store = SqliteStore::in_memory().unwrap();
        let c = CampaignId::new();
        let practice = ods(1);
        let now = Utc::now();
        let old = ChunkId::new(&practice, 1);
        let new = ChunkId::new(&practice, 2);
        store
            .put_recipients(&c, &[recipient(&old, 0)], now - Duration::hours(1))
            .await
            .unwrap();
        store
            .put_recipients(&c, &[recipient(&new, 0)], now + Duration::hours(1))
            .await
            .unwrap();
        store
            .place_keys(
                &c,
                &practice,
                &[DedupeKey::Patient(nhs(1))],
                now - Duration::hours(1),
            )
            .await
            .unwrap();
        assert_eq!(store.purge_expired(now).await.unwrap(), 2);
        assert_eq!(store.count_all().await.unwrap(), 1);
        assert_eq!(store.load_chunk(&c, &new).await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_claims_across_connections_to_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let setup = SqliteStore::open(&path).unwrap();
        let c = CampaignId::new();
        let chunk = ChunkId::new(&ods(1), 1);
        let recipients: Vec<_> = (0..50).map(|i| recipient(&chunk, i)).collect();
        setup
            .put_recipients(&c, &recipients, later())
            .await
            .unwrap();
        let indexes: Vec<u32> = (0..50).collect();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                // Each task its own connection: SQLite's locking decides.
                let store = SqliteStore::open(&path).unwrap();
                let (c, chunk, indexes) = (c.clone(), chunk.clone(), indexes.clone());
                tokio::spawn(async move { store.claim(&c, &chunk, &indexes, Utc::now()).await })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap().unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, indexes);
    }

    #[tokio::test]
    async fn a_file_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let c = campaign();
        {
            let store = SqliteStore::open(&path).unwrap();
            store.create_campaign(&c).await.unwrap();
            let chunk = ChunkId::new(&ods(1), 1);
            store
                .put_recipients(&c.id, &[recipient(&chunk, 0)], later())
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get_campaign(&c.id).await.unwrap(), Some(c.clone()));
        assert_eq!(store.count_campaign(&c.id).await.unwrap(), 1);
    }
}
