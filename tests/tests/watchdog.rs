//! Every campaign ends in a recorded state: each hang the watchdog exists
//! for, made real on the embedded stack, ends with the campaign final, its
//! report adding up and its patient data purged.

use hub_core::domain::{CampaignState, ParticipationState};
use hub_core::handlers::api;
use hub_core::ports::ScheduledAction;
use hub_local::LocalStack;
use hub_tests::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_lettered_extraction_is_retried_then_recorded_as_failed() {
    // GIVEN extract jobs dead-lettered at their first failure, one practice
    // whose GP system is down for good and one down once
    let mut config = config(3, 900, 61);
    config.max_receive_count = 1;
    config.visibility_timeout = Duration::from_secs(6);
    config.hub.stuck_after = chrono::Duration::seconds(2);
    let stack = Arc::new(LocalStack::start(config).await.expect("stack"));
    let practices = stack.estate.practices();
    let (gone, flaky) = (practices[0].ods.clone(), practices[1].ods.clone());
    stack.estate.set_down(&gone, None);
    stack.estate.set_down(&flaky, Some(1));
    let id = create_and_approve(&stack, &request("NHS: heat alert, see www.nhs.uk")).await;

    // WHEN the deadline fires (each failed extraction is dead-lettered:
    // without the watchdog the campaign would wait in extracting forever)
    fire_deadline_now(&stack, &id).await;

    // THEN the watchdog retries them, records the dead one as failed with a
    // reason, and the campaign completes, adds up and is purged
    let report = completed_and_sound(&stack, &id, Duration::from_secs(120)).await;
    assert_purged(&stack, &id).await;
    let state = |ods| {
        report
            .practices
            .iter()
            .find(|p| &p.ods == ods)
            .map(|p| (p.state, p.last_error.clone()))
    };
    assert_eq!(
        state(&flaky).map(|s| s.0),
        Some(ParticipationState::Extracted)
    );
    let (failed, reason) = state(&gone).expect("the dead practice is reported");
    assert_eq!(failed, ParticipationState::ExtractionFailed);
    assert!(
        reason.is_some_and(|r| r.contains("stalled")),
        "a reason is recorded"
    );
    let audit = stack.hub.store.list_audit(&id).await.expect("audit");
    assert!(audit
        .iter()
        .any(|e| e.action == "watchdog_extraction_retried"));
    assert!(audit
        .iter()
        .any(|e| e.action == "practice_extraction_failed" && e.actor == "watchdog"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_whose_schedule_was_lost_still_fires() {
    let stack = Arc::new(LocalStack::start(config(2, 400, 62)).await.expect("stack"));
    let hub = &stack.hub;
    let id = create_and_approve(&stack, &request("NHS: heat alert, see www.nhs.uk")).await;

    // GIVEN the deadline passed while its one-time schedule was gone (it
    // deletes itself after a failed invocation)
    hub.scheduler
        .cancel(&ScheduledAction::Deadline {
            campaign: id.clone(),
        })
        .await
        .expect("schedule removed");
    let (_, moved) = hub
        .update_campaign_with(&id, |c| {
            c.optout_deadline = chrono::Utc::now() - chrono::Duration::minutes(10);
            true
        })
        .await
        .expect("deadline in the past");
    assert!(moved);

    // THEN the watchdog fires it and the campaign completes and purges
    let report = completed_and_sound(&stack, &id, Duration::from_secs(120)).await;
    assert_purged(&stack, &id).await;
    assert!(report.totals.sent > 0);
    let audit = hub.store.list_audit(&id).await.expect("audit");
    assert!(audit.iter().any(|e| e.action == "watchdog_deadline_fired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_a_failed_step_left_unapplied_is_applied() {
    let stack = Arc::new(LocalStack::start(config(2, 300, 63)).await.expect("stack"));
    let hub = &stack.hub;
    let id = create_and_approve(&stack, &request("NHS: heat alert, see www.nhs.uk")).await;
    fire_deadline_now(&stack, &id).await;
    wait_for_state(
        &stack,
        &id,
        CampaignState::Completed,
        Duration::from_secs(120),
    )
    .await;

    // GIVEN a campaign left in sending with nothing outstanding, as when
    // `after_progress` failed after the last chunk's count was taken
    let second = api::create_campaign(hub, &alice(), &request("NHS: second alert, see www.nhs.uk"))
        .await
        .expect("create")
        .campaign
        .id;
    hub.update_campaign_with(&second, |c| {
        c.state = CampaignState::Sending;
        c.approved_by = Some(bob());
        true
    })
    .await
    .expect("stuck in sending");

    // THEN the watchdog moves it on: it completes and purges
    wait_for_state(
        &stack,
        &second,
        CampaignState::Completed,
        Duration::from_secs(60),
    )
    .await;
    let audit = hub.store.list_audit(&second).await.expect("audit");
    assert!(audit
        .iter()
        .any(|e| e.action == "watchdog_progress_reapplied"));
    assert!(hub
        .campaign(&second)
        .await
        .expect("campaign")
        .purged_at
        .is_some());
}
