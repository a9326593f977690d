//! SMS, email and letter providers (GOV.UK Notify, AWS End User Messaging,
//! the embedded gateway simulator).

use crate::domain::{DeliveryStatus, Personal, PostalAddress, UkMobile};
use async_trait::async_trait;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SmsRequest {
    pub to: UkMobile,
    pub body: Personal<String>,
    /// Identifies the recipient within the campaign; no personal data.
    pub reference: String,
    /// Fragments this message costs, for pacing.
    pub fragments: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub provider_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// 400 for this recipient (bad number): never retried.
    #[error("recipient rejected: {0}")]
    Rejected(String),
    /// 429 rate limit: back off and retry.
    #[error("rate limited")]
    RateLimited { retry_after: Option<Duration> },
    /// 429 daily limit: this provider is done for the day.
    #[error("daily limit reached")]
    DailyLimit,
    /// 5xx or timeout: retry with backoff.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// 401/403: credentials or service configuration; stops sending.
    #[error("provider refused our credentials: {0}")]
    Unauthorised(String),
}

/// What a provider knows about a reference (reconciling a lost response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRecord {
    pub provider_id: String,
    pub status: Option<DeliveryStatus>,
}

#[async_trait]
pub trait SmsProvider: Send + Sync {
    fn name(&self) -> &str;
    /// What the provider's rate limit counts (message parts unless said).
    fn rate_unit(&self) -> crate::domain::pacing::RateUnit {
        crate::domain::pacing::RateUnit::Parts
    }
    /// Texts a provider day the account may send, if limited.
    fn daily_cap(&self) -> Option<u64> {
        None
    }
    async fn send_sms(&self, request: &SmsRequest) -> Result<Accepted, ProviderError>;
    /// Whether `find_by_reference` can find a text this provider took. When
    /// it cannot, an ambiguous send is counted as sent and never repeated:
    /// a patient must not get the campaign twice.
    fn answers_lookups(&self) -> bool {
        true
    }
    /// Finds a notification by our reference, if the provider has it.
    async fn find_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<ProviderRecord>, ProviderError>;
}

#[derive(Debug, Clone)]
pub struct EmailRequest {
    pub to: String,
    pub subject: String,
    pub body: String,
    pub reference: String,
}

#[async_trait]
pub trait EmailProvider: Send + Sync {
    async fn send_email(&self, request: &EmailRequest) -> Result<Accepted, ProviderError>;
}

#[derive(Debug, Clone)]
pub struct LetterRequest {
    pub address: PostalAddress,
    pub body: Personal<String>,
    pub reference: String,
}

#[async_trait]
pub trait LetterProvider: Send + Sync {
    async fn send_letter(&self, request: &LetterRequest) -> Result<Accepted, ProviderError>;
    /// Finds a letter by our reference, if the provider has it (a claim
    /// whose answer was lost, or whose worker died, is settled by it).
    async fn find_letter(&self, reference: &str) -> Result<Option<ProviderRecord>, ProviderError>;
}

/// A delivery status callback, as the receipts function gets it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeliveryReceipt {
    pub reference: String,
    pub provider_id: String,
    pub status: DeliveryStatus,
}

/// Where a simulator or test delivers receipts (the receipts handler).
#[async_trait]
pub trait ReceiptSink: Send + Sync {
    async fn deliver(&self, receipt: DeliveryReceipt);
}
