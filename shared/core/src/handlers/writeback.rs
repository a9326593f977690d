//! Write-back: record in each patient's GP record, by NHS number, that the
//! message was sent, by text or by letter (MPS & MDU guidance on patient
//! communications).

use super::send::{practice_name, render_for};
use super::{Hub, JobError};
use crate::domain::{CampaignId, ChunkId, ChunkStage, OutcomeCounts, Personal, RecipientStatus};
use crate::ports::{Medium, WritebackEntry, WritebackResult};

/// Attempts before a failing entry is reported instead of retried.
const MAX_WRITEBACK_ATTEMPTS: u32 = 5;

pub async fn write_back_chunk(
    hub: &Hub,
    campaign_id: &CampaignId,
    chunk_id: &ChunkId,
    receive_count: u32,
) -> Result<(), JobError> {
    let campaign = hub.campaign(campaign_id).await?;
    let Some(record) = hub.store.get_chunk(campaign_id, chunk_id).await? else {
        return Err(JobError::Malformed(format!("no chunk {chunk_id}")));
    };
    if record.writeback_done || campaign.purged_at.is_some() {
        return Ok(());
    }
    // Texts and letters are written back together, once both are final;
    // whichever stage finishes last queues this job again.
    if !(record.send_done && record.letters_done) {
        tracing::debug!(campaign = %campaign_id, chunk = %chunk_id, "write-back waits for the chunk's other stage");
        return Ok(());
    }
    let practice =
        hub.store.get_practice(&record.ods).await?.ok_or_else(|| {
            JobError::Malformed(format!("practice {} not in registry", record.ods))
        })?;
    let practice_name = practice_name(hub, chunk_id).await?;
    let recipients = hub.patients.load_chunk(campaign_id, chunk_id).await?;
    let already = recipients.iter().filter(|r| r.written_back).count() as u64;
    let due: Vec<_> = recipients
        .iter()
        .filter(|r| !r.written_back)
        .filter_map(|r| match &r.status {
            RecipientStatus::Sent { at, .. } => Some(WritebackEntry {
                nhs_number: r.nhs_number.clone(),
                reference: r.reference(campaign_id),
                sent_at: *at,
                message: Personal::new(render_for(&campaign, r, &practice_name)),
                medium: Medium::Sms,
            }),
            RecipientStatus::LetterSent { at, .. } => Some(WritebackEntry {
                nhs_number: r.nhs_number.clone(),
                reference: r.reference(campaign_id),
                sent_at: *at,
                message: Personal::new(render_for(&campaign, r, &practice_name)),
                medium: Medium::Letter,
            }),
            _ => None,
        })
        .collect();
    let mut recorded = Vec::new();
    let mut failed = 0u64;
    let mut rejected = 0u64;
    if !due.is_empty() {
        match hub.gp.write_back(&practice, &due).await {
            Ok(results) => {
                for (entry, result) in due.iter().zip(results) {
                    match result {
                        WritebackResult::Recorded => recorded.push(entry.reference.clone()),
                        WritebackResult::Failed => failed += 1,
                        WritebackResult::Rejected => rejected += 1,
                    }
                }
            }
            Err(error) if receive_count < MAX_WRITEBACK_ATTEMPTS => {
                return Err(JobError::retry_because(
                    format!("write-back to {}", practice.ods),
                    error,
                ))
            }
            Err(error) => {
                tracing::error!(campaign = %campaign_id, chunk = %chunk_id, %error, "write-back failed for good");
                failed = due.len() as u64;
            }
        }
    }
    let indexes: Vec<u32> = recipients
        .iter()
        .filter(|r| recorded.contains(&r.reference(campaign_id)))
        .map(|r| r.index)
        .collect();
    hub.patients
        .mark_written_back(campaign_id, chunk_id, &indexes)
        .await?;
    if failed > 0 && receive_count < MAX_WRITEBACK_ATTEMPTS {
        return Err(JobError::retry(format!(
            "chunk {chunk_id}: {failed} write-backs to retry"
        )));
    }
    let counts = OutcomeCounts {
        written_back: already + indexes.len() as u64,
        writeback_failed: failed + rejected,
        ..Default::default()
    };
    if failed + rejected > 0 {
        tracing::warn!(campaign = %campaign_id, chunk = %chunk_id, failed, rejected, "write-backs reported as failed");
    }
    if let Some((_, progress)) = hub
        .store
        .complete_chunk_stage(campaign_id, chunk_id, ChunkStage::Writeback, &counts)
        .await?
    {
        hub.after_progress(campaign_id, progress).await?;
    }
    Ok(())
}
