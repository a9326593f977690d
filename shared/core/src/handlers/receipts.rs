//! Delivery status callbacks from the providers.

use super::Hub;
use crate::domain::RecipientRef;
use crate::ports::{DeliveryReceipt, StoreError};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptOutcome {
    Recorded,
    /// Seen before, or the campaign's patient data is already purged.
    AlreadyFinal,
    /// Not one of ours (a reference we did not issue).
    Unknown,
}

/// Checks the callback's bearer token in constant time.
pub fn bearer_matches(header: Option<&str>, expected: &SecretString) -> bool {
    let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let expected = expected.expose_secret().as_bytes();
    token.len() == expected.len() && bool::from(token.as_bytes().ct_eq(expected))
}

pub async fn record_receipt(
    hub: &Hub,
    receipt: &DeliveryReceipt,
) -> Result<ReceiptOutcome, StoreError> {
    let Some(reference) = RecipientRef::parse(&receipt.reference) else {
        return Ok(ReceiptOutcome::Unknown);
    };
    // One atomic write records the status and counts it, exactly once.
    let recorded = hub
        .patients
        .record_delivery(
            &reference.campaign,
            &reference.chunk,
            reference.index,
            receipt.status,
        )
        .await?;
    if !recorded {
        return Ok(ReceiptOutcome::AlreadyFinal);
    }
    Ok(ReceiptOutcome::Recorded)
}

/// The receipts endpoint, independent of HTTP framework: checks the
/// provider's bearer token, parses the body with the provider's callback
/// parser (GOV.UK Notify's lives with its adapter) and records it. Returns
/// the HTTP status to answer with.
pub async fn handle_delivery_callback<E: std::fmt::Display>(
    hub: &Hub,
    authorization: Option<&str>,
    body: &[u8],
    token: &SecretString,
    parse: impl FnOnce(&[u8]) -> Result<DeliveryReceipt, E>,
) -> u16 {
    if !bearer_matches(authorization, token) {
        return 401;
    }
    let receipt = match parse(body) {
        Ok(receipt) => receipt,
        Err(error) => {
            tracing::warn!(%error, "delivery callback not understood");
            return 400;
        }
    };
    match record_receipt(hub, &receipt).await {
        Ok(outcome) => {
            tracing::debug!(?outcome, "delivery callback");
            204
        }
        // The provider retries a callback that fails, for up to 72 hours.
        Err(error) => {
            tracing::warn!(%error, "delivery callback not recorded; the provider will retry");
            503
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        let secret = SecretString::from("s3cret-token".to_string());
        assert!(bearer_matches(Some("Bearer s3cret-token"), &secret));
        assert!(!bearer_matches(Some("Bearer s3cret-tokem"), &secret));
        assert!(!bearer_matches(Some("Bearer s3cret"), &secret));
        assert!(!bearer_matches(Some("s3cret-token"), &secret));
        assert!(!bearer_matches(None, &secret));
    }
}
