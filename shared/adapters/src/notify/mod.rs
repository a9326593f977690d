//! GOV.UK Notify: texts, emails and letters over its REST API (v2), the
//! lookup by our reference that reconciles a lost response, and the
//! delivery-status callback the receipts function receives.
//!
//! Nothing personal (number, address, body) and no key material ever goes
//! into an error or a log line: errors name Notify's error code and the
//! HTTP status only.

mod callback;
mod key;

pub use callback::{parse_callback, CallbackError};
pub use key::{NotifyApiKey, NotifyConfigError};

use async_trait::async_trait;
use hub_core::domain::pacing::RateUnit;
use hub_core::domain::DeliveryStatus;
use hub_core::ports::{
    Accepted, EmailProvider, EmailRequest, LetterProvider, LetterRequest, ProviderError,
    ProviderRecord, SmsProvider, SmsRequest,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::time::Duration;

/// GOV.UK Notify's production API.
pub const NOTIFY_PRODUCTION_URL: &str = "https://api.notifications.service.gov.uk";

/// Notify allows 3 to 7 address lines; the postcode is the last.
const MAX_ADDRESS_LINES: usize = 7;

/// The templates the hub sends through. Each is a Notify template whose
/// content is the placeholder `((body))` (emails: subject `((subject))`),
/// so the hub renders the text and Notify only carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTemplates {
    pub sms: String,
    pub email: Option<String>,
    pub letter: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// The provider's name in the router and in reports.
    pub name: String,
    /// `https://api.notifications.service.gov.uk`, or a simulator.
    pub base_url: String,
    /// `{key_name}-{service_id}-{secret}` as Notify issues it.
    pub api_key: SecretString,
    pub templates: NotifyTemplates,
    /// Whole-request timeout (connect, send, answer).
    pub timeout: Duration,
    /// Notify's text message sender id, if the service has several.
    pub sms_sender_id: Option<String>,
    /// Texts a day the service may send (Notify's default: 250,000).
    pub daily_limit: Option<u64>,
}

/// GOV.UK Notify's default daily limit on texts per service.
pub const NOTIFY_DAILY_TEXTS: u64 = 250_000;

impl NotifyConfig {
    pub fn new(
        base_url: impl Into<String>,
        api_key: SecretString,
        templates: NotifyTemplates,
    ) -> Self {
        Self {
            name: "notify".into(),
            base_url: base_url.into(),
            api_key,
            templates,
            timeout: Duration::from_secs(10),
            sms_sender_id: None,
            daily_limit: Some(NOTIFY_DAILY_TEXTS),
        }
    }
}

/// A GOV.UK Notify service, as an SMS, email and letter provider. Cheap to
/// clone; clones share one connection pool.
#[derive(Clone)]
pub struct NotifyClient {
    name: String,
    base: String,
    key: NotifyApiKey,
    templates: NotifyTemplates,
    sms_sender_id: Option<String>,
    daily_limit: Option<u64>,
    http: reqwest::Client,
}

impl std::fmt::Debug for NotifyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyClient")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("service_id", &self.key.service_id())
            .finish_non_exhaustive()
    }
}

impl NotifyClient {
    pub fn new(config: NotifyConfig) -> Result<Self, NotifyConfigError> {
        let key = NotifyApiKey::parse(&config.api_key)?;
        let base = config.base_url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| NotifyConfigError::BadBaseUrl(format!("{e}")))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(NotifyConfigError::BadBaseUrl("scheme must be https".into()));
        }
        check_template(&config.templates.sms, "sms")?;
        if let Some(id) = &config.templates.email {
            check_template(id, "email")?;
        }
        if let Some(id) = &config.templates.letter {
            check_template(id, "letter")?;
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("sms-engagement-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyConfigError::Client(e.to_string()))?;
        Ok(Self {
            name: config.name,
            base,
            key,
            templates: config.templates,
            sms_sender_id: config.sms_sender_id,
            daily_limit: config.daily_limit,
            http,
        })
    }

    /// From a base URL, an API key and the SMS template, with defaults.
    pub fn from_key(
        base_url: &str,
        api_key: SecretString,
        templates: NotifyTemplates,
    ) -> Result<Self, NotifyConfigError> {
        Self::new(NotifyConfig::new(base_url, api_key, templates))
    }

    pub fn service_id(&self) -> &str {
        self.key.service_id()
    }

    fn bearer(&self) -> String {
        let token = self.key.token(chrono::Utc::now().timestamp());
        format!("Bearer {}", token.expose_secret())
    }

    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
        recipient: Recipient,
    ) -> Result<Accepted, ProviderError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, self.bearer())
            .json(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            // A 201 whose body is lost may still be a sent message: report
            // it as unavailable so the caller reconciles by reference.
            let created: Created = response.json().await.map_err(transport_error)?;
            return Ok(Accepted {
                provider_id: created.id,
            });
        }
        Err(error_from_response(response, recipient).await)
    }
}

fn check_template(id: &str, which: &'static str) -> Result<(), NotifyConfigError> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| NotifyConfigError::BadTemplateId(which))
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
}

/// Which request field names the recipient, to tell "this recipient is
/// refused" from "our request is wrong".
#[derive(Clone, Copy)]
enum Recipient {
    Phone,
    Email,
    Address,
    /// A lookup: no recipient involved.
    None,
}

impl Recipient {
    fn is_named_by(self, message: &str) -> bool {
        let message = message.to_ascii_lowercase();
        match self {
            Self::Phone => message.contains("phone_number") || message.contains("mobile"),
            Self::Email => message.contains("email_address"),
            Self::Address => message.contains("address") || message.contains("postcode"),
            Self::None => false,
        }
    }
}

/// Maps reqwest's failures; its messages can hold the URL, so they are
/// reduced to what kind of failure it was.
fn transport_error(error: reqwest::Error) -> ProviderError {
    let what = if error.is_timeout() {
        "request timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "response lost or unreadable"
    } else {
        "request failed"
    };
    ProviderError::Unavailable(format!("Notify: {what}"))
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: f64 = value.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3_600.0)))
}

/// Maps Notify's documented error answers to what the router can act on.
async fn error_from_response(response: reqwest::Response, recipient: Recipient) -> ProviderError {
    let status = response.status().as_u16();
    let retry_after = retry_after(&response);
    let first = response
        .json::<ErrorBody>()
        .await
        .ok()
        .and_then(|body| body.errors.into_iter().next());
    let (code, message) = first.map_or((String::new(), String::new()), |e| (e.error, e.message));
    map_error(status, &code, &message, recipient, retry_after)
}

fn map_error(
    status: u16,
    code: &str,
    message: &str,
    recipient: Recipient,
    retry_after: Option<Duration>,
) -> ProviderError {
    // Notify's messages describe our request, never echo values; still, a
    // message about the recipient is left out on purpose.
    let code = if code.is_empty() {
        "no error code"
    } else {
        code
    };
    match status {
        400 if code == "ValidationError" && recipient.is_named_by(message) => {
            ProviderError::Rejected(format!("Notify {code} for the recipient"))
        }
        // The template or the service itself (not found, not allowed to
        // send texts, trial mode): every message would fail the same way.
        400 if names_service_configuration(message) => ProviderError::Unauthorised(format!(
            "Notify refused the request (400 {code}: {})",
            truncate(message, 120)
        )),
        // Anything else is about this one message (its length, its
        // personalisation): that message's outcome, and the provider stays
        // in rotation for everyone else.
        400 => ProviderError::Rejected(format!("Notify 400 {code} for this message")),
        401 | 403 => ProviderError::Unauthorised(format!("Notify {status} {code}")),
        429 if code == "TooManyRequestsError" => ProviderError::DailyLimit,
        429 => ProviderError::RateLimited { retry_after },
        500..=599 => ProviderError::Unavailable(format!("Notify {status} {code}")),
        _ => ProviderError::Unauthorised(format!("Notify answered {status} {code}")),
    }
}

/// Whether a 400's message is about the template or the service rather
/// than one message.
fn names_service_configuration(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["template", "service", "api key"]
        .iter()
        .any(|word| message.contains(word))
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Notify's status words; anything not final is `None`.
pub fn map_status(status: &str) -> Option<DeliveryStatus> {
    match status {
        "delivered" => Some(DeliveryStatus::Delivered),
        "permanent-failure" | "validation-failed" | "virus-scan-failed" => {
            Some(DeliveryStatus::PermanentFailure)
        }
        "temporary-failure" => Some(DeliveryStatus::TemporaryFailure),
        "technical-failure" => Some(DeliveryStatus::TechnicalFailure),
        // created, sending, pending, sent (abroad), accepted, received, …
        _ => None,
    }
}

#[derive(Deserialize)]
struct NotificationList {
    #[serde(default)]
    notifications: Vec<NotificationItem>,
}

#[derive(Deserialize)]
struct NotificationItem {
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    reference: Option<String>,
}

#[async_trait]
impl SmsProvider for NotifyClient {
    fn name(&self) -> &str {
        &self.name
    }

    /// Notify limits requests per minute, whatever a text's length.
    fn rate_unit(&self) -> RateUnit {
        RateUnit::Requests
    }

    fn daily_cap(&self) -> Option<u64> {
        self.daily_limit
    }

    async fn send_sms(&self, request: &SmsRequest) -> Result<Accepted, ProviderError> {
        let mut body = serde_json::json!({
            "phone_number": request.to.e164(),
            "template_id": self.templates.sms,
            "personalisation": { "body": request.body.expose() },
            "reference": request.reference,
        });
        if let Some(sender) = &self.sms_sender_id {
            body["sms_sender_id"] = serde_json::Value::from(sender.as_str());
        }
        self.post("/v2/notifications/sms", &body, Recipient::Phone)
            .await
    }

    async fn find_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<ProviderRecord>, ProviderError> {
        self.find_notification(reference, "sms").await
    }
}

impl NotifyClient {
    /// The notification of `template_type` (`sms`, `letter`) with our
    /// reference, if Notify has one.
    async fn find_notification(
        &self,
        reference: &str,
        template_type: &str,
    ) -> Result<Option<ProviderRecord>, ProviderError> {
        let response = self
            .http
            .get(format!("{}/v2/notifications", self.base))
            .query(&[("reference", reference), ("template_type", template_type)])
            .header(reqwest::header::AUTHORIZATION, self.bearer())
            .send()
            .await
            .map_err(transport_error)?;
        if !response.status().is_success() {
            return Err(error_from_response(response, Recipient::None).await);
        }
        let list: NotificationList = response.json().await.map_err(transport_error)?;
        // Notify lists newest first; the oldest is the original send (there
        // is only one unless something already sent it twice).
        Ok(list
            .notifications
            .into_iter()
            .rfind(|n| n.reference.as_deref().is_none_or(|r| r == reference))
            .map(|n| ProviderRecord {
                status: map_status(&n.status),
                provider_id: n.id,
            }))
    }
}

#[async_trait]
impl EmailProvider for NotifyClient {
    async fn send_email(&self, request: &EmailRequest) -> Result<Accepted, ProviderError> {
        let Some(template) = &self.templates.email else {
            return Err(ProviderError::Unauthorised(
                "no Notify email template configured".into(),
            ));
        };
        let body = serde_json::json!({
            "email_address": request.to,
            "template_id": template,
            "personalisation": { "subject": request.subject, "body": request.body },
            "reference": request.reference,
        });
        self.post("/v2/notifications/email", &body, Recipient::Email)
            .await
    }
}

/// Notify's `address_line_1..7`: the name, the lines, the postcode last.
/// Surplus lines are folded into the last line before the postcode.
pub fn letter_address_lines(request: &LetterRequest) -> Vec<String> {
    let address = &request.address;
    let mut lines: Vec<String> = std::iter::once(address.name.expose().trim().to_string())
        .chain(address.lines.expose().iter().map(|l| l.trim().to_string()))
        .filter(|l| !l.is_empty())
        .collect();
    let room = MAX_ADDRESS_LINES - 1;
    if lines.len() > room {
        let surplus = lines.split_off(room - 1).join(", ");
        lines.push(surplus);
    }
    lines.push(address.postcode.as_str().to_string());
    lines
}

#[async_trait]
impl LetterProvider for NotifyClient {
    async fn send_letter(&self, request: &LetterRequest) -> Result<Accepted, ProviderError> {
        let Some(template) = &self.templates.letter else {
            return Err(ProviderError::Unauthorised(
                "no Notify letter template configured".into(),
            ));
        };
        let mut personalisation = serde_json::Map::new();
        for (n, line) in letter_address_lines(request).into_iter().enumerate() {
            personalisation.insert(format!("address_line_{}", n + 1), line.into());
        }
        personalisation.insert("body".into(), request.body.expose().as_str().into());
        let body = serde_json::json!({
            "template_id": template,
            "personalisation": personalisation,
            "reference": request.reference,
        });
        self.post("/v2/notifications/letter", &body, Recipient::Address)
            .await
    }

    async fn find_letter(&self, reference: &str) -> Result<Option<ProviderRecord>, ProviderError> {
        self.find_notification(reference, "letter").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::domain::{Personal, PostalAddress, Postcode};

    #[test]
    fn errors_map_to_what_the_router_can_act_on() {
        let phone = Recipient::Phone;
        assert!(matches!(
            map_error(
                400,
                "ValidationError",
                "phone_number Not a UK mobile number",
                phone,
                None
            ),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(
            map_error(400, "BadRequestError", "Template not found", phone, None),
            ProviderError::Unauthorised(_)
        ));
        assert!(matches!(
            map_error(
                400,
                "BadRequestError",
                "Can't send to this recipient when service is in trial mode",
                phone,
                None
            ),
            ProviderError::Unauthorised(_)
        ));
        // A 400 about one message that names no recipient field is that
        // message's outcome, not a fault of the whole provider.
        for message in [
            "Text messages cannot be longer than 918 characters. Your message is 1000 characters long.",
            "personalisation body is required",
            "Missing personalisation: body",
            "",
        ] {
            assert!(
                matches!(
                    map_error(400, "BadRequestError", message, phone, None),
                    ProviderError::Rejected(_)
                ),
                "{message}"
            );
        }
        let wait = Some(Duration::from_secs(2));
        assert_eq!(
            map_error(429, "RateLimitError", "Exceeded rate limit", phone, wait),
            ProviderError::RateLimited { retry_after: wait }
        );
        assert_eq!(
            map_error(
                429,
                "TooManyRequestsError",
                "Exceeded send limits",
                phone,
                None
            ),
            ProviderError::DailyLimit
        );
        for status in [401, 403] {
            assert!(matches!(
                map_error(status, "AuthError", "Invalid token", phone, None),
                ProviderError::Unauthorised(_)
            ));
        }
        for status in [500, 502, 503] {
            assert!(matches!(
                map_error(status, "", "", phone, None),
                ProviderError::Unavailable(_)
            ));
        }
        assert!(matches!(
            map_error(
                400,
                "ValidationError",
                "Must be a real UK postcode",
                Recipient::Address,
                None
            ),
            ProviderError::Rejected(_)
        ));
    }

    #[test]
    fn statuses_map_to_delivery_outcomes() {
        assert_eq!(map_status("delivered"), Some(DeliveryStatus::Delivered));
        assert_eq!(
            map_status("permanent-failure"),
            Some(DeliveryStatus::PermanentFailure)
        );
        assert_eq!(
            map_status("temporary-failure"),
            Some(DeliveryStatus::TemporaryFailure)
        );
        assert_eq!(
            map_status("technical-failure"),
            Some(DeliveryStatus::TechnicalFailure)
        );
        for pending in ["created", "sending", "pending", "sent", "accepted", "x"] {
            assert_eq!(map_status(pending), None, "{pending}");
        }
    }

    fn letter(lines: &[&str]) -> LetterRequest {
        LetterRequest {
            address: PostalAddress {
                name: Personal::new("Ada Lovelace".into()),
                lines: Personal::new(lines.iter().map(|l| l.to_string()).collect()),
                postcode: Postcode::parse("SE13 6LH").unwrap(),
            },
            body: Personal::new("Dear patient".into()),
            reference: "r".into(),
        }
    }

    #[test]
    fn letter_addresses_fit_notify_seven_lines_with_the_postcode_last() {
        assert_eq!(
            letter_address_lines(&letter(&["1 High St", " ", "Lewisham"])),
            vec!["Ada Lovelace", "1 High St", "Lewisham", "SE13 6LH"]
        );
        let long = letter_address_lines(&letter(&["a", "b", "c", "d", "e", "f", "g"]));
        assert_eq!(long.len(), 7);
        assert_eq!(long[5], "e, f, g");
        assert_eq!(long[6], "SE13 6LH");
    }

    #[test]
    fn construction_checks_url_and_templates() {
        let key = SecretString::from(
            "k-26785a09-ab16-4eb0-8407-a37497a57506-3d844edf-8d35-48ac-975b-e847b4f122b0"
                .to_string(),
        );
        let templates = NotifyTemplates {
            sms: "f33517ff-2a88-4f6e-b855-c550268ce08a".into(),
            email: None,
            letter: Some("nope".into()),
        };
        assert_eq!(
            NotifyClient::from_key("https://x.invalid", key.clone(), templates.clone())
                .unwrap_err(),
            NotifyConfigError::BadTemplateId("letter")
        );
        let templates = NotifyTemplates {
            letter: None,
            ..templates
        };
        assert!(matches!(
            NotifyClient::from_key("ftp://x", key.clone(), templates.clone()),
            Err(NotifyConfigError::BadBaseUrl(_))
        ));
        let client = NotifyClient::from_key("https://x.invalid/", key, templates).unwrap();
        assert_eq!(client.name(), "notify");
        assert_eq!(client.service_id(), "26785a09-ab16-4eb0-8407-a37497a57506");
    }
}
