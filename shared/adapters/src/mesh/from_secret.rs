//! The hub's MESH mailbox on Lambda: its credentials come from one secret,
//! read the first time a MESH practice is reached (only extract and
//! writeback reach practices, and only their roles may read GP secrets).
//!
//! The secret: `{"base_url", "mailbox_id", "password", "shared_key",
//! "client_cert_pem", "client_key_pem", "ca_pem"}`; the three PEMs are
//! optional together with an `http` base URL only on a loopback sandbox.

use super::{MeshClient, MeshConfig, MeshGpConfig, MeshGpConnector, MeshTls};
use async_trait::async_trait;
use futures::stream::BoxStream;
use hub_core::domain::GpPatient;
use hub_core::ports::{
    GpConnector, GpError, Practice, Secrets, SecretsError, WritebackEntry, WritebackResult,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshSecretJson {
    base_url: String,
    mailbox_id: String,
    password: SecretString,
    shared_key: SecretString,
    #[serde(default)]
    client_cert_pem: Option<String>,
    #[serde(default)]
    client_key_pem: Option<SecretString>,
    #[serde(default)]
    ca_pem: Option<String>,
}

/// Why the MESH secret cannot be used: names the field, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct MeshSecretError {
    pub field: &'static str,
    pub problem: String,
}

fn problem(field: &'static str, problem: impl Into<String>) -> MeshSecretError {
    MeshSecretError {
        field,
        problem: problem.into(),
    }
}

/// Reads the MESH secret into the client's configuration.
pub fn mesh_config_from_secret(json: &str) -> Result<MeshConfig, MeshSecretError> {
    let secret: MeshSecretJson = serde_json::from_str(json)
        .map_err(|e| problem("secret", crate::secret_json::describe_error(&e)))?;
    if secret.mailbox_id.is_empty()
        || secret.mailbox_id.len() > 20
        || !secret.mailbox_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(problem("mailbox_id", "must be 1-20 letters and digits"));
    }
    for (field, value) in [
        ("password", &secret.password),
        ("shared_key", &secret.shared_key),
    ] {
        if value.expose_secret().is_empty() {
            return Err(problem(field, "is empty"));
        }
    }
    let url =
        reqwest::Url::parse(&secret.base_url).map_err(|_| problem("base_url", "is not a URL"))?;
    let loopback = url.host_str().is_some_and(|host| {
        host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    let tls = match (secret.client_cert_pem, secret.client_key_pem) {
        (Some(cert), Some(key)) => {
            if !cert.contains("-----BEGIN CERTIFICATE-----") {
                return Err(problem("client_cert_pem", "holds no PEM certificate"));
            }
            let key_text = key.expose_secret();
            if !(key_text.contains("-----BEGIN ") && key_text.contains("PRIVATE KEY-----")) {
                return Err(problem("client_key_pem", "holds no PEM private key"));
            }
            MeshTls {
                client_identity_pem: Some(SecretString::from(format!(
                    "{}\n{}",
                    cert.trim_end(),
                    key.expose_secret()
                ))),
                ca_pem: secret.ca_pem,
            }
        }
        (None, None) if loopback => MeshTls {
            client_identity_pem: None,
            ca_pem: secret.ca_pem,
        },
        (None, None) => {
            return Err(problem(
                "client_cert_pem",
                "MESH needs the mailbox's client certificate and key",
            ))
        }
        (Some(_), None) => return Err(problem("client_key_pem", "is missing")),
        (None, Some(_)) => return Err(problem("client_cert_pem", "is missing")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(problem("base_url", "must be https")),
    }
    let mut config = MeshConfig::new(
        secret.base_url.trim_end_matches('/'),
        secret.mailbox_id,
        secret.password,
        secret.shared_key,
    );
    config.tls = tls;
    Ok(config)
}

/// A [`MeshGpConnector`] built from the secret `secret_id` when first
/// needed and kept; a failed read is not kept, so the next job tries again.
pub struct LazyMeshGpConnector {
    secrets: Arc<dyn Secrets>,
    secret_id: String,
    config: MeshGpConfig,
    built: tokio::sync::OnceCell<MeshGpConnector>,
}

impl LazyMeshGpConnector {
    pub fn new(secrets: Arc<dyn Secrets>, secret_id: impl Into<String>) -> Self {
        Self {
            secrets,
            secret_id: secret_id.into(),
            config: MeshGpConfig::default(),
            built: tokio::sync::OnceCell::new(),
        }
    }

    async fn connector(&self, practice: &Practice) -> Result<&MeshGpConnector, GpError> {
        let ods = &practice.ods;
        let id = &self.secret_id;
        self.built
            .get_or_try_init(|| async {
                let whole = self.secrets.secret(id).await.map_err(|error| match error {
                    SecretsError::Unavailable(_) => {
                        GpError::Unavailable(format!("{ods}: reading the MESH secret {id}"))
                    }
                    _ => GpError::Misconfigured(format!(
                        "{ods}: the MESH secret {id} cannot be read"
                    )),
                })?;
                let config = mesh_config_from_secret(whole.expose_secret()).map_err(|e| {
                    GpError::Misconfigured(format!("{ods}: the MESH secret {id}: {e}"))
                })?;
                let client = MeshClient::new(config)
                    .map_err(|e| GpError::Misconfigured(format!("{ods}: the MESH client: {e}")))?;
                Ok(MeshGpConnector::new(client, self.config.clone()))
            })
            .await
    }
}

#[async_trait]
impl GpConnector for LazyMeshGpConnector {
    async fn extract(
        &self,
        practice: &Practice,
    ) -> Result<BoxStream<'static, Result<GpPatient, GpError>>, GpError> {
        self.connector(practice).await?.extract(practice).await
    }

    async fn write_back(
        &self,
        practice: &Practice,
        entries: &[WritebackEntry],
    ) -> Result<Vec<WritebackResult>, GpError> {
        self.connector(practice)
            .await?
            .write_back(practice, entries)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(extra: &str) -> String {
        format!(
            r#"{{"base_url":"https://msg.intspineservices.nhs.uk","mailbox_id":"X26HC001","password":"pw-not-real","shared_key":"key-not-real"{extra}}}"#
        )
    }

    #[test]
    fn a_mesh_secret_is_read_and_its_problems_named_by_field() {
        let tls = r#","client_cert_pem":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n","client_key_pem":"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n","ca_pem":"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n""#;
        let config = mesh_config_from_secret(&secret(tls)).unwrap();
        assert_eq!(config.mailbox_id, "X26HC001");
        assert!(config.tls.client_identity_pem.is_some() && config.tls.ca_pem.is_some());
        let cases = [
            (secret(""), "client_cert_pem"),
            (secret(tls).replace("X26HC001", "X26-HC"), "mailbox_id"),
            (secret(tls).replace("https://msg", "http://msg"), "base_url"),
            (secret(tls).replace("\"password\"", "\"pasword\""), "secret"),
            (
                secret(tls).replace("-----BEGIN PRIVATE KEY-----", ""),
                "client_key_pem",
            ),
        ];
        for (json, field) in cases {
            let error = mesh_config_from_secret(&json).unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert!(!error.to_string().contains("pw-not-real"), "{error}");
        }
        // A loopback sandbox may go without TLS.
        let sandbox = secret("").replace(
            "https://msg.intspineservices.nhs.uk",
            "http://127.0.0.1:8700",
        );
        assert!(mesh_config_from_secret(&sandbox).is_ok());
    }
}
