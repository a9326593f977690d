//! FHIR R4 UK Core GP systems: extraction of a practice's registered list
//! (Bulk Data `$export`, or a paged `Patient` search) streamed in bounded
//! memory, and write-back of sent messages as `Communication` resources.
//!
//! Errors carry HTTP statuses and positions, never a value from a record.

mod communication;
mod ndjson;
mod oauth;
mod patient;

pub use communication::{
    entry_results, percent_encode, writeback_bundle, COMMUNICATION_CATEGORY_SYSTEM,
    DEFAULT_REFERENCE_SYSTEM, PARTICIPATION_MODE_SYSTEM,
};
pub use ndjson::{Line, LineSplitter, MAX_LINE_BYTES};
pub use oauth::{
    new_es384_key_pem, ClientCredentials, CredentialError, SigningAlg, CLIENT_ASSERTION_TYPE,
    MAX_ASSERTION_LIFETIME,
};
pub use patient::{
    parse_patient, patient_from_value, PatientError, CONTACT_PREFERENCE_URL, NHS_NUMBER_SYSTEM,
    ODS_SYSTEM, PREFERRED_CONTACT_METHOD_SYSTEM,
};

use async_trait::async_trait;
use chrono::Utc;
use futures::stream::{self, BoxStream, StreamExt};
use hub_core::domain::{GpPatient, OdsCode};
use hub_core::ports::{
    GpConnection, GpConnector, GpError, PatientSearch, Practice, Secrets, SecretsError,
    WritebackEntry, WritebackResult,
};
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LOCATION, CONTENT_TYPE, RETRY_AFTER,
};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const FHIR_JSON: &str = "application/fhir+json";
const FHIR_NDJSON: &str = "application/fhir+ndjson";
/// Records between explicit yields to the runtime while parsing.
const YIELD_EVERY: u64 = 500;
/// The Patient elements the hub reads (`_elements` of the search): no
/// next of kin, no contacts beyond the patient's own.
pub const PATIENT_ELEMENTS: &str =
    "identifier,active,name,telecom,address,birthDate,deceased,extension";

#[derive(Debug, Clone)]
pub struct FhirConfig {
    /// Identifier system of the hub's message references (write-back).
    pub reference_system: String,
    /// `_count` of the paged search.
    pub page_size: u32,
    /// Whole-request timeout of everything but the NDJSON downloads.
    pub request_timeout: Duration,
    /// Longest silence tolerated on any connection (guards the downloads).
    pub read_timeout: Duration,
    /// Give up on an `$export` still running after this long (and cancel it).
    pub export_timeout: Duration,
    /// Poll interval when the server sends no `Retry-After`.
    pub default_poll: Duration,
    /// Bounds on any poll interval, whatever the server asks.
    pub min_poll: Duration,
    pub max_poll: Duration,
    /// Times one request answered 429 or 503 is tried again (after the
    /// server's `Retry-After`, within the poll bounds) before the practice
    /// is retried as a whole.
    pub busy_retries: u32,
}

impl Default for FhirConfig {
    fn default() -> Self {
        Self {
            reference_system: DEFAULT_REFERENCE_SYSTEM.into(),
            page_size: 500,
            request_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            export_timeout: Duration::from_secs(10 * 60),
            default_poll: Duration::from_secs(2),
            min_poll: Duration::from_millis(100),
            max_poll: Duration::from_secs(60),
            busy_retries: 5,
        }
    }
}

/// Reaches each practice's FHIR server as its [`GpConnection::Fhir`] says.
/// One instance serves every practice; credentials are keyed by the
/// connection's `secret` name: bearer tokens given up front
/// (`with_credential`), or read from a secrets source the first time a
/// practice needs one (`with_credential_source`), then kept for the
/// process's life. The secret is a static token, `{"token"}`, or a SMART
/// Backend Services client, `{"client_id", "token_url", "private_key_pem",
/// "kid", "alg", "scope"}`, whose access tokens are fetched and renewed as
/// they expire (`oauth.rs`).
#[derive(Clone)]
pub struct FhirGpConnector {
    http: reqwest::Client,
    config: FhirConfig,
    tokens: HashMap<String, SecretString>,
    credential_source: Option<Arc<dyn Secrets>>,
    fetched: Arc<tokio::sync::Mutex<HashMap<String, Auth>>>,
}

/// How requests to one practice's server are authorised.
#[derive(Clone)]
enum Auth {
    None,
    Bearer(SecretString),
    Client(Arc<oauth::TokenSource>),
}

impl Auth {
    /// The token to send now, if any.
    async fn bearer(&self, ods: &str) -> Result<Option<SecretString>, GpError> {
        match self {
            Self::None => Ok(None),
            Self::Bearer(token) => Ok(Some(token.clone())),
            Self::Client(source) => source.token(ods).await.map(Some),
        }
    }

    /// After a 401 for `used`: a new token to try once more, where one can
    /// be had (a static token cannot be renewed).
    async fn renewed(
        &self,
        ods: &str,
        used: Option<&SecretString>,
    ) -> Result<Option<SecretString>, GpError> {
        match (self, used) {
            (Self::Client(source), Some(used)) => source.renewed(ods, used).await.map(Some),
            _ => Ok(None),
        }
    }
}

fn with_bearer(
    request: reqwest::RequestBuilder,
    token: Option<&SecretString>,
) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.header(AUTHORIZATION, format!("Bearer {}", token.expose_secret())),
        None => request,
    }
}

/// Sends a request with the practice's current token; a 401 with a token
/// that can be renewed (it expired, or was revoked) is sent once more with
/// a new one, so a long extraction outlives its tokens.
async fn send_authorised(
    auth: &Auth,
    ods: &str,
    what: &str,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, GpError> {
    let token = auth.bearer(ods).await?;
    let response = with_bearer(build(), token.as_ref())
        .send()
        .await
        .map_err(|e| transport(ods, what, &e))?;
    if response.status() != StatusCode::UNAUTHORIZED {
        return Ok(response);
    }
    let Some(fresh) = auth.renewed(ods, token.as_ref()).await? else {
        return Ok(response);
    };
    tracing::info!(
        ods,
        what,
        "GP system refused the access token; sent again with a new one"
    );
    with_bearer(build(), Some(&fresh))
        .send()
        .await
        .map_err(|e| transport(ods, what, &e))
}

impl std::fmt::Debug for FhirGpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirGpConnector")
            .field("config", &self.config)
            .field("credentials", &self.tokens.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One practice's server, resolved from its connection.
#[derive(Clone)]
struct Server {
    base: Url,
    /// The base the server writes in its links, when not `base`.
    link_base: Option<String>,
    bulk_export: bool,
    patient_search: PatientSearch,
    auth: Auth,
}

impl Server {
    /// A URL the server gave us, read against the base we call: relative
    /// links are joined to it, and links under `link_base` (the server's
    /// own idea of its address, behind a proxy) are moved onto it. Our
    /// token goes only to the practice's own server.
    fn follow(&self, ods: &str, what: &str, link: &str) -> Result<Url, GpError> {
        let rebased = self
            .link_base
            .as_deref()
            .map(|internal| internal.trim_end_matches('/'))
            .and_then(|internal| link.strip_prefix(internal))
            .filter(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
            .map(|rest| format!("{}{rest}", self.base.as_str().trim_end_matches('/')));
        let url = self
            .base
            .join(rebased.as_deref().unwrap_or(link))
            .map_err(|_| GpError::Unavailable(format!("{ods}: {what} unreadable")))?;
        if !same_origin(&url, &self.base) {
            return Err(GpError::Misconfigured(format!(
                "{ods}: {what} leaves the server (set the connection's link_base \
                 if it sits behind a proxy)"
            )));
        }
        Ok(url)
    }
}

impl FhirGpConnector {
    pub fn new(config: FhirConfig) -> Result<Self, GpError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(config.read_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("sms-engagement-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GpError::Misconfigured(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            config,
            tokens: HashMap::new(),
            credential_source: None,
            fetched: Arc::default(),
        })
    }

    /// The bearer token for connections whose `secret` is `name`.
    pub fn with_credential(mut self, name: impl Into<String>, token: SecretString) -> Self {
        self.tokens.insert(name.into(), token);
        self
    }

    /// Reads a connection's `secret` from `secrets` when first needed
    /// (Secrets Manager on Lambda: only extract and writeback may read the
    /// GP secrets).
    pub fn with_credential_source(mut self, secrets: Arc<dyn Secrets>) -> Self {
        self.credential_source = Some(secrets);
        self
    }

    /// The credential named `name`: given, read before, or read now.
    /// Errors name the practice and the secret, never its value.
    async fn credential(&self, ods: &OdsCode, name: &str) -> Result<Auth, GpError> {
        if let Some(token) = self.tokens.get(name) {
            return Ok(Auth::Bearer(token.clone()));
        }
        let Some(source) = &self.credential_source else {
            return Err(GpError::Misconfigured(format!(
                "{ods}: no credential named {name}"
            )));
        };
        let mut fetched = self.fetched.lock().await;
        if let Some(auth) = fetched.get(name) {
            return Ok(auth.clone());
        }
        let whole = source.secret(name).await.map_err(|error| match error {
            SecretsError::Unavailable(_) => {
                GpError::Unavailable(format!("{ods}: reading the GP credential {name}"))
            }
            SecretsError::NotFound(_) => {
                GpError::Misconfigured(format!("{ods}: no GP credential secret {name}"))
            }
            SecretsError::Malformed { .. } | SecretsError::Unexpected(_) => GpError::Misconfigured(
                format!("{ods}: the GP credential secret {name} cannot be read"),
            ),
        })?;
        let shape = |problem: &str| {
            GpError::Misconfigured(format!("{ods}: the GP credential secret {name} {problem}"))
        };
        let value: serde_json::Value = serde_json::from_str(whole.expose_secret())
            .map_err(|_| shape("is not a JSON object"))?;
        let auth = if value.get("client_id").is_some() {
            let credentials = ClientCredentials::parse(whole.expose_secret())
                .map_err(|e| shape(&format!("(OAuth client): {e}")))?;
            Auth::Client(Arc::new(oauth::TokenSource::new(
                self.http.clone(),
                credentials,
                name,
                self.config.request_timeout,
            )))
        } else {
            match value.get("token") {
                Some(serde_json::Value::String(token)) => {
                    Auth::Bearer(SecretString::from(token.as_str()))
                }
                _ => {
                    return Err(shape(
                        "is neither {\"token\"} nor an OAuth client {\"client_id\", ...}",
                    ))
                }
            }
        };
        fetched.insert(name.to_string(), auth.clone());
        Ok(auth)
    }

    async fn server(&self, practice: &Practice) -> Result<Server, GpError> {
        let GpConnection::Fhir {
            base_url,
            bulk_export,
            secret,
            patient_search,
            link_base,
        } = &practice.connection
        else {
            return Err(GpError::Misconfigured(format!(
                "{} has no FHIR connection",
                practice.ods
            )));
        };
        let base = Url::parse(base_url.trim_end_matches('/'))
            .map_err(|e| GpError::Misconfigured(format!("{}: base URL: {e}", practice.ods)))?;
        let auth = match secret {
            None => Auth::None,
            Some(name) => self.credential(&practice.ods, name).await?,
        };
        Ok(Server {
            base,
            link_base: link_base.clone(),
            bulk_export: *bulk_export,
            patient_search: *patient_search,
            auth,
        })
    }

    async fn export(
        &self,
        practice: &Practice,
        server: Server,
    ) -> Result<BoxStream<'static, Result<GpPatient, GpError>>, GpError> {
        let ods = &practice.ods;
        let mut kickoff = join(&server.base, &format!("Group/{ods}/$export"))?;
        kickoff.query_pairs_mut().append_pair("_type", "Patient");
        let response = busy_retry(
            &self.config,
            ods.as_str(),
            "export kick-off",
            &server.auth,
            || {
                self.http
                    .get(kickoff.clone())
                    .header(ACCEPT, FHIR_JSON)
                    .header("Prefer", "respond-async")
                    .timeout(self.config.request_timeout)
            },
        )
        .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error(ods, "export kick-off", response.status()));
        }
        let location = response
            .headers()
            .get(CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                GpError::Unavailable(format!("{ods}: export accepted without a status URL"))
            })?;
        let status_url = server.follow(ods.as_str(), "export status URL", location)?;
        let manifest = self.poll(practice, &server, status_url).await?;
        let mut files = VecDeque::new();
        for output in manifest.output.iter().filter(|o| o.type_ == "Patient") {
            let url = server.follow(ods.as_str(), "export file URL", &output.url)?;
            files.push_back((FileKind::Patients, url));
        }
        // Records the server could not export are reported, not lost.
        for error in &manifest.error {
            let url = server.follow(ods.as_str(), "export error file URL", &error.url)?;
            files.push_back((FileKind::Errors, url));
        }
        tracing::info!(
            ods = %ods,
            files = manifest.output.len(),
            error_files = manifest.error.len(),
            "export ready"
        );
        let auth = if manifest.requires_access_token.unwrap_or(true) {
            server.auth
        } else {
            Auth::None
        };
        let reader = ExportReader {
            http: self.http.clone(),
            config: self.config.clone(),
            auth,
            ods: ods.to_string(),
            files,
            current: None,
            file_number: 0,
            read: 0,
        };
        Ok(stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        })
        .boxed())
    }

    /// Polls the status URL, honouring `Retry-After`, until the manifest.
    async fn poll(
        &self,
        practice: &Practice,
        server: &Server,
        status_url: Url,
    ) -> Result<Manifest, GpError> {
        let ods = &practice.ods;
        let deadline = Instant::now() + self.config.export_timeout;
        let mut polls = 0u32;
        loop {
            let response = send_authorised(&server.auth, ods.as_str(), "export status", || {
                self.http
                    .get(status_url.clone())
                    .header(ACCEPT, "application/json")
                    .timeout(self.config.request_timeout)
            })
            .await?;
            polls += 1;
            let status = response.status();
            match status {
                StatusCode::OK => {
                    let manifest: Manifest = response.json().await.map_err(|_| {
                        GpError::Unavailable(format!("{ods}: export manifest unreadable"))
                    })?;
                    tracing::debug!(ods = %ods, polls, "export complete");
                    return Ok(manifest);
                }
                StatusCode::ACCEPTED
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::SERVICE_UNAVAILABLE => {
                    let wait = retry_after(response.headers())
                        .unwrap_or(self.config.default_poll)
                        .clamp(self.config.min_poll, self.config.max_poll);
                    if Instant::now() + wait > deadline {
                        self.cancel(server, status_url).await;
                        return Err(GpError::Unavailable(format!(
                            "{ods}: export not ready after {polls} polls; cancelled"
                        )));
                    }
                    tokio::time::sleep(wait).await;
                }
                other => return Err(status_error(ods, "export", other)),
            }
        }
    }

    /// Best effort: tell the server we no longer want the export.
    async fn cancel(&self, server: &Server, status_url: Url) {
        let _ = send_authorised(&server.auth, "", "export cancel", || {
            self.http
                .delete(status_url.clone())
                .timeout(self.config.request_timeout)
        })
        .await;
    }

    /// Fetches the first page before returning, so an outage is an error
    /// of the call (nothing read) rather than of the stream.
    async fn search(
        &self,
        practice: &Practice,
        server: Server,
    ) -> Result<BoxStream<'static, Result<GpPatient, GpError>>, GpError> {
        let mut first = join(&server.base, "Patient")?;
        let ods = practice.ods.as_str();
        match server.patient_search {
            PatientSearch::Identifier => first.query_pairs_mut().append_pair(
                "general-practitioner:identifier",
                &format!("{ODS_SYSTEM}|{ods}"),
            ),
            PatientSearch::Reference => first
                .query_pairs_mut()
                .append_pair("general-practitioner", &format!("Organization/{ods}")),
        };
        first
            .query_pairs_mut()
            .append_pair("_elements", PATIENT_ELEMENTS)
            .append_pair("_count", &self.config.page_size.to_string());
        let mut reader = SearchReader {
            http: self.http.clone(),
            config: self.config.clone(),
            server,
            ods: practice.ods.to_string(),
            next: None,
            page: VecDeque::new(),
            pages: 0,
            read: 0,
        };
        reader.fetch(first).await?;
        Ok(stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        })
        .boxed())
    }

    /// Posts one transaction for `entries`.
    async fn transaction(
        &self,
        practice: &Practice,
        server: &Server,
        entries: &[WritebackEntry],
    ) -> Result<Vec<WritebackResult>, Transaction> {
        let ods = &practice.ods;
        let bundle = writeback_bundle(entries, &self.config.reference_system);
        let body = serde_json::to_vec(&bundle)
            .map_err(|_| Transaction::Failed(GpError::Misconfigured("bundle".into())))?;
        let response = send_authorised(&server.auth, ods.as_str(), "write-back", || {
            self.http
                .post(server.base.clone())
                .header(CONTENT_TYPE, FHIR_JSON)
                .header(ACCEPT, FHIR_JSON)
                .timeout(self.config.request_timeout)
                .body(body.clone())
        })
        .await
        .map_err(Transaction::Failed)?;
        let status = response.status();
        match status.as_u16() {
            200 => {
                let value: serde_json::Value = response.json().await.map_err(|_| {
                    Transaction::Failed(GpError::Unavailable(format!(
                        "{ods}: write-back response unreadable"
                    )))
                })?;
                entry_results(&value, entries.len()).ok_or_else(|| {
                    Transaction::Failed(GpError::Unavailable(format!(
                        "{ods}: write-back response does not match the request"
                    )))
                })
            }
            // A transaction is all or nothing: one entry the server will
            // not take fails them all.
            400 | 404 | 409 | 410 | 412 | 422 => Err(Transaction::Refused),
            _ => Err(Transaction::Failed(status_error(ods, "write-back", status))),
        }
    }
}

enum Transaction {
    /// The server refused the bundle as a whole (some entry is bad).
    Refused,
    Failed(GpError),
}

#[async_trait]
impl GpConnector for FhirGpConnector {
    async fn extract(
        &self,
        practice: &Practice,
    ) -> Result<BoxStream<'static, Result<GpPatient, GpError>>, GpError> {
        let server = self.server(practice).await?;
        if server.bulk_export {
            self.export(practice, server).await
        } else {
            self.search(practice, server).await
        }
    }

    /// One transaction for all the entries; if the server refuses it as a
    /// whole, halves are retried until each refused entry stands alone, so
    /// one unknown patient does not block the others.
    async fn write_back(
        &self,
        practice: &Practice,
        entries: &[WritebackEntry],
    ) -> Result<Vec<WritebackResult>, GpError> {
        let server = self.server(practice).await?;
        let mut results = vec![WritebackResult::Failed; entries.len()];
        let mut ranges = vec![(0, entries.len())];
        while let Some((start, end)) = ranges.pop() {
            if start == end {
                continue;
            }
            match self
                .transaction(practice, &server, &entries[start..end])
                .await
            {
                Ok(found) => results[start..end].copy_from_slice(&found),
                Err(Transaction::Refused) if end - start == 1 => {
                    results[start] = WritebackResult::Rejected;
                }
                Err(Transaction::Refused) => {
                    let middle = start + (end - start) / 2;
                    ranges.push((middle, end));
                    ranges.push((start, middle));
                }
                Err(Transaction::Failed(error)) => return Err(error),
            }
        }
        Ok(results)
    }
}

fn join(base: &Url, path: &str) -> Result<Url, GpError> {
    // `Url::join` drops the base's last segment without a trailing slash.
    Url::parse(&format!("{}/{path}", base.as_str().trim_end_matches('/')))
        .map_err(|e| GpError::Misconfigured(format!("URL: {e}")))
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn transport(ods: &str, what: &str, error: &reqwest::Error) -> GpError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    GpError::Unavailable(format!("{ods}: {what} {kind}"))
}

fn status_error(ods: &hub_core::domain::OdsCode, what: &str, status: StatusCode) -> GpError {
    match status.as_u16() {
        401 | 403 => {
            GpError::Misconfigured(format!("{ods}: {what}: credentials refused ({status})"))
        }
        404 | 405 | 501 => {
            GpError::Misconfigured(format!("{ods}: {what}: not supported ({status})"))
        }
        _ => GpError::Unavailable(format!("{ods}: {what}: HTTP {status}")),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&Utc) - Utc::now())
        .to_std()
        .ok()
        .or(Some(Duration::ZERO))
}

/// Sends a request, and again while the server answers 429, or 503 with a
/// `Retry-After` (busy, or down for a moment it names), waiting what it
/// asks within the poll bounds, up to `busy_retries` times. Any other
/// answer is returned.
async fn busy_retry(
    config: &FhirConfig,
    ods: &str,
    what: &str,
    auth: &Auth,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, GpError> {
    let mut retries = 0;
    loop {
        let response = send_authorised(auth, ods, what, &request).await?;
        let status = response.status();
        // A 503 without `Retry-After` is an outage of unknown length: the
        // practice is retried later through the queue instead.
        let wait = match status {
            StatusCode::TOO_MANY_REQUESTS => {
                Some(retry_after(response.headers()).unwrap_or(config.default_poll))
            }
            StatusCode::SERVICE_UNAVAILABLE => retry_after(response.headers()),
            _ => None,
        };
        let Some(wait) = wait.filter(|_| retries < config.busy_retries) else {
            return Ok(response);
        };
        retries += 1;
        let wait = wait.clamp(config.min_poll, config.max_poll);
        tracing::info!(ods, what, %status, retry = retries, wait_ms = wait.as_millis() as u64, "GP system busy; waiting");
        tokio::time::sleep(wait).await;
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    requires_access_token: Option<bool>,
    #[serde(default)]
    output: Vec<ManifestFile>,
    #[serde(default)]
    error: Vec<ManifestFile>,
}

#[derive(Debug, Deserialize)]
struct ManifestFile {
    #[serde(rename = "type", default)]
    type_: String,
    url: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Patients,
    /// OperationOutcome lines: one record the server could not export each.
    Errors,
}

struct OpenFile {
    kind: FileKind,
    lines: LineSplitter<reqwest::Error>,
    line: u64,
}

/// Reads the export's files one after another, one line at a time.
struct ExportReader {
    http: reqwest::Client,
    config: FhirConfig,
    auth: Auth,
    ods: String,
    files: VecDeque<(FileKind, Url)>,
    current: Option<OpenFile>,
    file_number: usize,
    read: u64,
}

impl ExportReader {
    async fn next(&mut self) -> Option<Result<GpPatient, GpError>> {
        loop {
            if self.current.is_none() {
                let (kind, url) = self.files.pop_front()?;
                self.file_number += 1;
                let opened = open_file(
                    self.http.clone(),
                    self.config.clone(),
                    self.auth.clone(),
                    format!("{} file {}", self.ods, self.file_number),
                    kind,
                    url,
                )
                .await;
                match opened {
                    Ok(file) => self.current = Some(file),
                    Err(error) => {
                        self.files.clear();
                        return Some(Err(error));
                    }
                }
            }
            let file = self.current.as_mut()?;
            let line = file.lines.next_line().await;
            file.line += 1;
            let at = format!("{} file {} line {}", self.ods, self.file_number, file.line);
            match (line, file.kind) {
                (None, _) => self.current = None,
                (Some(Err(_)), _) => {
                    self.current = None;
                    self.files.clear();
                    return Some(Err(GpError::Unavailable(format!(
                        "{at}: download interrupted"
                    ))));
                }
                (Some(Ok(Line::TooLong)), _) => {
                    return Some(Err(GpError::MalformedRecord(format!(
                        "{at}: line too long"
                    ))))
                }
                (Some(Ok(Line::Text(_))), FileKind::Errors) => {
                    return Some(Err(GpError::MalformedRecord(format!(
                        "{at}: the server could not export a record"
                    ))))
                }
                (Some(Ok(Line::Text(text))), FileKind::Patients) => {
                    self.read += 1;
                    if self.read.is_multiple_of(YIELD_EVERY) {
                        tokio::task::yield_now().await;
                    }
                    return Some(
                        parse_patient(&text, Utc::now())
                            .map_err(|e| GpError::MalformedRecord(format!("{at}: {e}"))),
                    );
                }
            }
        }
    }
}

/// Opens one export file (owned arguments: the reader holds a stream that
/// is not `Sync`, so it cannot be borrowed across the request).
async fn open_file(
    http: reqwest::Client,
    config: FhirConfig,
    auth: Auth,
    what: String,
    kind: FileKind,
    url: Url,
) -> Result<OpenFile, GpError> {
    let response = busy_retry(&config, &what, "download", &auth, || {
        http.get(url.clone()).header(ACCEPT, FHIR_NDJSON)
    })
    .await?;
    if !response.status().is_success() {
        return Err(GpError::Unavailable(format!(
            "{what}: HTTP {}",
            response.status()
        )));
    }
    Ok(OpenFile {
        kind,
        lines: LineSplitter::new(response.bytes_stream(), MAX_LINE_BYTES),
        line: 0,
    })
}

/// Follows a search's `next` links one page at a time.
struct SearchReader {
    http: reqwest::Client,
    config: FhirConfig,
    server: Server,
    ods: String,
    next: Option<Url>,
    page: VecDeque<Result<GpPatient, GpError>>,
    pages: u64,
    read: u64,
}

impl SearchReader {
    async fn next(&mut self) -> Option<Result<GpPatient, GpError>> {
        loop {
            if let Some(item) = self.page.pop_front() {
                self.read += 1;
                if self.read.is_multiple_of(YIELD_EVERY) {
                    tokio::task::yield_now().await;
                }
                return Some(item);
            }
            let url = self.next.take()?;
            if let Err(error) = self.fetch(url).await {
                return Some(Err(error));
            }
        }
    }

    async fn fetch(&mut self, url: Url) -> Result<(), GpError> {
        self.pages += 1;
        let ods = &self.ods;
        let page = self.pages;
        // A busy page is asked for again, not the practice restarted.
        let what = format!("search page {page}");
        let response = busy_retry(&self.config, ods, &what, &self.server.auth, || {
            self.http
                .get(url.clone())
                .header(ACCEPT, FHIR_JSON)
                .timeout(self.config.request_timeout)
        })
        .await?;
        let status = response.status();
        if !status.is_success() {
            let code = status.as_u16();
            return Err(if matches!(code, 401 | 403) {
                GpError::Misconfigured(format!("{ods}: search: credentials refused ({status})"))
            } else {
                GpError::Unavailable(format!("{ods}: search page {page}: HTTP {status}"))
            });
        }
        let bundle: serde_json::Value = response
            .json()
            .await
            .map_err(|_| GpError::Unavailable(format!("{ods}: search page {page} unreadable")))?;
        if bundle.get("resourceType").and_then(|t| t.as_str()) != Some("Bundle") {
            return Err(GpError::Unavailable(format!(
                "{ods}: search page {page} is not a Bundle"
            )));
        }
        let now = Utc::now();
        let mut bundle = bundle;
        let entries = match bundle.get_mut("entry").map(serde_json::Value::take) {
            Some(serde_json::Value::Array(entries)) => entries,
            _ => Vec::new(),
        };
        for (n, mut entry) in entries.into_iter().enumerate() {
            let mode = entry.pointer("/search/mode").and_then(|m| m.as_str());
            if mode.is_some_and(|m| m != "match") {
                continue; // included resources and OperationOutcomes
            }
            let resource = entry.get_mut("resource").map(serde_json::Value::take);
            self.page.push_back(match resource {
                Some(resource) => patient_from_value(resource, now).map_err(|e| {
                    GpError::MalformedRecord(format!("{ods}: page {page} entry {}: {e}", n + 1))
                }),
                None => Err(GpError::MalformedRecord(format!(
                    "{ods}: page {page} entry {}: no resource",
                    n + 1
                ))),
            });
        }
        let next = bundle
            .get("link")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .find(|l| l.get("relation").and_then(|r| r.as_str()) == Some("next"))
            .and_then(|l| l.get("url"))
            .and_then(|u| u.as_str());
        if let Some(next) = next {
            self.next = Some(self.server.follow(ods, "search next link", next)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GP system's bearer token and patients' data go only to the
    /// origin (scheme, host, port) the registry holds: export status and
    /// file URLs elsewhere are refused.
    #[test]
    fn export_urls_stay_on_the_gp_systems_origin() {
        let server = Server {
            base: Url::parse("https://gp.example.nhs.uk/fhir/").expect("url"),
            link_base: None,
            bulk_export: true,
            patient_search: PatientSearch::Identifier,
            auth: Auth::None,
        };
        assert!(server
            .follow("G85001", "status", "/export/status/7")
            .is_ok());
        for elsewhere in [
            "https://evil.example/steal",
            "http://gp.example.nhs.uk/fhir/x",
            "https://gp.example.nhs.uk:8443/fhir/x",
            "https://169.254.169.254/latest/meta-data",
        ] {
            assert!(
                server.follow("G85001", "file", elsewhere).is_err(),
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        let later = (Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        headers.insert(RETRY_AFTER, later.parse().unwrap());
        assert!(retry_after(&headers).is_some_and(|d| d > Duration::from_secs(20)));
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn urls_keep_the_base_path_and_origins_compare() {
        let base = Url::parse("https://gp.example/fhir/r4").unwrap();
        assert_eq!(
            join(&base, "Group/G85001/$export").unwrap().as_str(),
            "https://gp.example/fhir/r4/Group/G85001/$export"
        );
        assert!(same_origin(
            &base,
            &Url::parse("https://gp.example:443/x").unwrap()
        ));
        assert!(!same_origin(
            &base,
            &Url::parse("https://evil.example/x").unwrap()
        ));
    }

    #[test]
    fn links_behind_a_proxy_are_read_against_the_base_we_call() {
        let server = Server {
            base: Url::parse("https://gp.example/fhir/r4").unwrap(),
            link_base: Some("http://fhir-internal:8080/fhir/".into()),
            bulk_export: false,
            patient_search: PatientSearch::Identifier,
            auth: Auth::None,
        };
        let next = "http://fhir-internal:8080/fhir/Patient?_page=2";
        assert_eq!(
            server.follow("G85001", "next", next).unwrap().as_str(),
            "https://gp.example/fhir/r4/Patient?_page=2"
        );
        assert_eq!(
            server
                .follow("G85001", "next", "https://gp.example/fhir/r4/Patient?p=3")
                .unwrap()
                .as_str(),
            "https://gp.example/fhir/r4/Patient?p=3"
        );
        // A look-alike host is not the internal base, and leaves the server.
        let error = server
            .follow("G85001", "next", "http://fhir-internal:8080/fhirx/Patient")
            .unwrap_err();
        assert!(matches!(error, GpError::Misconfigured(_)), "{error}");
        let direct = Server {
            link_base: None,
            ..server
        };
        assert!(matches!(
            direct.follow("G85001", "next", next),
            Err(GpError::Misconfigured(_))
        ));
    }

    #[tokio::test]
    async fn a_practice_without_a_fhir_connection_is_misconfigured() {
        let connector = FhirGpConnector::new(FhirConfig::default()).unwrap();
        let mut practice = Practice {
            ods: hub_core::domain::OdsCode::parse("G85001").unwrap(),
            name: "Test".into(),
            notice_email: "x@nhs.invalid".into(),
            dsa_signed: None,
            connection: GpConnection::Simulated,
            list_size: 0,
        };
        assert!(matches!(
            connector.extract(&practice).await,
            Err(GpError::Misconfigured(_))
        ));
        practice.connection = GpConnection::Fhir {
            base_url: "http://127.0.0.1:9".into(),
            bulk_export: false,
            secret: Some("missing".into()),
            patient_search: PatientSearch::Identifier,
            link_base: None,
        };
        assert!(matches!(
            connector.extract(&practice).await,
            Err(GpError::Misconfigured(_))
        ));
    }
}
