//! What went wrong in an AWS call, in the terms the ports understand.
//!
//! An SDK error is reduced to its error code and HTTP status. The service's
//! message is kept only where the caller says it is safe: a DynamoDB or SQS
//! message can echo request content, and on the patient-data table that
//! content is personal.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use hub_core::ports::{QueueError, StoreError};
use std::fmt;
use std::time::Duration;

/// How a caller can react to a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// Throttling, 5xx, timeout or a connection failure: try again later.
    Transient,
    /// A condition expression did not hold.
    Condition,
    /// The resource (table, queue, schedule, secret) does not exist.
    NotFound,
    /// Anything else: a bug or a misconfiguration.
    Permanent,
}

/// A failed AWS call: the operation, the service's error code and status.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub kind: FaultKind,
    pub operation: &'static str,
    pub code: String,
    pub status: Option<u16>,
    /// Only set for services and tables that hold no personal data.
    pub message: Option<String>,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.operation, self.code)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Fault {}

/// Error codes that mean "slow down or try again", across the services used.
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "LimitExceededException",
    "InternalServerError",
    "InternalServerException",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "TransactionInProgressException",
    "TransactionConflictException",
    "KMSThrottlingException",
];

const NOT_FOUND_CODES: &[&str] = &[
    "ResourceNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
];

impl Fault {
    pub fn new(kind: FaultKind, operation: &'static str, code: impl Into<String>) -> Self {
        Self {
            kind,
            operation,
            code: code.into(),
            status: None,
            message: None,
        }
    }

    /// Classifies an SDK error. `keep_message` copies the service's message
    /// into the fault; pass `false` wherever a request may carry personal data.
    pub fn from_sdk<E: ProvideErrorMetadata>(
        operation: &'static str,
        err: &SdkError<E>,
        keep_message: bool,
    ) -> Self {
        match err {
            SdkError::TimeoutError(_) => Self::new(FaultKind::Transient, operation, "Timeout"),
            SdkError::DispatchFailure(_) => {
                Self::new(FaultKind::Transient, operation, "DispatchFailure")
            }
            SdkError::ResponseError(ctx) => {
                let mut fault = Self::new(FaultKind::Transient, operation, "ResponseError");
                fault.status = Some(ctx.raw().status().as_u16());
                fault
            }
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                let code = ctx.err().code().unwrap_or("Unknown").to_string();
                let kind = kind_of(&code, status);
                Self {
                    kind,
                    operation,
                    code,
                    status: Some(status),
                    message: if keep_message {
                        ctx.err().message().map(str::to_string)
                    } else {
                        None
                    },
                }
            }
            _ => Self::new(FaultKind::Permanent, operation, "ConstructionFailure"),
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind == FaultKind::Transient
    }

    pub fn into_store_error(self) -> StoreError {
        match self.kind {
            FaultKind::Transient => {
                StoreError::unavailable_because(format!("{} on DynamoDB", self.operation), self)
            }
            FaultKind::Condition => StoreError::Conflict(self.to_string()),
            FaultKind::NotFound | FaultKind::Permanent => {
                let context = format!("{} on DynamoDB", self.operation);
                StoreError::Unexpected(anyhow::Error::new(self).context(context))
            }
        }
    }

    pub fn into_queue_error(self) -> QueueError {
        match self.kind {
            FaultKind::Transient => QueueError::Unavailable(self.to_string()),
            _ => {
                let context = self.operation;
                QueueError::Unexpected(anyhow::Error::new(self).context(context))
            }
        }
    }
}

/// Kind of a service error from its code, or failing that its status.
pub(crate) fn kind_of(code: &str, status: u16) -> FaultKind {
    if code == "ConditionalCheckFailedException" {
        FaultKind::Condition
    } else if TRANSIENT_CODES.contains(&code) || status == 429 || status >= 500 {
        FaultKind::Transient
    } else if NOT_FOUND_CODES.contains(&code) {
        FaultKind::NotFound
    } else {
        FaultKind::Permanent
    }
}

impl From<Fault> for StoreError {
    fn from(fault: Fault) -> Self {
        fault.into_store_error()
    }
}

impl From<Fault> for QueueError {
    fn from(fault: Fault) -> Self {
        fault.into_queue_error()
    }
}

/// Exponential backoff with full jitter: a random wait in
/// `[0, min(cap, base * 2^attempt)]`.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    use rand::Rng;
    let ceiling = base
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(cap);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_are_classified() {
        assert_eq!(
            kind_of("ConditionalCheckFailedException", 400),
            FaultKind::Condition
        );
        assert_eq!(
            kind_of("ProvisionedThroughputExceededException", 400),
            FaultKind::Transient
        );
        assert_eq!(kind_of("Whatever", 503), FaultKind::Transient);
        assert_eq!(kind_of("Whatever", 429), FaultKind::Transient);
        assert_eq!(
            kind_of("ResourceNotFoundException", 400),
            FaultKind::NotFound
        );
        assert_eq!(kind_of("ValidationException", 400), FaultKind::Permanent);
    }

    #[test]
    fn backoff_stays_under_its_cap() {
        let cap = Duration::from_millis(800);
        for attempt in 0..40 {
            assert!(backoff(attempt, Duration::from_millis(25), cap) <= cap);
        }
    }

    #[test]
    fn messages_are_left_out_unless_asked_for() {
        let fault = Fault::new(FaultKind::Permanent, "PutItem", "ValidationException");
        assert_eq!(fault.to_string(), "PutItem failed: ValidationException");
    }
}
