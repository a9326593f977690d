//! Secrets from AWS Secrets Manager, cached for the life of the process
//! (one Lambda execution environment).
//!
//! A value is a [`SecretString`]: its `Debug` is redacted and nothing here
//! logs it. Secrets the hub creates hold JSON objects (see `infra/DEPLOY.md`);
//! [`Secrets::secret_field`] reads one field of one.

use super::fault::{Fault, FaultKind};
use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
pub use hub_core::ports::{Secrets, SecretsError};
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

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
