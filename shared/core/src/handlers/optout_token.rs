//! The practice's one-click opt-out link: HMAC-SHA256 over (campaign, ODS
//! code, expiry), checked in constant time.

use crate::domain::{CampaignId, OdsCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the opt-out link is malformed")]
    Malformed,
    #[error("the opt-out link's signature is not valid")]
    BadSignature,
    #[error("the opt-out link has expired")]
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOutClaim {
    pub campaign: CampaignId,
    pub ods: OdsCode,
    pub expires: DateTime<Utc>,
}

fn mac(key: &SecretString, payload: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(payload.as_bytes());
    mac
}

/// `campaign.ods.expiry.signature`, URL-safe.
pub fn issue(key: &SecretString, claim: &OptOutClaim) -> String {
    let payload = format!(
        "{}.{}.{}",
        claim.campaign,
        claim.ods,
        claim.expires.timestamp()
    );
    let signature = URL_SAFE_NO_PAD.encode(mac(key, &payload).finalize().into_bytes());
    format!("{payload}.{signature}")
}

pub fn verify(
    key: &SecretString,
    token: &str,
    now: DateTime<Utc>,
) -> Result<OptOutClaim, TokenError> {
    let mut parts = token.split('.');
    let (Some(campaign), Some(ods), Some(expiry), Some(signature), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let payload = format!("{campaign}.{ods}.{expiry}");
    // verify_slice compares in constant time.
    mac(key, &payload)
        .verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;
    let campaign = CampaignId::parse(campaign).ok_or(TokenError::Malformed)?;
    let ods = OdsCode::parse(ods).map_err(|_| TokenError::Malformed)?;
    let expires = expiry
        .parse::<i64>()
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or(TokenError::Malformed)?;
    if now >= expires {
        return Err(TokenError::Expired);
    }
    Ok(OptOutClaim {
        campaign,
        ods,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn key(text: &str) -> SecretString {
        SecretString::from(text.to_string())
    }

    fn claim() -> OptOutClaim {
        OptOutClaim {
            campaign: CampaignId::new(),
            ods: OdsCode::parse("G85001").unwrap(),
            expires: DateTime::from_timestamp(Utc::now().timestamp() + 3600, 0).unwrap(),
        }
    }

    #[test]
    fn a_signed_link_verifies() {
        let claim = claim();
        let token = issue(&key("k1"), &claim);
        assert_eq!(verify(&key("k1"), &token, Utc::now()), Ok(claim));
    }

    #[test]
    fn another_key_or_a_changed_practice_fails() {
        let claim = claim();
        let token = issue(&key("k1"), &claim);
        assert_eq!(
            verify(&key("k2"), &token, Utc::now()),
            Err(TokenError::BadSignature)
        );
        let forged = token.replace("G85001", "G85002");
        assert_eq!(
            verify(&key("k1"), &forged, Utc::now()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expired_and_malformed_links_fail() {
        let claim = claim();
        let token = issue(&key("k1"), &claim);
        assert_eq!(
            verify(&key("k1"), &token, claim.expires + Duration::seconds(1)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&key("k1"), "a.b.c", Utc::now()),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify(&key("k1"), "a.b.c.!!!", Utc::now()),
            Err(TokenError::Malformed)
        );
    }
}
