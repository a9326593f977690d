//! A MESH API v2 client (NHS England's Message Exchange for Social care and
//! Health): the `NHSMESH` authorisation header, handshake, inbox listing,
//! download (chunked messages too), acknowledgement and sending (chunked
//! when large). Client TLS with the mailbox's certificate and MESH's CA.
//!
//! Errors carry HTTP statuses, MESH error codes and message ids, never a
//! message's content.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;
use std::time::Duration;

const MESH_V2: &str = "application/vnd.mesh.v2+json";
pub const AUTH_SCHEME: &str = "NHSMESH";
/// MESH accepts up to 100 MB per chunk; 20 MB keeps memory modest.
pub const DEFAULT_CHUNK_SIZE: usize = 20 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("MESH {what}: {kind}")]
    Transport {
        what: &'static str,
        kind: &'static str,
    },
    /// MESH answered with an error status; `code` is its `errorCode` if any.
    #[error("MESH {what}: HTTP {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        what: &'static str,
        status: StatusCode,
        code: Option<String>,
    },
    #[error("MESH {what}: {problem}")]
    Protocol { what: &'static str, problem: String },
    #[error("MESH client misconfigured: {0}")]
    Config(String),
}

impl MeshError {
    /// Refused credentials or certificate: retrying will not help.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Status { status, .. } if *status == StatusCode::FORBIDDEN || *status == StatusCode::UNAUTHORIZED)
    }
}

/// Client TLS for MESH: the mailbox's certificate and key, and the CA that
/// signed MESH's server certificate (NHS England issues both).
#[derive(Clone, Default)]
pub struct MeshTls {
    /// PEM with the client certificate (chain) and its private key.
    pub client_identity_pem: Option<SecretString>,
    /// PEM bundle of the CAs to trust instead of the public roots.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("client_identity", &self.client_identity_pem.is_some())
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

/// One mailbox's access to a MESH server.
#[derive(Clone)]
pub struct MeshConfig {
    /// e.g. `https://msg.intspineservices.nhs.uk` (no `/messageexchange`).
    pub base_url: String,
    pub mailbox_id: String,
    pub password: SecretString,
    /// The environment's shared secret, the HMAC key of the auth header.
    pub shared_key: SecretString,
    pub tls: MeshTls,
    pub request_timeout: Duration,
    pub chunk_size: usize,
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("base_url", &self.base_url)
            .field("mailbox_id", &self.mailbox_id)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl MeshConfig {
    pub fn new(
        base_url: impl Into<String>,
        mailbox_id: impl Into<String>,
        password: SecretString,
        shared_key: SecretString,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            mailbox_id: mailbox_id.into(),
            password,
            shared_key,
            tls: MeshTls::default(),
            request_timeout: Duration::from_secs(60),
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// The `Authorization` value for one request: `NHSMESH mailbox:nonce:
/// nonce_count:timestamp:hmac`, the HMAC-SHA256 (hex) keyed with the shared
/// secret over `mailbox:nonce:nonce_count:password:timestamp`.
pub fn authorization(
    mailbox_id: &str,
    password: &str,
    shared_key: &str,
    nonce: &str,
    nonce_count: u32,
    at: DateTime<Utc>,
) -> String {
    let timestamp = at.format("%Y%m%d%H%M").to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(shared_key.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("{mailbox_id}:{nonce}:{nonce_count}:{password}:{timestamp}").as_bytes());
    let digest = hex::encode(mac.finalize().into_bytes());
    format!("{AUTH_SCHEME} {mailbox_id}:{nonce}:{nonce_count}:{timestamp}:{digest}")
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub to: String,
    pub workflow_id: String,
    pub local_id: Option<String>,
    pub subject: Option<String>,
    pub file_name: Option<String>,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What MESH says about an inbox message (from its headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    pub message_id: String,
    pub from: String,
    pub workflow_id: String,
    pub local_id: Option<String>,
    pub subject: Option<String>,
    pub file_name: Option<String>,
    pub message_type: String,
}

/// A downloaded message: every chunk, in order, joined.
pub struct DownloadedMessage {
    pub info: MessageInfo,
    pub chunks: u32,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for DownloadedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadedMessage")
            .field("info", &self.info)
            .field("chunks", &self.chunks)
            .field("bytes", &self.body.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct InboxPage {
    messages: Vec<String>,
    #[serde(default)]
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Links {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct Sent {
    message_id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default, rename = "errorCode")]
    error_code: Option<String>,
}

#[derive(Clone)]
pub struct MeshClient {
    http: reqwest::Client,
    base: Url,
    mailbox_id: String,
    password: SecretString,
    shared_key: SecretString,
    chunk_size: usize,
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient")
            .field("base", &self.base.as_str())
            .field("mailbox_id", &self.mailbox_id)
            .finish_non_exhaustive()
    }
}

impl MeshClient {
    pub fn new(config: MeshConfig) -> Result<Self, MeshError> {
        let base = Url::parse(config.base_url.trim_end_matches('/'))
            .map_err(|e| MeshError::Config(format!("base_url: {e}")))?;
        let mailbox_id = config.mailbox_id.trim().to_uppercase();
        if mailbox_id.is_empty() || mailbox_id.contains([' ', ':', '/']) {
            return Err(MeshError::Config(
                "mailbox_id: must be a MESH mailbox id".into(),
            ));
        }
        if config.chunk_size == 0 {
            return Err(MeshError::Config("chunk_size: must be positive".into()));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(config.request_timeout)
            .user_agent(concat!("sms-engagement-hub/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.tls.client_identity_pem {
            let identity =
                reqwest::Identity::from_pem(pem.expose_secret().as_bytes()).map_err(|_| {
                    MeshError::Config("tls: client certificate or key unreadable".into())
                })?;
            builder = builder.identity(identity);
        }
        if let Some(pem) = &config.tls.ca_pem {
            let cas = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|_| MeshError::Config("tls: CA bundle unreadable".into()))?;
            if cas.is_empty() {
                return Err(MeshError::Config(
                    "tls: CA bundle holds no certificate".into(),
                ));
            }
            builder = builder.tls_certs_only(cas);
        }
        let http = builder
            .build()
            .map_err(|e| MeshError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            mailbox_id,
            password: config.password,
            shared_key: config.shared_key,
            chunk_size: config.chunk_size,
        })
    }

    pub fn mailbox_id(&self) -> &str {
        &self.mailbox_id
    }

    fn url(&self, path: &str) -> Result<Url, MeshError> {
        let text = format!(
            "{}/messageexchange/{}{path}",
            self.base.as_str().trim_end_matches('/'),
            self.mailbox_id
        );
        Url::parse(&text).map_err(|e| MeshError::Config(format!("URL: {e}")))
    }

    /// A fresh nonce per request, so the count is always 1.
    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let nonce = uuid::Uuid::new_v4().to_string();
        let auth = authorization(
            &self.mailbox_id,
            self.password.expose_secret(),
            self.shared_key.expose_secret(),
            &nonce,
            1,
            Utc::now(),
        );
        self.http
            .request(method, url)
            .header(AUTHORIZATION, auth)
            .header(ACCEPT, MESH_V2)
    }

    async fn send(
        &self,
        what: &'static str,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, MeshError> {
        let response = builder.send().await.map_err(|e| MeshError::Transport {
            what,
            kind: if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "failed"
            },
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        // MESH's error bodies carry codes and descriptions, no content;
        // only the code is kept.
        let code = response
            .json::<ErrorBody>()
            .await
            .ok()
            .and_then(|b| b.error_code)
            .filter(|c| c.len() <= 40);
        Err(MeshError::Status { what, status, code })
    }

    /// Validates the mailbox and its credentials (MESH asks for one a day).
    pub async fn handshake(&self) -> Result<(), MeshError> {
        let builder = self
            .request(reqwest::Method::POST, self.url("")?)
            .header(
                "mex-ClientVersion",
                concat!("sms-engagement-hub==", env!("CARGO_PKG_VERSION")),
            )
            .header("mex-OSName", std::env::consts::OS)
            .header("mex-OSVersion", "unknown")
            .header("mex-OSArchitecture", std::env::consts::ARCH);
        self.send("handshake", builder).await?;
        Ok(())
    }

    /// Ids of the messages waiting in the inbox (every page), optionally
    /// only those of one workflow.
    pub async fn list_inbox(&self, workflow_id: Option<&str>) -> Result<Vec<String>, MeshError> {
        let mut url = self.url("/inbox")?;
        if let Some(workflow) = workflow_id {
            url.query_pairs_mut()
                .append_pair("workflow_filter", workflow);
        }
        let mut ids = Vec::new();
        loop {
            let page: InboxPage = self
                .send("inbox", self.request(reqwest::Method::GET, url.clone()))
                .await?
                .json()
                .await
                .map_err(|_| MeshError::Protocol {
                    what: "inbox",
                    problem: "answer is not an inbox listing".into(),
                })?;
            ids.extend(page.messages);
            match page.links.and_then(|l| l.next) {
                Some(next) => {
                    url = self.base.join(&next).map_err(|_| MeshError::Protocol {
                        what: "inbox",
                        problem: "next link unreadable".into(),
                    })?;
                    if url.origin() != self.base.origin() {
                        return Err(MeshError::Protocol {
                            what: "inbox",
                            problem: "next link points at another server".into(),
                        });
                    }
                }
                None => return Ok(ids),
            }
        }
    }

    /// A message's metadata without its content (`HEAD`).
    pub async fn message_info(&self, message_id: &str) -> Result<MessageInfo, MeshError> {
        let url = self.url(&format!("/inbox/{}", path_segment(message_id)?))?;
        let response = self
            .send("message head", self.request(reqwest::Method::HEAD, url))
            .await?;
        Ok(message_info(message_id, response.headers()))
    }

    /// Downloads every chunk of a message. Compressed content is refused:
    /// the hub asks for uncompressed extracts.
    pub async fn download(&self, message_id: &str) -> Result<DownloadedMessage, MeshError> {
        let segment = path_segment(message_id)?;
        let response = self
            .send(
                "download",
                self.request(
                    reqwest::Method::GET,
                    self.url(&format!("/inbox/{segment}"))?,
                ),
            )
            .await?;
        let info = message_info(message_id, response.headers());
        let total = chunk_total(response.headers(), response.status())?;
        let mut body = read_chunk(response).await?;
        for chunk in 2..=total {
            let response = self
                .send(
                    "download chunk",
                    self.request(
                        reqwest::Method::GET,
                        self.url(&format!("/inbox/{segment}/{chunk}"))?,
                    ),
                )
                .await?;
            let range = header(response.headers(), "mex-chunk-range");
            if range.as_deref() != Some(&format!("{chunk}:{total}")) {
                return Err(MeshError::Protocol {
                    what: "download chunk",
                    problem: format!("chunk {chunk} of {total} came with another Mex-Chunk-Range"),
                });
            }
            body.extend(read_chunk(response).await?);
        }
        Ok(DownloadedMessage {
            info,
            chunks: total,
            body,
        })
    }

    /// Tells MESH the message was received: it leaves the inbox for good.
    pub async fn acknowledge(&self, message_id: &str) -> Result<(), MeshError> {
        let url = self.url(&format!(
            "/inbox/{}/status/acknowledged",
            path_segment(message_id)?
        ))?;
        self.send("acknowledge", self.request(reqwest::Method::PUT, url))
            .await?;
        Ok(())
    }

    /// Sends a message, in chunks of `chunk_size` when larger. Returns its id.
    pub async fn send_message(&self, message: &OutgoingMessage) -> Result<String, MeshError> {
        if message.body.is_empty() {
            return Err(MeshError::Config("a MESH message cannot be empty".into()));
        }
        let chunks: Vec<&[u8]> = message.body.chunks(self.chunk_size).collect();
        let total = chunks.len();
        let mut first = self
            .request(reqwest::Method::POST, self.url("/outbox")?)
            .header("mex-To", &message.to)
            .header("mex-WorkflowID", &message.workflow_id)
            .header("mex-Content-Type", &message.content_type)
            .header(CONTENT_TYPE, "application/octet-stream");
        if total > 1 {
            first = first.header("mex-Chunk-Range", format!("1:{total}"));
        }
        for (name, value) in [
            ("mex-LocalID", &message.local_id),
            ("mex-Subject", &message.subject),
            ("mex-FileName", &message.file_name),
        ] {
            if let Some(value) = value {
                first = first.header(name, value);
            }
        }
        let sent: Sent = self
            .send("send", first.body(chunks[0].to_vec()))
            .await?
            .json()
            .await
            .map_err(|_| MeshError::Protocol {
                what: "send",
                problem: "answer has no message_id".into(),
            })?;
        let segment = path_segment(&sent.message_id)?;
        for (index, chunk) in chunks.iter().enumerate().skip(1) {
            let number = index + 1;
            let builder = self
                .request(
                    reqwest::Method::POST,
                    self.url(&format!("/outbox/{segment}/{number}"))?,
                )
                .header("mex-Chunk-Range", format!("{number}:{total}"))
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(chunk.to_vec());
            self.send("send chunk", builder).await?;
        }
        Ok(sent.message_id)
    }
}

/// Message ids go into the path: only MESH's id characters are allowed.
fn path_segment(message_id: &str) -> Result<&str, MeshError> {
    if !message_id.is_empty()
        && message_id.len() <= 100
        && message_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(message_id)
    } else {
        Err(MeshError::Protocol {
            what: "message id",
            problem: "not a MESH message id".into(),
        })
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn message_info(message_id: &str, headers: &HeaderMap) -> MessageInfo {
    MessageInfo {
        message_id: header(headers, "mex-messageid").unwrap_or_else(|| message_id.to_string()),
        from: header(headers, "mex-from")
            .unwrap_or_default()
            .to_uppercase(),
        workflow_id: header(headers, "mex-workflowid").unwrap_or_default(),
        local_id: header(headers, "mex-localid"),
        subject: header(headers, "mex-subject"),
        file_name: header(headers, "mex-filename"),
        message_type: header(headers, "mex-messagetype").unwrap_or_default(),
    }
}

/// The number of chunks from the first chunk's answer: 206 with
/// `Mex-Chunk-Range: 1:N` for a chunked message, 200 for a whole one.
fn chunk_total(headers: &HeaderMap, status: StatusCode) -> Result<u32, MeshError> {
    let problem = |text: &str| MeshError::Protocol {
        what: "download",
        problem: text.into(),
    };
    let range = header(headers, "mex-chunk-range");
    let total = match range.as_deref().and_then(|r| r.split_once(':')) {
        Some((first, total)) => {
            if first.trim() != "1" {
                return Err(problem("first chunk is not chunk 1"));
            }
            total
                .trim()
                .parse::<u32>()
                .map_err(|_| problem("Mex-Chunk-Range unreadable"))?
        }
        None => 1,
    };
    match (status, total) {
        (StatusCode::OK, 1) | (StatusCode::OK, 0) => Ok(1),
        (StatusCode::PARTIAL_CONTENT, n) if n > 1 => Ok(n),
        _ => Err(problem("status and Mex-Chunk-Range disagree")),
    }
}

async fn read_chunk(response: reqwest::Response) -> Result<Vec<u8>, MeshError> {
    if header(response.headers(), CONTENT_ENCODING.as_str()).is_some_and(|e| e != "identity") {
        return Err(MeshError::Protocol {
            what: "download",
            problem: "compressed content is not accepted".into(),
        });
    }
    response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|_| MeshError::Transport {
            what: "download",
            kind: "failed while reading",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn authorization_matches_an_independent_hmac() {
        // Known answer computed with Python's hmac/hashlib (as mesh-sandbox
        // checks it) for these inputs at 2015-11-20 10:38 UTC.
        let at = Utc.with_ymd_and_hms(2015, 11, 20, 10, 38, 0).unwrap();
        let header = authorization(
            "TESTMB",
            "secret",
            "BackBone",
            "2c001608-5f09-4840-9611-bea43e666a30",
            1,
            at,
        );
        assert_eq!(
            header,
            "NHSMESH TESTMB:2c001608-5f09-4840-9611-bea43e666a30:1:201511201038:\
             53f699d7d6798e1709baacd497e36f907b08268c5dfcac1a19da167754d1cb91"
        );
    }

    #[test]
    fn chunk_total_needs_status_and_range_to_agree() {
        let mut headers = HeaderMap::new();
        assert_eq!(chunk_total(&headers, StatusCode::OK).unwrap(), 1);
        headers.insert("mex-chunk-range", "1:3".parse().unwrap());
        assert_eq!(
            chunk_total(&headers, StatusCode::PARTIAL_CONTENT).unwrap(),
            3
        );
        assert!(chunk_total(&headers, StatusCode::OK).is_err());
        headers.insert("mex-chunk-range", "2:3".parse().unwrap());
        assert!(chunk_total(&headers, StatusCode::PARTIAL_CONTENT).is_err());
    }

    #[test]
    fn message_ids_are_checked_before_they_reach_a_path() {
        assert!(path_segment("20210311101813838554_1B8F53").is_ok());
        assert!(path_segment("../admin").is_err());
        assert!(path_segment("").is_err());
    }
}
