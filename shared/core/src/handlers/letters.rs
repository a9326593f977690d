//! Postal fallback for patients with no usable mobile: the message
//! personalised as a text would be, addressed by name, and written back to
//! the GP record like a text.

use super::{Hub, JobError};
use crate::domain::{
    CampaignId, CampaignState, ChunkId, ChunkStage, Contact, OutcomeCounts, Personal, Recipient,
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
    let is_letter = |r: &Recipient| !r.is_sms();
    let stored = hub.patients.load_chunk(campaign_id, chunk_id).await?;
    let recipients: Vec<Recipient> = stored.into_iter().filter(is_letter).collect();
    let recipients =
        super::standby::decide_standby(hub, campaign_id, chunk_id, recipients, is_letter).await?;
    let letters = recipients.clone();
    let withheld =
        super::restrictions::withhold_restricted(hub, campaign_id, chunk_id, &letters).await?;
    let now = hub.now();
    let mut updates = Vec::new();
    let mut retry = false;
    // A claim left by a worker that died (or whose answer was lost) is
    // looked up at the provider: found, it was sent; not found and stale,
    // it is released and sent; otherwise it may still be in flight.
    let mut pending = Vec::new();
    for recipient in letters.iter().filter(|r| !withheld.contains(&r.index)) {
        match &recipient.status {
            RecipientStatus::Pending => pending.push(recipient.index),
            RecipientStatus::Claimed { at } => {
                match hub
                    .letters
                    .find_letter(&recipient.reference(campaign_id))
                    .await
                {
                    Ok(Some(found)) => updates.push(letter_sent(
                        chunk_id,
                        recipient.index,
                        found.provider_id,
                        now,
                    )),
                    Ok(None) if now - *at >= hub.config.stale_after => {
                        if hub
                            .patients
                            .release_claim(campaign_id, chunk_id, recipient.index, *at)
                            .await?
                        {
                            pending.push(recipient.index);
                        } else {
                            retry = true;
                        }
                    }
                    Ok(None) | Err(_) => retry = true,
                }
            }
            _ => {}
        }
    }
    let claimed = hub
        .patients
        .claim(campaign_id, chunk_id, &pending, now)
        .await?;
    retry |= claimed.len() < pending.len();
    let mut ambiguous = Vec::new();
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
            Err(ProviderError::Unavailable(error)) => {
                // A 5xx, timeout or lost answer may hide an accepted
                // letter: keep the claim and look it up below.
                tracing::warn!(campaign = %campaign_id, chunk = %chunk_id, %error, "letter answer unclear; looking it up");
                ambiguous.push((recipient.index, request.reference));
                continue;
            }
            Err(error) => {
                // Not taken (rate or daily limit, credentials): release.
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
    retry |= !settle_unclear(hub, campaign_id, chunk_id, &ambiguous, now, &mut updates).await?;
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

pub(crate) fn letter_sent(
    chunk: &ChunkId,
    index: u32,
    provider_id: String,
    at: chrono::DateTime<chrono::Utc>,
) -> StatusUpdate {
    StatusUpdate {
        chunk: chunk.clone(),
        index,
        status: RecipientStatus::LetterSent { provider_id, at },
    }
}

/// Letters whose answer was unclear (5xx, timeout, lost): after a grace
/// period for a request still being accepted, each is looked up at the
/// provider. Found, it is recorded sent; clearly not there, our own claim
/// is released so a later delivery sends it; a failed lookup keeps the
/// claim for a later delivery to look up again. Returns whether every one
/// was found.
async fn settle_unclear(
    hub: &Hub,
    campaign_id: &CampaignId,
    chunk_id: &ChunkId,
    unclear: &[(u32, String)],
    claimed_at: chrono::DateTime<chrono::Utc>,
    updates: &mut Vec<StatusUpdate>,
) -> Result<bool, JobError> {
    if unclear.is_empty() {
        return Ok(true);
    }
    let mut all_found = true;
    let grace = super::router::DEFAULT_AMBIGUITY_GRACE.min(hub.config.send_deadline / 4);
    tokio::time::sleep(grace).await;
    for (index, reference) in unclear {
        match hub.letters.find_letter(reference).await {
            Ok(Some(found)) => {
                updates.push(letter_sent(chunk_id, *index, found.provider_id, hub.now()))
            }
            Ok(None) => {
                all_found = false;
                hub.patients
                    .release_claim(campaign_id, chunk_id, *index, claimed_at)
                    .await?;
            }
            Err(error) => {
                all_found = false;
                tracing::warn!(campaign = %campaign_id, chunk = %chunk_id, %error, "letter lookup failed; claim kept");
            }
        }
    }
    Ok(all_found)
}
