//! The embedded local stack: the same handlers wired to the embedded
//! adapters in one process, with an event-source harness that polls the
//! local queues the way Lambda polls SQS (batches, partial batch failure,
//! visibility timeout, dead-letter queues) and a timer for the schedules.

use crate::embedded::{LocalQueue, LocalScheduler, SqliteStore};
use anyhow::Context;
use async_trait::async_trait;
use hub_adapters::fhir::{FhirConfig, FhirGpConnector};
use hub_adapters::mesh::{MeshClient, MeshGpConfig, MeshGpConnector, RoutedGpConnector};
use hub_adapters::notify::{NotifyClient, NotifyTemplates};
use hub_core::handlers::jobs::{handle_batch, Message};
use hub_core::handlers::{Hub, HubConfig, HubParts};
use hub_core::ports::{
    Clock, DeliveryReceipt, Job, QueueName, ReceiptSink, ScheduledAction, Scheduler, SmsProvider,
    SystemClock,
};
use hub_core::ports::{EmailProvider, GpConnector, LetterProvider};
use hub_sim::http::{
    start_fhir, start_notify, CallbackTarget, FhirServer, FhirServerConfig, NotifyServer,
    NotifyServerConfig,
};
use hub_sim::mesh::{MeshPracticeSim, MeshSandbox};
use hub_sim::{GatewayConfig, GatewaySim, GpEstate, RegionSpec};
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the local stack runs the watchdog.
pub const WATCHDOG_EVERY: Duration = Duration::from_secs(2);

/// How many workers poll each queue and how many messages each takes:
/// the local equivalent of an event source's batch size and maximum
/// concurrency.
#[derive(Debug, Clone, Copy)]
pub struct Workers {
    pub count: usize,
    pub batch: usize,
}

/// How the hub reaches the simulated providers and GP estate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Over HTTP, through the real GOV.UK Notify and FHIR adapters, to
    /// simulators that speak those APIs (the default).
    #[default]
    Http,
    /// Direct calls to the simulators: no HTTP, for raw hub throughput.
    InProcess,
}

/// A real GOV.UK Notify service (e.g. with a test API key).
#[derive(Debug, Clone)]
pub struct ExternalNotify {
    pub base_url: String,
    pub api_key: SecretString,
    pub templates: NotifyTemplates,
    /// Messages per second to pace at.
    pub rate_per_second: f64,
}

#[derive(Debug, Clone, Default)]
pub struct External {
    pub notify: Option<ExternalNotify>,
    /// A FHIR R4 server every practice is read from (paged search).
    pub fhir_base_url: Option<String>,
    /// This many practices (the last of the region) send CSV extracts over
    /// NHS MESH, through a local `mesh-sandbox` (HTTP transport only).
    pub mesh_practices: usize,
}

#[derive(Debug, Clone)]
pub struct LocalStackConfig {
    pub transport: Transport,
    /// Real endpoints to use instead of the simulators (HTTP transport only).
    pub external: External,
    /// SQLite file for the tables, queues and schedules; `None` keeps them
    /// in memory.
    pub database: Option<PathBuf>,
    pub hub: HubConfig,
    pub region: RegionSpec,
    /// One simulated SMS provider per entry.
    pub sms_gateways: Vec<GatewayConfig>,
    pub postal_gateway: GatewayConfig,
    pub visibility_timeout: Duration,
    pub max_receive_count: u32,
    pub poll_interval: Duration,
}

impl LocalStackConfig {
    pub fn workers(&self, queue: QueueName) -> Workers {
        match queue {
            // The send queue's maximum concurrency: each worker owns a chunk.
            QueueName::Send => Workers { count: 8, batch: 1 },
            QueueName::Extract => Workers { count: 4, batch: 1 },
            _ => Workers {
                count: 2,
                batch: 10,
            },
        }
    }
}

/// Delivers simulated receipts to the receipts handler, as the provider's
/// callback to the receipts function would.
struct ReceiptsHandler {
    hub: Mutex<Option<Hub>>,
}

#[async_trait]
impl ReceiptSink for ReceiptsHandler {
    async fn deliver(&self, receipt: DeliveryReceipt) {
        let hub = self.hub.lock().ok().and_then(|h| h.clone());
        if let Some(hub) = hub {
            if let Err(error) = hub_core::handlers::receipts::record_receipt(&hub, &receipt).await {
                tracing::warn!(%error, "receipt not recorded");
            }
        }
    }
}

/// The HTTP simulators and receipts endpoint of an HTTP stack.
pub struct HttpServers {
    pub notify: Vec<NotifyServer>,
    pub postal: NotifyServer,
    pub fhir: FhirServer,
    pub receipts_url: String,
    /// Serving from when the hub is built.
    _receipts: Option<JoinHandle<()>>,
    /// The MESH sandbox and simulated MESH practices, if any.
    pub mesh: Option<MeshRoute>,
}

/// The hub's mailbox on the local `mesh-sandbox`.
pub const HUB_MESH_MAILBOX: &str = "SMSHUB01";

/// A running `mesh-sandbox` and the simulated practices answering the
/// hub's extract requests through it (stopped on drop).
pub struct MeshRoute {
    pub sandbox: MeshSandbox,
    /// The practices on the MESH route, with their mailboxes.
    pub practices: Vec<(hub_core::domain::OdsCode, String)>,
    responders: Vec<JoinHandle<()>>,
}

impl Drop for MeshRoute {
    fn drop(&mut self) {
        for responder in &self.responders {
            responder.abort();
        }
    }
}

pub struct LocalStack {
    pub hub: Hub,
    pub http: Option<HttpServers>,
    pub store: Arc<SqliteStore>,
    pub queue: Arc<LocalQueue>,
    pub scheduler: Arc<LocalScheduler>,
    pub estate: Arc<GpEstate>,
    pub gateways: Vec<Arc<GatewaySim>>,
    pub postal: Arc<GatewaySim>,
    pub config: LocalStackConfig,
    workers: Mutex<Vec<(QueueName, JoinHandle<()>)>>,
    timer: Mutex<Option<JoinHandle<()>>>,
    send_workers: Option<usize>,
}

impl LocalStack {
    pub async fn start(config: LocalStackConfig) -> anyhow::Result<Arc<Self>> {
        Self::start_with(config, Arc::new(SystemClock), None).await
    }

    /// Starts the stack on `clock` (the hub's, the simulators' days and the
    /// harness's queue and schedule times: a scenario's virtual clock), with
    /// `send_workers` pollers on the send queue if given (the send
    /// function's maximum concurrency).
    pub async fn start_with(
        config: LocalStackConfig,
        clock: Arc<dyn Clock>,
        send_workers: Option<usize>,
    ) -> anyhow::Result<Arc<Self>> {
        Self::start_on(config, clock, send_workers, DbUse::DURABLE).await
    }

    /// A stack whose database is thrown away afterwards (the demo): SQLite
    /// calls run inline on the runtime's threads (no hand-off to the
    /// blocking pool and back for each of millions of small calls; one
    /// connection serialises them anyway) and commits never wait for the
    /// disk. `send_workers` as for [`LocalStack::start_with`].
    pub async fn start_throwaway(
        config: LocalStackConfig,
        send_workers: Option<usize>,
    ) -> anyhow::Result<Arc<Self>> {
        Self::start_on(
            config,
            Arc::new(SystemClock),
            send_workers,
            DbUse::THROWAWAY,
        )
        .await
    }

    /// As [`LocalStack::start_with`], for a current-thread runtime with
    /// paused time: the embedded store, queue and scheduler run their
    /// SQLite calls inline, so virtual time stands still while they work
    /// (see `bench`).
    pub async fn start_in_virtual_time(
        config: LocalStackConfig,
        clock: Arc<dyn Clock>,
        send_workers: Option<usize>,
    ) -> anyhow::Result<Arc<Self>> {
        Self::start_on(config, clock, send_workers, DbUse::THROWAWAY).await
    }

    async fn start_on(
        config: LocalStackConfig,
        clock: Arc<dyn Clock>,
        send_workers: Option<usize>,
        db_use: DbUse,
    ) -> anyhow::Result<Arc<Self>> {
        config.check_retry_span()?;
        let (store, queue, scheduler) = open_embedded(&config, clock.clone(), db_use)?;
        let estate = Arc::new(GpEstate::generate(config.region));
        let sink = Arc::new(ReceiptsHandler {
            hub: Mutex::new(None),
        });
        let gateways: Vec<Arc<GatewaySim>> = config
            .sms_gateways
            .iter()
            .map(|gateway| Arc::new(GatewaySim::new(gateway.clone())))
            .collect();
        for gateway in &gateways {
            gateway.set_clock(clock.clone());
        }
        let postal = Arc::new(GatewaySim::new(config.postal_gateway.clone()));
        let mut practices = estate.practices();
        let mut wiring = match config.transport {
            Transport::InProcess => Wiring::in_process(&gateways, &postal, &estate, &sink),
            Transport::Http => {
                Wiring::over_http(&gateways, &postal, &estate, &mut practices).await?
            }
        };
        wiring.use_external(&config.external, &mut practices)?;
        wiring
            .use_mesh(config.external.mesh_practices, &estate, &mut practices)
            .await?;
        let hub = HubParts {
            store: store.clone(),
            patients: store.clone(),
            queue: queue.clone(),
            scheduler: scheduler.clone(),
            sms: wiring.providers,
            // Each local send worker paces at the whole rate: the router is
            // shared by every worker of this one process.
            send_workers: 1,
            email: wiring.email,
            letters: wiring.letters,
            gp: wiring.gp,
            clock: clock.clone(),
            optout_key: SecretString::from(uuid::Uuid::new_v4().to_string()),
            config: HubConfig {
                simulated_gp: true,
                ..config.hub.clone()
            },
        }
        .build()?;
        if let Ok(mut slot) = sink.hub.lock() {
            *slot = Some(hub.clone());
        }
        if let (Some(http), Some(receipts)) = (wiring.http.as_mut(), wiring.receipts.take()) {
            http._receipts = Some(receipts.serve(&hub));
        }
        for practice in &practices {
            hub.store.put_practice(practice).await?;
        }
        let stack = Arc::new(Self {
            hub,
            http: wiring.http,
            store,
            queue,
            scheduler,
            estate,
            gateways,
            postal,
            config,
            workers: Mutex::new(Vec::new()),
            timer: Mutex::new(None),
            send_workers,
        });
        for name in QueueName::ALL {
            stack.spawn_workers(name);
        }
        stack.spawn_timer();
        Ok(stack)
    }

    fn spawn_workers(self: &Arc<Self>, name: QueueName) {
        let mut workers = self.config.workers(name);
        if let (QueueName::Send, Some(count)) = (name, self.send_workers) {
            workers.count = count;
        }
        let mut handles = Vec::new();
        for _ in 0..workers.count {
            let stack = self.clone();
            handles.push((
                name,
                tokio::spawn(async move { stack.poll(name, workers.batch).await }),
            ));
        }
        if let Ok(mut all) = self.workers.lock() {
            all.extend(handles);
        }
    }

    /// One poller: receive a batch, run the handler, delete what succeeded.
    async fn poll(&self, name: QueueName, batch: usize) {
        loop {
            let received = match self.queue.receive(name, batch, self.hub.now()).await {
                Ok(received) => received,
                Err(error) => {
                    tracing::warn!(queue = name.as_str(), %error, "receive failed");
                    tokio::time::sleep(self.config.poll_interval).await;
                    continue;
                }
            };
            if received.is_empty() {
                tokio::time::sleep(self.config.poll_interval).await;
                continue;
            }
            let messages = received
                .iter()
                .map(|m| Message {
                    id: m.receipt_handle.clone(),
                    body: m.body.clone(),
                    receive_count: m.receive_count,
                })
                .collect();
            // Lambda never sees its message redelivered while it runs (the
            // visibility timeout is set above the function timeout); here the
            // harness keeps extending it instead, so only a crashed worker's
            // messages come back.
            let handling = handle_batch(&self.hub, name, messages, batch);
            tokio::pin!(handling);
            let mut heartbeat = tokio::time::interval(self.config.visibility_timeout / 3);
            heartbeat.tick().await;
            let failed = loop {
                tokio::select! {
                    failed = &mut handling => break failed,
                    _ = heartbeat.tick() => {
                        let until = self.hub.now()
                            + chrono::Duration::from_std(self.config.visibility_timeout)
                                .unwrap_or_else(|_| chrono::Duration::seconds(30));
                        for message in &received {
                            let _ = self
                                .queue
                                .change_visibility(name, &message.receipt_handle, until)
                                .await;
                        }
                    }
                }
            };
            for message in received {
                match failed.iter().find(|f| f.id == message.receipt_handle) {
                    None => {
                        if let Err(error) = self.queue.delete(name, &message.receipt_handle).await {
                            tracing::warn!(queue = name.as_str(), %error, "delete failed");
                        }
                    }
                    // No later delivery can succeed: let it reach the
                    // dead-letter queue now rather than after the timeouts.
                    Some(failure) if !failure.retryable => {
                        let _ = self
                            .queue
                            .change_visibility(name, &message.receipt_handle, self.hub.now())
                            .await;
                    }
                    Some(_) => {}
                }
            }
        }
    }

    /// The scheduler: fires due one-time schedules, and runs the watchdog
    /// every [`WATCHDOG_EVERY`].
    fn spawn_timer(self: &Arc<Self>) {
        let stack = self.clone();
        let handle = tokio::spawn(async move {
            // tokio's clock, so the schedule keeps to virtual time too.
            let mut last_watchdog = tokio::time::Instant::now();
            loop {
                // The watchdog's schedule (see `handlers::watchdog`).
                if last_watchdog.elapsed() >= WATCHDOG_EVERY {
                    last_watchdog = tokio::time::Instant::now();
                    if let Err(error) = hub_core::handlers::watchdog::watchdog(&stack.hub).await {
                        tracing::warn!(%error, "watchdog run failed");
                    }
                }
                match stack.scheduler.due(stack.hub.now()).await {
                    Ok(due) => {
                        for action in due {
                            stack.fire(action).await;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "scheduler poll failed"),
                }
                tokio::time::sleep(stack.config.poll_interval).await;
            }
        });
        if let Ok(mut timer) = self.timer.lock() {
            *timer = Some(handle);
        }
    }

    async fn fire(&self, action: ScheduledAction) {
        match action {
            ScheduledAction::Deadline { campaign } => {
                if let Err(error) =
                    hub_core::handlers::deadline::fire_deadline(&self.hub, &campaign).await
                {
                    tracing::error!(campaign = %campaign, %error, "deadline failed; retrying");
                    // EventBridge retries a failed target; so do we.
                    let _ = self
                        .scheduler
                        .schedule(
                            &ScheduledAction::Deadline { campaign },
                            self.hub.now() + chrono::Duration::seconds(1),
                        )
                        .await;
                }
            }
            ScheduledAction::Purge { campaign } => {
                if let Err(error) = self.hub.queue.send(&[Job::Purge { campaign }]).await {
                    tracing::error!(%error, "could not queue the purge");
                }
            }
        }
    }

    /// Kills the workers of one queue mid-flight, as a crashed Lambda
    /// execution environment would, and starts fresh ones. Messages they
    /// held come back after the visibility timeout.
    pub fn crash_workers(self: &Arc<Self>, name: QueueName) {
        if let Ok(mut all) = self.workers.lock() {
            all.retain(|(queue, handle)| {
                if *queue == name {
                    handle.abort();
                    false
                } else {
                    true
                }
            });
        }
        self.spawn_workers(name);
    }

    /// Messages a provider accepted more than once for the same recipient
    /// (the same reference), within one gateway or across gateways, plus
    /// repeated letters. Must always be zero.
    pub fn duplicate_sends(&self) -> u64 {
        let within: usize = self.gateways.iter().map(|g| g.duplicate_sends()).sum();
        let mut across = 0;
        for (i, gateway) in self.gateways.iter().enumerate() {
            for other in &self.gateways[i + 1..] {
                across += gateway.references_shared_with(other);
            }
        }
        let letters = self.postal.duplicate_letters();
        (within + across + letters) as u64
    }

    /// Texts accepted by all the simulated providers.
    pub fn texts_sent(&self) -> usize {
        self.gateways.iter().map(|g| g.sent_count()).sum()
    }

    pub fn shutdown(&self) {
        if let Ok(mut all) = self.workers.lock() {
            for (_, handle) in all.drain(..) {
                handle.abort();
            }
        }
        if let Ok(mut timer) = self.timer.lock() {
            if let Some(handle) = timer.take() {
                handle.abort();
            }
        }
    }
}

/// Passes only Ofcom drama-range numbers (07700 900000–900999) to the
/// provider it wraps; any other number is refused as if by the provider.
pub struct DramaRangeOnly<P>(pub Arc<P>);

#[async_trait]
impl<P: SmsProvider> SmsProvider for DramaRangeOnly<P> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn rate_unit(&self) -> hub_core::domain::pacing::RateUnit {
        self.0.rate_unit()
    }

    fn daily_cap(&self) -> Option<u64> {
        self.0.daily_cap()
    }

    async fn send_sms(
        &self,
        request: &hub_core::ports::SmsRequest,
    ) -> Result<hub_core::ports::Accepted, hub_core::ports::ProviderError> {
        if !request.to.is_drama_range() {
            return Err(hub_core::ports::ProviderError::Rejected(
                "simulated patient: only drama-range numbers go to a real provider".into(),
            ));
        }
        self.0.send_sms(request).await
    }

    async fn find_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<hub_core::ports::ProviderRecord>, hub_core::ports::ProviderError> {
        self.0.find_by_reference(reference).await
    }
}

/// How the embedded adapters use SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DbUse {
    /// Calls run on the calling thread, not the blocking pool.
    inline: bool,
    /// Commits wait for the disk.
    fsync: bool,
}

impl DbUse {
    /// `hub local serve` and the tests: kept data, a runtime never blocked.
    const DURABLE: Self = Self {
        inline: false,
        fsync: true,
    };
    const THROWAWAY: Self = Self {
        inline: true,
        fsync: false,
    };
}

/// The SQLite store, queue and scheduler: in one file each beside
/// `config.database`, or in memory. Delayed jobs fall due on `clock`.
fn open_embedded(
    config: &LocalStackConfig,
    clock: Arc<dyn Clock>,
    db_use: DbUse,
) -> anyhow::Result<(Arc<SqliteStore>, Arc<LocalQueue>, Arc<LocalScheduler>)> {
    let (mut store, mut queue, mut scheduler) = match &config.database {
        Some(path) => (
            SqliteStore::open(path).context("opening the local store")?,
            LocalQueue::open(&path.with_extension("queue.sqlite"))
                .context("opening the local queue")?,
            LocalScheduler::open(&path.with_extension("schedules.sqlite"))
                .context("opening the local scheduler")?,
        ),
        None => (
            SqliteStore::in_memory()?,
            LocalQueue::in_memory()?,
            LocalScheduler::in_memory()?,
        ),
    };
    if db_use.inline {
        store = store.with_inline_calls();
        queue = queue.with_inline_calls();
        scheduler = scheduler.with_inline_calls();
    }
    if !db_use.fsync {
        store = store.without_fsync()?;
        queue = queue.without_fsync()?;
        scheduler = scheduler.without_fsync()?;
    }
    let queue = queue.with_clock(clock);
    for name in QueueName::ALL {
        queue.set_config(
            name,
            crate::embedded::QueueConfig {
                visibility_timeout: config.visibility_timeout,
                max_receive_count: config.max_receive_count,
            },
        );
    }
    Ok((Arc::new(store), Arc::new(queue), Arc::new(scheduler)))
}

impl LocalStackConfig {
    /// A send job retried while its claims are too young to reclaim must
    /// not run out of receives first (on AWS: 5 x 5,400 s against 20 min).
    fn check_retry_span(&self) -> anyhow::Result<()> {
        let retry_span = self.visibility_timeout * self.max_receive_count;
        if retry_span <= self.hub.stale_after.to_std().unwrap_or_default() {
            anyhow::bail!(
                "visibility_timeout x max_receive_count ({retry_span:?}) must exceed stale_after"
            );
        }
        Ok(())
    }
}

/// The providers and GP systems a local hub talks to.
struct Wiring {
    providers: Vec<(Arc<dyn SmsProvider>, f64)>,
    email: Arc<dyn EmailProvider>,
    letters: Arc<dyn LetterProvider>,
    gp: Arc<dyn GpConnector>,
    http: Option<HttpServers>,
    /// The HTTP stack's receipts endpoint, to serve once the hub is built.
    receipts: Option<ReceiptsEndpoint>,
}

impl Wiring {
    /// Direct calls to the simulators.
    fn in_process(
        gateways: &[Arc<GatewaySim>],
        postal: &Arc<GatewaySim>,
        estate: &Arc<GpEstate>,
        sink: &Arc<ReceiptsHandler>,
    ) -> Self {
        for gateway in gateways {
            gateway.set_receipt_sink(sink.clone());
        }
        let providers = gateways
            .iter()
            .map(|g| {
                (
                    g.clone() as Arc<dyn SmsProvider>,
                    g.config().rate_per_second,
                )
            })
            .collect();
        Self {
            providers,
            email: postal.clone(),
            letters: postal.clone(),
            gp: estate.clone(),
            http: None,
            receipts: None,
        }
    }

    /// The real Notify and FHIR adapters, over HTTP, to simulators that
    /// speak those APIs; delivery callbacks come back to a local receipts
    /// endpoint. Connects each practice to its FHIR base URL.
    async fn over_http(
        gateways: &[Arc<GatewaySim>],
        postal: &Arc<GatewaySim>,
        estate: &Arc<GpEstate>,
        practices: &mut [hub_core::ports::Practice],
    ) -> anyhow::Result<Self> {
        let receipts = ReceiptsEndpoint::bind().await?;
        let receipts_url = receipts.url()?;
        let target = CallbackTarget {
            url: receipts_url.clone(),
            bearer: SecretString::from(receipts.token.expose_secret().to_string()),
        };
        let templates = NotifyTemplates {
            sms: uuid::Uuid::new_v4().to_string(),
            email: Some(uuid::Uuid::new_v4().to_string()),
            letter: Some(uuid::Uuid::new_v4().to_string()),
        };
        let mut notify = Vec::new();
        let mut providers: Vec<(Arc<dyn SmsProvider>, f64)> = Vec::new();
        for gateway in gateways {
            let (_, server) = start_notify(
                (**gateway).clone(),
                NotifyServerConfig {
                    callback: Some(target.clone()),
                    ..NotifyServerConfig::default()
                },
            )
            .await?;
            let mut client_config = hub_adapters::notify::NotifyConfig::new(
                server.base_url(),
                server.api_key(),
                templates.clone(),
            );
            client_config.name = gateway.config().name.clone();
            client_config.daily_limit = gateway.config().daily_limit;
            providers.push((
                Arc::new(NotifyClient::new(client_config)?),
                gateway.config().rate_per_second,
            ));
            notify.push(server);
        }
        let (_, postal_server) =
            start_notify((**postal).clone(), NotifyServerConfig::default()).await?;
        let postal_client = Arc::new(NotifyClient::from_key(
            &postal_server.base_url(),
            postal_server.api_key(),
            templates.clone(),
        )?);
        let (_, fhir) = start_fhir((**estate).clone(), FhirServerConfig::default()).await?;
        // Half the practices export in bulk, half answer paged search.
        for (i, practice) in practices.iter_mut().enumerate() {
            if let Some(connected) = fhir.practice(&practice.ods, i % 2 == 0, None) {
                *practice = connected;
            }
        }
        Ok(Self {
            providers,
            email: postal_client.clone(),
            letters: postal_client,
            gp: Arc::new(FhirGpConnector::new(FhirConfig::default())?),
            http: Some(HttpServers {
                notify,
                postal: postal_server,
                fhir,
                receipts_url,
                _receipts: None,
                mesh: None,
            }),
            receipts: Some(receipts),
        })
    }

    /// A real Notify service and/or FHIR server in place of the simulators.
    fn use_external(
        &mut self,
        external: &External,
        practices: &mut [hub_core::ports::Practice],
    ) -> anyhow::Result<()> {
        if let Some(notify) = &external.notify {
            let client = Arc::new(NotifyClient::from_key(
                &notify.base_url,
                notify.api_key.clone(),
                notify.templates.clone(),
            )?);
            // The simulated estate's mobiles look real: with it, a real
            // provider is only ever given Ofcom's drama-range numbers.
            let provider: Arc<dyn SmsProvider> = if external.fhir_base_url.is_none() {
                Arc::new(DramaRangeOnly(client.clone()))
            } else {
                client.clone()
            };
            self.providers = vec![(provider, notify.rate_per_second)];
            self.email = client.clone();
            self.letters = client;
        }
        if let Some(base_url) = &external.fhir_base_url {
            for practice in practices.iter_mut() {
                practice.connection = hub_core::ports::GpConnection::Fhir {
                    base_url: base_url.clone(),
                    bulk_export: false,
                    secret: None,
                    patient_search: hub_core::ports::PatientSearch::default(),
                    link_base: None,
                };
            }
            self.gp = Arc::new(FhirGpConnector::new(FhirConfig::default())?);
        }
        Ok(())
    }
}

impl Wiring {
    /// The last `count` practices send CSV extracts over MESH: a local
    /// `mesh-sandbox` carries the hub's requests and the simulated
    /// practices' answers (from the same estate), and a routed connector
    /// sends each practice down its own route.
    async fn use_mesh(
        &mut self,
        count: usize,
        estate: &Arc<GpEstate>,
        practices: &mut [hub_core::ports::Practice],
    ) -> anyhow::Result<()> {
        if count == 0 {
            return Ok(());
        }
        let Some(http) = self.http.as_mut() else {
            anyhow::bail!("MESH practices need the HTTP transport");
        };
        let first = practices.len().saturating_sub(count);
        let mesh_practices: Vec<_> = practices[first..]
            .iter()
            .map(|p| (p.ods.clone(), format!("{}MB", p.ods)))
            .collect();
        let mut mailboxes = vec![HUB_MESH_MAILBOX];
        mailboxes.extend(mesh_practices.iter().map(|(_, mailbox)| mailbox.as_str()));
        let sandbox = MeshSandbox::start(&MeshSandbox::default_venv(), &mailboxes)
            .await
            .context("starting mesh-sandbox for the MESH practices")?;
        let mut responders = Vec::new();
        for (practice, (_, mailbox)) in practices[first..].iter_mut().zip(&mesh_practices) {
            practice.connection = hub_core::ports::GpConnection::Mesh {
                mailbox: mailbox.clone(),
                wait_seconds: Some(120),
            };
            // Small chunks, so the demo's extracts arrive chunked.
            let mut config = sandbox.config(mailbox);
            config.chunk_size = 256 * 1024;
            let answering = MeshPracticeSim::new(MeshClient::new(config)?);
            responders.push(answering.spawn(estate.clone(), Duration::from_millis(200)));
        }
        let mesh = MeshGpConnector::new(
            sandbox.client(HUB_MESH_MAILBOX)?,
            MeshGpConfig {
                poll_interval: Duration::from_millis(250),
                ..MeshGpConfig::default()
            },
        );
        mesh.client().handshake().await?;
        self.gp = Arc::new(RoutedGpConnector {
            fhir: Some(self.gp.clone()),
            mesh: Some(Arc::new(mesh)),
            simulated: Some(estate.clone()),
        });
        http.mesh = Some(MeshRoute {
            sandbox,
            practices: mesh_practices,
            responders,
        });
        Ok(())
    }
}

/// The local receipts endpoint: what API Gateway and the receipts function
/// are on AWS, with the receipts function's router. Bound first, for the
/// simulated providers' callback URL; served once the hub exists.
struct ReceiptsEndpoint {
    listener: tokio::net::TcpListener,
    token: SecretString,
}

impl ReceiptsEndpoint {
    async fn bind() -> anyhow::Result<Self> {
        Ok(Self {
            listener: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            token: SecretString::from(uuid::Uuid::new_v4().to_string()),
        })
    }

    /// The path the template gives the receipts function, for Notify.
    fn url(&self) -> anyhow::Result<String> {
        Ok(format!(
            "http://{}/receipts/notify",
            self.listener.local_addr()?
        ))
    }

    fn serve(self, hub: &Hub) -> JoinHandle<()> {
        let router = hub_core::http::receipts_router(
            hub.clone(),
            self.token,
            hub_adapters::notify::parse_callback,
        );
        tokio::spawn(async move {
            if let Err(error) = axum::serve(self.listener, router).await {
                tracing::error!(%error, "receipts endpoint stopped");
            }
        })
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.shutdown();
    }
}
