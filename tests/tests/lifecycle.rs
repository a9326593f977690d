//! Whole campaigns on the embedded stack, with faults injected.

use hub_core::domain::{CampaignState, ExclusionReason, ParticipationState, StaffId};
use hub_core::handlers::api::{self, ApiError};
use hub_core::handlers::deadline::{fire_deadline, DeadlineOutcome};
use hub_core::ports::{Job, JobQueue, QueueName};
use hub_local::demo::{self, wait_until, DemoOptions, Quiet};
use hub_local::LocalStack;
use hub_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_runs_a_campaign_whose_report_adds_up() {
    let options = DemoOptions {
        practices: 6,
        patients: 6_000,
        seed: 11,
        ..DemoOptions::default()
    };
    let report = demo::run(&options, &Quiet).await.expect("demo runs");
    assert_eq!(report.state, "completed");
    assert!(report.adds_up);
    let excluded: u64 = report.excluded.values().sum();
    assert_eq!(report.cohort, report.sent + report.letters + excluded);
    for practice in &report.practices {
        assert_eq!(
            practice.cohort,
            practice.sent + practice.letters + practice.excluded
        );
    }
    assert_eq!(report.opted_out_practices.len(), 1);
    let opted_out = report
        .practices
        .iter()
        .find(|p| p.ods == report.opted_out_practices[0])
        .expect("opted-out practice in report");
    assert_eq!((opted_out.cohort, opted_out.sent), (0, 0));
    assert!(
        report.sent > 3_000,
        "most of the region is texted: {}",
        report.sent
    );
    assert!(report.letters > 0, "patients with no mobile get letters");
    for reason in ["deceased", "sms_opt_out", "duplicate_patient"] {
        assert!(
            report.excluded.get(reason).copied().unwrap_or(0) > 0,
            "{reason} excluded"
        );
    }
    assert!(
        report.delivered > 0 && report.failed > 0,
        "receipts recorded"
    );
    assert_eq!(
        report.written_back,
        report.sent + report.letters,
        "every text and letter written back"
    );
    assert_eq!(report.duplicate_sends, 0);
    assert_eq!(report.patient_data_remaining, 0);
    assert!(report.purged_items > report.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_do_not_lose_or_duplicate_anyone() {
    let stack = LocalStack::start(config(6, 8_000, 21))
        .await
        .expect("stack");
    let down = stack.estate.practices()[1].ods.clone();
    let id = create_and_approve(&stack, &request("Urgent: ((first_name)), see www.nhs.uk")).await;

    // GIVEN one practice's GP system is down for good, a 429 burst and 5xx
    // errors at one gateway, and lost responses at the other
    stack.estate.set_down(&down, None);
    stack.gateways[0].inject_rate_limit_burst(200);
    stack.gateways[0].inject_server_errors(50);
    stack.gateways[1].lose_next_responses(5);

    // WHEN the deadline fires, the send workers die mid-chunk, and every
    // send job is delivered a second time
    fire_deadline_now(&stack, &id).await;
    wait_until(Duration::from_secs(60), || async {
        Ok(stack.texts_sent() > 500)
    })
    .await
    .expect("sending started");
    stack.crash_workers(QueueName::Send);
    let chunks = stack.hub.store.list_chunks(&id).await.expect("chunks");
    let duplicates: Vec<Job> = chunks
        .iter()
        .filter(|c| c.sms_recipients > 0)
        .map(|c| Job::Send {
            campaign: id.clone(),
            chunk: c.chunk.clone(),
        })
        .collect();
    stack
        .queue
        .send(&duplicates)
        .await
        .expect("duplicate deliveries");

    // THEN the campaign completes, the failed practice is retried and
    // reported, and nobody is lost or texted twice
    let report = wait_for_state(
        &stack,
        &id,
        CampaignState::Completed,
        Duration::from_secs(180),
    )
    .await;
    assert_invariants(&stack, &report).await;
    assert_purged(&stack, &id).await;
    let failed = report
        .practices
        .iter()
        .find(|p| p.ods == down)
        .expect("down practice");
    assert_eq!(failed.state, ParticipationState::ExtractionFailed);
    assert_eq!(
        failed.extraction_attempts,
        stack.hub.config.max_extract_attempts
    );
    assert!(failed
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("unavailable"));
    assert_eq!(report.failed_practices, vec![down.clone()]);
    assert!(stack.estate.extract_calls(&down) >= 3, "retried");
    let others: Vec<_> = report
        .practices
        .iter()
        .filter(|p| p.state == ParticipationState::Extracted)
        .collect();
    assert!(others.len() >= 4);
    assert!(others.iter().map(|p| p.sent).sum::<u64>() > 4_000);
    assert!(stack.gateways[0].rate_limited_count() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_mid_send_stops_sending_within_seconds() {
    let mut slow = config(4, 20_000, 31);
    for gateway in &mut slow.sms_gateways {
        gateway.rate_per_second = 300.0;
    }
    let stack = LocalStack::start(slow).await.expect("stack");
    let id = create_and_approve(&stack, &request("Please stay indoors: www.gov.uk/alerts")).await;
    fire_deadline_now(&stack, &id).await;
    wait_until(Duration::from_secs(60), || async {
        Ok(stack.texts_sent() > 300)
    })
    .await
    .expect("sending started");

    api::cancel(&stack.hub, &alice(), &id, "Alert withdrawn")
        .await
        .expect("cancel");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_cancel = stack.texts_sent();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stack.texts_sent(),
        after_cancel,
        "no texts after cancel settles"
    );
    assert!(after_cancel < 10_000, "the cancel cut the campaign short");
    wait_until(Duration::from_secs(30), || async {
        Ok(stack.hub.patients.count_all().await? == 0
            && stack.hub.campaign(&id).await?.purged_at.is_some())
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "patient data purged after cancel: {}",
            futures_diagnosis(&stack, &id)
        )
    });
    assert_eq!(stack.duplicate_sends(), 0);

    // AND the record is kept: every text sent before the cancel is counted,
    // the report adds up, and every one is written back to the GP record
    let report = api::report(&stack.hub, &id).await.expect("report");
    assert_eq!(report.state, CampaignState::Cancelled);
    assert!(
        report.adds_up,
        "cancelled report adds up: {:?}",
        report.totals
    );
    assert_eq!(
        report.totals.sent,
        stack.texts_sent() as u64,
        "every text counted"
    );
    assert!(report.totals.sent >= 300);
    assert!(
        report
            .totals
            .excluded
            .get(&ExclusionReason::Cancelled)
            .copied()
            .unwrap_or(0)
            > 0,
        "the rest are counted as cancelled"
    );
    assert_eq!(
        report.totals.written_back,
        report.totals.sent + report.totals.letters,
        "every text (and letter) written back"
    );
    assert_eq!(
        stack
            .estate
            .practices()
            .iter()
            .map(|p| stack.estate.writebacks(&p.ods) as u64)
            .sum::<u64>(),
        report.totals.written_back,
        "the GP systems hold one record per message written back"
    );
    let audit = stack.hub.store.list_audit(&id).await.expect("audit");
    let cancelled_at = audit.iter().position(|e| e.action == "campaign_cancelled");
    let purged_at = audit.iter().position(|e| e.action == "patient_data_purged");
    assert!(cancelled_at < purged_at, "purged after the record was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_message_per_mobile_and_age_band_targeting() {
    let stack = LocalStack::start(config(3, 4_000, 41))
        .await
        .expect("stack");
    let mut req = request("Flu clinic: www.nhs.uk/flu");
    req.one_message_per_mobile = true;
    req.target.min_age = Some(65);
    let id = create_and_approve(&stack, &req).await;
    fire_deadline_now(&stack, &id).await;
    let report = wait_for_state(
        &stack,
        &id,
        CampaignState::Completed,
        Duration::from_secs(120),
    )
    .await;
    assert_invariants(&stack, &report).await;
    assert!(report
        .totals
        .excluded
        .contains_key(&ExclusionReason::DuplicateMobile));
    let today = chrono::Utc::now().date_naive();
    let over_65 = stack
        .estate
        .all_patients()
        .filter(|p| {
            p.birth_date
                .expose()
                .is_some_and(|dob| hub_core::domain::age_on(dob, today) >= 65)
        })
        .count() as u64;
    let throttled: u64 = stack.gateways.iter().map(|g| g.rate_limited_count()).sum();
    assert_eq!(
        throttled, 0,
        "the hub paces itself under each provider's rate"
    );
    assert!(report.totals.cohort <= over_65);
    assert!(report.totals.cohort > over_65 / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_changes_nothing() {
    let stack = LocalStack::start(config(3, 300, 51)).await.expect("stack");
    let hub = &stack.hub;
    let mut bad = request("Hello ((nhs_number)) see https://evil.example.com");
    bad.name = " ".into();
    bad.optout_deadline = "tomorrow".into();
    bad.target.min_age = Some(70);
    bad.target.max_age = Some(20);
    bad.target.postcodes = vec!["SE13".into(), "not a postcode".into()];
    bad.target.practices = vec!["12345".into()];
    bad.justification = "because".into();
    let Err(ApiError::Validation(errors)) = api::create_campaign(hub, &alice(), &bad).await else {
        panic!("validation error expected");
    };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for field in [
        "name",
        "message",
        "target.max_age",
        "target.postcodes[1]",
        "target.practices[0]",
        "optout_deadline",
        "justification",
    ] {
        assert!(fields.contains(&field), "{field} named in {fields:?}");
    }
    let err = api::create_campaign(hub, &alice(), &bad).await.unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(
        hub.store.list_campaigns().await.unwrap().is_empty(),
        "nothing created"
    );

    let id = api::create_campaign(hub, &alice(), &request("Stay safe: www.nhs.uk"))
        .await
        .expect("valid create")
        .campaign
        .id;
    let audit_before = hub.store.list_audit(&id).await.unwrap().len();
    let err = api::approve(hub, &alice(), &id).await.unwrap_err();
    assert_eq!(err.status(), 403, "creator cannot approve");
    let err = api::record_opt_out(hub, "staff", &id, "G8500")
        .await
        .unwrap_err();
    assert!(matches!(&err, ApiError::Validation(e) if e[0].field == "ods"));
    let err = api::opt_out_by_link(hub, "not-a-token").await.unwrap_err();
    assert_eq!(err.status(), 403);
    let err = api::cancel(hub, &bob(), &id, "  ").await.unwrap_err();
    assert!(matches!(&err, ApiError::Validation(e) if e[0].field == "reason"));
    let campaign = hub.campaign(&id).await.unwrap();
    assert_eq!(campaign.state, CampaignState::PendingApproval);
    assert_eq!(campaign.version, 0, "refused requests wrote nothing");
    assert_eq!(hub.store.list_audit(&id).await.unwrap().len(), audit_before);
    assert!(hub.store.list_participations(&id).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_approvals_and_deadlines_leave_one_state() {
    let stack = LocalStack::start(config(4, 2_000, 61))
        .await
        .expect("stack");
    let hub = &stack.hub;
    let id = api::create_campaign(hub, &alice(), &request("Stay safe: www.nhs.uk"))
        .await
        .unwrap()
        .campaign
        .id;
    let carol = StaffId::new("arn:aws:iam::000000000000:user/carol");
    let bob = bob();
    let (a, b) = tokio::join!(api::approve(hub, &bob, &id), api::approve(hub, &carol, &id));
    assert!(a.is_ok() != b.is_ok(), "exactly one approval wins");
    let with_dsa = stack
        .estate
        .practices()
        .iter()
        .filter(|p| p.dsa_signed.is_some())
        .count();
    let participations = hub.store.list_participations(&id).await.unwrap();
    assert_eq!(
        participations.len(),
        with_dsa,
        "one participation per DSA practice"
    );

    wait_until(Duration::from_secs(30), || async {
        Ok(hub
            .store
            .list_participations(&id)
            .await?
            .iter()
            .all(|p| p.notice_sent_at.is_some()))
    })
    .await
    .unwrap();
    // Move the deadline to now behind the scheduler's back, then fire it
    // twice at once.
    let mut campaign = hub.campaign(&id).await.unwrap();
    campaign.optout_deadline = chrono::Utc::now();
    hub.store.update_campaign(&campaign).await.unwrap();
    let (x, y) = tokio::join!(fire_deadline(hub, &id), fire_deadline(hub, &id));
    let outcomes = [x.unwrap(), y.unwrap()];
    let frozen = outcomes
        .iter()
        .filter(|o| matches!(o, DeadlineOutcome::Frozen { .. }))
        .count();
    assert_eq!(frozen, 1, "{outcomes:?}");
    assert!(outcomes.contains(&DeadlineOutcome::AlreadyDone));
    let report = wait_for_state(
        &stack,
        &id,
        CampaignState::Completed,
        Duration::from_secs(120),
    )
    .await;
    assert_invariants(&stack, &report).await;
    let extractions: u32 = report.practices.iter().map(|p| p.extraction_attempts).sum();
    assert_eq!(
        extractions as usize, with_dsa,
        "one extraction per practice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daily_limit_moves_traffic_to_the_other_provider() {
    let stack = LocalStack::start(config(3, 5_000, 71))
        .await
        .expect("stack");
    stack.gateways[0].set_daily_limit(Some(500));
    let id = create_and_approve(&stack, &request("Stay safe: www.nhs.uk")).await;
    fire_deadline_now(&stack, &id).await;
    let report = wait_for_state(
        &stack,
        &id,
        CampaignState::Completed,
        Duration::from_secs(120),
    )
    .await;
    assert_invariants(&stack, &report).await;
    assert!(stack.gateways[0].sent_count() <= 500);
    assert!(stack.gateways[1].sent_count() > 2_000);
    let status = stack.hub.sms.status();
    assert!(
        !status[0].in_rotation,
        "the exhausted provider is out of rotation"
    );
}

fn futures_diagnosis(stack: &LocalStack, id: &hub_core::domain::CampaignId) -> String {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        runtime.block_on(async {
            let campaign = stack.hub.campaign(id).await.expect("campaign");
            format!(
                "state {}, purged_at {:?}, remaining {}, purge dead letters {:?}, purge depth {:?}",
                campaign.state,
                campaign.purged_at,
                stack.hub.patients.count_all().await.unwrap_or(0),
                stack
                    .queue
                    .dead_letters(QueueName::Purge)
                    .await
                    .map(|d| d.len()),
                stack.queue.depth(QueueName::Purge).await.ok(),
            )
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_retried_after_a_partial_freeze_keeps_every_practice() {
    let stack = LocalStack::start(config(4, 800, 81)).await.expect("stack");
    let hub = &stack.hub;
    let id = create_and_approve(&stack, &request("Stay safe: www.nhs.uk")).await;
    // GIVEN an earlier attempt froze one practice and died before the campaign moved on
    let mut first = hub.store.list_participations(&id).await.unwrap()[0].clone();
    first.state = ParticipationState::Participating;
    hub.store.update_participation(&first).await.unwrap();
    let mut campaign = hub.campaign(&id).await.unwrap();
    campaign.optout_deadline = chrono::Utc::now();
    hub.store.update_campaign(&campaign).await.unwrap();
    // WHEN the deadline fires again
    let outcome = fire_deadline(hub, &id).await.unwrap();
    // THEN that practice is still among the participants
    let all = hub.store.list_participations(&id).await.unwrap().len();
    assert_eq!(outcome, DeadlineOutcome::Frozen { practices: all });
    let report = wait_for_state(
        &stack,
        &id,
        CampaignState::Completed,
        Duration::from_secs(120),
    )
    .await;
    let extracted = report
        .practices
        .iter()
        .filter(|p| p.state == ParticipationState::Extracted)
        .count();
    assert_eq!(extracted, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_provider_is_never_given_a_simulated_patients_real_looking_number() {
    use hub_adapters::notify::NotifyTemplates;
    use hub_sim::http::{start_notify, NotifyServerConfig};
    use hub_sim::{GatewayConfig, GatewaySim};
    // GIVEN a Notify service outside the stack, as a real one would be
    let outside = GatewaySim::new(GatewayConfig {
        rate_per_second: 2_000.0,
        ..GatewayConfig::new("outside")
    });
    let (_, server) = start_notify(outside.clone(), NotifyServerConfig::default())
        .await
        .expect("notify");
    let mut config = config(3, 2_000, 91);
    config.external.notify = Some(hub_local::ExternalNotify {
        base_url: server.base_url(),
        api_key: server.api_key(),
        templates: NotifyTemplates {
            sms: uuid::Uuid::new_v4().to_string(),
            email: Some(uuid::Uuid::new_v4().to_string()),
            letter: Some(uuid::Uuid::new_v4().to_string()),
        },
        rate_per_second: 2_000.0,
    });
    let stack = LocalStack::start(config).await.expect("stack");
    // WHEN a campaign runs on the simulated estate
    let id = create_and_approve(&stack, &request("Stay safe: www.nhs.uk")).await;
    fire_deadline_now(&stack, &id).await;
    let report = wait_for_state(
        &stack,
        &id,
        CampaignState::Completed,
        Duration::from_secs(120),
    )
    .await;
    // THEN the outside service got the practice notices but no text to a
    // number outside Ofcom's drama range, and every patient is accounted for
    assert!(report.adds_up);
    assert!(
        !outside.emails().is_empty(),
        "notices went to the outside service"
    );
    let mut real_looking = 0;
    for patient in stack.estate.all_patients() {
        if let Some(mobile) = patient
            .mobile
            .expose()
            .as_deref()
            .and_then(|m| hub_core::domain::UkMobile::parse(m).ok())
        {
            if !mobile.is_drama_range() {
                real_looking += 1;
                assert_eq!(
                    outside.sent_to(&mobile),
                    0,
                    "a real-looking number was texted"
                );
            }
        }
    }
    assert!(real_looking > 1_000);
    let rejected = report
        .totals
        .excluded
        .get(&ExclusionReason::ProviderRejected)
        .copied()
        .unwrap_or(0);
    assert!(rejected > 1_000, "held back as rejected: {rejected}");
}
