//! Retry timing on SQS (moto): a failed job's message is made visible again
//! after a backoff of seconds to minutes, growing with its receive count,
//! instead of after the queue's whole visibility timeout (90 minutes for
//! the send queue), so a retried chunk fits a 3-hour campaign.
//!
//! Run: `cargo nextest run -p hub-tests --features aws --test aws_retry`

#[path = "../src/aws/mod.rs"]
#[allow(dead_code)]
mod aws;

use aws::Stack;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use functions::lambda::{handle_sqs_redelivering, retry_delay, Redelivery};
use hub_adapters::aws::SqsJobQueue;
use hub_core::domain::{CampaignId, ChunkId};
use hub_core::ports::{Job, JobQueue, QueueName};
use hub_local::LocalStack;
use hub_testkit::fixtures::ods;
use hub_tests::config;
use std::time::{Duration, Instant};

/// A received message: id, receipt handle, receive count.
async fn receive(stack: &Stack, logical_id: &str, wait: Duration) -> Option<SqsMessage> {
    let url = stack.queue_url(logical_id).unwrap();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let out = stack
            .clients
            .sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(1)
            .wait_time_seconds(1)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
            .unwrap();
        if let Some(message) = out.messages.unwrap_or_default().into_iter().next() {
            let mut record = SqsMessage::default();
            record.message_id = message.message_id;
            record.receipt_handle = message.receipt_handle;
            record.body = message.body;
            for (name, value) in message.attributes.unwrap_or_default() {
                record.attributes.insert(name.as_str().to_string(), value);
            }
            return Some(record);
        }
    }
    None
}

/// An emulator stack and a send job received from its send queue (with
/// the queue's 90-minute visibility).
async fn received_send_job() -> (Stack, SqsJobQueue, SqsMessage) {
    let stack = Stack::create().await.expect("emulator stack");
    let queue = stack.job_queue().unwrap();
    queue
        .send(&[Job::Send {
            campaign: CampaignId::new(),
            chunk: ChunkId::new(&ods(1), 7),
        }])
        .await
        .unwrap();
    let first = receive(&stack, "SendQueue", Duration::from_secs(10))
        .await
        .expect("delivered");
    (stack, queue, first)
}

fn receive_count(record: &SqsMessage) -> u32 {
    record.attributes["ApproximateReceiveCount"]
        .parse()
        .unwrap()
}

#[test]
fn retry_delays_grow_with_the_receive_count_and_stay_within_minutes() {
    let ceilings = [10, 40, 160, 640, 900, 900];
    for (i, ceiling) in ceilings.into_iter().enumerate() {
        for _ in 0..50 {
            let delay = retry_delay(i as u32 + 1, true).as_secs();
            assert!(
                (ceiling / 2..=ceiling).contains(&delay),
                "receive {}: {delay}s",
                i + 1
            );
        }
    }
    assert_eq!(retry_delay(1, false), Duration::ZERO);
    // Five receives (maxReceiveCount) end in the dead-letter queue within
    // half an hour at most, not 6 hours of 90-minute visibility timeouts.
    let worst: u64 = ceilings[..4].iter().sum();
    assert!(worst < 30 * 60, "{worst}s");
}

#[tokio::test]
async fn a_retried_send_job_is_back_within_two_minutes() {
    let (stack, queue, first) = received_send_job().await;
    assert_eq!(receive_count(&first), 1);

    // WHEN the function reports it failed (retryable) after setting its delay
    let redelivery = Redelivery::new(queue, QueueName::Send);
    let failed_at = Instant::now();
    let delay = redelivery
        .retry(first.receipt_handle.as_deref().unwrap(), 1, true)
        .await
        .unwrap();

    // THEN it is back after that delay, within 2 minutes, as its second receive
    let again = receive(&stack, "SendQueue", Duration::from_secs(120))
        .await
        .expect("back within 2 minutes");
    let waited = failed_at.elapsed();
    println!("retried send job back after {waited:?} (delay {delay:?})");
    assert_eq!(receive_count(&again), 2);
    assert!(waited < Duration::from_secs(120), "{waited:?}");
    assert!(
        waited + Duration::from_secs(1) >= delay,
        "{waited:?} < {delay:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_succeed_is_visible_again_at_once_on_its_way_to_the_dlq() {
    // GIVEN a purge job of a campaign that does not exist, on the purge queue
    let stack = Stack::create().await.expect("emulator stack");
    let local = LocalStack::start(config(2, 100, 11)).await.expect("hub");
    let queue = stack.job_queue().unwrap();
    queue
        .send(&[Job::Purge {
            campaign: CampaignId::new(),
        }])
        .await
        .unwrap();
    let record = receive(&stack, "PurgeQueue", Duration::from_secs(10))
        .await
        .expect("delivered");
    let mut event = SqsEvent::default();
    event.records.push(record);

    // WHEN the purge function's glue handles it
    let redelivery = Redelivery::new(queue, QueueName::Purge);
    let started = Instant::now();
    let response = handle_sqs_redelivering(
        &local.hub,
        QueueName::Purge,
        event,
        2,
        &redelivery,
        &functions::metrics::Metrics::to_writer(std::io::sink()),
    )
    .await
    .expect("handled");

    // THEN it is reported failed and is back in seconds, not after 90 minutes
    assert_eq!(response.batch_item_failures.len(), 1);
    let again = receive(&stack, "PurgeQueue", Duration::from_secs(20))
        .await
        .expect("visible again at once");
    assert_eq!(receive_count(&again), 2);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn a_held_message_comes_back_one_window_after_its_handler_stops_beating() {
    // GIVEN a send job received with the send queue's 90-minute visibility
    let (stack, queue, first) = received_send_job().await;

    // WHEN its handler holds it by heartbeat (a 3 s window here) and then dies
    let redelivery = Redelivery::new(queue, QueueName::Send).holding_for(Duration::from_secs(3));
    let held_at = Instant::now();
    redelivery
        .hold(&[first.receipt_handle.clone().unwrap()])
        .await;

    // THEN it is back one window later, not 90 minutes later
    let again = receive(&stack, "SendQueue", Duration::from_secs(30))
        .await
        .expect("back after the window");
    let waited = held_at.elapsed();
    println!("held message back after {waited:?}");
    assert_eq!(receive_count(&again), 2);
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}
