//! Whole campaigns over the AWS wire protocol: the hub's ports wired to the
//! AWS adapters on an AWS API emulator (moto), with tables, queues, DLQs and
//! schedule groups created from `template.yaml`, the providers and GP
//! estate simulated in process, and the SQS event sources and scheduler
//! played by `tests/src/aws/harness.rs`.
//!
//! Run: `cargo test -p hub-tests --features aws --test aws_campaign`

#[path = "../src/aws/mod.rs"]
#[allow(dead_code)]
mod aws;

use aws::harness::{dlq_id, max_receive_count, parse_at, queue_id, EventSources, HarnessOptions};
use aws::Stack;
use hub_core::domain::pacing::RateUnit;
use hub_core::domain::{CampaignId, CampaignState, ParticipationState, StaffId};
use hub_core::handlers::api;
use hub_core::handlers::deadline::{fire_deadline, DeadlineOutcome};
use hub_core::handlers::report::CampaignReport;
use hub_core::handlers::{Hub, HubConfig, HubParts};
use hub_core::ports::{Job, QueueName, ScheduledAction, SmsProvider, SystemClock};
use hub_local::demo::wait_until;
use hub_sim::{GatewayConfig, GatewaySim, GpEstate, RegionSpec};
use hub_tests::{alice, bob, init_logs, request};
use receipts_sink::ReceiptsHandler;
use secrecy::SecretString;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The receipt sink: a simulated provider's callback lands in the receipts
/// handler, as the receipts function would record it. (`ReceiptSink` is an
/// `async_trait`; this crate does not depend on `async-trait`, so the impl
/// is written in the form the macro expands to.)
mod receipts_sink {
    use hub_core::handlers::Hub;
    use hub_core::ports::{DeliveryReceipt, ReceiptSink};
    use std::sync::Mutex;

    pub struct ReceiptsHandler {
        pub hub: Mutex<Option<Hub>>,
    }

    impl ReceiptSink for ReceiptsHandler {
        fn deliver<'a, 'b>(
            &'a self,
            receipt: DeliveryReceipt,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'b>>
        where
            'a: 'b,
        {
            Box::pin(async move {
                let hub = self.hub.lock().ok().and_then(|h| h.clone());
                if let Some(hub) = hub {
                    if let Err(error) =
                        hub_core::handlers::receipts::record_receipt(&hub, &receipt).await
                    {
                        tracing::warn!(%error, "receipt not recorded");
                    }
                }
            })
        }
    }
}

fn carol() -> StaffId {
    StaffId::new("arn:aws:iam::000000000000:user/carol")
}

/// The hub on the emulator, with its simulators.
struct AwsHub {
    stack: Stack,
    hub: Hub,
    estate: Arc<GpEstate>,
    gateways: Vec<Arc<GatewaySim>>,
    postal: Arc<GatewaySim>,
}

impl AwsHub {
    async fn start(practices: usize, patients: u64, seed: u64) -> Self {
        init_logs();
        let stack = Stack::create()
            .await
            .expect("emulator stack from template.yaml");
        let estate = Arc::new(GpEstate::generate(RegionSpec {
            practices,
            patients,
            seed,
        }));
        let gateway = |i: u64| GatewayConfig {
            name: format!("sim-sms-{i}"),
            rate_per_second: 4_000.0,
            unit: RateUnit::Requests,
            latency: Duration::from_millis(1),
            latency_max: Duration::ZERO,
            failure_rate: 0.0,
            daily_limit: None,
            delivery_failure_rate: 0.05,
            receipt_delay: Duration::from_millis(20),
            seed: seed + i,
        };
        let gateways: Vec<Arc<GatewaySim>> = (1..=2)
            .map(|i| Arc::new(GatewaySim::new(gateway(i))))
            .collect();
        let postal = Arc::new(GatewaySim::new(GatewayConfig {
            rate_per_second: 0.0,
            unit: RateUnit::Parts,
            ..GatewayConfig::new("sim-post")
        }));
        let sink = Arc::new(ReceiptsHandler {
            hub: std::sync::Mutex::new(None),
        });
        for gateway in &gateways {
            gateway.set_receipt_sink(sink.clone());
        }
        let config = HubConfig {
            chunk_size: 100,
            send_batch: 20,
            receipt_window: chrono::Duration::seconds(1),
            stale_after: chrono::Duration::seconds(10),
            send_deadline: Duration::from_secs(2),
            ..HubConfig::default()
        };
        let hub = HubParts {
            store: Arc::new(stack.hub_store().expect("hub store")),
            patients: Arc::new(stack.patient_store().expect("patient store")),
            queue: Arc::new(stack.job_queue().expect("job queue")),
            scheduler: Arc::new(stack.scheduler().expect("scheduler")),
            sms: gateways
                .iter()
                .map(|g| {
                    (
                        g.clone() as Arc<dyn SmsProvider>,
                        g.config().rate_per_second,
                    )
                })
                .collect(),
            send_workers: 1,
            email: postal.clone(),
            letters: postal.clone(),
            gp: estate.clone(),
            clock: Arc::new(SystemClock),
            optout_key: SecretString::from(uuid::Uuid::new_v4().to_string()),
            config,
        }
        .build()
        .expect("valid config");
        if let Ok(mut slot) = sink.hub.lock() {
            *slot = Some(hub.clone());
        }
        for practice in estate.practices() {
            hub.store.put_practice(&practice).await.expect("practice");
        }
        Self {
            stack,
            hub,
            estate,
            gateways,
            postal,
        }
    }

    async fn event_sources(&self) -> EventSources {
        EventSources::start(&self.stack, &self.hub, HarnessOptions::default())
            .await
            .expect("event sources")
    }

    /// Texts accepted more than once for one reference, within a gateway or
    /// across gateways, plus repeated letters.
    fn duplicate_sends(&self) -> usize {
        let within: usize = self.gateways.iter().map(|g| g.duplicate_sends()).sum();
        let mut across = 0;
        for (i, gateway) in self.gateways.iter().enumerate() {
            for other in &self.gateways[i + 1..] {
                across += gateway.references_shared_with(other);
            }
        }
        let letters = self.postal.duplicate_letters();
        within + across + letters
    }

    fn texts_sent(&self) -> usize {
        self.gateways.iter().map(|g| g.sent_count()).sum()
    }

    async fn wait_for_notices(&self, id: &CampaignId) {
        let hub = &self.hub;
        wait_until(Duration::from_secs(60), || async {
            let parts = hub.store.list_participations(id).await?;
            Ok(!parts.is_empty() && parts.iter().all(|p| p.notice_sent_at.is_some()))
        })
        .await
        .expect("notices sent");
    }

    async fn wait_for_state(
        &self,
        id: &CampaignId,
        state: CampaignState,
        limit: Duration,
    ) -> CampaignReport {
        let hub = &self.hub;
        if wait_until(limit, || async {
            Ok(hub.campaign(id).await?.state == state)
        })
        .await
        .is_err()
        {
            let report = api::report(hub, id).await.expect("report");
            panic!(
                "campaign did not reach {state} in {limit:?}: {}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        }
        api::report(hub, id).await.expect("report")
    }

    async fn receive_all(&self, logical_id: &str) -> Vec<aws_sdk_sqs::types::Message> {
        let url = self.stack.queue_url(logical_id).expect("queue url");
        let mut all = Vec::new();
        loop {
            let out = self
                .stack
                .clients
                .sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .visibility_timeout(60)
                .send()
                .await
                .expect("receive");
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                return all;
            }
            all.extend(messages);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_campaign_runs_over_the_aws_wire_protocol() {
    let aws = AwsHub::start(4, 1_500, 21).await;
    let hub = &aws.hub;
    let _sources = aws.event_sources().await;

    let created = api::create_campaign(
        hub,
        &alice(),
        &request("Urgent: ((first_name)), see www.nhs.uk"),
    )
    .await
    .expect("create");
    let id = created.campaign.id;
    api::approve(hub, &bob(), &id).await.expect("approve");
    aws.wait_for_notices(&id).await;
    assert_eq!(aws.postal.emails().len(), 4, "one notice per practice");

    let practices = aws.estate.practices();
    let opted_out = practices[0].ods.clone();
    api::record_opt_out(hub, "practice-link", &id, opted_out.as_str())
        .await
        .expect("opt out");

    // Staff bring the deadline forward; the schedule is on EventBridge.
    hub_local::demo::bring_deadline_forward_now(hub, &alice(), &bob(), &id)
        .await
        .expect("deadline moved");
    let targets = aws.stack.schedule_targets().expect("targets");
    let deadline = ScheduledAction::Deadline {
        campaign: id.clone(),
    };
    let schedule = aws
        .stack
        .clients
        .scheduler
        .get_schedule()
        .group_name(&targets.group)
        .name(deadline.name())
        .send()
        .await
        .expect("the deadline schedule exists");
    assert!(
        schedule.schedule_expression().and_then(parse_at).is_some(),
        "an at() schedule: {:?}",
        schedule.schedule_expression()
    );
    let input: ScheduledAction =
        serde_json::from_str(schedule.target().and_then(|t| t.input()).expect("input"))
            .expect("input is the action");
    assert_eq!(input, deadline);

    // EventBridge would invoke the deadline function; the emulator does not.
    let outcome = fire_deadline(hub, &id).await.expect("deadline fires");
    assert_eq!(outcome, DeadlineOutcome::Frozen { practices: 3 });

    let report = aws
        .wait_for_state(&id, CampaignState::Completed, Duration::from_secs(240))
        .await;

    assert!(report.adds_up, "adds up: {:?}", report.totals);
    let excluded: u64 = report.totals.excluded_total();
    assert_eq!(
        report.totals.cohort,
        report.totals.sent + report.totals.letters + excluded,
        "cohort = sent + letters + excluded"
    );
    for practice in &report.practices {
        assert_eq!(
            practice.cohort,
            practice.sent + practice.letters + practice.excluded,
            "practice {} adds up",
            practice.ods
        );
    }
    assert!(
        report.totals.sent > 500,
        "most are texted: {:?}",
        report.totals
    );
    assert_eq!(aws.duplicate_sends(), 0, "nobody got the campaign twice");
    assert_eq!(aws.texts_sent() as u64, report.totals.sent);
    for (i, gateway) in aws.gateways.iter().enumerate() {
        for other in &aws.gateways[i + 1..] {
            assert_eq!(
                gateway.references_shared_with(other),
                0,
                "references unique across gateways"
            );
        }
    }

    assert_eq!(report.opted_out_practices, vec![opted_out.clone()]);
    let out = report
        .practices
        .iter()
        .find(|p| p.ods == opted_out)
        .expect("opted-out practice in the report");
    assert_eq!(
        (out.state, out.cohort, out.sent, out.letters),
        (ParticipationState::OptedOut, 0, 0, 0)
    );
    let mobile_of = |patient: &hub_core::domain::GpPatient| {
        patient
            .mobile
            .expose()
            .as_deref()
            .and_then(|m| hub_core::domain::UkMobile::parse(m).ok())
    };
    let participating: HashSet<_> = practices[1..]
        .iter()
        .flat_map(|p| aws.estate.patients(&p.ods))
        .filter_map(|patient| mobile_of(&patient))
        .collect();
    let mut wrongly_texted = 0;
    for patient in aws.estate.patients(&opted_out) {
        if let Some(mobile) = mobile_of(&patient) {
            if !participating.contains(&mobile) {
                wrongly_texted += aws
                    .gateways
                    .iter()
                    .map(|g| g.sent_to(&mobile))
                    .sum::<usize>();
            }
        }
    }
    assert_eq!(
        wrongly_texted, 0,
        "the opted-out practice's patients are not texted"
    );

    let campaign = hub.campaign(&id).await.expect("campaign");
    assert!(campaign.purged_at.is_some(), "purge recorded");
    assert_eq!(
        hub.patients.count_all().await.expect("count"),
        0,
        "no patient data left"
    );
    let audit = api::audit(hub, &id).await.expect("audit");
    assert!(
        audit.iter().any(|e| e.action == "patient_data_purged"),
        "the purge is audited"
    );
    for queue in QueueName::ALL {
        assert!(
            aws.receive_all(dlq_id(queue)).await.is_empty(),
            "nothing dead-lettered on {queue:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_message_is_retried_then_dead_lettered_while_the_rest_go_through_once() {
    let aws = AwsHub::start(4, 400, 5).await;
    let hub = &aws.hub;
    let max = max_receive_count(&aws.stack, QueueName::Notices).expect("maxReceiveCount");

    let created = api::create_campaign(
        hub,
        &alice(),
        &request("Please stay indoors: www.gov.uk/alerts"),
    )
    .await
    .expect("create");
    let id = created.campaign.id;
    // Approval queues one notice per practice; a message no function can
    // handle goes on the same queue.
    api::approve(hub, &bob(), &id).await.expect("approve");
    let url = aws
        .stack
        .queue_url(queue_id(QueueName::Notices))
        .expect("url");
    let bad_body = r#"{"job":"notice","campaign":"not a campaign id"}"#;
    let bad = aws
        .stack
        .clients
        .sqs
        .send_message()
        .queue_url(&url)
        .message_body(bad_body)
        .send()
        .await
        .expect("bad message sent")
        .message_id
        .expect("message id");

    let sources = aws.event_sources().await;
    aws.wait_for_notices(&id).await;
    let dlq = aws
        .stack
        .queue_url(dlq_id(QueueName::Notices))
        .expect("dlq");
    let mut dead = Vec::new();
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while dead.is_empty() {
        assert!(
            std::time::Instant::now() < give_up,
            "the bad message reaches the DLQ"
        );
        let out = aws
            .stack
            .clients
            .sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("receive from the DLQ");
        dead.extend(out.messages.unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let any redelivery still due show itself before looking.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deliveries = sources.deliveries();
    drop(sources);

    assert_eq!(dead.len(), 1, "only the bad message is dead-lettered");
    assert_eq!(dead[0].body(), Some(bad_body));
    assert_eq!(dead[0].message_id(), Some(bad.as_str()));

    let notices: Vec<_> = deliveries
        .iter()
        .filter(|d| d.queue == QueueName::Notices)
        .collect();
    let failed: Vec<_> = notices.iter().filter(|d| d.failed).collect();
    assert!(
        failed.iter().all(|d| d.message_id == bad),
        "only the bad message is reported failed"
    );
    let mut counts: Vec<u32> = failed.iter().map(|d| d.receive_count).collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=max as u32).collect::<Vec<_>>(),
        "received maxReceiveCount ({max}) times, once per visibility timeout"
    );
    let good: Vec<_> = notices.iter().filter(|d| d.message_id != bad).collect();
    assert_eq!(good.len(), 4, "each notice job handled once: {good:?}");
    assert!(good.iter().all(|d| !d.failed && d.receive_count == 1));
    let good_ids: HashSet<_> = good.iter().map(|d| d.message_id.clone()).collect();
    assert_eq!(good_ids.len(), 4);

    // The observable effect: each practice emailed exactly once.
    let emails = aws.postal.emails();
    let mut to: Vec<String> = emails.iter().map(|(to, _, _)| to.clone()).collect();
    to.sort();
    let mut expected: Vec<String> = aws
        .estate
        .practices()
        .iter()
        .map(|p| p.notice_email.clone())
        .collect();
    expected.sort();
    assert_eq!(to, expected, "one notice email per practice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_approvals_and_deadlines_leave_one_state_on_dynamodb() {
    let aws = AwsHub::start(4, 400, 9).await;
    let hub = &aws.hub;
    let created = api::create_campaign(hub, &alice(), &request("Flu clinic: www.nhs.uk/flu"))
        .await
        .expect("create");
    let id = created.campaign.id;

    let (bob_id, carol_id) = (bob(), carol());
    let (first, second) = tokio::join!(
        api::approve(hub, &bob_id, &id),
        api::approve(hub, &carol_id, &id)
    );
    assert_eq!(
        [first.is_ok(), second.is_ok()]
            .iter()
            .filter(|ok| **ok)
            .count(),
        1,
        "exactly one approval wins: {:?} / {:?}",
        first.as_ref().err(),
        second.as_ref().err()
    );
    let campaign = hub.campaign(&id).await.expect("campaign");
    assert_eq!(campaign.state, CampaignState::OptOutWindow);
    assert_eq!(
        hub.store
            .list_participations(&id)
            .await
            .expect("participations")
            .len(),
        4,
        "one participation per practice"
    );

    hub_local::demo::bring_deadline_forward_now(hub, &alice(), &bob(), &id)
        .await
        .expect("deadline moved");
    let (first, second) = tokio::join!(fire_deadline(hub, &id), fire_deadline(hub, &id));
    let outcomes = [
        first.expect("first deadline"),
        second.expect("second deadline"),
    ];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, DeadlineOutcome::Frozen { .. }))
            .count(),
        1,
        "exactly one freeze: {outcomes:?}"
    );
    assert!(outcomes.contains(&DeadlineOutcome::Frozen { practices: 4 }));
    let campaign = hub.campaign(&id).await.expect("campaign");
    assert_eq!(campaign.state, CampaignState::Extracting);

    // Exactly one extraction job per practice went to SQS.
    let messages = aws.receive_all(queue_id(QueueName::Extract)).await;
    let mut per_practice: HashMap<String, usize> = HashMap::new();
    for message in &messages {
        let job: Job = serde_json::from_str(message.body().unwrap_or_default()).expect("a job");
        match job {
            Job::Extract { campaign, ods } => {
                assert_eq!(campaign, id);
                *per_practice.entry(ods.to_string()).or_default() += 1;
            }
            other => panic!("not an extraction: {other:?}"),
        }
    }
    let expected: HashMap<String, usize> = aws
        .estate
        .practices()
        .iter()
        .map(|p| (p.ods.to_string(), 1))
        .collect();
    assert_eq!(per_practice, expected, "one extraction per practice");
}
