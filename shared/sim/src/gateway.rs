//! A simulated SMS / email / letter gateway: a token-bucket rate limit,
//! latency, random 5xx, a daily limit, rejected numbers, delivery receipts
//! and runtime fault injection. It remembers what it accepted so tests can
//! prove there were no duplicate sends, in a few bytes per reference (a
//! 64-bit hash of it, the send count, the number, the time), so a
//! 2,000,000-text campaign costs tens of megabytes; it never logs a number
//! or a body.

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use hub_core::domain::pacing::RateUnit;
use hub_core::domain::{DeliveryStatus, UkMobile};
use hub_core::ports::{
    Accepted, Clock, DeliveryReceipt, EmailProvider, EmailRequest, LetterProvider, LetterRequest,
    ProviderError, ProviderRecord, ReceiptSink, SmsProvider, SmsRequest,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Ofcom drama-range number the gateway always rejects (as a 400).
pub const REJECTED_TEST_NUMBER: &str = "07700900999";

/// How a simulated gateway behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// The provider name (`SmsProvider::name`).
    pub name: String,
    /// Units per second (token bucket). Zero, negative or non-finite: no
    /// rate limit.
    pub rate_per_second: f64,
    /// What the rate counts: requests, as GOV.UK Notify (bucket of a third
    /// of a minute's requests plus one, at most 1,001), or message parts, as
    /// AWS End User Messaging (bucket of one second's parts).
    pub unit: RateUnit,
    /// Added to every call.
    pub latency: Duration,
    /// When above `latency`, each call takes a random time between the two.
    pub latency_max: Duration,
    /// Chance of a random 5xx (`Unavailable`) per SMS call, 0–1.
    pub failure_rate: f64,
    /// Texts accepted per UTC day.
    pub daily_limit: Option<u64>,
    /// Chance that an accepted text ends `PermanentFailure`, 0–1.
    pub delivery_failure_rate: f64,
    /// Time from acceptance to the delivery receipt.
    pub receipt_delay: Duration,
    pub seed: u64,
}

impl GatewayConfig {
    /// A well-behaved gateway: GOV.UK Notify's default rate (3,000
    /// requests a minute), no latency, no failures, no daily limit,
    /// receipts at once.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            rate_per_second: 50.0,
            unit: RateUnit::Requests,
            latency: Duration::ZERO,
            latency_max: Duration::ZERO,
            failure_rate: 0.0,
            daily_limit: None,
            delivery_failure_rate: 0.0,
            receipt_delay: Duration::ZERO,
            seed: 0,
        }
    }
}

impl GatewayConfig {
    /// One GOV.UK Notify API key at its documented limits: 3,000 requests
    /// a minute, 250,000 texts a day, tens to hundreds of milliseconds per
    /// call and an occasional 5xx.
    pub fn notify_documented(name: impl Into<String>, seed: u64) -> Self {
        Self {
            daily_limit: Some(250_000),
            latency: Duration::from_millis(30),
            latency_max: Duration::from_millis(300),
            failure_rate: 0.000_5,
            seed,
            ..Self::new(name)
        }
    }

    /// One AWS End User Messaging sender ID at its default: 10 message
    /// parts a second.
    pub fn eum_documented(name: impl Into<String>, seed: u64) -> Self {
        Self {
            rate_per_second: 10.0,
            unit: RateUnit::Parts,
            latency: Duration::from_millis(20),
            latency_max: Duration::from_millis(200),
            failure_rate: 0.000_5,
            seed,
            ..Self::new(name)
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self::new("sim")
    }
}

/// The simulated gateway. Cheap to clone (the clones share state).
#[derive(Clone)]
pub struct GatewaySim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GatewaySim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySim")
            .field("name", &self.inner.config.name)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: GatewayConfig,
    /// Origin of the records' times, on both clocks.
    started: Instant,
    started_wall: chrono::DateTime<Utc>,
    state: Mutex<State>,
    sink: Mutex<Option<Arc<dyn ReceiptSink>>>,
    /// Whose day the daily limit counts (the hub's clock in a scenario).
    clock: Mutex<Arc<dyn Clock>>,
    receipts_delivered: AtomicU64,
}

/// What the gateway keeps of one accepted reference.
struct SmsRecord {
    /// The first acceptance's id (a UUID's bytes).
    provider_id: [u8; 16],
    /// The number, as its national digits.
    to: u64,
    /// Milliseconds from the gateway's start to the first acceptance.
    accepted_ms: u32,
    /// Acceptances of this reference (more than one is a duplicate).
    sends: u32,
    outcome: DeliveryStatus,
}

/// How the gateway answers an SMS call it accepted.
enum Answer {
    Given,
    /// Accepted, but the answer never reaches the caller.
    Lost,
    /// Accepted, and the call never returns.
    Stalled,
}

/// The letters accepted for one reference.
struct LetterRecord {
    /// The first acceptance's id (a UUID's bytes).
    provider_id: [u8; 16],
    sends: u32,
}

/// One accepted text as a Notify lookup shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SmsLookup {
    pub provider_id: String,
    /// E.164, as Notify lists it.
    pub to: String,
    pub created_at: chrono::DateTime<Utc>,
    pub status: Option<DeliveryStatus>,
}

/// A stable 64-bit key for a reference or a number (SipHash with fixed
/// keys): at 2,000,000 references a collision has odds of about 1 in 10^7.
fn key_of(text: &str) -> u64 {
    // `DefaultHasher::new()` is the same hash for every instance.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

fn national_digits(mobile: &UkMobile) -> u64 {
    mobile.national().parse().unwrap_or_default()
}

struct State {
    rng: ChaCha8Rng,
    tokens: f64,
    refilled_at: Instant,
    daily_limit: Option<u64>,
    day: NaiveDate,
    sent_today: u64,
    rate_limit_burst: u64,
    /// Every SMS call until then is answered 429 (a storm).
    rate_limited_until: Option<Instant>,
    server_errors: u64,
    lost_responses: u64,
    /// Accepted SMS calls whose caller then never hears back.
    sms_stalls: u64,
    /// Every SMS call until then is answered 5xx (an outage).
    outage_until: Option<Instant>,
    /// Accepted letter calls whose caller then never hears back.
    letter_stalls: u64,
    email_failures: u64,
    letter_failures: u64,
    rejected: std::collections::HashSet<UkMobile>,
    sms_calls: u64,
    rate_limited: u64,
    /// By [`key_of`] the reference.
    sms: HashMap<u64, SmsRecord>,
    /// Texts per number, by its national digits.
    per_mobile: HashMap<u64, u32>,
    sent: usize,
    duplicate_references: usize,
    fragments: u64,
    emails: Vec<(String, String, String)>,
    /// Letters by [`key_of`] the reference.
    letters: HashMap<u64, LetterRecord>,
    letters_sent: usize,
    /// Bodies kept only for the numbers and postcodes a test watches.
    watched_mobiles: HashMap<UkMobile, Vec<String>>,
    watched_postcodes: HashMap<String, Vec<(String, String)>>,
}

impl GatewaySim {
    pub fn new(config: GatewayConfig) -> Self {
        let now = Instant::now();
        let state = State {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            tokens: burst(config.rate_per_second, config.unit),
            refilled_at: now,
            daily_limit: config.daily_limit,
            day: NaiveDate::MIN,
            sent_today: 0,
            rate_limit_burst: 0,
            rate_limited_until: None,
            server_errors: 0,
            lost_responses: 0,
            sms_stalls: 0,
            outage_until: None,
            letter_stalls: 0,
            email_failures: 0,
            letter_failures: 0,
            rejected: std::collections::HashSet::new(),
            sms_calls: 0,
            rate_limited: 0,
            sms: HashMap::new(),
            per_mobile: HashMap::new(),
            sent: 0,
            duplicate_references: 0,
            fragments: 0,
            emails: Vec::new(),
            letters: HashMap::new(),
            letters_sent: 0,
            watched_mobiles: HashMap::new(),
            watched_postcodes: HashMap::new(),
        };
        Self {
            inner: Arc::new(Inner {
                config,
                started: now,
                started_wall: Utc::now(),
                state: Mutex::new(state),
                sink: Mutex::new(None),
                clock: Mutex::new(Arc::new(hub_core::ports::SystemClock)),
                receipts_delivered: AtomicU64::new(0),
            }),
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// The daily limit counts days on `clock` (a scenario's virtual clock).
    pub fn set_clock(&self, clock: Arc<dyn Clock>) {
        *lock(&self.inner.clock) = clock;
    }

    /// Delivery receipts for texts accepted from now on go to `sink`,
    /// `receipt_delay` after acceptance.
    pub fn set_receipt_sink(&self, sink: Arc<dyn ReceiptSink>) {
        *lock(&self.inner.sink) = Some(sink);
    }

    pub fn clear_receipt_sink(&self) {
        *lock(&self.inner.sink) = None;
    }

    // ----- fault injection -----

    /// The next `n` SMS calls are answered `RateLimited`.
    pub fn inject_rate_limit_burst(&self, n: u64) {
        self.state().rate_limit_burst = n;
    }

    /// Every SMS call for the next `duration` is answered `RateLimited`, as
    /// Notify does (no `Retry-After`): a 429 storm.
    pub fn rate_limit_for(&self, duration: Duration) {
        self.state().rate_limited_until = Some(Instant::now() + duration);
    }

    /// The next `n` SMS calls are answered `Unavailable` (a 5xx).
    pub fn inject_server_errors(&self, n: u64) {
        self.state().server_errors = n;
    }

    /// The next `n` accepted texts are recorded (and later receipted) but
    /// the call returns `Unavailable`: the response was lost.
    pub fn lose_next_responses(&self, n: u64) {
        self.state().lost_responses = n;
    }

    /// Changes the daily limit (texts per UTC day); `None` lifts it.
    pub fn set_daily_limit(&self, limit: Option<u64>) {
        self.state().daily_limit = limit;
    }

    /// The gateway answers `Rejected` (a 400) for this number from now on.
    pub fn reject_number(&self, mobile: UkMobile) {
        self.state().rejected.insert(mobile);
    }

    /// The next `n` email calls are answered `Unavailable`.
    pub fn inject_email_failures(&self, n: u64) {
        self.state().email_failures = n;
    }

    /// The next `n` letter calls are answered `Unavailable`.
    pub fn inject_letter_failures(&self, n: u64) {
        self.state().letter_failures = n;
    }

    /// Every SMS call and lookup for `duration` is answered with a server
    /// error (no text accepted), as in a provider outage.
    pub fn outage_for(&self, duration: Duration) {
        self.state().outage_until = Some(Instant::now() + duration);
    }

    fn in_outage(&self) -> bool {
        self.state()
            .outage_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// The next `n` texts are accepted, then their calls never answer: the
    /// worker that made them hangs (until its caller gives up or dies).
    pub fn stall_after_accepting(&self, n: u64) {
        self.state().sms_stalls = n;
    }

    /// The next `n` letters are accepted, then their calls never answer.
    pub fn stall_letters_after_accepting(&self, n: u64) {
        self.state().letter_stalls = n;
    }

    // ----- inspection -----

    /// Texts accepted (lost responses included).
    pub fn sent_count(&self) -> usize {
        self.state().sent
    }

    /// Fragments accepted.
    pub fn fragments_sent(&self) -> u64 {
        self.state().fragments
    }

    /// References accepted more than once.
    pub fn duplicate_references(&self) -> usize {
        self.state().duplicate_references
    }

    /// Texts accepted beyond the first for their reference.
    pub fn duplicate_sends(&self) -> usize {
        let state = self.state();
        state.sent - state.sms.len()
    }

    /// Texts accepted for this number.
    pub fn sent_to(&self, mobile: &UkMobile) -> usize {
        let digits = national_digits(mobile);
        self.state()
            .per_mobile
            .get(&digits)
            .map_or(0, |n| *n as usize)
    }

    /// Texts accepted for this reference.
    pub fn sends_for(&self, reference: &str) -> usize {
        self.state()
            .sms
            .get(&key_of(reference))
            .map_or(0, |r| r.sends as usize)
    }

    /// References accepted by both this gateway and `other` (a text sent
    /// twice through two providers).
    pub fn references_shared_with(&self, other: &GatewaySim) -> usize {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return self.state().sms.len();
        }
        let theirs: Vec<u64> = other.state().sms.keys().copied().collect();
        let mine = self.state();
        theirs
            .iter()
            .filter(|key| mine.sms.contains_key(key))
            .count()
    }

    /// The accepted text with this reference, as Notify lists it.
    pub fn lookup_sms(&self, reference: &str) -> Option<SmsLookup> {
        let now = Instant::now();
        let state = self.state();
        let record = state.sms.get(&key_of(reference))?;
        let accepted = Duration::from_millis(u64::from(record.accepted_ms));
        let known = now >= self.inner.started + accepted + self.inner.config.receipt_delay;
        Some(SmsLookup {
            provider_id: uuid::Uuid::from_bytes(record.provider_id).to_string(),
            to: format!("+44{}", record.to),
            created_at: self.inner.started_wall
                + chrono::Duration::milliseconds(i64::from(record.accepted_ms)),
            status: known.then_some(record.outcome),
        })
    }

    /// SMS calls made, whatever their answer.
    pub fn sms_calls(&self) -> u64 {
        self.state().sms_calls
    }

    /// SMS calls answered `RateLimited` (injected ones included).
    pub fn rate_limited_count(&self) -> u64 {
        self.state().rate_limited
    }

    /// Receipts handed to the sink so far.
    pub fn receipts_delivered(&self) -> u64 {
        self.inner.receipts_delivered.load(Ordering::Relaxed)
    }

    /// Emails accepted: (to, subject, reference). Practice notices, not
    /// patient data.
    pub fn emails(&self) -> Vec<(String, String, String)> {
        self.state().emails.clone()
    }

    /// Letters accepted.
    pub fn letters_sent(&self) -> usize {
        self.state().letters_sent
    }

    /// Letters accepted for this reference.
    pub fn letters_for(&self, reference: &str) -> usize {
        self.state()
            .letters
            .get(&key_of(reference))
            .map_or(0, |letter| letter.sends as usize)
    }

    /// The first accepted letter with this reference: its provider id.
    pub fn lookup_letter(&self, reference: &str) -> Option<String> {
        self.state()
            .letters
            .get(&key_of(reference))
            .map(|letter| uuid::Uuid::from_bytes(letter.provider_id).to_string())
    }

    /// Letters accepted beyond the first for their reference.
    pub fn duplicate_letters(&self) -> usize {
        let state = self.state();
        state.letters_sent - state.letters.len()
    }

    /// Keeps the bodies of the texts accepted for `mobile` from now on
    /// (for tests; nothing else is kept).
    pub fn watch_mobile(&self, mobile: &UkMobile) {
        self.state()
            .watched_mobiles
            .entry(mobile.clone())
            .or_default();
    }

    /// The texts accepted for a watched number, in order.
    pub fn texts_to(&self, mobile: &UkMobile) -> Vec<String> {
        self.state()
            .watched_mobiles
            .get(mobile)
            .cloned()
            .unwrap_or_default()
    }

    /// Keeps the addressee and body of letters accepted for `postcode`.
    pub fn watch_postcode(&self, postcode: &str) {
        self.state()
            .watched_postcodes
            .entry(postcode.to_string())
            .or_default();
    }

    /// The letters accepted for a watched postcode: (addressee, body).
    pub fn letters_to(&self, postcode: &str) -> Vec<(String, String)> {
        self.state()
            .watched_postcodes
            .get(postcode)
            .cloned()
            .unwrap_or_default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    async fn pause(&self) {
        let config = &self.inner.config;
        let latency = if config.latency_max > config.latency {
            let spread = (config.latency_max - config.latency).as_micros() as u64;
            let extra = self.state().rng.gen_range(0..=spread);
            config.latency + Duration::from_micros(extra)
        } else {
            config.latency
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Everything `send_sms` decides, under the lock: the answer, whether
    /// the response is lost, and the receipt to deliver.
    /// Accepts a letter (or fails as injected); whether its call stalls.
    fn decide_letter(&self, request: &LetterRequest) -> Result<(String, bool), ProviderError> {
        let mut state = self.state();
        if state.letter_failures > 0 {
            state.letter_failures -= 1;
            return Err(ProviderError::Unavailable(
                "simulated server error (injected)".into(),
            ));
        }
        let provider_id = uuid::Builder::from_random_bytes(state.rng.gen()).into_uuid();
        state
            .letters
            .entry(key_of(&request.reference))
            .or_insert(LetterRecord {
                provider_id: provider_id.into_bytes(),
                sends: 0,
            })
            .sends += 1;
        state.letters_sent += 1;
        if let Some(letters) = state
            .watched_postcodes
            .get_mut(request.address.postcode.as_str())
        {
            letters.push((
                request.address.name.expose().clone(),
                request.body.expose().clone(),
            ));
        }
        let stalled = state.letter_stalls > 0;
        if stalled {
            state.letter_stalls -= 1;
        }
        Ok((provider_id.to_string(), stalled))
    }

    fn decide_sms(
        &self,
        request: &SmsRequest,
    ) -> Result<(Accepted, Answer, Option<DeliveryReceipt>), ProviderError> {
        let config = &self.inner.config;
        let mut state = self.state();
        state.sms_calls += 1;
        if state.rate_limit_burst > 0 {
            state.rate_limit_burst -= 1;
            state.rate_limited += 1;
            return Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(1)),
            });
        }
        if state
            .rate_limited_until
            .is_some_and(|until| Instant::now() < until)
        {
            state.rate_limited += 1;
            return Err(ProviderError::RateLimited { retry_after: None });
        }
        if state
            .outage_until
            .is_some_and(|until| Instant::now() < until)
        {
            return Err(ProviderError::Unavailable(
                "simulated outage (injected)".into(),
            ));
        }
        if state.server_errors > 0 {
            state.server_errors -= 1;
            return Err(ProviderError::Unavailable(
                "simulated server error (injected)".into(),
            ));
        }
        let today = lock(&self.inner.clock).now().date_naive();
        if state.day != today {
            state.day = today;
            state.sent_today = 0;
        }
        if state
            .daily_limit
            .is_some_and(|limit| state.sent_today >= limit)
        {
            return Err(ProviderError::DailyLimit);
        }
        let now = Instant::now();
        if let Some(retry_after) = state.take_tokens(config, request.fragments, now) {
            state.rate_limited += 1;
            return Err(ProviderError::RateLimited {
                retry_after: Some(retry_after),
            });
        }
        if state.rejected.contains(&request.to) || request.to.national() == REJECTED_TEST_NUMBER {
            // Like Notify's 400: names the problem, never the number.
            return Err(ProviderError::Rejected("not a valid mobile number".into()));
        }
        if chance(&mut state.rng, config.failure_rate) {
            return Err(ProviderError::Unavailable("simulated server error".into()));
        }
        let provider_id = uuid::Builder::from_random_bytes(state.rng.gen()).into_uuid();
        let outcome = if chance(&mut state.rng, config.delivery_failure_rate) {
            DeliveryStatus::PermanentFailure
        } else {
            DeliveryStatus::Delivered
        };
        let accepted_ms = now
            .saturating_duration_since(self.inner.started)
            .as_millis()
            .min(u128::from(u32::MAX)) as u32;
        let to = national_digits(&request.to);
        let record = state
            .sms
            .entry(key_of(&request.reference))
            .or_insert(SmsRecord {
                provider_id: provider_id.into_bytes(),
                to,
                accepted_ms,
                sends: 0,
                outcome,
            });
        record.sends += 1;
        if record.sends == 2 {
            state.duplicate_references += 1;
        }
        let provider_id = provider_id.to_string();
        *state.per_mobile.entry(to).or_default() += 1;
        if let Some(bodies) = state.watched_mobiles.get_mut(&request.to) {
            bodies.push(request.body.expose().clone());
        }
        state.sent += 1;
        state.sent_today += 1;
        state.fragments += u64::from(request.fragments);
        let answer = if state.sms_stalls > 0 {
            state.sms_stalls -= 1;
            Answer::Stalled
        } else if state.lost_responses > 0 {
            state.lost_responses -= 1;
            Answer::Lost
        } else {
            Answer::Given
        };
        drop(state);
        let receipt = lock(&self.inner.sink).is_some().then(|| DeliveryReceipt {
            reference: request.reference.clone(),
            provider_id: provider_id.clone(),
            status: outcome,
        });
        Ok((Accepted { provider_id }, answer, receipt))
    }

    fn deliver_later(&self, receipt: DeliveryReceipt) {
        let Some(sink) = lock(&self.inner.sink).clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let delay = self.inner.config.receipt_delay;
        let inner = self.inner.clone();
        runtime.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            sink.deliver(receipt).await;
            inner.receipts_delivered.fetch_add(1, Ordering::Relaxed);
        });
    }
}

impl State {
    /// Takes one request's or `fragments` parts' tokens, or says how long
    /// until there are enough. A message larger than the burst goes once
    /// the bucket is full.
    fn take_tokens(
        &mut self,
        config: &GatewayConfig,
        fragments: u32,
        now: Instant,
    ) -> Option<Duration> {
        let rate = config.rate_per_second;
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let capacity = burst(rate, config.unit);
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(capacity);
        self.refilled_at = now;
        let needed = match config.unit {
            RateUnit::Requests => 1.0,
            RateUnit::Parts => f64::from(fragments.max(1)),
        };
        if self.tokens >= needed.min(capacity) {
            self.tokens -= needed;
            None
        } else {
            let wait = (needed.min(capacity) - self.tokens) / rate;
            Some(Duration::from_secs_f64(wait.clamp(0.001, 3_600.0)))
        }
    }
}

/// The bucket's size: Notify's documented `min(rate/3 + 1, 1,001)` for a
/// per-minute rate of requests; one second's parts, at least one.
fn burst(rate: f64, unit: RateUnit) -> f64 {
    if !(rate.is_finite() && rate > 0.0) {
        return 0.0;
    }
    match unit {
        RateUnit::Requests => (rate * 60.0 / 3.0 + 1.0).min(1_001.0),
        RateUnit::Parts => rate.max(1.0),
    }
}

/// True with probability `p` (NaN or ≤ 0: never).
fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    rng.gen::<f64>() < p
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl SmsProvider for GatewaySim {
    fn name(&self) -> &str {
        &self.inner.config.name
    }

    fn rate_unit(&self) -> RateUnit {
        self.inner.config.unit
    }

    fn daily_cap(&self) -> Option<u64> {
        self.state().daily_limit
    }

    async fn send_sms(&self, request: &SmsRequest) -> Result<Accepted, ProviderError> {
        self.pause().await;
        let (accepted, answer, receipt) = self.decide_sms(request)?;
        if let Some(receipt) = receipt {
            self.deliver_later(receipt);
        }
        match answer {
            Answer::Given => Ok(accepted),
            Answer::Lost => Err(ProviderError::Unavailable(
                "simulated lost response (the text was accepted)".into(),
            )),
            Answer::Stalled => std::future::pending().await,
        }
    }

    async fn find_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<ProviderRecord>, ProviderError> {
        self.pause().await;
        if self.in_outage() {
            return Err(ProviderError::Unavailable(
                "simulated outage (injected)".into(),
            ));
        }
        Ok(self.lookup_sms(reference).map(|found| ProviderRecord {
            provider_id: found.provider_id,
            status: found.status,
        }))
    }
}

#[async_trait]
impl EmailProvider for GatewaySim {
    async fn send_email(&self, request: &EmailRequest) -> Result<Accepted, ProviderError> {
        self.pause().await;
        let mut state = self.state();
        if state.email_failures > 0 {
            state.email_failures -= 1;
            return Err(ProviderError::Unavailable(
                "simulated server error (injected)".into(),
            ));
        }
        let provider_id = uuid::Builder::from_random_bytes(state.rng.gen())
            .into_uuid()
            .to_string();
        state.emails.push((
            request.to.clone(),
            request.subject.clone(),
            request.reference.clone(),
        ));
        Ok(Accepted { provider_id })
    }
}

#[async_trait]
impl LetterProvider for GatewaySim {
    async fn send_letter(&self, request: &LetterRequest) -> Result<Accepted, ProviderError> {
        self.pause().await;
        let (provider_id, stalled) = self.decide_letter(request)?;
        if stalled {
            std::future::pending::<()>().await;
        }
        Ok(Accepted { provider_id })
    }

    async fn find_letter(&self, reference: &str) -> Result<Option<ProviderRecord>, ProviderError> {
        self.pause().await;
        Ok(self
            .lookup_letter(reference)
            .map(|provider_id| ProviderRecord {
                provider_id,
                status: None,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::domain::{Personal, PostalAddress, Postcode};

    fn mobile(n: u32) -> UkMobile {
        UkMobile::parse(&format!("07700 900{n:03}")).unwrap()
    }

    fn sms(to: UkMobile, reference: &str) -> SmsRequest {
        SmsRequest {
            to,
            body: Personal::new("Your GP practice: please book your jab".into()),
            reference: reference.into(),
            fragments: 1,
        }
    }

    fn unlimited(name: &str) -> GatewayConfig {
        GatewayConfig {
            rate_per_second: 0.0,
            ..GatewayConfig::new(name)
        }
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<DeliveryReceipt>>);

    #[async_trait]
    impl ReceiptSink for Collect {
        async fn deliver(&self, receipt: DeliveryReceipt) {
            lock(&self.0).push(receipt);
        }
    }

    #[tokio::test]
    async fn accepts_and_records_every_text() {
        let gateway = GatewaySim::new(unlimited("notify-a"));
        assert_eq!(gateway.name(), "notify-a");
        let a = gateway.send_sms(&sms(mobile(1), "r1")).await.unwrap();
        let b = gateway.send_sms(&sms(mobile(2), "r2")).await.unwrap();
        assert_ne!(a.provider_id, b.provider_id);
        assert!(uuid::Uuid::parse_str(&a.provider_id).is_ok());
        assert_eq!(gateway.sent_count(), 2);
        assert_eq!(gateway.duplicate_references(), 0);
        gateway.send_sms(&sms(mobile(1), "r1")).await.unwrap();
        assert_eq!(gateway.duplicate_references(), 1);
        assert_eq!(gateway.duplicate_sends(), 1);
        assert_eq!(gateway.sends_for("r1"), 2);
        assert_eq!(gateway.sent_to(&mobile(1)), 2);
        assert_eq!(gateway.sent_to(&mobile(3)), 0);
        let other = GatewaySim::new(unlimited("notify-b"));
        other.send_sms(&sms(mobile(2), "r2")).await.unwrap();
        other.send_sms(&sms(mobile(4), "r4")).await.unwrap();
        assert_eq!(gateway.references_shared_with(&other), 1);
        assert_eq!(other.references_shared_with(&gateway), 1);
        let found = gateway.lookup_sms("r2").unwrap();
        assert_eq!(found.provider_id, b.provider_id);
        assert_eq!(found.to, "+447700900002");
        let record = gateway.find_by_reference("r1").await.unwrap().unwrap();
        assert_eq!(record.provider_id, a.provider_id);
        assert_eq!(record.status, Some(DeliveryStatus::Delivered));
        assert_eq!(gateway.find_by_reference("nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn above_the_rate_it_answers_rate_limited() {
        let gateway = GatewaySim::new(GatewayConfig {
            rate_per_second: 10.0,
            unit: RateUnit::Parts,
            ..GatewayConfig::new("paced")
        });
        let mut accepted = 0;
        let mut limited = 0;
        for n in 0..25 {
            match gateway.send_sms(&sms(mobile(n), &format!("r{n}"))).await {
                Ok(_) => accepted += 1,
                Err(ProviderError::RateLimited { retry_after }) => {
                    assert!(retry_after.is_some_and(|d| d > Duration::ZERO));
                    limited += 1;
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert!(
            (10..=13).contains(&accepted),
            "burst is one second: {accepted}"
        );
        assert_eq!(accepted + limited, 25);
        assert_eq!(gateway.rate_limited_count(), limited);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let mut later = 0;
        for n in 100..110 {
            later += usize::from(gateway.send_sms(&sms(mobile(n), "x")).await.is_ok());
        }
        assert!((2..10).contains(&later), "refills at the rate: {later}");
    }

    #[tokio::test]
    async fn a_parts_rate_counts_fragments() {
        let gateway = GatewaySim::new(GatewayConfig {
            rate_per_second: 10.0,
            unit: RateUnit::Parts,
            ..GatewayConfig::new("paced")
        });
        let mut long = sms(mobile(1), "long");
        long.fragments = 3;
        let results: Vec<bool> = futures::future::join_all((0..4).map(|_| gateway.send_sms(&long)))
            .await
            .iter()
            .map(Result::is_ok)
            .collect();
        assert_eq!(results.iter().filter(|ok| **ok).count(), 3);
        assert_eq!(gateway.fragments_sent(), 9);
    }

    /// Notify's documented bucket: 3,000 requests a minute refill at 50 a
    /// second into a bucket of min(3,000/3 + 1, 1,001); a long text is one
    /// request.
    #[tokio::test]
    async fn notify_counts_requests_with_its_documented_burst() {
        let gateway = GatewaySim::new(GatewayConfig {
            latency: Duration::ZERO,
            latency_max: Duration::ZERO,
            failure_rate: 0.0,
            ..GatewayConfig::notify_documented("notify", 1)
        });
        let mut long = sms(mobile(1), "long");
        long.fragments = 4;
        let mut accepted = 0;
        while gateway.send_sms(&long).await.is_ok() {
            accepted += 1;
        }
        // The loop itself takes a few milliseconds, refilling a request or two.
        assert!(
            (1_001..=1_005).contains(&accepted),
            "the burst in requests: {accepted}"
        );
        assert_eq!(gateway.fragments_sent(), 4 * accepted);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut later = 0;
        while gateway.send_sms(&long).await.is_ok() {
            later += 1;
        }
        assert!(
            (50..=53).contains(&later),
            "refills at 3,000 a minute: {later}"
        );
        assert_eq!(gateway.daily_cap(), Some(250_000));
        assert_eq!(gateway.rate_unit(), RateUnit::Requests);
    }

    #[tokio::test]
    async fn latency_varies_within_the_configured_range() {
        let gateway = GatewaySim::new(GatewayConfig {
            rate_per_second: 0.0,
            failure_rate: 0.0,
            ..GatewayConfig::notify_documented("notify", 2)
        });
        let mut took = Vec::new();
        for n in 0..8 {
            let start = Instant::now();
            gateway.send_sms(&sms(mobile(n), "l")).await.unwrap();
            took.push(start.elapsed());
        }
        assert!(
            took.iter().all(|d| *d >= Duration::from_millis(30)),
            "{took:?}"
        );
        assert!(
            took.iter()
                .filter(|d| **d <= Duration::from_millis(310))
                .count()
                >= 6,
            "{took:?}"
        );
        assert!(took.iter().any(|d| *d != took[0]), "not a fixed latency");
    }

    #[tokio::test]
    async fn daily_limit_stops_the_provider() {
        let gateway = GatewaySim::new(GatewayConfig {
            daily_limit: Some(3),
            ..unlimited("daily")
        });
        for n in 0..3 {
            gateway.send_sms(&sms(mobile(n), "d")).await.unwrap();
        }
        assert_eq!(
            gateway.send_sms(&sms(mobile(4), "d")).await,
            Err(ProviderError::DailyLimit)
        );
        gateway.set_daily_limit(Some(4));
        assert!(gateway.send_sms(&sms(mobile(4), "d")).await.is_ok());
        assert_eq!(
            gateway.send_sms(&sms(mobile(5), "d")).await,
            Err(ProviderError::DailyLimit)
        );
        gateway.set_daily_limit(None);
        assert!(gateway.send_sms(&sms(mobile(5), "d")).await.is_ok());
    }

    #[tokio::test]
    async fn random_server_errors_follow_the_failure_rate() {
        let gateway = GatewaySim::new(GatewayConfig {
            failure_rate: 0.3,
            seed: 5,
            ..unlimited("flaky")
        });
        let mut failed = 0;
        for n in 0..400 {
            match gateway
                .send_sms(&sms(mobile(n % 900), &format!("f{n}")))
                .await
            {
                Ok(_) => {}
                Err(ProviderError::Unavailable(_)) => failed += 1,
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert!((80..=160).contains(&failed), "{failed}");
        assert_eq!(gateway.sent_count(), 400 - failed);
    }

    #[tokio::test]
    async fn bad_numbers_are_rejected_without_naming_them() {
        let gateway = GatewaySim::new(unlimited("strict"));
        let drama = UkMobile::parse("+44 7700 900999").unwrap();
        let Err(ProviderError::Rejected(message)) = gateway.send_sms(&sms(drama, "x")).await else {
            panic!("the drama number 07700 900999 is rejected");
        };
        assert!(!message.contains("900999"));
        gateway.reject_number(mobile(42));
        assert!(matches!(
            gateway.send_sms(&sms(mobile(42), "y")).await,
            Err(ProviderError::Rejected(_))
        ));
        assert!(gateway.send_sms(&sms(mobile(43), "z")).await.is_ok());
        assert_eq!(gateway.sent_count(), 1);
    }

    #[tokio::test]
    async fn injected_faults_come_first_and_run_out() {
        let gateway = GatewaySim::new(unlimited("faulty"));
        gateway.inject_rate_limit_burst(2);
        for _ in 0..2 {
            assert!(matches!(
                gateway.send_sms(&sms(mobile(1), "a")).await,
                Err(ProviderError::RateLimited { .. })
            ));
        }
        gateway.inject_server_errors(2);
        for _ in 0..2 {
            assert!(matches!(
                gateway.send_sms(&sms(mobile(1), "a")).await,
                Err(ProviderError::Unavailable(_))
            ));
        }
        assert!(gateway.send_sms(&sms(mobile(1), "a")).await.is_ok());
        assert_eq!(gateway.sms_calls(), 5);
        assert_eq!(gateway.sent_count(), 1);
    }

    #[tokio::test]
    async fn a_lost_response_is_found_by_reference() {
        let gateway = GatewaySim::new(unlimited("lossy"));
        gateway.lose_next_responses(1);
        assert!(matches!(
            gateway.send_sms(&sms(mobile(7), "lost")).await,
            Err(ProviderError::Unavailable(_))
        ));
        assert_eq!(gateway.sent_count(), 1);
        let record = gateway.find_by_reference("lost").await.unwrap();
        assert!(record.is_some_and(|r| uuid::Uuid::parse_str(&r.provider_id).is_ok()));
        // The next one is answered normally.
        assert!(gateway.send_sms(&sms(mobile(8), "fine")).await.is_ok());
        assert_eq!(gateway.duplicate_references(), 0);
    }

    #[tokio::test]
    async fn receipts_arrive_through_the_sink_after_the_delay() {
        let gateway = GatewaySim::new(GatewayConfig {
            delivery_failure_rate: 0.5,
            receipt_delay: Duration::from_millis(300),
            seed: 3,
            ..unlimited("receipts")
        });
        let sink = Arc::new(Collect::default());
        gateway.set_receipt_sink(sink.clone());
        let mut accepted = HashMap::new();
        for n in 0..20 {
            let reference = format!("c.G85001-0000.{n}");
            let ok = gateway.send_sms(&sms(mobile(n), &reference)).await.unwrap();
            accepted.insert(reference, ok.provider_id);
        }
        let early = gateway.find_by_reference("c.G85001-0000.0").await.unwrap();
        assert_eq!(early.map(|r| r.status), Some(None), "not final yet");
        assert!(lock(&sink.0).is_empty());
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&sink.0).len() < 20 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let receipts = lock(&sink.0).clone();
        assert_eq!(receipts.len(), 20);
        assert_eq!(gateway.receipts_delivered(), 20);
        for receipt in &receipts {
            assert_eq!(accepted.get(&receipt.reference), Some(&receipt.provider_id));
            let record = gateway
                .find_by_reference(&receipt.reference)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(record.status, Some(receipt.status));
        }
        let failed = receipts
            .iter()
            .filter(|r| r.status == DeliveryStatus::PermanentFailure)
            .count();
        assert!((2..=18).contains(&failed), "{failed}");
        gateway.clear_receipt_sink();
        gateway.send_sms(&sms(mobile(99), "quiet")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(lock(&sink.0).len(), 20);
    }

    #[tokio::test]
    async fn latency_is_added_to_each_call() {
        let gateway = GatewaySim::new(GatewayConfig {
            latency: Duration::from_millis(60),
            ..unlimited("slow")
        });
        let started = Instant::now();
        gateway.send_sms(&sms(mobile(1), "s")).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(60));
    }

    #[tokio::test]
    async fn emails_and_letters_are_recorded() {
        let gateway = GatewaySim::new(unlimited("post"));
        let email = EmailRequest {
            to: "practice-g85001@nhs.invalid".into(),
            subject: "Emergency message to your patients".into(),
            body: "Notice".into(),
            reference: "notice.G85001".into(),
        };
        gateway.inject_email_failures(1);
        assert!(gateway.send_email(&email).await.is_err());
        gateway.send_email(&email).await.unwrap();
        assert_eq!(
            gateway.emails(),
            vec![(
                "practice-g85001@nhs.invalid".to_string(),
                "Emergency message to your patients".to_string(),
                "notice.G85001".to_string()
            )]
        );
        let letter = LetterRequest {
            address: PostalAddress {
                name: Personal::new("A Patient".into()),
                lines: Personal::new(vec!["1 High Street".into()]),
                postcode: Postcode::parse("SE13 6LH").unwrap(),
            },
            body: Personal::new("Dear patient".into()),
            reference: "c.G85001-0000.3".into(),
        };
        gateway.inject_letter_failures(1);
        assert!(gateway.send_letter(&letter).await.is_err());
        gateway.send_letter(&letter).await.unwrap();
        gateway.send_letter(&letter).await.unwrap();
        assert_eq!(gateway.letters_sent(), 2);
        assert_eq!(gateway.letters_for("c.G85001-0000.3"), 2);
        assert_eq!(gateway.letters_for("c.G85001-0000.4"), 0);
        assert_eq!(gateway.duplicate_letters(), 1);
        assert_eq!(gateway.sent_count(), 0);
    }
}
