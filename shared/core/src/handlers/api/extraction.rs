//! Staff decisions on a practice held as `extraction_suspect` (far fewer
//! records than its registered list): proceed, retry or exclude. The api
//! records the decision and who took it and queues the practice's extract
//! job; the extract function carries it out (`extract::carry_out_decision`).

use super::{load, ApiError};
use crate::domain::{
    CampaignId, CampaignState, ExtractionDecision, OdsCode, Participation, StaffId,
};
use crate::handlers::Hub;
use crate::ports::{Job, StoreError};
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
    let Some(mut participation) = hub.store.get_participation(id, &ods).await? else {
        return Err(ApiError::NotFound(format!(
            "practice {ods} in campaign {id}"
        )));
    };
    let replay = participation
        .decision
        .as_ref()
        .is_some_and(|recorded| recorded.decision == decision);
    if campaign.state != CampaignState::Extracting && !replay {
        return Err(ApiError::Conflict(format!(
            "campaign {id} is {}; extraction decisions are taken while it is extracting",
            campaign.state
        )));
    }
    let read = participation.records_read;
    // Recorded here, carried out by the extract function (which may read
    // and delete the held recipients and release the region's chunks).
    let recorded = participation
        .record_decision(decision, caller, hub.now())
        .map_err(|refused| ApiError::Conflict(refused.to_string()))?;
    let stored = if recorded {
        match hub.store.update_participation(&participation).await {
            Ok(stored) => stored,
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::Conflict(format!(
                    "practice {ods} changed while the decision was recorded; read it again"
                )))
            }
            Err(other) => return Err(other.into()),
        }
    } else {
        // The same decision again (a retried request): queued again, the
        // extract function carries it out once.
        participation
    };
    hub.queue
        .send(&[Job::Extract {
            campaign: id.clone(),
            ods: ods.clone(),
        }])
        .await?;
    if recorded {
        hub.audit(
            Some(id),
            caller.as_str(),
            &format!("extraction_suspect_{}", decision.as_str()),
            serde_json::json!({ "ods": ods, "records_read": read }),
        )
        .await?;
    }
    tracing::info!(campaign = %id, ods = %ods, decision = decision.as_str(), "extraction decision recorded");
    Ok(stored)
}
