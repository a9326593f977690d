//! Where the hub's secrets come from (Secrets Manager on AWS). A value is a
//! [`SecretString`]: its `Debug` is redacted and nothing logs it. Secrets the
//! hub creates hold JSON objects (see `infra/DEPLOY.md`).

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secret not found: {0}")]
    NotFound(String),
    /// Throttling or a transient fault: retry later.
    #[error("secrets unavailable: {0}")]
    Unavailable(String),
    /// The secret exists but is not what the hub expects (no string value,
    /// not a JSON object, a missing field). Never says what it holds.
    #[error("secret {id} is malformed: {reason}")]
    Malformed { id: String, reason: String },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Where the hub's secrets come from.
#[async_trait]
pub trait Secrets: Send + Sync {
    /// The secret's string value, by name or ARN.
    async fn secret(&self, id: &str) -> Result<SecretString, SecretsError>;

    /// One string field of a secret that holds a JSON object.
    async fn secret_field(&self, id: &str, field: &str) -> Result<SecretString, SecretsError> {
        let whole = self.secret(id).await?;
        let malformed = |reason: String| SecretsError::Malformed {
            id: id.to_string(),
            reason,
        };
        let value: serde_json::Value = serde_json::from_str(whole.expose_secret())
            .map_err(|_| malformed("not a JSON object".into()))?;
        match value.get(field) {
            Some(serde_json::Value::String(text)) => Ok(SecretString::from(text.as_str())),
            Some(_) => Err(malformed(format!("field `{field}` is not a string"))),
            None => Err(malformed(format!("field `{field}` is missing"))),
        }
    }
}
