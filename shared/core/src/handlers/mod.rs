//! The handlers: one plain async function per Lambda function, taking the
//! ports in a [`Hub`]. The same code runs on Lambda, in the embedded local
//! stack and in the tests.

pub mod api;
pub mod deadline;
pub mod evidence;
pub mod extract;
pub mod jobs;
pub mod letters;
pub mod notices;
pub mod optout_token;
pub mod purge;
pub mod receipts;
pub mod report;
mod restrictions;
pub mod router;
pub mod send;
pub mod settle;
mod standby;
pub mod watchdog;
pub mod writeback;

use crate::domain::{
    plan::ProviderRate, AuditEvent, Campaign, CampaignId, CampaignState, Progress, TemplateRules,
};
use crate::ports::{
    Clock, EmailProvider, GpConnector, HubStore, JobQueue, LetterProvider, PatientDataStore,
    QueueError, ScheduledAction, Scheduler, SchedulerError, SmsProvider, StoreError,
};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

pub use router::ProviderRouter;

/// Tunables, read once at start-up.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Recipients per chunk (one send job each).
    pub chunk_size: usize,
    /// Recipients claimed and sent per step; cancel is checked between steps.
    pub send_batch: usize,
    /// Provider requests in flight per send invocation.
    pub send_concurrency: usize,
    /// Attempts at a practice's extraction before it is reported failed
    /// (the extract queue's `maxReceiveCount` must be larger).
    pub max_extract_attempts: u32,
    /// A practice whose extraction returns fewer records than this share
    /// of its registered list size is held as `extraction_suspect` for a
    /// staff decision (a practice with no list size on record never is).
    pub suspect_below: f64,
    /// An extraction or a send claim older than this is presumed dead. Must
    /// be longer than the functions' timeout and than `send_deadline`.
    pub stale_after: chrono::Duration,
    /// The longest one message may spend with the providers, retries included.
    pub send_deadline: Duration,
    /// How long delivery receipts are awaited before the purge.
    pub receipt_window: chrono::Duration,
    /// TTL on patient data: the safety net, never the plan.
    pub patient_data_ttl: chrono::Duration,
    /// Base of the one-click opt-out link in practice notices.
    pub optout_base_url: String,
    pub template_rules: TemplateRules,
    /// Configured SMS providers, for the plan and ETA.
    pub providers: Vec<ProviderRate>,
    /// Upper bound on the hub's total send rate (fragments/s), if any.
    pub rate_cap: Option<f64>,
    /// Furthest ahead an opt-out deadline may be set.
    pub max_deadline_ahead: chrono::Duration,
    /// This hub reads practices from the simulated GP estate (the local
    /// stack only): a practice saved without a GP system gets it.
    pub simulated_gp: bool,
    /// GP systems may be at http, loopback or private addresses (the
    /// local stack's simulators); never on AWS.
    pub local_gp_urls: bool,
    /// The shortest opt-out window left after every practice's notice was
    /// sent when the deadline is brought forward (unless the approver
    /// records an emergency override).
    pub min_optout_window: chrono::Duration,
    /// A practice or chunk not done this long into its stage is stuck: the
    /// watchdog retries it, then records it as failed.
    pub stuck_after: chrono::Duration,
    /// Which IAM identities hold which hub roles.
    pub access: crate::domain::AccessPolicy,
}

/// Settings the hub refuses to run with.
#[derive(Debug, thiserror::Error)]
#[error("invalid hub configuration: {0}")]
pub struct ConfigError(String);

impl HubConfig {
    /// Refuses settings under which a live sender could be overtaken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let stale = self.stale_after.to_std().unwrap_or_default();
        if stale <= self.send_deadline * 2 {
            return Err(ConfigError(format!(
                "stale_after ({stale:?}) must be more than twice send_deadline ({:?})",
                self.send_deadline
            )));
        }
        if self.chunk_size == 0 || self.send_batch == 0 {
            return Err(ConfigError(
                "chunk_size and send_batch must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            chunk_size: 250,
            send_batch: 50,
            send_concurrency: 32,
            max_extract_attempts: 3,
            // Far below: half. Registered lists and GP systems differ by a
            // few per cent; a wrong search form or a broken feed is ~0.
            suspect_below: 0.5,
            // Longer than the extract and send functions' 15-minute timeout,
            // so a live worker is never taken for a dead one.
            stale_after: chrono::Duration::minutes(20),
            send_deadline: router::DEFAULT_SEND_DEADLINE,
            receipt_window: chrono::Duration::hours(72),
            patient_data_ttl: chrono::Duration::days(7),
            optout_base_url: "https://hub.invalid".into(),
            template_rules: TemplateRules::default(),
            providers: Vec::new(),
            rate_cap: None,
            max_deadline_ahead: chrono::Duration::days(14),
            simulated_gp: false,
            local_gp_urls: false,
            min_optout_window: chrono::Duration::hours(2),
            stuck_after: chrono::Duration::hours(4),
            access: crate::domain::AccessPolicy::default(),
        }
    }
}

/// Everything a handler needs: the ports and the configuration.
#[derive(Clone)]
pub struct Hub {
    pub store: Arc<dyn HubStore>,
    pub patients: Arc<dyn PatientDataStore>,
    pub queue: Arc<dyn JobQueue>,
    pub scheduler: Arc<dyn Scheduler>,
    pub sms: Arc<ProviderRouter>,
    pub email: Arc<dyn EmailProvider>,
    pub letters: Arc<dyn LetterProvider>,
    pub gp: Arc<dyn GpConnector>,
    pub clock: Arc<dyn Clock>,
    pub optout_key: Arc<SecretString>,
    pub config: Arc<HubConfig>,
}

/// What a [`Hub`] is made of. [`HubParts::build`] is the one place that
/// turns adapters into a hub: the Lambda wiring, the local stack and the
/// tests all go through it.
pub struct HubParts {
    pub store: Arc<dyn HubStore>,
    pub patients: Arc<dyn PatientDataStore>,
    pub queue: Arc<dyn JobQueue>,
    pub scheduler: Arc<dyn Scheduler>,
    /// The SMS providers, each with its rate in fragments per second.
    pub sms: Vec<(Arc<dyn SmsProvider>, f64)>,
    /// How many send processes run at once and share those rates (more
    /// than one: the send buckets are kept in the hub table).
    pub send_workers: u32,
    pub email: Arc<dyn EmailProvider>,
    pub letters: Arc<dyn LetterProvider>,
    pub gp: Arc<dyn GpConnector>,
    pub clock: Arc<dyn Clock>,
    pub optout_key: SecretString,
    pub config: HubConfig,
}

impl HubParts {
    /// Validates the configuration, builds the provider router and plans
    /// against the providers' whole rate. With more than one send worker
    /// process the send buckets live in the hub table, shared by all.
    pub fn build(self) -> Result<Hub, ConfigError> {
        self.config.validate()?;
        let mut router = ProviderRouter::new(self.sms)
            .with_clock(self.clock.clone())
            .with_deadline(self.config.send_deadline);
        if self.send_workers > 1 {
            router = router.with_shared_pacing(self.store.clone());
        }
        let mut config = self.config;
        config.providers = router.rates();
        Ok(Hub {
            store: self.store,
            patients: self.patients,
            queue: self.queue,
            scheduler: self.scheduler,
            sms: Arc::new(router),
            email: self.email,
            letters: self.letters,
            gp: self.gp,
            clock: self.clock,
            optout_key: Arc::new(self.optout_key),
            config: Arc::new(config),
        })
    }
}

/// Any error kept as the cause of another.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a queued job did not finish. A failed message is reported back to its
/// queue; [`JobError::retryable`] says whether another delivery can help.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient: a provider, GP system or lock that may answer later.
    #[error("will retry: {reason}")]
    Retry {
        reason: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The message names something that does not exist or cannot be acted
    /// on; no later delivery will change that.
    #[error("message cannot be handled: {0}")]
    Malformed(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("scheduler: {0}")]
    Scheduler(#[from] SchedulerError),
}

impl JobError {
    /// A transient failure with nothing underneath.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            source: None,
        }
    }

    /// A transient failure caused by `source`.
    pub fn retry_because(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Retry {
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The one place that says whether a failed job is worth another
    /// delivery. A conflict is retried (the handler re-reads); a missing
    /// record or a malformed message is not.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Retry { .. } | Self::Queue(_) | Self::Scheduler(_) => true,
            Self::Malformed(_) => false,
            Self::Store(error) => error.retryable(),
        }
    }
}

impl Hub {
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    pub async fn audit(
        &self,
        campaign: Option<&CampaignId>,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.store
            .append_audit(&AuditEvent {
                campaign: campaign.cloned(),
                at: self.now(),
                actor: actor.to_string(),
                action: action.to_string(),
                detail,
            })
            .await
    }

    pub async fn campaign(&self, id: &CampaignId) -> Result<Campaign, StoreError> {
        self.store
            .get_campaign(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("campaign {id}")))
    }

    /// Re-reads the campaign and applies `change` until the compare-and-set
    /// write wins. `change` returns `false` to leave the record alone.
    pub async fn update_campaign_with<F>(
        &self,
        id: &CampaignId,
        mut change: F,
    ) -> Result<(Campaign, bool), StoreError>
    where
        F: FnMut(&mut Campaign) -> bool,
    {
        for _ in 0..20 {
            let mut campaign = self.campaign(id).await?;
            if !change(&mut campaign) {
                return Ok((campaign, false));
            }
            match self.store.update_campaign(&campaign).await {
                Ok(stored) => return Ok((stored, true)),
                Err(StoreError::Conflict(_)) => continue,
                Err(other) => return Err(other),
            }
        }
        Err(StoreError::unavailable(format!(
            "campaign {id} kept changing under an update"
        )))
    }

    /// Called after any change of the progress counters: moves the campaign
    /// on when extraction or sending has finished, and arranges the purge
    /// at the end of the receipt window.
    pub async fn after_progress(
        &self,
        id: &CampaignId,
        progress: Progress,
    ) -> Result<(), JobError> {
        if progress.chunks_outstanding == 0 {
            // A cancelled campaign's last chunk settled: its record is
            // complete, so its patient data goes.
            let campaign = self.campaign(id).await?;
            if campaign.state == CampaignState::Cancelled {
                if campaign.purged_at.is_none() {
                    self.queue
                        .send(&[crate::ports::Job::Purge {
                            campaign: id.clone(),
                        }])
                        .await?;
                }
                return Ok(());
            }
        }
        if progress.practices_pending > 0 {
            return Ok(());
        }
        let now = self.now();
        let (campaign, changed) = self.update_campaign_with(id, |c| c.advance(now)).await?;
        if changed {
            tracing::info!(campaign = %id, state = %campaign.state, "campaign moved on");
            self.audit(
                Some(id),
                "hub",
                &format!("state_{}", campaign.state),
                serde_json::json!({ "progress": campaign.progress }),
            )
            .await?;
            if campaign.state == CampaignState::AwaitingReceipts {
                self.arrange_purge(id).await?;
            }
        }
        Ok(())
    }

    /// Purge at the end of the receipt window (at once when it is zero).
    pub async fn arrange_purge(&self, id: &CampaignId) -> Result<(), JobError> {
        if self.config.receipt_window <= chrono::Duration::zero() {
            self.queue
                .send(&[crate::ports::Job::Purge {
                    campaign: id.clone(),
                }])
                .await?;
        } else {
            self.scheduler
                .schedule(
                    &ScheduledAction::Purge {
                        campaign: id.clone(),
                    },
                    self.now() + self.config.receipt_window,
                )
                .await?;
        }
        Ok(())
    }
}

/// Exponential backoff with full jitter.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    use rand::Rng;
    let ceiling = base
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(max);
    let millis = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
}
