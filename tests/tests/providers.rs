//! The real provider and GP adapters (GOV.UK Notify, FHIR R4 UK Core)
//! against the simulators served over HTTP on 127.0.0.1: error mapping,
//! reconciliation of lost responses, JWTs checked by an independent
//! implementation, `$export` polling, bounded-memory extraction, malformed
//! records and conditional-create write-back.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::StreamExt;
use hub_adapters::fhir::{FhirConfig, FhirGpConnector};
use hub_adapters::notify::{parse_callback, NotifyClient, NotifyConfig, NotifyTemplates};
use hub_core::domain::{
    DeliveryStatus, GpPatient, NhsNumber, OdsCode, Personal, PostalAddress, Postcode, UkMobile,
};
use hub_core::handlers::receipts::bearer_matches;
use hub_core::handlers::router::RouteError;
use hub_core::handlers::ProviderRouter;
use hub_core::ports::{
    DeliveryReceipt, EmailProvider, EmailRequest, GpConnector, GpError, LetterProvider,
    LetterRequest, Practice, ProviderError, SmsProvider, SmsRequest, WritebackEntry,
    WritebackResult,
};
use hub_sim::http::{
    start_fhir, start_notify, CallbackTarget, FhirServer, FhirServerConfig, NotifyServer,
    NotifyServerConfig,
};
use hub_sim::{GatewayConfig, GatewaySim, GpEstate, RegionSpec};
use hub_testkit::logs::CapturedLogs;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------- helpers ----------

fn templates() -> NotifyTemplates {
    NotifyTemplates {
        sms: "f33517ff-2a88-4f6e-b855-c550268ce08a".into(),
        email: Some("9a1f2bd6-6f53-4d9e-a3a8-8d3c4c0f4d11".into()),
        letter: Some("2c6e9d50-1b0e-4a3e-9f67-4f3e2c8d1a22".into()),
    }
}

fn unlimited(name: &str) -> GatewayConfig {
    GatewayConfig {
        rate_per_second: 0.0,
        ..GatewayConfig::new(name)
    }
}

async fn notify_with(
    gateway: GatewayConfig,
    server: NotifyServerConfig,
) -> (NotifyServer, NotifyClient) {
    let (_, server) = start_notify(GatewaySim::new(gateway), server)
        .await
        .expect("notify simulator starts");
    let client = NotifyClient::from_key(&server.base_url(), server.api_key(), templates())
        .expect("client from URL and key");
    (server, client)
}

async fn notify() -> (NotifyServer, NotifyClient) {
    notify_with(unlimited("notify"), NotifyServerConfig::default()).await
}

fn mobile(n: u32) -> UkMobile {
    UkMobile::parse(&format!("07700 900{n:03}")).unwrap()
}

fn sms(n: u32, reference: &str) -> SmsRequest {
    SmsRequest {
        to: mobile(n),
        body: Personal::new("NHS South East London: please book your booster.".into()),
        reference: reference.into(),
        fragments: 1,
    }
}

/// HMAC-SHA256 written out from RFC 2104 over SHA-256, sharing no code
/// with the adapter's or the simulator's signing.
fn independent_hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let inner_pad: Vec<u8> = block_key.iter().map(|b| b ^ 0x36).collect();
    let outer_pad: Vec<u8> = block_key.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&inner_pad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Verifies a Notify JWT by hand: signature over `header.payload`, HS256,
/// `iss`, and `iat` within 30 s of now. Returns the claims.
fn verify_jwt(token: &str, service_id: &str, secret: &str) -> Result<Value, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err("not three parts".into());
    };
    let expected =
        independent_hmac_sha256(secret.as_bytes(), format!("{header}.{payload}").as_bytes());
    let presented = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| e.to_string())?;
    if presented != expected {
        return Err("bad signature".into());
    }
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    if header["alg"] != "HS256" {
        return Err("not HS256".into());
    }
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    if claims["iss"] != service_id {
        return Err("wrong issuer".into());
    }
    let iat = claims["iat"].as_i64().ok_or("no iat")?;
    if (chrono::Utc::now().timestamp() - iat).abs() > 30 {
        return Err("stale iat".into());
    }
    Ok(claims)
}

/// Signs a token by hand, for requests the adapter would never make.
fn forge_jwt(service_id: &str, secret: &str, iat: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"{service_id}","iat":{iat}}}"#));
    let signature =
        independent_hmac_sha256(secret.as_bytes(), format!("{header}.{payload}").as_bytes());
    format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn secret_of(server_config: &NotifyServerConfig) -> String {
    server_config.secret.expose_secret().to_string()
}

// ---------- GOV.UK Notify ----------

#[tokio::test]
async fn every_request_carries_a_jwt_an_independent_verifier_accepts() {
    let config = NotifyServerConfig::default();
    let (service_id, secret) = (config.service_id.clone(), secret_of(&config));
    let (server, client) = notify_with(unlimited("notify"), config).await;

    let accepted = client.send_sms(&sms(1, "c.G85001-0000.1")).await.unwrap();
    client.find_by_reference("c.G85001-0000.1").await.unwrap();

    assert!(uuid::Uuid::parse_str(&accepted.provider_id).is_ok());
    let tokens = server.tokens_seen();
    assert_eq!(tokens.len(), 2);
    for token in &tokens {
        let claims = verify_jwt(token, &service_id, &secret).expect("valid JWT");
        assert_eq!(claims.as_object().unwrap().len(), 2, "iss and iat only");
    }
    // The verifier is not a rubber stamp.
    let tampered = tokens[0].replace('.', ".x");
    assert!(verify_jwt(&tampered, &service_id, &secret).is_err());
    assert!(verify_jwt(&tokens[0], &service_id, "another-secret").is_err());
    assert_eq!(server.gateway().sends_for("c.G85001-0000.1"), 1);
    assert_eq!(server.auth_failures(), 0);
}

#[tokio::test]
async fn the_server_refuses_missing_forged_and_expired_tokens() {
    let config = NotifyServerConfig::default();
    let (service_id, secret) = (config.service_id.clone(), secret_of(&config));
    let (server, _client) = notify_with(unlimited("notify"), config).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v2/notifications?reference=x", server.base_url());
    let now = chrono::Utc::now().timestamp();
    let cases = [
        (None, 401),
        (Some(forge_jwt(&service_id, &secret, now)), 200),
        (Some(forge_jwt(&service_id, &secret, now - 120)), 403),
        (Some(forge_jwt(&service_id, &secret, now + 120)), 403),
        (Some(forge_jwt(&service_id, "wrong-secret", now)), 403),
        (
            Some(forge_jwt(&uuid::Uuid::new_v4().to_string(), &secret, now)),
            403,
        ),
        (Some("not.a.jwt".to_string()), 403),
    ];
    for (token, expected) in cases {
        let mut request = http.get(&url);
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), expected, "{token:?}");
        if expected != 200 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["status_code"], expected);
            assert_eq!(body["errors"][0]["error"], "AuthError");
        }
    }
    assert_eq!(server.auth_failures(), 6);
}

#[tokio::test]
async fn notify_errors_map_to_provider_errors() {
    let (server, client) = notify().await;
    let gateway = server.gateway().clone();

    // 400 ValidationError on the number: rejected, and the number is not
    // in the error.
    let drama = UkMobile::parse("07700 900999").unwrap();
    let mut request = sms(0, "c.G85001-0000.0");
    request.to = drama;
    let error = client.send_sms(&request).await.unwrap_err();
    assert!(matches!(error, ProviderError::Rejected(_)), "{error:?}");
    assert!(!format!("{error} {error:?}").contains("900999"));

    // 429 RateLimitError: rate limited, with the server's hint.
    gateway.inject_rate_limit_burst(1);
    let error = client.send_sms(&sms(1, "r1")).await.unwrap_err();
    assert!(
        matches!(
            error,
            ProviderError::RateLimited {
                retry_after: Some(_)
            }
        ),
        "{error:?}"
    );

    // 429 TooManyRequestsError: the daily limit.
    gateway.set_daily_limit(Some(0));
    assert_eq!(
        client.send_sms(&sms(2, "r2")).await.unwrap_err(),
        ProviderError::DailyLimit
    );
    gateway.set_daily_limit(None);

    // 500: unavailable.
    gateway.inject_server_errors(1);
    assert!(matches!(
        client.send_sms(&sms(3, "r3")).await.unwrap_err(),
        ProviderError::Unavailable(_)
    ));

    // 403 on a key the service does not know: unauthorised.
    let stranger = NotifyClient::from_key(
        &server.base_url(),
        SecretString::from(format!(
            "other-{}-{}",
            server.service_id(),
            uuid::Uuid::new_v4()
        )),
        templates(),
    )
    .unwrap();
    let error = stranger.send_sms(&sms(4, "r4")).await.unwrap_err();
    assert!(matches!(error, ProviderError::Unauthorised(_)), "{error:?}");
    assert!(matches!(
        stranger.find_by_reference("r4").await.unwrap_err(),
        ProviderError::Unauthorised(_)
    ));

    // A template Notify does not accept is our configuration: it stops
    // this provider rather than being blamed on the patient.
    let http = reqwest::Client::new();
    let key = server.api_key();
    let parsed = hub_adapters::notify::NotifyApiKey::parse(&key).unwrap();
    let response = http
        .post(format!("{}/v2/notifications/sms", server.base_url()))
        .bearer_auth(parsed.token(chrono::Utc::now().timestamp()).expose_secret())
        .json(&serde_json::json!({ "phone_number": "07700900001", "template_id": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Nothing listening: unavailable.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let nowhere =
        NotifyClient::from_key(&format!("http://{closed}"), server.api_key(), templates()).unwrap();
    assert!(matches!(
        nowhere.send_sms(&sms(5, "r5")).await.unwrap_err(),
        ProviderError::Unavailable(_)
    ));

    // Only the one good-path-free run: nothing was accepted at all.
    assert_eq!(gateway.sent_count(), 0);
}

#[tokio::test]
async fn a_timeout_is_unavailable_and_the_text_is_found_by_reference() {
    let config = NotifyServerConfig::default();
    let (_, server) = start_notify(GatewaySim::new(unlimited("slow")), config)
        .await
        .unwrap();
    let mut client_config = NotifyConfig::new(server.base_url(), server.api_key(), templates());
    client_config.timeout = Duration::from_millis(300);
    let client = NotifyClient::new(client_config).unwrap();
    server.stall_next_responses(1, Duration::from_secs(2));

    let error = client
        .send_sms(&sms(7, "c.G85001-0001.7"))
        .await
        .unwrap_err();

    assert!(matches!(error, ProviderError::Unavailable(_)), "{error:?}");
    let found = client.find_by_reference("c.G85001-0001.7").await.unwrap();
    assert!(found.is_some(), "accepted before the answer stalled");
    assert_eq!(server.gateway().sends_for("c.G85001-0001.7"), 1);
}

/// GIVEN the server accepts a text and the answer is lost (connection cut
/// mid-body, or a 500 after acceptance), WHEN the router sends it, THEN
/// the adapter's lookup by reference finds it and nothing is sent twice.
#[tokio::test]
async fn a_lost_response_is_reconciled_without_a_second_send() {
    let (server, client) = notify().await;
    let gateway = server.gateway().clone();
    let client: Arc<dyn SmsProvider> = Arc::new(client);
    let router = ProviderRouter::new(vec![(client.clone(), 1_000.0)]);

    // The connection drops after the 201's headers.
    server.drop_next_connections(1);
    let direct = client.send_sms(&sms(10, "c.G85001-0000.10")).await;
    assert!(
        matches!(direct, Err(ProviderError::Unavailable(_))),
        "{direct:?}"
    );
    let record = client
        .find_by_reference("c.G85001-0000.10")
        .await
        .unwrap()
        .expect("the text was accepted");
    assert!(uuid::Uuid::parse_str(&record.provider_id).is_ok());

    server.drop_next_connections(1);
    let (provider, accepted) = router.send(&sms(11, "c.G85001-0000.11")).await.unwrap();
    assert_eq!(provider, "notify");
    let found = client
        .find_by_reference("c.G85001-0000.11")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.provider_id, found.provider_id);

    // The gateway accepts, then answers 500.
    gateway.lose_next_responses(1);
    let (_, accepted) = router.send(&sms(12, "c.G85001-0000.12")).await.unwrap();
    let found = client
        .find_by_reference("c.G85001-0000.12")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.provider_id, found.provider_id);

    for n in 10..=12 {
        assert_eq!(gateway.sends_for(&format!("c.G85001-0000.{n}")), 1, "{n}");
    }
    assert_eq!(gateway.duplicate_sends(), 0);
    assert_eq!(gateway.sent_count(), 3);
}

/// GIVEN a provider that is slow under load: it creates the text only after
/// the client has timed out, WHEN the router sends through it with a second
/// provider free, THEN it waits its grace period, finds the text at the same
/// provider and sends nothing through the other (the first double-send path).
#[tokio::test]
async fn an_ambiguous_send_is_looked_up_at_its_provider_and_never_resent_elsewhere() {
    let (_, slow_server) = start_notify(
        GatewaySim::new(unlimited("slow")),
        NotifyServerConfig::default(),
    )
    .await
    .unwrap();
    let (other_server, other) =
        notify_with(unlimited("other"), NotifyServerConfig::default()).await;
    let mut slow_config =
        NotifyConfig::new(slow_server.base_url(), slow_server.api_key(), templates());
    slow_config.name = "slow".into();
    slow_config.timeout = Duration::from_millis(200);
    let slow: Arc<dyn SmsProvider> = Arc::new(NotifyClient::new(slow_config).unwrap());
    let mut other_config =
        NotifyConfig::new(other_server.base_url(), other_server.api_key(), templates());
    other_config.name = "other".into();
    drop(other);
    let other: Arc<dyn SmsProvider> = Arc::new(NotifyClient::new(other_config).unwrap());
    // The slow provider is first choice: a full bucket and listed first.
    let router = ProviderRouter::new(vec![(slow, 1_000.0), (other, 1_000.0)])
        .with_deadline(Duration::from_secs(8))
        .with_ambiguity_grace(Duration::from_secs(1));

    // Created 600 ms after the request arrives; the client gave up at 200.
    slow_server.accept_next_slowly(1, Duration::from_millis(600));
    let (provider, accepted) = router.send(&sms(20, "c.G85001-0000.20")).await.unwrap();

    assert_eq!(provider, "slow");
    let record = slow_server
        .gateway()
        .find_by_reference("c.G85001-0000.20")
        .await
        .unwrap()
        .expect("created late at the slow provider");
    assert_eq!(accepted.provider_id, record.provider_id);
    assert_eq!(slow_server.gateway().sends_for("c.G85001-0000.20"), 1);
    assert_eq!(
        other_server.gateway().sms_calls(),
        0,
        "nothing went to the other provider"
    );

    // WHEN the lookup itself cannot answer (the provider is gone), THEN the
    // message is not sent elsewhere either: the claim stays for later.
    let (_, gone_server) = start_notify(
        GatewaySim::new(unlimited("gone")),
        NotifyServerConfig::default(),
    )
    .await
    .unwrap();
    let mut gone_config =
        NotifyConfig::new(gone_server.base_url(), gone_server.api_key(), templates());
    gone_config.name = "gone".into();
    gone_config.timeout = Duration::from_millis(200);
    let gone: Arc<dyn SmsProvider> = Arc::new(NotifyClient::new(gone_config).unwrap());
    let other_again: Arc<dyn SmsProvider> = Arc::new(
        NotifyClient::from_key(
            &other_server.base_url(),
            other_server.api_key(),
            templates(),
        )
        .unwrap(),
    );
    let router = ProviderRouter::new(vec![(gone, 1_000.0), (other_again, 1_000.0)])
        .with_deadline(Duration::from_secs(8))
        .with_ambiguity_grace(Duration::from_millis(300));
    gone_server.accept_next_slowly(1, Duration::from_millis(500));
    let sending = tokio::spawn(async move { router.send(&sms(21, "c.G85001-0000.21")).await });
    // The request is in; the server goes before the lookup.
    tokio::time::sleep(Duration::from_millis(250)).await;
    drop(gone_server);
    let outcome = sending.await.unwrap();
    assert!(
        matches!(outcome, Err(RouteError::Unavailable(_))),
        "{outcome:?}"
    );
    assert_eq!(other_server.gateway().sms_calls(), 0);
}

/// GIVEN a 400 about one message that does not name the number (too long),
/// WHEN the router sends it, THEN that message is rejected and the provider
/// stays in rotation: the next text goes through it.
#[tokio::test]
async fn a_400_about_one_message_is_its_outcome_not_the_providers() {
    let (server, client) = notify().await;
    let router = ProviderRouter::new(vec![(Arc::new(client) as Arc<dyn SmsProvider>, 1_000.0)]);
    let mut long = sms(30, "c.G85001-0000.30");
    long.body = Personal::new("x".repeat(919));
    long.fragments = 6;

    let outcome = router.send(&long).await;

    assert!(
        matches!(outcome, Err(RouteError::Rejected { .. })),
        "{outcome:?}"
    );
    assert!(router.status()[0].in_rotation, "the provider stays");
    router.send(&sms(31, "c.G85001-0000.31")).await.unwrap();
    assert_eq!(server.gateway().sent_count(), 1);
}

#[tokio::test]
async fn lookups_report_delivery_status() {
    let (server, client) = notify_with(
        GatewayConfig {
            delivery_failure_rate: 1.0,
            ..unlimited("failing")
        },
        NotifyServerConfig::default(),
    )
    .await;
    client.send_sms(&sms(20, "c.G85001-0000.20")).await.unwrap();
    let record = client
        .find_by_reference("c.G85001-0000.20")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, Some(DeliveryStatus::PermanentFailure));
    assert_eq!(client.find_by_reference("never-sent").await.unwrap(), None);
    drop(server);

    let (_server, client) = notify_with(
        GatewayConfig {
            receipt_delay: Duration::from_secs(60),
            ..unlimited("slow-receipts")
        },
        NotifyServerConfig::default(),
    )
    .await;
    client.send_sms(&sms(21, "c.G85001-0000.21")).await.unwrap();
    let record = client
        .find_by_reference("c.G85001-0000.21")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, None, "still sending");
}

/// A callback as received: whether its bearer token matched, and the body.
type Callback = (bool, Vec<u8>);

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Callback>>>);

/// A receipts endpoint: checks the bearer token as the receipts function
/// does and keeps the raw bodies.
async fn callback_receiver(token: SecretString) -> (String, Received) {
    use axum::routing::post;
    let received = Received::default();
    let app = axum::Router::new().route(
        "/receipts",
        post({
            let received = received.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let received = received.clone();
                let token = token.clone();
                async move {
                    let header = headers
                        .get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok());
                    let ok = bearer_matches(header, &token);
                    received.0.lock().unwrap().push((ok, body.to_vec()));
                    if ok {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::UNAUTHORIZED
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/receipts"), received)
}

#[tokio::test]
async fn delivery_callbacks_arrive_with_our_bearer_token_and_parse_into_receipts() {
    let token = SecretString::from("callback-token-7f3a".to_string());
    let (url, received) = callback_receiver(token.clone()).await;
    let config = NotifyServerConfig {
        callback: Some(CallbackTarget { url, bearer: token }),
        ..NotifyServerConfig::default()
    };
    let (server, client) = notify_with(
        GatewayConfig {
            delivery_failure_rate: 0.5,
            seed: 9,
            ..unlimited("callbacks")
        },
        config,
    )
    .await;

    let mut sent = Vec::new();
    for n in 0..10 {
        let reference = format!("c.G85001-0002.{n}");
        let accepted = client.send_sms(&sms(30 + n, &reference)).await.unwrap();
        sent.push(DeliveryReceipt {
            reference,
            provider_id: accepted.provider_id,
            status: DeliveryStatus::Delivered,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while (received.0.lock().unwrap().len() < 10 || server.callbacks_delivered() < 10)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let bodies = received.0.lock().unwrap().clone();
    assert_eq!(bodies.len(), 10);
    assert_eq!(server.callbacks_delivered(), 10);
    let mut failures = 0;
    for (authorised, body) in bodies {
        assert!(authorised, "callback carries the bearer token");
        let raw: Value = serde_json::from_slice(&body).unwrap();
        assert!(raw["to"]
            .as_str()
            .is_some_and(|to| to.starts_with("+447700")));
        let receipt = parse_callback(&body).unwrap();
        let ours = sent
            .iter()
            .find(|s| s.reference == receipt.reference)
            .unwrap();
        assert_eq!(ours.provider_id, receipt.provider_id);
        let looked_up = client
            .find_by_reference(&receipt.reference)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(looked_up.status, Some(receipt.status));
        failures += usize::from(receipt.status == DeliveryStatus::PermanentFailure);
    }
    assert!((1..10).contains(&failures), "{failures}");
}

#[tokio::test]
async fn letters_and_emails_go_through_notify() {
    let (server, client) = notify().await;
    let letter = LetterRequest {
        address: PostalAddress {
            name: Personal::new("Ada Lovelace".into()),
            lines: Personal::new(vec![
                "Flat 2".into(),
                "1 High Street".into(),
                "Lewisham".into(),
            ]),
            postcode: Postcode::parse("SE13 6LH").unwrap(),
        },
        body: Personal::new("Dear patient, please book your booster.".into()),
        reference: "c.G85001-0000.40".into(),
    };
    let accepted = client.send_letter(&letter).await.unwrap();
    assert!(uuid::Uuid::parse_str(&accepted.provider_id).is_ok());
    assert_eq!(server.gateway().letters_for("c.G85001-0000.40"), 1);
    // A letter is found by our reference (a claim whose worker died is
    // settled by it), and only a letter: a text's lookup does not see it.
    let found = client
        .find_letter("c.G85001-0000.40")
        .await
        .unwrap()
        .expect("the letter is found by reference");
    assert_eq!(found.provider_id, accepted.provider_id);
    assert_eq!(client.find_letter("c.G85001-0000.41").await.unwrap(), None);
    assert_eq!(
        client.find_by_reference("c.G85001-0000.40").await.unwrap(),
        None
    );

    let email = EmailRequest {
        to: "practice-g85001@nhs.invalid".into(),
        subject: "Emergency message to your patients".into(),
        body: "Notice".into(),
        reference: "notice.G85001".into(),
    };
    client.send_email(&email).await.unwrap();
    assert_eq!(
        server.gateway().emails(),
        vec![(
            email.to.clone(),
            email.subject.clone(),
            email.reference.clone()
        )]
    );
    let bad = EmailRequest {
        to: "not-an-address".into(),
        ..email
    };
    assert!(matches!(
        client.send_email(&bad).await.unwrap_err(),
        ProviderError::Rejected(_)
    ));
}

// ---------- FHIR ----------

fn estate(patients: u64, practices: usize, seed: u64) -> GpEstate {
    GpEstate::generate(RegionSpec {
        practices,
        patients,
        seed,
    })
}

async fn fhir(estate: GpEstate, config: FhirServerConfig) -> FhirServer {
    start_fhir(estate, config)
        .await
        .expect("FHIR simulator starts")
        .1
}

fn fast_connector() -> FhirGpConnector {
    FhirGpConnector::new(FhirConfig {
        min_poll: Duration::from_millis(10),
        ..FhirConfig::default()
    })
    .unwrap()
}

async fn read_all(
    connector: &FhirGpConnector,
    practice: &Practice,
) -> (Vec<GpPatient>, Vec<GpError>) {
    let mut stream = connector
        .extract(practice)
        .await
        .expect("extraction starts");
    let (mut patients, mut errors) = (Vec::new(), Vec::new());
    while let Some(item) = stream.next().await {
        match item {
            Ok(patient) => patients.push(patient),
            Err(error) => errors.push(error),
        }
    }
    (patients, errors)
}

fn first_ods(estate: &GpEstate) -> OdsCode {
    estate.practices()[0].ods.clone()
}

#[tokio::test]
async fn an_export_needing_several_polls_yields_every_patient_as_the_gp_holds_them() {
    let estate = estate(2_000, 1, 21);
    let ods = first_ods(&estate);
    let server = fhir(
        estate.clone(),
        FhirServerConfig {
            polls_before_ready: 3,
            retry_after_secs: 1,
            rows_per_file: 700,
            ..FhirServerConfig::default()
        },
    )
    .await;
    let practice = server.practice(&ods, true, None).unwrap();
    let started = Instant::now();

    let (patients, errors) = read_all(&fast_connector(), &practice).await;

    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(server.exports_started(), 1);
    assert_eq!(server.export_polls(), 4, "three 202s, then the manifest");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "Retry-After honoured: {:?}",
        started.elapsed()
    );
    // UK Core in, exactly the GP's rows out (names, ended mobiles, old
    // addresses, unknown extensions and deceased flags all resolved).
    assert_eq!(patients.len(), 2_000);
    assert!(patients.iter().cloned().eq(estate.patients(&ods)));
}

#[tokio::test]
async fn a_paged_search_follows_next_links() {
    let estate = estate(1_000, 1, 22);
    let ods = first_ods(&estate);
    let server = fhir(estate.clone(), FhirServerConfig::default()).await;
    let practice = server.practice(&ods, false, None).unwrap();
    let connector = FhirGpConnector::new(FhirConfig {
        page_size: 300,
        ..FhirConfig::default()
    })
    .unwrap();

    let (patients, errors) = read_all(&connector, &practice).await;

    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(server.search_pages(), 4);
    assert!(patients.into_iter().eq(estate.patients(&ods)));
}

#[tokio::test]
async fn malformed_records_are_counted_and_the_rest_still_read() {
    let estate = estate(3_000, 1, 23);
    let ods = first_ods(&estate);
    let server = fhir(
        estate.clone(),
        FhirServerConfig {
            polls_before_ready: 0,
            rows_per_file: 1_000,
            ..FhirServerConfig::default()
        },
    )
    .await;
    server.inject_malformed(&ods, 97);
    let expected = server.malformed_in_list(&ods);
    assert_eq!(expected, 30);

    for bulk in [true, false] {
        let practice = server.practice(&ods, bulk, None).unwrap();
        let (patients, errors) = read_all(&fast_connector(), &practice).await;
        assert_eq!(patients.len(), 3_000, "bulk: {bulk}");
        assert!(patients.into_iter().eq(estate.patients(&ods)));
        assert_eq!(errors.len() as u64, expected, "bulk: {bulk}");
        for error in &errors {
            assert!(matches!(error, GpError::MalformedRecord(_)), "{error:?}");
            // Positions, never content.
            let text = error.to_string();
            assert!(
                !text.contains("not-a-list") && !text.contains("19800101"),
                "{text}"
            );
        }
    }
}

const CHILD: &str = "HUB_PROVIDERS_MEMORY_CHILD";

fn proc_status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 100,000 patients, about 80 MB of NDJSON, extracted while the peak RSS
/// of the process grows by a small fraction of that. Runs in a child
/// process so no other test's allocations share the measurement.
#[test]
fn a_hundred_thousand_patient_practice_extracts_in_bounded_memory() {
    if std::env::var_os(CHILD).is_some() {
        return bounded_memory_child();
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_hundred_thousand_patient_practice_extracts_in_bounded_memory",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("BOUNDED-MEMORY-OK"),
        "child did not run:\n{stdout}\n{stderr}"
    );
}

fn bounded_memory_child() {
    if proc_status_kb("VmHWM:") == 0 {
        println!("BOUNDED-MEMORY-OK (no /proc: skipped)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let estate = estate(100_000, 1, 24);
        let ods = first_ods(&estate);
        let server = fhir(
            estate.clone(),
            FhirServerConfig {
                polls_before_ready: 1,
                retry_after_secs: 0,
                rows_per_file: 100_000,
                ..FhirServerConfig::default()
            },
        )
        .await;
        server.inject_malformed(&ods, 1_000);
        let practice = server.practice(&ods, true, None).unwrap();
        let connector = fast_connector();
        // Warm up the connection pool and the allocator with a little
        // (not a whole list: freed heap would hide growth).
        let warm_up = connector
            .extract(&server.practice(&ods, false, None).unwrap())
            .await
            .unwrap();
        assert_eq!(warm_up.take(1_000).count().await, 1_000);
        let served_before = server.bytes_served();
        // Reset the peak to the current resident size (Linux 4.0+).
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let baseline = if reset {
            proc_status_kb("VmRSS:")
        } else {
            proc_status_kb("VmHWM:")
        };

        let mut stream = connector.extract(&practice).await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        // Give the server every chance to push ahead of the reader.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let served_at_first = server.bytes_served() - served_before;
        let (mut patients, mut malformed) = (1u64, 0u64);
        let mut valid_numbers = u64::from(NhsNumber::parse(first.nhs_number.expose()).is_ok());
        while let Some(item) = stream.next().await {
            match item {
                Ok(patient) => {
                    patients += 1;
                    valid_numbers +=
                        u64::from(NhsNumber::parse(patient.nhs_number.expose()).is_ok());
                }
                Err(GpError::MalformedRecord(_)) => malformed += 1,
                Err(other) => panic!("{other}"),
            }
        }
        let peak_growth_kb = proc_status_kb("VmHWM:").saturating_sub(baseline);
        let total = server.bytes_served() - served_before;
        println!(
            "served {} MB, {} MB when the first patient arrived, peak RSS growth {} MB",
            total >> 20,
            served_at_first >> 20,
            peak_growth_kb >> 10
        );
        assert_eq!(patients, 100_000);
        assert_eq!(malformed, 100);
        assert!(valid_numbers > 99_000);
        assert!(total > 50 << 20, "the file is big enough to tell: {total}");
        // Back-pressure: the server cannot run ahead of the reader by more
        // than the socket and HTTP buffers.
        assert!(served_at_first < 16 << 20, "{served_at_first} bytes ahead");
        // Holding the body (or the patients) would add at least `total`.
        let limit_kb = (total >> 10) / 3;
        assert!(
            peak_growth_kb < limit_kb,
            "peak RSS grew {peak_growth_kb} kB; limit {limit_kb} kB"
        );

        // Control: the same file taken whole does show up in the measure.
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let baseline = if reset {
            proc_status_kb("VmRSS:")
        } else {
            proc_status_kb("VmHWM:")
        };
        let whole = reqwest::get(format!("{}/$export-file/1/0", server.base_url(&ods)))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let control_growth_kb = proc_status_kb("VmHWM:").saturating_sub(baseline);
        println!(
            "control: whole body {} MB, peak RSS growth {} MB",
            whole.len() >> 20,
            control_growth_kb >> 10
        );
        assert!(
            control_growth_kb > limit_kb,
            "the measure sees a buffered body"
        );
    });
    println!("BOUNDED-MEMORY-OK");
}

#[tokio::test]
async fn an_export_that_never_finishes_is_cancelled_and_unavailable() {
    let estate = estate(100, 1, 25);
    let ods = first_ods(&estate);
    let server = fhir(
        estate,
        FhirServerConfig {
            polls_before_ready: 1_000,
            retry_after_secs: 0,
            ..FhirServerConfig::default()
        },
    )
    .await;
    let connector = FhirGpConnector::new(FhirConfig {
        export_timeout: Duration::from_millis(400),
        min_poll: Duration::from_millis(50),
        ..FhirConfig::default()
    })
    .unwrap();
    let practice = server.practice(&ods, true, None).unwrap();
    let result = connector.extract(&practice).await;
    assert!(matches!(result, Err(GpError::Unavailable(_))));
    assert_eq!(server.exports_cancelled(), 1);
    assert!(server.export_polls() >= 3);
}

#[tokio::test]
async fn a_gp_system_that_is_down_is_unavailable_and_credentials_are_checked() {
    let estate = estate(500, 1, 26);
    let ods = first_ods(&estate);
    let token = SecretString::from("gp-token-1".to_string());
    let server = fhir(
        estate.clone(),
        FhirServerConfig {
            bearer: Some(token.clone()),
            polls_before_ready: 0,
            ..FhirServerConfig::default()
        },
    )
    .await;
    let connector = fast_connector().with_credential("gp/g85", token);
    let wrong = fast_connector().with_credential("gp/g85", SecretString::from("nope".to_string()));
    for bulk in [true, false] {
        let practice = server.practice(&ods, bulk, Some("gp/g85")).unwrap();
        estate.set_down(&ods, Some(1));
        assert!(matches!(
            connector.extract(&practice).await,
            Err(GpError::Unavailable(_))
        ));
        let (patients, errors) = read_all(&connector, &practice).await;
        assert_eq!((patients.len(), errors.len()), (500, 0));
        // A refused token is configuration, not an outage.
        let refused = match wrong.extract(&practice).await {
            Err(error) => error,
            Ok(mut stream) => stream.next().await.unwrap().unwrap_err(),
        };
        assert!(matches!(refused, GpError::Misconfigured(_)), "{refused:?}");
        // No credential of that name at all.
        assert!(matches!(
            fast_connector().extract(&practice).await,
            Err(GpError::Misconfigured(_))
        ));
    }
}

/// One GP credential secret, as Secrets Manager holds it; counts reads.
struct GpSecrets {
    value: &'static str,
    reads: std::sync::atomic::AtomicUsize,
}

impl GpSecrets {
    fn holding(value: &'static str) -> Arc<Self> {
        Arc::new(Self {
            value,
            reads: Default::default(),
        })
    }
}

#[async_trait::async_trait]
impl hub_core::ports::Secrets for GpSecrets {
    async fn secret(&self, id: &str) -> Result<SecretString, hub_core::ports::SecretsError> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match id {
            "sms-hub/gp/G85001" => Ok(SecretString::from(self.value.to_string())),
            other => Err(hub_core::ports::SecretsError::NotFound(other.into())),
        }
    }
}

/// The registry names a practice's credential secret; the connector reads
/// it the first time the practice needs it and keeps it.
#[tokio::test]
async fn a_practices_gp_credential_is_read_from_the_secret_the_registry_names() {
    let estate = estate(200, 1, 27);
    let ods = first_ods(&estate);
    let server = fhir(
        estate.clone(),
        FhirServerConfig {
            bearer: Some(SecretString::from("gp-token-2".to_string())),
            polls_before_ready: 0,
            ..FhirServerConfig::default()
        },
    )
    .await;
    let secrets = GpSecrets::holding(r#"{"token": "gp-token-2"}"#);
    let connector = fast_connector().with_credential_source(secrets.clone());
    let practice = server
        .practice(&ods, false, Some("sms-hub/gp/G85001"))
        .unwrap();
    for _ in 0..2 {
        let (patients, errors) = read_all(&connector, &practice).await;
        assert_eq!((patients.len(), errors.len()), (200, 0));
    }
    assert_eq!(
        secrets.reads.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "read once, then kept"
    );
    // A secret that does not exist is configuration, named.
    let missing = server
        .practice(&ods, false, Some("sms-hub/gp/NOPE"))
        .unwrap();
    let error = connector.extract(&missing).await.err().expect("refused");
    assert!(
        matches!(&error, GpError::Misconfigured(m) if m.contains("sms-hub/gp/NOPE")),
        "{error:?}"
    );
    // A secret of the wrong shape is named, its value never quoted.
    let wrong =
        fast_connector().with_credential_source(GpSecrets::holding(r#"{"bearer": "gp-token-2"}"#));
    let error = wrong.extract(&practice).await.err().expect("refused");
    assert!(
        matches!(&error, GpError::Misconfigured(m) if m.contains("token") && !m.contains("gp-token-2")),
        "{error:?}"
    );
}

fn writeback_entry(nhs: &str, reference: &str) -> WritebackEntry {
    WritebackEntry {
        nhs_number: NhsNumber::parse(nhs).unwrap(),
        reference: reference.into(),
        sent_at: chrono::Utc::now(),
        message: Personal::new("NHS South East London: please book your booster.".into()),
        medium: hub_core::ports::Medium::Sms,
    }
}

/// GIVEN entries for three of the practice's patients and one stranger,
/// WHEN written back, THEN one transaction of conditional creates records
/// the three, the stranger is rejected, and a retry records nothing twice.
#[tokio::test]
async fn write_back_is_a_transaction_of_conditional_creates() {
    let estate = estate(4_000, 2, 27);
    let practices = estate.practices();
    let (home, other) = (&practices[0], &practices[1]);
    let server = fhir(estate.clone(), FhirServerConfig::default()).await;
    let practice = server.practice(&home.ods, false, None).unwrap();
    let ours: Vec<String> = estate
        .patients(&home.ods)
        .map(|p| p.nhs_number.into_inner())
        .filter(|n| NhsNumber::parse(n).is_ok())
        .take(3)
        .collect();
    let stranger = estate
        .patients(&other.ods)
        .map(|p| p.nhs_number.into_inner())
        .find(|n| NhsNumber::parse(n).is_ok_and(|nhs| !estate.has_patient(&home.ods, &nhs)))
        .unwrap();
    let entries = vec![
        writeback_entry(&ours[0], "c.G85001-0000.0"),
        writeback_entry(&ours[1], "c.G85001-0000.1"),
        writeback_entry(&stranger, "c.G85001-0000.2"),
        writeback_entry(&ours[2], "c.G85001-0000.3"),
    ];
    let connector = fast_connector();

    let results = connector.write_back(&practice, &entries).await.unwrap();

    use WritebackResult::*;
    assert_eq!(results, vec![Recorded, Recorded, Rejected, Recorded]);
    assert!(
        server.transactions_refused() >= 1,
        "the whole bundle was refused first"
    );
    let stored = server.communications();
    assert_eq!(stored.len(), 3);
    for communication in &stored {
        assert_eq!(communication["resourceType"], "Communication");
        assert_eq!(communication["status"], "completed");
        assert_eq!(
            communication["category"][0]["coding"][0]["code"],
            "notification"
        );
        assert_eq!(
            communication["subject"]["identifier"]["system"],
            "https://fhir.nhs.uk/Id/nhs-number"
        );
        assert!(ours
            .iter()
            .any(|n| communication["subject"]["identifier"]["value"] == n.as_str()));
        assert!(communication["sent"]
            .as_str()
            .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()));
        assert_eq!(communication["medium"][0]["coding"][0]["code"], "SMSWRIT");
        assert!(communication["payload"][0]["contentString"].is_string());
        assert!(communication["identifier"][0]["value"]
            .as_str()
            .is_some_and(|r| r.starts_with("c.G85001-0000.")));
    }

    // Redelivered: the same four again.
    let transactions = server.transactions();
    let again = connector.write_back(&practice, &entries).await.unwrap();
    assert_eq!(again, vec![Recorded, Recorded, Rejected, Recorded]);
    assert_eq!(
        server.communications().len(),
        3,
        "conditional create: no duplicates"
    );
    assert_eq!(server.conditional_matches(), 3);
    assert!(server.transactions() > transactions);
    assert_eq!(estate.writebacks(&home.ods), 3);

    // Only good entries: one transaction, nothing refused.
    let refused = server.transactions_refused();
    let before = server.transactions();
    let good = [writeback_entry(&ours[0], "c.G85001-0000.9")];
    assert_eq!(
        connector.write_back(&practice, &good).await.unwrap(),
        vec![Recorded]
    );
    assert_eq!(server.transactions(), before + 1);
    assert_eq!(server.transactions_refused(), refused);

    // The GP system failing: an error the writeback job retries.
    estate.set_writeback_failures(&home.ods, 1);
    assert!(matches!(
        connector.write_back(&practice, &good).await,
        Err(GpError::Unavailable(_))
    ));
}

/// Checks FHIR JSON with an independent validator, the `fhir.resources`
/// Python models (R4B: Bundle, Communication and Patient are as in R4):
/// element names, cardinality and primitive formats. Value sets are
/// checked by the adapter's own unit test. Skipped where the package is
/// not installed, unless `HUB_REQUIRE_FHIR_VALIDATOR` is set.
fn validate_with_fhir_resources(resources: &[Value]) -> Option<Vec<String>> {
    use std::io::Write;
    let script = r#"
import sys, json
from fhir.resources.R4B import get_fhir_model_class
out = []
for r in json.load(sys.stdin):
    try:
        get_fhir_model_class(r["resourceType"]).model_validate(r)
        out.append("ok")
    except Exception as e:
        out.append(type(e).__name__ + ": " + str(e).splitlines()[0])
print(json.dumps(out))
"#;
    let available = std::process::Command::new("python3")
        .args(["-c", "import fhir.resources.R4B"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("HUB_REQUIRE_FHIR_VALIDATOR").is_none(),
            "python3 with fhir.resources is required"
        );
        eprintln!("fhir.resources not installed: independent FHIR validation skipped");
        return None;
    }
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(resources).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

#[test]
fn emitted_fhir_passes_an_independent_r4_validator() {
    let estate = estate(300, 1, 28);
    let ods = first_ods(&estate);
    let numbers: Vec<String> = estate
        .patients(&ods)
        .map(|p| p.nhs_number.into_inner())
        .filter(|n| NhsNumber::parse(n).is_ok())
        .take(2)
        .collect();
    let bundle = hub_adapters::fhir::writeback_bundle(
        &[
            writeback_entry(&numbers[0], "c.G85001-0000.0"),
            writeback_entry(&numbers[1], "c.G85001-0000.1"),
        ],
        hub_adapters::fhir::DEFAULT_REFERENCE_SYSTEM,
    );
    let mut resources = vec![bundle.clone()];
    // The simulator's UK Core Patients, every variation of shape included.
    for (row, patient) in estate.patients(&ods).enumerate().take(300) {
        resources.push(hub_sim::http::patient_resource(&patient, &ods, row as u64));
    }
    // And a broken one, to show the validator has teeth.
    let mut broken = bundle;
    broken["entry"][0]["resource"]["payload"][0] = serde_json::json!({ "contentStrin": "x" });
    resources.push(broken);

    let Some(verdicts) = validate_with_fhir_resources(&resources) else {
        return;
    };

    let (last, valid) = verdicts.split_last().unwrap();
    for (n, verdict) in valid.iter().enumerate() {
        assert_eq!(verdict, "ok", "resource {n}");
    }
    assert_ne!(last, "ok", "a misspelt element is caught");
}

/// Everything above, logged at TRACE (HTTP stacks included), searched for
/// every NHS number, mobile, surname and message body that went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapters_log_no_patient_data_even_at_trace() {
    let captured = CapturedLogs::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Global, so the server and connection tasks on other threads log too.
    tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");

    // Texts, a lost response, a lookup, a letter.
    let (server, client) = notify().await;
    let body = "Dear Thistlewaite, please book your booster";
    for n in 0..5 {
        let mut request = sms(100 + n, &format!("c.G85001-0003.{n}"));
        request.body = Personal::new(body.into());
        client.send_sms(&request).await.unwrap();
    }
    server.drop_next_connections(1);
    let _ = client.send_sms(&sms(120, "c.G85001-0003.9")).await;
    client.find_by_reference("c.G85001-0003.9").await.unwrap();
    // Extraction (both styles, malformed lines) and write-back.
    let estate = estate(600, 1, 29);
    let ods = first_ods(&estate);
    let fhir_server = fhir(
        estate.clone(),
        FhirServerConfig {
            polls_before_ready: 1,
            retry_after_secs: 0,
            ..FhirServerConfig::default()
        },
    )
    .await;
    fhir_server.inject_malformed(&ods, 50);
    let connector = fast_connector();
    for bulk in [true, false] {
        let practice = fhir_server.practice(&ods, bulk, None).unwrap();
        let (patients, errors) = read_all(&connector, &practice).await;
        assert_eq!((patients.len(), errors.len()), (600, 12));
        for error in errors {
            tracing::warn!(%error, "malformed record");
        }
    }
    let practice = fhir_server.practice(&ods, false, None).unwrap();
    let entries: Vec<WritebackEntry> = estate
        .patients(&ods)
        .filter(|p| NhsNumber::parse(p.nhs_number.expose()).is_ok())
        .take(5)
        .enumerate()
        .map(|(n, p)| writeback_entry(p.nhs_number.expose(), &format!("c.G85001-0003.{n}")))
        .collect();
    connector.write_back(&practice, &entries).await.unwrap();

    let logs = captured.text();
    assert!(logs.len() > 1_000, "the run was logged");
    let mut secrets: Vec<String> = vec!["Thistlewaite".into(), body.into()];
    for n in (100..105).chain([120]) {
        let mobile = mobile(n);
        secrets.push(mobile.e164().to_string());
        secrets.push(mobile.national());
    }
    for patient in estate.patients(&ods) {
        let number = patient.nhs_number.into_inner();
        if number.len() == 10 {
            secrets.push(number);
        }
        let family = patient.family_name.into_inner();
        if family.len() >= 5 {
            secrets.push(family);
        }
        if let Some(mobile) = patient.mobile.into_inner() {
            if mobile.len() >= 10 {
                secrets.push(mobile);
            }
        }
    }
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a log line holds patient data"
        );
    }
    assert!(
        !logs.contains(server.api_key().expose_secret()),
        "the API key is never logged"
    );
}
