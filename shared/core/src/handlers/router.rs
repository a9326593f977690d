//! Spreads SMS traffic across the configured providers by capacity, paces
//! each with a token bucket so none is pushed past its rate, backs off on
//! 429 and 5xx, and takes a provider out of rotation when it hits its daily
//! limit, refuses our credentials or keeps failing.

use crate::domain::plan::ProviderRate;
use crate::ports::{Accepted, ProviderError, ProviderRecord, SmsProvider, SmsRequest};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Consecutive failures that open a provider's circuit.
const CIRCUIT_THRESHOLD: u32 = 5;
/// How long an open circuit keeps a provider out.
const CIRCUIT_COOLDOWN: Duration = Duration::from_secs(5);
/// Attempts per message across providers before giving up for now.
const MAX_ATTEMPTS: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The number was refused (HTTP 400): an outcome, not a fault.
    #[error("recipient rejected by {provider}")]
    Rejected { provider: String, reason: String },
    /// Every attempt failed or no provider is in rotation: try again later.
    #[error("no provider accepted the message: {0}")]
    Unavailable(String),
    /// Every remaining provider refused our credentials: alarm and stop.
    #[error("every provider refused our credentials")]
    Unauthorised,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    out_until: Option<Instant>,
    /// Daily limit or credentials: out until the process restarts or the day ends.
    out_for_good: Option<&'static str>,
}

struct Lane {
    provider: Arc<dyn SmsProvider>,
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
    health: Mutex<Health>,
    sent: AtomicU64,
    errors: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these short, arithmetic-only locks leaves
    // consistent data; keep going rather than poison every later send.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Lane {
    fn available(&self, now: Instant) -> bool {
        let health = lock(&self.health);
        health.out_for_good.is_none() && health.out_until.is_none_or(|until| now >= until)
    }

    /// Takes `cost` tokens, returning how long the caller must wait first.
    fn reserve(&self, cost: f64, now: Instant) -> Duration {
        let mut bucket = lock(&self.bucket);
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        bucket.tokens -= cost;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / self.rate)
        }
    }

    /// How long until `cost` tokens would be there, without taking them.
    fn wait_for(&self, cost: f64, now: Instant) -> f64 {
        let bucket = lock(&self.bucket);
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        let tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        if tokens >= cost {
            0.0
        } else {
            (cost - tokens) / self.rate
        }
    }

    fn succeeded(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        lock(&self.health).consecutive_failures = 0;
    }

    fn failed(&self, now: Instant) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut health = lock(&self.health);
        health.consecutive_failures += 1;
        if health.consecutive_failures >= CIRCUIT_THRESHOLD {
            health.out_until = Some(now + CIRCUIT_COOLDOWN);
            health.consecutive_failures = 0;
            tracing::warn!(provider = self.provider.name(), "provider circuit opened");
        }
    }

    fn take_out(&self, why: &'static str) {
        let mut health = lock(&self.health);
        if health.out_for_good.is_none() {
            tracing::error!(
                provider = self.provider.name(),
                why,
                "provider taken out of rotation"
            );
        }
        health.out_for_good = Some(why);
    }
}

/// Per-provider counters for reports and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneStatus {
    pub name: String,
    pub rate: f64,
    pub sent: u64,
    pub errors: u64,
    pub in_rotation: bool,
}

pub struct ProviderRouter {
    lanes: Vec<Lane>,
    /// The longest one message may spend in `send`, retries included. A
    /// claim is only presumed dead after `HubConfig::stale_after`, which
    /// must be longer, so a live sender is never overtaken by a re-send.
    deadline: Duration,
    /// Wait before reconciling an ambiguous send (see `settle_ambiguous`).
    ambiguity_grace: Duration,
}

/// How an ambiguous send turned out at its provider.
enum Settled {
    Accepted(Accepted),
    NotThere,
    Unknown(String),
}

/// Default for [`ProviderRouter::with_ambiguity_grace`]: how long after a
/// timeout, 5xx or lost answer the router waits before asking the same
/// provider whether it has the message (never more than a quarter of the
/// send deadline).
pub const DEFAULT_AMBIGUITY_GRACE: Duration = Duration::from_secs(5);

/// Default for [`ProviderRouter::with_deadline`].
pub const DEFAULT_SEND_DEADLINE: Duration = Duration::from_secs(60);

impl ProviderRouter {
    /// `share` divides each provider's rate: on Lambda it is the send
    /// queue's maximum concurrency, as each invocation paces itself.
    pub fn new(providers: Vec<(Arc<dyn SmsProvider>, f64)>, share: u32) -> Self {
        let share = f64::from(share.max(1));
        let start = Instant::now();
        let lanes = providers
            .into_iter()
            .map(|(provider, rate)| {
                let rate = (rate / share).max(0.01);
                // One second of burst, but never less than one long message.
                let burst = rate.max(6.0);
                Lane {
                    provider,
                    rate,
                    burst,
                    bucket: Mutex::new(Bucket {
                        tokens: burst,
                        last: start,
                    }),
                    health: Mutex::new(Health::default()),
                    sent: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                }
            })
            .collect();
        Self {
            lanes,
            deadline: DEFAULT_SEND_DEADLINE,
            ambiguity_grace: DEFAULT_AMBIGUITY_GRACE,
        }
    }

    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn with_ambiguity_grace(mut self, grace: Duration) -> Self {
        self.ambiguity_grace = grace;
        self
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    pub fn rates(&self) -> Vec<ProviderRate> {
        self.lanes
            .iter()
            .map(|lane| ProviderRate {
                name: lane.provider.name().to_string(),
                fragments_per_second: lane.rate,
                daily_limit: None,
            })
            .collect()
    }

    pub fn status(&self) -> Vec<LaneStatus> {
        let now = Instant::now();
        self.lanes
            .iter()
            .map(|lane| LaneStatus {
                name: lane.provider.name().to_string(),
                rate: lane.rate,
                sent: lane.sent.load(Ordering::Relaxed),
                errors: lane.errors.load(Ordering::Relaxed),
                in_rotation: lane.available(now),
            })
            .collect()
    }

    /// The provider that can take `cost` soonest, among those in rotation.
    fn pick(&self, cost: f64, now: Instant) -> Option<&Lane> {
        self.lanes
            .iter()
            .filter(|lane| lane.available(now))
            .min_by(|a, b| a.wait_for(cost, now).total_cmp(&b.wait_for(cost, now)))
    }

    /// Sends one message, returning the provider's name and its id.
    pub async fn send(&self, request: &SmsRequest) -> Result<(String, Accepted), RouteError> {
        let cost = f64::from(request.fragments.max(1));
        let mut last_problem = String::from("no provider in rotation");
        let mut all_unauthorised = !self.lanes.is_empty();
        let started = Instant::now();
        for attempt in 0..MAX_ATTEMPTS {
            let now = Instant::now();
            let remaining = self.deadline.saturating_sub(now - started);
            if remaining.is_zero() {
                break;
            }
            let Some(lane) = self.pick(cost, now) else {
                // Every circuit is open: wait for the soonest to close.
                let soonest = self
                    .lanes
                    .iter()
                    .filter_map(|lane| {
                        let health = lock(&lane.health);
                        if health.out_for_good.is_some() {
                            None
                        } else {
                            health.out_until
                        }
                    })
                    .min();
                match soonest {
                    Some(until) => {
                        tokio::time::sleep_until(until.min(now + remaining)).await;
                        continue;
                    }
                    None if all_unauthorised => return Err(RouteError::Unauthorised),
                    None => return Err(RouteError::Unavailable(last_problem)),
                }
            };
            let wait = lane.reserve(cost, now);
            if wait >= remaining {
                break;
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let left = self.deadline.saturating_sub(started.elapsed());
            let outcome = tokio::time::timeout(left, lane.provider.send_sms(request))
                .await
                .unwrap_or_else(|_| Err(ProviderError::Unavailable("timed out".into())));
            match outcome {
                Ok(accepted) => {
                    lane.succeeded();
                    return Ok((lane.provider.name().to_string(), accepted));
                }
                Err(ProviderError::Rejected(reason)) => {
                    lane.succeeded();
                    return Err(RouteError::Rejected {
                        provider: lane.provider.name().to_string(),
                        reason,
                    });
                }
                Err(ProviderError::RateLimited { retry_after }) => {
                    all_unauthorised = false;
                    last_problem = format!("{} rate limited", lane.provider.name());
                    // Drain the bucket so this lane slows down for everyone.
                    lane.reserve(lane.burst, Instant::now());
                    let pause = retry_after.unwrap_or_else(|| {
                        super::backoff(attempt, Duration::from_millis(100), Duration::from_secs(5))
                    });
                    tokio::time::sleep(pause.min(self.deadline.saturating_sub(started.elapsed())))
                        .await;
                }
                Err(ProviderError::DailyLimit) => {
                    all_unauthorised = false;
                    last_problem = format!("{} reached its daily limit", lane.provider.name());
                    lane.take_out("daily limit reached");
                }
                Err(ProviderError::Unauthorised(_)) => {
                    last_problem = format!("{} refused our credentials", lane.provider.name());
                    lane.errors.fetch_add(1, Ordering::Relaxed);
                    lane.take_out("credentials refused");
                }
                Err(ProviderError::Unavailable(reason)) => {
                    all_unauthorised = false;
                    last_problem = format!("{}: {reason}", lane.provider.name());
                    lane.failed(Instant::now());
                    // A timeout, a 5xx or a lost answer may hide a text the
                    // provider accepted, or is still accepting: settle it at
                    // this provider before it goes anywhere else.
                    match self.settle_ambiguous(lane, request, started).await {
                        Settled::Accepted(accepted) => {
                            lane.succeeded();
                            return Ok((lane.provider.name().to_string(), accepted));
                        }
                        Settled::NotThere => {
                            let pause = super::backoff(
                                attempt,
                                Duration::from_millis(50),
                                Duration::from_secs(5),
                            );
                            tokio::time::sleep(
                                pause.min(self.deadline.saturating_sub(started.elapsed())),
                            )
                            .await;
                        }
                        Settled::Unknown(why) => {
                            // Keep the claim: the send handler looks the
                            // reference up again before anything is re-sent.
                            return Err(RouteError::Unavailable(format!(
                                "{}: {why}",
                                lane.provider.name()
                            )));
                        }
                    }
                }
            }
        }
        Err(RouteError::Unavailable(last_problem))
    }

    /// After an ambiguous answer from `lane`: waits the grace period (so a
    /// request the provider is still working on has landed), then asks the
    /// same provider for our reference. Only a clear "not there" lets the
    /// message be sent again, here or elsewhere.
    async fn settle_ambiguous(
        &self,
        lane: &Lane,
        request: &SmsRequest,
        started: Instant,
    ) -> Settled {
        let grace = self.ambiguity_grace.min(self.deadline / 4);
        if self.deadline.saturating_sub(started.elapsed()) <= grace {
            return Settled::Unknown("no time left to look the message up".into());
        }
        tokio::time::sleep(grace).await;
        let left = self.deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, lane.provider.find_by_reference(&request.reference)).await
        {
            Ok(Ok(Some(record))) => Settled::Accepted(Accepted {
                provider_id: record.provider_id,
            }),
            Ok(Ok(None)) => Settled::NotThere,
            Ok(Err(error)) => Settled::Unknown(format!("lookup failed: {error}")),
            Err(_) => Settled::Unknown("lookup timed out".into()),
        }
    }

    /// Asks every provider whether it has a notification with `reference`:
    /// used to reconcile a claim whose response was lost.
    pub async fn find_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<(String, ProviderRecord)>, RouteError> {
        for lane in &self.lanes {
            match lane.provider.find_by_reference(reference).await {
                Ok(Some(record)) => return Ok(Some((lane.provider.name().to_string(), record))),
                Ok(None) => {}
                Err(error) => {
                    return Err(RouteError::Unavailable(format!(
                        "lookup at {} failed: {error}",
                        lane.provider.name()
                    )))
                }
            }
        }
        Ok(None)
    }
}
