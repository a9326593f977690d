//! AWS End User Messaging SMS (`pinpoint-sms-voice-v2` `SendTextMessage`)
//! as a second SMS provider, and the mapping of its delivery events.
//!
//! Error and event mapping are pure functions over the SDK's error types
//! and the event JSON, so they are tested without a network.

use async_trait::async_trait;
use aws_sdk_pinpointsmsvoicev2::error::SdkError;
use aws_sdk_pinpointsmsvoicev2::operation::send_text_message::SendTextMessageError;
use aws_sdk_pinpointsmsvoicev2::types::{ConflictExceptionReason, MessageType};
use hub_core::domain::DeliveryStatus;
use hub_core::ports::{
    Accepted, DeliveryReceipt, ProviderError, ProviderRecord, SmsProvider, SmsRequest,
};
use serde::Deserialize;

/// The SDK itself, so callers configure its client without their own
/// dependency on it.
pub use aws_sdk_pinpointsmsvoicev2 as sdk;
pub use aws_sdk_pinpointsmsvoicev2::Client as EumSdkClient;

/// The `Context` key that carries our reference into delivery events.
pub const REFERENCE_CONTEXT_KEY: &str = "reference";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EumConfig {
    /// The provider's name in the router and in reports.
    pub name: String,
    /// Sender ID, phone number, pool id or their ARN.
    pub origination_identity: String,
    /// The configuration set whose event destination feeds the receipts.
    pub configuration_set: Option<String>,
    /// Seconds the carrier may keep trying; `None` is the service default.
    pub time_to_live: Option<i32>,
    /// Texts a day the hub may send through it (a budget the account's
    /// spend limit allows); `None`: no cap.
    pub daily_cap: Option<u64>,
}

impl EumConfig {
    pub fn new(origination_identity: impl Into<String>) -> Self {
        Self {
            name: "eum".into(),
            origination_identity: origination_identity.into(),
            configuration_set: None,
            time_to_live: None,
            daily_cap: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EumSmsClient {
    client: EumSdkClient,
    config: EumConfig,
}

impl EumSmsClient {
    /// `client` comes from the shared `aws_config` load, so the endpoint
    /// and credentials follow the environment. The SDK's own retries are
    /// turned off: a throttle must reach the router at once (it holds the
    /// key for every worker), and a retried timeout could send a text
    /// twice, as EUM cannot be asked for it by reference.
    pub fn new(client: EumSdkClient, config: EumConfig) -> Self {
        let without_retries = client
            .config()
            .to_builder()
            .retry_config(sdk::config::retry::RetryConfig::disabled())
            .build();
        Self {
            client: EumSdkClient::from_conf(without_retries),
            config,
        }
    }
}

#[async_trait]
impl SmsProvider for EumSmsClient {
    fn name(&self) -> &str {
        &self.config.name
    }

    /// EUM limits message parts a second per origination identity.
    fn rate_unit(&self) -> hub_core::domain::pacing::RateUnit {
        hub_core::domain::pacing::RateUnit::Parts
    }

    fn daily_cap(&self) -> Option<u64> {
        self.config.daily_cap
    }

    async fn send_sms(&self, request: &SmsRequest) -> Result<Accepted, ProviderError> {
        let mut call = self
            .client
            .send_text_message()
            .destination_phone_number(request.to.e164())
            .message_body(request.body.expose())
            .origination_identity(&self.config.origination_identity)
            .message_type(MessageType::Transactional)
            .context(REFERENCE_CONTEXT_KEY, &request.reference);
        if let Some(set) = &self.config.configuration_set {
            call = call.configuration_set_name(set);
        }
        if let Some(ttl) = self.config.time_to_live {
            call = call.time_to_live(ttl);
        }
        let output = call.send().await.map_err(|e| map_sdk_error(&e))?;
        match output.message_id() {
            Some(id) => Ok(Accepted {
                provider_id: id.to_string(),
            }),
            // Accepted without an id: treat as unknown so the router
            // reconciles rather than assumes.
            None => Err(ProviderError::Unavailable(
                "EUM accepted the text without a message id".into(),
            )),
        }
    }

    fn answers_lookups(&self) -> bool {
        // EUM has no lookup by our reference: it travels only as a
        // `Context` key into the delivery events. So an ambiguous send
        // (timeout, 5xx, lost answer) is counted as sent, never repeated.
        false
    }

    async fn find_by_reference(
        &self,
        _reference: &str,
    ) -> Result<Option<ProviderRecord>, ProviderError> {
        Ok(None)
    }
}

/// Maps a `SendTextMessage` failure. Messages carry the error's kind and
/// reason only: the SDK's own messages may quote the request.
pub fn map_sdk_error<R>(error: &SdkError<SendTextMessageError, R>) -> ProviderError {
    match error {
        SdkError::ServiceError(service) => map_service_error(service.err()),
        SdkError::TimeoutError(_) => ProviderError::Unavailable("EUM: request timed out".into()),
        SdkError::DispatchFailure(_) => ProviderError::Unavailable("EUM: could not connect".into()),
        SdkError::ResponseError(_) => {
            ProviderError::Unavailable("EUM: response lost or unreadable".into())
        }
        SdkError::ConstructionFailure(_) => {
            ProviderError::Unauthorised("EUM: request could not be built".into())
        }
        _ => ProviderError::Unavailable("EUM: request failed".into()),
    }
}

pub fn map_service_error(error: &SendTextMessageError) -> ProviderError {
    use aws_sdk_pinpointsmsvoicev2::error::ProvideErrorMetadata;
    match error {
        SendTextMessageError::ThrottlingException(_) => {
            ProviderError::RateLimited { retry_after: None }
        }
        SendTextMessageError::ServiceQuotaExceededException(_) => ProviderError::DailyLimit,
        SendTextMessageError::AccessDeniedException(_) => {
            ProviderError::Unauthorised("EUM AccessDeniedException".into())
        }
        SendTextMessageError::ValidationException(e) => {
            let about_number = e.fields().iter().any(|f| {
                f.name()
                    .to_ascii_lowercase()
                    .contains("destinationphonenumber")
            });
            let reason = e.reason().map_or("unspecified", |r| r.as_str());
            if about_number {
                ProviderError::Rejected(format!("EUM ValidationException ({reason}) on the number"))
            } else {
                // Our request or account set-up is wrong: no retry fixes it.
                ProviderError::Unauthorised(format!("EUM ValidationException ({reason})"))
            }
        }
        SendTextMessageError::ConflictException(e) => match e.reason() {
            Some(
                ConflictExceptionReason::DestinationPhoneNumberOptedOut
                | ConflictExceptionReason::DestinationPhoneNumberBlockedByProtectNumberOverride,
            ) => ProviderError::Rejected(format!(
                "EUM ConflictException ({})",
                e.reason().map_or("", |r| r.as_str())
            )),
            reason => ProviderError::Unauthorised(format!(
                "EUM ConflictException ({})",
                reason.map_or("unspecified", |r| r.as_str())
            )),
        },
        SendTextMessageError::ResourceNotFoundException(_) => ProviderError::Unauthorised(
            "EUM ResourceNotFoundException (origination identity or configuration set)".into(),
        ),
        SendTextMessageError::InternalServerException(_) => {
            ProviderError::Unavailable("EUM InternalServerException".into())
        }
        other => match other.code() {
            Some("ThrottlingException" | "TooManyRequestsException") => {
                ProviderError::RateLimited { retry_after: None }
            }
            // Our credentials or signature: no retry fixes it.
            Some(
                code @ ("UnrecognizedClientException"
                | "InvalidSignatureException"
                | "MissingAuthenticationTokenException"
                | "IncompleteSignatureException"),
            ) => ProviderError::Unauthorised(format!("EUM {code}")),
            Some(code) => ProviderError::Unavailable(format!("EUM {code}")),
            None => ProviderError::Unavailable("EUM unknown error".into()),
        },
    }
}

/// What a delivery event's `messageStatus` means for the hub; `None` while
/// the message is still on its way.
pub fn map_message_status(status: &str, is_final: bool) -> Option<DeliveryStatus> {
    match status {
        "DELIVERED" => Some(DeliveryStatus::Delivered),
        // Accepted by the carrier; final only where the carrier sends no
        // handset receipt, which is the best proof there will be.
        "SUCCESSFUL" if is_final => Some(DeliveryStatus::Delivered),
        "PENDING" | "QUEUED" | "SUCCESSFUL" => None,
        // The number or the recipient refuses it: a letter may help.
        "INVALID" | "BLOCKED" | "CARRIER_BLOCKED" | "SPAM" | "OPTED_OUT" => {
            Some(DeliveryStatus::PermanentFailure)
        }
        // The handset was off or out of reach until the message expired.
        "UNREACHABLE" | "CARRIER_UNREACHABLE" | "TTL_EXPIRED" => {
            Some(DeliveryStatus::TemporaryFailure)
        }
        // Ours or the service's fault (price, quota, content, no final
        // receipt within 72 hours).
        "UNKNOWN" | "INVALID_MESSAGE" | "MAX_PRICE_EXCEEDED" => {
            Some(DeliveryStatus::TechnicalFailure)
        }
        _ if is_final => Some(DeliveryStatus::TechnicalFailure),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EumEventError {
    /// Never quotes the event: it holds the destination number.
    #[error("not an EUM text delivery event ({0})")]
    Malformed(&'static str),
    #[error("event has no reference in its context")]
    NoReference,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TextEvent {
    message_id: String,
    message_status: String,
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    context: std::collections::HashMap<String, String>,
}

/// Parses a text delivery event as it arrives: bare (Firehose, CloudWatch),
/// in an EventBridge envelope (`detail`) or in an SNS notification
/// (`Message`, a JSON string). `Ok(None)` for a status that is not final.
pub fn parse_delivery_event(body: &[u8]) -> Result<Option<DeliveryReceipt>, EumEventError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| EumEventError::Malformed("invalid JSON"))?;
    let event = if let Some(detail) = value.get("detail") {
        detail.clone()
    } else if let Some(message) = value.get("Message").and_then(|m| m.as_str()) {
        serde_json::from_str(message)
            .map_err(|_| EumEventError::Malformed("SNS Message is not JSON"))?
    } else {
        value
    };
    let event: TextEvent = serde_json::from_value(event)
        .map_err(|_| EumEventError::Malformed("missing or mistyped field"))?;
    let reference = event
        .context
        .get(REFERENCE_CONTEXT_KEY)
        .filter(|r| !r.is_empty())
        .ok_or(EumEventError::NoReference)?
        .clone();
    Ok(
        map_message_status(&event.message_status, event.is_final).map(|status| DeliveryReceipt {
            reference,
            provider_id: event.message_id,
            status,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_pinpointsmsvoicev2::types::error::{
        AccessDeniedException, ConflictException, InternalServerException,
        ServiceQuotaExceededException, ThrottlingException, ValidationException,
    };
    use aws_sdk_pinpointsmsvoicev2::types::{ValidationExceptionField, ValidationExceptionReason};

    #[test]
    fn service_errors_map_to_what_the_router_can_act_on() {
        use SendTextMessageError as E;
        assert_eq!(
            map_service_error(&E::ThrottlingException(
                ThrottlingException::builder().build()
            )),
            ProviderError::RateLimited { retry_after: None }
        );
        assert_eq!(
            map_service_error(&E::ServiceQuotaExceededException(
                ServiceQuotaExceededException::builder().build()
            )),
            ProviderError::DailyLimit
        );
        assert!(matches!(
            map_service_error(&E::AccessDeniedException(
                AccessDeniedException::builder().build()
            )),
            ProviderError::Unauthorised(_)
        ));
        assert!(matches!(
            map_service_error(&E::InternalServerException(
                InternalServerException::builder().build()
            )),
            ProviderError::Unavailable(_)
        ));
        let on_number = ValidationException::builder()
            .reason(ValidationExceptionReason::InvalidParameter)
            .fields(
                ValidationExceptionField::builder()
                    .name("DestinationPhoneNumber")
                    .message("+447700900123 is not valid")
                    .build()
                    .unwrap(),
            )
            .message("+447700900123 is not valid")
            .build();
        let rejected = map_service_error(&E::ValidationException(on_number));
        assert!(matches!(rejected, ProviderError::Rejected(_)));
        assert!(!rejected.to_string().contains("7700"), "{rejected}");
        let on_request = ValidationException::builder()
            .reason(ValidationExceptionReason::MissingParameter)
            .build();
        assert!(matches!(
            map_service_error(&E::ValidationException(on_request)),
            ProviderError::Unauthorised(_)
        ));
        let opted_out = ConflictException::builder()
            .reason(ConflictExceptionReason::DestinationPhoneNumberOptedOut)
            .build();
        assert!(matches!(
            map_service_error(&E::ConflictException(opted_out)),
            ProviderError::Rejected(_)
        ));
    }

    #[test]
    fn transport_failures_are_unavailable() {
        let timeout: SdkError<SendTextMessageError, ()> =
            SdkError::timeout_error("slow".to_string());
        assert!(matches!(
            map_sdk_error(&timeout),
            ProviderError::Unavailable(_)
        ));
        let service: SdkError<SendTextMessageError, ()> = SdkError::service_error(
            SendTextMessageError::ThrottlingException(ThrottlingException::builder().build()),
            (),
        );
        assert!(matches!(
            map_sdk_error(&service),
            ProviderError::RateLimited { .. }
        ));
    }

    #[test]
    fn statuses_map_to_delivery_outcomes() {
        use DeliveryStatus::*;
        assert_eq!(map_message_status("DELIVERED", true), Some(Delivered));
        assert_eq!(map_message_status("SUCCESSFUL", true), Some(Delivered));
        assert_eq!(map_message_status("SUCCESSFUL", false), None);
        assert_eq!(map_message_status("PENDING", false), None);
        assert_eq!(map_message_status("QUEUED", false), None);
        assert_eq!(map_message_status("INVALID", true), Some(PermanentFailure));
        assert_eq!(
            map_message_status("OPTED_OUT", true),
            Some(PermanentFailure)
        );
        assert_eq!(
            map_message_status("CARRIER_BLOCKED", true),
            Some(PermanentFailure)
        );
        assert_eq!(
            map_message_status("TTL_EXPIRED", true),
            Some(TemporaryFailure)
        );
        assert_eq!(
            map_message_status("UNREACHABLE", true),
            Some(TemporaryFailure)
        );
        assert_eq!(map_message_status("UNKNOWN", true), Some(TechnicalFailure));
        assert_eq!(
            map_message_status("SOMETHING_NEW", true),
            Some(TechnicalFailure)
        );
        assert_eq!(map_message_status("SOMETHING_NEW", false), None);
    }

    const EVENT: &str = r#"{
        "eventType": "TEXT_DELIVERED", "eventVersion": "1.0",
        "eventTimestamp": 1686975103470, "isFinal": true,
        "originationPhoneNumber": "NHSSEL", "destinationPhoneNumber": "+447700900123",
        "messageId": "862a8790-60c0-4430-9b2b-658bdexample",
        "messageStatus": "DELIVERED", "messageStatusDescription": "Message has been delivered",
        "context": { "reference": "c.G85001-0000.3" }, "totalMessageParts": 1
    }"#;

    #[test]
    fn events_parse_bare_from_eventbridge_and_from_sns() {
        let expected = Some(DeliveryReceipt {
            reference: "c.G85001-0000.3".into(),
            provider_id: "862a8790-60c0-4430-9b2b-658bdexample".into(),
            status: DeliveryStatus::Delivered,
        });
        assert_eq!(parse_delivery_event(EVENT.as_bytes()).unwrap(), expected);
        let bridge = format!(
            r#"{{"version":"0","detail-type":"Text Message Delivery Status Updated","source":"aws.sms-voice","detail":{EVENT}}}"#
        );
        assert_eq!(parse_delivery_event(bridge.as_bytes()).unwrap(), expected);
        let sns = serde_json::json!({ "Type": "Notification", "Message": EVENT }).to_string();
        assert_eq!(parse_delivery_event(sns.as_bytes()).unwrap(), expected);
        let pending = EVENT
            .replace("\"DELIVERED\"", "\"PENDING\"")
            .replace("\"isFinal\": true", "\"isFinal\": false");
        assert_eq!(parse_delivery_event(pending.as_bytes()).unwrap(), None);
        let no_reference = EVENT.replace("\"reference\"", "\"other\"");
        assert_eq!(
            parse_delivery_event(no_reference.as_bytes()),
            Err(EumEventError::NoReference)
        );
        let error =
            parse_delivery_event(b"{\"destinationPhoneNumber\":\"+447700900123\"}").unwrap_err();
        assert!(!error.to_string().contains("7700"));
    }
}
