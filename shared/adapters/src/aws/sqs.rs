//! `JobQueue` on SQS standard queues.
//!
//! Jobs are grouped by queue and sent with `SendMessageBatch`, 10 per call.
//! A body is the JSON of the [`Job`]: keys only, never patient data. Entries
//! SQS reports as failed are sent again with exponential backoff and jitter;
//! whatever still fails is reported (callers are idempotent and retry).

use super::fault::{backoff, Fault, FaultKind};
use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use futures::{StreamExt, TryStreamExt};
use hub_core::ports::{Job, JobQueue, QueueError, QueueName};
use std::collections::HashMap;
use std::time::Duration;

/// `SendMessageBatch` takes at most 10 entries.
pub const SQS_BATCH_MAX: usize = 10;
/// The longest visibility SQS allows.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
const ATTEMPTS: u32 = 6;
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Sends jobs to the queue URL configured for each [`QueueName`].
#[derive(Clone, Debug)]
pub struct SqsJobQueue {
    client: Client,
    urls: HashMap<QueueName, String>,
    concurrency: usize,
}

impl SqsJobQueue {
    /// `urls` needs an entry for every queue this process sends to; a job
    /// for a queue without one fails.
    pub fn new(client: Client, urls: HashMap<QueueName, String>) -> Self {
        Self {
            client,
            urls,
            concurrency: 8,
        }
    }

    /// How many batches a call keeps in flight (default 8).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    pub fn url(&self, queue: QueueName) -> Option<&str> {
        self.urls.get(&queue).map(String::as_str)
    }

    /// Makes a received message visible again `after` from now
    /// (`ChangeMessageVisibility`, whole seconds, at most SQS's 12 hours):
    /// a failed job comes back after its backoff instead of the queue's
    /// whole visibility timeout, and a running handler keeps its message.
    pub async fn change_visibility(
        &self,
        queue: QueueName,
        receipt_handle: &str,
        after: Duration,
    ) -> Result<(), QueueError> {
        let url = self.urls.get(&queue).ok_or_else(|| {
            QueueError::Unexpected(anyhow::anyhow!(
                "no URL configured for the {} queue",
                queue.as_str()
            ))
        })?;
        let seconds = after.as_secs().min(MAX_VISIBILITY.as_secs()) as i32;
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|err| Fault::from_sdk("ChangeMessageVisibility", &err, true).into())
            .map(|_| ())
    }

    /// Sends up to 10 bodies to one queue, resending failed entries.
    async fn send_batch(
        &self,
        queue: QueueName,
        url: &str,
        bodies: Vec<String>,
        delay_seconds: i32,
    ) -> Result<(), QueueError> {
        // Entry ids are positions in this batch.
        let mut pending: Vec<(String, String)> = bodies
            .into_iter()
            .enumerate()
            .map(|(position, body)| (position.to_string(), body))
            .collect();
        let total = pending.len();
        let mut last_codes: Vec<String> = Vec::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt, BACKOFF_BASE, BACKOFF_CAP)).await;
            }
            let entries = pending
                .iter()
                .map(|(id, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(body)
                        .delay_seconds(delay_seconds)
                        .build()
                        .map_err(|e| {
                            QueueError::Unexpected(
                                anyhow::Error::new(e).context("building an SQS batch entry"),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let result = self
                .client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await;
            let out = match result {
                Ok(out) => out,
                Err(err) => {
                    let fault = Fault::from_sdk("SendMessageBatch", &err, true);
                    if fault.is_transient() {
                        last_codes = vec![fault.code.clone()];
                        continue;
                    }
                    return Err(fault.into());
                }
            };
            let failed = out.failed();
            if failed.is_empty() {
                return Ok(());
            }
            if let Some(entry) = failed.iter().find(|entry| entry.sender_fault()) {
                // Our request is wrong; sending it again will not help.
                let mut fault = Fault::new(FaultKind::Permanent, "SendMessageBatch", entry.code());
                fault.message = entry.message().map(str::to_string);
                return Err(QueueError::Unexpected(
                    anyhow::Error::new(fault)
                        .context(format!("sending to the {} queue", queue.as_str())),
                ));
            }
            last_codes = failed
                .iter()
                .map(|entry| entry.code().to_string())
                .collect();
            let failed_ids: Vec<&str> = failed.iter().map(|entry| entry.id()).collect();
            pending.retain(|(id, _)| failed_ids.contains(&id.as_str()));
        }
        last_codes.sort();
        last_codes.dedup();
        Err(QueueError::Unavailable(format!(
            "{} of {total} jobs not sent to the {} queue after {ATTEMPTS} attempts ({})",
            pending.len(),
            queue.as_str(),
            last_codes.join(", ")
        )))
    }
}

#[async_trait]
impl JobQueue for SqsJobQueue {
    async fn send(&self, jobs: &[Job]) -> Result<(), QueueError> {
        self.send_delayed(jobs, 0).await
    }

    async fn send_later(&self, jobs: &[Job], delay: std::time::Duration) -> Result<(), QueueError> {
        let seconds = delay.min(hub_core::ports::MAX_SEND_DELAY).as_secs();
        self.send_delayed(jobs, i32::try_from(seconds).unwrap_or(900))
            .await
    }
}

impl SqsJobQueue {
    async fn send_delayed(&self, jobs: &[Job], delay_seconds: i32) -> Result<(), QueueError> {
        let mut by_queue: Vec<(QueueName, Vec<String>)> = Vec::new();
        for job in jobs {
            let body = serde_json::to_string(job).map_err(|e| {
                QueueError::Unexpected(anyhow::Error::new(e).context("encoding a job"))
            })?;
            match by_queue.iter_mut().find(|(queue, _)| *queue == job.queue()) {
                Some((_, bodies)) => bodies.push(body),
                None => by_queue.push((job.queue(), vec![body])),
            }
        }
        let mut batches = Vec::new();
        for (queue, bodies) in by_queue {
            let url = self.urls.get(&queue).ok_or_else(|| {
                QueueError::Unexpected(anyhow::anyhow!(
                    "no URL is configured for the {} queue",
                    queue.as_str()
                ))
            })?;
            for batch in bodies.chunks(SQS_BATCH_MAX) {
                batches.push((queue, url.clone(), batch.to_vec()));
            }
        }
        futures::stream::iter(batches)
            .map(|(queue, url, bodies)| async move {
                self.send_batch(queue, &url, bodies, delay_seconds).await
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}
