//! Sending one chunk: claim each recipient, send through the provider
//! router, record the outcome; cancel is checked between steps.

use super::router::RouteError;
use super::{Hub, JobError};
use crate::domain::{
    Campaign, CampaignId, CampaignState, ChunkId, ChunkStage, Contact, ExclusionReason,
    OutcomeCounts, Personal, Personalisation, Recipient, RecipientStatus,
};
use crate::ports::{Job, SmsRequest, StatusUpdate, StoreError, MAX_SEND_DELAY};
use futures::StreamExt;

/// The text a recipient gets. Personal when the template uses names.
pub fn render_for(campaign: &Campaign, recipient: &Recipient, practice_name: &str) -> String {
    campaign.template.render(&Personalisation {
        first_name: recipient.first_name.expose(),
        last_name: recipient.last_name.expose(),
        practice_name,
    })
}

pub(crate) async fn practice_name(hub: &Hub, chunk: &ChunkId) -> Result<String, JobError> {
    let Some(ods) = chunk.ods() else {
        return Err(JobError::Malformed(format!("chunk id {chunk}")));
    };
    Ok(hub
        .store
        .get_practice(&ods)
        .await?
        .map(|p| p.name)
        .unwrap_or_else(|| ods.to_string()))
}

/// Whether the campaign still wants messages sent (re-read every step so a
/// cancel stops sending within one step).
async fn still_sending(hub: &Hub, id: &CampaignId) -> Result<bool, JobError> {
    let campaign = hub.campaign(id).await?;
    Ok(campaign.state.allows_sending())
}

pub async fn send_chunk(
    hub: &Hub,
    campaign_id: &CampaignId,
    chunk_id: &ChunkId,
) -> Result<(), JobError> {
    let campaign = hub.campaign(campaign_id).await?;
    if campaign.state == CampaignState::Cancelled && campaign.purged_at.is_none() {
        return super::settle::settle_send(hub, campaign_id, chunk_id, ExclusionReason::Cancelled)
            .await;
    }
    if campaign.state.is_final() {
        return Ok(());
    }
    let Some(record) = hub.store.get_chunk(campaign_id, chunk_id).await? else {
        return Err(JobError::Malformed(format!("no chunk {chunk_id}")));
    };
    if record.send_done {
        return queue_writeback(hub, campaign_id, chunk_id).await;
    }
    let practice_name = practice_name(hub, chunk_id).await?;
    let recipients: Vec<Recipient> = hub
        .patients
        .load_chunk(campaign_id, chunk_id)
        .await?
        .into_iter()
        .filter(Recipient::is_sms)
        .collect();
    let recipients =
        super::standby::decide_standby(hub, campaign_id, chunk_id, recipients, Recipient::is_sms)
            .await?;
    let withheld =
        super::restrictions::withhold_restricted(hub, campaign_id, chunk_id, &recipients).await?;
    let recipients: Vec<Recipient> = recipients
        .into_iter()
        .filter(|r| !withheld.contains(&r.index))
        .collect();

    let mut unfinished = false;
    // The soonest a recipient left unfinished can be settled: a kept claim
    // once it may be reconciled, anything else at once.
    let mut retry_at: Option<chrono::DateTime<chrono::Utc>> = None;
    let started = tokio::time::Instant::now();
    let mut resumed = campaign.paused_until.is_none();
    for step in recipients.chunks(hub.config.send_batch.max(1)) {
        let mut todo: Vec<Recipient> = step.to_vec();
        loop {
            if !still_sending(hub, campaign_id).await? {
                tracing::info!(campaign = %campaign_id, chunk = %chunk_id, "campaign no longer sending; chunk stopped");
                // Cancelled: what this chunk sent is recorded and written back.
                return super::settle::settle_send(
                    hub,
                    campaign_id,
                    chunk_id,
                    ExclusionReason::Cancelled,
                )
                .await;
            }
            let outcome = send_step(hub, &campaign, &todo, &practice_name).await?;
            unfinished |= outcome.unfinished;
            retry_at = earliest(retry_at, outcome.retry_at);
            if outcome.sent > 0 && !resumed {
                resume_sending(hub, campaign_id).await?;
                resumed = true;
            }
            if let Some(until) = outcome.paused {
                return pause_sending(hub, campaign_id, chunk_id, until).await;
            }
            if outcome.deferred.is_empty() {
                break;
            }
            // Not given to any provider (no slot in time, or 429s): their
            // claims are released, so try them again here while this job
            // has time, else through the queue.
            if started.elapsed() > hub.config.send_deadline * DEFERRED_ROUNDS {
                unfinished = true;
                retry_at = earliest(retry_at, Some(hub.now()));
                break;
            }
            todo.retain(|r| outcome.deferred.contains(&r.index));
            for recipient in &mut todo {
                recipient.status = RecipientStatus::Pending;
            }
        }
    }
    if unfinished {
        return send_again_later(hub, campaign_id, chunk_id, retry_at).await;
    }

    // Count from the stored statuses, so a redelivered job counts the same.
    let stored = hub.patients.load_chunk(campaign_id, chunk_id).await?;
    let mut counts = OutcomeCounts::default();
    for recipient in stored.iter().filter(|r| r.is_sms()) {
        match recipient.status {
            RecipientStatus::Sent { .. } => counts.sent += 1,
            RecipientStatus::Rejected => counts.exclude(ExclusionReason::ProviderRejected),
            RecipientStatus::Withheld { reason } => counts.exclude(reason),
            // Claimed by another worker since we loaded the chunk.
            _ => return send_again_later(hub, campaign_id, chunk_id, Some(hub.now())).await,
        }
    }
    tracing::info!(campaign = %campaign_id, chunk = %chunk_id, sent = counts.sent, rejected = counts.excluded_total(), "chunk sent");
    finish_send_stage(hub, campaign_id, chunk_id, &counts).await
}

/// Completes a chunk's send stage with its counts (once, however often it
/// is called), queues its write-back, and applies the campaign's progress
/// if this call completed the stage.
pub(crate) async fn finish_send_stage(
    hub: &Hub,
    campaign_id: &CampaignId,
    chunk_id: &ChunkId,
    counts: &OutcomeCounts,
) -> Result<(), JobError> {
    let completed = hub
        .store
        .complete_chunk_stage(campaign_id, chunk_id, ChunkStage::Send, counts)
        .await?;
    queue_writeback(hub, campaign_id, chunk_id).await?;
    if let Some((_, progress)) = completed {
        hub.after_progress(campaign_id, progress).await?;
    }
    Ok(())
}

/// How many message deadlines one send job spends retrying texts that no
/// provider took before it hands the chunk back to the queue.
const DEFERRED_ROUNDS: u32 = 5;

fn earliest(
    a: Option<chrono::DateTime<chrono::Utc>>,
    b: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Some recipients could not be settled yet (a provider outage left claims
/// that may hide accepted texts, or another worker holds them): the chunk
/// comes back as a new, delayed message when the soonest of them can be
/// (a kept claim once `stale_after` lets it be reconciled, at most
/// `MAX_SEND_DELAY` ahead, at least one message deadline), rather than
/// failing. Failing would spend the job's receives while claims are too
/// young to reconcile, and dead-letter it during a long provider outage.
async fn send_again_later(
    hub: &Hub,
    campaign_id: &CampaignId,
    chunk_id: &ChunkId,
    retry_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), JobError> {
    let wait = retry_at
        .map(|at| (at - hub.now()).to_std().unwrap_or_default())
        .unwrap_or_default();
    let delay = wait.clamp(hub.config.send_deadline.min(MAX_SEND_DELAY), MAX_SEND_DELAY);
    tracing::info!(campaign = %campaign_id, chunk = %chunk_id, delay_s = delay.as_secs(), "chunk not finished; sent again later");
    queue_send_later(hub, campaign_id, chunk_id, delay).await
}

/// The chunk's send job as a new message, due after `delay`: it does not
/// count towards the dead-lettering of the one being handled.
async fn queue_send_later(
    hub: &Hub,
    campaign_id: &CampaignId,
    chunk_id: &ChunkId,
    delay: std::time::Duration,
) -> Result<(), JobError> {
    hub.queue
        .send_later(
            &[Job::Send {
                campaign: campaign_id.clone(),
                chunk: chunk_id.clone(),
            }],
            delay,
        )
        .await?;
    Ok(())
}

/// Every provider key's day is full: the campaign shows `paused_until` and
/// the chunk comes back as a new message when capacity may have returned
/// (the providers' day boundary, or sooner to notice a key added), never
/// towards its dead-lettering.
async fn pause_sending(
    hub: &Hub,
    campaign_id: &CampaignId,
    chunk_id: &ChunkId,
    until: chrono::DateTime<chrono::Utc>,
) -> Result<(), JobError> {
    let marked = set_paused(hub, campaign_id, Some(until)).await?;
    if marked {
        tracing::warn!(campaign = %campaign_id, %until, "every SMS provider key is at its daily limit: sending paused");
        hub.audit(
            Some(campaign_id),
            "hub",
            "sending_paused",
            serde_json::json!({ "until": until }),
        )
        .await?;
    }
    let delay = (until - hub.now())
        .to_std()
        .unwrap_or_default()
        .clamp(std::time::Duration::from_secs(1), MAX_SEND_DELAY);
    queue_send_later(hub, campaign_id, chunk_id, delay).await
}

/// A text went again: the campaign is no longer paused.
async fn resume_sending(hub: &Hub, campaign_id: &CampaignId) -> Result<(), JobError> {
    if set_paused(hub, campaign_id, None).await? {
        tracing::info!(campaign = %campaign_id, "sending resumed");
        hub.audit(
            Some(campaign_id),
            "hub",
            "sending_resumed",
            serde_json::json!({}),
        )
        .await?;
    }
    Ok(())
}

/// Sets the campaign's `paused_until` (compare-and-set, re-read on a
/// conflict); returns whether this call changed it.
async fn set_paused(
    hub: &Hub,
    campaign_id: &CampaignId,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<bool, JobError> {
    for _ in 0..10 {
        let mut campaign = hub.campaign(campaign_id).await?;
        if campaign.paused_until == until || !campaign.state.allows_sending() {
            return Ok(false);
        }
        campaign.paused_until = until;
        match hub.store.update_campaign(&campaign).await {
            Ok(_) => return Ok(true),
            Err(StoreError::Conflict(_)) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(JobError::retry(
        "campaign kept changing while pausing or resuming",
    ))
}

pub(crate) async fn queue_writeback(
    hub: &Hub,
    campaign: &CampaignId,
    chunk: &ChunkId,
) -> Result<(), JobError> {
    hub.queue
        .send(&[Job::Writeback {
            campaign: campaign.clone(),
            chunk: chunk.clone(),
        }])
        .await?;
    Ok(())
}

/// What one step left behind.
#[derive(Debug, Default)]
struct StepOutcome {
    /// Texts accepted by a provider.
    sent: usize,
    /// Some recipients are left for a later delivery of the job.
    unfinished: bool,
    /// The soonest those can be settled (see `send_again_later`).
    retry_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Not given to any provider; claims released: try again.
    deferred: Vec<u32>,
    /// Every provider key's day is full until then.
    paused: Option<chrono::DateTime<chrono::Utc>>,
}

/// Sends one step of recipients.
async fn send_step(
    hub: &Hub,
    campaign: &Campaign,
    step: &[Recipient],
    practice_name: &str,
) -> Result<StepOutcome, JobError> {
    let now = hub.now();
    let Some(chunk) = step.first().map(|r| r.chunk.clone()) else {
        return Ok(StepOutcome::default());
    };
    let mut outcome = StepOutcome::default();
    let mut updates = Vec::new();
    let mut unfinished = false;
    let mut retry_at = None;
    // A kept claim is reconciled once it is stale (found at a provider
    // sooner, it is recorded sent then).
    let reconcilable = |claimed_at: chrono::DateTime<chrono::Utc>| {
        Some((claimed_at + hub.config.stale_after).max(now))
    };

    // A claim left by a worker that died (or whose response was lost) is
    // reconciled with the providers, never blindly re-sent.
    let mut to_send: Vec<&Recipient> = Vec::new();
    let mut pending = Vec::new();
    for recipient in step {
        match &recipient.status {
            RecipientStatus::Pending => pending.push(recipient.index),
            RecipientStatus::Claimed { at } => {
                let reference = recipient.reference(&campaign.id);
                match hub.sms.find_by_reference(&reference).await {
                    Ok(Some((provider, record))) => updates.push(StatusUpdate {
                        chunk: chunk.clone(),
                        index: recipient.index,
                        status: RecipientStatus::Sent {
                            provider,
                            provider_id: record.provider_id,
                            at: now,
                        },
                    }),
                    Ok(None) if now - *at >= hub.config.stale_after => {
                        // Not at any provider and the claim is long dead:
                        // release it (only if nobody has since) and claim
                        // it again below.
                        if hub
                            .patients
                            .release_claim(&campaign.id, &chunk, recipient.index, *at)
                            .await?
                        {
                            pending.push(recipient.index);
                        } else {
                            unfinished = true;
                            retry_at = earliest(retry_at, Some(now));
                        }
                    }
                    // Maybe still in flight at another worker: later.
                    Ok(None) | Err(_) => {
                        unfinished = true;
                        retry_at = earliest(retry_at, reconcilable(*at));
                    }
                }
            }
            _ => {}
        }
    }
    let claimed = if pending.is_empty() {
        Vec::new()
    } else {
        hub.patients
            .claim(&campaign.id, &chunk, &pending, now)
            .await?
    };
    for recipient in step {
        if claimed.contains(&recipient.index) {
            to_send.push(recipient);
        }
    }
    if claimed.len() < pending.len() {
        // Someone else holds those claims now.
        unfinished = true;
        retry_at = earliest(retry_at, Some(now));
    }

    type Outcome = (u32, Result<(String, crate::ports::Accepted), RouteError>);
    let sends: Vec<futures::future::BoxFuture<'_, Outcome>> = to_send
        .into_iter()
        .map(|recipient| -> futures::future::BoxFuture<'_, Outcome> {
            Box::pin(async move {
                let Contact::Sms { mobile } = &recipient.contact else {
                    unreachable!("only SMS recipients reach the send step");
                };
                let body = render_for(campaign, recipient, practice_name);
                let fragments = crate::domain::measure(&body).fragments;
                let request = SmsRequest {
                    to: mobile.clone(),
                    body: Personal::new(body),
                    reference: recipient.reference(&campaign.id),
                    fragments,
                };
                (recipient.index, hub.sms.send(&request).await)
            })
        })
        .collect();
    let results: Vec<Outcome> = futures::stream::iter(sends)
        .buffer_unordered(hub.config.send_concurrency.max(1))
        .collect()
        .await;

    let mut unauthorised = false;
    for (index, result) in results {
        let status = match result {
            Ok((provider, accepted)) => {
                outcome.sent += 1;
                RecipientStatus::Sent {
                    provider,
                    provider_id: accepted.provider_id,
                    at: hub.now(),
                }
            }
            Err(RouteError::Rejected { .. }) => RecipientStatus::Rejected,
            Err(error @ (RouteError::NotSent(_) | RouteError::Paused { .. })) => {
                // No provider was given it: release our own claim at once.
                if let RouteError::Paused { until } = error {
                    outcome.paused = Some(until);
                }
                if hub
                    .patients
                    .release_claim(&campaign.id, &chunk, index, now)
                    .await?
                {
                    outcome.deferred.push(index);
                } else {
                    tracing::warn!(campaign = %campaign.id, chunk = %chunk, index, "claim changed before its release");
                    unfinished = true;
                    retry_at = earliest(retry_at, Some(now));
                }
                continue;
            }
            Err(error) => {
                tracing::info!(campaign = %campaign.id, chunk = %chunk, index, %error, "text left claimed for reconciliation");
                unauthorised |= matches!(error, RouteError::Unauthorised);
                unfinished = true;
                retry_at = earliest(retry_at, reconcilable(now));
                // A timeout or 5xx may hide an accepted message: keep the
                // claim, so the redelivery reconciles it with the providers
                // before anything is sent again.
                continue;
            }
        };
        updates.push(StatusUpdate {
            chunk: chunk.clone(),
            index,
            status,
        });
    }
    hub.patients.set_status(&campaign.id, &updates).await?;
    if unauthorised {
        tracing::error!(campaign = %campaign.id, chunk = %chunk, "every SMS provider refused our credentials: sending stopped");
        return Err(JobError::retry(
            "every SMS provider refused our credentials",
        ));
    }
    outcome.unfinished = unfinished;
    outcome.retry_at = retry_at;
    Ok(outcome)
}
