//! Notify API keys and the per-request JWT they sign.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Length of a UUID in its hyphenated text form.
const UUID_LEN: usize = 36;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyConfigError {
    /// Never carries the key itself, only what is wrong with its shape.
    #[error("Notify API key is malformed: {0}")]
    BadApiKey(&'static str),
    #[error("Notify base URL is not usable: {0}")]
    BadBaseUrl(String),
    #[error("Notify template id for {0} is not a UUID")]
    BadTemplateId(&'static str),
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

/// A parsed API key `{key_name}-{service_id}-{secret}`: the service id is
/// the JWT issuer, the secret signs it and never leaves this type.
#[derive(Clone)]
pub struct NotifyApiKey {
    service_id: String,
    secret: SecretString,
}

impl std::fmt::Debug for NotifyApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyApiKey")
            .field("service_id", &self.service_id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl NotifyApiKey {
    pub fn parse(key: &SecretString) -> Result<Self, NotifyConfigError> {
        let key = key.expose_secret().trim();
        // The name may itself hold hyphens: the two UUIDs are the last 73
        // characters, as Notify's own clients read them.
        if !key.is_ascii() {
            return Err(NotifyConfigError::BadApiKey("not ASCII"));
        }
        if key.len() < 2 * UUID_LEN + 2 {
            return Err(NotifyConfigError::BadApiKey(
                "too short for {name}-{service id}-{secret}",
            ));
        }
        let secret = &key[key.len() - UUID_LEN..];
        let service_id = &key[key.len() - 2 * UUID_LEN - 1..key.len() - UUID_LEN - 1];
        let separators = (
            key.as_bytes()[key.len() - UUID_LEN - 1],
            key.as_bytes()[key.len() - 2 * UUID_LEN - 2],
        );
        if separators != (b'-', b'-') {
            return Err(NotifyConfigError::BadApiKey(
                "expected {name}-{service id}-{secret}",
            ));
        }
        if uuid::Uuid::parse_str(service_id).is_err() {
            return Err(NotifyConfigError::BadApiKey("service id is not a UUID"));
        }
        if uuid::Uuid::parse_str(secret).is_err() {
            return Err(NotifyConfigError::BadApiKey("secret is not a UUID"));
        }
        Ok(Self {
            service_id: service_id.to_ascii_lowercase(),
            secret: SecretString::from(secret.to_string()),
        })
    }

    pub fn service_id(&self) -> &str {
        &self.service_id
    }

    /// A bearer token for one request: HS256, `iss` = service id, `iat` =
    /// `issued_at` (Unix seconds; Notify allows 30 s of clock skew).
    pub fn token(&self, issued_at: i64) -> SecretString {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"HS256"}"#);
        let claims = serde_json::json!({ "iss": self.service_id, "iat": issued_at });
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let signature = hmac_sha256(self.secret.expose_secret().as_bytes(), &signing_input);
        SecretString::from(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

fn hmac_sha256(key: &[u8], message: &str) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "26785a09-ab16-4eb0-8407-a37497a57506";
    const SECRET: &str = "3d844edf-8d35-48ac-975b-e847b4f122b0";

    fn key(text: &str) -> SecretString {
        SecretString::from(text.to_string())
    }

    #[test]
    fn parses_names_with_hyphens() {
        let parsed = NotifyApiKey::parse(&key(&format!("my-live-key-{SERVICE}-{SECRET}"))).unwrap();
        assert_eq!(parsed.service_id(), SERVICE);
        assert_eq!(parsed.secret.expose_secret(), SECRET);
        assert!(!format!("{parsed:?}").contains(SECRET));
    }

    #[test]
    fn bad_keys_are_clear_errors_that_never_echo_the_secret() {
        for bad in [
            String::new(),
            "short".to_string(),
            format!("name-{SERVICE}{SECRET}x"),
            format!("name-not-a-uuid-at-all-but-long-enough-xx-{SECRET}"),
            format!("name-{SERVICE}-{}", &SECRET.replace('3', "z")),
            format!("name-{SERVICE}-{SECRET}é"),
        ] {
            let error = NotifyApiKey::parse(&key(&bad)).unwrap_err();
            let text = error.to_string();
            assert!(text.starts_with("Notify API key is malformed"), "{text}");
            assert!(!text.contains(SECRET) && !text.contains(SERVICE), "{text}");
        }
    }

    #[test]
    fn token_is_hs256_with_issuer_and_issued_at() {
        let parsed = NotifyApiKey::parse(&key(&format!("k-{SERVICE}-{SECRET}"))).unwrap();
        let token = parsed.token(1_700_000_000);
        let parts: Vec<&str> = token.expose_secret().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "HS256");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], SERVICE);
        assert_eq!(claims["iat"], 1_700_000_000);
    }
}
