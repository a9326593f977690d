//! Glue between Lambda's event types and the handlers: the only module that
//! sees a Lambda type, so the domain and the handlers never do.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use hub_core::handlers::jobs::{handle_batch, Failure, Message};
use hub_core::handlers::Hub;
use hub_core::ports::QueueName;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Without an id a failure cannot be reported for just this message;
    /// failing the whole batch is the only way not to lose it.
    #[error("SQS record {0} has no messageId")]
    MissingMessageId(usize),
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

/// The messages of an SQS event, with SQS's receive count.
pub fn sqs_messages(event: SqsEvent) -> Result<Vec<Message>, EventError> {
    event
        .records
        .into_iter()
        .enumerate()
        .map(|(position, record)| {
            let id = record
                .message_id
                .ok_or(EventError::MissingMessageId(position))?;
            let receive_count = record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|count| count.parse().ok())
                .unwrap_or(1);
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
    let wired = crate::wiring::hub_from_env().await?;
    let hub = &wired.hub;
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: lambda_runtime::LambdaEvent<SqsEvent>| async move {
            handle_sqs(hub, queue, event.payload, concurrency)
                .await
                .map_err(lambda_runtime::Error::from)
        },
    ))
    .await
}

/// An API Gateway (REST) request as the staff router sees it. The caller is
/// the IAM principal API Gateway verified (`AWS_IAM` auth); a public route
/// has none.
pub fn http_request(request: lambda_http::Request) -> hub_core::http::HttpRequest {
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    let caller = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(context)) => context
            .identity
            .user_arn
            .clone()
            .filter(|arn| !arn.is_empty())
            .map(hub_core::domain::StaffId),
        _ => None,
    };
    // The resource path as API Gateway received it, without the stage
    // prefix lambda_http adds to the URI.
    let path = request.raw_http_path().to_string();
    let (parts, body) = request.into_parts();
    hub_core::http::HttpRequest {
        method: parts.method.as_str().to_string(),
        path,
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    name.as_str().to_ascii_lowercase(),
                    value.to_str().ok()?.to_string(),
                ))
            })
            .collect(),
        body: body.to_vec(),
        caller,
    }
}

pub fn http_response(
    response: hub_core::http::HttpResponse,
) -> Result<lambda_http::Response<lambda_http::Body>, lambda_http::http::Error> {
    let mut builder = lambda_http::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder.body(lambda_http::Body::from(response.body))
}

/// The whole `main` of the api and optout-link functions: the staff router
/// behind API Gateway. `public_only` refuses every route that needs a caller.
pub async fn run_http_function(public_only: bool) -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let wired = crate::wiring::hub_from_env().await?;
    let hub = &wired.hub;
    lambda_http::run(lambda_http::service_fn(
        |request: lambda_http::Request| async move {
            let mut request = http_request(request);
            if public_only {
                request.caller = None;
            }
            let response = if public_only && !hub_core::http::is_public(&request.path) {
                hub_core::http::HttpResponse {
                    status: 404,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: br#"{"code":"not_found","message":"no such route","field":null,"errors":[]}"#.to_vec(),
                }
            } else {
                hub_core::http::route(hub, &request).await
            };
            http_response(response).map_err(lambda_runtime::Error::from)
        },
    ))
    .await
}
