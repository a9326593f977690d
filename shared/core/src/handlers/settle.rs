//! A cancelled campaign keeps its record: each chunk's send and letters
//! stages are settled from what was actually sent before the cancel (a
//! claim is looked up at the providers, never guessed), the rest counted
//! as `cancelled`, the texts sent are written back to the GP record, and
//! only then is the patient data purged (`Hub::after_progress`).

use super::send::queue_writeback;
use super::{Hub, JobError};
use crate::domain::{
    CampaignId, ChunkId, ChunkStage, ExclusionReason, OutcomeCounts, RecipientStatus,
};
use crate::ports::{Job, StatusUpdate};

/// What a recipient of a cancelled campaign's chunk came to.
enum Settled {
    Counted,
    /// A claim still in flight somewhere: ask again later.
    Unknown,
}

/// The send stage of a cancelled campaign's chunk.
pub async fn settle_send(
    hub: &Hub,
    campaign_id: &CampaignId,
    chunk_id: &ChunkId,
    unsent: ExclusionReason,
) -> Result<(), JobError> {
    let Some(record) = hub.store.get_chunk(campaign_id, chunk_id).await? else {
        return Err(JobError::Malformed(format!("no chunk {chunk_id}")));
    };
    if !record.send_done {
        let now = hub.now();
        let mut counts = OutcomeCounts::default();
        let mut updates = Vec::new();
        let mut outcome = Settled::Counted;
        let recipients = hub.patients.load_chunk(campaign_id, chunk_id).await?;
        for recipient in recipients.iter().filter(|r| r.is_sms()) {
            match &recipient.status {
                RecipientStatus::Sent { .. } => counts.sent += 1,
                RecipientStatus::Rejected => counts.exclude(ExclusionReason::ProviderRejected),
                RecipientStatus::Claimed { at } => {
                    let reference = recipient.reference(campaign_id);
                    match hub.sms.find_by_reference(&reference).await {
                        Ok(Some((provider, found))) => {
                            counts.sent += 1;
                            updates.push(StatusUpdate {
                                chunk: chunk_id.clone(),
                                index: recipient.index,
                                status: RecipientStatus::Sent {
                                    provider,
                                    provider_id: found.provider_id,
                                    at: now,
                                },
                            });
                        }
                        Ok(None) if now - *at >= hub.config.stale_after => counts.exclude(unsent),
                        Ok(None) | Err(_) => outcome = Settled::Unknown,
                    }
                }
                _ => counts.exclude(unsent),
            }
        }
        // Texts found at a provider are recorded, so they are written back.
        hub.patients.set_status(campaign_id, &updates).await?;
        if let Settled::Unknown = outcome {
            return Err(JobError::retry(format!(
                "chunk {chunk_id}: a cancelled send is still in flight"
            )));
        }
        tracing::info!(campaign = %campaign_id, chunk = %chunk_id, sent = counts.sent, reason = unsent.as_str(), "chunk settled");
        return super::send::finish_send_stage(hub, campaign_id, chunk_id, &counts).await;
    }
    super::send::queue_writeback(hub, campaign_id, chunk_id).await
}

/// The letters stage of a cancelled (or given-up) campaign's chunk. A claim
/// is looked up at the letter provider: found, it is recorded sent (and
/// written back); not found and stale, counted as `unsent`; otherwise it
/// may still be in flight and is asked about again later.
pub async fn settle_letters(
    hub: &Hub,
    campaign_id: &CampaignId,
    chunk_id: &ChunkId,
    unsent: ExclusionReason,
) -> Result<(), JobError> {
    let Some(record) = hub.store.get_chunk(campaign_id, chunk_id).await? else {
        return Err(JobError::Malformed(format!("no chunk {chunk_id}")));
    };
    if record.letters_done {
        return Ok(());
    }
    let now = hub.now();
    let mut counts = OutcomeCounts::default();
    let mut updates = Vec::new();
    let mut outcome = Settled::Counted;
    let recipients = hub.patients.load_chunk(campaign_id, chunk_id).await?;
    for recipient in recipients.iter().filter(|r| !r.is_sms()) {
        match &recipient.status {
            RecipientStatus::LetterSent { .. } => counts.letters += 1,
            RecipientStatus::Rejected => counts.exclude(ExclusionReason::NoPostalAddress),
            RecipientStatus::Claimed { at } => {
                let reference = recipient.reference(campaign_id);
                match hub.letters.find_letter(&reference).await {
                    Ok(Some(found)) => {
                        counts.letters += 1;
                        updates.push(super::letters::letter_sent(
                            chunk_id,
                            recipient.index,
                            found.provider_id,
                            now,
                        ));
                    }
                    Ok(None) if now - *at >= hub.config.stale_after => counts.exclude(unsent),
                    Ok(None) | Err(_) => outcome = Settled::Unknown,
                }
            }
            _ => counts.exclude(unsent),
        }
    }
    // Letters found at the provider are recorded, so they are written back.
    hub.patients.set_status(campaign_id, &updates).await?;
    if let Settled::Unknown = outcome {
        return Err(JobError::retry(format!(
            "chunk {chunk_id}: a cancelled letter is still in flight"
        )));
    }
    if let Some((_, progress)) = hub
        .store
        .complete_chunk_stage(campaign_id, chunk_id, ChunkStage::Letters, &counts)
        .await?
    {
        // Whichever stage finishes last queues the write-back.
        queue_writeback(hub, campaign_id, chunk_id).await?;
        hub.after_progress(campaign_id, progress).await?;
    }
    Ok(())
}

/// After a cancel: every chunk not yet final is settled through its
/// queues (the send and letters jobs settle a cancelled campaign's chunk),
/// and with none left the purge is queued at once.
pub async fn settle_campaign(hub: &Hub, campaign_id: &CampaignId) -> Result<(), JobError> {
    let mut jobs = unfinished_chunk_jobs(hub, campaign_id).await?;
    if jobs.is_empty() {
        jobs.push(Job::Purge {
            campaign: campaign_id.clone(),
        });
    }
    hub.queue.send(&jobs).await?;
    Ok(())
}

/// The jobs that finish every chunk not yet final (each is idempotent).
pub async fn unfinished_chunk_jobs(
    hub: &Hub,
    campaign_id: &CampaignId,
) -> Result<Vec<Job>, JobError> {
    let chunks = hub.store.list_chunks(campaign_id).await?;
    let mut jobs = Vec::new();
    for chunk in chunks.iter().filter(|c| !c.is_final()) {
        if !chunk.send_done {
            jobs.push(Job::Send {
                campaign: campaign_id.clone(),
                chunk: chunk.chunk.clone(),
            });
        } else if !chunk.writeback_done {
            jobs.push(Job::Writeback {
                campaign: campaign_id.clone(),
                chunk: chunk.chunk.clone(),
            });
        }
        if !chunk.letters_done {
            jobs.push(Job::Letters {
                campaign: campaign_id.clone(),
                chunk: chunk.chunk.clone(),
            });
        }
    }
    Ok(jobs)
}
