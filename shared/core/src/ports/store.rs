//! The two tables: `hub` (kept, no patient data) and `patient-data`
//! (short-lived, TTL as the safety net).

use crate::domain::pacing::PaceBucket;
use crate::domain::{
    AuditEvent, Campaign, CampaignId, ChunkId, ChunkRecord, ChunkStage, DedupeKey, DeliveryStatus,
    OdsCode, OutcomeCounts, Participation, Progress, Recipient, RecipientStatus,
};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost: someone else changed the item first.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// Throttling or a transient fault: retry the whole message.
    #[error("store unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// A bug or a misconfiguration; the chain says what went wrong.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl StoreError {
    /// Transient, with nothing underneath.
    pub fn unavailable(what: impl Into<String>) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: None,
        }
    }

    /// Transient, caused by `source`.
    pub fn unavailable_because(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether trying the same work again can succeed: a lost conditional
    /// write is re-read and retried, an outage may pass; a missing record
    /// stays missing. An unexpected error is retried too, so nothing is
    /// dropped on a first surprise; its dead-letter queue catches a repeat.
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::NotFound(_))
    }
}

/// How a practice's GP system is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GpConnection {
    /// The embedded GP estate simulator.
    Simulated,
    /// A FHIR R4 server; `secret` names the Secrets Manager entry with its credentials.
    Fhir {
        base_url: String,
        #[serde(default)]
        bulk_export: bool,
        #[serde(default)]
        secret: Option<String>,
        /// How the paged search names the practice (ignored by `$export`).
        #[serde(default)]
        patient_search: PatientSearch,
        /// The base the server writes in the links it returns (next pages,
        /// export status and files) when it differs from `base_url`, as
        /// behind a reverse proxy: such links are read against `base_url`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link_base: Option<String>,
    },
    /// A practice (or its supplier) that sends CSV extracts over NHS MESH:
    /// the hub asks its `mailbox` for the extract at the deadline.
    Mesh {
        mailbox: String,
        /// How long to wait for the extract; the hub's default if absent.
        #[serde(default)]
        wait_seconds: Option<u64>,
    },
}

/// How a practice's Patients carry their registered practice, so how the
/// search must ask for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PatientSearch {
    /// `generalPractitioner` as an ODS identifier (UK Core, PDS):
    /// `general-practitioner:identifier=https://fhir.nhs.uk/Id/ods-organization-code|ODS`.
    #[default]
    Identifier,
    /// `generalPractitioner` as a reference to `Organization/ODS`:
    /// `general-practitioner=Organization/ODS`.
    Reference,
}

/// A GP practice in the region's registry. No patient data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Practice {
    pub ods: OdsCode,
    pub name: String,
    pub notice_email: String,
    /// Data sharing agreement signed: only these practices take part.
    pub dsa_signed: Option<NaiveDate>,
    pub connection: GpConnection,
    pub list_size: u64,
}

/// The hub table.
#[async_trait]
pub trait HubStore: Send + Sync {
    async fn put_practice(&self, practice: &Practice) -> Result<(), StoreError>;
    async fn get_practice(&self, ods: &OdsCode) -> Result<Option<Practice>, StoreError>;
    async fn list_practices(&self) -> Result<Vec<Practice>, StoreError>;

    /// Fails with `Conflict` if the id exists.
    async fn create_campaign(&self, campaign: &Campaign) -> Result<(), StoreError>;
    async fn get_campaign(&self, id: &CampaignId) -> Result<Option<Campaign>, StoreError>;
    async fn list_campaigns(&self) -> Result<Vec<Campaign>, StoreError>;
    /// Writes `campaign` with `version + 1` if the stored version is still
    /// `campaign.version`; `Conflict` otherwise. Returns the stored record.
    async fn update_campaign(&self, campaign: &Campaign) -> Result<Campaign, StoreError>;

    /// Creates participations that do not exist yet (idempotent).
    async fn create_participations(&self, items: &[Participation]) -> Result<(), StoreError>;
    async fn get_participation(
        &self,
        campaign: &CampaignId,
        ods: &OdsCode,
    ) -> Result<Option<Participation>, StoreError>;
    async fn list_participations(
        &self,
        campaign: &CampaignId,
    ) -> Result<Vec<Participation>, StoreError>;
    /// Compare-and-set on `version`, like `update_campaign`.
    async fn update_participation(
        &self,
        participation: &Participation,
    ) -> Result<Participation, StoreError>;

    /// Freezes the deadline atomically: the campaign update (CAS) and every
    /// participation update (CAS) succeed together or not at all.
    async fn freeze_participants(
        &self,
        campaign: &Campaign,
        participations: &[Participation],
    ) -> Result<Campaign, StoreError>;

    /// Stores chunk records (idempotent: an existing chunk is left alone).
    async fn put_chunks(&self, chunks: &[ChunkRecord]) -> Result<(), StoreError>;
    async fn get_chunk(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
    ) -> Result<Option<ChunkRecord>, StoreError>;
    async fn list_chunks(&self, campaign: &CampaignId) -> Result<Vec<ChunkRecord>, StoreError>;

    /// Ends an extraction in one atomic step: the participation is written
    /// (CAS on its version) and the campaign's `practices_pending` goes down
    /// by one and `chunks_outstanding` up by `chunks`. Returns the progress.
    async fn commit_extraction(
        &self,
        participation: &Participation,
        chunks: u64,
    ) -> Result<Progress, StoreError>;

    /// Marks one stage of a chunk done and adds `counts` to it, once: a
    /// repeated call returns `Ok(None)` and adds nothing. When the chunk
    /// becomes final the campaign's `chunks_outstanding` goes down by one in
    /// the same atomic step. Returns the chunk and the campaign progress.
    async fn complete_chunk_stage(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        stage: ChunkStage,
        counts: &OutcomeCounts,
    ) -> Result<Option<(ChunkRecord, Progress)>, StoreError>;

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// Oldest first.
    async fn list_audit(&self, campaign: &CampaignId) -> Result<Vec<AuditEvent>, StoreError>;
    /// Events of no campaign (registry changes, refusals outside a
    /// campaign), oldest first.
    async fn list_hub_audit(&self) -> Result<Vec<AuditEvent>, StoreError>;

    /// The send bucket every send worker shares for one provider key
    /// (`domain::pacing`); a default bucket (version 0) if never written.
    async fn get_pace_bucket(&self, key: &str) -> Result<PaceBucket, StoreError>;
    /// Writes `bucket` if the stored version is still `bucket.version - 1`
    /// (an absent bucket counts as version 0); `Conflict` otherwise.
    async fn put_pace_bucket(&self, key: &str, bucket: &PaceBucket) -> Result<(), StoreError>;
}

/// Result of trying to place dedupe keys for a practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The key is now held by this practice (new, or held from an earlier
    /// attempt of the same practice's extraction).
    Placed,
    /// Another practice already holds it.
    HeldElsewhere,
}

/// A recipient's status change, written in batches.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    pub chunk: ChunkId,
    pub index: u32,
    pub status: RecipientStatus,
}

/// The patient-data table. Every item carries `expires_at` (TTL).
#[async_trait]
pub trait PatientDataStore: Send + Sync {
    /// Places each key for `ods` if no other practice holds it; one result
    /// per key, in order. Keys live in the patient-data table.
    async fn place_keys(
        &self,
        campaign: &CampaignId,
        ods: &OdsCode,
        keys: &[crate::domain::DedupeKey],
        expires_at: DateTime<Utc>,
    ) -> Result<Vec<Placement>, StoreError>;

    /// Which practice holds each key (`None`: nobody), in order. A read:
    /// it places nothing.
    async fn key_holders(
        &self,
        campaign: &CampaignId,
        keys: &[crate::domain::DedupeKey],
    ) -> Result<Vec<Option<OdsCode>>, StoreError>;

    /// Moves a key from practice `from` to practice `to`, only if `from`
    /// still holds it (conditional write): of two practices taking over the
    /// same key only one succeeds. Returns whether `to` holds the key
    /// afterwards (so a repeated call by the winner answers `true` again);
    /// `false` when nobody or a third practice holds it.
    async fn take_over_key(
        &self,
        campaign: &CampaignId,
        key: &crate::domain::DedupeKey,
        from: &OdsCode,
        to: &OdsCode,
    ) -> Result<bool, StoreError>;

    /// Writes a chunk's recipients (overwriting any from an earlier attempt).
    async fn put_recipients(
        &self,
        campaign: &CampaignId,
        recipients: &[Recipient],
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Deletes what an earlier, unfinished extraction attempt of `ods` wrote
    /// (recipients, not dedupe keys). Returns the number of items deleted.
    async fn delete_practice_recipients(
        &self,
        campaign: &CampaignId,
        ods: &OdsCode,
    ) -> Result<u64, StoreError>;

    /// A chunk's recipients in index order.
    async fn load_chunk(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
    ) -> Result<Vec<Recipient>, StoreError>;

    /// Claims recipients for sending: each `Pending` one becomes `Claimed`
    /// (conditional write). Returns the indexes this call claimed.
    async fn claim(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        indexes: &[u32],
        now: DateTime<Utc>,
    ) -> Result<Vec<u32>, StoreError>;

    /// Releases a claim presumed dead back to `Pending`, only if the
    /// recipient still holds exactly the claim made at `claimed_at`
    /// (conditional write): of two workers that both found it stale only one
    /// releases it, and a newer claim is never overwritten. Returns whether
    /// this call released it.
    async fn release_claim(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        index: u32,
        claimed_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Sets statuses (outcomes after the provider call), each a conditional
    /// write: only a `Pending` or `Claimed` recipient changes, so a final
    /// outcome is never overwritten. An update for a deleted item is ignored.
    async fn set_status(
        &self,
        campaign: &CampaignId,
        updates: &[StatusUpdate],
    ) -> Result<(), StoreError>;

    /// Decides standby recipients (to `Pending` or `Withheld`), each a
    /// conditional write applied only while the recipient is still
    /// `Standby`: a recipient already decided, claimed or sent is left
    /// alone, so a racing or repeated worker changes nothing. An update for
    /// a deleted item is ignored.
    async fn decide_standby(
        &self,
        campaign: &CampaignId,
        updates: &[StatusUpdate],
    ) -> Result<(), StoreError>;

    /// Records a delivery receipt once and counts it, in one atomic write:
    /// the recipient's delivery status is set and its chunk's `delivered` or
    /// `failed` counter (the hub table's chunk record) goes up by one, both
    /// or neither. The recipient's status change is the condition of the
    /// count, so a repeated receipt, a retried call or a crash between two
    /// writes can neither lose nor double a count. Returns `false`, counting
    /// nothing, when this recipient already had a final delivery status (or
    /// no longer exists); `NotFound` when the chunk record is missing.
    async fn record_delivery(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        index: u32,
        status: DeliveryStatus,
    ) -> Result<bool, StoreError>;

    async fn mark_written_back(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        indexes: &[u32],
    ) -> Result<(), StoreError>;

    /// Deletes every patient-data item of the campaign; returns how many.
    async fn purge_campaign(&self, campaign: &CampaignId) -> Result<u64, StoreError>;

    /// Items still held for the campaign (for the purge proof and reports).
    async fn count_campaign(&self, campaign: &CampaignId) -> Result<u64, StoreError>;

    /// Items held across all campaigns (the "store is empty" proof).
    async fn count_all(&self) -> Result<u64, StoreError>;
}

pub fn dedupe_storage_key(key: &DedupeKey) -> String {
    key.storage_key()
}
