//! The staff API, the practice's opt-out link and the providers' delivery
//! callbacks as axum routers: one HTTP path. The `api`, `optout-link` and
//! `receipts` Lambda functions serve them with `lambda_http::run`, and
//! `hub local serve` and the local stack with `axum::serve`.
//!
//! Whoever authenticates in front of the router (the Lambda glue from API
//! Gateway's IAM principal, `hub local serve` from a SigV4 signature) puts
//! the [`Caller`] in the request's extensions; the staff routes take it
//! out and refuse a request without one.
//!
//! Every error has one JSON shape, `{code, message, field, errors[]}`,
//! written in one place ([`HttpError`]'s `IntoResponse`): whatever the
//! caller got wrong is a 4xx, and a panic in a handler becomes a 500
//! rather than a dead process.

mod json;
mod optout;
mod receipts;

pub use json::{from_json, parse_body, parse_json, JsonBody, RawBody};
pub use receipts::receipts_router;

use crate::domain::{authorise, CampaignId, Need, OdsCode, Staff, StaffId};
use crate::handlers::api::{
    self, ApiError, CreateCampaignRequest, ExtractionDecisionRequest, PracticeRequest,
};
use crate::handlers::Hub;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::handler::Handler;
use axum::http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;

/// Set on the answer to a create replayed with its `Idempotency-Key`.
pub const REPLAYED: &str = "idempotent-replayed";

/// Largest request body accepted (the biggest real one, a campaign, is a
/// few kilobytes).
pub const MAX_BODY: usize = 256 * 1024;

/// The authenticated caller, in the request's extensions: the IAM
/// principal on AWS, the verified local identity in `hub local serve`.
/// As an extractor it refuses a request without one with a 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub StaffId);

/// Why the authentication in front of the router found no caller (a bad
/// signature, say), in the request's extensions: the 403's message. A
/// request that was simply not signed needs none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAuthenticated(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let reason = match parts.extensions.get::<NotAuthenticated>() {
            Some(NotAuthenticated(reason)) => reason.clone(),
            None => "the request must be signed by an authorised staff identity".to_string(),
        };
        tracing::info!(method = %parts.method, %reason, "request refused");
        Err(ApiError::Forbidden(reason))
    }
}

/// What an operation needs of its caller, as a type for [`Authorised`].
pub trait Requires {
    const NEED: Need;
}

macro_rules! requirement {
    ($($(#[$doc:meta])* $name:ident = $need:expr;)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl Requires for $name {
            const NEED: Need = $need;
        }
    )*};
}

requirement! {
    /// Reads: any staff role.
    Reads = Need::READ;
    /// Creating a campaign.
    Requests = Need::REQUEST;
    /// Approving a campaign.
    Approves = Need::APPROVE;
    /// Cancelling, or a practice's opt-out on its behalf.
    Stops = Need::STOP;
    /// Asking for, or approving, a deadline change.
    Deadlines = Need::DEADLINE;
    /// The practice registry.
    Registers = Need::REGISTRY;
}

/// The caller, authorised for what `N` requires: their roles from
/// [`crate::handlers::HubConfig::access`] and, for a change, the person.
/// A refusal is a 403 naming what is missing, before the body is read
/// (so nothing changes), and is audited.
pub struct Authorised<N>(pub Staff, std::marker::PhantomData<N>);

impl<N: Requires> FromRequestParts<Hub> for Authorised<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Hub) -> Result<Self, ApiError> {
        let Caller(caller) = Caller::from_request_parts(parts, hub).await?;
        match authorise(&hub.config.access, caller.as_str(), N::NEED) {
            Ok(staff) => Ok(Self(staff, std::marker::PhantomData)),
            Err(refused) => {
                let path = parts.uri.path();
                let campaign = path
                    .strip_prefix("/campaigns/")
                    .and_then(|rest| rest.split('/').next())
                    .and_then(CampaignId::parse);
                tracing::info!(method = %parts.method, reason = %refused, "request refused");
                hub.audit(
                    campaign.as_ref(),
                    caller.as_str(),
                    "access_refused",
                    serde_json::json!({
                        "method": parts.method.as_str(),
                        "path": path.chars().take(100).collect::<String>(),
                        "needed": N::NEED.describe(),
                        "missing": refused.missing(),
                    }),
                )
                .await?;
                Err(ApiError::Forbidden(refused.to_string()))
            }
        }
    }
}

/// Every error the routers answer with. The handlers' own errors are
/// [`ApiError`]s; the rest arise before a handler runs.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("no such route: {0}")]
    NoRoute(String),
    #[error("{path} accepts {allow}")]
    MethodNotAllowed { path: &'static str, allow: String },
    #[error("the request body must be at most {MAX_BODY} bytes")]
    PayloadTooLarge,
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Api(error) => {
                StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// The one place an error becomes a response.
impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = match &self {
            Self::Api(error) => {
                if let ApiError::Internal(source) = error {
                    tracing::error!(error = %format!("{source:#}"), "request failed");
                }
                error.body()
            }
            other => {
                let code = match other {
                    Self::NoRoute(_) => "not_found",
                    Self::MethodNotAllowed { .. } => "method_not_allowed",
                    _ => "payload_too_large",
                };
                serde_json::json!({
                    "code": code,
                    "message": other.to_string(),
                    "field": null,
                    "errors": [],
                })
            }
        };
        let mut response = json_bytes(self.status(), body.to_string().into_bytes());
        if let Self::MethodNotAllowed { allow, .. } = &self {
            if let Ok(allow) = HeaderValue::from_str(allow) {
                response.headers_mut().insert(ALLOW, allow);
            }
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        HttpError::Api(self).into_response()
    }
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// A JSON response that no cache keeps.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(body) => json_bytes(status, body),
        Err(error) => ApiError::Internal(anyhow::anyhow!("response not serialisable: {error}"))
            .into_response(),
    }
}

/// The methods the routes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
    Put,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Put => MethodFilter::PUT,
        }
    }
}

/// One operation: a path (`{name}` matches one segment), a method and its
/// handler.
struct Operation<S = Hub> {
    path: &'static str,
    verb: Verb,
    /// Served without a caller.
    public: bool,
    handler: MethodRouter<S>,
}

fn operation<H, T, S>(path: &'static str, verb: Verb, public: bool, handler: H) -> Operation<S>
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    Operation {
        path,
        verb,
        public,
        handler: axum::routing::on(verb.filter(), handler),
    }
}

/// Every operation of the staff API and the opt-out link: the one table
/// the routers are built from and [`routes`] lists.
fn operations() -> Vec<Operation> {
    use Verb::{Get, Post, Put};
    let staff = false;
    let public = true;
    vec![
        operation("/campaigns", Get, staff, list_campaigns),
        operation("/campaigns", Post, staff, create_campaign),
        operation("/campaigns/{id}", Get, staff, campaign_detail),
        operation("/campaigns/{id}/approve", Post, staff, approve),
        operation("/campaigns/{id}/cancel", Post, staff, cancel),
        operation("/campaigns/{id}/deadline", Post, staff, deadline),
        operation(
            "/campaigns/{id}/deadline/approve",
            Post,
            staff,
            approve_deadline,
        ),
        operation("/campaigns/{id}/opt-outs", Post, staff, opt_out),
        operation(
            "/campaigns/{id}/extraction-decisions",
            Post,
            staff,
            extraction_decision,
        ),
        operation("/campaigns/{id}/report", Get, staff, report),
        operation("/campaigns/{id}/audit", Get, staff, audit),
        operation("/campaigns/{id}/evidence", Get, staff, evidence),
        operation("/practices", Get, staff, list_practices),
        operation("/practices/audit", Get, staff, registry_audit),
        operation("/practices/{ods}", Put, staff, put_practice),
        operation("/practices/{ods}/approve", Post, staff, approve_practice),
        operation("/optout", Get, public, optout::ask),
        operation("/optout", Post, public, optout::confirm),
    ]
}

/// One route of a router: its path template and its methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub path: &'static str,
    pub methods: Vec<&'static str>,
    /// Served without a caller (the practice's opt-out link).
    pub public: bool,
}

/// Every route of [`router`]; `openapi.yaml` describes exactly these.
pub fn routes() -> Vec<RouteSpec> {
    by_path(operations())
        .into_iter()
        .map(|(route, _)| route)
        .collect()
}

fn by_path<S: Clone + Send + Sync + 'static>(
    operations: Vec<Operation<S>>,
) -> Vec<(RouteSpec, MethodRouter<S>)> {
    let mut routes: Vec<(RouteSpec, MethodRouter<S>)> = Vec::new();
    for operation in operations {
        match routes
            .iter_mut()
            .find(|(route, _)| route.path == operation.path)
        {
            Some((route, handlers)) => {
                route.methods.push(operation.verb.name());
                route.public &= operation.public;
                *handlers = std::mem::take(handlers).merge(operation.handler);
            }
            None => routes.push((
                RouteSpec {
                    path: operation.path,
                    methods: vec![operation.verb.name()],
                    public: operation.public,
                },
                operation.handler,
            )),
        }
    }
    routes
}

/// The staff API and the opt-out link, for the api function and `hub
/// local serve`.
pub fn router(hub: Hub) -> Router {
    build(operations()).with_state(hub)
}

/// Only the opt-out link, for the public optout-link function: every other
/// path is a 404.
pub fn public_router(hub: Hub) -> Router {
    build(operations().into_iter().filter(|o| o.public).collect()).with_state(hub)
}

/// A router of `operations` with what every router has: a 405 naming the
/// allowed methods, a 404 for any other path, a trailing slash ignored,
/// the body limit and a panic caught as a 500.
fn build<S: Clone + Send + Sync + 'static>(operations: Vec<Operation<S>>) -> Router<S> {
    let mut router = Router::new();
    for (route, handlers) in by_path(operations) {
        let path = route.path;
        let allow = route.methods.join(", ");
        let refuse = move || {
            let error = HttpError::MethodNotAllowed {
                path,
                allow: allow.clone(),
            };
            async move { error }
        };
        // A GET route would also answer HEAD.
        let handlers = handlers.head(refuse.clone()).fallback(refuse);
        router = router
            .route(path, handlers.clone())
            .route(&format!("{path}/"), handlers);
    }
    router
        .fallback(no_route)
        .route_layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(axum::middleware::map_response(too_large_in_json))
        .layer(CatchPanicLayer::custom(panicked))
}

async fn no_route(uri: Uri) -> HttpError {
    HttpError::NoRoute(uri.path().chars().take(100).collect())
}

/// The body limit refuses a request whose `Content-Length` is too large
/// before any handler runs, in plain text.
async fn too_large_in_json(response: Response) -> Response {
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return HttpError::PayloadTooLarge.into_response();
    }
    response
}

/// Logged without the panic's message, which may hold request data.
fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal(anyhow::anyhow!("a request handler panicked")).into_response()
}

/// One path segment, percent-decoded; `field` names it in an error. An
/// empty segment (`/campaigns//approve`) is no route at all.
async fn segment(parts: &mut Parts, field: &str) -> Result<String, HttpError> {
    match Path::<String>::from_request_parts(parts, &()).await {
        Ok(Path(segment)) if segment.is_empty() => Err(no_route(parts.uri.clone()).await),
        Ok(Path(segment)) => Ok(segment),
        Err(_) => Err(ApiError::field(field, "must be valid UTF-8 once percent-decoded").into()),
    }
}

/// The `{id}` of a campaign route.
struct CampaignPath(CampaignId);

impl<S: Send + Sync> FromRequestParts<S> for CampaignPath {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        Ok(Self(api::parse_campaign_id(&segment(parts, "id").await?)?))
    }
}

/// The `{ods}` of a practice route.
struct OdsPath(OdsCode);

impl<S: Send + Sync> FromRequestParts<S> for OdsPath {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        let ods = segment(parts, "ods").await?;
        OdsCode::parse(&ods)
            .map(Self)
            .map_err(|error| ApiError::field("ods", error.to_string()).into())
    }
}

/// The first value of a query parameter, decoded.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
}

fn flag(query: Option<&str>, name: &str) -> Result<bool, ApiError> {
    match query_param(query, name).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::field(name, "must be true or false")),
    }
}

#[derive(Debug, Serialize)]
struct CampaignList {
    campaigns: Vec<crate::handlers::report::CampaignView>,
}

#[derive(Debug, Serialize)]
struct AuditList {
    events: Vec<crate::domain::AuditEvent>,
}

#[derive(Debug, Serialize)]
struct PracticeList {
    practices: Vec<crate::ports::Practice>,
    /// Changes waiting for a second registry admin.
    pending_changes: Vec<api::PracticeChange>,
}

/// `POST /practices/{ods}/approve`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PracticeApproval {
    /// The change waiting for approval, as the approver saw it.
    pub change_id: String,
}

/// `POST /campaigns/{id}/cancel`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub reason: String,
}

/// `POST /campaigns/{id}/deadline`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineRequest {
    /// RFC 3339; "now" (a minute either way) fires the deadline at once.
    pub optout_deadline: String,
    /// Why: required to bring the deadline forward once practices have
    /// been notified.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /campaigns/{id}/deadline/approve`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineApproval {
    /// The deadline waiting for approval, as the approver saw it.
    pub optout_deadline: String,
    /// Sooner than the minimum window after the last practice notice.
    #[serde(default)]
    pub emergency_override: bool,
    /// Required with an emergency override.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /campaigns/{id}/approve`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// The campaign's `version` the approver was shown.
    pub version: u64,
}

/// `POST /campaigns/{id}/opt-outs`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptOutRequest {
    pub ods: String,
}

type Answer = Result<Response, ApiError>;

async fn list_campaigns(State(hub): State<Hub>, _: Authorised<Reads>) -> Answer {
    let campaigns = api::list(&hub).await?;
    Ok(json(StatusCode::OK, &CampaignList { campaigns }))
}

async fn create_campaign(
    State(hub): State<Hub>,
    Authorised(staff, _): Authorised<Requests>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Answer {
    let key = match headers.get(api::IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::field(api::IDEMPOTENCY_KEY, "must be visible ASCII characters")
        })?),
    };
    let mut dry_run = flag(query.as_deref(), "dry_run")?;
    let mut body = parse_json(&body)?;
    if let Value::Object(fields) = &mut body {
        match fields.remove("dry_run") {
            None => {}
            Some(Value::Bool(flag)) => dry_run |= flag,
            Some(_) => return Err(ApiError::field("dry_run", "must be true or false")),
        }
    }
    let create: CreateCampaignRequest = from_json(body)?;
    if dry_run {
        let preview = api::dry_run(&hub, &create).await?;
        return Ok(json(StatusCode::OK, &preview));
    }
    let (created, replayed) = api::create_campaign_once(&hub, &staff.id, &create, key).await?;
    let location = HeaderValue::from_str(&format!("/campaigns/{}", created.campaign.id))
        .map_err(|error| ApiError::Internal(anyhow::anyhow!("campaign location: {error}")))?;
    let mut response = json(StatusCode::CREATED, &created);
    response.headers_mut().insert(LOCATION, location);
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

async fn campaign_detail(
    State(hub): State<Hub>,
    _: Authorised<Reads>,
    CampaignPath(id): CampaignPath,
) -> Answer {
    Ok(json(StatusCode::OK, &api::detail(&hub, &id).await?))
}

async fn approve(
    State(hub): State<Hub>,
    Authorised(staff, _): Authorised<Approves>,
    CampaignPath(id): CampaignPath,
    JsonBody(body): JsonBody<ApproveRequest>,
) -> Answer {
    let view = api::approve_seen(&hub, &staff.id, &id, Some(body.version)).await?;
    Ok(json(StatusCode::OK, &view))
}

async fn approve_deadline(
    State(hub): State<Hub>,
    Authorised(staff, _): Authorised<Approves>,
    CampaignPath(id): CampaignPath,
    JsonBody(body): JsonBody<DeadlineApproval>,
) -> Answer {
    let view = api::approve_deadline_change(
        &hub,
        &staff.id,
        &id,
        &body.optout_deadline,
        body.emergency_override,
        body.reason.as_deref(),
    )
    .await?;
    Ok(json(StatusCode::OK, &view))
}

async fn cancel(
    State(hub): State<Hub>,
    Authorised(staff, _): Authorised<Stops>,
    CampaignPath(id): CampaignPath,
    JsonBody(body): JsonBody<CancelRequest>,
) -> Answer {
    let view = api::cancel(&hub, &staff.id, &id, &body.reason).await?;
    Ok(json(StatusCode::OK, &view))
}

async fn deadline(
    State(hub): State<Hub>,
    Authorised(staff, _): Authorised<Deadlines>,
    CampaignPath(id): CampaignPath,
    JsonBody(body): JsonBody<DeadlineRequest>,
) -> Answer {
    let view = api::reschedule_deadline(
        &hub,
        &staff.id,
        &id,
        &body.optout_deadline,
        body.reason.as_deref(),
    )
    .await?;
    Ok(json(StatusCode::OK, &view))
}

async fn opt_out(
    State(hub): State<Hub>,
    Authorised(staff, _): Authorised<Stops>,
    CampaignPath(id): CampaignPath,
    JsonBody(body): JsonBody<OptOutRequest>,
) -> Answer {
    // Practices join a campaign when it is approved; before that there is
    // nothing to opt out of yet (rather than "not found").
    if let Some(campaign) = hub.store.get_campaign(&id).await? {
        if campaign.state == crate::domain::CampaignState::PendingApproval {
            return Err(ApiError::Conflict(format!(
                "campaign {id} is waiting for approval; practices can opt out once it is approved"
            )));
        }
    }
    let participation = api::record_opt_out(&hub, staff.id.as_str(), &id, &body.ods).await?;
    Ok(json(StatusCode::OK, &participation))
}

/// Proceeding with a held practice, or excluding it, decides who is
/// messaged: an approver's call.
async fn extraction_decision(
    State(hub): State<Hub>,
    Authorised(staff, _): Authorised<Approves>,
    CampaignPath(id): CampaignPath,
    JsonBody(body): JsonBody<ExtractionDecisionRequest>,
) -> Answer {
    let participation = api::decide_extraction(&hub, &staff.id, &id, &body).await?;
    Ok(json(StatusCode::OK, &participation))
}

async fn report(
    State(hub): State<Hub>,
    _: Authorised<Reads>,
    CampaignPath(id): CampaignPath,
) -> Answer {
    Ok(json(StatusCode::OK, &api::report(&hub, &id).await?))
}

async fn audit(
    State(hub): State<Hub>,
    _: Authorised<Reads>,
    CampaignPath(id): CampaignPath,
) -> Answer {
    let events = api::audit(&hub, &id).await?;
    Ok(json(StatusCode::OK, &AuditList { events }))
}

async fn evidence(
    State(hub): State<Hub>,
    _: Authorised<Reads>,
    CampaignPath(id): CampaignPath,
) -> Answer {
    let evidence = crate::handlers::evidence::for_campaign(&hub, &id).await?;
    Ok(json(StatusCode::OK, &evidence))
}

async fn list_practices(State(hub): State<Hub>, _: Authorised<Reads>) -> Answer {
    let practices = api::list_practices(&hub).await?;
    let pending_changes = api::pending_practice_changes(&hub).await?;
    Ok(json(
        StatusCode::OK,
        &PracticeList {
            practices,
            pending_changes,
        },
    ))
}

async fn approve_practice(
    State(hub): State<Hub>,
    Authorised(staff, _): Authorised<Registers>,
    OdsPath(ods): OdsPath,
    JsonBody(body): JsonBody<PracticeApproval>,
) -> Answer {
    let practice = api::approve_practice_change(&hub, &staff.id, &ods, &body.change_id).await?;
    Ok(json(StatusCode::OK, &practice))
}

/// The hub's own audit trail: registry changes and refusals outside any
/// campaign.
async fn registry_audit(State(hub): State<Hub>, _: Authorised<Reads>) -> Answer {
    let events = hub.store.list_hub_audit().await?;
    Ok(json(StatusCode::OK, &AuditList { events }))
}

async fn put_practice(
    State(hub): State<Hub>,
    Authorised(staff, _): Authorised<Registers>,
    OdsPath(path_ods): OdsPath,
    JsonBody(body): JsonBody<PracticeRequest>,
) -> Answer {
    if OdsCode::parse(&body.ods).is_ok_and(|ods| ods != path_ods) {
        return Err(ApiError::field(
            "ods",
            format!("must match the practice in the path ({path_ods})"),
        ));
    }
    match api::put_practice(&hub, &staff.id, &body).await? {
        api::PracticeSaved::Saved(practice) => Ok(json(StatusCode::OK, &practice)),
        api::PracticeSaved::AwaitingApproval(change) => Ok(json(StatusCode::ACCEPTED, &change)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    async fn body(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), MAX_BODY)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[test]
    fn routes_list_each_path_once_with_its_methods() {
        let routes = routes();
        let campaigns = routes
            .iter()
            .find(|r| r.path == "/campaigns")
            .expect("route");
        assert_eq!(campaigns.methods, ["GET", "POST"]);
        assert!(!campaigns.public);
        let optout = routes.iter().find(|r| r.path == "/optout").expect("route");
        assert_eq!(optout.methods, ["GET", "POST"]);
        assert!(optout.public);
        assert_eq!(routes.iter().filter(|r| r.public).count(), 1);
        assert_eq!(routes.len(), 16);
    }

    async fn call(router: &Router, method: &str, path: &str, body: Body) -> Response {
        use tower::ServiceExt;
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(body)
            .expect("request");
        router
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {})
    }

    #[tokio::test]
    async fn the_layers_answer_in_the_one_shape() {
        let router: Router = build(vec![
            operation("/boom", Verb::Get, true, || async {
                if true {
                    panic!("a bug, with request data in its message");
                }
            }),
            operation(
                "/echo",
                Verb::Post,
                true,
                |RawBody(body): RawBody| async move { body.len().to_string() },
            ),
        ]);
        let response = call(&router, "GET", "/boom", Body::empty()).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body(response).await["message"], "internal error");

        let response = call(&router, "POST", "/echo", Body::from(vec![b'x'; MAX_BODY])).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the limit itself is allowed"
        );
        // Refused on its Content-Length, and while being read.
        let large = vec![b'x'; MAX_BODY + 1];
        let response = call(&router, "POST", "/echo", Body::from(large.clone())).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body(response).await["code"], "payload_too_large");
        let streamed = Body::from_stream(futures::stream::iter([Ok::<_, std::io::Error>(large)]));
        let response = call(&router, "POST", "/echo", streamed).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body(response).await["code"], "payload_too_large");

        let response = call(&router, "HEAD", "/boom", Body::empty()).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET");
        let response = call(&router, "GET", "/echo/", Body::empty()).await;
        assert_eq!(
            response.headers()[ALLOW],
            "POST",
            "a trailing slash is the same route"
        );
        let response = call(&router, "GET", "/nowhere", Body::empty()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(body(response).await["message"], "no such route: /nowhere");
    }

    #[tokio::test]
    async fn every_error_has_the_one_shape() {
        let refused = HttpError::MethodNotAllowed {
            path: "/campaigns",
            allow: "GET, POST".into(),
        }
        .into_response();
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(refused.headers()[ALLOW], "GET, POST");
        assert_eq!(refused.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(
            body(refused).await,
            serde_json::json!({
                "code": "method_not_allowed",
                "message": "/campaigns accepts GET, POST",
                "field": null,
                "errors": [],
            })
        );
        let too_large = HttpError::PayloadTooLarge.into_response();
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body(too_large).await["code"], "payload_too_large");
        let invalid = ApiError::field("name", "is required").into_response();
        assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
        let invalid = body(invalid).await;
        assert_eq!(invalid["field"], "name");
        assert_eq!(invalid["errors"][0]["message"], "is required");
        let panicked = panicked(Box::new("boom")).into_response();
        assert_eq!(panicked.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body(panicked).await["code"], "internal");
    }
}
