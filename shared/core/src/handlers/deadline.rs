//! The opt-out deadline: freeze the participants (practices with a signed
//! DSA that did not opt out) and queue one extraction per practice.

use super::{Hub, JobError};
use crate::domain::{CampaignId, CampaignState, ParticipationState};
use crate::ports::{Job, StoreError};

/// Schedules fire with one-minute precision; a little early is still on time.
const EARLY_TOLERANCE_SECONDS: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineOutcome {
    Frozen {
        practices: usize,
    },
    /// The deadline was moved later; the new schedule will fire.
    NotYet,
    /// Another invocation froze it, or the campaign is past this point.
    AlreadyDone,
}

/// Freezes tried before the deadline job fails (to be retried).
const FREEZE_ATTEMPTS: u32 = 5;

pub async fn fire_deadline(hub: &Hub, id: &CampaignId) -> Result<DeadlineOutcome, JobError> {
    let mut campaign = hub.campaign(id).await?;
    let now = hub.now();
    match campaign.state {
        CampaignState::OptOutWindow => {}
        CampaignState::Extracting if !campaign.extraction_jobs_queued => {
            // A frozen campaign whose jobs were never queued: the invocation
            // that froze it died. Take over once it is clearly gone.
            if now - campaign.state_changed_at >= hub.config.stale_after {
                let participations = hub.store.list_participations(id).await?;
                queue_extractions(hub, id, &participations).await?;
            }
            return Ok(DeadlineOutcome::AlreadyDone);
        }
        _ => return Ok(DeadlineOutcome::AlreadyDone),
    }
    if (campaign.optout_deadline - now).num_seconds() > EARLY_TOLERANCE_SECONDS {
        return Ok(DeadlineOutcome::NotYet);
    }

    // A conflict means the campaign or a participation changed under the
    // freeze: another invocation froze it, or a notice or an opt-out was
    // recorded meanwhile. Read again; only the first case ends here.
    let mut attempt = 0;
    let (stored, frozen, participations) = loop {
        let mut participations = hub.store.list_participations(id).await?;
        let mut frozen = Vec::new();
        // A practice frozen by an earlier attempt that died before the
        // campaign moved on (on DynamoDB a freeze of more than 99 practices
        // takes several transactions) is still part of this freeze.
        for participation in participations.iter_mut() {
            if participation.freeze() {
                frozen.push(participation.clone());
            }
        }
        let mut freezing = campaign.clone();
        freezing.begin_extraction(frozen.len() as u64, now)?;
        match hub.store.freeze_participants(&freezing, &frozen).await {
            Ok(stored) => break (stored, frozen, participations),
            Err(StoreError::Conflict(what)) => {
                attempt += 1;
                campaign = hub.campaign(id).await?;
                if campaign.state != CampaignState::OptOutWindow {
                    return Ok(DeadlineOutcome::AlreadyDone);
                }
                if (campaign.optout_deadline - now).num_seconds() > EARLY_TOLERANCE_SECONDS {
                    return Ok(DeadlineOutcome::NotYet);
                }
                if attempt >= FREEZE_ATTEMPTS {
                    return Err(JobError::retry(format!(
                        "deadline of {id}: the freeze kept meeting changes ({what})"
                    )));
                }
            }
            Err(other) => return Err(other.into()),
        }
    };
    let opted_out = participations
        .iter()
        .filter(|p| p.state == ParticipationState::OptedOut)
        .count();
    tracing::info!(campaign = %id, practices = frozen.len(), opted_out, "deadline: participants frozen");
    hub.audit(
        Some(id),
        "scheduler",
        "deadline_reached",
        serde_json::json!({
            "participating": frozen.iter().map(|p| p.ods.as_str()).collect::<Vec<_>>(),
            "opted_out": opted_out,
        }),
    )
    .await?;
    queue_extractions(hub, id, &frozen).await?;
    hub.after_progress(id, stored.progress).await?;
    Ok(DeadlineOutcome::Frozen {
        practices: frozen.len(),
    })
}

async fn queue_extractions(
    hub: &Hub,
    id: &CampaignId,
    participations: &[crate::domain::Participation],
) -> Result<(), JobError> {
    let jobs: Vec<Job> = participations
        .iter()
        .filter(|p| p.state == ParticipationState::Participating)
        .map(|p| Job::Extract {
            campaign: id.clone(),
            ods: p.ods.clone(),
        })
        .collect();
    hub.queue.send(&jobs).await?;
    hub.update_campaign_with(id, |c| {
        let change = !c.extraction_jobs_queued;
        c.extraction_jobs_queued = true;
        change
    })
    .await?;
    Ok(())
}

impl From<crate::domain::LifecycleError> for JobError {
    fn from(error: crate::domain::LifecycleError) -> Self {
        JobError::Malformed(error.to_string())
    }
}
