//! AWS End User Messaging SMS (`pinpoint-sms-voice-v2`) as the real SDK
//! sees it: `POST /` in the awsJson1_0 protocol (`X-Amz-Target:
//! PinpointSMSVoiceV2.SendTextMessage`), SigV4-signed requests checked
//! against the one access key it knows, and the service's error shapes
//! (`__type`, `Message`, `Reason`, `Fields`). Each origination identity is
//! a [`GatewaySim`] whose token bucket counts message parts (10 a second
//! by default), so the limit is per sender ID as AWS documents it. The
//! simulator counts a message's parts itself, from the body it receives.

use super::{bind, serve, ServerTask};
use crate::{GatewayConfig, GatewaySim};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use hub_core::domain::{Personal, UkMobile};
use hub_core::ports::{ProviderError, SmsProvider, SmsRequest};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The service's signing name and JSON protocol.
pub const EUM_SIGNING_NAME: &str = "sms-voice";
const TARGET_PREFIX: &str = "PinpointSMSVoiceV2.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.0";
/// `SendTextMessage` refuses a longer `MessageBody`.
const MAX_BODY_CHARACTERS: usize = 1_600;

/// What the simulated service accepts.
#[derive(Clone)]
pub struct EumServerConfig {
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

impl Default for EumServerConfig {
    /// A random key pair in eu-west-2.
    fn default() -> Self {
        Self {
            region: "eu-west-2".into(),
            access_key_id: format!("AKIA{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
                .to_ascii_uppercase(),
            secret_access_key: SecretString::from(uuid::Uuid::new_v4().to_string()),
        }
    }
}

struct ServerState {
    config: EumServerConfig,
    /// By origination identity as the caller names it (id or ARN).
    senders: HashMap<String, GatewaySim>,
    requests: AtomicU64,
    auth_failures: AtomicU64,
    parts: AtomicU64,
}

/// A running simulated End User Messaging. Dropping it stops the server.
pub struct EumServer {
    state: Arc<ServerState>,
    addr: SocketAddr,
    _task: ServerTask,
}

impl std::fmt::Debug for EumServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EumServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// One sender ID at the documented default: 10 message parts a second,
/// with no latency or random faults (a test adds what it needs).
pub fn eum_sender(name: &str) -> GatewaySim {
    GatewaySim::new(GatewayConfig {
        latency: std::time::Duration::ZERO,
        latency_max: std::time::Duration::ZERO,
        failure_rate: 0.0,
        ..GatewayConfig::eum_documented(name, 0)
    })
}

/// Starts the service on 127.0.0.1 with `senders` as its origination
/// identities (each by the identity a request names).
pub async fn start_eum(
    config: EumServerConfig,
    senders: impl IntoIterator<Item = (String, GatewaySim)>,
) -> std::io::Result<EumServer> {
    let (listener, addr) = bind().await?;
    let state = Arc::new(ServerState {
        config,
        senders: senders.into_iter().collect(),
        requests: AtomicU64::new(0),
        auth_failures: AtomicU64::new(0),
        parts: AtomicU64::new(0),
    });
    let router = Router::new()
        .route("/", post(handle))
        .with_state(state.clone());
    let task = serve(listener, router);
    Ok(EumServer {
        state,
        addr,
        _task: task,
    })
}

impl EumServer {
    /// The `endpoint_url` for the SDK.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &EumServerConfig {
        &self.state.config
    }

    /// The sender behind `origination_identity`.
    pub fn sender(&self, origination_identity: &str) -> Option<&GatewaySim> {
        self.state.senders.get(origination_identity)
    }

    /// Requests received, signed or not.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Requests refused for a missing or wrong signature or key.
    pub fn auth_failures(&self) -> u64 {
        self.state.auth_failures.load(Ordering::Relaxed)
    }

    /// Message parts of every accepted text, as the service counted them.
    pub fn parts_sent(&self) -> u64 {
        self.state.parts.load(Ordering::Relaxed)
    }
}

/// Message parts a body takes: GSM-7 (extension characters take two
/// septets) up to 160 in one part or 153 per part; otherwise UCS-2, 70 in
/// one part or 67 UTF-16 units per part.
pub fn eum_message_parts(body: &str) -> u32 {
    const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                         ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const EXTENSION: &str = "^{}\\[~]|€\u{c}";
    let septets: Option<usize> = body
        .chars()
        .map(|c| {
            if BASIC.contains(c) {
                Some(1)
            } else if EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            }
        })
        .sum();
    let (units, single, per_part) = match septets {
        Some(septets) => (septets, 160, 153),
        None => (body.encode_utf16().count(), 70, 67),
    };
    let parts = if units <= single {
        1
    } else {
        units.div_ceil(per_part)
    };
    u32::try_from(parts).unwrap_or(u32::MAX)
}

/// An awsJson1_0 error as the SDK parses it: the shape's name in `__type`
/// (and `x-amzn-ErrorType`), the members beside it.
fn error(status: StatusCode, shape: &str, message: &str, extra: serde_json::Value) -> Response {
    let mut body = json!({
        "__type": format!("com.amazonaws.pinpointsmsvoicev2#{shape}"),
        "Message": message,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    (
        status,
        [
            ("content-type", CONTENT_TYPE.to_string()),
            ("x-amzn-ErrorType", shape.to_string()),
            ("x-amzn-RequestId", uuid::Uuid::new_v4().to_string()),
        ],
        body.to_string(),
    )
        .into_response()
}

fn validation(reason: &str, field: &str, message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "ValidationException",
        message,
        json!({"Reason": reason, "Fields": [{"Name": field, "Message": message}]}),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendTextMessage {
    destination_phone_number: Option<String>,
    origination_identity: Option<String>,
    message_body: Option<String>,
    message_type: Option<String>,
    #[serde(default)]
    context: HashMap<String, String>,
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    if let Err(refusal) = verify_signature(&state.config, &headers, &body) {
        state.auth_failures.fetch_add(1, Ordering::Relaxed);
        return refusal;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("content-type").is_none_or(|ct| !ct.starts_with(CONTENT_TYPE)) {
        return error(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "expected application/x-amz-json-1.0",
            json!({}),
        );
    }
    match header("x-amz-target").and_then(|t| t.strip_prefix(TARGET_PREFIX)) {
        Some("SendTextMessage") => send_text_message(&state, &body).await,
        _ => error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            "unknown or unsupported operation",
            json!({}),
        ),
    }
}

async fn send_text_message(state: &ServerState, body: &[u8]) -> Response {
    let Ok(request) = serde_json::from_slice::<SendTextMessage>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "the request body is not a SendTextMessage request",
            json!({}),
        );
    };
    let Some(number) = request.destination_phone_number else {
        return validation(
            "MISSING_PARAMETER",
            "DestinationPhoneNumber",
            "DestinationPhoneNumber is required",
        );
    };
    // A UK service: anything else is refused as the number's problem, and
    // the answer never quotes it.
    let Some(to) = number
        .starts_with("+44")
        .then(|| UkMobile::parse(&number).ok())
        .flatten()
    else {
        return validation(
            "INVALID_PARAMETER",
            "DestinationPhoneNumber",
            "DestinationPhoneNumber is not a valid E.164 mobile number",
        );
    };
    let Some(identity) = request.origination_identity else {
        return validation(
            "MISSING_PARAMETER",
            "OriginationIdentity",
            "OriginationIdentity is required",
        );
    };
    let Some(sender) = state.senders.get(&identity) else {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            "origination identity not found",
            json!({"ResourceType": "sender-id", "ResourceId": identity}),
        );
    };
    let message = request.message_body.unwrap_or_default();
    if message.is_empty() || message.chars().count() > MAX_BODY_CHARACTERS {
        return validation(
            "INVALID_PARAMETER",
            "MessageBody",
            "MessageBody must be 1 to 1600 characters",
        );
    }
    if let Some(kind) = request.message_type.as_deref() {
        if !matches!(kind, "TRANSACTIONAL" | "PROMOTIONAL") {
            return validation("INVALID_PARAMETER", "MessageType", "unknown MessageType");
        }
    }
    let message_id = uuid::Uuid::new_v4().to_string();
    let parts = eum_message_parts(&message);
    let sms = SmsRequest {
        to,
        body: Personal::new(message),
        // Kept as a hash by the gateway, for duplicate counts.
        reference: request
            .context
            .get("reference")
            .cloned()
            .unwrap_or_else(|| message_id.clone()),
        fragments: parts,
    };
    match sender.send_sms(&sms).await {
        Ok(accepted) => {
            state.parts.fetch_add(u64::from(parts), Ordering::Relaxed);
            (
                StatusCode::OK,
                [
                    ("content-type", CONTENT_TYPE.to_string()),
                    ("x-amzn-RequestId", uuid::Uuid::new_v4().to_string()),
                ],
                json!({ "MessageId": accepted.provider_id }).to_string(),
            )
                .into_response()
        }
        Err(ProviderError::RateLimited { .. }) => error(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Rate exceeded for the origination identity's message parts per second",
            json!({}),
        ),
        Err(ProviderError::DailyLimit) => error(
            StatusCode::PAYMENT_REQUIRED,
            "ServiceQuotaExceededException",
            "spend limit reached",
            json!({"Reason": "MONTHLY_SPEND_LIMIT_REACHED_FOR_TEXT"}),
        ),
        Err(ProviderError::Rejected(_)) => validation(
            "INVALID_PARAMETER",
            "DestinationPhoneNumber",
            "the destination cannot receive text messages",
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            "internal error",
            json!({}),
        ),
    }
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Checks a SigV4 `Authorization` header as AWS does: the key is known,
/// the scope is this region and service, and the signature over the
/// canonical request (signed headers, body hash) matches.
fn verify_signature(
    config: &EumServerConfig,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Response> {
    let refuse =
        |shape: &str, message: &str| Err(error(StatusCode::FORBIDDEN, shape, message, json!({})));
    let Some(authorization) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("AWS4-HMAC-SHA256 "))
    else {
        return refuse(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
    };
    let fields: HashMap<&str, &str> = authorization
        .split(',')
        .filter_map(|field| field.trim().split_once('='))
        .collect();
    let (Some(credential), Some(signed_headers), Some(signature)) = (
        fields.get("Credential"),
        fields.get("SignedHeaders"),
        fields.get("Signature"),
    ) else {
        return refuse("IncompleteSignatureException", "incomplete Authorization");
    };
    let mut scope = credential.splitn(5, '/');
    let (Some(key_id), Some(date), Some(region), Some(service), Some("aws4_request")) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return refuse("IncompleteSignatureException", "malformed credential scope");
    };
    if key_id != config.access_key_id {
        return refuse(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    if region != config.region || service != EUM_SIGNING_NAME {
        return refuse(
            "InvalidSignatureException",
            "Credential should be scoped to the service's region and name",
        );
    }
    let Some(amz_date) = headers.get("x-amz-date").and_then(|v| v.to_str().ok()) else {
        return refuse("IncompleteSignatureException", "no X-Amz-Date");
    };
    if !signed_headers.split(';').any(|h| h == "host") {
        return refuse("InvalidSignatureException", "host must be signed");
    }
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload_hash = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| hex::encode(Sha256::digest(body)));
    let canonical_request =
        format!("POST\n/\n\n{canonical_headers}\n{signed_headers}\n{payload_hash}");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = format!("AWS4{}", config.secret_access_key.expose_secret()).into_bytes();
    for part in [date, region, service, "aws4_request"] {
        key = hmac(&key, part);
    }
    let expected = hex::encode(hmac(&key, &string_to_sign));
    if expected.as_bytes().ct_eq(signature.as_bytes()).into() {
        Ok(())
    } else {
        refuse(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::eum_message_parts;

    #[test]
    fn parts_follow_gsm7_and_ucs2_sizes() {
        assert_eq!(eum_message_parts("Heatwave: stay cool."), 1);
        assert_eq!(eum_message_parts(&"a".repeat(160)), 1);
        assert_eq!(eum_message_parts(&"a".repeat(161)), 2);
        assert_eq!(eum_message_parts(&"a".repeat(306)), 2);
        assert_eq!(eum_message_parts(&"a".repeat(307)), 3);
        // Extension characters take two septets.
        assert_eq!(eum_message_parts(&"€".repeat(80)), 1);
        assert_eq!(eum_message_parts(&"€".repeat(81)), 2);
        // One character outside GSM-7 makes the whole text UCS-2.
        assert_eq!(eum_message_parts(&format!("{}ć", "a".repeat(69))), 1);
        assert_eq!(eum_message_parts(&format!("{}ć", "a".repeat(70))), 2);
        assert_eq!(eum_message_parts(&format!("{}ć", "a".repeat(134))), 3);
    }
}
