//! AWS End User Messaging SMS over its real wire protocol: the SDK client
//! (`aws-sdk-pinpointsmsvoicev2`, SigV4, awsJson1_0) through the hub's
//! adapter to the simulated service on loopback, which counts message
//! parts itself and allows 10 a second per sender ID.

use hub_adapters::eum::{sdk, EumConfig, EumSmsClient};
use hub_core::domain::pacing::RateUnit;
use hub_core::domain::{measure, Personal, UkMobile};
use hub_core::handlers::router::RouteError;
use hub_core::handlers::ProviderRouter;
use hub_core::ports::{ProviderError, SmsProvider, SmsRequest};
use hub_sim::http::{eum_message_parts, eum_sender, start_eum, EumServer, EumServerConfig};
use hub_sim::{GatewayConfig, GatewaySim};
use secrecy::ExposeSecret;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const SENDER: &str = "arn:aws:sms-voice:eu-west-2:123456789012:sender-id/NHSALERT/GB";

async fn service() -> EumServer {
    start_eum(
        EumServerConfig::default(),
        [(SENDER.to_string(), eum_sender("eum"))],
    )
    .await
    .unwrap()
}

/// The real SDK client pointed at the simulator, signing with `secret`.
fn client(server: &EumServer, secret: &str) -> EumSmsClient {
    let config = server.config();
    let sdk_config = sdk::Config::builder()
        .behavior_version(sdk::config::BehaviorVersion::latest())
        .endpoint_url(server.endpoint_url())
        .region(sdk::config::Region::new(config.region.clone()))
        .credentials_provider(sdk::config::Credentials::new(
            config.access_key_id.clone(),
            secret.to_string(),
            None,
            None,
            "test",
        ))
        .build();
    EumSmsClient::new(sdk::Client::from_conf(sdk_config), EumConfig::new(SENDER))
}

fn signed_client(server: &EumServer) -> EumSmsClient {
    client(server, server.config().secret_access_key.expose_secret())
}

fn text(n: u32, body: &str) -> SmsRequest {
    SmsRequest {
        to: UkMobile::parse(&format!("07700900{:03}", n % 999)).unwrap(),
        body: Personal::new(body.to_string()),
        reference: format!("eum.{n}"),
        fragments: measure(body).fragments,
    }
}

#[tokio::test]
async fn texts_are_sent_signed_and_the_service_counts_their_parts() {
    let server = service().await;
    let eum = signed_client(&server);
    let bodies = [
        "Heatwave: stay cool, drink water.".to_string(),
        // 200 GSM-7 characters: two parts of 153.
        "Stay indoors. ".repeat(15)[..200].to_string(),
        // One character outside GSM-7 makes it UCS-2: 150 units, three of 67.
        format!("{}ć", &"Ward closed. ".repeat(12)[..149]),
    ];
    let mut expected_parts = 0;
    for (n, body) in bodies.iter().enumerate() {
        let request = text(n as u32, body);
        // The hub's count and the service's agree.
        assert_eq!(request.fragments, eum_message_parts(body), "text {n}");
        expected_parts += u64::from(request.fragments);
        let accepted = eum.send_sms(&request).await.unwrap();
        assert_eq!(accepted.provider_id.len(), 36, "a message id");
    }
    assert_eq!(expected_parts, 1 + 2 + 3);
    assert_eq!(server.parts_sent(), expected_parts);
    let sender = server.sender(SENDER).unwrap();
    assert_eq!(sender.sent_count(), 3);
    assert_eq!(sender.fragments_sent(), expected_parts);
    assert_eq!(
        sender.sends_for("eum.1"),
        1,
        "the reference rode in Context"
    );
    assert_eq!(server.auth_failures(), 0);
}

#[tokio::test]
async fn a_bad_signature_is_refused_and_nothing_is_sent() {
    let server = service().await;
    let eum = client(&server, "not-the-secret");
    let outcome = eum.send_sms(&text(1, "Heatwave.")).await;
    assert!(
        matches!(outcome, Err(ProviderError::Unauthorised(ref m)) if m.contains("InvalidSignatureException")),
        "{outcome:?}"
    );
    assert_eq!(server.auth_failures(), 1);
    assert_eq!(server.sender(SENDER).unwrap().sent_count(), 0);
}

#[tokio::test]
async fn the_service_names_a_bad_number_or_sender_without_quoting_it() {
    let server = service().await;
    let eum = signed_client(&server);
    let mut bad_number = text(1, "Heatwave.");
    bad_number.to = UkMobile::parse(hub_sim::REJECTED_TEST_NUMBER).unwrap();
    let refused = eum
        .send_sms(&bad_number)
        .await
        .expect_err("07700 900999 is refused");
    assert!(matches!(refused, ProviderError::Rejected(_)), "{refused:?}");
    assert!(!refused.to_string().contains("7700"), "{refused}");
    let mut unknown = EumConfig::new("NOSUCHSENDER");
    unknown.name = "eum-unknown".into();
    let sdk_client = sdk::Client::from_conf(
        sdk::Config::builder()
            .behavior_version(sdk::config::BehaviorVersion::latest())
            .endpoint_url(server.endpoint_url())
            .region(sdk::config::Region::new(server.config().region.clone()))
            .credentials_provider(sdk::config::Credentials::new(
                server.config().access_key_id.clone(),
                server
                    .config()
                    .secret_access_key
                    .expose_secret()
                    .to_string(),
                None,
                None,
                "test",
            ))
            .build(),
    );
    let outcome = EumSmsClient::new(sdk_client, unknown)
        .send_sms(&text(1, "Heatwave."))
        .await;
    assert!(
        matches!(outcome, Err(ProviderError::Unauthorised(ref m)) if m.contains("ResourceNotFound")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn above_ten_parts_a_second_the_service_throttles() {
    let server = service().await;
    let eum = Arc::new(signed_client(&server));
    let sends = (0..15).map(|n| {
        let eum = eum.clone();
        tokio::spawn(async move { eum.send_sms(&text(n, "Heatwave.")).await })
    });
    let outcomes = futures::future::join_all(sends).await;
    let accepted = outcomes.iter().filter(|o| matches!(o, Ok(Ok(_)))).count();
    let throttled = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Err(ProviderError::RateLimited { .. }))))
        .count();
    assert_eq!(accepted + throttled, 15, "{outcomes:?}");
    // A full bucket of one second's parts, and what refilled meanwhile.
    assert!((10..=11).contains(&accepted), "{accepted} accepted");
    assert_eq!(
        server.sender(SENDER).unwrap().rate_limited_count(),
        throttled as u64
    );
}

/// Sends texts `0..total`, `in_flight` at a time, through `router` as the
/// send handler does (a text no provider took in time is tried again).
async fn send_all(
    router: Arc<ProviderRouter>,
    total: u32,
    in_flight: u32,
    body: &'static str,
) -> Vec<(String, Instant)> {
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let workers = (0..in_flight).map(|_| {
        let (router, next, accepted) = (router.clone(), next.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return;
                }
                loop {
                    match router.send(&text(n, body)).await {
                        Ok((provider, _)) => {
                            accepted.lock().unwrap().push((provider, Instant::now()));
                            break;
                        }
                        Err(RouteError::NotSent(_)) => continue,
                        Err(other) => panic!("text {n}: {other}"),
                    }
                }
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker.unwrap();
    }
    Arc::try_unwrap(accepted).unwrap().into_inner().unwrap()
}

const TWO_PARTS: &str = "Heatwave warning for South East London. Stay out of the sun \
    between 11am and 3pm, drink plenty of water and check on neighbours who live alone. \
    Call 111 if you feel unwell.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_paced_at_ten_parts_a_second_is_never_throttled_and_uses_the_rate() {
    assert_eq!(measure(TWO_PARTS).fragments, 2);
    let server = service().await;
    let eum: Arc<dyn SmsProvider> = Arc::new(signed_client(&server));
    let router = Arc::new(ProviderRouter::new(vec![(eum, 10.0)]));
    let total = 40;
    let started = Instant::now();
    let accepted = send_all(router, total, 8, TWO_PARTS).await;
    let took = started.elapsed().as_secs_f64();

    let sender = server.sender(SENDER).unwrap();
    assert_eq!(accepted.len(), total as usize);
    assert_eq!(sender.sent_count(), total as usize);
    assert_eq!(sender.duplicate_sends(), 0);
    assert_eq!(server.parts_sent(), 80);
    assert_eq!(sender.rate_limited_count(), 0, "kept within 10 parts/s");
    // The router's half-second burst, then 10 parts a second.
    let ideal = (80.0 - 5.0) / 10.0;
    assert!(ideal / took >= 0.9, "used {:.2} of the rate", ideal / took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_holds_the_eum_key_only_and_nothing_is_lost_or_doubled() {
    let server = service().await;
    let sender = server.sender(SENDER).unwrap().clone();
    let eum: Arc<dyn SmsProvider> = Arc::new(signed_client(&server));
    // Another key with a bucket of one second, so it cannot take the
    // whole campaign in its burst.
    let notify = Arc::new(GatewaySim::new(GatewayConfig {
        rate_per_second: 20.0,
        unit: RateUnit::Parts,
        ..GatewayConfig::new("notify-1")
    }));
    let router = Arc::new(ProviderRouter::new(vec![
        (eum, 10.0),
        (notify.clone() as Arc<dyn SmsProvider>, 20.0),
    ]));
    // The service throttles every call for the first 2 seconds.
    let storm = Duration::from_secs(2);
    sender.rate_limit_for(storm);
    let started = Instant::now();
    let total = 150;
    let accepted = send_all(router, total, 12, "Heatwave: stay cool.").await;

    assert_eq!(accepted.len(), total as usize, "nothing lost");
    assert_eq!(
        sender.sent_count() + notify.sent_count(),
        total as usize,
        "each text sent once"
    );
    assert_eq!(sender.duplicate_sends() + notify.duplicate_sends(), 0);
    assert!(sender.rate_limited_count() > 0, "the throttle happened");
    assert_eq!(
        notify.rate_limited_count(),
        0,
        "the other key was untouched"
    );
    let eum_during_storm = accepted
        .iter()
        .filter(|(p, at)| p == "eum" && *at < started + storm)
        .count();
    let eum_after = accepted
        .iter()
        .filter(|(p, at)| p == "eum" && *at >= started + storm)
        .count();
    assert_eq!(eum_during_storm, 0);
    assert!(eum_after >= 10, "EUM back after the storm: {eum_after}");
}

/// EUM cannot be asked for a text by our reference, so a send whose answer
/// was lost (the service took it, then answered 500) is counted as sent
/// and never sent again, here or through another key.
#[tokio::test]
async fn an_ambiguous_answer_from_eum_is_counted_sent_and_never_repeated() {
    let server = service().await;
    let sender = server.sender(SENDER).unwrap().clone();
    let eum: Arc<dyn SmsProvider> = Arc::new(signed_client(&server));
    let router = ProviderRouter::new(vec![(eum, 10.0)]).with_ambiguity_grace(Duration::ZERO);
    sender.lose_next_responses(1);
    let request = text(7, "Heatwave: stay cool.");

    let (provider, accepted) = router.send(&request).await.expect("counted as sent");

    assert_eq!(provider, "eum");
    assert_eq!(
        accepted.provider_id,
        hub_core::handlers::router::UNCONFIRMED_PROVIDER_ID
    );
    assert_eq!(
        sender.sends_for(&request.reference),
        1,
        "sent once, not repeated"
    );
    assert_eq!(sender.duplicate_sends(), 0);
}
