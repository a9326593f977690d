//! What `infra/deployed_stack.py` deployed: read from its manifest.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub endpoint: String,
    pub region: String,
    pub account: String,
    pub admin_key: String,
    /// By logical id.
    pub functions: BTreeMap<String, Function>,
    pub event_source_mappings: Vec<Mapping>,
    pub queues: BTreeMap<String, Queue>,
    pub routes: Vec<Route>,
    pub stage: Option<String>,
    pub dropped_statement: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Function {
    pub name: String,
    pub arn: String,
    pub binary: Option<String>,
    pub memory: u64,
    pub timeout: u64,
    pub environment: BTreeMap<String, String>,
    pub credentials: Credentials,
    /// `ReservedConcurrentExecutions`, if the template sets it.
    #[serde(default)]
    pub reserved_concurrency: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Mapping {
    pub function: String,
    pub queue: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub batch_size: i32,
    pub maximum_concurrency: usize,
    pub report_batch_item_failures: bool,
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Queue {
    pub url: String,
    pub arn: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Route {
    pub path: String,
    pub method: String,
    pub function: String,
    pub auth: String,
}

/// A denied AWS call, as the IAM check logged it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Denial {
    pub function: String,
    pub action: String,
    pub resource: String,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was denied {} on {}",
            self.function, self.action, self.resource
        )
    }
}
