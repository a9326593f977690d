//! Spreads SMS traffic across the configured provider keys by capacity and
//! paces each key with a bucket every send worker shares (`domain::pacing`:
//! in the hub table on Lambda, in memory within one process), so together
//! they stay within each key's rate and burst. A caller reserves a send time
//! before sending, so tokens are only taken for texts that go. A 429 holds
//! that key shut for everyone for its pause; a daily limit takes the key out
//! until the provider's day ends; when every key's day is full the router
//! says so ([`RouteError::Paused`]) rather than failing.

use crate::domain::pacing::{self, PaceGrant, PaceOp, RateUnit, SendLimit};
use crate::domain::plan::ProviderRate;
use crate::ports::{
    Accepted, Clock, HubStore, ProviderError, ProviderRecord, SmsProvider, SmsRequest, StoreError,
    SystemClock,
};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Consecutive failures that open a provider's circuit.
const CIRCUIT_THRESHOLD: u32 = 5;
/// How long an open circuit keeps a provider out.
const CIRCUIT_COOLDOWN: Duration = Duration::from_secs(5);
/// Attempts per message across providers before giving up for now (429s
/// do not count: they say the text was not taken).
const MAX_ATTEMPTS: u32 = 8;
/// How long a key is held after a 429 that names no `Retry-After`
/// (Notify's bucket refills continuously, so a second is plenty).
const RATE_LIMIT_HOLD: Duration = Duration::from_secs(1);
/// Slack when choosing among keys: a reservation up to this much later
/// than the best key's last known slot is taken at once.
const PICK_SLACK: Duration = Duration::from_millis(100);
/// Time kept for the provider call itself when waiting for a slot (at
/// most half of what is left of the message's deadline).
const CALL_TIME: Duration = Duration::from_secs(10);
/// Compare-and-set attempts on a shared bucket before giving up.
const PACE_CAS_ATTEMPTS: u32 = 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The number was refused (HTTP 400): an outcome, not a fault.
    #[error("recipient rejected by {provider}")]
    Rejected { provider: String, reason: String },
    /// Every attempt failed or no provider is in rotation: try again later.
    #[error("no provider accepted the message: {0}")]
    Unavailable(String),
    /// No provider was given the text (no slot within the deadline, or
    /// only 429s): its claim can be released at once.
    #[error("message not sent yet: {0}")]
    NotSent(String),
    /// Every key has reached its daily limit: sending resumes at `until`.
    #[error("every provider key has reached its daily limit until {until}")]
    Paused { until: DateTime<Utc> },
    /// Every remaining provider refused our credentials: alarm and stop.
    #[error("every provider refused our credentials")]
    Unauthorised,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    out_until: Option<Instant>,
    /// Credentials refused: out until the process restarts.
    out_for_good: Option<&'static str>,
}

struct Lane {
    provider: Arc<dyn SmsProvider>,
    /// The shared bucket's key.
    key: String,
    unit: RateUnit,
    limit: SendLimit,
    health: Mutex<Health>,
    /// This process's last known free slot of the key (to choose keys
    /// without asking every bucket).
    hint: Mutex<Option<DateTime<Utc>>>,
    /// The key's day is full until then.
    day_full_until: Mutex<Option<DateTime<Utc>>>,
    sent: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these short, arithmetic-only locks leaves
    // consistent data; keep going rather than poison every later send.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The burst a provider allows for `per_second` of `unit`: GOV.UK Notify's
/// bucket holds a third of a minute's requests plus one, at most 1,001;
/// AWS End User Messaging is taken as one second of parts.
pub fn provider_burst(per_second: f64, unit: RateUnit) -> f64 {
    match unit {
        RateUnit::Requests => (per_second * 60.0 / 3.0 + 1.0).min(1_001.0),
        RateUnit::Parts => per_second.max(1.0),
    }
}

impl Lane {
    fn new(provider: Arc<dyn SmsProvider>, per_second: f64) -> Self {
        let unit = provider.rate_unit();
        let per_second = per_second.max(0.01);
        let limit = SendLimit {
            per_second,
            // Half the provider's burst: sends reach it up to a few hundred
            // milliseconds apart, and the slack absorbs that jitter.
            burst: (provider_burst(per_second, unit) / 2.0).max(1.0),
            daily_cap: provider.daily_cap(),
        };
        Lane {
            key: format!("sms:{}", provider.name()),
            provider,
            unit,
            limit,
            health: Mutex::new(Health::default()),
            hint: Mutex::new(None),
            day_full_until: Mutex::new(None),
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }

    fn available(&self, now: Instant) -> bool {
        let health = lock(&self.health);
        health.out_for_good.is_none() && health.out_until.is_none_or(|until| now >= until)
    }

    /// Out for a while (open circuit), not for good.
    fn out_for_circuit(&self, now: Instant) -> bool {
        let health = lock(&self.health);
        health.out_for_good.is_none() && health.out_until.is_some_and(|until| now < until)
    }

    fn day_full(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        lock(&self.day_full_until).filter(|until| *until > now)
    }

    fn cost(&self, request: &SmsRequest) -> f64 {
        match self.unit {
            RateUnit::Requests => 1.0,
            RateUnit::Parts => f64::from(request.fragments.max(1)),
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

/// Where the send buckets live.
enum Pacer {
    /// One process: every worker shares this router.
    Local(Mutex<HashMap<String, pacing::PaceBucket>>),
    /// Many processes (Lambda): the hub table, by compare-and-set.
    Shared(Arc<dyn HubStore>),
}

impl Pacer {
    async fn apply(
        &self,
        lane: &Lane,
        op: PaceOp,
        now: DateTime<Utc>,
    ) -> Result<PaceGrant, StoreError> {
        match self {
            Pacer::Local(buckets) => {
                let mut buckets = lock(buckets);
                let bucket = buckets.entry(lane.key.clone()).or_default();
                let (grant, next) = pacing::apply(bucket, &lane.limit, op, now);
                if let Some(next) = next {
                    *bucket = next;
                }
                Ok(grant)
            }
            Pacer::Shared(store) => pace_shared(&**store, &lane.key, &lane.limit, op, now).await,
        }
    }
}

/// Applies `op` to the send bucket `key` kept in `store`: read, apply,
/// compare-and-set, again on a conflict. Every process that paces a key
/// this way shares its rate.
pub async fn pace_shared(
    store: &dyn HubStore,
    key: &str,
    limit: &SendLimit,
    op: PaceOp,
    now: DateTime<Utc>,
) -> Result<PaceGrant, StoreError> {
    for attempt in 0..PACE_CAS_ATTEMPTS {
        let bucket = store.get_pace_bucket(key).await?;
        let (grant, next) = pacing::apply(&bucket, limit, op, now);
        let Some(next) = next else {
            return Ok(grant);
        };
        match store.put_pace_bucket(key, &next).await {
            Ok(()) => return Ok(grant),
            Err(StoreError::Conflict(_)) => {
                tokio::time::sleep(super::backoff(
                    attempt,
                    Duration::from_millis(2),
                    Duration::from_millis(200),
                ))
                .await;
            }
            Err(error) => return Err(error),
        }
    }
    Err(StoreError::Conflict(format!(
        "send bucket {key} kept changing"
    )))
}

/// Per-provider counters for reports and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneStatus {
    pub name: String,
    pub rate: f64,
    pub sent: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub in_rotation: bool,
}

/// Why no key could take a text now.
enum NoSlot {
    /// Every key's day is full until then.
    DayFull(DateTime<Utc>),
    /// No key has a slot before the deadline (or none is in rotation).
    NotBefore(String),
}

pub struct ProviderRouter {
    lanes: Vec<Lane>,
    pacer: Pacer,
    clock: Arc<dyn Clock>,
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

/// The provider id recorded for a text whose provider gave an ambiguous
/// answer and cannot be asked whether it took it.
pub const UNCONFIRMED_PROVIDER_ID: &str = "unconfirmed";

/// Default for [`ProviderRouter::with_ambiguity_grace`]: how long after a
/// timeout, 5xx or lost answer the router waits before asking the same
/// provider whether it has the message (never more than a quarter of the
/// send deadline).
pub const DEFAULT_AMBIGUITY_GRACE: Duration = Duration::from_secs(5);

/// Default for [`ProviderRouter::with_deadline`].
pub const DEFAULT_SEND_DEADLINE: Duration = Duration::from_secs(60);

impl ProviderRouter {
    /// Each provider with its rate (per second of its [`RateUnit`]), paced
    /// in this process. [`ProviderRouter::with_shared_pacing`] shares the
    /// buckets between processes.
    pub fn new(providers: Vec<(Arc<dyn SmsProvider>, f64)>) -> Self {
        let lanes = providers
            .into_iter()
            .map(|(provider, rate)| Lane::new(provider, rate))
            .collect();
        Self {
            lanes,
            pacer: Pacer::Local(Mutex::new(HashMap::new())),
            clock: Arc::new(SystemClock),
            deadline: DEFAULT_SEND_DEADLINE,
            ambiguity_grace: DEFAULT_AMBIGUITY_GRACE,
        }
    }

    /// Keeps the send buckets in `store`, shared by every process using it
    /// (the concurrent send invocations on Lambda).
    pub fn with_shared_pacing(mut self, store: Arc<dyn HubStore>) -> Self {
        self.pacer = Pacer::Shared(store);
        self
    }

    /// The clock reservations are made on (the hub's).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
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
                per_second: lane.limit.per_second,
                unit: lane.unit,
                daily_limit: lane.limit.daily_cap,
            })
            .collect()
    }

    /// A key at its daily limit is out of rotation until its day ends.
    pub fn status(&self) -> Vec<LaneStatus> {
        let now = Instant::now();
        let today = self.clock.now();
        self.lanes
            .iter()
            .map(|lane| LaneStatus {
                name: lane.provider.name().to_string(),
                rate: lane.limit.per_second,
                sent: lane.sent.load(Ordering::Relaxed),
                errors: lane.errors.load(Ordering::Relaxed),
                rate_limited: lane.rate_limited.load(Ordering::Relaxed),
                in_rotation: lane.available(now) && lane.day_full(today).is_none(),
            })
            .collect()
    }

    /// Reserves a send time on the key that can take `request` soonest,
    /// no later than `latest`. Writes nothing for a slot it does not take.
    async fn reserve(
        &self,
        request: &SmsRequest,
        latest: DateTime<Utc>,
    ) -> Result<Result<(&Lane, DateTime<Utc>), NoSlot>, StoreError> {
        let now = self.clock.now();
        let instant = Instant::now();
        let mut candidates: Vec<(&Lane, DateTime<Utc>)> = Vec::new();
        let mut full_until: Option<DateTime<Utc>> = None;
        for lane in self.lanes.iter().filter(|lane| lane.available(instant)) {
            match lane.day_full(now) {
                Some(until) => full_until = Some(full_until.map_or(until, |u| u.min(until))),
                None => candidates.push((lane, lock(&lane.hint).unwrap_or(now).max(now))),
            }
        }
        candidates.sort_by_key(|(_, hint)| *hint);
        let Some(best) = candidates.first().map(|(_, hint)| *hint) else {
            return Ok(Err(match full_until {
                Some(until) if !self.lanes.iter().any(|l| l.out_for_circuit(instant)) => {
                    NoSlot::DayFull(until)
                }
                _ => NoSlot::NotBefore("no provider in rotation".into()),
            }));
        };
        // First the keys in order of their known next slot, accepting one
        // close to the best; then the soonest, up to `latest`.
        let eager = (best + PICK_SLACK).min(latest);
        let mut soonest: Option<(&Lane, DateTime<Utc>)> = None;
        for (lane, _) in &candidates {
            let op = PaceOp::Reserve {
                cost: lane.cost(request),
                latest: eager,
            };
            match self.pacer.apply(lane, op, now).await? {
                PaceGrant::SendAt(at) => {
                    *lock(&lane.hint) = Some(at);
                    return Ok(Ok((lane, at)));
                }
                PaceGrant::NotBefore(at) => {
                    *lock(&lane.hint) = Some(at);
                    if soonest.is_none_or(|(_, s)| at < s) {
                        soonest = Some((lane, at));
                    }
                }
                PaceGrant::DayFull { until } => {
                    *lock(&lane.day_full_until) = Some(until);
                    full_until = Some(full_until.map_or(until, |u| u.min(until)));
                }
                PaceGrant::Recorded => {}
            }
        }
        let Some((lane, at)) = soonest else {
            return Ok(Err(match full_until {
                Some(until) => NoSlot::DayFull(until),
                None => NoSlot::NotBefore("no provider in rotation".into()),
            }));
        };
        if at > latest {
            return Ok(Err(NoSlot::NotBefore(format!(
                "no slot at {} before the message's deadline",
                lane.provider.name()
            ))));
        }
        let op = PaceOp::Reserve {
            cost: lane.cost(request),
            latest,
        };
        match self.pacer.apply(lane, op, self.clock.now()).await? {
            PaceGrant::SendAt(at) => {
                *lock(&lane.hint) = Some(at);
                Ok(Ok((lane, at)))
            }
            PaceGrant::DayFull { until } => {
                *lock(&lane.day_full_until) = Some(until);
                Ok(Err(NoSlot::NotBefore(format!(
                    "{} reached its daily limit",
                    lane.provider.name()
                ))))
            }
            PaceGrant::NotBefore(_) | PaceGrant::Recorded => Ok(Err(NoSlot::NotBefore(format!(
                "no slot at {} before the message's deadline",
                lane.provider.name()
            )))),
        }
    }

    /// Records a 429 or a full day on a key's shared bucket; a store fault
    /// here only costs pacing accuracy, so it is logged, not returned.
    async fn record(&self, lane: &Lane, op: PaceOp) {
        if let Err(error) = self.pacer.apply(lane, op, self.clock.now()).await {
            tracing::warn!(provider = lane.provider.name(), %error, "send bucket not updated");
        }
    }

    /// Sends one message, returning the provider's name and its id.
    pub async fn send(&self, request: &SmsRequest) -> Result<(String, Accepted), RouteError> {
        let mut last_problem = String::from("no provider in rotation");
        let mut all_unauthorised = !self.lanes.is_empty();
        // Whether some provider may have taken the text (a 5xx or timeout).
        let mut maybe_sent = false;
        let started = Instant::now();
        let mut attempt = 0;
        while attempt < MAX_ATTEMPTS {
            let remaining = self.deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                break;
            }
            // Wait for a slot only as long as leaves the call its time.
            let call_time = (remaining / 2).min(CALL_TIME);
            let latest = self.clock.now()
                + chrono::Duration::from_std(remaining - call_time)
                    .unwrap_or(chrono::Duration::MAX);
            let reserved = self.reserve(request, latest).await.map_err(|error| {
                RouteError::Unavailable(format!("send bucket unavailable: {error}"))
            });
            let (lane, send_at) = match reserved {
                Err(error) if maybe_sent => return Err(error),
                Err(RouteError::Unavailable(problem)) => return Err(RouteError::NotSent(problem)),
                Err(error) => return Err(error),
                Ok(Ok(slot)) => slot,
                Ok(Err(NoSlot::DayFull(until))) if !maybe_sent => {
                    return Err(RouteError::Paused { until })
                }
                Ok(Err(NoSlot::DayFull(_))) => break,
                Ok(Err(NoSlot::NotBefore(problem))) => {
                    // Every circuit may be open: wait for the soonest to close.
                    let instant = Instant::now();
                    let soonest = self
                        .lanes
                        .iter()
                        .filter_map(|lane| {
                            let health = lock(&lane.health);
                            if health.out_for_good.is_some() {
                                None
                            } else {
                                health.out_until.filter(|until| *until > instant)
                            }
                        })
                        .min();
                    match soonest {
                        Some(until) if until < started + self.deadline => {
                            tokio::time::sleep_until(until).await;
                            continue;
                        }
                        // Only refused credentials stop sending: a circuit
                        // opened by 5xx is an outage, retried later.
                        _ if all_unauthorised
                            && self
                                .lanes
                                .iter()
                                .all(|l| !l.available(instant) && !l.out_for_circuit(instant)) =>
                        {
                            return Err(RouteError::Unauthorised)
                        }
                        _ => {
                            last_problem = problem;
                            break;
                        }
                    }
                }
            };
            let wait = (send_at - self.clock.now()).to_std().unwrap_or_default();
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
                    // Not taken: hold this key for everyone, not the others,
                    // and try again without spending an attempt.
                    all_unauthorised = false;
                    lane.rate_limited.fetch_add(1, Ordering::Relaxed);
                    last_problem = format!("{} rate limited", lane.provider.name());
                    let until = self.clock.now()
                        + chrono::Duration::from_std(retry_after.unwrap_or(RATE_LIMIT_HOLD))
                            .unwrap_or_default();
                    self.record(lane, PaceOp::Hold { until }).await;
                    continue;
                }
                Err(ProviderError::DailyLimit) => {
                    all_unauthorised = false;
                    last_problem = format!("{} reached its daily limit", lane.provider.name());
                    *lock(&lane.day_full_until) = Some(pacing::next_day(self.clock.now()));
                    self.record(lane, PaceOp::DayFull).await;
                    continue;
                }
                Err(ProviderError::Unauthorised(_)) => {
                    last_problem = format!("{} refused our credentials", lane.provider.name());
                    lane.errors.fetch_add(1, Ordering::Relaxed);
                    lane.take_out("credentials refused");
                }
                Err(ProviderError::Unavailable(reason)) => {
                    all_unauthorised = false;
                    maybe_sent = true;
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
            attempt += 1;
        }
        if maybe_sent {
            Err(RouteError::Unavailable(last_problem))
        } else {
            Err(RouteError::NotSent(last_problem))
        }
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
        if !lane.provider.answers_lookups() {
            // Nothing to ask: at most once, so the text counts as sent.
            tracing::warn!(
                provider = lane.provider.name(),
                "ambiguous answer from a provider that cannot be asked by reference: counted as sent, not repeated"
            );
            return Settled::Accepted(Accepted {
                provider_id: UNCONFIRMED_PROVIDER_ID.to_string(),
            });
        }
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
