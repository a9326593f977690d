//! What the CLI reads from the staff API's answers: only the fields it
//! shows, so a hub that adds fields does not break older tools.

use crate::client::CliError;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One of the views below, read from the hub's JSON answer.
pub fn read<T: DeserializeOwned>(answer: serde_json::Value) -> Result<T, CliError> {
    serde_json::from_value(answer).map_err(|e| {
        CliError::Failure(anyhow::anyhow!(
            "the hub's answer is not what this tool expects: {e}"
        ))
    })
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Duration {
    #[serde(default)]
    pub secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SendPlan {
    pub messages_per_second: f64,
    #[serde(default)]
    pub texts_per_hour: u64,
    #[serde(default)]
    pub days_needed: u64,
    #[serde(default)]
    pub keys_for_target: Option<u64>,
    pub eta: Duration,
    pub target: Duration,
    pub meets_target: bool,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PracticeEstimate {
    pub ods: String,
    pub name: String,
    pub list_size: u64,
    pub dsa_signed: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Preview {
    pub example: String,
    #[serde(default)]
    pub example_without_names: Option<String>,
    pub encoding: String,
    pub characters: usize,
    pub fragments: u32,
    pub worst_case_fragments: u32,
    pub practices: Vec<PracticeEstimate>,
    pub estimated_cohort: u64,
    pub optout_deadline: DateTime<Utc>,
    pub plan: SendPlan,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Totals {
    #[serde(default)]
    pub cohort: u64,
    #[serde(default)]
    pub sent: u64,
    #[serde(default)]
    pub letters: u64,
    #[serde(default)]
    pub excluded: BTreeMap<String, u64>,
    #[serde(default)]
    pub delivered: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub written_back: u64,
}

impl Totals {
    pub fn excluded_total(&self) -> u64 {
        self.excluded.values().sum()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CampaignView {
    pub id: String,
    pub name: String,
    pub state: String,
    pub message: String,
    pub optout_deadline: DateTime<Utc>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(default)]
    pub cancelled_by: Option<String>,
    #[serde(default)]
    pub totals: Option<Totals>,
    #[serde(default)]
    pub eta_seconds: Option<u64>,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub deadline_change: Option<DeadlineChange>,
    #[serde(default)]
    pub paused_until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub capacity: Option<Capacity>,
}

/// A shortened deadline waiting for a second person.
#[derive(Debug, Clone, Deserialize)]
pub struct DeadlineChange {
    pub to: DateTime<Utc>,
    pub reason: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
}

/// What the SMS providers allow for the texts still to send.
#[derive(Debug, Clone, Deserialize)]
pub struct Capacity {
    pub texts: u64,
    pub texts_per_hour: u64,
    pub eta_seconds: u64,
    #[serde(default)]
    pub days_needed: u64,
    #[serde(default)]
    pub keys_for_target: Option<u64>,
    #[serde(default)]
    pub keys_configured: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PracticeReport {
    pub ods: String,
    pub name: String,
    pub state: String,
    pub cohort: u64,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub letters: u64,
    pub excluded: u64,
    pub written_back: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub malformed_records: u64,
    #[serde(default)]
    pub records_read: u64,
    #[serde(default)]
    pub list_size: u64,
    #[serde(default)]
    pub held_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Detail {
    #[serde(flatten)]
    pub campaign: CampaignView,
    #[serde(default)]
    pub cancel_reason: Option<String>,
    #[serde(default)]
    pub practices: Vec<PracticeReport>,
    /// While waiting for approval: what is approved.
    #[serde(default)]
    pub preview: Option<Preview>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Created {
    pub campaign: CampaignView,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    pub name: String,
    pub state: String,
    pub totals: Totals,
    pub practices: Vec<PracticeReport>,
    #[serde(default)]
    pub opted_out_practices: Vec<String>,
    #[serde(default)]
    pub failed_practices: Vec<String>,
    pub patient_data_remaining: u64,
    #[serde(default)]
    pub purged_items: Option<u64>,
    pub adds_up: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditEvent {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Practice {
    pub ods: String,
    pub name: String,
    pub notice_email: String,
    #[serde(default)]
    pub dsa_signed: Option<String>,
    #[serde(default)]
    pub connection: serde_json::Value,
    #[serde(default)]
    pub list_size: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Participation {
    pub ods: String,
    pub state: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StateChange {
    pub at: DateTime<Utc>,
    pub state: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PracticeEvidence {
    pub ods: String,
    pub name: String,
    pub state: String,
    #[serde(default)]
    pub notified_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub notice_rejected: bool,
    #[serde(default)]
    pub opted_out_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub outcomes: Totals,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OptOut {
    pub ods: String,
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Purge {
    pub at: DateTime<Utc>,
    pub items_deleted: u64,
    pub items_remaining: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PatientData {
    #[serde(default)]
    pub extraction_started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub extraction_ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub practices_extracted: u64,
    #[serde(default)]
    pub practices_failed: u64,
    #[serde(default)]
    pub chunks: u64,
    #[serde(default)]
    pub recipients_stored: u64,
    #[serde(default)]
    pub purges: Vec<Purge>,
    #[serde(default)]
    pub purged_at: Option<DateTime<Utc>>,
    pub items_remaining: u64,
    #[serde(default)]
    pub ttl_hours: i64,
    #[serde(default)]
    pub receipt_window_hours: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Evidence {
    pub campaign: String,
    pub name: String,
    pub state: String,
    pub generated_at: DateTime<Utc>,
    pub justification: String,
    pub message_template: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(default)]
    pub approved_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub cancelled_by: Option<String>,
    #[serde(default)]
    pub cancel_reason: Option<String>,
    pub optout_deadline: DateTime<Utc>,
    #[serde(default)]
    pub deadline_reached_at: Option<DateTime<Utc>>,
    #[serde(default)]
    /// Audit events by staff, read like `campaign audit`'s.
    pub staff_actions: Vec<AuditEvent>,
    #[serde(default)]
    pub states: Vec<StateChange>,
    #[serde(default)]
    pub practices: Vec<PracticeEvidence>,
    #[serde(default)]
    pub opt_outs: Vec<OptOut>,
    pub outcomes: Totals,
    pub adds_up: bool,
    pub patient_data: PatientData,
}
