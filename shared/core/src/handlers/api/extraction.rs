//! Staff decisions on a practice held as `extraction_suspect` (far fewer
//! records than its registered list): proceed, retry or exclude.

use super::{load, ApiError};
use crate::domain::{
    CampaignId, CampaignState, ExtractionDecision, OdsCode, Participation, StaffId,
};
use crate::handlers::{extract, Hub};
use crate::ports::Job;
use serde::{Deserialize, Serialize};

/// `POST /campaigns/{id}/extraction-decisions`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractionDecisionRequest {
    pub ods: String,
    /// `proceed`, `retry` or `exclude`.
    pub decision: String,
}

pub async fn decide_extraction(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
    request: &ExtractionDecisionRequest,
) -> Result<Participation, ApiError> {
    let ods = OdsCode::parse(&request.ods).map_err(|e| ApiError::field("ods", e.to_string()))?;
    let decision = match request.decision.trim() {
        "proceed" => ExtractionDecision::Proceed,
        "retry" => ExtractionDecision::Retry,
        "exclude" => ExtractionDecision::Exclude,
        _ => {
            return Err(ApiError::field(
                "decision",
                "must be proceed, retry or exclude",
            ))
        }
    };
    let campaign = load(hub, id).await?;
    if campaign.state != CampaignState::Extracting {
        return Err(ApiError::Conflict(format!(
            "campaign {id} is {}; extraction decisions are taken while it is extracting",
            campaign.state
        )));
    }
    let Some(mut participation) = hub.store.get_participation(id, &ods).await? else {
        return Err(ApiError::NotFound(format!(
            "practice {ods} in campaign {id}"
        )));
    };
    let read = participation.records_read;
    participation
        .decide(decision)
        .map_err(|refused| ApiError::Conflict(refused.to_string()))?;
    let stored = match decision {
        ExtractionDecision::Proceed => {
            let progress = extract::proceed_with_held(hub, &participation).await?;
            participation.version += 1;
            hub.after_progress(id, progress).await?;
            participation
        }
        ExtractionDecision::Retry => {
            extract::discard_held(hub, &participation).await?;
            let stored = hub.store.update_participation(&participation).await?;
            hub.queue
                .send(&[Job::Extract {
                    campaign: id.clone(),
                    ods: ods.clone(),
                }])
                .await?;
            stored
        }
        ExtractionDecision::Exclude => {
            extract::discard_held(hub, &participation).await?;
            let progress = hub.store.commit_extraction(&participation, 0).await?;
            participation.version += 1;
            if progress.practices_pending == 0 {
                extract::release(hub, id).await?;
            }
            hub.after_progress(id, progress).await?;
            participation
        }
    };
    hub.audit(
        Some(id),
        caller.as_str(),
        &format!("extraction_suspect_{}", decision.as_str()),
        serde_json::json!({ "ods": ods, "records_read": read }),
    )
    .await?;
    tracing::info!(campaign = %id, ods = %ods, decision = decision.as_str(), "extraction decision taken");
    Ok(stored)
}
