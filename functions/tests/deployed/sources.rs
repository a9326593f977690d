//! The event sources as the template declares them, played as AWS does:
//! SQS event source mappings (pollers), EventBridge Scheduler's one-time
//! schedules, and API Gateway's REST proxy integration with IAM identity.

use super::manifest::{Mapping, Route};
use super::runtime::{LambdaFunction, Outcome};
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What went wrong in an invocation, for the failure report.
#[derive(Debug, Clone)]
pub struct InvocationFailure {
    pub function: String,
    pub source: String,
    pub error: String,
}

/// One SQS delivery to a function.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub function: String,
    pub message_id: String,
    pub failed: bool,
    pub at: Instant,
}

#[derive(Default)]
pub struct Record {
    pub failures: Mutex<Vec<InvocationFailure>>,
    pub deliveries: Mutex<Vec<Delivery>>,
}

impl Record {
    fn fail(&self, function: &str, source: &str, error: String) {
        self.failures.lock().unwrap().push(InvocationFailure {
            function: function.to_string(),
            source: source.to_string(),
            error,
        });
    }

    /// Whether a delivery to `function` was reported failed.
    pub fn failed(&self, function: &str) -> bool {
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .any(|d| d.failed && d.function == function)
    }

    /// Seconds from each failed delivery of a message to its next one.
    pub fn retry_delays(&self) -> Vec<(String, Duration)> {
        let deliveries = self.deliveries.lock().unwrap();
        let mut delays = Vec::new();
        for (i, failed) in deliveries.iter().enumerate().filter(|(_, d)| d.failed) {
            if let Some(next) = deliveries[i + 1..]
                .iter()
                .find(|d| d.message_id == failed.message_id)
            {
                delays.push((failed.function.clone(), next.at - failed.at));
            }
        }
        delays
    }
}

pub type Functions = BTreeMap<String, Arc<LambdaFunction>>;

/// Lambda's SQS poller for one event source mapping: receive up to the
/// batch size, invoke, delete what succeeded (all, or all but the
/// `batchItemFailures` when the mapping reports them).
pub async fn poll(
    sqs: aws_sdk_sqs::Client,
    mapping: Mapping,
    function: Arc<LambdaFunction>,
    region: String,
    record: Arc<Record>,
) {
    loop {
        let received = sqs
            .receive_message()
            .queue_url(&mapping.queue_url)
            .max_number_of_messages(mapping.batch_size.clamp(1, 10))
            .wait_time_seconds(1)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await;
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(error) => {
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "receive");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let records: Vec<Value> = messages
            .iter()
            .map(|m| sqs_record(m, &mapping, &region))
            .collect();
        let event = json!({ "Records": records });
        let outcome = function.invoke(event).await;
        let failed: HashSet<String> = match &outcome {
            Ok(Outcome::Response(body)) if mapping.report_batch_item_failures => body
                .get("batchItemFailures")
                .and_then(Value::as_array)
                .map(|failures| {
                    failures
                        .iter()
                        .filter_map(|f| f.get("itemIdentifier")?.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            Ok(Outcome::Response(_)) => HashSet::new(),
            Ok(Outcome::Error(error)) => {
                record.fail(&mapping.function, &mapping.queue, error.to_string());
                messages
                    .iter()
                    .filter_map(|m| m.message_id.clone())
                    .collect()
            }
            Err(error) => {
                record.fail(&mapping.function, &mapping.queue, error.clone());
                messages
                    .iter()
                    .filter_map(|m| m.message_id.clone())
                    .collect()
            }
        };
        let now = Instant::now();
        for message in &messages {
            let id = message.message_id.clone().unwrap_or_default();
            record.deliveries.lock().unwrap().push(Delivery {
                function: mapping.function.clone(),
                message_id: id.clone(),
                failed: failed.contains(&id),
                at: now,
            });
            if !failed.contains(&id) {
                if let Some(handle) = &message.receipt_handle {
                    let _ = sqs
                        .delete_message()
                        .queue_url(&mapping.queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await;
                }
            }
        }
    }
}

fn sqs_record(message: &aws_sdk_sqs::types::Message, mapping: &Mapping, region: &str) -> Value {
    let attributes: Map<String, Value> = message
        .attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.as_str().to_string(), Value::String(v)))
        .collect();
    json!({
        "messageId": message.message_id,
        "receiptHandle": message.receipt_handle,
        "body": message.body,
        "attributes": attributes,
        "messageAttributes": {},
        "md5OfBody": message.md5_of_body,
        "eventSource": "aws:sqs",
        "eventSourceARN": mapping.queue_arn,
        "awsRegion": region,
    })
}

/// EventBridge Scheduler: every one-time `at()` schedule that is due fires
/// its target (a function, or an SQS queue) with the target's Input, then is
/// deleted when it says `ActionAfterCompletion: DELETE`. A failed
/// invocation is retried on the next tick. Recurring (cron/rate) schedules
/// are listed but not run (the daily sweep is not due in a test).
pub async fn schedule(
    scheduler: aws_sdk_scheduler::Client,
    sqs: aws_sdk_sqs::Client,
    functions: Functions,
    record: Arc<Record>,
    fired: Arc<Mutex<Vec<String>>>,
    clock_ahead: Arc<Mutex<chrono::Duration>>,
) {
    let by_arn: HashMap<String, Arc<LambdaFunction>> = functions
        .values()
        .map(|f| (f.spec.arn.clone(), f.clone()))
        .collect();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(listed) = scheduler.list_schedules().send().await else {
            continue;
        };
        for summary in listed.schedules {
            let (Some(name), group) = (summary.name.clone(), summary.group_name.clone()) else {
                continue;
            };
            let Ok(schedule) = scheduler
                .get_schedule()
                .name(&name)
                .set_group_name(group.clone())
                .send()
                .await
            else {
                continue;
            };
            let Some(at) = schedule.schedule_expression().and_then(parse_at) else {
                continue;
            };
            let ahead = *clock_ahead.lock().unwrap();
            if at > (chrono::Utc::now() + ahead).naive_utc() {
                continue;
            }
            let Some(target) = schedule.target() else {
                continue;
            };
            let input: Value = target
                .input()
                .and_then(|i| serde_json::from_str(i).ok())
                .unwrap_or(Value::Null);
            let arn = target.arn();
            let done = if let Some(function) = by_arn.get(arn) {
                match function.invoke(input).await {
                    Ok(Outcome::Response(_)) => true,
                    Ok(Outcome::Error(error)) => {
                        record.fail(&function.logical_id, "scheduler", error.to_string());
                        false
                    }
                    Err(error) => {
                        record.fail(&function.logical_id, "scheduler", error);
                        false
                    }
                }
            } else if arn.starts_with("arn:aws:sqs:") {
                let url = queue_url_of(&sqs, arn).await;
                sqs.send_message()
                    .queue_url(url)
                    .message_body(target.input().unwrap_or_default())
                    .send()
                    .await
                    .is_ok()
            } else {
                record.fail("scheduler", &name, format!("unknown target {arn}"));
                true
            };
            if done {
                fired.lock().unwrap().push(name.clone());
                let delete = schedule
                    .action_after_completion()
                    .is_some_and(|a| a.as_str() == "DELETE");
                if delete {
                    let _ = scheduler
                        .delete_schedule()
                        .name(&name)
                        .set_group_name(group)
                        .send()
                        .await;
                }
            }
        }
    }
}

async fn queue_url_of(sqs: &aws_sdk_sqs::Client, arn: &str) -> String {
    let name = arn.rsplit(':').next().unwrap_or_default();
    sqs.get_queue_url()
        .queue_name(name)
        .send()
        .await
        .ok()
        .and_then(|o| o.queue_url)
        .unwrap_or_default()
}

/// `at(yyyy-mm-ddThh:mm:ss)`, UTC.
pub fn parse_at(expression: &str) -> Option<chrono::NaiveDateTime> {
    let inner = expression.strip_prefix("at(")?.strip_suffix(')')?;
    chrono::NaiveDateTime::parse_from_str(inner, "%Y-%m-%dT%H:%M:%S").ok()
}

/// API Gateway (REST, Lambda proxy integration) in front of the routes:
/// `AWS_IAM` routes need a SigV4 `Authorization` header whose access key is
/// a known staff user's (the signature itself is not verified here) and
/// pass that user's ARN as `requestContext.identity.userArn`.
pub struct Gateway {
    pub routes: Vec<Route>,
    pub functions: Functions,
    pub stage: String,
    pub account: String,
    /// Access key id -> IAM user ARN.
    pub staff: HashMap<String, String>,
    pub record: Arc<Record>,
}

pub fn serve_gateway(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let url = format!("http://{}/{}", listener.local_addr()?, gateway.stage);
    let router = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let gateway = gateway.clone();
            async move { gateway.handle(method, uri, headers, body).await }
        },
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((url, task))
}

fn message(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(json!({ "message": text }))).into_response()
}

impl Gateway {
    fn route(&self, method: &Method, path: &str) -> Option<(&Route, Map<String, Value>)> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut best: Option<(&Route, Map<String, Value>, usize)> = None;
        for route in &self.routes {
            if route.method != "ANY" && route.method != method.as_str() {
                continue;
            }
            let pattern: Vec<&str> = route.path.trim_matches('/').split('/').collect();
            let mut params = Map::new();
            let mut literal = 0;
            let mut ok = true;
            for (i, part) in pattern.iter().enumerate() {
                if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix("+}")) {
                    ok = segments.len() > i;
                    params.insert(
                        name.into(),
                        Value::String(segments[i.min(segments.len())..].join("/")),
                    );
                    break;
                }
                let Some(segment) = segments.get(i) else {
                    ok = false;
                    break;
                };
                if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    params.insert(name.into(), Value::String(segment.to_string()));
                } else if part == segment {
                    literal += 1;
                } else {
                    ok = false;
                    break;
                }
                if i == pattern.len() - 1 && segments.len() != pattern.len() {
                    ok = false;
                }
            }
            if ok && best.as_ref().is_none_or(|(_, _, l)| literal > *l) {
                best = Some((route, params, literal));
            }
        }
        best.map(|(route, params, _)| (route, params))
    }

    async fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let prefix = format!("/{}", self.stage);
        let Some(path) = uri.path().strip_prefix(&prefix) else {
            return message(StatusCode::FORBIDDEN, "Missing Authentication Token");
        };
        let path = if path.is_empty() { "/" } else { path };
        let Some((route, params)) = self.route(&method, path) else {
            return message(StatusCode::FORBIDDEN, "Missing Authentication Token");
        };
        let user_arn = if route.auth == "AWS_IAM" {
            let key = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split("Credential=").nth(1))
                .and_then(|v| v.split('/').next())
                .unwrap_or_default();
            match self.staff.get(key) {
                Some(arn) => Some(arn.clone()),
                None => return message(StatusCode::FORBIDDEN, "Missing Authentication Token"),
            }
        } else {
            None
        };
        let (single, multi) = single_and_multi(
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string())),
        );
        let (query, multi_query) = single_and_multi(form_pairs(uri.query().unwrap_or_default()));
        let none_if_empty = |m: Map<String, Value>| {
            if m.is_empty() {
                Value::Null
            } else {
                Value::Object(m)
            }
        };
        let (text, base64) = match std::str::from_utf8(&body) {
            Ok(text) => (text.to_string(), false),
            Err(_) => (base64_encode(&body), true),
        };
        let event = json!({
            "resource": route.path,
            "path": path,
            "httpMethod": method.as_str(),
            "headers": single,
            "multiValueHeaders": multi,
            "queryStringParameters": none_if_empty(query),
            "multiValueQueryStringParameters": none_if_empty(multi_query),
            "pathParameters": none_if_empty(params),
            "stageVariables": null,
            "requestContext": {
                "accountId": self.account,
                "apiId": "deployedapi",
                "resourceId": "res",
                "resourcePath": route.path,
                "httpMethod": method.as_str(),
                "path": format!("{prefix}{path}"),
                "protocol": "HTTP/1.1",
                "stage": self.stage,
                "requestId": uuid::Uuid::new_v4().to_string(),
                "requestTimeEpoch": chrono::Utc::now().timestamp_millis(),
                "identity": {
                    "sourceIp": "127.0.0.1",
                    "userArn": user_arn,
                    "user": user_arn.as_ref().map(|_| "AIDASTAFF"),
                    "caller": user_arn.as_ref().map(|_| "AIDASTAFF"),
                    "accountId": user_arn.as_ref().map(|_| self.account.clone()),
                    "userAgent": single.get("user-agent"),
                },
            },
            "body": if body.is_empty() { Value::Null } else { Value::String(text) },
            "isBase64Encoded": base64,
        });
        let function = &self.functions[&route.function];
        match function.invoke(event).await {
            Ok(Outcome::Response(response)) => proxy_response(&response)
                .unwrap_or_else(|| message(StatusCode::BAD_GATEWAY, "Internal server error")),
            Ok(Outcome::Error(error)) => {
                self.record.fail(&route.function, "api", error.to_string());
                message(StatusCode::BAD_GATEWAY, "Internal server error")
            }
            Err(error) => {
                self.record.fail(&route.function, "api", error);
                message(StatusCode::GATEWAY_TIMEOUT, "Endpoint request timed out")
            }
        }
    }
}

fn proxy_response(response: &Value) -> Option<Response> {
    let status =
        StatusCode::from_u16(u16::try_from(response.get("statusCode")?.as_u64()?).ok()?).ok()?;
    let mut headers = HeaderMap::new();
    for key in ["headers", "multiValueHeaders"] {
        if let Some(map) = response.get(key).and_then(Value::as_object) {
            for (name, value) in map {
                let values: Vec<&Value> = match value {
                    Value::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                for value in values {
                    if let (Ok(name), Some(Ok(value))) = (
                        name.parse::<axum::http::HeaderName>(),
                        value.as_str().map(str::parse::<axum::http::HeaderValue>),
                    ) {
                        headers.insert(name, value);
                    }
                }
            }
        }
    }
    let body = response
        .get("body")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let body = if response.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        base64_decode(body)
    } else {
        body.as_bytes().to_vec()
    };
    Some((status, headers, body).into_response())
}

/// API Gateway's two views of headers and query strings: the last value
/// of each name, and all of them.
fn single_and_multi(
    pairs: impl Iterator<Item = (String, String)>,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut all: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (name, value) in pairs {
        all.entry(name).or_default().push(Value::String(value));
    }
    let single = all
        .iter()
        .filter_map(|(name, values)| Some((name.clone(), values.last()?.clone())))
        .collect();
    let multi = all
        .into_iter()
        .map(|(name, values)| (name, Value::Array(values)))
        .collect();
    (single, multi)
}

fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_default()
}
