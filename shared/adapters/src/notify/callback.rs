//! Notify's delivery-status callback: a JSON POST to our receipts URL with
//! the bearer token we gave Notify (checked by the receipts handler).

use super::map_status;
use hub_core::ports::DeliveryReceipt;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// Not JSON, or not the callback's shape. Never quotes the body: it
    /// holds the recipient's number.
    #[error("not a Notify delivery callback ({0})")]
    Malformed(&'static str),
    /// Sent without a reference, so not one of ours.
    #[error("callback has no reference")]
    NoReference,
    /// A status that is not final (Notify only calls back final ones).
    #[error("callback status {0:?} is not final")]
    NotFinal(String),
}

/// The fields the hub reads; `to` (the number) is deliberately not one.
#[derive(Deserialize)]
struct Callback {
    id: String,
    #[serde(default)]
    reference: Option<String>,
    status: String,
}

/// Parses the callback body into a receipt for the receipts handler.
pub fn parse_callback(body: &[u8]) -> Result<DeliveryReceipt, CallbackError> {
    let callback: Callback = serde_json::from_slice(body).map_err(|e| {
        CallbackError::Malformed(match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "invalid JSON"
            }
            _ => "missing or mistyped field",
        })
    })?;
    let reference = callback
        .reference
        .filter(|r| !r.is_empty())
        .ok_or(CallbackError::NoReference)?;
    let status = map_status(&callback.status).ok_or_else(|| {
        // Notify's status words are short and fixed; keep at most a few.
        CallbackError::NotFinal(callback.status.chars().take(32).collect())
    })?;
    Ok(DeliveryReceipt {
        reference,
        provider_id: callback.id,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::domain::DeliveryStatus;

    const CALLBACK: &str = r#"{
        "id": "740e5834-3a29-46b4-9a6f-16142fde533a",
        "reference": "c.G85001-0000.7",
        "to": "07700900123",
        "status": "permanent-failure",
        "created_at": "2024-05-02T10:00:00.000000Z",
        "completed_at": "2024-05-02T10:00:05.000000Z",
        "sent_at": "2024-05-02T10:00:01.000000Z",
        "notification_type": "sms",
        "template_id": "f33517ff-2a88-4f6e-b855-c550268ce08a",
        "template_version": 1
    }"#;

    #[test]
    fn parses_notify_callbacks() {
        let receipt = parse_callback(CALLBACK.as_bytes()).unwrap();
        assert_eq!(receipt.reference, "c.G85001-0000.7");
        assert_eq!(receipt.provider_id, "740e5834-3a29-46b4-9a6f-16142fde533a");
        assert_eq!(receipt.status, DeliveryStatus::PermanentFailure);
        let delivered = CALLBACK.replace("permanent-failure", "delivered");
        assert_eq!(
            parse_callback(delivered.as_bytes()).unwrap().status,
            DeliveryStatus::Delivered
        );
    }

    #[test]
    fn rejects_what_is_not_a_final_callback_of_ours_without_quoting_it() {
        assert_eq!(
            parse_callback(b"{not json 07700900123"),
            Err(CallbackError::Malformed("invalid JSON"))
        );
        let no_status = CALLBACK.replace("\"status\"", "\"state\"");
        let error = parse_callback(no_status.as_bytes()).unwrap_err();
        assert!(!error.to_string().contains("07700900123"));
        let no_reference = CALLBACK.replace("\"c.G85001-0000.7\"", "null");
        assert_eq!(
            parse_callback(no_reference.as_bytes()),
            Err(CallbackError::NoReference)
        );
        let sending = CALLBACK.replace("permanent-failure", "sending");
        assert_eq!(
            parse_callback(sending.as_bytes()),
            Err(CallbackError::NotFinal("sending".into()))
        );
    }
}
