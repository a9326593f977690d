//! Sending at real provider limits: send workers that share each key's
//! bucket (in the hub table) together use its rate without exceeding it, a
//! 429 storm holds only its key and the rate returns after it, and a
//! campaign that reaches its keys' daily limits pauses and resumes.

use chrono::{DateTime, TimeZone, Utc};
use hub_core::domain::pacing::RateUnit;
use hub_core::domain::{
    CampaignState, ChunkId, Contact, OdsCode, Personal, Recipient, RecipientStatus, UkMobile,
};
use hub_core::handlers::api::{self, CreateCampaignRequest, TargetRequest};
use hub_core::handlers::router::RouteError;
use hub_core::handlers::{send, Hub, HubConfig, HubParts, ProviderRouter};
use hub_core::ports::{Clock, GpConnection, Practice, QueueName, SmsProvider, SmsRequest};
use hub_local::embedded::{LocalQueue, LocalScheduler, SqliteStore};
use hub_sim::{GatewayConfig, GatewaySim, GpEstate, RegionSpec};
use secrecy::SecretString;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A clock the test moves.
struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    fn at(now: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self(Mutex::new(now)))
    }
    fn set(&self, now: DateTime<Utc>) {
        *self.0.lock().unwrap() = now;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// A drama-range mobile; never 07700 900999, which the simulator rejects.
fn mobile(n: u32) -> UkMobile {
    UkMobile::parse(&format!("07700900{:03}", n % 999)).unwrap()
}

fn text(n: u32, fragments: u32) -> SmsRequest {
    SmsRequest {
        to: mobile(n),
        body: Personal::new("Heatwave: stay cool, drink water.".into()),
        reference: format!("pacing.{n}"),
        fragments,
    }
}

fn parts_gateway(name: &str, per_second: f64, seed: u64) -> Arc<GatewaySim> {
    Arc::new(GatewaySim::new(GatewayConfig {
        rate_per_second: per_second,
        unit: RateUnit::Parts,
        latency: Duration::from_millis(20),
        latency_max: Duration::from_millis(150),
        failure_rate: 0.0,
        seed,
        ..GatewayConfig::new(name)
    }))
}

/// `workers` routers, as separate send invocations: each its own process
/// state, all pacing through one shared store.
fn workers(
    store: &Arc<SqliteStore>,
    gateways: &[(Arc<GatewaySim>, f64)],
    workers: usize,
) -> Vec<Arc<ProviderRouter>> {
    (0..workers)
        .map(|_| {
            let providers = gateways
                .iter()
                .map(|(g, rate)| (g.clone() as Arc<dyn SmsProvider>, *rate))
                .collect();
            Arc::new(ProviderRouter::new(providers).with_shared_pacing(store.clone()))
        })
        .collect()
}

/// Sends texts `0..total` from every router at once, `in_flight` each, as
/// the send handler does (a text no provider took is tried again).
/// Returns when each text was accepted, and by which provider.
async fn send_all(
    routers: &[Arc<ProviderRouter>],
    total: u32,
    in_flight: usize,
    fragments: u32,
) -> Vec<(String, Instant)> {
    let next = Arc::new(AtomicU32::new(0));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for router in routers {
        for _ in 0..in_flight {
            let (router, next, accepted) = (router.clone(), next.clone(), accepted.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return;
                    }
                    loop {
                        match router.send(&text(n, fragments)).await {
                            Ok((provider, _)) => {
                                accepted.lock().unwrap().push((provider, Instant::now()));
                                break;
                            }
                            Err(RouteError::NotSent(_)) => continue,
                            Err(other) => panic!("text {n}: {other}"),
                        }
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(accepted).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_workers_together_use_each_keys_rate_without_exceeding_it() {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let fast = parts_gateway("eum-fast", 24.0, 1);
    let slow = parts_gateway("eum-slow", 16.0, 2);
    let routers = workers(&store, &[(fast.clone(), 24.0), (slow.clone(), 16.0)], 8);
    // Two-part texts: 20 texts a second between the two keys.
    let total = 300;
    let started = Instant::now();
    let accepted = send_all(&routers, total, 8, 2).await;
    let took = started.elapsed().as_secs_f64();

    assert_eq!(accepted.len(), total as usize);
    for gateway in [&fast, &slow] {
        assert_eq!(
            gateway.rate_limited_count(),
            0,
            "{}: the workers together kept within its rate and burst",
            gateway.name()
        );
        assert_eq!(gateway.duplicate_sends(), 0);
    }
    assert_eq!(fast.sent_count() + slow.sent_count(), total as usize);
    // The bursts (half of each key's) go at once; the rest at 20 texts/s.
    let ideal = (f64::from(total) - (12.0 + 8.0) / 2.0) / 20.0;
    assert!(
        ideal / took >= 0.95,
        "used {:.3} of the rate from the first text to the last ({took:.1}s, ideal {ideal:.1}s)",
        ideal / took
    );
    // Each key did its share: traffic goes to whichever has a slot.
    let fast_share = fast.sent_count() as f64 / f64::from(total);
    assert!(
        (0.5..0.7).contains(&fast_share),
        "fast key's share {fast_share:.2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_60_second_429_storm_holds_its_key_only_and_the_rate_returns_within_5_seconds() {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let stormy = parts_gateway("notify-stormy", 20.0, 3);
    let calm = parts_gateway("notify-calm", 20.0, 4);
    let routers = workers(&store, &[(stormy.clone(), 20.0), (calm.clone(), 20.0)], 4);
    let storm = Duration::from_secs(60);
    let started = Instant::now();
    stormy.rate_limit_for(storm);
    // 60 s at 20/s on the calm key, then about 20 s at 40/s on both.
    let total = 2_000;
    let accepted = send_all(&routers, total, 16, 1).await;

    assert_eq!(accepted.len(), total as usize, "nothing lost");
    assert_eq!(
        stormy.duplicate_sends() + calm.duplicate_sends(),
        0,
        "nothing doubled"
    );
    assert_eq!(stormy.sent_count() + calm.sent_count(), total as usize);
    assert!(stormy.rate_limited_count() > 0, "the storm happened");
    assert_eq!(calm.rate_limited_count(), 0);

    let per_second = |provider: &str, from: Duration, to: Duration| {
        let n = accepted
            .iter()
            .filter(|(p, at)| p == provider && *at >= started + from && *at < started + to)
            .count();
        n as f64 / (to - from).as_secs_f64()
    };
    // During the storm the other key keeps its whole rate.
    let calm_rate = per_second(
        "notify-calm",
        Duration::from_secs(5),
        Duration::from_secs(55),
    );
    assert!(
        calm_rate >= 19.0,
        "the calm key kept sending: {calm_rate:.1}/s"
    );
    assert_eq!(
        per_second("notify-stormy", Duration::from_secs(1), storm),
        0.0
    );
    // Within 5 seconds of the storm's end the stormy key is back at its rate.
    let back = per_second(
        "notify-stormy",
        storm + Duration::from_secs(5),
        storm + Duration::from_secs(10),
    );
    assert!(
        back >= 19.0,
        "the stormy key's rate 5–10 s after the storm: {back:.1}/s"
    );
    let first_after = accepted
        .iter()
        .filter(|(p, _)| p == "notify-stormy")
        .map(|(_, at)| *at - started)
        .min()
        .unwrap();
    assert!(
        first_after < storm + Duration::from_secs(5),
        "first text after the storm at {first_after:?}"
    );
}

/// A hub on the embedded store, queue and scheduler with `sms` providers
/// and a clock the test moves.
fn hub_with(
    clock: Arc<ManualClock>,
    sms: Vec<(Arc<dyn SmsProvider>, f64)>,
) -> (Hub, Arc<LocalQueue>) {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let queue = Arc::new(LocalQueue::in_memory().unwrap());
    let postal = Arc::new(GatewaySim::new(GatewayConfig {
        rate_per_second: 0.0,
        ..GatewayConfig::new("post")
    }));
    let estate = Arc::new(GpEstate::generate(RegionSpec {
        practices: 1,
        patients: 10,
        seed: 1,
    }));
    let hub = HubParts {
        store: store.clone(),
        patients: store,
        queue: queue.clone(),
        scheduler: Arc::new(LocalScheduler::in_memory().unwrap()),
        sms,
        send_workers: 1,
        email: postal.clone(),
        letters: postal,
        gp: estate,
        clock,
        optout_key: SecretString::from("test-optout-key".to_string()),
        config: HubConfig::default(),
    }
    .build()
    .unwrap();
    (hub, queue)
}

#[tokio::test]
async fn a_campaign_at_its_keys_daily_limit_pauses_and_resumes_the_next_day() {
    let evening = Utc.with_ymd_and_hms(2027, 1, 15, 23, 0, 0).unwrap();
    let midnight = Utc.with_ymd_and_hms(2027, 1, 16, 0, 0, 0).unwrap();
    let clock = ManualClock::at(evening);
    let gateway = Arc::new(GatewaySim::new(GatewayConfig {
        rate_per_second: 0.0,
        daily_limit: Some(100),
        ..GatewayConfig::new("notify-1")
    }));
    gateway.set_clock(clock.clone());
    let (hub, queue) = hub_with(clock.clone(), vec![(gateway.clone(), 50.0)]);

    let mut campaign = hub_testkit::fixtures::campaign_at(evening);
    campaign.state = CampaignState::Sending;
    hub.store.create_campaign(&campaign).await.unwrap();
    let ods = OdsCode::parse("G85001").unwrap();
    let chunk = ChunkId::new(&ods, 0);
    let mut record = hub_testkit::fixtures::chunk_record(&campaign.id, &ods, 0);
    record.sms_recipients = 180;
    record.letter_recipients = 0;
    hub.store.put_chunks(&[record]).await.unwrap();
    let recipients: Vec<Recipient> = (0..180)
        .map(|i| Recipient {
            contact: Contact::Sms { mobile: mobile(i) },
            ..hub_testkit::fixtures::recipient(&chunk, i)
        })
        .collect();
    hub.patients
        .put_recipients(&campaign.id, &recipients, hub_testkit::fixtures::later())
        .await
        .unwrap();

    // The key's 100 texts for the day go (of 180); then the campaign pauses and the
    // chunk is queued again for later, not failed towards its DLQ.
    send::send_chunk(&hub, &campaign.id, &chunk).await.unwrap();
    assert_eq!(gateway.sent_count(), 100);
    let paused = hub.campaign(&campaign.id).await.unwrap();
    assert_eq!(paused.paused_until, Some(midnight));
    assert_eq!(paused.state, CampaignState::Sending);
    let view = api::get(&hub, &campaign.id).await.unwrap();
    assert_eq!(
        view.paused_until,
        Some(midnight),
        "the view shows the pause"
    );
    let statuses = hub.patients.load_chunk(&campaign.id, &chunk).await.unwrap();
    assert_eq!(
        statuses
            .iter()
            .filter(|r| r.status == RecipientStatus::Pending)
            .count(),
        80,
        "the texts not sent are pending again, not left claimed"
    );
    assert!(queue
        .receive(QueueName::Send, 10, Utc::now())
        .await
        .unwrap()
        .is_empty());
    let later = queue
        .receive(
            QueueName::Send,
            10,
            Utc::now() + chrono::Duration::minutes(16),
        )
        .await
        .unwrap();
    assert_eq!(
        later.len(),
        1,
        "the chunk comes back after at most 15 minutes"
    );
    assert_eq!(later[0].receive_count, 1, "as a new message");
    assert!(
        !hub.store
            .get_chunk(&campaign.id, &chunk)
            .await
            .unwrap()
            .unwrap()
            .send_done
    );

    // Still the same day: it pauses again without sending.
    send::send_chunk(&hub, &campaign.id, &chunk).await.unwrap();
    assert_eq!(gateway.sent_count(), 100);

    // The provider's day turns: the rest go, once each.
    clock.set(midnight + chrono::Duration::seconds(5));
    send::send_chunk(&hub, &campaign.id, &chunk).await.unwrap();
    assert_eq!(gateway.sent_count(), 180);
    assert_eq!(gateway.duplicate_sends(), 0);
    let resumed = hub.campaign(&campaign.id).await.unwrap();
    assert_eq!(resumed.paused_until, None);
    assert!(
        hub.store
            .get_chunk(&campaign.id, &chunk)
            .await
            .unwrap()
            .unwrap()
            .send_done
    );
    let actions: Vec<String> = hub
        .store
        .list_audit(&campaign.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .filter(|action| action.starts_with("sending_"))
        .collect();
    assert_eq!(
        actions,
        vec!["sending_paused".to_string(), "sending_resumed".to_string()]
    );
}

#[tokio::test]
async fn with_one_notify_key_the_preview_says_two_million_need_eight_keys_or_eight_days() {
    let clock = ManualClock::at(Utc::now());
    // A Notify key as configured on Lambda: 3,000 requests a minute, the
    // default 250,000 texts a day.
    let notify = Arc::new(GatewaySim::new(GatewayConfig {
        daily_limit: Some(250_000),
        ..GatewayConfig::new("notify-1")
    }));
    let (hub, _) = hub_with(clock, vec![(notify, 50.0)]);
    for n in 0..200u32 {
        hub.store
            .put_practice(&Practice {
                ods: OdsCode::parse(&format!("G{:05}", 85_000 + n)).unwrap(),
                name: format!("Practice {n}"),
                notice_email: "practice@nhs.invalid".into(),
                dsa_signed: chrono::NaiveDate::from_ymd_opt(2026, 1, 1),
                connection: GpConnection::Simulated,
                list_size: 10_000,
            })
            .await
            .unwrap();
    }
    let request = CreateCampaignRequest {
        name: "Heatwave alert".into(),
        message: "Heatwave: stay cool and drink water. See nhs.uk/heat".into(),
        target: TargetRequest::default(),
        optout_deadline: (Utc::now() + chrono::Duration::hours(2)).to_rfc3339(),
        justification: "Level 4 heat-health alert for the region".into(),
        postal_fallback: false,
        one_message_per_mobile: false,
    };
    let preview = api::dry_run(&hub, &request).await.unwrap();
    assert_eq!(preview.estimated_cohort, 2_000_000);
    assert_eq!(preview.plan.keys_for_target, Some(8));
    assert_eq!(preview.plan.days_needed, 8);
    assert_eq!(preview.plan.texts_per_hour, 180_000);
    assert!(!preview.plan.meets_target);
    assert!(
        preview
            .plan
            .warnings
            .iter()
            .any(|w| w.contains("8 provider keys") && w.contains("8 days")),
        "{:?}",
        preview.plan.warnings
    );
}
