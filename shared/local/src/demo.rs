//! `hub demo`: a whole campaign on a synthetic region, from create to
//! purge, on the embedded stack, with a report that must add up.

use super::{LocalStack, LocalStackConfig};
use anyhow::{bail, Context};
use hub_core::domain::pacing::RateUnit;
use hub_core::domain::{CampaignId, CampaignState, ExclusionReason, StaffId};
use hub_core::handlers::api::{self, CreateCampaignRequest, TargetRequest};
use hub_core::handlers::optout_token::{self, OptOutClaim};
use hub_core::handlers::report::CampaignReport;
use hub_core::handlers::HubConfig;
use hub_sim::{GatewayConfig, RegionSpec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub practices: usize,
    pub patients: u64,
    pub seed: u64,
    /// Simulated SMS providers and each one's rate (requests, i.e. texts, a
    /// second, as GOV.UK Notify counts).
    pub providers: usize,
    pub provider_rate: f64,
    pub provider_latency: Duration,
    pub postal_fallback: bool,
    pub one_message_per_mobile: bool,
    pub message: String,
    pub min_age: Option<i64>,
    pub max_age: Option<i64>,
    pub postcodes: Vec<String>,
    pub database: Option<PathBuf>,
    pub timeout: Duration,
    pub transport: super::Transport,
    pub external: super::External,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            practices: 12,
            patients: 30_000,
            seed: 2026,
            providers: 2,
            provider_rate: 2_500.0,
            provider_latency: Duration::from_millis(5),
            postal_fallback: true,
            one_message_per_mobile: false,
            message: "NHS South East London: ((first_name)), an urgent health alert applies to \
                      your area. Please read https://www.nhs.uk/conditions/ for advice."
                .into(),
            min_age: None,
            max_age: None,
            postcodes: Vec::new(),
            database: None,
            timeout: Duration::from_secs(3600),
            transport: super::Transport::Http,
            external: super::External::default(),
        }
    }
}

impl DemoOptions {
    pub fn stack_config(&self) -> LocalStackConfig {
        let hub = HubConfig {
            receipt_window: chrono::Duration::seconds(1),
            stale_after: chrono::Duration::seconds(30),
            send_deadline: Duration::from_secs(10),
            // Local: every identity holds every role unless `hub local
            // serve --role` says otherwise.
            access: hub_core::domain::AccessPolicy::open(),
            // The simulated GP systems listen on loopback over http.
            local_gp_urls: true,
            ..HubConfig::default()
        };
        let sms_gateways = (0..self.providers)
            .map(|i| GatewayConfig {
                name: format!("sim-sms-{}", i + 1),
                rate_per_second: self.provider_rate,
                unit: RateUnit::Requests,
                latency: self.provider_latency,
                latency_max: Duration::ZERO,
                failure_rate: 0.001,
                daily_limit: None,
                delivery_failure_rate: 0.02,
                receipt_delay: Duration::from_millis(50),
                seed: self.seed + i as u64,
            })
            .collect();
        LocalStackConfig {
            transport: self.transport,
            external: self.external.clone(),
            database: self.database.clone(),
            hub,
            region: RegionSpec {
                practices: self.practices,
                patients: self.patients,
                seed: self.seed,
            },
            sms_gateways,
            postal_gateway: GatewayConfig {
                name: "sim-post".into(),
                rate_per_second: 1_000_000.0,
                unit: RateUnit::Parts,
                latency: Duration::ZERO,
                latency_max: Duration::ZERO,
                failure_rate: 0.0,
                daily_limit: None,
                delivery_failure_rate: 0.0,
                receipt_delay: Duration::from_millis(10),
                seed: self.seed,
            },
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: 5,
            poll_interval: Duration::from_millis(20),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoPractice {
    pub ods: String,
    pub name: String,
    pub state: String,
    pub cohort: u64,
    pub sent: u64,
    pub delivered: u64,
    pub letters: u64,
    pub excluded: u64,
}

/// The demo's report; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub campaign: String,
    pub state: String,
    pub region_patients: u64,
    pub region_practices: usize,
    pub cohort: u64,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub letters: u64,
    pub excluded: BTreeMap<String, u64>,
    pub written_back: u64,
    pub opted_out_practices: Vec<String>,
    pub practices_without_dsa: Vec<String>,
    pub failed_practices: Vec<String>,
    /// Practices read over NHS MESH (CSV extracts); the rest over FHIR.
    pub mesh_practices: Vec<String>,
    pub practices: Vec<DemoPractice>,
    pub duplicate_sends: u64,
    pub patient_data_remaining: u64,
    pub purged_items: u64,
    pub adds_up: bool,
    pub seconds: f64,
    pub send_seconds: f64,
    pub messages_per_second: f64,
}

/// Progress as the demo goes: a report snapshot, polled.
pub trait Progress: Send + Sync {
    fn stage(&self, stage: &str);
    fn update(&self, report: &CampaignReport, expected_practices: usize);
}

/// No progress output (tests, `--json`).
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&self, _: &str) {}
    fn update(&self, _: &CampaignReport, _: usize) {}
}

/// The template's `SendMaxConcurrency`. A send job ends only when each of
/// its texts has an answer; an ambiguous one (a simulated 5xx) first waits
/// the router's grace period, holding its worker, so the demo's throughput
/// follows the number of workers, as the deployed hub's does.
pub const TEMPLATE_SEND_WORKERS: usize = 20;

pub async fn run(options: &DemoOptions, progress: &dyn Progress) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    progress.stage("building the synthetic region");
    let stack =
        LocalStack::start_throwaway(options.stack_config(), Some(TEMPLATE_SEND_WORKERS)).await?;
    let result = drive(&stack, options, progress, started).await;
    stack.shutdown();
    result
}

/// Runs one campaign to the end on a started stack.
pub async fn drive(
    stack: &Arc<LocalStack>,
    options: &DemoOptions,
    progress: &dyn Progress,
    started: Instant,
) -> anyhow::Result<DemoReport> {
    let hub = &stack.hub;
    let creator = StaffId::new("arn:aws:iam::000000000000:user/alice");
    let approver = StaffId::new("arn:aws:iam::000000000000:user/bob");
    let practices = stack.estate.practices();

    progress.stage("creating and approving the campaign");
    let request = CreateCampaignRequest {
        name: "Demo: regional health alert".into(),
        message: options.message.clone(),
        target: TargetRequest {
            min_age: options.min_age,
            max_age: options.max_age,
            postcodes: options.postcodes.clone(),
            practices: Vec::new(),
        },
        optout_deadline: (hub.now() + chrono::Duration::hours(1)).to_rfc3339(),
        justification: "Demonstration of the emergency messaging pipeline".into(),
        postal_fallback: options.postal_fallback,
        one_message_per_mobile: options.one_message_per_mobile,
    };
    let created = api::create_campaign(hub, &creator, &request)
        .await
        .map_err(|e| anyhow::anyhow!("create: {e}: {}", e.body()))?;
    let id = created.campaign.id.clone();
    api::approve(hub, &approver, &id)
        .await
        .map_err(|e| anyhow::anyhow!("approve: {e}"))?;

    progress.stage("notifying practices");
    let notified: Vec<_> = practices
        .iter()
        .filter(|p| p.dsa_signed.is_some())
        .collect();
    wait_until(Duration::from_secs(60), || async {
        let participations = hub.store.list_participations(&id).await?;
        Ok(participations.iter().all(|p| p.notice_sent_at.is_some()))
    })
    .await
    .context("practice notices")?;

    // The first participating practice opts out by its one-click link.
    let opting_out = notified
        .first()
        .map(|p| p.ods.clone())
        .context("no practice has a signed DSA")?;
    let campaign = hub.campaign(&id).await?;
    let token = optout_token::issue(
        &hub.optout_key,
        &OptOutClaim {
            campaign: id.clone(),
            ods: opting_out,
            expires: campaign.optout_deadline,
        },
    );
    api::opt_out_by_link(hub, &token)
        .await
        .map_err(|e| anyhow::anyhow!("opt-out: {e}"))?;

    progress.stage("bringing the deadline forward");
    bring_deadline_forward_now(hub, &creator, &approver, &id)
        .await
        .map_err(|e| anyhow::anyhow!("deadline: {e}"))?;
    let send_started = Instant::now();

    progress.stage("extracting, sending, writing back");
    let expected = notified.len().saturating_sub(1);
    let deadline = Instant::now() + options.timeout;
    // The state is one item; the report reads every chunk record (8,000 at
    // 2,000,000 patients), so it is built once a second for the progress.
    let mut reported = Instant::now();
    loop {
        let state = hub.campaign(&id).await?.state;
        if state == CampaignState::Completed || state == CampaignState::Cancelled {
            break;
        }
        if reported.elapsed() >= Duration::from_secs(1) {
            reported = Instant::now();
            let report = api::report(hub, &id)
                .await
                .map_err(|e| anyhow::anyhow!("report: {e}"))?;
            progress.update(&report, expected);
        }
        if Instant::now() > deadline {
            bail!("the campaign did not finish within {:?}", options.timeout);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let send_seconds = send_started.elapsed().as_secs_f64();
    summarise(stack, &id, started, send_seconds).await
}

pub async fn summarise(
    stack: &Arc<LocalStack>,
    id: &CampaignId,
    started: Instant,
    send_seconds: f64,
) -> anyhow::Result<DemoReport> {
    let hub = &stack.hub;
    let report = api::report(hub, id)
        .await
        .map_err(|e| anyhow::anyhow!("report: {e}"))?;
    let totals = &report.totals;
    let excluded = ExclusionReason::ALL
        .iter()
        .filter_map(|reason| {
            totals
                .excluded
                .get(reason)
                .map(|count| (reason.as_str().to_string(), *count))
        })
        .collect();
    let practices = report
        .practices
        .iter()
        .map(|p| DemoPractice {
            ods: p.ods.to_string(),
            name: p.name.clone(),
            state: p.state.as_str().to_string(),
            cohort: p.cohort,
            sent: p.sent,
            delivered: p.delivered,
            letters: p.letters,
            excluded: p.excluded,
        })
        .collect();
    let duplicate_sends = stack.duplicate_sends();
    let all_practices = stack.estate.practices();
    Ok(DemoReport {
        campaign: id.to_string(),
        state: report.state.as_str().to_string(),
        region_patients: all_practices.iter().map(|p| p.list_size).sum(),
        region_practices: all_practices.len(),
        cohort: totals.cohort,
        sent: totals.sent,
        delivered: totals.delivered,
        failed: totals.failed,
        letters: totals.letters,
        excluded,
        written_back: totals.written_back,
        opted_out_practices: report
            .opted_out_practices
            .iter()
            .map(|o| o.to_string())
            .collect(),
        practices_without_dsa: all_practices
            .iter()
            .filter(|p| p.dsa_signed.is_none())
            .map(|p| p.ods.to_string())
            .collect(),
        failed_practices: report
            .failed_practices
            .iter()
            .map(|o| o.to_string())
            .collect(),
        mesh_practices: stack
            .http
            .as_ref()
            .and_then(|http| http.mesh.as_ref())
            .map(|mesh| {
                mesh.practices
                    .iter()
                    .map(|(ods, _)| ods.to_string())
                    .collect()
            })
            .unwrap_or_default(),
        practices,
        duplicate_sends,
        patient_data_remaining: hub.patients.count_all().await?,
        purged_items: report.purged_items.unwrap_or(0),
        adds_up: report.adds_up,
        seconds: started.elapsed().as_secs_f64(),
        send_seconds,
        messages_per_second: if send_seconds > 0.0 {
            totals.sent as f64 / send_seconds
        } else {
            0.0
        },
    })
}

/// Polls `check` until it says yes or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let until = Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("timed out after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Brings the deadline forward to now as staff must: one person asks with
/// a reason, a second approves what was asked, recording an emergency
/// override (the window left after the notices is shorter than the
/// minimum).
pub async fn bring_deadline_forward_now(
    hub: &hub_core::handlers::Hub,
    requester: &StaffId,
    approver: &StaffId,
    id: &CampaignId,
) -> Result<hub_core::handlers::report::CampaignView, api::ApiError> {
    let asked = api::reschedule_deadline(
        hub,
        requester,
        id,
        &hub.now().to_rfc3339(),
        Some("the emergency cannot wait for the full window"),
    )
    .await?;
    let Some(change) = asked.deadline_change else {
        return Ok(asked);
    };
    api::approve_deadline_change(
        hub,
        approver,
        id,
        &change.to.to_rfc3339(),
        true,
        Some("agreed: the emergency cannot wait"),
    )
    .await
}
