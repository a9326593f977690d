//! The most careful record wins. A patient registered at several practices
//! (or twice at one) has several records; each practice's extraction
//! stores what its records say that binds the others (deceased, "no
//! telephone contact") and which practice texts or writes to the patient,
//! as keys by NHS number. Chunks are released only when every practice's
//! extraction is final, so by the time a chunk is sent every record has
//! spoken; just before sending, each recipient is checked against all of
//! them:
//!
//! - deceased on any record: nobody is contacted;
//! - "no telephone contact" on any record: no text;
//! - a letter is not sent when another record texts the patient (a usable
//!   mobile anywhere beats the letter), unless that text is itself stopped.

use super::{Hub, JobError};
use crate::domain::{
    CampaignId, ChunkId, DedupeKey, ExclusionReason, Recipient, RecipientStatus, Restriction,
};
use crate::ports::StatusUpdate;
use std::collections::HashMap;

/// Marks each pending recipient that another record forbids `Withheld`
/// (with the reason) and returns their indexes; the caller sends to the
/// others. Only `Pending` recipients are checked: a claimed one was
/// checked before its claim.
pub(crate) async fn withhold_restricted(
    hub: &Hub,
    campaign: &CampaignId,
    chunk: &ChunkId,
    recipients: &[Recipient],
) -> Result<Vec<u32>, JobError> {
    let pending: Vec<&Recipient> = recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Pending)
        .collect();
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    const ASKED: usize = 3;
    let keys: Vec<DedupeKey> = pending
        .iter()
        .flat_map(|r| {
            let nhs = &r.nhs_number;
            [
                DedupeKey::Restricted(nhs.clone(), Restriction::Deceased),
                DedupeKey::Restricted(nhs.clone(), Restriction::NoTelephoneContact),
                DedupeKey::Patient(nhs.clone()),
            ]
        })
        .collect();
    let holders = hub.patients.key_holders(campaign, &keys).await?;
    let mut updates = Vec::new();
    let mut withheld = HashMap::new();
    for (recipient, found) in pending.iter().zip(holders.chunks(ASKED)) {
        let [deceased, no_telephone, texted] = [&found[0], &found[1], &found[2]];
        let reason = if deceased.is_some() {
            Some(ExclusionReason::Deceased)
        } else if recipient.is_sms() {
            no_telephone.is_some().then_some(ExclusionReason::SmsOptOut)
        } else {
            // Another record's text reaches them, unless it is stopped.
            (texted.is_some() && no_telephone.is_none())
                .then_some(ExclusionReason::DuplicatePatient)
        };
        if let Some(reason) = reason {
            withheld.insert(recipient.index, reason);
            updates.push(StatusUpdate {
                chunk: chunk.clone(),
                index: recipient.index,
                status: RecipientStatus::Withheld { reason },
            });
        }
    }
    if !updates.is_empty() {
        hub.patients.set_status(campaign, &updates).await?;
        tracing::info!(campaign = %campaign, chunk = %chunk, withheld = updates.len(), "recipients withheld by another record");
    }
    Ok(withheld.into_keys().collect())
}
