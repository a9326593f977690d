//! A GOV.UK Notify API (v2) over a [`GatewaySim`]: JWT checks, Notify's
//! error bodies and statuses, lookup by reference, and delivery callbacks
//! POSTed with a bearer token, as Notify sends them. Fault injection on
//! top of the gateway's: lost connections and stalled answers after the
//! text was accepted.

use super::{bind, serve, ServerTask};
use crate::GatewaySim;
use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use hub_core::domain::{measure, DeliveryStatus, Personal, PostalAddress, Postcode, UkMobile};
use hub_core::ports::{
    DeliveryReceipt, EmailProvider, EmailRequest, LetterProvider, LetterRequest, ProviderError,
    ReceiptSink, SmsProvider, SmsRequest,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Notify refuses a text longer than this (a 400 about that message).
const MAX_SMS_CHARACTERS: usize = 918;

/// Bearer tokens kept for inspection.
const MAX_TOKENS_KEPT: usize = 1_000;

/// Where the simulated Notify sends delivery callbacks.
#[derive(Clone)]
pub struct CallbackTarget {
    pub url: String,
    /// The bearer token the service registered with Notify.
    pub bearer: SecretString,
}

#[derive(Clone)]
pub struct NotifyServerConfig {
    /// The service id (the JWT issuer) of the one service it hosts.
    pub service_id: String,
    /// The API key's secret (signs the JWTs).
    pub secret: SecretString,
    /// JWT `iat` tolerance, both ways (Notify: 30 s).
    pub clock_skew: Duration,
    pub callback: Option<CallbackTarget>,
}

impl Default for NotifyServerConfig {
    /// A fresh service with a random key, no callbacks.
    fn default() -> Self {
        Self {
            service_id: uuid::Uuid::new_v4().to_string(),
            secret: SecretString::from(uuid::Uuid::new_v4().to_string()),
            clock_skew: Duration::from_secs(30),
            callback: None,
        }
    }
}

impl NotifyServerConfig {
    /// The API key a client of this service uses.
    pub fn api_key(&self, key_name: &str) -> SecretString {
        SecretString::from(format!(
            "{key_name}-{}-{}",
            self.service_id,
            self.secret.expose_secret()
        ))
    }
}

#[derive(Default)]
struct Faults {
    /// Accept the text, then cut the connection mid-answer.
    drop_connections: u64,
    /// Accept the text, then answer only after this delay.
    stalls: u64,
    stall_for: Duration,
    /// Work on the request this long before accepting the text (the
    /// caller may give up first; the text is still created).
    slow_accepts: u64,
    slow_for: Duration,
}

struct ServerState {
    gateway: GatewaySim,
    config: NotifyServerConfig,
    faults: Mutex<Faults>,
    tokens: Mutex<Vec<String>>,
    auth_failures: AtomicU64,
    requests: AtomicU64,
    callbacks_delivered: AtomicU64,
    callbacks_failed: AtomicU64,
    base_url: String,
}

/// A running simulated Notify. Dropping it stops the server.
pub struct NotifyServer {
    state: Arc<ServerState>,
    addr: SocketAddr,
    _task: ServerTask,
}

impl std::fmt::Debug for NotifyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Starts a simulated Notify on 127.0.0.1 over `gateway`. With a
/// callback target, the gateway's receipts become HTTP callbacks.
pub async fn start_notify(
    gateway: GatewaySim,
    config: NotifyServerConfig,
) -> std::io::Result<(SocketAddr, NotifyServer)> {
    let callback = config.callback.clone();
    let (listener, addr) = bind().await?;
    let state = Arc::new(ServerState {
        gateway: gateway.clone(),
        config,
        faults: Mutex::new(Faults::default()),
        tokens: Mutex::new(Vec::new()),
        auth_failures: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        callbacks_delivered: AtomicU64::new(0),
        callbacks_failed: AtomicU64::new(0),
        base_url: format!("http://{addr}"),
    });
    let router = Router::new()
        .route("/v2/notifications/sms", post(send_sms))
        .route("/v2/notifications/email", post(send_email))
        .route("/v2/notifications/letter", post(send_letter))
        .route("/v2/notifications", get(list_notifications))
        .with_state(state.clone());
    let task = serve(listener, router);
    if let Some(target) = callback {
        gateway.set_receipt_sink(Arc::new(CallbackSink {
            state: Arc::downgrade(&state),
            target,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(std::io::Error::other)?,
        }));
    }
    Ok((
        addr,
        NotifyServer {
            state,
            addr,
            _task: task,
        },
    ))
}

impl NotifyServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn api_key(&self) -> SecretString {
        self.state.config.api_key("hub_test")
    }

    pub fn service_id(&self) -> &str {
        &self.state.config.service_id
    }

    pub fn gateway(&self) -> &GatewaySim {
        &self.state.gateway
    }

    /// The next `n` accepted texts get a 201 whose body is cut off.
    pub fn drop_next_connections(&self, n: u64) {
        lock(&self.state.faults).drop_connections = n;
    }

    /// The next `n` accepted texts are answered only after `delay`.
    pub fn stall_next_responses(&self, n: u64, delay: Duration) {
        let mut faults = lock(&self.state.faults);
        faults.stalls = n;
        faults.stall_for = delay;
    }

    /// The next `n` texts are accepted only after `delay`, whether or not
    /// the caller is still waiting (a provider slow under load).
    pub fn accept_next_slowly(&self, n: u64, delay: Duration) {
        let mut faults = lock(&self.state.faults);
        faults.slow_accepts = n;
        faults.slow_for = delay;
    }

    /// The bearer tokens presented (the last 1,000), valid or not, for
    /// independent checks.
    pub fn tokens_seen(&self) -> Vec<String> {
        lock(&self.state.tokens).clone()
    }

    /// Requests refused with 401/403.
    pub fn auth_failures(&self) -> u64 {
        self.state.auth_failures.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    pub fn callbacks_delivered(&self) -> u64 {
        self.state.callbacks_delivered.load(Ordering::Relaxed)
    }

    pub fn callbacks_failed(&self) -> u64 {
        self.state.callbacks_failed.load(Ordering::Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Notify's error body.
fn notify_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        Json(json!({
            "status_code": status.as_u16(),
            "errors": [{ "error": error, "message": message }]
        })),
    )
        .into_response()
}

fn provider_error(error: ProviderError, recipient_field: &str) -> Response {
    match error {
        ProviderError::Rejected(_) => notify_error(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            &format!("{recipient_field} Not a UK mobile number"),
        ),
        ProviderError::RateLimited { retry_after } => {
            let mut response = notify_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RateLimitError",
                "Exceeded rate limit for key type LIVE of 3000 requests per 60 seconds",
            );
            // Notify sends no Retry-After; the simulator knows, so it says.
            if let Some(wait) = retry_after {
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                if let Ok(value) = secs.to_string().parse() {
                    response
                        .headers_mut()
                        .insert(axum::http::header::RETRY_AFTER, value);
                }
            }
            response
        }
        ProviderError::DailyLimit => notify_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsError",
            "Exceeded send limits (250000) for today",
        ),
        ProviderError::Unavailable(_) => notify_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Exception",
            "Internal server error",
        ),
        ProviderError::Unauthorised(_) => notify_error(
            StatusCode::FORBIDDEN,
            "AuthError",
            "Invalid token: service not allowed",
        ),
    }
}

/// Checks the bearer JWT as Notify does: HS256 with the key's secret,
/// `iss` = service id, `iat` within the clock skew.
fn authorise(state: &ServerState, headers: &HeaderMap) -> Result<(), Response> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let refuse = |status, message: &str| {
        state.auth_failures.fetch_add(1, Ordering::Relaxed);
        Err(notify_error(status, "AuthError", message))
    };
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: authentication token must be provided",
        );
    };
    {
        // The most recent ones are enough for a test; a long demo must not grow.
        let mut tokens = lock(&state.tokens);
        if tokens.len() >= MAX_TOKENS_KEPT {
            tokens.remove(0);
        }
        tokens.push(token.to_string());
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return refuse(StatusCode::FORBIDDEN, "Invalid token: not a JWT");
    };
    let Ok(mut mac) =
        Hmac::<Sha256>::new_from_slice(state.config.secret.expose_secret().as_bytes())
    else {
        return refuse(StatusCode::FORBIDDEN, "Invalid token: key");
    };
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let signature_ok = URL_SAFE_NO_PAD
        .decode(signature)
        .is_ok_and(|sig| mac.verify_slice(&sig).is_ok());
    if !signature_ok {
        return refuse(
            StatusCode::FORBIDDEN,
            "Invalid token: signature, api token not found",
        );
    }
    let decode = |part: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    let (Some(header), Some(claims)) = (decode(header), decode(payload)) else {
        return refuse(StatusCode::FORBIDDEN, "Invalid token: not a JWT");
    };
    if header["alg"] != "HS256" {
        return refuse(
            StatusCode::FORBIDDEN,
            "Invalid token: algorithm used is not HS256",
        );
    }
    if claims["iss"].as_str() != Some(state.config.service_id.as_str()) {
        return refuse(StatusCode::FORBIDDEN, "Invalid token: service not found");
    }
    let Some(iat) = claims["iat"].as_i64() else {
        return refuse(
            StatusCode::FORBIDDEN,
            "Invalid token: iat field not provided",
        );
    };
    let skew = (chrono::Utc::now().timestamp() - iat).unsigned_abs();
    if skew > state.config.clock_skew.as_secs() {
        return refuse(
            StatusCode::FORBIDDEN,
            "Error: Your system clock must be accurate to within 30 seconds",
        );
    }
    Ok(())
}

fn bad_request(message: &str) -> Response {
    notify_error(StatusCode::BAD_REQUEST, "ValidationError", message)
}

fn text_field<'a>(body: &'a Value, field: &str) -> Result<&'a str, Response> {
    body[field]
        .as_str()
        .ok_or_else(|| bad_request(&format!("{field} is a required property")))
}

fn check_template(body: &Value) -> Result<String, Response> {
    let id = text_field(body, "template_id")?;
    uuid::Uuid::parse_str(id)
        .map(|_| id.to_string())
        .map_err(|_| bad_request("template_id is not a valid UUID"))
}

fn personalisation<'a>(body: &'a Value, field: &str) -> Result<&'a str, Response> {
    body["personalisation"][field].as_str().ok_or_else(|| {
        notify_error(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            &format!("Missing personalisation: {field}"),
        )
    })
}

fn reference(body: &Value) -> String {
    body["reference"].as_str().unwrap_or_default().to_string()
}

async fn send_sms(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = authorise(&state, &headers) {
        return refused;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("Invalid JSON supplied in POST data");
    };
    let request = match (|| {
        let template = check_template(&body)?;
        let to = UkMobile::parse(text_field(&body, "phone_number")?)
            .map_err(|_| bad_request("phone_number Not a UK mobile number"))?;
        let text = personalisation(&body, "body")?.to_string();
        Ok::<_, Response>((
            template,
            SmsRequest {
                to,
                fragments: measure(&text).fragments,
                body: Personal::new(text),
                reference: reference(&body),
            },
        ))
    })() {
        Ok(request) => request,
        Err(response) => return response,
    };
    let (template, request) = request;
    let length = request.body.expose().chars().count();
    if length > MAX_SMS_CHARACTERS {
        return notify_error(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            &format!(
                "Text messages cannot be longer than {MAX_SMS_CHARACTERS} characters. \
                 Your message is {length} characters long."
            ),
        );
    }
    let slow = {
        let mut faults = lock(&state.faults);
        (faults.slow_accepts > 0).then(|| {
            faults.slow_accepts -= 1;
            faults.slow_for
        })
    };
    let accepted = match slow {
        // Detached, so the text is created even if the caller hangs up.
        Some(delay) => {
            let gateway = state.gateway.clone();
            let request = request.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                gateway.send_sms(&request).await
            })
            .await
            .unwrap_or_else(|_| Err(ProviderError::Unavailable("simulated crash".into())))
        }
        None => state.gateway.send_sms(&request).await,
    };
    let accepted = match accepted {
        Ok(accepted) => accepted,
        Err(error) => return provider_error(error, "phone_number"),
    };
    let answer = json!({
        "id": accepted.provider_id,
        "reference": request.reference,
        "content": { "body": request.body.expose(), "from_number": "NHS" },
        "uri": format!("{}/v2/notifications/{}", state.base_url, accepted.provider_id),
        "template": { "id": template, "version": 1, "uri": "" }
    });
    let (drop_it, stall) = {
        let mut faults = lock(&state.faults);
        if faults.drop_connections > 0 {
            faults.drop_connections -= 1;
            (true, None)
        } else if faults.stalls > 0 {
            faults.stalls -= 1;
            (false, Some(faults.stall_for))
        } else {
            (false, None)
        }
    };
    if drop_it {
        // Headers and half a body, then the connection goes.
        let half = Bytes::from_static(b"{\"id\":\"");
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(half),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated lost response",
            )),
        ];
        return (
            StatusCode::CREATED,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            Body::from_stream(futures::stream::iter(chunks)),
        )
            .into_response();
    }
    if let Some(delay) = stall {
        tokio::time::sleep(delay).await;
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn send_email(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = authorise(&state, &headers) {
        return refused;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("Invalid JSON supplied in POST data");
    };
    let request = (|| {
        check_template(&body)?;
        let to = text_field(&body, "email_address")?;
        if !to.contains('@') {
            return Err(bad_request("email_address Not a valid email address"));
        }
        Ok::<_, Response>(EmailRequest {
            to: to.to_string(),
            subject: personalisation(&body, "subject")?.to_string(),
            body: personalisation(&body, "body")?.to_string(),
            reference: reference(&body),
        })
    })();
    let request = match request {
        Ok(request) => request,
        Err(response) => return response,
    };
    match state.gateway.send_email(&request).await {
        Ok(accepted) => (
            StatusCode::CREATED,
            Json(json!({ "id": accepted.provider_id, "reference": request.reference })),
        )
            .into_response(),
        Err(error) => provider_error(error, "email_address"),
    }
}

async fn send_letter(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = authorise(&state, &headers) {
        return refused;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("Invalid JSON supplied in POST data");
    };
    let request = (|| {
        check_template(&body)?;
        let lines: Vec<String> = (1..=7)
            .map_while(|n| {
                body["personalisation"][format!("address_line_{n}")]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        if lines.len() < 3 {
            return Err(bad_request("Address must be at least 3 lines"));
        }
        let postcode = Postcode::parse(&lines[lines.len() - 1]).map_err(|_| {
            bad_request("Last line of address must be a real UK postcode or another country")
        })?;
        Ok::<_, Response>(LetterRequest {
            address: PostalAddress {
                name: Personal::new(lines[0].clone()),
                lines: Personal::new(lines[1..lines.len() - 1].to_vec()),
                postcode,
            },
            body: Personal::new(personalisation(&body, "body")?.to_string()),
            reference: reference(&body),
        })
    })();
    let request = match request {
        Ok(request) => request,
        Err(response) => return response,
    };
    match state.gateway.send_letter(&request).await {
        Ok(accepted) => (
            StatusCode::CREATED,
            Json(json!({ "id": accepted.provider_id, "reference": request.reference })),
        )
            .into_response(),
        Err(error) => provider_error(error, "address"),
    }
}

fn status_word(status: Option<DeliveryStatus>) -> &'static str {
    match status {
        None => "sending",
        Some(DeliveryStatus::Delivered) => "delivered",
        Some(DeliveryStatus::PermanentFailure) => "permanent-failure",
        Some(DeliveryStatus::TemporaryFailure) => "temporary-failure",
        Some(DeliveryStatus::TechnicalFailure) => "technical-failure",
    }
}

async fn list_notifications(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = authorise(&state, &headers) {
        return refused;
    }
    let mut notifications = Vec::new();
    let wants_sms = query
        .get("template_type")
        .is_none_or(|t| t.as_str() == "sms");
    if let (Some(reference), true) = (query.get("reference"), wants_sms) {
        // The gateway's latency, as a lookup through it would have.
        if let Err(error) = state.gateway.find_by_reference(reference).await {
            return provider_error(error, "phone_number");
        }
        if let Some(found) = state.gateway.lookup_sms(reference) {
            notifications.push(json!({
                "id": found.provider_id,
                "reference": reference,
                "type": "sms",
                "status": status_word(found.status),
                "phone_number": found.to,
                "created_at": found
                    .created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            }));
        }
    }
    let wants_letters = query.get("template_type").is_none_or(|t| t == "letter");
    if let (Some(reference), true) = (query.get("reference"), wants_letters) {
        if let Err(error) = state.gateway.find_letter(reference).await {
            return provider_error(error, "reference");
        }
        if let Some(provider_id) = state.gateway.lookup_letter(reference) {
            notifications.push(json!({
                "id": provider_id,
                "reference": reference,
                "type": "letter",
                // Notify's letter states before printing: accepted.
                "status": "accepted",
            }));
        }
    }
    Json(json!({
        "notifications": notifications,
        "links": { "current": format!("{}/v2/notifications", state.base_url) }
    }))
    .into_response()
}

/// Turns the gateway's receipts into Notify callbacks over HTTP, retried
/// a few times with backoff as Notify does.
struct CallbackSink {
    state: std::sync::Weak<ServerState>,
    target: CallbackTarget,
    http: reqwest::Client,
}

#[async_trait]
impl ReceiptSink for CallbackSink {
    async fn deliver(&self, receipt: DeliveryReceipt) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let to = state
            .gateway
            .lookup_sms(&receipt.reference)
            .map(|found| found.to);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let body = json!({
            "id": receipt.provider_id,
            "reference": receipt.reference,
            "to": to,
            "status": status_word(Some(receipt.status)),
            "created_at": now,
            "completed_at": now,
            "sent_at": now,
            "notification_type": "sms",
            "template_id": uuid::Uuid::nil(),
            "template_version": 1
        });
        let mut wait = Duration::from_millis(50);
        for attempt in 0..5 {
            let sent = self
                .http
                .post(&self.target.url)
                .bearer_auth(self.target.bearer.expose_secret())
                .json(&body)
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                state.callbacks_delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if attempt < 4 {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        state.callbacks_failed.fetch_add(1, Ordering::Relaxed);
    }
}
