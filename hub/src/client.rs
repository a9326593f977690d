//! The staff API client: credentials from the standard AWS chain
//! (environment, profiles, SSO, ...), every request SigV4-signed for
//! `execute-api`; what went wrong, and so the exit code.

use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// What went wrong, and so the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line, a local file or the configuration is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The hub refused the request: a 4xx (exit 3).
    #[error("{0}")]
    Refused(Refusal),
    /// The hub failed or could not be reached: a 5xx or a network error (exit 4).
    #[error("{0:#}")]
    Failure(anyhow::Error),
    /// The user answered no (exit 1).
    #[error("{0}")]
    Declined(String),
    /// Anything else, e.g. a demo whose report does not add up (exit 1).
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Declined(_) | Self::Other(_) => 1,
            Self::Usage(_) => 2,
            Self::Refused(_) => 3,
            Self::Failure(_) => 4,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        Self::Failure(error)
    }
}

/// A 4xx answer, with the hub's error body made readable.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub body: Value,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = self.body["message"].as_str().unwrap_or("refused");
        let code = self.body["code"].as_str().unwrap_or("error");
        write!(
            f,
            "the hub refused the request ({} {code}): {message}",
            self.status
        )?;
        if let Some(errors) = self.body["errors"].as_array() {
            for error in errors {
                write!(
                    f,
                    "\n  {}: {}",
                    error["field"].as_str().unwrap_or("?"),
                    error["message"].as_str().unwrap_or("")
                )?;
            }
        }
        Ok(())
    }
}

/// Where and how to reach the hub, resolved from flags and config file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL without a trailing slash.
    pub endpoint: String,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub timeout: Duration,
}

pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    credentials: SharedCredentialsProvider,
}

impl Client {
    pub async fn connect(settings: Settings) -> Result<Self, CliError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = settings.region {
            loader = loader.region(aws_config::Region::new(region));
        }
        let sdk = loader.load().await;
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "eu-west-2".to_string());
        let credentials = sdk.credentials_provider().ok_or_else(|| {
            CliError::usage("no AWS credentials provider is configured (see `aws configure`)")
        })?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            endpoint: settings.endpoint,
            region,
            credentials,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.send("POST", path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.send("PUT", path, Some(body)).await
    }

    /// A create that is safe to send again: the hub answers a replay with
    /// the first campaign.
    pub async fn post_once(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let key = uuid::Uuid::new_v4().to_string();
        self.send_with("POST", path, Some(body), &[("idempotency-key", &key)])
            .await
    }

    /// One signed request; the JSON answer on 2xx, else the error to report.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        self.send_with(method, path, body, &[]).await
    }

    /// [`Self::send`] with more (signed) headers.
    pub async fn send_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.endpoint);
        let body = body.map(Value::to_string).unwrap_or_default().into_bytes();
        let request = self.signed(method, &url, body, extra).await?;
        let response = self.http.execute(request).await.map_err(|e| {
            CliError::Failure(anyhow::anyhow!(
                "cannot reach the hub at {}: {e}",
                self.endpoint
            ))
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CliError::Failure(anyhow::anyhow!("the hub's answer was cut off: {e}")))?;
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        match (status, json) {
            (200..=299, Some(json)) => Ok(json),
            (200..=299, None) => Err(CliError::Failure(anyhow::anyhow!(
                "the hub answered {status} without JSON"
            ))),
            (400..=499, json) => Err(CliError::Refused(Refusal {
                status,
                body: json.unwrap_or_else(|| {
                    serde_json::json!({
                        "code": "refused",
                        "message": String::from_utf8_lossy(&bytes).chars().take(300).collect::<String>(),
                    })
                }),
            })),
            (_, json) => {
                let message = json
                    .as_ref()
                    .and_then(|j| j["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
                Err(CliError::Failure(anyhow::anyhow!(
                    "the hub failed ({status}): {message}"
                )))
            }
        }
    }

    async fn signed(
        &self,
        method: &str,
        url: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Result<reqwest::Request, CliError> {
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| CliError::usage(format!("no AWS credentials: {e}")))?;
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(crate::sigv4::SERVICE)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot sign the request: {e}")))?
            .into();
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(extra);
        let signable = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| CliError::usage(format!("cannot sign a request to {url}: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| CliError::usage(format!("cannot sign a request to {url}: {e}")))?
            .into_parts();
        let mut request = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json");
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let mut request = request
            .body(body)
            .map_err(|e| CliError::usage(format!("bad request to {url}: {e}")))?;
        instructions.apply_to_request_http1x(&mut request);
        reqwest::Request::try_from(request)
            .map_err(|e| CliError::usage(format!("bad request to {url}: {e}")))
    }
}
