//! Decisions on a campaign: approve, cancel, move the deadline, and a
//! practice's opt-out (by staff or by the signed link).

use super::{load, ApiError};
use crate::domain::{CampaignId, CampaignState, OdsCode, Participation, StaffId};
use crate::handlers::optout_token;
use crate::handlers::report::{self, CampaignView};
use crate::handlers::Hub;
use crate::ports::{Job, Practice, ScheduledAction, StoreError};
use chrono::{DateTime, Utc};

/// A second authorised person approves: practices are notified and the
/// deadline is scheduled.
pub async fn approve(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
) -> Result<CampaignView, ApiError> {
    let mut campaign = load(hub, id).await?;
    campaign.approve(caller, hub.now())?;
    let practices: Vec<Practice> = hub
        .store
        .list_practices()
        .await?
        .into_iter()
        .filter(|p| p.dsa_signed.is_some() && campaign.target.includes_practice(&p.ods))
        .collect();
    let participations: Vec<Participation> = practices
        .iter()
        .map(|p| Participation::notified(id.clone(), p.ods.clone()))
        .collect();
    // Participations first: if the approval write then loses a race, the
    // winner created the same ones (insert-if-absent).
    hub.store.create_participations(&participations).await?;
    let campaign = hub.store.update_campaign(&campaign).await?;
    hub.scheduler
        .schedule(
            &ScheduledAction::Deadline {
                campaign: id.clone(),
            },
            campaign.optout_deadline,
        )
        .await?;
    let notices: Vec<Job> = practices
        .iter()
        .map(|p| Job::Notice {
            campaign: id.clone(),
            ods: p.ods.clone(),
        })
        .collect();
    hub.queue.send(&notices).await?;
    hub.audit(
        Some(id),
        caller.as_str(),
        "campaign_approved",
        serde_json::json!({ "practices_notified": practices.len() }),
    )
    .await?;
    tracing::info!(campaign = %id, practices = practices.len(), "campaign approved");
    Ok(report::view(hub, &campaign).await?)
}

pub async fn cancel(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
    reason: &str,
) -> Result<CampaignView, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ApiError::field("reason", "is required"));
    }
    let now = hub.now();
    let mut refusal = None;
    // Sending bumps the campaign's version constantly; re-read and retry so
    // a cancel mid-send always lands.
    let (campaign, cancelled) = hub
        .update_campaign_with(id, |campaign| {
            refusal = campaign.cancel(caller, reason.to_string(), now).err();
            refusal.is_none()
        })
        .await?;
    if let (false, Some(refusal)) = (cancelled, refusal) {
        return Err(refusal.into());
    }
    tracing::warn!(campaign = %id, "campaign cancelled");
    hub.audit(
        Some(id),
        caller.as_str(),
        "campaign_cancelled",
        serde_json::json!({ "reason": reason }),
    )
    .await?;
    hub.scheduler
        .cancel(&ScheduledAction::Deadline {
            campaign: id.clone(),
        })
        .await?;
    hub.scheduler
        .cancel(&ScheduledAction::Purge {
            campaign: id.clone(),
        })
        .await?;
    hub.queue
        .send(&[Job::Purge {
            campaign: id.clone(),
        }])
        .await?;
    Ok(report::view(hub, &campaign).await?)
}

/// Staff move the deadline (bring it forward when the emergency cannot wait).
pub async fn reschedule_deadline(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
    raw_deadline: &str,
) -> Result<CampaignView, ApiError> {
    let deadline = DateTime::parse_from_rfc3339(raw_deadline.trim())
        .map_err(|_| {
            ApiError::field(
                "optout_deadline",
                "must be an RFC 3339 date and time, e.g. 2026-11-22T18:00:00Z",
            )
        })?
        .with_timezone(&Utc);
    let now = hub.now();
    // "Now" typed a moment ago is still now.
    let deadline = if deadline < now && now - deadline <= chrono::Duration::minutes(1) {
        now
    } else {
        deadline
    };
    if deadline - now > hub.config.max_deadline_ahead {
        return Err(ApiError::field("optout_deadline", "is too far ahead"));
    }
    let mut campaign = load(hub, id).await?;
    let previous = campaign.optout_deadline;
    campaign.reschedule_deadline(deadline, now)?;
    let campaign = hub.store.update_campaign(&campaign).await?;
    if campaign.state == CampaignState::OptOutWindow {
        hub.scheduler
            .schedule(
                &ScheduledAction::Deadline {
                    campaign: id.clone(),
                },
                deadline,
            )
            .await?;
    }
    hub.audit(
        Some(id),
        caller.as_str(),
        "deadline_changed",
        serde_json::json!({ "from": previous, "to": deadline }),
    )
    .await?;
    Ok(report::view(hub, &campaign).await?)
}

/// Records a practice's opt-out (by link, or by staff when the practice
/// replied to the notice by email).
pub async fn record_opt_out(
    hub: &Hub,
    actor: &str,
    id: &CampaignId,
    raw_ods: &str,
) -> Result<Participation, ApiError> {
    let ods = OdsCode::parse(raw_ods).map_err(|e| ApiError::field("ods", e.to_string()))?;
    for _ in 0..10 {
        let campaign = load(hub, id).await?;
        campaign.check_opt_out_allowed(hub.now())?;
        let Some(mut participation) = hub.store.get_participation(id, &ods).await? else {
            return Err(ApiError::NotFound(format!(
                "practice {ods} in campaign {id}"
            )));
        };
        match participation.opt_out(actor, hub.now()) {
            Ok(true) => {}
            Ok(false) => return Ok(participation),
            Err(refused) => return Err(ApiError::Conflict(refused.to_string())),
        }
        match hub.store.update_participation(&participation).await {
            Ok(stored) => {
                hub.audit(
                    Some(id),
                    actor,
                    "practice_opted_out",
                    serde_json::json!({ "ods": ods }),
                )
                .await?;
                tracing::info!(campaign = %id, ods = %ods, "practice opted out");
                return Ok(stored);
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(other) => return Err(other.into()),
        }
    }
    Err(ApiError::Unavailable("opt-out kept conflicting".into()))
}

/// The practice's one-click link.
pub async fn opt_out_by_link(hub: &Hub, token: &str) -> Result<Participation, ApiError> {
    let claim = optout_token::verify(&hub.optout_key, token, hub.now())
        .map_err(|e| ApiError::Forbidden(e.to_string()))?;
    record_opt_out(hub, "practice-link", &claim.campaign, claim.ods.as_str()).await
}
