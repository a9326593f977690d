//! GP systems: extraction of the registered list and write-back.

use super::Practice;
use crate::domain::{GpPatient, NhsNumber};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

#[derive(Debug, thiserror::Error)]
pub enum GpError {
    /// The system is down, timed out or refused: retry later.
    #[error("GP system unavailable: {0}")]
    Unavailable(String),
    /// A record that cannot be read; counted and reported, not fatal.
    #[error("malformed record: {0}")]
    MalformedRecord(String),
    #[error("GP system misconfigured: {0}")]
    Misconfigured(String),
}

/// One message written back to a patient's record.
#[derive(Debug, Clone)]
pub struct WritebackEntry {
    pub nhs_number: NhsNumber,
    /// The provider reference: the Communication's identifier, so a repeated
    /// write-back is recognised by the GP system (conditional create).
    pub reference: String,
    pub sent_at: DateTime<Utc>,
    /// The text as the patient received it (personal when personalised).
    pub message: crate::domain::Personal<String>,
    /// How it reached them.
    pub medium: Medium,
}

/// How a message reached the patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Sms,
    Letter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritebackResult {
    Recorded,
    /// Worth retrying later.
    Failed,
    /// The GP system does not know this patient; will never succeed.
    Rejected,
}

#[async_trait]
pub trait GpConnector: Send + Sync {
    /// Streams the practice's registered patients; memory must not grow
    /// with the list size. A malformed record is an `Err` item in the
    /// stream; an `Err` from the call itself means nothing could be read.
    async fn extract(
        &self,
        practice: &Practice,
    ) -> Result<BoxStream<'static, Result<GpPatient, GpError>>, GpError>;

    /// One result per entry, in order.
    async fn write_back(
        &self,
        practice: &Practice,
        entries: &[WritebackEntry],
    ) -> Result<Vec<WritebackResult>, GpError>;
}
