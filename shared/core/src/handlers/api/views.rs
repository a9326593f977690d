//! Reading campaigns: list, detail, report and audit.

use super::{load, ApiError};
use crate::domain::{CampaignId, CampaignState, OdsCode};
use crate::handlers::report::{self, CampaignReport, CampaignView};
use crate::handlers::Hub;
use chrono::{DateTime, Utc};
use serde::Serialize;

pub async fn get(hub: &Hub, id: &CampaignId) -> Result<CampaignView, ApiError> {
    let campaign = load(hub, id).await?;
    Ok(report::view(hub, &campaign).await?)
}

/// A campaign with its per-practice progress: what `GET /campaigns/{id}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignDetail {
    #[serde(flatten)]
    pub campaign: CampaignView,
    pub approved_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    pub practices: Vec<report::PracticeReport>,
    pub opted_out_practices: Vec<OdsCode>,
    pub failed_practices: Vec<OdsCode>,
    /// Held as `extraction_suspect`, waiting for a staff decision.
    pub suspect_practices: Vec<OdsCode>,
    /// While waiting for approval: what the approver approves (the message
    /// as a patient sees it, practices, estimated cohort, plan, deadline);
    /// the approval names `version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<super::Preview>,
}

pub async fn detail(hub: &Hub, id: &CampaignId) -> Result<CampaignDetail, ApiError> {
    let campaign = load(hub, id).await?;
    let report = report::build(hub, &campaign).await?;
    let mut view = report::summary(&campaign);
    // As `report::view`: totals and ETA once the deadline has passed.
    if !matches!(
        campaign.state,
        CampaignState::PendingApproval | CampaignState::OptOutWindow
    ) {
        view.totals = Some(report.totals);
        view.eta_seconds = report.eta_seconds;
        view.capacity = report.capacity;
    } else {
        let cohort = report::estimated_cohort(hub, &campaign).await?;
        view.capacity = Some(report::Capacity::of(
            &report::plan_for(hub, &campaign, cohort),
            hub.config.providers.len(),
        ));
    }
    Ok(CampaignDetail {
        campaign: view,
        approved_at: campaign.approved_at,
        cancel_reason: campaign.cancel_reason.clone(),
        practices: report.practices,
        opted_out_practices: report.opted_out_practices,
        failed_practices: report.failed_practices,
        suspect_practices: report.suspect_practices,
        preview: match campaign.state {
            CampaignState::PendingApproval => Some(super::preview_of(hub, &campaign).await?),
            _ => None,
        },
    })
}

pub async fn list(hub: &Hub) -> Result<Vec<CampaignView>, ApiError> {
    let mut campaigns = hub.store.list_campaigns().await?;
    campaigns.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    let mut views = Vec::with_capacity(campaigns.len());
    for campaign in &campaigns {
        views.push(report::summary(campaign));
    }
    Ok(views)
}

pub async fn report(hub: &Hub, id: &CampaignId) -> Result<CampaignReport, ApiError> {
    let campaign = load(hub, id).await?;
    Ok(report::build(hub, &campaign).await?)
}

pub async fn audit(hub: &Hub, id: &CampaignId) -> Result<Vec<crate::domain::AuditEvent>, ApiError> {
    load(hub, id).await?;
    Ok(hub.store.list_audit(id).await?)
}
