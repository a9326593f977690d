//! Queue messages in, handler calls out: the SQS side of every function.
//! A message that cannot be parsed is a failure, never a skip, so it is
//! reported back and ends in the dead-letter queue rather than being lost.

use super::{Hub, JobError};
use crate::ports::{Job, QueueName};
use futures::StreamExt;
use tracing::Instrument;

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

/// A message that did not succeed, to be reported back to its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub id: String,
    /// `false` when no later delivery can succeed (a malformed message, a
    /// job for another queue, a record that does not exist): the event
    /// source may dead-letter it at once instead of retrying.
    pub retryable: bool,
}

/// Handles a batch from `queue` and returns the messages that failed
/// (`ReportBatchItemFailures`): only those go back to the queue. A job that
/// belongs to another queue is refused, so a function only ever runs the
/// handler it was deployed (and permitted) for.
pub async fn handle_batch(
    hub: &Hub,
    queue: QueueName,
    messages: Vec<Message>,
    concurrency: usize,
) -> Vec<Failure> {
    futures::stream::iter(messages)
        .map(|message| {
            let span = tracing::info_span!(
                "message",
                id = %message.id,
                queue = queue.as_str(),
                receive_count = message.receive_count
            );
            handle_message(hub, queue, message).instrument(span)
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|failed| async move { failed })
        .collect()
        .await
}

async fn handle_message(hub: &Hub, queue: QueueName, message: Message) -> Option<Failure> {
    let refuse = |id: String| {
        Some(Failure {
            id,
            retryable: false,
        })
    };
    let job: Job = match serde_json::from_str(&message.body) {
        Ok(job) => job,
        Err(error) => {
            // The serde error names the field, never echoes the body.
            let error = error.to_string();
            let error = error.split(" at line").next().unwrap_or_default();
            tracing::error!(%error, "unparseable message");
            return refuse(message.id);
        }
    };
    if job.queue() != queue {
        tracing::error!(job = job.queue().as_str(), "a job for another queue");
        return refuse(message.id);
    }
    match handle(hub, &job, message.receive_count).await {
        Ok(()) => None,
        Err(error) => {
            let retryable = error.retryable();
            // `{:#}`-style chain: the error and every source under it.
            let chain = error_chain(&error);
            if retryable {
                tracing::warn!(campaign = %job.campaign(), error = %chain, "message failed; will be retried");
            } else {
                tracing::error!(campaign = %job.campaign(), error = %chain, "message failed for good");
            }
            Some(Failure {
                id: message.id,
                retryable,
            })
        }
    }
}

/// An error and its sources, `: `-separated, for one log field.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // `#[error(transparent)]` and `{0}` wrappers repeat their source.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::StoreError;

    #[test]
    fn retryable_is_said_once_per_kind() {
        assert!(JobError::retry("GP system busy").retryable());
        assert!(!JobError::Malformed("no chunk".into()).retryable());
        assert!(JobError::Store(StoreError::Conflict("v".into())).retryable());
        assert!(JobError::Store(StoreError::unavailable("throttled")).retryable());
        assert!(!JobError::Store(StoreError::NotFound("campaign".into())).retryable());
    }

    #[test]
    fn the_chain_keeps_every_source_once() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        let error = JobError::Store(StoreError::unavailable_because("Query on DynamoDB", io));
        assert_eq!(
            error_chain(&error),
            "store: store unavailable: Query on DynamoDB: timed out"
        );
        let anyhow = anyhow::anyhow!("disk full").context("PutItem");
        let error = JobError::Store(StoreError::Unexpected(anyhow));
        assert_eq!(error_chain(&error), "store: PutItem: disk full");
    }
}
