//! Queue messages in, handler calls out: the SQS side of every function.
//! A message that cannot be parsed is a failure, never a skip, so it is
//! retried and ends in the dead-letter queue rather than being lost.

use super::{Hub, JobError};
use crate::ports::Job;
use futures::StreamExt;

/// Runs the handler for one job. `receive_count` is SQS's
/// `ApproximateReceiveCount` (1 on the first delivery).
pub async fn handle(hub: &Hub, job: &Job, receive_count: u32) -> Result<(), JobError> {
    match job {
        Job::Notice { campaign, ods } => super::notices::send_notice(hub, campaign, ods).await,
        Job::Extract { campaign, ods } => {
            super::extract::extract_practice(hub, campaign, ods, receive_count).await
        }
        Job::Send { campaign, chunk } => super::send::send_chunk(hub, campaign, chunk).await,
        Job::Writeback { campaign, chunk } => {
            super::writeback::write_back_chunk(hub, campaign, chunk, receive_count).await
        }
        Job::Letters { campaign, chunk } => {
            super::letters::send_letters(hub, campaign, chunk).await
        }
        Job::Purge { campaign } => super::purge::purge_campaign(hub, campaign).await,
    }
}

/// One message of a batch, as any event source delivers it.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub body: String,
    pub receive_count: u32,
}

/// Handles a batch and returns the ids of the messages that failed
/// (`ReportBatchItemFailures`): only those are retried.
pub async fn handle_batch(hub: &Hub, messages: Vec<Message>, concurrency: usize) -> Vec<String> {
    let handlers: Vec<futures::future::BoxFuture<'_, Option<String>>> = messages
        .into_iter()
        .map(|message| -> futures::future::BoxFuture<'_, Option<String>> {
            Box::pin(async move {
        let span = tracing::info_span!("message", id = %message.id, receive_count = message.receive_count);
        let _entered = span.enter();
        drop(_entered);
        let job: Job = match serde_json::from_str(&message.body) {
            Ok(job) => job,
            Err(error) => {
                // The serde error names the field, never echoes the body.
                tracing::error!(id = %message.id, error = %error.to_string().split(" at line").next().unwrap_or_default(), "unparseable message");
                return Some(message.id);
            }
        };
        match handle(hub, &job, message.receive_count).await {
            Ok(()) => None,
            Err(error) => {
                tracing::warn!(id = %message.id, campaign = %job.campaign(), queue = job.queue().as_str(), %error, "message failed; will be retried");
                Some(message.id)
            }
        }
            })
        })
        .collect();
    futures::stream::iter(handlers)
        .buffer_unordered(concurrency.max(1))
        .filter_map(|failed| async move { failed })
        .collect()
        .await
}
