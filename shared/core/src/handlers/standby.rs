//! Dual registrations whose first practice fell through. A patient
//! registered at practices A and B is placed by whichever extraction comes
//! first (say A, holding the patient's `K#P#` or `K#L#` key); B keeps its
//! record as a `Standby` recipient instead of dropping it. If A's
//! extraction then fails for good or staff exclude it, A sends nothing, so
//! B must: at the release every practice is final, and just before B's
//! chunk is sent each standby is decided:
//!
//! - the key's holder failed or was excluded: B takes the key over (a
//!   conditional write, so of several standby practices only one does) and
//!   the recipient becomes `Pending`, then goes through the usual checks;
//! - B already holds it (an earlier attempt of this job took it over):
//!   `Pending`;
//! - otherwise (the holder extracted and sends, or another standby took it
//!   over first): `Withheld` as a duplicate, counted once, like the drop it
//!   replaces.

use super::{Hub, JobError};
use crate::domain::{
    CampaignId, ChunkId, DedupeKey, ExclusionReason, OdsCode, ParticipationState, Recipient,
    RecipientStatus,
};
use crate::ports::StatusUpdate;
use std::collections::HashMap;

/// The key a recipient holds (or would hold) for its channel.
pub(crate) fn channel_key(recipient: &Recipient) -> DedupeKey {
    if recipient.is_sms() {
        DedupeKey::Patient(recipient.nhs_number.clone())
    } else {
        DedupeKey::Letter(recipient.nhs_number.clone())
    }
}

/// Decides every `Standby` recipient among `recipients` (promoted to
/// `Pending` or withheld as a duplicate) and returns the chunk's recipients
/// as stored afterwards, in the same filter: those `keep` accepts. Without
/// a standby it returns `recipients` unchanged and writes nothing.
pub(crate) async fn decide_standby(
    hub: &Hub,
    campaign: &CampaignId,
    chunk: &ChunkId,
    recipients: Vec<Recipient>,
    keep: fn(&Recipient) -> bool,
) -> Result<Vec<Recipient>, JobError> {
    let standby: Vec<&Recipient> = recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Standby)
        .collect();
    if standby.is_empty() {
        return Ok(recipients);
    }
    let Some(own) = chunk.ods() else {
        return Err(JobError::Malformed(format!("chunk id {chunk}")));
    };
    let keys: Vec<DedupeKey> = standby.iter().map(|r| channel_key(r)).collect();
    let holders = hub.patients.key_holders(campaign, &keys).await?;
    let mut given_up: HashMap<OdsCode, bool> = HashMap::new();
    let mut updates = Vec::with_capacity(standby.len());
    let mut promoted = 0usize;
    for ((recipient, key), holder) in standby.iter().zip(&keys).zip(holders) {
        let ours = match holder {
            Some(holder) if holder == own => true,
            Some(holder) => take_over(hub, campaign, key, &holder, &own, &mut given_up).await?,
            // Nobody holds it: nothing says another record reaches the
            // patient, but nothing placed this one either; kept out.
            None => false,
        };
        promoted += usize::from(ours);
        updates.push(StatusUpdate {
            chunk: chunk.clone(),
            index: recipient.index,
            status: if ours {
                RecipientStatus::Pending
            } else {
                RecipientStatus::Withheld {
                    reason: ExclusionReason::DuplicatePatient,
                }
            },
        });
    }
    hub.patients.decide_standby(campaign, &updates).await?;
    tracing::info!(campaign = %campaign, chunk = %chunk, standby = updates.len(), promoted, "standby recipients decided");
    // Read back: a racing worker's decision is the one that stands.
    Ok(hub
        .patients
        .load_chunk(campaign, chunk)
        .await?
        .into_iter()
        .filter(keep)
        .collect())
}

/// Takes `key` over from `holder` if that practice ended without sending
/// (its extraction failed for good, or staff excluded it); `known` keeps
/// each holder's answer for the chunk. Returns whether `own` holds the key.
async fn take_over(
    hub: &Hub,
    campaign: &CampaignId,
    key: &DedupeKey,
    holder: &OdsCode,
    own: &OdsCode,
    known: &mut HashMap<OdsCode, bool>,
) -> Result<bool, JobError> {
    let gave_up = match known.get(holder) {
        Some(gave_up) => *gave_up,
        None => {
            let gave_up = hub
                .store
                .get_participation(campaign, holder)
                .await?
                .is_some_and(|p| p.state == ParticipationState::ExtractionFailed);
            known.insert(holder.clone(), gave_up);
            gave_up
        }
    };
    if !gave_up {
        return Ok(false);
    }
    Ok(hub
        .patients
        .take_over_key(campaign, key, holder, own)
        .await?)
}
