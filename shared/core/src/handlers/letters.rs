//! Postal fallback for patients with no usable mobile: the message
//! personalised as a text would be, addressed by name, and written back to
//! the GP record like a text.

use super::{Hub, JobError};
use crate::domain::{
    CampaignId, CampaignState, ChunkId, ChunkStage, Contact, OutcomeCounts, Personal,
    RecipientStatus,
};
use crate::ports::{LetterRequest, ProviderError, StatusUpdate};

pub async fn send_letters(
    hub: &Hub,
    campaign_id: &CampaignId,
    chunk_id: &ChunkId,
) -> Result<(), JobError> {
    let campaign = hub.campaign(campaign_id).await?;
    if campaign.state == CampaignState::Cancelled && campaign.purged_at.is_none() {
        return super::settle::settle_letters(
            hub,
            campaign_id,
            chunk_id,
            crate::domain::ExclusionReason::Cancelled,
        )
        .await;
    }
    if campaign.state.is_final() {
        return Ok(());
    }
    let Some(record) = hub.store.get_chunk(campaign_id, chunk_id).await? else {
        return Err(JobError::Malformed(format!("no chunk {chunk_id}")));
    };
    if record.letters_done {
        return super::send::queue_writeback(hub, campaign_id, chunk_id).await;
    }
    let practice_name = super::send::practice_name(hub, chunk_id).await?;
    let recipients = hub.patients.load_chunk(campaign_id, chunk_id).await?;
    let letters: Vec<_> = recipients.iter().filter(|r| !r.is_sms()).cloned().collect();
    let withheld =
        super::restrictions::withhold_restricted(hub, campaign_id, chunk_id, &letters).await?;
    let pending: Vec<u32> = letters
        .iter()
        .filter(|r| r.status == RecipientStatus::Pending && !withheld.contains(&r.index))
        .map(|r| r.index)
        .collect();
    let claimed = hub
        .patients
        .claim(campaign_id, chunk_id, &pending, hub.now())
        .await?;
    let mut updates = Vec::new();
    let mut retry = false;
    for recipient in recipients.iter().filter(|r| claimed.contains(&r.index)) {
        let Contact::Letter { address } = &recipient.contact else {
            continue;
        };
        // Personalised as the text would be, and addressed by name.
        let body = super::send::render_for(&campaign, recipient, &practice_name);
        let request = LetterRequest {
            address: address.clone(),
            body: Personal::new(body),
            reference: recipient.reference(campaign_id),
        };
        let status = match hub.letters.send_letter(&request).await {
            Ok(accepted) => RecipientStatus::LetterSent {
                provider_id: accepted.provider_id,
                at: hub.now(),
            },
            Err(ProviderError::Rejected(_)) => RecipientStatus::Rejected,
            Err(error) => {
                tracing::warn!(campaign = %campaign_id, chunk = %chunk_id, %error, "letter not sent; will retry");
                retry = true;
                RecipientStatus::Pending
            }
        };
        updates.push(StatusUpdate {
            chunk: chunk_id.clone(),
            index: recipient.index,
            status,
        });
    }
    hub.patients.set_status(campaign_id, &updates).await?;
    let stored = hub.patients.load_chunk(campaign_id, chunk_id).await?;
    let letters: Vec<_> = stored.iter().filter(|r| !r.is_sms()).collect();
    if retry || letters.iter().any(|r| !r.status.is_final()) {
        return Err(JobError::retry(format!(
            "chunk {chunk_id}: letters left to send"
        )));
    }
    let mut counts = OutcomeCounts::default();
    for recipient in letters {
        match recipient.status {
            RecipientStatus::LetterSent { .. } => counts.letters += 1,
            RecipientStatus::Withheld { reason } => counts.exclude(reason),
            _ => counts.exclude(crate::domain::ExclusionReason::NoPostalAddress),
        }
    }
    tracing::info!(campaign = %campaign_id, chunk = %chunk_id, letters = counts.letters, "letters sent");
    if let Some((_, progress)) = hub
        .store
        .complete_chunk_stage(campaign_id, chunk_id, ChunkStage::Letters, &counts)
        .await?
    {
        super::send::queue_writeback(hub, campaign_id, chunk_id).await?;
        hub.after_progress(campaign_id, progress).await?;
    } else {
        super::send::queue_writeback(hub, campaign_id, chunk_id).await?;
    }
    Ok(())
}
