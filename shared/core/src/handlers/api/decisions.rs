//! Decisions on a campaign: approve, cancel, move the deadline, and a
//! practice's opt-out (by staff or by the signed link).

use super::{check_text, load, ApiError};
use crate::domain::{
    earliest_deadline, Campaign, CampaignId, CampaignState, DeadlineChange, DeadlineRequested,
    OdsCode, Participation, ParticipationState, StaffId,
};
use crate::handlers::optout_token;
use crate::handlers::report::{self, CampaignView};
use crate::handlers::Hub;
use crate::ports::{Job, Practice, ScheduledAction, StoreError};
use chrono::{DateTime, Utc};

/// A second authorised person approves: practices are notified and the
/// deadline is scheduled. Retry-safe: the approver asking again (after a
/// failure to schedule or queue, say) re-derives the schedule and the
/// notices still unsent from the stored state.
pub async fn approve(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
) -> Result<CampaignView, ApiError> {
    approve_seen(hub, caller, id, None).await
}

/// [`approve`] of the version the approver was shown (`seen`): a campaign
/// changed since needs a fresh look.
pub async fn approve_seen(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
    seen: Option<u64>,
) -> Result<CampaignView, ApiError> {
    let mut campaign = load(hub, id).await?;
    let retry = campaign.state == CampaignState::OptOutWindow
        && campaign.approved_by.as_ref() == Some(caller);
    if !retry {
        if let Some(seen) = seen.filter(|v| *v != campaign.version) {
            return Err(ApiError::Conflict(format!(
                "campaign {id} changed since you saw it (version {seen}, now {}); review it \
                 again before approving",
                campaign.version
            )));
        }
        let version = campaign.version;
        campaign.approve(caller, hub.now())?;
        let practices = notified_practices(hub, &campaign).await?;
        let participations: Vec<Participation> = practices
            .iter()
            .map(|p| Participation::notified(id.clone(), p.ods.clone()))
            .collect();
        // Participations first: if the approval write then loses a race, the
        // winner created the same ones (insert-if-absent).
        hub.store.create_participations(&participations).await?;
        campaign = hub.store.update_campaign(&campaign).await?;
        hub.audit(
            Some(id),
            caller.as_str(),
            "campaign_approved",
            serde_json::json!({
                "practices_notified": practices.len(),
                "version_approved": version,
                "message": campaign.template.text(),
                "optout_deadline": campaign.optout_deadline,
            }),
        )
        .await?;
        tracing::info!(campaign = %id, practices = practices.len(), "campaign approved");
    }
    arrange_window(hub, &campaign).await?;
    Ok(report::view(hub, &campaign).await?)
}

async fn notified_practices(hub: &Hub, campaign: &Campaign) -> Result<Vec<Practice>, ApiError> {
    Ok(hub
        .store
        .list_practices()
        .await?
        .into_iter()
        .filter(|p| p.dsa_signed.is_some() && campaign.target.includes_practice(&p.ods))
        .collect())
}

/// The deadline schedule and every notice unsent or naming a later
/// deadline than the one in force, derived from the stored state, so
/// approving or moving the deadline again finishes what a failure left
/// undone (both are idempotent: the schedule by name, a notice by its
/// participation's `notice_sent_at` and `notice_deadline`).
pub async fn arrange_window(hub: &Hub, campaign: &Campaign) -> Result<(), ApiError> {
    if campaign.state != CampaignState::OptOutWindow {
        return Ok(());
    }
    hub.scheduler
        .schedule(
            &ScheduledAction::Deadline {
                campaign: campaign.id.clone(),
            },
            campaign.optout_deadline,
        )
        .await?;
    let notices: Vec<Job> = hub
        .store
        .list_participations(&campaign.id)
        .await?
        .into_iter()
        .filter(|p| p.notice_sent_at.is_none() || p.needs_notice(campaign.optout_deadline))
        .map(|p| Job::Notice {
            campaign: campaign.id.clone(),
            ods: p.ods,
        })
        .collect();
    hub.queue.send(&notices).await?;
    Ok(())
}

pub async fn cancel(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
    reason: &str,
) -> Result<CampaignView, ApiError> {
    let reason = check_text("reason", reason, 1, 500, false)?;
    let reason = reason.as_str();
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
    // What was sent before the cancel is counted and written back; the
    // purge follows the last chunk (at once when there is none).
    crate::handlers::settle::settle_campaign(hub, id).await?;
    Ok(report::view(hub, &campaign).await?)
}

fn parse_deadline(raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let deadline = DateTime::parse_from_rfc3339(raw.trim())
        .map_err(|_| {
            ApiError::field(
                "optout_deadline",
                "must be an RFC 3339 date and time, e.g. 2026-11-22T18:00:00Z",
            )
        })?
        .with_timezone(&Utc);
    // "Now" typed a moment ago is still now.
    Ok(
        if deadline < now && now - deadline <= chrono::Duration::minutes(1) {
            now
        } else {
            deadline
        },
    )
}

/// Staff move the deadline. Later (or before approval) applies at once;
/// bringing it forward once practices hold their notice needs a reason
/// and a second person ([`approve_deadline_change`]).
pub async fn reschedule_deadline(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
    raw_deadline: &str,
    reason: Option<&str>,
) -> Result<CampaignView, ApiError> {
    let now = hub.now();
    let deadline = parse_deadline(raw_deadline, now)?;
    if deadline - now > hub.config.max_deadline_ahead {
        return Err(ApiError::field("optout_deadline", "is too far ahead"));
    }
    let reason = match reason {
        Some(reason) => Some(check_text("reason", reason, 1, 500, false)?),
        None => None,
    };
    let mut campaign = load(hub, id).await?;
    let previous = campaign.optout_deadline;
    let change = DeadlineChange {
        to: deadline,
        reason: reason.clone().unwrap_or_default(),
        requested_by: caller.clone(),
        requested_at: now,
    };
    let outcome = campaign.request_deadline_change(change, now)?;
    if outcome == DeadlineRequested::AwaitingApproval && reason.is_none() {
        return Err(ApiError::field(
            "reason",
            "is required to bring the deadline forward once practices have been notified",
        ));
    }
    let campaign = hub.store.update_campaign(&campaign).await?;
    let (action, detail) = match outcome {
        DeadlineRequested::Applied => (
            "deadline_changed",
            serde_json::json!({ "from": previous, "to": deadline, "reason": reason }),
        ),
        DeadlineRequested::AwaitingApproval => (
            "deadline_change_requested",
            serde_json::json!({ "from": previous, "to": deadline, "reason": reason }),
        ),
    };
    hub.audit(Some(id), caller.as_str(), action, detail).await?;
    if outcome == DeadlineRequested::Applied {
        arrange_window(hub, &campaign).await?;
    }
    Ok(report::view(hub, &campaign).await?)
}

/// A second person approves a shortened deadline they name (`raw_seen`,
/// the one asked for), no sooner than `min_optout_window` after the last
/// practice notice unless they record an emergency override with a reason.
pub async fn approve_deadline_change(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
    raw_seen: &str,
    emergency_override: bool,
    reason: Option<&str>,
) -> Result<CampaignView, ApiError> {
    let seen = DateTime::parse_from_rfc3339(raw_seen.trim())
        .map_err(|_| {
            ApiError::field(
                "optout_deadline",
                "must be the RFC 3339 deadline waiting for approval",
            )
        })?
        .with_timezone(&Utc);
    let reason = match reason {
        Some(reason) => Some(check_text("reason", reason, 1, 500, false)?),
        None if emergency_override => {
            return Err(ApiError::field(
                "reason",
                "is required with an emergency override",
            ))
        }
        None => None,
    };
    let mut campaign = load(hub, id).await?;
    let previous = campaign.optout_deadline;
    let requested = campaign.deadline_change.clone();
    let notices: Vec<Option<DateTime<Utc>>> = hub
        .store
        .list_participations(id)
        .await?
        .iter()
        .filter(|p| p.state != ParticipationState::OptedOut || p.notice_sent_at.is_some())
        .map(|p| p.notice_sent_at)
        .collect();
    let earliest = earliest_deadline(
        &notices,
        hub.config.min_optout_window,
        campaign.approved_at.unwrap_or(campaign.created_at),
    );
    let now = hub.now();
    let deadline =
        campaign.approve_deadline_change(caller, seen, earliest, emergency_override, now)?;
    let campaign = hub.store.update_campaign(&campaign).await?;
    hub.audit(
        Some(id),
        caller.as_str(),
        "deadline_changed",
        serde_json::json!({
            "from": previous,
            "to": deadline,
            "requested_by": requested.as_ref().map(|r| r.requested_by.as_str()),
            "reason": requested.as_ref().map(|r| r.reason.as_str()),
            "emergency_override": emergency_override,
            "override_reason": reason,
            "earliest_without_override": earliest,
        }),
    )
    .await?;
    tracing::info!(campaign = %id, emergency_override, "deadline brought forward");
    arrange_window(hub, &campaign).await?;
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
