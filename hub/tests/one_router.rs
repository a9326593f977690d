//! One router serves Lambda and `hub local serve`: the same requests, as an
//! API Gateway (REST) event through the Lambda glue and over loopback HTTP
//! to the built `hub local serve`, get the same status and body.

use hub_local::demo::DemoOptions;
use hub_local::LocalStack;
use serde_json::{json, Value};
use std::process::Child;
use tower::ServiceExt;

mod support;
const CALLER: &str =
    "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_HubRequester_0a1b2c3d/alice@nhs.net";
const PRACTICES: usize = 3;
const PATIENTS: u64 = 600;
const SEED: u64 = 17;

/// `hub local serve --insecure-test-identity` on a free port, killed when
/// dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start() -> Self {
        let (child, url) = support::local_serve(&[
            "--insecure-test-identity",
            "--practices",
            &PRACTICES.to_string(),
            "--patients",
            &PATIENTS.to_string(),
            "--seed",
            &SEED.to_string(),
        ]);
        Self { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request, as both paths are sent it.
struct Case {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body: Vec<u8>,
    signed: bool,
}

/// What came back: the status, the `Allow` header and the body with the
/// values no two stacks share (a new campaign's id and creation time) made
/// equal.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    allow: Option<String>,
    body: Value,
}

fn answer(status: u16, allow: Option<String>, body: &[u8]) -> Answer {
    let mut body: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("a JSON body: {}", String::from_utf8_lossy(body)));
    if let Some(id) = body["campaign"]["id"].as_str().map(str::to_string) {
        let text = body.to_string().replace(&id, "<id>");
        body = serde_json::from_str(&text).expect("still JSON");
        body["campaign"]["created_at"] = json!("<time>");
    }
    Answer {
        status,
        allow,
        body,
    }
}

/// The API Gateway (REST) event for `case`, from the fixture: stage `prod`,
/// the IAM caller only if the case is signed.
fn api_gateway_event(case: &Case) -> lambda_http::Request {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/apigw_create_campaign.json"
    );
    let mut event: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).expect("fixture")).expect("JSON");
    event["path"] = json!(case.path);
    event["resource"] = json!(case.path);
    event["httpMethod"] = json!(case.method);
    event["requestContext"]["path"] = json!(format!("/prod{}", case.path));
    event["requestContext"]["resourcePath"] = json!(case.path);
    event["requestContext"]["httpMethod"] = json!(case.method);
    event["body"] = json!(String::from_utf8(case.body.clone()).expect("text body"));
    let length = case.body.len().to_string();
    event["headers"]["content-length"] = json!(length);
    event["multiValueHeaders"]["content-length"] = json!([length]);
    if !case.signed {
        event["requestContext"]["identity"]["userArn"] = Value::Null;
    }
    lambda_http::request::from_str(&event.to_string()).expect("API Gateway event parses")
}

async fn through_lambda(service: &functions::lambda::ApiGatewayService, case: &Case) -> Answer {
    let response = service
        .clone()
        .oneshot(api_gateway_event(case))
        .await
        .unwrap_or_else(|never| match never {});
    let allow = response
        .headers()
        .get("allow")
        .map(|v| v.to_str().expect("ASCII").to_string());
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    answer(status, allow, &body)
}

async fn over_loopback(client: &reqwest::Client, url: &str, case: &Case) -> Answer {
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).expect("method");
    let mut request = client
        .request(method, format!("{url}{}", case.path))
        .header("content-type", "application/json")
        .body(case.body.clone());
    if case.signed {
        request = request.header("x-hub-test-identity", CALLER);
    }
    let response = request.send().await.expect("hub local serve answers");
    let status = response.status().as_u16();
    let allow = response
        .headers()
        .get("allow")
        .map(|v| v.to_str().expect("ASCII").to_string());
    let body = response.bytes().await.expect("body");
    answer(status, allow, &body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_and_hub_local_serve_answer_alike() {
    // GIVEN hub local serve, and the api function's service on a stack of
    // the same synthetic region
    let server = Server::start();
    let options = DemoOptions {
        practices: PRACTICES,
        patients: PATIENTS,
        seed: SEED,
        ..DemoOptions::default()
    };
    let stack = LocalStack::start(options.stack_config())
        .await
        .expect("stack");
    let lambda = functions::lambda::api_gateway(hub_core::http::router(stack.hub.clone()));
    let client = reqwest::Client::new();

    let create = json!({
        "name": "Heatwave alert",
        "message": "NHS: ((first_name)), a heat-health alert applies. See https://www.nhs.uk/",
        "target": { "min_age": 18 },
        "optout_deadline": (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339(),
        "justification": "Level 4 heat-health alert for the region",
    });
    let case = |what, method, path, body: Vec<u8>| Case {
        what,
        method,
        path,
        body,
        signed: true,
    };
    let cases = [
        case(
            "create",
            "POST",
            "/campaigns",
            create.to_string().into_bytes(),
        ),
        case(
            "missing field",
            "POST",
            "/campaigns",
            json!({ "name": "x" }).to_string().into_bytes(),
        ),
        case("no route", "GET", "/nowhere", vec![]),
        case("wrong method", "DELETE", "/campaigns", vec![]),
        case("too large", "POST", "/campaigns", vec![b' '; 300 * 1024]),
        Case {
            signed: false,
            ..case("no caller", "GET", "/campaigns", vec![])
        },
        Case {
            signed: false,
            ..case("public, no token", "GET", "/optout", vec![])
        },
    ];

    // WHEN each request goes both ways
    let mut statuses = Vec::new();
    for case in &cases {
        let lambda = through_lambda(&lambda, case).await;
        let local = over_loopback(&client, &server.url, case).await;
        // THEN the answers are the same
        assert_eq!(lambda, local, "{}", case.what);
        statuses.push(lambda.status);
        if lambda.status >= 400 {
            assert!(
                lambda.body["code"].is_string() && lambda.body["errors"].is_array(),
                "{}: {}",
                case.what,
                lambda.body
            );
        }
    }
    assert_eq!(statuses, [201, 400, 404, 405, 413, 403, 400]);
}
