//! The information-governance evidence of one campaign: who created,
//! approved and changed it; which practices were told and when, and which
//! opted out; what happened to the cohort, by outcome and reason; when
//! patient data was extracted, how many items were held, and when and how
//! much was purged.
//!
//! Built only from the hub table (campaign, participations, chunk records,
//! audit) and the patient-data table's item count: identifiers of staff
//! and practices, times and counts. It never reads a recipient, so it
//! cannot carry patient data.

use super::api::ApiError;
use super::Hub;
use crate::domain::{
    AuditEvent, Campaign, CampaignId, CampaignOptions, CampaignState, OdsCode, OutcomeCounts,
    ParticipationState, Target,
};
use crate::ports::StoreError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;

/// Actors that are the hub itself, not a person.
const SYSTEM_ACTORS: [&str; 3] = ["hub", "scheduler", "practice-link"];

#[derive(Debug, Clone, Serialize)]
pub struct CampaignEvidence {
    pub campaign: CampaignId,
    pub name: String,
    pub state: CampaignState,
    pub generated_at: DateTime<Utc>,
    pub justification: String,
    /// The template as approved: placeholders, never their values.
    pub message_template: String,
    pub target: Target,
    pub options: CampaignOptions,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub approved_by: Option<String>,
    pub approved_at: Option<DateTime<Utc>>,
    pub cancelled_by: Option<String>,
    pub cancel_reason: Option<String>,
    pub optout_deadline: DateTime<Utc>,
    /// When the deadline fired and the participants were frozen.
    pub deadline_reached_at: Option<DateTime<Utc>>,
    /// Every action a person took on the campaign, oldest first.
    pub staff_actions: Vec<StaffAction>,
    /// The campaign's states, oldest first.
    pub states: Vec<StateChange>,
    pub practices: Vec<PracticeEvidence>,
    pub opt_outs: Vec<OptOut>,
    /// Every patient in the cohort by outcome, and the excluded by reason.
    pub outcomes: OutcomeCounts,
    /// cohort = sent + letters + excluded.
    pub adds_up: bool,
    pub patient_data: PatientDataEvidence,
}

#[derive(Debug, Clone, Serialize)]
pub struct StaffAction {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    /// What the action recorded: names, targets, deadlines, ODS codes,
    /// counts and reasons typed by staff.
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateChange {
    pub at: DateTime<Utc>,
    pub state: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PracticeEvidence {
    pub ods: OdsCode,
    pub name: String,
    pub state: ParticipationState,
    /// When the notice with the opt-out link was emailed.
    pub notified_at: Option<DateTime<Utc>>,
    /// The notice address was refused by the email provider.
    pub notice_rejected: bool,
    pub opted_out_at: Option<DateTime<Utc>>,
    pub extraction_attempts: u32,
    pub extraction_started_at: Option<DateTime<Utc>>,
    /// When the extraction was committed, or given up.
    pub extraction_ended_at: Option<DateTime<Utc>>,
    pub malformed_records: u64,
    /// Recipients stored in the patient-data table for this practice.
    pub recipients_stored: u64,
    pub outcomes: OutcomeCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct OptOut {
    pub ods: OdsCode,
    pub at: Option<DateTime<Utc>>,
    /// `practice-link` (the practice's one-click link) or the staff
    /// identity that recorded an email reply.
    pub by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PatientDataEvidence {
    /// The first practice's extraction began (patient data first read).
    pub extraction_started_at: Option<DateTime<Utc>>,
    /// The last practice's extraction ended.
    pub extraction_ended_at: Option<DateTime<Utc>>,
    pub practices_extracted: u64,
    pub practices_failed: u64,
    pub chunks: u64,
    /// Recipients written to the patient-data table (dedupe keys are
    /// counted in the purge, not here).
    pub recipients_stored: u64,
    pub purges: Vec<Purge>,
    pub purged_at: Option<DateTime<Utc>>,
    /// Items deleted by every purge together (recipients and dedupe keys).
    pub purged_items: Option<u64>,
    /// Items of this campaign still in the patient-data table now.
    pub items_remaining: u64,
    /// The TTL every item carries: the safety net behind the purge.
    pub ttl_hours: i64,
    /// How long delivery receipts are awaited before the purge.
    pub receipt_window_hours: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Purge {
    pub at: DateTime<Utc>,
    pub items_deleted: u64,
    pub items_remaining: u64,
}

/// `GET /campaigns/{id}/evidence`.
pub async fn for_campaign(hub: &Hub, id: &CampaignId) -> Result<CampaignEvidence, ApiError> {
    let campaign = hub
        .store
        .get_campaign(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("campaign {id}")))?;
    Ok(build(hub, &campaign).await?)
}

fn ods_of(event: &AuditEvent) -> Option<&str> {
    event.detail.get("ods").and_then(serde_json::Value::as_str)
}

fn count_of(event: &AuditEvent, field: &str) -> u64 {
    event
        .detail
        .get(field)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

pub async fn build(hub: &Hub, campaign: &Campaign) -> Result<CampaignEvidence, StoreError> {
    let id = &campaign.id;
    let audit = hub.store.list_audit(id).await?;
    let participations = hub.store.list_participations(id).await?;
    let chunks = hub.store.list_chunks(id).await?;
    let names: HashMap<OdsCode, String> = hub
        .store
        .list_practices()
        .await?
        .into_iter()
        .map(|p| (p.ods, p.name))
        .collect();

    let staff_actions = audit
        .iter()
        .filter(|e| !SYSTEM_ACTORS.contains(&e.actor.as_str()))
        .map(|e| StaffAction {
            at: e.at,
            actor: e.actor.clone(),
            action: e.action.clone(),
            detail: e.detail.clone(),
        })
        .collect();
    let mut states = vec![StateChange {
        at: campaign.created_at,
        state: CampaignState::PendingApproval.to_string(),
    }];
    for event in &audit {
        let previous = states.last().map(|s| s.state.as_str());
        let state = match event.action.as_str() {
            "campaign_approved" => Some(CampaignState::OptOutWindow.to_string()),
            "deadline_reached" => Some(CampaignState::Extracting.to_string()),
            "campaign_cancelled" => Some(CampaignState::Cancelled.to_string()),
            // The purge at the end of the receipt window completes the campaign.
            "patient_data_purged" if previous == Some(CampaignState::AwaitingReceipts.as_str()) => {
                Some(CampaignState::Completed.to_string())
            }
            other => other.strip_prefix("state_").map(str::to_string),
        };
        if let Some(state) = state {
            states.push(StateChange {
                at: event.at,
                state,
            });
        }
    }
    let deadline_reached_at = audit
        .iter()
        .find(|e| e.action == "deadline_reached")
        .map(|e| e.at);

    let mut outcomes = OutcomeCounts::default();
    let mut practices = Vec::with_capacity(participations.len());
    let mut opt_outs = Vec::new();
    for participation in &participations {
        let ods = participation.ods.as_str();
        let for_practice = |action: &'static str| {
            audit
                .iter()
                .filter(move |e| e.action == action && ods_of(e) == Some(ods))
        };
        let mut counts = participation.counts.clone();
        let mut recipients_stored = 0u64;
        for chunk in chunks.iter().filter(|c| c.ods == participation.ods) {
            counts.add(&chunk.counts);
            recipients_stored +=
                u64::from(chunk.sms_recipients) + u64::from(chunk.letter_recipients);
        }
        outcomes.add(&counts);
        if participation.state == ParticipationState::OptedOut {
            opt_outs.push(OptOut {
                ods: participation.ods.clone(),
                at: participation.opted_out_at,
                by: participation.opted_out_by.clone(),
            });
        }
        practices.push(PracticeEvidence {
            name: names
                .get(&participation.ods)
                .cloned()
                .unwrap_or_else(|| ods.to_string()),
            ods: participation.ods.clone(),
            state: participation.state,
            notified_at: participation.notice_sent_at,
            notice_rejected: for_practice("practice_notice_rejected").next().is_some(),
            opted_out_at: participation.opted_out_at,
            extraction_attempts: participation.extraction_attempts,
            extraction_started_at: participation.extraction_started_at,
            extraction_ended_at: for_practice("practice_extracted")
                .chain(for_practice("practice_extraction_failed"))
                .map(|e| e.at)
                .max(),
            malformed_records: participation.malformed_records,
            recipients_stored,
            outcomes: counts,
        });
    }
    practices.sort_by(|a, b| a.ods.cmp(&b.ods));
    opt_outs.sort_by(|a, b| a.ods.cmp(&b.ods));

    let purges = audit
        .iter()
        .filter(|e| e.action == "patient_data_purged")
        .map(|e| Purge {
            at: e.at,
            items_deleted: count_of(e, "items_deleted"),
            items_remaining: count_of(e, "items_remaining"),
        })
        .collect();
    let patient_data = PatientDataEvidence {
        extraction_started_at: practices
            .iter()
            .filter_map(|p| p.extraction_started_at)
            .min(),
        extraction_ended_at: practices.iter().filter_map(|p| p.extraction_ended_at).max(),
        practices_extracted: practices
            .iter()
            .filter(|p| p.state == ParticipationState::Extracted)
            .count() as u64,
        practices_failed: practices
            .iter()
            .filter(|p| p.state == ParticipationState::ExtractionFailed)
            .count() as u64,
        chunks: chunks.len() as u64,
        recipients_stored: practices.iter().map(|p| p.recipients_stored).sum(),
        purges,
        purged_at: campaign.purged_at,
        purged_items: campaign.purged_items,
        items_remaining: hub.patients.count_campaign(id).await?,
        ttl_hours: hub.config.patient_data_ttl.num_hours(),
        receipt_window_hours: hub.config.receipt_window.num_hours(),
    };
    let adds_up = outcomes.adds_up();
    Ok(CampaignEvidence {
        campaign: id.clone(),
        name: campaign.name.clone(),
        state: campaign.state,
        generated_at: hub.now(),
        justification: campaign.justification.clone(),
        message_template: campaign.template.text().to_string(),
        target: campaign.target.clone(),
        options: campaign.options,
        created_by: campaign.created_by.as_str().to_string(),
        created_at: campaign.created_at,
        approved_by: campaign
            .approved_by
            .as_ref()
            .map(|s| s.as_str().to_string()),
        approved_at: campaign.approved_at,
        cancelled_by: campaign
            .cancelled_by
            .as_ref()
            .map(|s| s.as_str().to_string()),
        cancel_reason: campaign.cancel_reason.clone(),
        optout_deadline: campaign.optout_deadline,
        deadline_reached_at,
        staff_actions,
        states,
        practices,
        opt_outs,
        outcomes,
        adds_up,
        patient_data,
    })
}
