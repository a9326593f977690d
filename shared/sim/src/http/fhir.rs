//! A FHIR R4 server over a [`GpEstate`], one base URL per practice
//! (`http://127.0.0.1:port/fhir/{ods}`), as each practice's GP system is
//! its own server: Bulk Data `$export` (kick-off, several 202 polls with
//! `Retry-After`, manifest, NDJSON files streamed as they are generated),
//! the paged `Patient` search, and `transaction` Bundles of
//! `Communication` with conditional create. Rows are the estate's, shaped
//! as UK Core Patients with the variety a real record has (several names,
//! ended mobiles, old addresses, unknown extensions); malformed lines can
//! be injected per practice.

use super::smart_auth::AuthServer;
use super::{bind, serve, ServerTask};
use crate::GpEstate;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hub_adapters::fhir::{
    CONTACT_PREFERENCE_URL, NHS_NUMBER_SYSTEM, ODS_SYSTEM, PREFERRED_CONTACT_METHOD_SYSTEM,
};
use hub_core::domain::UkMobile;
use hub_core::domain::{ContactPreference, GpPatient, NhsNumber, OdsCode, Personal};
use hub_core::ports::{
    GpConnection, GpConnector, GpError, Medium, PatientSearch, Practice, WritebackEntry,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const FHIR_JSON: &str = "application/fhir+json";
/// Bytes gathered into one body chunk of an NDJSON download.
const CHUNK_BYTES: usize = 32 * 1024;

#[derive(Clone)]
pub struct FhirServerConfig {
    /// Status polls answered 202 before the manifest is ready.
    pub polls_before_ready: u32,
    /// The `Retry-After` (seconds) of those 202s.
    pub retry_after_secs: u64,
    /// Rows per NDJSON output file (a large list is several files).
    pub rows_per_file: u64,
    /// Largest `_count` a search page honours.
    pub max_page_size: u32,
    /// When set, every request must present it as a bearer token.
    pub bearer: Option<SecretString>,
    /// When set, every request needs an access token from the server's
    /// SMART Backend Services token endpoint (`token_url`, clients added
    /// with `register_client`); tokens live this long.
    pub token_lifetime: Option<std::time::Duration>,
    /// How Patients carry their practice; the search answers only the
    /// matching form and finds nobody with the other, as real servers do.
    pub general_practitioner: PatientSearch,
    /// The base written in next links and export URLs, when the server
    /// believes it lives elsewhere (behind a reverse proxy).
    pub link_base: Option<String>,
}

impl Default for FhirServerConfig {
    fn default() -> Self {
        Self {
            polls_before_ready: 2,
            retry_after_secs: 1,
            rows_per_file: 50_000,
            max_page_size: 1_000,
            bearer: None,
            token_lifetime: None,
            general_practitioner: PatientSearch::Identifier,
            link_base: None,
        }
    }
}

struct Job {
    ods: OdsCode,
    polls_left: u32,
    cancelled: bool,
}

/// Communications kept whole for inspection (the latest); the rest are
/// remembered by key and id only, so memory stays small at any cohort.
const MAX_COMMUNICATIONS_KEPT: usize = 1_000;

struct ServerState {
    estate: GpEstate,
    config: FhirServerConfig,
    base: String,
    token_url: String,
    auth: Option<AuthServer>,
    jobs: Mutex<HashMap<u64, Job>>,
    next_job: AtomicU64,
    /// Malformed line after every n-th row, per practice.
    malformed_every: Mutex<HashMap<OdsCode, u64>>,
    /// Resources served after the estate's rows, per practice.
    extra: Mutex<HashMap<OdsCode, Vec<Value>>>,
    /// Requests still to be answered 429/503 (`Retry-After: 0`): search
    /// pages after the first, export kick-offs and files.
    busy_left: AtomicU64,
    busy_answers: AtomicU64,
    first_pages: AtomicU64,
    /// Communications by `system|value` of their identifier.
    /// Conditional-create keys (hashed) and the id each was stored under.
    communications: Mutex<HashMap<u64, [u8; 16]>>,
    /// The latest stored resources, as received.
    recent_communications: Mutex<std::collections::VecDeque<Value>>,
    bytes_served: AtomicU64,
    polls: AtomicU64,
    exports_started: AtomicU64,
    exports_cancelled: AtomicU64,
    searches: AtomicU64,
    transactions: AtomicU64,
    transactions_refused: AtomicU64,
    conditional_matches: AtomicU64,
}

/// A running simulated FHIR server. Dropping it stops the server.
pub struct FhirServer {
    state: Arc<ServerState>,
    _task: ServerTask,
}

impl std::fmt::Debug for FhirServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirServer")
            .field("base", &self.state.base)
            .finish_non_exhaustive()
    }
}

/// Starts a FHIR server over `estate` on 127.0.0.1.
pub async fn start_fhir(
    estate: GpEstate,
    config: FhirServerConfig,
) -> std::io::Result<(SocketAddr, FhirServer)> {
    let (listener, addr) = bind().await?;
    let auth = config.token_lifetime.map(AuthServer::new);
    let state = Arc::new(ServerState {
        estate,
        config,
        base: format!("http://{addr}/fhir"),
        token_url: format!("http://{addr}/oauth2/token"),
        auth,
        jobs: Mutex::new(HashMap::new()),
        next_job: AtomicU64::new(1),
        malformed_every: Mutex::new(HashMap::new()),
        extra: Mutex::new(HashMap::new()),
        busy_left: AtomicU64::new(0),
        busy_answers: AtomicU64::new(0),
        first_pages: AtomicU64::new(0),
        communications: Mutex::new(HashMap::new()),
        recent_communications: Mutex::new(std::collections::VecDeque::new()),
        bytes_served: AtomicU64::new(0),
        polls: AtomicU64::new(0),
        exports_started: AtomicU64::new(0),
        exports_cancelled: AtomicU64::new(0),
        searches: AtomicU64::new(0),
        transactions: AtomicU64::new(0),
        transactions_refused: AtomicU64::new(0),
        conditional_matches: AtomicU64::new(0),
    });
    let router = Router::new()
        .route("/fhir/{ods}", axum::routing::post(transaction))
        .route("/fhir/{ods}/Patient", get(search))
        .route("/fhir/{ods}/Group/{group}/{operation}", get(kick_off))
        .route(
            "/fhir/{ods}/{operation}/{job}",
            get(export_status).delete(cancel_export),
        )
        .route("/fhir/{ods}/{operation}/{job}/{file}", get(export_file))
        .route("/oauth2/token", axum::routing::post(token))
        .with_state(state.clone());
    let task = serve(listener, router);
    Ok((addr, FhirServer { state, _task: task }))
}

impl FhirServer {
    /// The practice's FHIR base URL.
    pub fn base_url(&self, ods: &OdsCode) -> String {
        format!("{}/{ods}", self.state.base)
    }

    /// The token endpoint (SMART Backend Services), when the server has one.
    pub fn token_url(&self) -> String {
        self.state.token_url.clone()
    }

    /// Registers a backend client's public key (a JWK with `kid` and
    /// `alg`), as a GP system's administrator would.
    pub fn register_client(&self, client_id: &str, jwk: &Value) -> Result<(), String> {
        self.auth()?.register(client_id, jwk)
    }

    fn auth(&self) -> Result<&AuthServer, String> {
        self.state
            .auth
            .as_ref()
            .ok_or_else(|| "the server has no token endpoint (token_lifetime)".to_string())
    }

    /// Every access token issued so far expires now.
    pub fn expire_tokens(&self) {
        if let Some(auth) = &self.state.auth {
            auth.expire_all();
        }
    }

    /// Access tokens issued.
    pub fn tokens_issued(&self) -> u64 {
        self.state.auth.as_ref().map_or(0, AuthServer::issued)
    }

    /// The RFC 6749 error codes of refused token requests, in order.
    pub fn token_refusals(&self) -> Vec<&'static str> {
        self.state
            .auth
            .as_ref()
            .map(AuthServer::refusals)
            .unwrap_or_default()
    }

    /// Requests refused because their access token had expired.
    pub fn expired_tokens_presented(&self) -> u64 {
        self.state
            .auth
            .as_ref()
            .map_or(0, AuthServer::expired_presented)
    }

    /// The estate's practice, connected to this server.
    pub fn practice(
        &self,
        ods: &OdsCode,
        bulk_export: bool,
        secret: Option<&str>,
    ) -> Option<Practice> {
        let mut practice = self.state.estate.practice(ods)?;
        practice.connection = GpConnection::Fhir {
            base_url: self.base_url(ods),
            bulk_export,
            secret: secret.map(str::to_string),
            patient_search: self.state.config.general_practitioner,
            link_base: None,
        };
        Some(practice)
    }

    /// Serves `resources` (Patients as a test writes them, in any shape)
    /// after the practice's own rows, in the search and the export.
    pub fn add_resources(&self, ods: &OdsCode, resources: Vec<Value>) {
        lock(&self.state.extra)
            .entry(ods.clone())
            .or_default()
            .extend(resources);
    }

    /// The next `n` search pages after the first, export kick-offs and
    /// export files are answered 429 or 503 (alternately) with
    /// `Retry-After: 0`.
    pub fn answer_busy(&self, n: u64) {
        self.state.busy_left.store(n, Ordering::Relaxed);
    }

    /// 429/503 answers given so far.
    pub fn busy_answers(&self) -> u64 {
        self.state.busy_answers.load(Ordering::Relaxed)
    }

    /// First search pages served (a practice's search started).
    pub fn first_pages(&self) -> u64 {
        self.state.first_pages.load(Ordering::Relaxed)
    }

    pub fn estate(&self) -> &GpEstate {
        &self.state.estate
    }

    /// After every `every`-th row of the practice's list (in both the
    /// export and the search), one malformed record. `0` stops it.
    pub fn inject_malformed(&self, ods: &OdsCode, every: u64) {
        let mut map = lock(&self.state.malformed_every);
        if every == 0 {
            map.remove(ods);
        } else {
            map.insert(ods.clone(), every);
        }
    }

    /// Malformed records one full read of the practice's list meets.
    pub fn malformed_in_list(&self, ods: &OdsCode) -> u64 {
        let every = lock(&self.state.malformed_every).get(ods).copied();
        let size = self.state.estate.practice(ods).map_or(0, |p| p.list_size);
        every.map_or(0, |every| size / every)
    }

    /// NDJSON bytes handed to the network so far.
    pub fn bytes_served(&self) -> u64 {
        self.state.bytes_served.load(Ordering::Relaxed)
    }

    pub fn export_polls(&self) -> u64 {
        self.state.polls.load(Ordering::Relaxed)
    }

    pub fn exports_started(&self) -> u64 {
        self.state.exports_started.load(Ordering::Relaxed)
    }

    pub fn exports_cancelled(&self) -> u64 {
        self.state.exports_cancelled.load(Ordering::Relaxed)
    }

    /// Search pages served.
    pub fn search_pages(&self) -> u64 {
        self.state.searches.load(Ordering::Relaxed)
    }

    pub fn transactions(&self) -> u64 {
        self.state.transactions.load(Ordering::Relaxed)
    }

    /// Transactions refused as a whole (an entry for an unknown patient).
    pub fn transactions_refused(&self) -> u64 {
        self.state.transactions_refused.load(Ordering::Relaxed)
    }

    /// Entries that matched an existing Communication (`ifNoneExist`).
    pub fn conditional_matches(&self) -> u64 {
        self.state.conditional_matches.load(Ordering::Relaxed)
    }

    /// The latest Communications stored (up to 1,000), as received.
    pub fn communications(&self) -> Vec<Value> {
        lock(&self.state.recent_communications)
            .iter()
            .cloned()
            .collect()
    }

    /// How many Communications are stored.
    pub fn communications_stored(&self) -> usize {
        lock(&self.state.communications).len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn outcome(status: StatusCode, code: &str, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": code, "diagnostics": text }]
        })
        .to_string(),
    )
        .into_response()
}

fn fhir_json(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        value.to_string(),
    )
        .into_response()
}

/// A 429 or 503 while `answer_busy` lasts.
fn busy(state: &ServerState) -> Option<Response> {
    state
        .busy_left
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .ok()?;
    let n = state.busy_answers.fetch_add(1, Ordering::Relaxed);
    let status = if n.is_multiple_of(2) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let mut response = outcome(status, "transient", "busy, try again");
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("0"));
    Some(response)
}

/// The base written in links the server hands out.
fn link_base(state: &ServerState) -> &str {
    state.config.link_base.as_deref().unwrap_or(&state.base)
}

/// The practice's extra resources.
fn extras(state: &ServerState, ods: &OdsCode) -> Vec<Value> {
    lock(&state.extra).get(ods).cloned().unwrap_or_default()
}

/// Keeps only the elements `_elements` asks for (and those every resource
/// keeps), marking the resource `SUBSETTED` as the specification says.
fn subset(mut resource: Value, elements: Option<&String>) -> Value {
    let Some(elements) = elements else {
        return resource;
    };
    let wanted: Vec<&str> = elements.split(',').map(str::trim).collect();
    if let Value::Object(fields) = &mut resource {
        fields.retain(|key, _| {
            let name = key.trim_start_matches('_');
            matches!(name, "resourceType" | "id" | "meta")
                || wanted.contains(&name)
                || (name.starts_with("deceased") && wanted.contains(&"deceased"))
        });
        fields
            .entry("meta")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|meta| {
                meta.insert(
                    "tag".into(),
                    json!([{ "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED" }]),
                )
            });
    }
    resource
}

/// Whether a resource names the practice in `form` in generalPractitioner.
fn carries(resource: &Value, form: PatientSearch, ods: &str) -> bool {
    resource["generalPractitioner"]
        .as_array()
        .is_some_and(|gps| {
            gps.iter().any(|gp| match form {
                PatientSearch::Identifier => {
                    gp["identifier"]["system"] == ODS_SYSTEM && gp["identifier"]["value"] == ods
                }
                PatientSearch::Reference => gp["reference"] == format!("Organization/{ods}"),
            })
        })
}

/// The estate's row as this server writes it.
fn served(state: &ServerState, patient: &GpPatient, ods: &OdsCode, row: u64) -> Value {
    let mut resource = patient_resource(patient, ods, row);
    if state.config.general_practitioner == PatientSearch::Reference {
        resource["generalPractitioner"] = json!([{ "reference": format!("Organization/{ods}") }]);
    }
    resource
}

/// Checks the bearer token and the practice; returns the practice.
fn admit(state: &ServerState, headers: &HeaderMap, ods: &str) -> Result<Practice, Response> {
    if let Some(auth) = &state.auth {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Err(problem) = auth.admit(presented) {
            let mut refused = outcome(StatusCode::UNAUTHORIZED, "login", problem);
            refused.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            return Err(refused);
        }
    }
    if let Some(expected) = &state.config.bearer {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(expected.expose_secret()) {
            return Err(outcome(
                StatusCode::UNAUTHORIZED,
                "login",
                "bearer token required",
            ));
        }
    }
    OdsCode::parse(ods)
        .ok()
        .and_then(|ods| state.estate.practice(&ods))
        .ok_or_else(|| outcome(StatusCode::NOT_FOUND, "not-found", "no such practice"))
}

fn gp_error(error: GpError) -> Response {
    match error {
        GpError::Unavailable(_) => {
            outcome(StatusCode::SERVICE_UNAVAILABLE, "transient", "try later")
        }
        GpError::Misconfigured(_) => outcome(StatusCode::NOT_FOUND, "not-found", "unknown"),
        GpError::MalformedRecord(_) => {
            outcome(StatusCode::INTERNAL_SERVER_ERROR, "exception", "error")
        }
    }
}

async fn kick_off(
    State(state): State<Arc<ServerState>>,
    Path((ods, group, operation)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let practice = match admit(&state, &headers, &ods) {
        Ok(practice) => practice,
        Err(refused) => return refused,
    };
    if let Some(busy) = busy(&state) {
        return busy;
    }
    if operation != "$export" || group != practice.ods.as_str() {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such group or operation",
        );
    }
    let async_preferred = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("respond-async"));
    if !async_preferred {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Prefer: respond-async is required",
        );
    }
    if query
        .get("_type")
        .is_some_and(|types| !types.split(',').any(|t| t == "Patient"))
    {
        return outcome(
            StatusCode::BAD_REQUEST,
            "not-supported",
            "only Patient is exported",
        );
    }
    // The estate decides whether the practice's system is up (and counts
    // the extraction).
    if let Err(error) = state.estate.extract(&practice).await {
        return gp_error(error);
    }
    let job = state.next_job.fetch_add(1, Ordering::Relaxed);
    lock(&state.jobs).insert(
        job,
        Job {
            ods: practice.ods.clone(),
            polls_left: state.config.polls_before_ready,
            cancelled: false,
        },
    );
    state.exports_started.fetch_add(1, Ordering::Relaxed);
    let location = format!(
        "{}/{}/$export-status/{job}",
        link_base(&state),
        practice.ods
    );
    (StatusCode::ACCEPTED, [(header::CONTENT_LOCATION, location)]).into_response()
}

async fn export_status(
    State(state): State<Arc<ServerState>>,
    Path((ods, operation, job)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let practice = match admit(&state, &headers, &ods) {
        Ok(practice) => practice,
        Err(refused) => return refused,
    };
    if operation != "$export-status" {
        return outcome(StatusCode::NOT_FOUND, "not-found", "no such operation");
    }
    state.polls.fetch_add(1, Ordering::Relaxed);
    let mut jobs = lock(&state.jobs);
    let Some(entry) = jobs
        .get_mut(&job)
        .filter(|j| j.ods == practice.ods && !j.cancelled)
    else {
        return outcome(StatusCode::NOT_FOUND, "not-found", "no such export");
    };
    if entry.polls_left > 0 {
        let total = state.config.polls_before_ready.max(1);
        let done = 100 * (total - entry.polls_left) / total;
        entry.polls_left -= 1;
        return (
            StatusCode::ACCEPTED,
            [
                (
                    header::RETRY_AFTER,
                    state.config.retry_after_secs.to_string(),
                ),
                (
                    header::HeaderName::from_static("x-progress"),
                    format!("{done}% exported"),
                ),
            ],
        )
            .into_response();
    }
    drop(jobs);
    let per_file = state.config.rows_per_file.max(1);
    let files = practice.list_size.div_ceil(per_file).max(1);
    let output: Vec<Value> = (0..files)
        .map(|n| {
            let rows = practice
                .list_size
                .saturating_sub(n * per_file)
                .min(per_file);
            json!({
                "type": "Patient",
                "url": format!("{}/{}/$export-file/{job}/{n}", link_base(&state), practice.ods),
                "count": rows
            })
        })
        .collect();
    let manifest = json!({
        "transactionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "request": format!("{}/{}/Group/{}/$export?_type=Patient", state.base, practice.ods, practice.ods),
        "requiresAccessToken": state.config.bearer.is_some() || state.auth.is_some(),
        "output": output,
        "error": []
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        manifest.to_string(),
    )
        .into_response()
}

async fn cancel_export(
    State(state): State<Arc<ServerState>>,
    Path((ods, _operation, job)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = admit(&state, &headers, &ods) {
        return refused;
    }
    match lock(&state.jobs).get_mut(&job) {
        Some(entry) if !entry.cancelled => {
            entry.cancelled = true;
            state.exports_cancelled.fetch_add(1, Ordering::Relaxed);
            StatusCode::ACCEPTED.into_response()
        }
        _ => outcome(StatusCode::NOT_FOUND, "not-found", "no such export"),
    }
}

/// A malformed record, in turn: broken JSON, a field of the wrong type,
/// and a resource that is not a Patient.
fn malformed_line(n: u64) -> &'static str {
    match n % 3 {
        0 => r#"{"resourceType":"Patient","id":"broken","name":[{"family":"#,
        1 => {
            r#"{"resourceType":"Patient","id":"mistyped","name":"not-a-list","birthDate":19800101}"#
        }
        _ => r#"{"resourceType":"Observation","id":"stray","status":"final"}"#,
    }
}

async fn export_file(
    State(state): State<Arc<ServerState>>,
    Path((ods, operation, job, file)): Path<(String, String, u64, u64)>,
    headers: HeaderMap,
) -> Response {
    let practice = match admit(&state, &headers, &ods) {
        Ok(practice) => practice,
        Err(refused) => return refused,
    };
    let known = lock(&state.jobs)
        .get(&job)
        .is_some_and(|j| j.ods == practice.ods && !j.cancelled);
    if operation != "$export-file" || !known {
        return outcome(StatusCode::NOT_FOUND, "not-found", "no such file");
    }
    if let Some(busy) = busy(&state) {
        return busy;
    }
    let per_file = state.config.rows_per_file.max(1);
    let start = file.saturating_mul(per_file);
    let end = practice.list_size.min(start.saturating_add(per_file));
    let every = lock(&state.malformed_every).get(&practice.ods).copied();
    // The extra resources close the last file.
    let last_file = practice.list_size.div_ceil(per_file).max(1) - 1;
    let extra = if file == last_file {
        extras(&state, &practice.ods)
    } else {
        Vec::new()
    };
    let generator = Rows {
        state: state.clone(),
        ods: practice.ods.clone(),
        next: start,
        end,
        every,
        extra: extra.into(),
    };
    // Rows are generated as the client reads: the body is never whole in
    // memory here either.
    let body = futures::stream::unfold(generator, |mut rows| async move {
        let chunk = rows.chunk()?;
        rows.state
            .bytes_served
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Some((Ok::<_, std::io::Error>(chunk), rows))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/fhir+ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

struct Rows {
    state: Arc<ServerState>,
    ods: OdsCode,
    next: u64,
    end: u64,
    every: Option<u64>,
    extra: std::collections::VecDeque<Value>,
}

impl Rows {
    fn chunk(&mut self) -> Option<Bytes> {
        if self.next >= self.end {
            let mut lines = Vec::new();
            for resource in self.extra.drain(..) {
                lines.extend_from_slice(resource.to_string().as_bytes());
                lines.push(b'\n');
            }
            return (!lines.is_empty()).then(|| Bytes::from(lines));
        }
        let mut buffer = Vec::with_capacity(CHUNK_BYTES + 4096);
        while self.next < self.end && buffer.len() < CHUNK_BYTES {
            let row = self.next;
            self.next += 1;
            if let Some(patient) = self.state.estate.patient(&self.ods, row) {
                buffer.extend_from_slice(
                    served(&self.state, &patient, &self.ods, row)
                        .to_string()
                        .as_bytes(),
                );
                buffer.push(b'\n');
            }
            if let Some(every) = self.every.filter(|e| (row + 1).is_multiple_of(*e)) {
                buffer.extend_from_slice(malformed_line((row + 1) / every).as_bytes());
                buffer.push(b'\n');
            }
        }
        Some(Bytes::from(buffer))
    }
}

async fn search(
    State(state): State<Arc<ServerState>>,
    Path(ods): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let practice = match admit(&state, &headers, &ods) {
        Ok(practice) => practice,
        Err(refused) => return refused,
    };
    let ods = practice.ods.as_str();
    // Each form finds the practice only where the Patients carry it so.
    let by_identifier = query.get("general-practitioner:identifier").map(|v| {
        state.config.general_practitioner == PatientSearch::Identifier
            && *v == format!("{ODS_SYSTEM}|{ods}")
    });
    let by_reference = query.get("general-practitioner").map(|v| {
        state.config.general_practitioner == PatientSearch::Reference
            && (v == ods || *v == format!("Organization/{ods}"))
    });
    let Some(found) = by_identifier.or(by_reference) else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "search by general-practitioner only",
        );
    };
    let count = query
        .get("_count")
        .and_then(|c| c.parse::<u32>().ok())
        .unwrap_or(50)
        .clamp(1, state.config.max_page_size);
    let offset: u64 = query
        .get("_offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    if offset == 0 {
        // The first page is where the system is found up or down.
        if let Err(error) = state.estate.extract(&practice).await {
            return gp_error(error);
        }
        state.first_pages.fetch_add(1, Ordering::Relaxed);
    } else if let Some(busy) = busy(&state) {
        return busy;
    }
    state.searches.fetch_add(1, Ordering::Relaxed);
    let elements = query.get("_elements");
    // A resource that carries the practice in the asked form is found
    // whatever the server's own rows do (a stray record).
    let asked = if by_identifier.is_some() {
        PatientSearch::Identifier
    } else {
        PatientSearch::Reference
    };
    let extra: Vec<Value> = extras(&state, &practice.ods)
        .into_iter()
        .filter(|resource| found || carries(resource, asked, ods))
        .collect();
    let own = if found { practice.list_size } else { 0 };
    let total = own + extra.len() as u64;
    let every = lock(&state.malformed_every).get(&practice.ods).copied();
    let end = total.min(offset + u64::from(count));
    let mut entries = Vec::new();
    for row in offset..end {
        let resource = if row >= own {
            extra.get((row - own) as usize).cloned()
        } else {
            state
                .estate
                .patient(&practice.ods, row)
                .map(|patient| served(&state, &patient, &practice.ods, row))
        };
        if let Some(resource) = resource {
            let resource = subset(resource, elements);
            entries.push(json!({
                "fullUrl": format!("{}/{}/Patient/{}", link_base(&state), practice.ods, resource["id"].as_str().unwrap_or("")),
                "resource": resource,
                "search": { "mode": "match" }
            }));
        }
        if let Some(every) = every.filter(|e| row < own && (row + 1) % e == 0) {
            let line = malformed_line((row + 1) / every);
            // A truncated line cannot sit in a Bundle; use a mistyped one.
            let resource = serde_json::from_str::<Value>(line)
                .unwrap_or_else(|_| json!({ "resourceType": "Patient", "birthDate": 19800101 }));
            entries.push(json!({ "resource": resource, "search": { "mode": "match" } }));
        }
    }
    let mut params: Vec<(String, String)> = query
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "_count" | "_offset"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    params.sort();
    let page_url = |offset: u64| {
        let mut url =
            reqwest::Url::parse(&format!("{}/{}/Patient", link_base(&state), practice.ods))
                .expect("the server's own URL");
        url.query_pairs_mut()
            .extend_pairs(&params)
            .append_pair("_count", &count.to_string())
            .append_pair("_offset", &offset.to_string());
        url.to_string()
    };
    let mut links = vec![json!({ "relation": "self", "url": page_url(offset) })];
    if end < total {
        links.push(json!({ "relation": "next", "url": page_url(end) }));
    }
    fhir_json(
        StatusCode::OK,
        &json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": links,
            "entry": entries
        }),
    )
}

/// The estate's row as a UK Core Patient, varied by row number the way
/// real records vary.
pub fn patient_resource(patient: &GpPatient, ods: &OdsCode, row: u64) -> Value {
    let mut identifier = Vec::new();
    if row.is_multiple_of(13) {
        identifier.push(json!({ "system": "https://fhir.example-gp-system.invalid/Id/local", "value": format!("L{row}") }));
    }
    if !patient.nhs_number.expose().is_empty() {
        identifier
            .push(json!({ "system": NHS_NUMBER_SYSTEM, "value": patient.nhs_number.expose() }));
    }
    let given: Vec<&str> = patient.given_name.expose().split_whitespace().collect();
    let mut official =
        json!({ "use": "official", "family": patient.family_name.expose(), "given": given });
    // Servers write an unknown item as `null` with a data-absent reason.
    let absent = json!({ "extension": [{
        "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
        "valueCode": "unknown"
    }]});
    if row % 7 == 3 {
        let mut with_null: Vec<Value> = given.iter().map(|g| json!(g)).collect();
        let mut reasons: Vec<Value> = vec![Value::Null; with_null.len()];
        with_null.push(Value::Null);
        reasons.push(absent.clone());
        official["given"] = Value::Array(with_null);
        official["_given"] = Value::Array(reasons);
    }
    let mut name = Vec::new();
    if row.is_multiple_of(4) {
        name.push(json!({ "use": "usual", "given": [format!("{}y", given.first().copied().unwrap_or("X"))] }));
    }
    if row.is_multiple_of(9) {
        name.push(
            json!({ "use": "maiden", "family": "Formerly", "period": { "end": "2001-06-30" } }),
        );
    }
    name.push(official);
    let mut telecom = Vec::new();
    if row.is_multiple_of(3) {
        telecom.push(json!({ "system": "phone", "use": "home", "value": "020 7946 0018" }));
    }
    if let Some(mobile) = patient.mobile.expose() {
        if row.is_multiple_of(5) {
            telecom.push(json!({ "system": "phone", "use": "mobile", "value": "07700 900555", "rank": 1, "period": { "start": "2015-01-01", "end": "2020-01-01" } }));
        }
        // Mobiles are recorded under other uses too; only a number that is
        // a mobile can be found there, so only those are moved.
        let usable = UkMobile::parse(mobile).is_ok();
        if row % 19 == 4 {
            telecom.push(json!({ "system": "pager", "value": "07700 900777", "rank": 1 }));
        }
        telecom.push(match row % 19 {
            1 if usable => json!({ "system": "phone", "use": "home", "value": mobile }),
            2 if usable => json!({ "system": "phone", "value": mobile }),
            3 => json!({ "system": "sms", "value": mobile }),
            4 => json!({ "system": "phone", "use": "mobile", "value": mobile, "rank": 2 }),
            _ => json!({ "system": "phone", "use": "mobile", "value": mobile }),
        });
    }
    if row.is_multiple_of(17) {
        telecom
            .push(json!({ "system": "email", "use": "home", "value": "patient@example.invalid" }));
    }
    let mut address = Vec::new();
    if row.is_multiple_of(6) {
        address.push(json!({ "use": "old", "line": ["1 Former Road"], "postalCode": "SE1 1AA", "period": { "end": "2019-05-01" } }));
    }
    let mut home = json!({
        "use": "home",
        "type": "both",
        "line": patient.address_lines.expose(),
        "postalCode": patient.postcode.expose()
    });
    if row % 8 == 5 && !patient.address_lines.expose().is_empty() {
        let lines = patient.address_lines.expose();
        let mut with_null: Vec<Value> = lines.iter().map(|l| json!(l)).collect();
        let mut reasons: Vec<Value> = vec![Value::Null; with_null.len()];
        with_null.insert(1, Value::Null);
        reasons.insert(1, absent);
        home["line"] = Value::Array(with_null);
        home["_line"] = Value::Array(reasons);
    }
    address.push(home);
    let mut extension = Vec::new();
    if row.is_multiple_of(11) {
        extension.push(json!({
            "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
            "valueCodeableConcept": { "coding": [{ "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategory", "code": "A" }] }
        }));
    }
    let code = match patient.contact_preference {
        ContactPreference::NotRecorded => None,
        ContactPreference::Sms => Some("9"),
        ContactPreference::Letter => Some("1"),
        ContactPreference::NoTelephoneContact => Some("8"),
    };
    if let Some(code) = code {
        extension.push(json!({
            "url": CONTACT_PREFERENCE_URL,
            "extension": [{
                "url": "PreferredContactMethod",
                "valueCodeableConcept": { "coding": [{ "system": PREFERRED_CONTACT_METHOD_SYSTEM, "code": code }] }
            }]
        }));
    }
    let mut resource = json!({
        "resourceType": "Patient",
        "id": format!("{ods}-{row}"),
        "meta": { "profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"] },
        "identifier": identifier,
        "name": name,
        "telecom": telecom,
        "address": address,
        "generalPractitioner": [{ "identifier": { "system": ODS_SYSTEM, "value": ods.as_str() } }]
    });
    if !extension.is_empty() {
        resource["extension"] = Value::Array(extension);
    }
    if let Some(born) = patient.birth_date.expose() {
        resource["birthDate"] = born.format("%Y-%m-%d").to_string().into();
    }
    if patient.deceased {
        if row.is_multiple_of(2) {
            resource["deceasedBoolean"] = true.into();
        } else {
            resource["deceasedDateTime"] = "2024-01-01T10:00:00Z".into();
        }
    } else if row.is_multiple_of(10) {
        resource["deceasedBoolean"] = false.into();
    }
    resource
}

/// One Communication of a transaction, as understood by the server.
struct Incoming {
    key: String,
    entry: WritebackEntry,
    resource: Value,
}

fn read_entry(entry: &Value) -> Option<Incoming> {
    let request = entry.get("request")?;
    if request.get("method")?.as_str()? != "POST"
        || request.get("url")?.as_str()? != "Communication"
    {
        return None;
    }
    let resource = entry.get("resource")?;
    if resource.get("resourceType")?.as_str()? != "Communication" {
        return None;
    }
    let subject = resource.pointer("/subject/identifier")?;
    if subject.get("system")?.as_str()? != NHS_NUMBER_SYSTEM {
        return None;
    }
    let nhs_number = NhsNumber::parse(subject.get("value")?.as_str()?).ok()?;
    // ifNoneExist: `identifier=system|value`, query-encoded.
    let condition = request.get("ifNoneExist")?.as_str()?;
    let parsed = reqwest::Url::parse(&format!("http://x/?{condition}")).ok()?;
    let key = parsed
        .query_pairs()
        .find(|(name, _)| name == "identifier")?
        .1
        .into_owned();
    let (system, reference) = key.split_once('|')?;
    let declared = resource.pointer("/identifier/0")?;
    if declared.get("system")?.as_str()? != system || declared.get("value")?.as_str()? != reference
    {
        return None;
    }
    let sent_at = chrono::DateTime::parse_from_rfc3339(resource.get("sent")?.as_str()?).ok()?;
    let text = resource.pointer("/payload/0/contentString")?.as_str()?;
    let medium = match resource.pointer("/medium/0/coding/0/code")?.as_str()? {
        "SMSWRIT" => Medium::Sms,
        "MAILWRIT" => Medium::Letter,
        _ => return None,
    };
    Some(Incoming {
        key: key.clone(),
        entry: WritebackEntry {
            nhs_number,
            reference: reference.to_string(),
            sent_at: sent_at.with_timezone(&chrono::Utc),
            message: Personal::new(text.to_string()),
            medium,
        },
        resource: resource.clone(),
    })
}

async fn transaction(
    State(state): State<Arc<ServerState>>,
    Path(ods): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let practice = match admit(&state, &headers, &ods) {
        Ok(practice) => practice,
        Err(refused) => return refused,
    };
    state.transactions.fetch_add(1, Ordering::Relaxed);
    let Ok(bundle) = serde_json::from_slice::<Value>(&body) else {
        return outcome(StatusCode::BAD_REQUEST, "structure", "not JSON");
    };
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "transaction" {
        return outcome(
            StatusCode::BAD_REQUEST,
            "structure",
            "expected a transaction Bundle",
        );
    }
    let Some(entries) = bundle["entry"].as_array() else {
        return outcome(StatusCode::BAD_REQUEST, "structure", "Bundle.entry missing");
    };
    let mut incoming = Vec::with_capacity(entries.len());
    for entry in entries {
        match read_entry(entry) {
            Some(item) => incoming.push(item),
            None => {
                state.transactions_refused.fetch_add(1, Ordering::Relaxed);
                return outcome(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "entry is not a conditional create of a Communication",
                );
            }
        }
    }
    // All or nothing: one unknown patient fails the whole transaction.
    let extra = extras(&state, &practice.ods);
    let served_extra = |nhs: &NhsNumber| {
        extra.iter().any(|resource| {
            resource["identifier"].as_array().is_some_and(|ids| {
                ids.iter()
                    .any(|id| id["system"] == NHS_NUMBER_SYSTEM && id["value"] == nhs.as_str())
            })
        })
    };
    if incoming.iter().any(|item| {
        let nhs = &item.entry.nhs_number;
        !state.estate.has_patient(&practice.ods, nhs) && !served_extra(nhs)
    }) {
        state.transactions_refused.fetch_add(1, Ordering::Relaxed);
        return outcome(
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
            "subject is not a patient of this practice",
        );
    }
    // The estate records them too (and may be failing on purpose).
    let all: Vec<WritebackEntry> = incoming.iter().map(|i| i.entry.clone()).collect();
    if let Err(error) = state.estate.write_back(&practice, &all).await {
        return gp_error(error);
    }
    let mut stored = lock(&state.communications);
    let mut responses = Vec::with_capacity(incoming.len());
    for item in incoming {
        let key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            item.key.hash(&mut hasher);
            hasher.finish()
        };
        if let Some(existing) = stored.get(&key) {
            state.conditional_matches.fetch_add(1, Ordering::Relaxed);
            let existing = uuid::Uuid::from_bytes(*existing);
            responses.push(json!({ "response": {
                "status": "200 OK",
                "location": format!("Communication/{existing}/_history/1")
            }}));
        } else {
            let uuid = uuid::Uuid::new_v4();
            let id = uuid.to_string();
            let mut resource = item.resource;
            resource["id"] = id.clone().into();
            responses.push(json!({ "response": {
                "status": "201 Created",
                "location": format!("Communication/{id}/_history/1")
            }}));
            stored.insert(key, uuid.into_bytes());
            let mut recent = lock(&state.recent_communications);
            if recent.len() == MAX_COMMUNICATIONS_KEPT {
                recent.pop_front();
            }
            recent.push_back(resource);
        }
    }
    drop(stored);
    fhir_json(
        StatusCode::OK,
        &json!({ "resourceType": "Bundle", "type": "transaction-response", "entry": responses }),
    )
}

/// `POST /oauth2/token`: SMART Backend Services client credentials.
async fn token(State(state): State<Arc<ServerState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(auth) = &state.auth else {
        return outcome(StatusCode::NOT_FOUND, "not-found", "no token endpoint");
    };
    let answer = |status: StatusCode, value: Value| {
        (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            value.to_string(),
        )
            .into_response()
    };
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({ "error": "invalid_request", "error_description": "a form body is required" }),
        );
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    match auth.token(&state.token_url, &form) {
        Ok(issued) => answer(StatusCode::OK, issued),
        Err(refusal) => answer(
            refusal.status,
            json!({ "error": refusal.code, "error_description": refusal.description }),
        ),
    }
}
