//! The realistic-limits scenario: a whole campaign on the embedded stack
//! with providers at their documented limits (GOV.UK Notify keys at 3,000
//! requests a minute and 250,000 texts a day, AWS End User Messaging senders
//! at 10 parts a second), in virtual time. Run it on a current-thread tokio
//! runtime with paused time: the hub, the simulators and the harness share
//! one clock ([`TokioClock`]) that jumps ahead whenever everything waits, so
//! hours of sending take minutes. Database work runs on blocking threads,
//! during which tokio does not move paused time.

use crate::demo::DemoOptions;
use crate::{LocalStack, Transport};
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use hub_core::domain::{CampaignState, StaffId};
use hub_core::handlers::api::{self, CreateCampaignRequest, TargetRequest};
use hub_core::handlers::report;
use hub_core::handlers::HubConfig;
use hub_core::ports::{Clock, QueueName};
use hub_sim::GatewayConfig;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Wall-clock time that follows tokio's clock (virtual when paused).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: DateTime<Utc>,
    start: Instant,
}

impl TokioClock {
    pub fn starting_now() -> Self {
        Self {
            base: Utc::now(),
            start: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct LimitsOptions {
    pub practices: usize,
    pub patients: u64,
    /// GOV.UK Notify API keys (services), each at its documented limits.
    pub notify_keys: usize,
    /// AWS End User Messaging sender IDs at 10 parts a second.
    pub eum_senders: usize,
    /// Send workers (the send function's maximum concurrency).
    pub workers: usize,
    pub seed: u64,
    pub message: String,
    /// SQLite file for the tables and queues (`None`: in memory, which at
    /// 2,000,000 patients holds every record in RAM).
    pub database: Option<PathBuf>,
}

impl Default for LimitsOptions {
    fn default() -> Self {
        Self {
            practices: 200,
            patients: 2_000_000,
            notify_keys: 8,
            eum_senders: 1,
            workers: 20,
            seed: 42,
            message: DemoOptions::default().message,
            database: None,
        }
    }
}

/// What the scenario measured; times are virtual seconds.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsReport {
    pub texts: u64,
    pub letters: u64,
    pub fragments_per_message: u32,
    /// The providers' configured rate for this message, texts a second.
    pub configured_per_second: f64,
    /// Texts a second from the first text to the last.
    pub achieved_per_second: f64,
    pub utilisation: f64,
    /// The lowest utilisation of any whole minute of sending.
    pub worst_minute: Option<f64>,
    pub rate_limited: u64,
    pub deadline_to_first_text: f64,
    /// Deadline to the last text.
    pub completion: f64,
    /// The plan's ETA for these texts.
    pub plan_eta: f64,
    pub completion_vs_eta: f64,
    pub duplicates: u64,
    pub dead_lettered: usize,
    pub virtual_seconds: f64,
    pub real_seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// Peak resident memory of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs the scenario. Call on a current-thread runtime with paused time.
pub async fn run_limits(options: &LimitsOptions) -> anyhow::Result<LimitsReport> {
    let real_start = std::time::Instant::now();
    let clock = Arc::new(TokioClock::starting_now());
    let demo = DemoOptions {
        practices: options.practices,
        patients: options.patients,
        seed: options.seed,
        transport: Transport::InProcess,
        message: options.message.clone(),
        database: options.database.clone(),
        ..DemoOptions::default()
    };
    let mut config = demo.stack_config();
    // The template's settings, not the demo's short cuts.
    config.hub = HubConfig {
        receipt_window: chrono::Duration::minutes(5),
        ..HubConfig::default()
    };
    config.sms_gateways = (1..=options.notify_keys)
        .map(|i| GatewayConfig::notify_documented(format!("notify-{i}"), options.seed + i as u64))
        .chain((1..=options.eum_senders).map(|i| {
            GatewayConfig::eum_documented(format!("eum-{i}"), options.seed + 100 + i as u64)
        }))
        .collect();
    // Idle pollers wait a second between empty receives (Lambda's pollers
    // long-poll); the visibility timeout is the template's 6 × 15 minutes.
    config.poll_interval = Duration::from_secs(1);
    config.visibility_timeout = Duration::from_secs(90 * 60);
    let stack =
        LocalStack::start_in_virtual_time(config, clock.clone(), Some(options.workers)).await?;
    let result = drive(&stack, options, real_start).await;
    stack.shutdown();
    result
}

async fn drive(
    stack: &Arc<LocalStack>,
    options: &LimitsOptions,
    real_start: std::time::Instant,
) -> anyhow::Result<LimitsReport> {
    let hub = &stack.hub;
    let started = Instant::now();
    let request = CreateCampaignRequest {
        name: "Realistic limits".into(),
        message: options.message.clone(),
        target: TargetRequest::default(),
        optout_deadline: (hub.now() + chrono::Duration::hours(1)).to_rfc3339(),
        justification: "Sending at the providers' documented limits".into(),
        postal_fallback: true,
        one_message_per_mobile: false,
    };
    let creator = StaffId::new("arn:aws:iam::000000000000:user/alice");
    let approver = StaffId::new("arn:aws:iam::000000000000:user/bob");
    let id = api::create_campaign(hub, &creator, &request)
        .await
        .map_err(|e| anyhow::anyhow!("create: {e}: {}", e.body()))?
        .campaign
        .id;
    api::approve(hub, &approver, &id)
        .await
        .map_err(|e| anyhow::anyhow!("approve: {e}"))?;
    crate::demo::bring_deadline_forward_now(hub, &creator, &approver, &id)
        .await
        .map_err(|e| anyhow::anyhow!("deadline: {e}"))?;
    let deadline = Instant::now();

    // Texts accepted by every provider, sampled four times a virtual second.
    let samples: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
    let sampler = {
        let (stack, samples) = (stack.clone(), samples.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let sent: usize = stack.gateways.iter().map(|g| g.sent_count()).sum();
                let at = (Instant::now() - deadline).as_secs_f64();
                if let Ok(mut samples) = samples.lock() {
                    samples.push((at, sent as u64));
                }
            }
        })
    };
    let limit = Instant::now() + Duration::from_secs(30 * 24 * 3600);
    loop {
        let campaign = hub.campaign(&id).await?;
        if matches!(
            campaign.state,
            CampaignState::AwaitingReceipts | CampaignState::Completed | CampaignState::Cancelled
        ) {
            break;
        }
        if Instant::now() > limit {
            bail!("the campaign did not finish within 30 virtual days");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    sampler.abort();
    let campaign = hub.campaign(&id).await?;
    let totals = api::report(hub, &id)
        .await
        .map_err(|e| anyhow::anyhow!("report: {e}"))?
        .totals;
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let texts = totals.sent;
    let first = samples
        .iter()
        .find(|(_, sent)| *sent > 0)
        .map(|(at, _)| *at)
        .context("no text was sent")?;
    let last = samples
        .iter()
        .find(|(_, sent)| *sent >= texts)
        .map(|(at, _)| *at)
        .unwrap_or(first);
    let plan = report::plan_for(hub, &campaign, texts);
    let configured = plan.messages_per_second;
    let achieved = texts as f64 / (last - first).max(0.25);
    let at = |t: f64| {
        samples
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(0, |(_, sent)| *sent)
    };
    let worst_minute = (0..)
        .map(|m| first + f64::from(m) * 60.0)
        .take_while(|start| start + 60.0 <= last)
        .map(|start| (at(start + 60.0) - at(start)) as f64 / (60.0 * configured))
        .min_by(f64::total_cmp);
    let mut dead_lettered = 0;
    for queue in QueueName::ALL {
        dead_lettered += stack.queue.dead_letters(queue).await?.len();
    }
    Ok(LimitsReport {
        texts,
        letters: totals.letters,
        fragments_per_message: plan.fragments_per_message,
        configured_per_second: configured,
        achieved_per_second: achieved,
        utilisation: achieved / configured,
        worst_minute,
        rate_limited: stack.gateways.iter().map(|g| g.rate_limited_count()).sum(),
        deadline_to_first_text: first,
        completion: last,
        plan_eta: plan.eta.as_secs_f64(),
        completion_vs_eta: last / plan.eta.as_secs_f64(),
        duplicates: stack.duplicate_sends(),
        dead_lettered,
        virtual_seconds: (Instant::now() - started).as_secs_f64(),
        real_seconds: real_start.elapsed().as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
    })
}
