//! AWS adapters: DynamoDB stores, SQS queue, EventBridge Scheduler and
//! Secrets Manager, on the official AWS SDK for Rust.
//!
//! Endpoints, region and credentials come from the SDK's standard
//! configuration chain ([`load_sdk_config`]): on Lambda the execution role;
//! against an emulator `AWS_ENDPOINT_URL`, `AWS_REGION` and the
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` variables. There is no
//! "local" switch in this code.
//!
//! Table names, queue URLs, secret ARNs and scheduler targets are
//! constructor arguments; [`env`] names the variables `template.yaml` sets
//! and the `from_env` helpers read them, for the Lambda `main`s.
//!
//! Error messages and logs from here carry operation names, AWS error codes,
//! campaign ids, ODS codes and chunk ids, never patient data or secrets.

pub mod dynamo;
mod fault;
pub mod scheduler;
pub mod secrets;
pub mod sqs;

pub use dynamo::{DynamoHubStore, DynamoPatientStore};
pub use scheduler::{EventBridgeScheduler, ScheduleTargets};
pub use secrets::{Secrets, SecretsError, SecretsManagerSecrets};
pub use sqs::SqsJobQueue;

use hub_core::ports::QueueName;
use std::collections::HashMap;

/// The SDK configuration from the environment (region, credentials,
/// `AWS_ENDPOINT_URL`), with the latest behaviour version.
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Names of the environment variables `template.yaml` gives every function.
pub mod env {
    use hub_core::ports::QueueName;

    pub const HUB_TABLE: &str = "HUB_TABLE";
    pub const PATIENT_DATA_TABLE: &str = "PATIENT_DATA_TABLE";
    pub const NOTICES_QUEUE_URL: &str = "NOTICES_QUEUE_URL";
    pub const EXTRACT_QUEUE_URL: &str = "EXTRACT_QUEUE_URL";
    pub const SEND_QUEUE_URL: &str = "SEND_QUEUE_URL";
    pub const WRITEBACK_QUEUE_URL: &str = "WRITEBACK_QUEUE_URL";
    pub const LETTERS_QUEUE_URL: &str = "LETTERS_QUEUE_URL";
    pub const PURGE_QUEUE_URL: &str = "PURGE_QUEUE_URL";
    pub const PURGE_QUEUE_ARN: &str = "PURGE_QUEUE_ARN";
    pub const SCHEDULE_GROUP: &str = "SCHEDULE_GROUP";
    pub const SCHEDULER_ROLE_ARN: &str = "SCHEDULER_ROLE_ARN";
    pub const DEADLINE_FUNCTION_ARN: &str = "DEADLINE_FUNCTION_ARN";
    pub const NOTIFY_SECRET_ARN: &str = "NOTIFY_SECRET_ARN";
    pub const OPTOUT_LINK_KEY_SECRET_ARN: &str = "OPTOUT_LINK_KEY_SECRET_ARN";
    pub const CALLBACK_TOKEN_SECRET_ARN: &str = "CALLBACK_TOKEN_SECRET_ARN";
    /// Base of the opt-out links in practice notices: the practice-notices
    /// function's own variable, not in `Globals` (see [`PER_FUNCTION`]).
    pub const PUBLIC_BASE_URL: &str = "PUBLIC_BASE_URL";
    /// The Notify services' rates and daily limits (JSON; not secret).
    pub const NOTIFY_RATES: &str = "NOTIFY_RATES";
    /// The send queue's maximum concurrency: above 1 the send invocations
    /// share their pacing buckets in the hub table.
    pub const SEND_MAX_CONCURRENCY: &str = "SEND_MAX_CONCURRENCY";
    /// Hub roles of IAM identities: `requester=PATTERN,…;approver=…`
    /// (`hub_core::domain::AccessPolicy::parse`). Empty: nobody may act.
    pub const HUB_ROLES: &str = "HUB_ROLES";
    /// `true` lets GP connections use http and private addresses (a test
    /// deployment against local simulators only).
    pub const HUB_PRIVATE_GP_URLS: &str = "HUB_PRIVATE_GP_URLS";
    /// Name of the secret holding the hub's MESH mailbox credentials
    /// (`mesh::mesh_config_from_secret`); empty: no MESH route.
    pub const MESH_SECRET_NAME: &str = "MESH_SECRET_NAME";
    /// AWS End User Messaging: the origination identity's ARN (empty: not
    /// used), its message parts a second and its daily text limit (0: none).
    pub const EUM_ORIGINATION_IDENTITY: &str = "EUM_ORIGINATION_IDENTITY";
    pub const EUM_PARTS_PER_SECOND: &str = "EUM_PARTS_PER_SECOND";
    pub const EUM_DAILY_LIMIT: &str = "EUM_DAILY_LIMIT";

    /// Variables only some functions get, with the function's binary.
    pub const PER_FUNCTION: [(&str, &str); 1] = [(PUBLIC_BASE_URL, "practice-notices")];

    /// Every variable above, for checks against the template.
    pub const ALL: [&str; 24] = [
        HUB_TABLE,
        PATIENT_DATA_TABLE,
        NOTICES_QUEUE_URL,
        EXTRACT_QUEUE_URL,
        SEND_QUEUE_URL,
        WRITEBACK_QUEUE_URL,
        LETTERS_QUEUE_URL,
        PURGE_QUEUE_URL,
        PURGE_QUEUE_ARN,
        SCHEDULE_GROUP,
        SCHEDULER_ROLE_ARN,
        DEADLINE_FUNCTION_ARN,
        NOTIFY_SECRET_ARN,
        OPTOUT_LINK_KEY_SECRET_ARN,
        CALLBACK_TOKEN_SECRET_ARN,
        PUBLIC_BASE_URL,
        SEND_MAX_CONCURRENCY,
        NOTIFY_RATES,
        HUB_ROLES,
        HUB_PRIVATE_GP_URLS,
        MESH_SECRET_NAME,
        EUM_ORIGINATION_IDENTITY,
        EUM_PARTS_PER_SECOND,
        EUM_DAILY_LIMIT,
    ];

    /// The variable holding a queue's URL.
    pub fn queue_url(queue: QueueName) -> &'static str {
        match queue {
            QueueName::Notices => NOTICES_QUEUE_URL,
            QueueName::Extract => EXTRACT_QUEUE_URL,
            QueueName::Send => SEND_QUEUE_URL,
            QueueName::Writeback => WRITEBACK_QUEUE_URL,
            QueueName::Letters => LETTERS_QUEUE_URL,
            QueueName::Purge => PURGE_QUEUE_URL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
}

/// One required variable, through `lookup` (e.g. `|k| std::env::var(k).ok()`).
pub fn required(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<String, ConfigError> {
    lookup(name)
        .filter(|value| !value.is_empty())
        .ok_or(ConfigError::Missing(name))
}

/// The queue URLs of every queue, for [`SqsJobQueue::new`].
pub fn queue_urls(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<HashMap<QueueName, String>, ConfigError> {
    QueueName::ALL
        .into_iter()
        .map(|queue| Ok((queue, required(lookup, env::queue_url(queue))?)))
        .collect()
}

impl ScheduleTargets {
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(Self {
            group: lookup(env::SCHEDULE_GROUP)
                .filter(|group| !group.is_empty())
                .unwrap_or_else(|| "default".to_string()),
            deadline_function_arn: required(lookup, env::DEADLINE_FUNCTION_ARN)?,
            purge_queue_arn: required(lookup, env::PURGE_QUEUE_ARN)?,
            role_arn: required(lookup, env::SCHEDULER_ROLE_ARN)?,
        })
    }
}

/// Reads the process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
