//! Practice notices: each participating practice is emailed the message,
//! the target, the deadline and a signed one-click opt-out link.

use super::optout_token::{self, OptOutClaim};
use super::{Hub, JobError};
use crate::domain::{
    plan::human_duration, CampaignId, CampaignState, OdsCode, Participation, Target,
};
use crate::ports::{EmailRequest, ProviderError, StoreError};

pub fn describe_target(target: &Target) -> String {
    if target.is_everyone() {
        return "all registered patients".into();
    }
    let mut parts = Vec::new();
    if let Some(band) = target.age {
        parts.push(match (band.min, band.max) {
            (Some(min), Some(max)) => format!("aged {min} to {max}"),
            (Some(min), None) => format!("aged {min} and over"),
            (None, Some(max)) => format!("aged {max} and under"),
            (None, None) => "of any age".into(),
        });
    }
    if !target.postcodes.is_empty() {
        let areas: Vec<String> = target.postcodes.iter().cloned().map(String::from).collect();
        parts.push(format!("living in {}", areas.join(", ")));
    }
    if !target.practices.is_empty() {
        parts.push(format!("at {} selected practices", target.practices.len()));
    }
    format!("registered patients {}", parts.join(" and "))
}

pub async fn send_notice(
    hub: &Hub,
    campaign_id: &CampaignId,
    ods: &OdsCode,
) -> Result<(), JobError> {
    let campaign = hub.campaign(campaign_id).await?;
    let Some(participation) = hub.store.get_participation(campaign_id, ods).await? else {
        return Err(JobError::Malformed(format!(
            "{ods} is not notified of {campaign_id}"
        )));
    };
    // A second notice only tells of a deadline brought forward while the
    // window is still open.
    let update = participation.notice_sent_at.is_some();
    if !participation.needs_notice(campaign.optout_deadline)
        || campaign.state.is_final()
        || (update && campaign.state != CampaignState::OptOutWindow)
    {
        return Ok(());
    }
    let practice = hub
        .store
        .get_practice(ods)
        .await?
        .ok_or_else(|| JobError::Malformed(format!("practice {ods} not in registry")))?;
    let token = optout_token::issue(
        &hub.optout_key,
        &OptOutClaim {
            campaign: campaign_id.clone(),
            ods: ods.clone(),
            // The link outlives a deadline moved later (the opt-out itself
            // checks the deadline in force), up to the furthest it may move.
            expires: campaign.optout_deadline + hub.config.max_deadline_ahead,
        },
    );
    let link = format!(
        "{}/optout?token={token}",
        hub.config.optout_base_url.trim_end_matches('/')
    );
    let until = campaign.optout_deadline - hub.now();
    let brought_forward = if update {
        "The opt-out deadline of this campaign has been brought forward: the new deadline \
         below replaces the one in our earlier email.\n\n"
    } else {
        ""
    };
    let body = format!(
        "Dear {practice},\n\n{brought_forward}\
         The regional SMS Engagement Hub will send an emergency text message to {target} \
         of your practice.\n\n\
         Campaign: {name}\nReason: {justification}\n\n\
         The message (as a patient will see it):\n\n{example}\n\n\
         If your practice does not want its patients to get this message, opt out before \
         {deadline} (in about {left}) with this link:\n{link}\n\
         or reply to this email asking to opt out.\n\n\
         Patients whose record at your practice says no SMS will not be sent it. \
         Each message sent will be recorded in the patient's record.",
        practice = practice.name,
        target = describe_target(&campaign.target),
        name = campaign.name,
        justification = campaign.justification,
        example = campaign.template.example(),
        deadline = campaign.optout_deadline.format("%H:%M on %d %B %Y (UTC)"),
        left = human_duration(until.to_std().unwrap_or_default()),
    );
    let request = EmailRequest {
        to: practice.notice_email.clone(),
        subject: if update {
            format!(
                "Emergency SMS to your patients: {} — opt-out deadline brought forward",
                campaign.name
            )
        } else {
            format!(
                "Emergency SMS to your patients: {} — opt-out window",
                campaign.name
            )
        },
        body,
        reference: if update {
            format!(
                "notice.{campaign_id}.{ods}.{}",
                campaign.optout_deadline.timestamp()
            )
        } else {
            format!("notice.{campaign_id}.{ods}")
        },
    };
    match hub.email.send_email(&request).await {
        Ok(_) => {}
        Err(ProviderError::Rejected(reason)) => {
            tracing::error!(campaign = %campaign_id, ods = %ods, reason, "practice notice address rejected");
            hub.audit(
                Some(campaign_id),
                "hub",
                "practice_notice_rejected",
                serde_json::json!({ "ods": ods, "reason": reason }),
            )
            .await?;
            return Ok(());
        }
        Err(error) => return Err(JobError::retry_because(format!("notice to {ods}"), error)),
    }
    record_notice(hub, participation, campaign.optout_deadline).await?;
    hub.audit(
        Some(campaign_id),
        "hub",
        if update {
            "practice_notified_of_earlier_deadline"
        } else {
            "practice_notified"
        },
        serde_json::json!({ "ods": ods, "optout_deadline": campaign.optout_deadline }),
    )
    .await?;
    Ok(())
}

/// Records that the practice was sent its notice naming `deadline`
/// (re-read and written again if the participation changed meanwhile, so
/// the notice is not sent again).
async fn record_notice(
    hub: &Hub,
    mut participation: Participation,
    deadline: chrono::DateTime<chrono::Utc>,
) -> Result<(), JobError> {
    let now = hub.now();
    for _ in 0..5 {
        participation.notice_sent_at.get_or_insert(now);
        participation.notice_deadline = Some(deadline);
        match hub.store.update_participation(&participation).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict(_)) => {
                let Some(current) = hub
                    .store
                    .get_participation(&participation.campaign, &participation.ods)
                    .await?
                else {
                    return Ok(());
                };
                participation = current;
            }
            Err(other) => return Err(other.into()),
        }
    }
    Err(JobError::retry(
        "the participation kept changing while its notice was recorded",
    ))
}
