//! The event sources of the AWS stack, played by the test process against
//! the emulator: a poller per SQS queue that calls the SQS functions' real
//! body ([`functions::lambda::handle_sqs`]) with an `SqsEvent` and deletes only
//! the messages the partial batch response did not report, and a timer that
//! fires due purge schedules by sending their input to the purge queue (the emulator stores schedules but never fires
//! them). Deadlines are fired by the tests themselves.

// Shared by the AWS test binaries; not every one uses every helper.
#![allow(dead_code)]

use super::template::as_u64;
use super::Stack;
use anyhow::{Context, Result};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use hub_core::handlers::Hub;
use hub_core::ports::{Job, QueueName};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The template's logical id of a queue.
pub fn queue_id(queue: QueueName) -> &'static str {
    match queue {
        QueueName::Notices => "NoticesQueue",
        QueueName::Extract => "ExtractQueue",
        QueueName::Send => "SendQueue",
        QueueName::Writeback => "WritebackQueue",
        QueueName::Letters => "LettersQueue",
        QueueName::Purge => "PurgeQueue",
    }
}

/// The template's logical id of a queue's dead-letter queue.
pub fn dlq_id(queue: QueueName) -> &'static str {
    match queue {
        QueueName::Notices => "NoticesDLQ",
        QueueName::Extract => "ExtractDLQ",
        QueueName::Send => "SendDLQ",
        QueueName::Writeback => "WritebackDLQ",
        QueueName::Letters => "LettersDLQ",
        QueueName::Purge => "PurgeDLQ",
    }
}

/// `maxReceiveCount` of a queue's redrive policy, as `template.yaml` sets it.
pub fn max_receive_count(stack: &Stack, queue: QueueName) -> Result<u64> {
    stack
        .template
        .resource(queue_id(queue))
        .and_then(|r| r.properties.get("RedrivePolicy"))
        .and_then(|p| p.get("maxReceiveCount"))
        .and_then(as_u64)
        .context("maxReceiveCount in template.yaml")
}

/// One message handed to a function, and whether it was reported failed.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue: QueueName,
    pub message_id: String,
    pub body: String,
    pub receive_count: u32,
    pub failed: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct HarnessOptions {
    /// Set on every queue for the test (the template's are hours long).
    pub visibility_timeout: Duration,
    pub poll_interval: Duration,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_millis(50),
        }
    }
}

/// Pollers per queue and messages per batch: the event source mappings'
/// batch size and maximum concurrency, scaled down.
fn workers(queue: QueueName) -> (usize, i32) {
    match queue {
        QueueName::Send => (3, 1),
        QueueName::Extract => (2, 1),
        _ => (1, 10),
    }
}

pub struct EventSources {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    tasks: Vec<JoinHandle<()>>,
}

struct Poller {
    hub: Hub,
    sqs: aws_sdk_sqs::Client,
    queue: QueueName,
    url: String,
    batch: i32,
    options: HarnessOptions,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl EventSources {
    /// Shortens every queue's visibility timeout and starts the pollers and
    /// the purge timer.
    pub async fn start(stack: &Stack, hub: &Hub, options: HarnessOptions) -> Result<Self> {
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for queue in QueueName::ALL {
            let url = stack.queue_url(queue_id(queue))?;
            stack
                .clients
                .sqs
                .set_queue_attributes()
                .queue_url(&url)
                .attributes(
                    QueueAttributeName::VisibilityTimeout,
                    options.visibility_timeout.as_secs().max(1).to_string(),
                )
                .send()
                .await
                .with_context(|| format!("shortening the visibility timeout of {queue:?}"))?;
            let (count, batch) = workers(queue);
            for _ in 0..count {
                let poller = Poller {
                    hub: hub.clone(),
                    sqs: stack.clients.sqs.clone(),
                    queue,
                    url: url.clone(),
                    batch,
                    options,
                    deliveries: deliveries.clone(),
                };
                tasks.push(tokio::spawn(async move { poller.run().await }));
            }
        }
        let targets = stack.schedule_targets()?;
        let timer = PurgeTimer {
            sqs: stack.clients.sqs.clone(),
            purge_queue_url: stack.queue_url(queue_id(QueueName::Purge))?,
            purge_queue_arn: targets.purge_queue_arn.clone(),
            scheduler: stack.clients.scheduler.clone(),
            group: targets.group,
            interval: options.poll_interval * 4,
        };
        tasks.push(tokio::spawn(async move { timer.run().await }));
        Ok(Self { deliveries, tasks })
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for EventSources {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Poller {
    async fn run(&self) {
        loop {
            match self.once().await {
                Ok(true) => {}
                Ok(false) => tokio::time::sleep(self.options.poll_interval).await,
                Err(error) => {
                    tracing::warn!(queue = self.queue.as_str(), error = %format!("{error:#}"), "poll failed");
                    tokio::time::sleep(self.options.poll_interval).await;
                }
            }
        }
    }

    /// One receive, invoke, delete. `Ok(false)` when the queue was empty.
    async fn once(&self) -> Result<bool> {
        // No long polling: the emulator answers one request at a time, so
        // a waiting receive would hold up every other call.
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(self.batch)
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(false);
        }
        let mut event = SqsEvent::default();
        for message in &messages {
            let mut record = SqsMessage::default();
            record.message_id = message.message_id.clone();
            record.receipt_handle = message.receipt_handle.clone();
            record.body = message.body.clone();
            if let Some(count) = message
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            {
                record
                    .attributes
                    .insert("ApproximateReceiveCount".into(), count.clone());
            }
            event.records.push(record);
        }
        let records = event.records.clone();

        // Lambda's visibility timeout outlasts the function; here the
        // harness extends it while the function runs instead.
        let handling =
            functions::lambda::handle_sqs(&self.hub, self.queue, event, self.batch as usize);
        tokio::pin!(handling);
        let mut heartbeat = tokio::time::interval(self.options.visibility_timeout / 3);
        heartbeat.tick().await;
        let response = loop {
            tokio::select! {
                response = &mut handling => break response?,
                _ = heartbeat.tick() => {
                    for message in &messages {
                        if let Some(handle) = &message.receipt_handle {
                            let _ = self
                                .sqs
                                .change_message_visibility()
                                .queue_url(&self.url)
                                .receipt_handle(handle)
                                .visibility_timeout(self.options.visibility_timeout.as_secs().max(1) as i32)
                                .send()
                                .await;
                        }
                    }
                }
            }
        };
        let failed: HashSet<String> = response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        let mut seen = Vec::new();
        for (message, record) in messages.iter().zip(&records) {
            let id = message.message_id.clone().unwrap_or_default();
            let is_failed = failed.contains(&id);
            seen.push(Delivery {
                queue: self.queue,
                message_id: id,
                body: message.body.clone().unwrap_or_default(),
                receive_count: record
                    .attributes
                    .get("ApproximateReceiveCount")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
                failed: is_failed,
            });
            if is_failed {
                continue;
            }
            if let Some(handle) = &message.receipt_handle {
                self.sqs
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(handle)
                    .send()
                    .await?;
            }
        }
        if let Ok(mut all) = self.deliveries.lock() {
            all.extend(seen);
        }
        Ok(true)
    }
}

/// EventBridge Scheduler's part for purges: a due `at()` schedule whose
/// input is a purge sends the purge job to the purge queue, and is deleted
/// (`ActionAfterCompletion: DELETE`).
struct PurgeTimer {
    sqs: aws_sdk_sqs::Client,
    purge_queue_url: String,
    purge_queue_arn: String,
    scheduler: aws_sdk_scheduler::Client,
    group: String,
    interval: Duration,
}

/// The time of an `at(yyyy-mm-ddThh:mm:ss)` expression (UTC).
pub fn parse_at(expression: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let inner = expression.strip_prefix("at(")?.strip_suffix(')')?;
    chrono::NaiveDateTime::parse_from_str(inner, "%Y-%m-%dT%H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

impl PurgeTimer {
    async fn run(&self) {
        loop {
            if let Err(error) = self.once().await {
                tracing::warn!(error = %format!("{error:#}"), "schedule poll failed");
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    async fn once(&self) -> Result<()> {
        let listed = self
            .scheduler
            .list_schedules()
            .group_name(&self.group)
            .send()
            .await?;
        for summary in listed.schedules() {
            let Some(name) = summary.name() else {
                continue;
            };
            if !name.starts_with("hub-purge-") {
                continue;
            }
            let schedule = self
                .scheduler
                .get_schedule()
                .group_name(&self.group)
                .name(name)
                .send()
                .await?;
            let due = schedule
                .schedule_expression()
                .and_then(parse_at)
                .is_some_and(|at| at <= chrono::Utc::now());
            if !due {
                continue;
            }
            let target = schedule.target().context("schedule target")?;
            let input = target.input().context("schedule input")?;
            // A purge schedule targets the purge queue with the purge job
            // as its input: what EventBridge sends is that body, unchanged.
            let job: Job = serde_json::from_str(input).context("a purge schedule's input")?;
            anyhow::ensure!(
                matches!(job, Job::Purge { .. }) && target.arn() == self.purge_queue_arn,
                "unexpected purge schedule target {}",
                target.arn()
            );
            self.sqs
                .send_message()
                .queue_url(&self.purge_queue_url)
                .message_body(input)
                .send()
                .await?;
            self.scheduler
                .delete_schedule()
                .group_name(&self.group)
                .name(name)
                .send()
                .await?;
        }
        Ok(())
    }
}
