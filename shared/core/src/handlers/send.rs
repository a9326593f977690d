//! Sending one chunk: claim each recipient, send through the provider
//! router, record the outcome; cancel is checked between steps.

use super::router::RouteError;
use super::{Hub, JobError};
use crate::domain::{
    Campaign, CampaignId, CampaignState, ChunkId, ChunkStage, Contact, ExclusionReason,
    OutcomeCounts, Personal, Personalisation, Recipient, RecipientStatus,
};
use crate::ports::{Job, SmsRequest, StatusUpdate};
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
    let withheld =
        super::restrictions::withhold_restricted(hub, campaign_id, chunk_id, &recipients).await?;
    let recipients: Vec<Recipient> = recipients
        .into_iter()
        .filter(|r| !withheld.contains(&r.index))
        .collect();

    let mut unfinished = false;
    for step in recipients.chunks(hub.config.send_batch.max(1)) {
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
        unfinished |= send_step(hub, &campaign, step, &practice_name).await?;
    }
    if unfinished {
        return Err(JobError::retry(format!(
            "chunk {chunk_id}: some messages could not be sent yet"
        )));
    }

    // Count from the stored statuses, so a redelivered job counts the same.
    let stored = hub.patients.load_chunk(campaign_id, chunk_id).await?;
    let mut counts = OutcomeCounts::default();
    for recipient in stored.iter().filter(|r| r.is_sms()) {
        match recipient.status {
            RecipientStatus::Sent { .. } => counts.sent += 1,
            RecipientStatus::Rejected => counts.exclude(ExclusionReason::ProviderRejected),
            RecipientStatus::Withheld { reason } => counts.exclude(reason),
            _ => {
                return Err(JobError::retry(format!(
                    "chunk {chunk_id} has recipients still in flight"
                )))
            }
        }
    }
    tracing::info!(campaign = %campaign_id, chunk = %chunk_id, sent = counts.sent, rejected = counts.excluded_total(), "chunk sent");
    if let Some((_, progress)) = hub
        .store
        .complete_chunk_stage(campaign_id, chunk_id, ChunkStage::Send, &counts)
        .await?
    {
        queue_writeback(hub, campaign_id, chunk_id).await?;
        hub.after_progress(campaign_id, progress).await?;
    } else {
        queue_writeback(hub, campaign_id, chunk_id).await?;
    }
    Ok(())
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

/// Sends one step of recipients; returns whether some are left to retry.
async fn send_step(
    hub: &Hub,
    campaign: &Campaign,
    step: &[Recipient],
    practice_name: &str,
) -> Result<bool, JobError> {
    let now = hub.now();
    let Some(chunk) = step.first().map(|r| r.chunk.clone()) else {
        return Ok(false);
    };
    let mut updates = Vec::new();
    let mut unfinished = false;

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
                        }
                    }
                    // Maybe still in flight at another worker: later.
                    Ok(None) | Err(_) => unfinished = true,
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
            Ok((provider, accepted)) => RecipientStatus::Sent {
                provider,
                provider_id: accepted.provider_id,
                at: hub.now(),
            },
            Err(RouteError::Rejected { .. }) => RecipientStatus::Rejected,
            Err(error) => {
                unauthorised |= matches!(error, RouteError::Unauthorised);
                unfinished = true;
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
    Ok(unfinished)
}
