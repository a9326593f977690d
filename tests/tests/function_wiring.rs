//! Each function reads only the secrets its role may read (template.yaml):
//! the hub is built for every function with a secrets source that records
//! each read, and the Notify secret is read on the first message only.

use async_trait::async_trait;
use functions::metrics::Metrics;
use functions::notify::{LazyNotify, NotifyService, ProviderRates, DEFAULT_NOTIFY_RATES};
use functions::wiring::{hub_with, Function};
use hub_adapters::aws::env;
use hub_core::domain::{OdsCode, Personal};
use hub_core::ports::{
    GpConnection, GpError, Practice, ProviderError, Secrets, SecretsError, SmsProvider, SmsRequest,
};
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const NOTIFY: &str = "arn:aws:secretsmanager:eu-west-2:123456789012:secret:hub/notify";
const OPTOUT_KEY: &str = "arn:aws:secretsmanager:eu-west-2:123456789012:secret:hub/optout";
const CALLBACK: &str = "arn:aws:secretsmanager:eu-west-2:123456789012:secret:hub/callback";

/// Answers every secret and records which were asked for.
#[derive(Default)]
struct RecordingSecrets {
    values: HashMap<String, String>,
    reads: Mutex<Vec<String>>,
}

#[async_trait]
impl Secrets for RecordingSecrets {
    async fn secret(&self, id: &str) -> Result<SecretString, SecretsError> {
        self.reads.lock().unwrap().push(id.to_string());
        self.values
            .get(id)
            .map(|value| SecretString::from(value.clone()))
            .ok_or_else(|| SecretsError::NotFound(id.to_string()))
    }
}

fn secrets(notify: &str) -> Arc<RecordingSecrets> {
    Arc::new(RecordingSecrets {
        values: HashMap::from([
            (NOTIFY.to_string(), notify.to_string()),
            (OPTOUT_KEY.to_string(), r#"{"key":"k"}"#.to_string()),
            (CALLBACK.to_string(), r#"{"token":"t"}"#.to_string()),
        ]),
        reads: Mutex::default(),
    })
}

fn environment(name: &str) -> Option<String> {
    let value = match name {
        env::NOTIFY_SECRET_ARN => NOTIFY,
        env::OPTOUT_LINK_KEY_SECRET_ARN => OPTOUT_KEY,
        env::CALLBACK_TOKEN_SECRET_ARN => CALLBACK,
        env::NOTIFY_RATES => {
            r#"[{"rate_per_second":40,"daily_limit":250000},{"rate_per_second":10}]"#
        }
        env::PUBLIC_BASE_URL => "https://abc123.execute-api.eu-west-2.amazonaws.com/v1",
        env::SEND_MAX_CONCURRENCY => "20",
        env::SCHEDULER_ROLE_ARN => "arn:aws:iam::123456789012:role/scheduler",
        env::DEADLINE_FUNCTION_ARN => "arn:aws:lambda:eu-west-2:123456789012:function:hub-deadline",
        env::PURGE_QUEUE_ARN => "arn:aws:sqs:eu-west-2:123456789012:purge",
        other if other.ends_with("_QUEUE_URL") => "http://127.0.0.1:1/123456789012/q",
        env::HUB_TABLE | env::PATIENT_DATA_TABLE => "table",
        _ => return None,
    };
    Some(value.to_string())
}

const NOTIFY_SECRET: &str = r#"{"api_key":"hub-00000000-0000-0000-0000-000000000000-00000000-0000-0000-0000-000000000000","sms_template_id":"f33517ff-2a88-4f6e-b855-c550268ce08a"}"#;

#[tokio::test]
async fn each_function_starts_reading_only_the_secrets_its_role_may_read() {
    std::env::set_var("AWS_REGION", "eu-west-2");
    let expected: [(Function, &[&str]); 10] = [
        (Function::Api, &[]),
        (Function::OptoutLink, &[OPTOUT_KEY]),
        (Function::PracticeNotices, &[OPTOUT_KEY]),
        (Function::Deadline, &[]),
        (Function::Extract, &[]),
        (Function::Send, &[]),
        (Function::Writeback, &[]),
        (Function::Letters, &[]),
        (Function::Receipts, &[]),
        (Function::Purge, &[]),
    ];
    for (function, reads) in expected {
        let recording = secrets(NOTIFY_SECRET);
        let hub = hub_with(function, recording.clone(), &environment)
            .await
            .unwrap_or_else(|e| panic!("{function:?}: {e:#}"));
        assert_eq!(*recording.reads.lock().unwrap(), reads, "{function:?}");
        // The plan has the configured rates and daily limits without the
        // Notify secret.
        let rates: Vec<_> = hub
            .config
            .providers
            .iter()
            .map(|p| (p.name.as_str(), p.per_second, p.daily_limit))
            .collect();
        assert_eq!(
            rates,
            [("notify-1", 40.0, Some(250_000)), ("notify-2", 10.0, None)],
            "{function:?}"
        );
    }
}

fn request() -> SmsRequest {
    SmsRequest {
        to: hub_core::domain::UkMobile::parse("07700900123").unwrap(),
        body: Personal::new("hello".to_string()),
        reference: "c.G85001-0001.1".into(),
        fragments: 1,
    }
}

#[tokio::test]
async fn the_notify_secret_is_read_on_the_first_message_and_a_mismatch_stops_sending() {
    // Two rates configured, one key in the secret: configuration, not a blip.
    let recording = secrets(NOTIFY_SECRET);
    let service = NotifyService::new(
        recording.clone(),
        NOTIFY.to_string(),
        2,
        Metrics::to_writer(std::io::sink()),
    );
    let provider = LazyNotify::new(service, 0);
    assert!(recording.reads.lock().unwrap().is_empty());
    let error = provider.send_sms(&request()).await.unwrap_err();
    assert_eq!(*recording.reads.lock().unwrap(), [NOTIFY]);
    let ProviderError::Unauthorised(reason) = error else {
        panic!("{error:?}");
    };
    assert!(reason.contains("NOTIFY_RATES"), "{reason}");
    assert!(!reason.contains("0000-0000"), "{reason}");
}

#[tokio::test]
async fn an_unreadable_notify_secret_is_a_configuration_error_not_a_retry() {
    let recording = Arc::new(RecordingSecrets::default());
    let service = NotifyService::new(
        recording,
        NOTIFY.to_string(),
        1,
        Metrics::to_writer(std::io::sink()),
    );
    let error = LazyNotify::new(service, 0)
        .send_sms(&request())
        .await
        .unwrap_err();
    assert!(matches!(error, ProviderError::Unauthorised(_)), "{error:?}");
}

#[test]
fn the_default_rates_are_one_live_notify_service() {
    let rates = ProviderRates::parse(DEFAULT_NOTIFY_RATES).unwrap();
    assert_eq!(rates.plan_rates().len(), 1);
    assert_eq!(rates.0[0].daily_limit, Some(250_000));
    for bad in ["[]", r#"[{"rate_per_second":0}]"#, r#"[{"rate":5}]"#, "{}"] {
        assert!(ProviderRates::parse(bad).is_err(), "{bad}");
    }
}

/// What a metrics sink received.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn only_server_errors_are_counted_as_api_server_errors() {
    use tower::ServiceExt;
    let captured = Captured::default();
    let metrics = Metrics::to_writer(captured.clone());
    let router = axum::Router::new().route(
        "/campaigns",
        axum::routing::post(|body: String| async move {
            if body.contains("fail") {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                axum::http::StatusCode::BAD_REQUEST
            }
        }),
    );
    let service = functions::lambda::api_gateway_counting(router, metrics);
    let request = |body: &str| {
        lambda_http::request::from_str(
            &include_str!("../data/apigw_create_campaign.json")
                .replace("\"BODY\"", &serde_json::to_string(body).unwrap()),
        )
        .unwrap()
    };
    let answer = service.clone().oneshot(request("bad")).await.unwrap();
    assert_eq!(answer.status(), 400);
    assert!(captured.0.lock().unwrap().is_empty(), "a 4xx was counted");
    let answer = service.oneshot(request("fail")).await.unwrap();
    assert_eq!(answer.status(), 503);
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line[functions::metrics::API_SERVER_ERRORS], 1, "{text}");
}

/// A Notify key is paced by requests (Notify limits requests, not parts)
/// and carries its `NOTIFY_RATES` daily limit to the router, which moves
/// traffic elsewhere or pauses at it, without reading the secret.
#[test]
fn each_notify_key_is_paced_by_requests_and_capped_by_its_daily_limit() {
    let recording = secrets(NOTIFY_SECRET);
    let service = NotifyService::new(
        recording.clone(),
        NOTIFY.to_string(),
        1,
        Metrics::to_writer(std::io::sink()),
    );
    let capped = LazyNotify::new(service.clone(), 0).with_daily_cap(Some(250_000));
    assert_eq!(
        capped.rate_unit(),
        hub_core::domain::pacing::RateUnit::Requests
    );
    assert_eq!(capped.daily_cap(), Some(250_000));
    assert_eq!(LazyNotify::new(service, 0).daily_cap(), None);
    assert!(recording.reads.lock().unwrap().is_empty());
}

const MESH: &str = "sms-hub/gp/mesh";

/// The extract function routes a MESH practice to the hub's mailbox when
/// `MESH_SECRET_NAME` names its secret, read when such a practice is first
/// reached (not at start-up); without it the practice fails as
/// misconfigured, naming the missing route.
#[tokio::test]
async fn a_mesh_practice_goes_to_the_mailbox_the_mesh_secret_names() {
    std::env::set_var("AWS_REGION", "eu-west-2");
    let practice = Practice {
        ods: OdsCode::parse("G85001").unwrap(),
        name: "Riverside Surgery".into(),
        notice_email: "riverside@nhs.invalid".into(),
        dsa_signed: None,
        connection: GpConnection::Mesh {
            mailbox: "G85001OT001".into(),
            wait_seconds: Some(1),
        },
        list_size: 0,
    };
    let recording = secrets(NOTIFY_SECRET);
    let without = hub_with(Function::Extract, recording.clone(), &environment)
        .await
        .unwrap();
    match without.gp.extract(&practice).await {
        Err(GpError::Misconfigured(reason)) => {
            assert!(reason.contains("no MESH route"), "{reason}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a MESH practice extracted without a MESH route"),
    }

    // The mailbox's server is a closed loopback port: reached, not there.
    let mut values = recording.values.clone();
    values.insert(
        MESH.to_string(),
        r#"{"base_url":"http://127.0.0.1:9","mailbox_id":"X26HC001","password":"p","shared_key":"k"}"#
            .to_string(),
    );
    let recording = Arc::new(RecordingSecrets {
        values,
        reads: Mutex::default(),
    });
    let with_mesh = |name: &str| {
        if name == env::MESH_SECRET_NAME {
            Some(MESH.to_string())
        } else {
            environment(name)
        }
    };
    let hub = hub_with(Function::Extract, recording.clone(), &with_mesh)
        .await
        .unwrap();
    assert!(
        recording.reads.lock().unwrap().is_empty(),
        "nothing read at start-up"
    );
    let reached = hub.gp.extract(&practice).await;
    assert!(
        matches!(reached, Err(GpError::Unavailable(_))),
        "{:?}",
        reached.err()
    );
    assert_eq!(*recording.reads.lock().unwrap(), [MESH]);
}

/// With an End User Messaging identity configured, every function plans
/// with it beside the Notify keys (parts a second, its daily cap), the send
/// router paces it in parts, and still no secret is read for it.
#[tokio::test]
async fn end_user_messaging_joins_the_notify_keys_when_configured() {
    std::env::set_var("AWS_REGION", "eu-west-2");
    const SENDER: &str = "arn:aws:sms-voice:eu-west-2:123456789012:sender-id/NHSALERT/GB";
    let with_eum = |name: &str| match name {
        env::EUM_ORIGINATION_IDENTITY => Some(SENDER.to_string()),
        env::EUM_PARTS_PER_SECOND => Some("12".to_string()),
        env::EUM_DAILY_LIMIT => Some("100000".to_string()),
        other => environment(other),
    };
    for function in [Function::Api, Function::Send] {
        let recording = secrets(NOTIFY_SECRET);
        let hub = hub_with(function, recording.clone(), &with_eum)
            .await
            .unwrap_or_else(|e| panic!("{function:?}: {e:#}"));
        assert!(recording.reads.lock().unwrap().is_empty(), "{function:?}");
        let eum = hub.config.providers.last().unwrap();
        assert_eq!(
            (eum.name.as_str(), eum.per_second, eum.unit, eum.daily_limit),
            (
                "eum",
                12.0,
                hub_core::domain::pacing::RateUnit::Parts,
                Some(100_000)
            )
        );
        let routed: Vec<_> = hub
            .sms
            .rates()
            .iter()
            .map(|rate| (rate.name.clone(), rate.unit))
            .collect();
        assert_eq!(routed.len(), 3, "{routed:?}");
        assert_eq!(
            routed[2],
            ("eum".to_string(), hub_core::domain::pacing::RateUnit::Parts)
        );
    }
    // Not configured: Notify only.
    let hub = hub_with(Function::Send, secrets(NOTIFY_SECRET), &environment)
        .await
        .unwrap();
    assert!(hub.config.providers.iter().all(|p| p.name != "eum"));
    // A value that is not an identity's ARN stops the function, naming it.
    let bad = |name: &str| match name {
        env::EUM_ORIGINATION_IDENTITY => Some("NHSALERT".to_string()),
        other => environment(other),
    };
    let error = hub_with(Function::Send, secrets(NOTIFY_SECRET), &bad)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{error:#}").contains(env::EUM_ORIGINATION_IDENTITY),
        "{error:#}"
    );
}
