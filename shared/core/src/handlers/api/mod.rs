//! The staff API's operations, independent of HTTP: validation with
//! errors that name the field, and every action audited with the caller.

use super::Hub;
use crate::domain::{Campaign, CampaignId, LifecycleError};
use crate::ports::{QueueError, SchedulerError, StoreError};
use serde::{Deserialize, Serialize};

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Errors of the staff API; `status()` is the one place they become HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request is not valid")]
    Validation(Vec<FieldError>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the hub is busy; try again")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Validation(_) => 400,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Unavailable(_) => 503,
            Self::Internal(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation_failed",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// The JSON error body shared by every route.
    pub fn body(&self) -> serde_json::Value {
        let errors = match self {
            Self::Validation(errors) => errors.clone(),
            _ => Vec::new(),
        };
        serde_json::json!({
            "code": self.code(),
            "message": self.to_string(),
            "field": errors.first().map(|e| e.field.clone()),
            "errors": errors,
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(what) => Self::Conflict(format!(
                "changed by someone else; reload and retry ({what})"
            )),
            StoreError::Unavailable { what, .. } => Self::Unavailable(what),
            StoreError::Unexpected(error) => Self::Internal(error),
        }
    }
}

impl From<SchedulerError> for ApiError {
    fn from(error: SchedulerError) -> Self {
        match error {
            SchedulerError::Unavailable(why) => Self::Unavailable(why),
            SchedulerError::Unexpected(error) => Self::Internal(error),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        match error {
            QueueError::Unavailable(why) => Self::Unavailable(why),
            QueueError::Unexpected(error) => Self::Internal(error),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(error: LifecycleError) -> Self {
        match error {
            LifecycleError::SelfApproval | LifecycleError::SelfApprovedDeadline => {
                Self::Forbidden(error.to_string())
            }
            LifecycleError::DeadlineInPast => Self::field("optout_deadline", error.to_string()),
            _ => Self::Conflict(error.to_string()),
        }
    }
}

impl From<super::JobError> for ApiError {
    fn from(error: super::JobError) -> Self {
        match error {
            super::JobError::Store(e) => e.into(),
            super::JobError::Queue(e) => e.into(),
            other => Self::Internal(anyhow::anyhow!(other.to_string())),
        }
    }
}

/// Characters no free-text field may hold: controls (but a line break or a
/// tab where `multiline`) and the bidirectional overrides and isolates that
/// make text read differently from how it is stored.
fn forbidden_char(c: char, multiline: bool) -> bool {
    let allowed_control = multiline && matches!(c, '\n' | '\r' | '\t');
    (c.is_control() && !allowed_control)
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// A free-text field trimmed, within `min..=max` characters and without
/// forbidden characters; the error names the field.
pub fn check_text(
    field: &str,
    value: &str,
    min: usize,
    max: usize,
    multiline: bool,
) -> Result<String, FieldError> {
    let value = value.trim();
    let fail = |message: String| FieldError {
        field: field.into(),
        message,
    };
    let count = value.chars().count();
    if count < min {
        return Err(fail(if min <= 1 {
            "is required".into()
        } else {
            format!("must be at least {min} characters")
        }));
    }
    if count > max {
        return Err(fail(format!("must be at most {max} characters")));
    }
    if let Some(c) = value.chars().find(|c| forbidden_char(*c, multiline)) {
        return Err(fail(format!(
            "must not contain control or text-direction characters (found U+{:04X})",
            c as u32
        )));
    }
    Ok(value.to_string())
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        Self::Validation(vec![error])
    }
}

pub fn parse_campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
    CampaignId::parse(raw).ok_or_else(|| ApiError::field("id", "is not a campaign id"))
}

pub(super) async fn load(hub: &Hub, id: &CampaignId) -> Result<Campaign, ApiError> {
    hub.store
        .get_campaign(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("campaign {id}")))
}

mod campaigns;
mod decisions;
mod extraction;
mod practices;
mod views;

pub use campaigns::*;
pub use decisions::*;
pub use extraction::*;
pub use practices::*;
pub use views::*;
