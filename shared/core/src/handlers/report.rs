//! Views of a campaign for staff: state, progress, ETA, and the delivery
//! report per practice and per outcome. Counts only, never patient data.

use super::Hub;
use crate::domain::{
    plan, Campaign, CampaignId, CampaignOptions, CampaignState, OdsCode, OutcomeCounts,
    ParticipationState, Progress, Target,
};
use crate::ports::StoreError;
use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct CampaignView {
    pub id: CampaignId,
    pub name: String,
    pub state: CampaignState,
    pub message: String,
    pub target: Target,
    pub options: CampaignOptions,
    pub optout_deadline: DateTime<Utc>,
    pub justification: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub approved_by: Option<String>,
    pub cancelled_by: Option<String>,
    pub progress: Progress,
    pub purged_at: Option<DateTime<Utc>>,
    /// Compare-and-set version: an approval names the one it saw.
    pub version: u64,
    /// A shortened deadline waiting for a second person.
    pub deadline_change: Option<crate::domain::DeadlineChange>,
    /// Present on a full view (`get`), absent in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<OutcomeCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// Sending is paused until then: every provider key is at its daily limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<DateTime<Utc>>,
    /// What the providers allow for the texts still to send (the estimated
    /// cohort before the deadline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

/// The providers' capacity for a number of texts, from the send plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capacity {
    /// Texts still to send (or the estimated cohort).
    pub texts: u64,
    pub texts_per_hour: u64,
    /// Time to reach them, across provider days if the daily limits say so.
    pub eta_seconds: u64,
    /// Texts a day the providers allow, if every key is limited.
    pub daily_capacity: Option<u64>,
    pub days_needed: u64,
    /// Provider keys like the configured ones that reach them in 3 hours.
    pub keys_for_target: Option<u64>,
    pub keys_configured: u64,
}

impl Capacity {
    pub fn of(plan: &plan::SendPlan, keys_configured: usize) -> Self {
        Self {
            texts: plan.cohort,
            texts_per_hour: plan.texts_per_hour,
            eta_seconds: plan.eta.as_secs(),
            daily_capacity: plan.daily_capacity,
            days_needed: plan.days_needed,
            keys_for_target: plan.keys_for_target,
            keys_configured: keys_configured as u64,
        }
    }
}

/// The plan for `texts` of this campaign's message on the configured providers.
pub fn plan_for(hub: &Hub, campaign: &Campaign, texts: u64) -> plan::SendPlan {
    plan::plan(
        texts,
        campaign.template.measure_example().fragments,
        &hub.config.providers,
        hub.config.rate_cap,
        plan::TARGET,
    )
}

/// The estimated cohort before extraction: the list sizes of the
/// DSA-signed practices in the target (an upper bound).
pub async fn estimated_cohort(hub: &Hub, campaign: &Campaign) -> Result<u64, StoreError> {
    Ok(hub
        .store
        .list_practices()
        .await?
        .iter()
        .filter(|p| p.dsa_signed.is_some() && campaign.target.includes_practice(&p.ods))
        .map(|p| p.list_size)
        .sum())
}

pub fn summary(campaign: &Campaign) -> CampaignView {
    CampaignView {
        id: campaign.id.clone(),
        name: campaign.name.clone(),
        state: campaign.state,
        message: campaign.template.text().to_string(),
        target: campaign.target.clone(),
        options: campaign.options,
        optout_deadline: campaign.optout_deadline,
        justification: campaign.justification.clone(),
        created_by: campaign.created_by.as_str().to_string(),
        created_at: campaign.created_at,
        approved_by: campaign
            .approved_by
            .as_ref()
            .map(|s| s.as_str().to_string()),
        cancelled_by: campaign
            .cancelled_by
            .as_ref()
            .map(|s| s.as_str().to_string()),
        progress: campaign.progress,
        purged_at: campaign.purged_at,
        version: campaign.version,
        deadline_change: campaign.deadline_change.clone(),
        totals: None,
        eta_seconds: None,
        paused_until: campaign.paused_until,
        capacity: None,
    }
}

pub async fn view(hub: &Hub, campaign: &Campaign) -> Result<CampaignView, StoreError> {
    let mut view = summary(campaign);
    if matches!(
        campaign.state,
        CampaignState::PendingApproval | CampaignState::OptOutWindow
    ) {
        let cohort = estimated_cohort(hub, campaign).await?;
        view.capacity = Some(Capacity::of(
            &plan_for(hub, campaign, cohort),
            hub.config.providers.len(),
        ));
        return Ok(view);
    }
    let report = build(hub, campaign).await?;
    view.eta_seconds = report.eta_seconds;
    view.totals = Some(report.totals);
    view.capacity = report.capacity;
    Ok(view)
}

#[derive(Debug, Clone, Serialize)]
pub struct PracticeReport {
    pub ods: OdsCode,
    pub name: String,
    pub state: ParticipationState,
    pub cohort: u64,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub letters: u64,
    pub excluded: u64,
    pub written_back: u64,
    pub chunks: u32,
    pub chunks_final: u32,
    pub malformed_records: u64,
    /// Records the GP system returned, against the registered list size.
    pub records_read: u64,
    pub list_size: u64,
    /// Since when the practice is held as `extraction_suspect`.
    pub held_since: Option<DateTime<Utc>>,
    pub extraction_attempts: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CampaignReport {
    pub campaign: CampaignId,
    pub name: String,
    pub state: CampaignState,
    pub totals: OutcomeCounts,
    pub practices: Vec<PracticeReport>,
    pub opted_out_practices: Vec<OdsCode>,
    pub failed_practices: Vec<OdsCode>,
    /// Held as `extraction_suspect`, waiting for a staff decision.
    pub suspect_practices: Vec<OdsCode>,
    pub patient_data_remaining: u64,
    pub purged_items: Option<u64>,
    pub eta_seconds: Option<u64>,
    /// Capacity for the texts still to send, while sending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    pub adds_up: bool,
}

pub async fn build(hub: &Hub, campaign: &Campaign) -> Result<CampaignReport, StoreError> {
    let participations = hub.store.list_participations(&campaign.id).await?;
    let chunks = hub.store.list_chunks(&campaign.id).await?;
    let registry: std::collections::HashMap<OdsCode, (String, u64)> = hub
        .store
        .list_practices()
        .await?
        .into_iter()
        .map(|p| (p.ods, (p.name, p.list_size)))
        .collect();
    let mut totals = OutcomeCounts::default();
    let mut practices = Vec::with_capacity(participations.len());
    let mut opted_out = Vec::new();
    let mut failed = Vec::new();
    let mut suspect = Vec::new();
    let mut waiting_sms = 0u64;
    for participation in &participations {
        match participation.state {
            ParticipationState::OptedOut => opted_out.push(participation.ods.clone()),
            ParticipationState::ExtractionFailed => failed.push(participation.ods.clone()),
            ParticipationState::ExtractionSuspect => suspect.push(participation.ods.clone()),
            _ => {}
        }
        let mut counts = participation.counts.clone();
        let mut chunk_count = 0;
        let mut chunks_final = 0;
        for chunk in chunks.iter().filter(|c| c.ods == participation.ods) {
            chunk_count += 1;
            chunks_final += u32::from(chunk.is_final());
            if !chunk.send_done {
                waiting_sms += u64::from(chunk.sms_recipients);
            }
            counts.add(&chunk.counts);
        }
        // A held extraction's counts wait for the staff decision.
        if participation.state == ParticipationState::ExtractionSuspect {
            counts = OutcomeCounts::default();
        }
        totals.add(&counts);
        let (name, list_size) = registry
            .get(&participation.ods)
            .cloned()
            .unwrap_or_else(|| (participation.ods.to_string(), 0));
        practices.push(PracticeReport {
            name,
            list_size,
            records_read: participation.records_read,
            held_since: participation.held_since,
            ods: participation.ods.clone(),
            state: participation.state,
            cohort: counts.cohort,
            sent: counts.sent,
            delivered: counts.delivered,
            failed: counts.failed,
            letters: counts.letters,
            excluded: counts.excluded_total(),
            written_back: counts.written_back,
            chunks: chunk_count,
            chunks_final,
            malformed_records: participation.malformed_records,
            extraction_attempts: participation.extraction_attempts,
            last_error: participation.last_error.clone(),
        });
    }
    practices.sort_by(|a, b| a.ods.cmp(&b.ods));
    let rate = plan_for(hub, campaign, waiting_sms);
    let sending = campaign.state.allows_sending() && rate.messages_per_second > 0.0;
    let eta_seconds = sending.then_some(rate.eta.as_secs());
    let capacity = sending.then(|| Capacity::of(&rate, hub.config.providers.len()));
    let adds_up = totals.adds_up();
    Ok(CampaignReport {
        campaign: campaign.id.clone(),
        name: campaign.name.clone(),
        state: campaign.state,
        totals,
        practices,
        opted_out_practices: opted_out,
        failed_practices: failed,
        suspect_practices: suspect,
        patient_data_remaining: if campaign.purged_at.is_some() || campaign.state.is_final() {
            // Counted only once it should be gone (an empty or small
            // remainder, cheap to count), never polled across millions.
            hub.patients.count_campaign(&campaign.id).await?
        } else {
            // Held while the campaign runs: the recipients the chunk counters
            // record (maintained with the writes).
            chunks
                .iter()
                .map(|c| u64::from(c.sms_recipients) + u64::from(c.letter_recipients))
                .sum()
        },
        purged_items: campaign.purged_items,
        eta_seconds,
        capacity,
        adds_up,
    })
}
