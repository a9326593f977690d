//! Secrets from AWS Secrets Manager, cached for the life of the process
//! (one Lambda execution environment).
//!
//! A value is a [`SecretString`]: its `Debug` is redacted and nothing here
//! logs it. Secrets the hub creates hold JSON objects (see `infra/DEPLOY.md`);
//! [`Secrets::secret_field`] reads one field of one.

use super::fault::{Fault, FaultKind};
use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

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

/// [`Secrets`] on Secrets Manager. Each id is fetched once; concurrent
/// first reads share one request. A failed fetch is not cached.
#[derive(Debug)]
pub struct SecretsManagerSecrets {
    client: Client,
    cache: Mutex<HashMap<String, Arc<OnceCell<SecretString>>>>,
}

impl SecretsManagerSecrets {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn fetch(&self, id: &str) -> Result<SecretString, SecretsError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|err| {
                // Secrets Manager messages name the secret, never its value.
                let fault = Fault::from_sdk("GetSecretValue", &err, true);
                match fault.kind {
                    FaultKind::NotFound => SecretsError::NotFound(id.to_string()),
                    FaultKind::Transient => SecretsError::Unavailable(fault.to_string()),
                    _ => SecretsError::Unexpected(
                        anyhow::Error::new(fault).context(format!("reading secret {id}")),
                    ),
                }
            })?;
        match out.secret_string {
            Some(text) => Ok(SecretString::from(text)),
            None => Err(SecretsError::Malformed {
                id: id.to_string(),
                reason: "it has no string value".into(),
            }),
        }
    }
}

#[async_trait]
impl Secrets for SecretsManagerSecrets {
    async fn secret(&self, id: &str) -> Result<SecretString, SecretsError> {
        let cell = {
            let mut cache = self
                .cache
                .lock()
                .map_err(|_| anyhow::anyhow!("the secrets cache lock is poisoned"))?;
            cache.entry(id.to_string()).or_default().clone()
        };
        let value = cell.get_or_try_init(|| self.fetch(id)).await?;
        Ok(value.clone())
    }
}
