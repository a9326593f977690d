//! Deleting a campaign's patient data when delivery has finished (or at
//! once when it is cancelled), with an audit record of what was deleted.

use super::{Hub, JobError};
use crate::domain::{CampaignId, CampaignState};

pub async fn purge_campaign(hub: &Hub, campaign_id: &CampaignId) -> Result<(), JobError> {
    let campaign = hub.campaign(campaign_id).await?;
    if !matches!(
        campaign.state,
        CampaignState::AwaitingReceipts | CampaignState::Cancelled | CampaignState::Completed
    ) {
        return Err(JobError::Malformed(format!(
            "campaign {campaign_id} is {} and cannot be purged yet",
            campaign.state
        )));
    }
    // Workers still finishing a step when a campaign is cancelled may write
    // a little after the first pass: sweep again before giving up.
    let mut deleted = 0;
    let mut remaining = 0;
    for pass in 0..3 {
        if pass > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        deleted += hub.patients.purge_campaign(campaign_id).await?;
        remaining = hub.patients.count_campaign(campaign_id).await?;
        if remaining == 0 {
            break;
        }
    }
    let now = hub.now();
    let (campaign, _) = hub
        .update_campaign_with(campaign_id, |c| c.record_purge(deleted, now).is_ok())
        .await?;
    tracing::info!(campaign = %campaign_id, deleted, remaining, state = %campaign.state, "patient data purged");
    hub.audit(
        Some(campaign_id),
        "hub",
        "patient_data_purged",
        serde_json::json!({ "items_deleted": deleted, "items_remaining": remaining }),
    )
    .await?;
    if remaining > 0 {
        return Err(JobError::retry(format!(
            "campaign {campaign_id}: {remaining} patient-data items written during the purge"
        )));
    }
    Ok(())
}

/// The daily safety net: purges every campaign that should hold no patient
/// data and still does (a cancelled campaign's late writes, a lost purge job).
pub async fn purge_sweep(hub: &Hub) -> Result<u64, JobError> {
    let now = hub.now();
    let mut purged = 0;
    for campaign in hub.store.list_campaigns().await? {
        let due = match campaign.state {
            CampaignState::Completed => true,
            // Once its chunks are settled, or a receipt window after the
            // cancel whatever is left (the backstop).
            CampaignState::Cancelled => {
                campaign.progress.chunks_outstanding == 0
                    || now - campaign.state_changed_at >= hub.config.receipt_window
            }
            CampaignState::AwaitingReceipts => {
                now - campaign.state_changed_at >= hub.config.receipt_window
            }
            _ => false,
        };
        if due && hub.patients.count_campaign(&campaign.id).await? > 0 {
            purge_campaign(hub, &campaign.id).await?;
            purged += 1;
        }
    }
    Ok(purged)
}
