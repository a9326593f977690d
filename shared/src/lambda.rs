//! Glue between Lambda's event types and the handlers: the only module that
//! sees a Lambda type, so the domain and the handlers never do.

use crate::handlers::jobs::{handle_batch, Message};
use crate::handlers::Hub;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};

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
pub fn batch_response(failed: Vec<String>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    response
}

/// An SQS-triggered function's whole body.
pub async fn handle_sqs(
    hub: &Hub,
    event: SqsEvent,
    concurrency: usize,
) -> Result<SqsBatchResponse, EventError> {
    let messages = sqs_messages(event)?;
    let count = messages.len();
    let failed = handle_batch(hub, messages, concurrency).await;
    tracing::info!(messages = count, failed = failed.len(), "batch handled");
    Ok(batch_response(failed))
}

/// The whole `main` of an SQS-triggered function: wire the hub from the
/// environment once, then hand each batch to the handlers.
#[cfg(feature = "aws")]
pub async fn run_sqs_function(concurrency: usize) -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let wired = crate::wiring::hub_from_env().await?;
    let hub = &wired.hub;
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: lambda_runtime::LambdaEvent<SqsEvent>| async move {
            handle_sqs(hub, event.payload, concurrency)
                .await
                .map_err(lambda_runtime::Error::from)
        },
    ))
    .await
}
