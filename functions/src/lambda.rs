//! Glue between Lambda's event types and the handlers: the only module that
//! sees a Lambda type, so the domain and the handlers never do.

use crate::metrics::{Metrics, API_SERVER_ERRORS, JOBS_FAILED, PRACTICES_HELD, QUEUE_DIMENSION};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use hub_adapters::aws::SqsJobQueue;
use hub_core::domain::ParticipationState;
use hub_core::domain::StaffId;
use hub_core::handlers::jobs::{error_chain, handle_batch, Failure, Message};
use hub_core::handlers::{Hub, JobError};
use hub_core::http::Caller;
use hub_core::ports::{Job, QueueError, QueueName};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Without an id a failure cannot be reported for just this message;
    /// failing the whole batch is the only way not to lose it.
    #[error("SQS record {0} has no messageId")]
    MissingMessageId(usize),
}

/// Why an invocation that is not an SQS batch failed, as Lambda reports it
/// (`errorType`, `errorMessage`). The invoker (EventBridge Scheduler)
/// retries a failed invocation whatever its type.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// The event is not one this function takes.
    #[error("this function does not take {0}")]
    WrongEvent(&'static str),
    /// The event did not parse as the function's event type.
    #[error("the event is not {expected}: {source}")]
    Unreadable {
        expected: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Job(#[from] JobError),
}

impl From<InvocationError> for lambda_runtime::Diagnostic {
    fn from(error: InvocationError) -> Self {
        let error_type = match &error {
            InvocationError::WrongEvent(_) => "WrongEvent",
            InvocationError::Unreadable { .. } => "UnreadableEvent",
            InvocationError::Event(_) => "BadSqsEvent",
            InvocationError::Job(job) if job.retryable() => "Retryable",
            InvocationError::Job(_) => "NotRetryable",
        };
        lambda_runtime::Diagnostic {
            error_type: error_type.to_string(),
            error_message: error_chain(&error),
        }
    }
}

/// JSON logs to stdout, which Lambda sends to CloudWatch. `RUST_LOG`
/// overrides the level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .without_time()
        .try_init();
}

/// SQS's count of deliveries of this message, this one included.
fn receive_count(record: &SqsMessage) -> u32 {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}

/// The messages of an SQS event, with SQS's receive count.
pub fn sqs_messages(event: SqsEvent) -> Result<Vec<Message>, EventError> {
    event
        .records
        .into_iter()
        .enumerate()
        .map(|(position, record)| {
            let receive_count = receive_count(&record);
            let id = record
                .message_id
                .ok_or(EventError::MissingMessageId(position))?;
            Ok(Message {
                id,
                // A missing body fails to parse and is reported as failed.
                body: record.body.unwrap_or_default(),
                receive_count,
            })
        })
        .collect()
}

/// `ReportBatchItemFailures`: only the failed messages go back to the queue.
/// A failure that cannot succeed later goes back too: SQS moves it to the
/// dead-letter queue after `maxReceiveCount` deliveries, where it is kept.
pub fn batch_response(failed: Vec<Failure>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|failed| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = failed.id;
            failure
        })
        .collect();
    response
}

/// While a handler runs, its messages stay hidden this long past the last
/// heartbeat, so a handler that dies (timeout, crash) loses its message for
/// at most this long rather than the queue's whole visibility timeout.
pub const HEARTBEAT_WINDOW: Duration = Duration::from_secs(120);
/// How often a running handler extends its messages' visibility.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(40);
/// First retry of a failed job: after 5 to 10 seconds.
const RETRY_BASE: Duration = Duration::from_secs(10);
/// Longest wait before a retry (15 minutes), well inside a 3-hour campaign.
const RETRY_CAP: Duration = Duration::from_secs(15 * 60);

/// When a failed job is delivered again: a retryable failure after a
/// backoff growing with SQS's receive count (10 s, 40 s, 160 s, 640 s,
/// then 15 min; each with jitter down to half), one that cannot succeed at
/// once, so it reaches its dead-letter queue in seconds.
pub fn retry_delay(receive_count: u32, retryable: bool) -> Duration {
    use rand::Rng;
    if !retryable {
        return Duration::ZERO;
    }
    let exponent = receive_count.saturating_sub(1).min(8);
    let ceiling = RETRY_BASE.saturating_mul(4u32.pow(exponent)).min(RETRY_CAP);
    let secs = ceiling.as_secs().max(1);
    Duration::from_secs(rand::thread_rng().gen_range(secs / 2..=secs))
}

/// Changes the visibility of the messages a function received: the
/// heartbeat while they are handled and the backoff of those that failed.
#[derive(Clone)]
pub struct Redelivery {
    queue: SqsJobQueue,
    name: QueueName,
    window: Duration,
}

impl Redelivery {
    pub fn new(queue: SqsJobQueue, name: QueueName) -> Self {
        Self {
            queue,
            name,
            window: HEARTBEAT_WINDOW,
        }
    }

    /// Holds messages for `window` per heartbeat instead of
    /// [`HEARTBEAT_WINDOW`], beating three times per window.
    pub fn holding_for(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    fn beat_every(&self) -> Duration {
        if self.window == HEARTBEAT_WINDOW {
            HEARTBEAT_EVERY
        } else {
            self.window / 3
        }
    }

    /// Keeps `handles` hidden for another heartbeat window.
    pub async fn hold(&self, handles: &[String]) {
        for handle in handles {
            if let Err(error) = self
                .queue
                .change_visibility(self.name, handle, self.window)
                .await
            {
                // The queue's own timeout still protects the message.
                tracing::warn!(error = %error_chain(&error), "visibility heartbeat failed");
            }
        }
    }

    /// Makes a failed message visible after its [`retry_delay`]; returns
    /// the delay chosen.
    pub async fn retry(
        &self,
        handle: &str,
        receive_count: u32,
        retryable: bool,
    ) -> Result<Duration, QueueError> {
        let delay = retry_delay(receive_count, retryable);
        self.queue
            .change_visibility(self.name, handle, delay)
            .await?;
        Ok(delay)
    }
}

/// An SQS-triggered function's whole body, as on Lambda: the jobs of
/// `queue` only, their messages held by a heartbeat while they run, each
/// failed one made visible again after its backoff before it is reported.
pub async fn handle_sqs_redelivering(
    hub: &Hub,
    queue: QueueName,
    event: SqsEvent,
    concurrency: usize,
    redelivery: &Redelivery,
    metrics: &Metrics,
) -> Result<SqsBatchResponse, EventError> {
    let handles: HashMap<String, (String, u32)> = event
        .records
        .iter()
        .filter_map(|record| {
            Some((
                record.message_id.clone()?,
                (record.receipt_handle.clone()?, receive_count(record)),
            ))
        })
        .collect();
    let messages = sqs_messages(event)?;
    let count = messages.len();
    let extractions: Vec<Job> = messages
        .iter()
        .filter_map(|message| serde_json::from_str::<Job>(&message.body).ok())
        .filter(|job| matches!(job, Job::Extract { .. }))
        .collect();
    let held: Vec<String> = handles.values().map(|(handle, _)| handle.clone()).collect();
    let work = handle_batch(hub, queue, messages, concurrency);
    tokio::pin!(work);
    // Beats in this task, between polls of the work: no heartbeat can still
    // be on its way when a failed message's retry delay is set below.
    let failed = loop {
        redelivery.hold(&held).await;
        tokio::select! {
            failed = &mut work => break failed,
            () = tokio::time::sleep(redelivery.beat_every()) => {}
        }
    };
    for failure in &failed {
        let Some((handle, receive_count)) = handles.get(&failure.id) else {
            continue;
        };
        match redelivery
            .retry(handle, *receive_count, failure.retryable)
            .await
        {
            Ok(delay) => tracing::info!(
                id = %failure.id,
                retry_in_seconds = delay.as_secs(),
                "failed job will be retried"
            ),
            // Reported anyway: it comes back after the heartbeat window.
            Err(error) => tracing::warn!(error = %error_chain(&error), "retry delay not set"),
        }
    }
    tracing::info!(messages = count, failed = failed.len(), "batch handled");
    if !failed.is_empty() {
        metrics.add(
            JOBS_FAILED,
            &[(QUEUE_DIMENSION, queue.as_str())],
            failed.len() as u64,
        );
    }
    count_held_practices(hub, &extractions, metrics).await;
    // The provider counts of this invocation too.
    metrics.flush();
    Ok(batch_response(failed))
}

/// Counts `PracticesHeld` for each extraction that left its practice held
/// as `extraction_suspect`, so an alarm pages staff to decide (nothing is
/// sent in the region meanwhile). A read that fails is logged, not fatal.
async fn count_held_practices(hub: &Hub, extractions: &[Job], metrics: &Metrics) {
    for job in extractions {
        let Job::Extract { campaign, ods } = job else {
            continue;
        };
        match hub.store.get_participation(campaign, ods).await {
            Ok(Some(participation))
                if participation.state == ParticipationState::ExtractionSuspect =>
            {
                metrics.add(PRACTICES_HELD, &[], 1);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(
                campaign = %campaign,
                ods = %ods,
                error = %error_chain(&error),
                "could not check whether the practice is held"
            ),
        }
    }
}

/// An SQS-triggered function's whole body: the jobs of `queue` only.
pub async fn handle_sqs(
    hub: &Hub,
    queue: QueueName,
    event: SqsEvent,
    concurrency: usize,
) -> Result<SqsBatchResponse, EventError> {
    let messages = sqs_messages(event)?;
    let count = messages.len();
    let failed = handle_batch(hub, queue, messages, concurrency).await;
    tracing::info!(messages = count, failed = failed.len(), "batch handled");
    Ok(batch_response(failed))
}

/// The whole `main` of an SQS-triggered function: wire the hub from the
/// environment once, then hand each batch to the handlers.
pub async fn run_sqs_function(
    queue: QueueName,
    concurrency: usize,
) -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let hub = crate::wiring::hub_from_env(crate::wiring::Function::consuming(queue)).await?;
    let hub = &hub;
    let redelivery = &crate::wiring::redelivery_from_env(queue).await?;
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: lambda_runtime::LambdaEvent<SqsEvent>| async move {
            handle_sqs_redelivering(
                hub,
                queue,
                event.payload,
                concurrency,
                redelivery,
                &Metrics::process(),
            )
            .await
            .map_err(lambda_runtime::Error::from)
        },
    ))
    .await
}

/// A router behind API Gateway (REST), for `lambda_http::run`: each
/// request is made what the router expects by [`from_api_gateway`].
pub type ApiGatewayService =
    tower::util::MapRequest<axum::Router, fn(lambda_http::Request) -> lambda_http::Request>;

pub fn api_gateway(router: axum::Router) -> ApiGatewayService {
    api_gateway_counting(router, Metrics::process())
}

/// [`api_gateway`] with the 5xx answers counted in `metrics`.
pub fn api_gateway_counting(router: axum::Router, metrics: Arc<Metrics>) -> ApiGatewayService {
    let router = router.layer(axum::middleware::map_response(
        move |response: axum::response::Response| {
            let metrics = metrics.clone();
            async move {
                if response.status().is_server_error() {
                    metrics.add(API_SERVER_ERRORS, &[], 1);
                    metrics.flush();
                }
                response
            }
        },
    ));
    tower::ServiceExt::map_request(router, from_api_gateway)
}

/// An API Gateway (REST) request as the router expects it: the path is the
/// resource path API Gateway received (lambda_http puts the stage in front
/// of it), and the IAM principal API Gateway verified (`AWS_IAM` auth) is
/// the [`Caller`]. A public route has none.
pub fn from_api_gateway(request: lambda_http::Request) -> lambda_http::Request {
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    let caller = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(context)) => context
            .identity
            .user_arn
            .clone()
            .filter(|arn| !arn.is_empty())
            .map(|arn| Caller(StaffId::new(arn))),
        _ => None,
    };
    let path = request.raw_http_path().to_string();
    let (mut parts, body) = request.into_parts();
    if !path.is_empty() {
        let path_and_query = match parts.uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        match path_and_query.parse() {
            Ok(path_and_query) => uri.path_and_query = Some(path_and_query),
            // Left with the stage in front, the path is a 404.
            Err(error) => tracing::warn!(%error, "resource path not usable as a URI"),
        }
        parts.uri = lambda_http::http::Uri::from_parts(uri).unwrap_or_default();
    }
    if let Some(caller) = caller {
        parts.extensions.insert(caller);
    }
    lambda_http::Request::from_parts(parts, body)
}
