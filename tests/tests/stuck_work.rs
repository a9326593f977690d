//! Work left half done by a worker that died, or by a provider outage
//! longer than the retry budget, still ends recorded: each fault made real
//! on the embedded stack, the campaign completes, its report adds up,
//! nobody gets it twice and its patient data is purged.

use hub_core::domain::{CampaignId, CampaignState, ExclusionReason};
use hub_core::handlers::report::CampaignReport;
use hub_core::ports::QueueName;
use hub_local::LocalStack;
use hub_tests::*;
use std::sync::Arc;
use std::time::Duration;

const MESSAGE: &str = "NHS: heat alert, see www.nhs.uk";

/// Polls `done` every 20 ms until it holds, for at most `limit`.
async fn wait_for(limit: Duration, done: impl Fn() -> bool) {
    let until = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < until,
            "condition not met in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the campaign to complete, then checks its report adds up,
/// nobody got it twice and its patient data is purged.
async fn completes(stack: &Arc<LocalStack>, id: &CampaignId) -> CampaignReport {
    let report = wait_for_state(
        stack,
        id,
        CampaignState::Completed,
        Duration::from_secs(180),
    )
    .await;
    assert_invariants(stack, &report).await;
    assert_purged(stack, id).await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_letter_the_provider_took_before_its_worker_died_is_recorded_sent_once() {
    let stack = LocalStack::start(config(2, 600, 71)).await.expect("stack");
    // GIVEN the letter provider accepts the next letter and the worker
    // that sent it then never hears back (it hangs, and is killed below)
    stack.postal.stall_letters_after_accepting(1);
    let id = create_and_approve(&stack, &request(MESSAGE)).await;
    fire_deadline_now(&stack, &id).await;
    wait_for(Duration::from_secs(60), || stack.postal.letters_sent() >= 1).await;
    // WHEN that worker dies between the provider call and the record
    stack.crash_workers(QueueName::Letters);

    // THEN the claim is looked up at the provider, found, and recorded as
    // sent: counted once, written back, never sent again
    let report = completes(&stack, &id).await;
    assert!(
        report.totals.letters > 0,
        "the region has letter recipients"
    );
    assert_eq!(
        report.totals.letters,
        stack.postal.letters_sent() as u64,
        "every letter the provider took is counted, the died worker's too"
    );
    assert_eq!(stack.postal.duplicate_letters(), 0, "no letter sent twice");
    assert_eq!(
        report.totals.excluded.get(&ExclusionReason::NotSent),
        None,
        "no letter given up"
    );
    assert_eq!(
        report.totals.written_back,
        report.totals.sent + report.totals.letters,
        "every text and letter is written back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_letter_whose_answer_never_came_is_looked_up_not_sent_again() {
    let stack = LocalStack::start(config(2, 600, 74)).await.expect("stack");
    // GIVEN the letter provider accepts the next letter and never answers
    // (the Notify client gives up after its timeout: an unclear answer)
    stack.postal.stall_letters_after_accepting(1);
    let id = create_and_approve(&stack, &request(MESSAGE)).await;
    fire_deadline_now(&stack, &id).await;

    // THEN the worker looks the letter up after the grace period, finds
    // it and records it sent: once, counted, written back
    let report = completes(&stack, &id).await;
    assert!(
        report.totals.letters > 0,
        "the region has letter recipients"
    );
    assert_eq!(report.totals.letters, stack.postal.letters_sent() as u64);
    assert_eq!(stack.postal.duplicate_letters(), 0, "no letter sent twice");
    assert_eq!(
        report.totals.written_back,
        report.totals.sent + report.totals.letters
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_chunk_whose_worker_died_mid_chunk_is_found_by_the_watchdog() {
    // GIVEN send jobs dead-lettered at their first failed delivery, so a
    // chunk whose worker died is lost to the queue and only the watchdog
    // can find it
    let mut config = config(2, 600, 72);
    config.max_receive_count = 1;
    config.visibility_timeout = Duration::from_secs(6);
    config.hub.stuck_after = chrono::Duration::seconds(15);
    let stack = LocalStack::start(config).await.expect("stack");
    for gateway in &stack.gateways {
        gateway.stall_after_accepting(1);
    }
    let id = create_and_approve(&stack, &request(MESSAGE)).await;
    fire_deadline_now(&stack, &id).await;
    wait_for(Duration::from_secs(60), || stack.texts_sent() >= 1).await;
    // WHEN the send workers die mid-chunk, claims left `Claimed` (one text
    // accepted by a provider but never recorded)
    stack.crash_workers(QueueName::Send);

    // THEN the watchdog re-queues the stuck chunks, their claims are
    // reconciled (found: recorded sent; not found and stale: sent once),
    // and the campaign completes with everyone texted once
    let report = completes(&stack, &id).await;
    let lost = stack
        .queue
        .dead_letters(QueueName::Send)
        .await
        .expect("dead letters");
    assert!(!lost.is_empty(), "the died worker's send job was lost");
    let audit = stack.hub.store.list_audit(&id).await.expect("audit");
    assert!(
        audit.iter().any(|e| e.action == "watchdog_chunks_retried"),
        "the watchdog found the stuck chunk"
    );
    assert_eq!(
        report.totals.excluded.get(&ExclusionReason::NotSent),
        None,
        "nobody given up"
    );
    assert_eq!(
        report.totals.written_back,
        report.totals.sent + report.totals.letters
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_outage_longer_than_the_retry_budget_dead_letters_nothing() {
    // (A chunk's texts all go at once, so every one is refused by the
    // outage and left claimed: the redeliveries find nothing to send.)
    let mut config = config(2, 600, 73);
    config.hub.send_batch = config.hub.chunk_size;
    config.hub.send_concurrency = config.hub.chunk_size;
    let stack = LocalStack::start(config).await.expect("stack");
    let id = create_and_approve(&stack, &request(MESSAGE)).await;
    // GIVEN every SMS provider answers 5xx for longer than a send job's
    // receives last (5 x 2 s visibility) and than `stale_after` (5 s)
    for gateway in &stack.gateways {
        gateway.outage_for(Duration::from_secs(20));
    }
    let outage_started = std::time::Instant::now();
    fire_deadline_now(&stack, &id).await;

    // THEN once it is over every patient is texted exactly once and no
    // send job was dead-lettered
    let report = completes(&stack, &id).await;
    assert!(
        outage_started.elapsed() >= Duration::from_secs(20),
        "the campaign waited the outage out"
    );
    let refused: u64 =
        stack.gateways.iter().map(|g| g.sms_calls()).sum::<u64>() - stack.texts_sent() as u64;
    assert!(refused > 0, "the outage refused texts");
    assert!(report.totals.sent > 0);
    assert_eq!(
        report.totals.excluded.get(&ExclusionReason::NotSent),
        None,
        "nobody given up"
    );
    assert!(
        stack
            .queue
            .dead_letters(QueueName::Send)
            .await
            .expect("dead letters")
            .is_empty(),
        "no send job dead-lettered"
    );
}
