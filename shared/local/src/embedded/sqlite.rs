//! Both tables of the hub on one SQLite database: `hub_*` tables (kept, no
//! patient data) and `patient_*` tables (short-lived, each row with
//! `expires_at`, the TTL). Records are JSON text plus the key columns the
//! queries need.

use super::db::{from_json, to_json, Db, DbError, SqlContext};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
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
}

impl SqliteStore {
    /// Opens (or creates) the database file, in WAL mode.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            db: Db::open(path, SCHEMA)?,
        })
    }

    /// A private in-memory database (tests, throwaway demos).
    pub fn in_memory() -> anyhow::Result<Self> {
        Ok(Self {
            db: Db::in_memory(SCHEMA)?,
        })
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
        let (campaign, chunk) = (campaign.clone(), chunk.clone());
        self.db
            .call(move |conn| Ok(load_chunk_record(conn, &campaign, &chunk)?))
            .await
    }

    async fn list_chunks(&self, campaign: &CampaignId) -> Result<Vec<ChunkRecord>, StoreError> {
        let campaign = campaign.clone();
        self.db
            .call(move |conn| {
                Ok(query_json(
                    conn,
                    "list_chunks",
                    "chunk",
                    "SELECT data FROM hub_chunks WHERE campaign = ?1 ORDER BY chunk",
                    [campaign.as_str()],
                )?)
            })
            .await
    }

    async fn commit_extraction(
        &self,
        participation: &Participation,
        chunks: u64,
    ) -> Result<Progress, StoreError> {
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

    async fn add_chunk_deliveries(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        delivered: u64,
        failed: u64,
    ) -> Result<(), StoreError> {
        let (campaign, chunk) = (campaign.clone(), chunk.clone());
        self.db
            .call(move |conn| {
                let tx = write_tx(conn)?;
                let mut record = load_chunk_record(&tx, &campaign, &chunk)?.ok_or_else(|| {
                    StoreError::NotFound(format!("chunk {chunk} of campaign {campaign}"))
                })?;
                record.counts.delivered += delivered;
                record.counts.failed += failed;
                save_chunk_record(&tx, &record)?;
                tx.commit().op("add_chunk_deliveries: commit")?;
                Ok(())
            })
            .await
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let campaign = event.campaign.as_ref().map(|c| c.as_str().to_string());
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

    async fn put_recipients(
        &self,
        campaign: &CampaignId,
        recipients: &[Recipient],
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
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
        let (campaign, chunk) = (campaign.clone(), chunk.clone());
        self.db
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
                Ok(recipients)
            })
            .await
    }

    async fn claim(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        indexes: &[u32],
        now: DateTime<Utc>,
    ) -> Result<Vec<u32>, StoreError> {
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

    async fn set_status(
        &self,
        campaign: &CampaignId,
        updates: &[StatusUpdate],
    ) -> Result<(), StoreError> {
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
                    // A missing row changes nothing, which is what the port asks.
                    let mut update = tx
                        .prepare_cached(
                            "UPDATE patient_recipients SET status = ?1, pending = ?2
                             WHERE campaign = ?3 AND chunk = ?4 AND idx = ?5",
                        )
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

    async fn record_delivery(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        index: u32,
        status: DeliveryStatus,
    ) -> Result<bool, StoreError> {
        let (campaign, chunk) = (campaign.clone(), chunk.clone());
        let delivery = to_json("delivery status", &status)?;
        self.db
            .call(move |conn| {
                let changed = conn
                    .prepare_cached(
                        "UPDATE patient_recipients SET delivery = ?1
                         WHERE campaign = ?2 AND chunk = ?3 AND idx = ?4 AND delivery IS NULL",
                    )
                    .and_then(|mut s| {
                        s.execute(params![delivery, campaign.as_str(), chunk.as_str(), index])
                    })
                    .op("record_delivery")?;
                Ok(changed == 1)
            })
            .await
    }

    async fn mark_written_back(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        indexes: &[u32],
    ) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::domain::{
        check_digit, CampaignOptions, CampaignState, ExclusionReason, MessageTemplate,
        ParticipationState, PostalAddress, Postcode, StaffId, Target, TemplateRules, UkMobile,
    };
    use chrono::Duration;
    use std::sync::Arc;

    fn ods(code: &str) -> OdsCode {
        OdsCode::parse(code).unwrap()
    }

    fn campaign() -> Campaign {
        let now = Utc::now();
        Campaign {
            id: CampaignId::new(),
            name: "Heatwave".into(),
            template: MessageTemplate::parse("Stay cool", &TemplateRules::default()).unwrap(),
            target: Target::default(),
            options: CampaignOptions::default(),
            optout_deadline: now + Duration::hours(2),
            justification: "Red heat health alert".into(),
            created_by: StaffId("alice".into()),
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
            version: 0,
        }
    }

    fn chunk_record(campaign: &CampaignId, practice: &OdsCode, sequence: u32) -> ChunkRecord {
        ChunkRecord {
            campaign: campaign.clone(),
            chunk: ChunkId::new(practice, sequence),
            ods: practice.clone(),
            sms_recipients: 2,
            letter_recipients: 1,
            send_done: false,
            letters_done: false,
            writeback_done: false,
            counted_final: false,
            counts: OutcomeCounts::default(),
        }
    }

    /// A valid NHS number derived from `n` (skipping the invalid check value).
    fn nhs(n: u32) -> NhsNumber {
        (0..)
            .find_map(|step| {
                let first_nine = format!("{:09}", 400_000_000 + n * 13 + step);
                let digits: Vec<u32> = first_nine.chars().filter_map(|c| c.to_digit(10)).collect();
                let check = check_digit(&digits)?;
                Some(NhsNumber::parse(&format!("{first_nine}{check}")).unwrap())
            })
            .unwrap()
    }

    fn recipient(chunk: &ChunkId, index: u32) -> Recipient {
        let contact = if index % 3 == 2 {
            Contact::Letter {
                address: PostalAddress {
                    name: Personal::new("Ada Lovelace".into()),
                    lines: Personal::new(vec!["1 High Street".into(), "London".into()]),
                    postcode: Postcode::parse("SE1 7EH").unwrap(),
                },
            }
        } else {
            Contact::Sms {
                mobile: UkMobile::parse(&format!("07700 900{index:03}")).unwrap(),
            }
        };
        Recipient {
            chunk: chunk.clone(),
            index,
            nhs_number: nhs(index),
            contact,
            first_name: Personal::new("Ada".into()),
            last_name: Personal::new("Lovelace".into()),
            status: RecipientStatus::Pending,
            delivery: None,
            written_back: false,
        }
    }

    fn expiry() -> DateTime<Utc> {
        Utc::now() + Duration::days(30)
    }

    /// A store with one campaign (2 practices pending) and its participations.
    async fn seeded() -> (SqliteStore, Campaign, Vec<Participation>) {
        let store = SqliteStore::in_memory().unwrap();
        let mut c = campaign();
        c.progress.practices_pending = 2;
        store.create_campaign(&c).await.unwrap();
        let ps = vec![
            Participation::notified(c.id.clone(), ods("G85001")),
            Participation::notified(c.id.clone(), ods("G85002")),
        ];
        store.create_participations(&ps).await.unwrap();
        (store, c, ps)
    }

    fn conflict<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
        matches!(result, Err(StoreError::Conflict(_)))
    }

    fn not_found<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
        matches!(result, Err(StoreError::NotFound(_)))
    }

    #[tokio::test]
    async fn create_campaign_refuses_an_existing_id() {
        let (store, c, _) = seeded().await;
        let mut again = c.clone();
        again.name = "Other".into();
        assert!(conflict(store.create_campaign(&again).await));
        let stored = store.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(stored, c);
        assert_eq!(store.list_campaigns().await.unwrap(), vec![c]);
        assert_eq!(store.get_campaign(&CampaignId::new()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn update_campaign_is_compare_and_set() {
        let (store, c, _) = seeded().await;
        let mut edit = c.clone();
        edit.name = "Heatwave (amber)".into();
        let stored = store.update_campaign(&edit).await.unwrap();
        assert_eq!(stored.version, 1);
        assert_eq!(stored.name, "Heatwave (amber)");
        assert_eq!(store.get_campaign(&c.id).await.unwrap().unwrap(), stored);

        // The old version lost: conflict, nothing written.
        let mut stale = c.clone();
        stale.name = "stale".into();
        assert!(conflict(store.update_campaign(&stale).await));
        assert_eq!(store.get_campaign(&c.id).await.unwrap().unwrap(), stored);

        assert!(not_found(store.update_campaign(&campaign()).await));
    }

    #[tokio::test]
    async fn update_participation_is_compare_and_set() {
        let (store, c, ps) = seeded().await;
        let mut opted = ps[0].clone();
        opted.state = ParticipationState::OptedOut;
        let stored = store.update_participation(&opted).await.unwrap();
        assert_eq!(stored.version, 1);
        assert_eq!(
            store.get_participation(&c.id, &ps[0].ods).await.unwrap(),
            Some(stored.clone())
        );
        assert!(conflict(store.update_participation(&ps[0]).await));
        assert_eq!(
            store.get_participation(&c.id, &ps[0].ods).await.unwrap(),
            Some(stored)
        );
        let missing = Participation::notified(c.id.clone(), ods("Y99999"));
        assert!(not_found(store.update_participation(&missing).await));
    }

    #[tokio::test]
    async fn create_participations_leaves_existing_ones_alone() {
        let (store, c, ps) = seeded().await;
        let mut changed = ps[0].clone();
        changed.state = ParticipationState::OptedOut;
        let third = Participation::notified(c.id.clone(), ods("G85003"));
        store
            .create_participations(&[changed, third.clone()])
            .await
            .unwrap();
        let listed = store.list_participations(&c.id).await.unwrap();
        assert_eq!(listed, vec![ps[0].clone(), ps[1].clone(), third]);
        assert!(store
            .list_participations(&CampaignId::new())
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn freeze_writes_campaign_and_participations_together() {
        let (store, c, ps) = seeded().await;
        let mut frozen = c.clone();
        frozen.begin_extraction(2, Utc::now()).unwrap();
        let updates: Vec<_> = ps
            .iter()
            .map(|p| Participation {
                state: ParticipationState::Participating,
                ..p.clone()
            })
            .collect();
        let stored = store.freeze_participants(&frozen, &updates).await.unwrap();
        assert_eq!(stored.version, 1);
        assert_eq!(stored.state, CampaignState::Extracting);
        for p in store.list_participations(&c.id).await.unwrap() {
            assert_eq!(p.state, ParticipationState::Participating);
            assert_eq!(p.version, 1);
        }
        // Replaying the same freeze loses on the campaign's version.
        assert!(conflict(store.freeze_participants(&frozen, &updates).await));
    }

    #[tokio::test]
    async fn freeze_rolls_back_everything_on_a_participation_conflict() {
        let (store, c, ps) = seeded().await;
        // Someone records an opt-out for the second practice first.
        let mut opted = ps[1].clone();
        opted.state = ParticipationState::OptedOut;
        let opted = store.update_participation(&opted).await.unwrap();

        let mut frozen = c.clone();
        frozen.begin_extraction(2, Utc::now()).unwrap();
        let updates: Vec<_> = ps
            .iter()
            .map(|p| Participation {
                state: ParticipationState::Participating,
                ..p.clone()
            })
            .collect();
        assert!(conflict(store.freeze_participants(&frozen, &updates).await));

        // Neither the campaign nor the first participation moved.
        assert_eq!(store.get_campaign(&c.id).await.unwrap().unwrap(), c);
        let listed = store.list_participations(&c.id).await.unwrap();
        assert_eq!(listed, vec![ps[0].clone(), opted]);

        // A missing participation rolls back the same way.
        let missing = Participation::notified(c.id.clone(), ods("Y99999"));
        assert!(not_found(
            store
                .freeze_participants(&frozen, &[updates[0].clone(), missing])
                .await
        ));
        assert_eq!(store.get_campaign(&c.id).await.unwrap().unwrap(), c);
        assert_eq!(
            store.get_participation(&c.id, &ps[0].ods).await.unwrap(),
            Some(ps[0].clone())
        );
    }

    #[tokio::test]
    async fn put_chunks_keeps_an_existing_chunk() {
        let (store, c, ps) = seeded().await;
        let first = chunk_record(&c.id, &ps[0].ods, 1);
        store
            .put_chunks(std::slice::from_ref(&first))
            .await
            .unwrap();
        let mut replay = first.clone();
        replay.send_done = true;
        let second = chunk_record(&c.id, &ps[0].ods, 2);
        store.put_chunks(&[replay, second.clone()]).await.unwrap();
        assert_eq!(
            store.list_chunks(&c.id).await.unwrap(),
            vec![first.clone(), second]
        );
        assert_eq!(
            store.get_chunk(&c.id, &first.chunk).await.unwrap(),
            Some(first)
        );
    }

    #[tokio::test]
    async fn commit_extraction_moves_the_counters_once() {
        let (store, c, ps) = seeded().await;
        let mut done = ps[0].clone();
        done.state = ParticipationState::Extracted;
        done.chunks = 3;
        let progress = store.commit_extraction(&done, 3).await.unwrap();
        assert_eq!(
            progress,
            Progress {
                practices_pending: 1,
                chunks_outstanding: 3
            }
        );
        let stored = store.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(stored.progress, progress);
        assert_eq!(
            stored.version,
            c.version + 1,
            "the campaign version moves too"
        );
        let p = store
            .get_participation(&c.id, &done.ods)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((p.state, p.version), (ParticipationState::Extracted, 1));

        // A redelivered commit loses on the participation and changes nothing.
        assert!(conflict(store.commit_extraction(&done, 3).await));
        assert_eq!(store.get_campaign(&c.id).await.unwrap().unwrap(), stored);

        let mut second = ps[1].clone();
        second.state = ParticipationState::Extracted;
        let progress = store.commit_extraction(&second, 2).await.unwrap();
        assert_eq!(progress.practices_pending, 0);
        assert_eq!(progress.chunks_outstanding, 5);
        // practices_pending saturates at zero.
        let mut again = store
            .get_participation(&c.id, &second.ods)
            .await
            .unwrap()
            .unwrap();
        again.last_error = Some("retry".into());
        let progress = store.commit_extraction(&again, 0).await.unwrap();
        assert_eq!(progress.practices_pending, 0);
        assert_eq!(progress.chunks_outstanding, 5);
    }

    #[tokio::test]
    async fn complete_chunk_stage_counts_each_stage_once() {
        let (store, c, ps) = seeded().await;
        let mut done = ps[0].clone();
        done.state = ParticipationState::Extracted;
        store.commit_extraction(&done, 2).await.unwrap();
        let record = chunk_record(&c.id, &ps[0].ods, 1);
        store
            .put_chunks(std::slice::from_ref(&record))
            .await
            .unwrap();

        let mut sent = OutcomeCounts {
            cohort: 3,
            sent: 2,
            ..Default::default()
        };
        sent.exclude(ExclusionReason::NoMobile);
        let (chunk, progress) = store
            .complete_chunk_stage(&c.id, &record.chunk, ChunkStage::Send, &sent)
            .await
            .unwrap()
            .unwrap();
        assert!(chunk.send_done && !chunk.is_final());
        assert_eq!(chunk.counts, sent);
        assert_eq!(progress.chunks_outstanding, 2);

        // The same stage again: nothing added.
        assert!(store
            .complete_chunk_stage(&c.id, &record.chunk, ChunkStage::Send, &sent)
            .await
            .unwrap()
            .is_none());
        let letters = OutcomeCounts {
            letters: 1,
            ..Default::default()
        };
        let (_, progress) = store
            .complete_chunk_stage(&c.id, &record.chunk, ChunkStage::Letters, &letters)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(progress.chunks_outstanding, 2);
        let version_before = store.get_campaign(&c.id).await.unwrap().unwrap().version;

        // The third stage makes the chunk final: outstanding goes down once.
        let written = OutcomeCounts {
            written_back: 2,
            ..Default::default()
        };
        let (chunk, progress) = store
            .complete_chunk_stage(&c.id, &record.chunk, ChunkStage::Writeback, &written)
            .await
            .unwrap()
            .unwrap();
        assert!(chunk.is_final() && chunk.counted_final);
        assert_eq!(progress.chunks_outstanding, 1);
        let stored = store.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(stored.progress.chunks_outstanding, 1);
        assert_eq!(stored.version, version_before + 1);
        assert!(store
            .complete_chunk_stage(&c.id, &record.chunk, ChunkStage::Writeback, &written)
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            store.get_campaign(&c.id).await.unwrap().unwrap().progress,
            progress
        );

        let mut expected = sent.clone();
        expected.add(&letters);
        expected.add(&written);
        assert_eq!(
            store
                .get_chunk(&c.id, &record.chunk)
                .await
                .unwrap()
                .unwrap()
                .counts,
            expected
        );
        assert!(not_found(
            store
                .complete_chunk_stage(
                    &c.id,
                    &ChunkId::new(&ps[0].ods, 99),
                    ChunkStage::Send,
                    &sent
                )
                .await
        ));
    }

    #[tokio::test]
    async fn chunk_deliveries_add_up() {
        let (store, c, ps) = seeded().await;
        let record = chunk_record(&c.id, &ps[0].ods, 1);
        store
            .put_chunks(std::slice::from_ref(&record))
            .await
            .unwrap();
        store
            .add_chunk_deliveries(&c.id, &record.chunk, 2, 1)
            .await
            .unwrap();
        store
            .add_chunk_deliveries(&c.id, &record.chunk, 1, 0)
            .await
            .unwrap();
        let counts = store
            .get_chunk(&c.id, &record.chunk)
            .await
            .unwrap()
            .unwrap()
            .counts;
        assert_eq!((counts.delivered, counts.failed), (3, 1));
        assert!(not_found(
            store
                .add_chunk_deliveries(&c.id, &ChunkId::new(&ps[0].ods, 9), 1, 0)
                .await
        ));
    }

    #[tokio::test]
    async fn audit_is_listed_oldest_first_per_campaign() {
        let (store, c, _) = seeded().await;
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

    #[tokio::test]
    async fn practices_are_upserted() {
        let store = SqliteStore::in_memory().unwrap();
        let mut practice = Practice {
            ods: ods("G85002"),
            name: "Borough Surgery".into(),
            notice_email: "borough@nhs.invalid".into(),
            dsa_signed: None,
            connection: hub_core::ports::GpConnection::Simulated,
            list_size: 9_000,
        };
        store.put_practice(&practice).await.unwrap();
        practice.dsa_signed = chrono::NaiveDate::from_ymd_opt(2025, 1, 2);
        store.put_practice(&practice).await.unwrap();
        let other = Practice {
            ods: ods("G85001"),
            ..practice.clone()
        };
        store.put_practice(&other).await.unwrap();
        assert_eq!(
            store.get_practice(&practice.ods).await.unwrap(),
            Some(practice.clone())
        );
        assert_eq!(store.list_practices().await.unwrap(), vec![other, practice]);
        assert_eq!(store.get_practice(&ods("Y00000")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn dedupe_keys_are_held_by_one_practice() {
        let store = SqliteStore::in_memory().unwrap();
        let c = CampaignId::new();
        let (a, b) = (ods("G85001"), ods("G85002"));
        let patient = DedupeKey::Patient(nhs(1));
        let mobile = DedupeKey::Mobile(UkMobile::parse("07700900001").unwrap());
        let other = DedupeKey::Patient(nhs(2));
        let placed = store
            .place_keys(&c, &a, &[patient.clone(), mobile.clone()], expiry())
            .await
            .unwrap();
        assert_eq!(placed, vec![Placement::Placed, Placement::Placed]);
        // The same practice again (a retried extraction): still its own.
        let again = store
            .place_keys(&c, &a, std::slice::from_ref(&patient), expiry())
            .await
            .unwrap();
        assert_eq!(again, vec![Placement::Placed]);
        // Another practice: held elsewhere, except for a key nobody holds.
        let elsewhere = store
            .place_keys(&c, &b, &[patient.clone(), other, mobile.clone()], expiry())
            .await
            .unwrap();
        assert_eq!(
            elsewhere,
            vec![
                Placement::HeldElsewhere,
                Placement::Placed,
                Placement::HeldElsewhere
            ]
        );
        // Keys are per campaign.
        let next = store
            .place_keys(&CampaignId::new(), &b, &[patient], expiry())
            .await
            .unwrap();
        assert_eq!(next, vec![Placement::Placed]);
        assert_eq!(store.count_campaign(&c).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn recipients_round_trip_in_index_order_and_are_overwritten() {
        let store = SqliteStore::in_memory().unwrap();
        let c = CampaignId::new();
        let chunk = ChunkId::new(&ods("G85001"), 1);
        let recipients: Vec<_> = [4, 0, 2, 1, 3].map(|i| recipient(&chunk, i)).into();
        store
            .put_recipients(&c, &recipients, expiry())
            .await
            .unwrap();
        let loaded = store.load_chunk(&c, &chunk).await.unwrap();
        let mut expected = recipients.clone();
        expected.sort_by_key(|r| r.index);
        assert_eq!(loaded, expected);

        // A retried extraction overwrites the earlier attempt's rows.
        let mut retry = recipient(&chunk, 0);
        retry.first_name = Personal::new("Grace".into());
        retry.status = RecipientStatus::Rejected;
        retry.delivery = Some(DeliveryStatus::PermanentFailure);
        retry.written_back = true;
        store
            .put_recipients(&c, &[retry.clone()], expiry())
            .await
            .unwrap();
        let loaded = store.load_chunk(&c, &chunk).await.unwrap();
        assert_eq!(loaded.len(), 5);
        assert_eq!(loaded[0], retry);
        assert!(store
            .load_chunk(&c, &ChunkId::new(&ods("G85001"), 2))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn claim_takes_only_pending_recipients() {
        let store = SqliteStore::in_memory().unwrap();
        let c = CampaignId::new();
        let chunk = ChunkId::new(&ods("G85001"), 1);
        let recipients: Vec<_> = (0..4).map(|i| recipient(&chunk, i)).collect();
        store
            .put_recipients(&c, &recipients, expiry())
            .await
            .unwrap();
        let now = Utc::now();
        assert_eq!(
            store.claim(&c, &chunk, &[0, 1], now).await.unwrap(),
            vec![0, 1]
        );
        let sent = RecipientStatus::Sent {
            provider: "notify".into(),
            provider_id: "abc".into(),
            at: now,
        };
        store
            .set_status(
                &c,
                &[
                    StatusUpdate {
                        chunk: chunk.clone(),
                        index: 1,
                        status: sent.clone(),
                    },
                    StatusUpdate {
                        chunk: chunk.clone(),
                        index: 2,
                        status: RecipientStatus::Rejected,
                    },
                    // Deleted or never written: ignored.
                    StatusUpdate {
                        chunk: chunk.clone(),
                        index: 77,
                        status: RecipientStatus::Rejected,
                    },
                ],
            )
            .await
            .unwrap();
        // Claimed, sent and rejected are not claimable; index 3 is, 9 does not exist.
        assert_eq!(
            store
                .claim(&c, &chunk, &[0, 1, 2, 3, 9], now)
                .await
                .unwrap(),
            vec![3]
        );
        let loaded = store.load_chunk(&c, &chunk).await.unwrap();
        assert_eq!(loaded[0].status, RecipientStatus::Claimed { at: now });
        assert_eq!(loaded[1].status, sent);
        assert_eq!(loaded[2].status, RecipientStatus::Rejected);
        assert_eq!(loaded.len(), 4);

        // A released claim is claimable again.
        store
            .set_status(
                &c,
                &[StatusUpdate {
                    chunk: chunk.clone(),
                    index: 0,
                    status: RecipientStatus::Pending,
                }],
            )
            .await
            .unwrap();
        assert_eq!(store.claim(&c, &chunk, &[0], now).await.unwrap(), vec![0]);
    }

    #[tokio::test]
    async fn delivery_is_recorded_once_and_write_back_marked() {
        let store = SqliteStore::in_memory().unwrap();
        let c = CampaignId::new();
        let chunk = ChunkId::new(&ods("G85001"), 1);
        let recipients: Vec<_> = (0..3).map(|i| recipient(&chunk, i)).collect();
        store
            .put_recipients(&c, &recipients, expiry())
            .await
            .unwrap();
        assert!(store
            .record_delivery(&c, &chunk, 1, DeliveryStatus::TemporaryFailure)
            .await
            .unwrap());
        assert!(!store
            .record_delivery(&c, &chunk, 1, DeliveryStatus::Delivered)
            .await
            .unwrap());
        assert!(!store
            .record_delivery(&c, &chunk, 42, DeliveryStatus::Delivered)
            .await
            .unwrap());
        store
            .mark_written_back(&c, &chunk, &[0, 1, 42])
            .await
            .unwrap();
        let loaded = store.load_chunk(&c, &chunk).await.unwrap();
        assert_eq!(loaded[1].delivery, Some(DeliveryStatus::TemporaryFailure));
        assert_eq!(loaded[0].delivery, None);
        assert_eq!(
            loaded.iter().map(|r| r.written_back).collect::<Vec<_>>(),
            vec![true, true, false]
        );
    }

    #[tokio::test]
    async fn a_practice_retry_deletes_only_its_recipients() {
        let store = SqliteStore::in_memory().unwrap();
        let c = CampaignId::new();
        let (a, b) = (ods("G85001"), ods("G85002"));
        for (practice, seq) in [(&a, 1), (&a, 2), (&b, 1)] {
            let chunk = ChunkId::new(practice, seq);
            let rs: Vec<_> = (0..3).map(|i| recipient(&chunk, i)).collect();
            store.put_recipients(&c, &rs, expiry()).await.unwrap();
        }
        store
            .place_keys(&c, &a, &[DedupeKey::Patient(nhs(5))], expiry())
            .await
            .unwrap();
        assert_eq!(store.delete_practice_recipients(&c, &a).await.unwrap(), 6);
        assert_eq!(store.delete_practice_recipients(&c, &a).await.unwrap(), 0);
        // B's recipients and A's dedupe key stay.
        assert_eq!(store.count_campaign(&c).await.unwrap(), 4);
        assert_eq!(
            store
                .load_chunk(&c, &ChunkId::new(&b, 1))
                .await
                .unwrap()
                .len(),
            3
        );
    }

    #[tokio::test]
    async fn purge_deletes_recipients_and_keys_and_counts_them() {
        let store = SqliteStore::in_memory().unwrap();
        let (c, other) = (CampaignId::new(), CampaignId::new());
        let practice = ods("G85001");
        let chunk = ChunkId::new(&practice, 1);
        for campaign in [&c, &other] {
            let rs: Vec<_> = (0..5).map(|i| recipient(&chunk, i)).collect();
            store.put_recipients(campaign, &rs, expiry()).await.unwrap();
            let keys: Vec<_> = (0..5).map(|i| DedupeKey::Patient(nhs(i))).collect();
            store
                .place_keys(campaign, &practice, &keys, expiry())
                .await
                .unwrap();
        }
        assert_eq!(store.count_all().await.unwrap(), 20);
        assert_eq!(store.count_campaign(&c).await.unwrap(), 10);
        assert_eq!(store.purge_campaign(&c).await.unwrap(), 10);
        assert_eq!(store.count_campaign(&c).await.unwrap(), 0);
        assert_eq!(store.purge_campaign(&c).await.unwrap(), 0);
        assert_eq!(store.count_all().await.unwrap(), 10);
        assert_eq!(store.purge_campaign(&other).await.unwrap(), 10);
        assert_eq!(store.count_all().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn the_ttl_sweep_deletes_only_expired_rows() {
        let store = SqliteStore::in_memory().unwrap();
        let c = CampaignId::new();
        let practice = ods("G85001");
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
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_claims_take_each_recipient_exactly_once() {
        let store = SqliteStore::in_memory().unwrap();
        let c = CampaignId::new();
        let chunk = ChunkId::new(&ods("G85001"), 1);
        let recipients: Vec<_> = (0..200).map(|i| recipient(&chunk, i)).collect();
        store
            .put_recipients(&c, &recipients, expiry())
            .await
            .unwrap();
        let indexes: Arc<Vec<u32>> = Arc::new((0..200).collect());
        let tasks: Vec<_> = (0..8)
            .map(|worker| {
                let (store, c, chunk, indexes) = (
                    store.clone(),
                    c.clone(),
                    chunk.clone(),
                    Arc::clone(&indexes),
                );
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    // Small overlapping batches, in different orders per worker.
                    for batch in indexes.chunks(10 + worker) {
                        let mut batch = batch.to_vec();
                        if worker % 2 == 1 {
                            batch.reverse();
                        }
                        mine.extend(store.claim(&c, &chunk, &batch, Utc::now()).await.unwrap());
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_claims_across_connections_to_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let setup = SqliteStore::open(&path).unwrap();
        let c = CampaignId::new();
        let chunk = ChunkId::new(&ods("G85001"), 1);
        let recipients: Vec<_> = (0..50).map(|i| recipient(&chunk, i)).collect();
        setup
            .put_recipients(&c, &recipients, expiry())
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
            let chunk = ChunkId::new(&ods("G85001"), 1);
            store
                .put_recipients(&c.id, &[recipient(&chunk, 0)], expiry())
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get_campaign(&c.id).await.unwrap(), Some(c.clone()));
        assert_eq!(store.count_campaign(&c.id).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn errors_never_quote_stored_patient_data() {
        let store = SqliteStore::in_memory().unwrap();
        let c = CampaignId::new();
        let chunk = ChunkId::new(&ods("G85001"), 1);
        store
            .put_recipients(&c, &[recipient(&chunk, 0)], expiry())
            .await
            .unwrap();
        // Corrupt the stored record with a number that fails its check digit.
        let corrupt = r#"{"nhs_number":"9434765918","contact":{"channel":"sms","mobile":"+447700900000"},"first_name":"Ada","last_name":"Lovelace"}"#;
        store
            .db
            .call(move |conn| {
                conn.execute("UPDATE patient_recipients SET data = ?1", [corrupt])
                    .op("corrupt")
            })
            .await
            .map_err(StoreError::from)
            .unwrap();
        let error = store.load_chunk(&c, &chunk).await.unwrap_err();
        let text = format!("{error:#} {error:?}");
        assert!(!text.contains("9434765918"), "{text}");
        assert!(!text.contains("Ada"), "{text}");
    }
}
