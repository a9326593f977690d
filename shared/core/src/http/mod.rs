//! HTTP routing of the staff API and the public opt-out link, independent
//! of any web framework. The `api` and `optout-link` Lambda functions (via
//! `lambda_http`) and `hub local serve` (via hyper) each turn their request
//! into an [`HttpRequest`], authenticate the caller their own way, call
//! [`route`] and send back the [`HttpResponse`].
//!
//! Every error has the shared JSON shape of [`ApiError::body`]
//! (`{code, message, field, errors[]}`); whatever the caller got wrong is a
//! 4xx, and a panic in a handler becomes a 500 rather than a dead process.

mod optout;

use crate::domain::StaffId;
use crate::handlers::api::{self, ApiError, CreateCampaignRequest, PracticeRequest};
use crate::handlers::Hub;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::panic::AssertUnwindSafe;

/// Largest request body accepted (the biggest real one, a campaign, is a
/// few kilobytes).
pub const MAX_BODY: usize = 256 * 1024;

/// A request as the router sees it.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// `GET`, `POST`, ... (any case).
    pub method: String,
    /// The path, without the query string; e.g. `/campaigns/0123abcd4567`.
    pub path: String,
    /// The raw query string without the `?`, still percent-encoded.
    pub query: String,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The authenticated caller (the IAM principal on AWS, the verified
    /// local identity in `hub local serve`); `None` when unauthenticated.
    pub caller: Option<StaffId>,
}

impl HttpRequest {
    /// A request for `path_and_query`, e.g. `/campaigns?dry_run=true`.
    pub fn new(method: &str, path_and_query: &str) -> Self {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        Self {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            ..Self::default()
        }
    }

    /// A JSON body.
    pub fn json(mut self, body: &Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.headers
            .push(("content-type".into(), "application/json".into()));
        self
    }

    pub fn caller(mut self, caller: &StaffId) -> Self {
        self.caller = Some(caller.clone());
        self
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a query parameter, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_owned())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(status: u16, body: &impl Serialize) -> Self {
        match serde_json::to_vec(body) {
            Ok(body) => Self {
                status,
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("cache-control".into(), "no-store".into()),
                ],
                body,
            },
            Err(error) => {
                tracing::error!(%error, "response not serialisable");
                error_response(500, "internal", "internal error")
            }
        }
    }

    pub fn html(status: u16, page: String) -> Self {
        Self {
            status,
            headers: vec![
                ("content-type".into(), "text/html; charset=utf-8".into()),
                ("cache-control".into(), "no-store".into()),
                (
                    "content-security-policy".into(),
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                     frame-ancestors 'none'"
                        .into(),
                ),
                ("x-content-type-options".into(), "nosniff".into()),
                ("referrer-policy".into(), "no-referrer".into()),
            ],
            body: page.into_bytes(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, if it is JSON.
    pub fn json_body(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_string(), value));
        self
    }
}

/// One route: a path template (`{name}` matches one segment) and its methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub path: &'static str,
    pub methods: &'static [&'static str],
    /// Served without a caller (the practice's opt-out link).
    pub public: bool,
}

const fn staff(path: &'static str, methods: &'static [&'static str]) -> RouteSpec {
    RouteSpec {
        path,
        methods,
        public: false,
    }
}

/// Every route of the router; `openapi.yaml` describes exactly these.
pub const ROUTES: &[RouteSpec] = &[
    staff("/campaigns", &["GET", "POST"]),
    staff("/campaigns/{id}", &["GET"]),
    staff("/campaigns/{id}/approve", &["POST"]),
    staff("/campaigns/{id}/cancel", &["POST"]),
    staff("/campaigns/{id}/deadline", &["POST"]),
    staff("/campaigns/{id}/opt-outs", &["POST"]),
    staff("/campaigns/{id}/report", &["GET"]),
    staff("/campaigns/{id}/audit", &["GET"]),
    staff("/campaigns/{id}/evidence", &["GET"]),
    staff("/practices", &["GET"]),
    staff("/practices/{ods}", &["PUT"]),
    RouteSpec {
        path: "/optout",
        methods: &["GET", "POST"],
        public: true,
    },
];

/// The route a path belongs to, with the values of its `{parameters}`.
pub fn match_route(path: &str) -> Option<(&'static RouteSpec, Vec<String>)> {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    ROUTES.iter().find_map(|route| {
        let template: Vec<&str> = route.path.split('/').collect();
        if template.len() != segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (t, s) in template.iter().zip(&segments) {
            if t.starts_with('{') {
                if s.is_empty() {
                    return None;
                }
                params.push(decode_segment(s));
            } else if t != s {
                return None;
            }
        }
        Some((route, params))
    })
}

fn decode_segment(segment: &str) -> String {
    // `+` is literal in a path; decode only `%XX`.
    let escaped = segment.replace('+', "%2B");
    form_urlencoded::parse(format!("x={escaped}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Whether `path` is served without a caller; an adapter skips its
/// authentication for these.
pub fn is_public(path: &str) -> bool {
    match_route(path).is_some_and(|(route, _)| route.public)
}

/// A JSON error body with the shape of [`ApiError::body`], for the errors
/// that arise before a handler runs.
pub fn error_response(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::json(
        status,
        &serde_json::json!({
            "code": code,
            "message": message,
            "field": null,
            "errors": [],
        }),
    )
}

fn api_error(error: &ApiError) -> HttpResponse {
    if let ApiError::Internal(source) = error {
        tracing::error!(error = %format!("{source:#}"), "request failed");
    }
    HttpResponse::json(error.status(), &error.body())
}

/// Serves one request. Never panics: a panic in a handler is caught and
/// answered with a 500.
pub async fn route(hub: &Hub, request: &HttpRequest) -> HttpResponse {
    match AssertUnwindSafe(dispatch(hub, request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(_) => {
            tracing::error!(method = %request.method, "request handler panicked");
            error_response(500, "internal", "internal error")
        }
    }
}

async fn dispatch(hub: &Hub, request: &HttpRequest) -> HttpResponse {
    let Some((route, params)) = match_route(&request.path) else {
        let shown: String = request.path.chars().take(100).collect();
        return error_response(404, "not_found", &format!("no such route: {shown}"));
    };
    let method = request.method.to_ascii_uppercase();
    if !route.methods.contains(&method.as_str()) {
        let allowed = route.methods.join(", ");
        return error_response(
            405,
            "method_not_allowed",
            &format!("{} accepts {allowed}", route.path),
        )
        .with_header("allow", allowed);
    }
    if request.body.len() > MAX_BODY {
        return error_response(
            413,
            "payload_too_large",
            &format!("the request body must be at most {MAX_BODY} bytes"),
        );
    }
    if route.public {
        return optout::serve(hub, request, &method).await;
    }
    let Some(caller) = &request.caller else {
        return error_response(
            403,
            "forbidden",
            "the request must be signed by an authorised staff identity",
        );
    };
    let param = |i: usize| params.get(i).map(String::as_str).unwrap_or_default();
    let result = match (route.path, method.as_str()) {
        ("/campaigns", "GET") => api::list(hub)
            .await
            .map(|campaigns| HttpResponse::json(200, &CampaignList { campaigns })),
        ("/campaigns", "POST") => create(hub, caller, request).await,
        ("/campaigns/{id}", "GET") => match api::parse_campaign_id(param(0)) {
            Ok(id) => api::detail(hub, &id)
                .await
                .map(|detail| HttpResponse::json(200, &detail)),
            Err(error) => Err(error),
        },
        ("/campaigns/{id}/approve", "POST") => match api::parse_campaign_id(param(0)) {
            Ok(id) => api::approve(hub, caller, &id)
                .await
                .map(|view| HttpResponse::json(200, &view)),
            Err(error) => Err(error),
        },
        ("/campaigns/{id}/cancel", "POST") => cancel(hub, caller, param(0), request).await,
        ("/campaigns/{id}/deadline", "POST") => deadline(hub, caller, param(0), request).await,
        ("/campaigns/{id}/opt-outs", "POST") => opt_out(hub, caller, param(0), request).await,
        ("/campaigns/{id}/report", "GET") => match api::parse_campaign_id(param(0)) {
            Ok(id) => api::report(hub, &id)
                .await
                .map(|report| HttpResponse::json(200, &report)),
            Err(error) => Err(error),
        },
        ("/campaigns/{id}/audit", "GET") => match api::parse_campaign_id(param(0)) {
            Ok(id) => api::audit(hub, &id)
                .await
                .map(|events| HttpResponse::json(200, &AuditList { events })),
            Err(error) => Err(error),
        },
        ("/campaigns/{id}/evidence", "GET") => match api::parse_campaign_id(param(0)) {
            Ok(id) => crate::handlers::evidence::for_campaign(hub, &id)
                .await
                .map(|evidence| HttpResponse::json(200, &evidence)),
            Err(error) => Err(error),
        },
        ("/practices", "GET") => api::list_practices(hub)
            .await
            .map(|practices| HttpResponse::json(200, &PracticeList { practices })),
        ("/practices/{ods}", "PUT") => put_practice(hub, caller, param(0), request).await,
        _ => Ok(error_response(
            404,
            "not_found",
            "no such route for this method",
        )),
    };
    result.unwrap_or_else(|error| api_error(&error))
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
}

/// `POST /campaigns/{id}/opt-outs`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptOutRequest {
    pub ods: String,
}

/// Parses a JSON body; a syntax error names the position.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::field("body", "is required: a JSON object"));
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::field("body", format!("is not valid JSON: {error}")))
}

/// Reads a request type out of JSON; an error names the field by its path
/// (`target.postcodes[0]`). The body must have exactly the shape the type
/// reads: serde would also take an array for a struct, or ignore a stray
/// field beside an enum's tag.
pub fn from_json<T: DeserializeOwned + Serialize>(value: Value) -> Result<T, ApiError> {
    let read: T = serde_path_to_error::deserialize(&value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        let named = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), named) {
            (".", Some(name)) => name.to_string(),
            (".", None) => "body".to_string(),
            (path, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => {
                path.to_string()
            }
            (path, Some(name)) => format!("{path}.{name}"),
            (path, None) => path.to_string(),
        };
        let message = match message.split_once(", expected struct ") {
            Some((head, _)) => format!("{head}, expected a JSON object"),
            None => message,
        };
        ApiError::field(&field, message)
    })?;
    let echo = serde_json::to_value(&read).map_err(|error| {
        ApiError::Internal(anyhow::anyhow!("request not serialisable: {error}"))
    })?;
    match stray(&value, &echo, "") {
        Some((field, message)) => Err(ApiError::field(&field, message)),
        None => Ok(read),
    }
}

/// The first place where `input` has more, or another shape, than what
/// was read from it (`echo`).
fn stray(input: &Value, echo: &Value, path: &str) -> Option<(String, String)> {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (input, echo) {
        (Value::Object(input), Value::Object(echo)) => {
            input.iter().find_map(|(key, value)| match echo.get(key) {
                Some(read) => stray(value, read, &at(key)),
                None => Some((at(key), "unknown field".to_string())),
            })
        }
        (_, Value::Object(_)) => Some((
            if path.is_empty() {
                "body".into()
            } else {
                path.to_string()
            },
            "must be a JSON object".to_string(),
        )),
        (Value::Array(input), Value::Array(echo)) => input
            .iter()
            .zip(echo)
            .enumerate()
            .find_map(|(i, (value, read))| stray(value, read, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn parse_body<T: DeserializeOwned + Serialize>(body: &[u8]) -> Result<T, ApiError> {
    from_json(parse_json(body)?)
}

fn flag(request: &HttpRequest, name: &str) -> Result<bool, ApiError> {
    match request.query_param(name).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::field(name, "must be true or false")),
    }
}

async fn create(
    hub: &Hub,
    caller: &StaffId,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let mut dry_run = flag(request, "dry_run")?;
    let mut body = parse_json(&request.body)?;
    if let Value::Object(fields) = &mut body {
        match fields.remove("dry_run") {
            None => {}
            Some(Value::Bool(flag)) => dry_run |= flag,
            Some(_) => return Err(ApiError::field("dry_run", "must be true or false")),
        }
    }
    let create: CreateCampaignRequest = from_json(body)?;
    if dry_run {
        let preview = api::dry_run(hub, &create).await?;
        return Ok(HttpResponse::json(200, &preview));
    }
    let created = api::create_campaign(hub, caller, &create).await?;
    let location = format!("/campaigns/{}", created.campaign.id);
    Ok(HttpResponse::json(201, &created).with_header("location", location))
}

async fn cancel(
    hub: &Hub,
    caller: &StaffId,
    id: &str,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = api::parse_campaign_id(id)?;
    let body: CancelRequest = parse_body(&request.body)?;
    let view = api::cancel(hub, caller, &id, &body.reason).await?;
    Ok(HttpResponse::json(200, &view))
}

async fn deadline(
    hub: &Hub,
    caller: &StaffId,
    id: &str,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = api::parse_campaign_id(id)?;
    let body: DeadlineRequest = parse_body(&request.body)?;
    let view = api::reschedule_deadline(hub, caller, &id, &body.optout_deadline).await?;
    Ok(HttpResponse::json(200, &view))
}

async fn opt_out(
    hub: &Hub,
    caller: &StaffId,
    id: &str,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = api::parse_campaign_id(id)?;
    let body: OptOutRequest = parse_body(&request.body)?;
    // Practices join a campaign when it is approved; before that there is
    // nothing to opt out of yet (rather than "not found").
    if let Some(campaign) = hub.store.get_campaign(&id).await? {
        if campaign.state == crate::domain::CampaignState::PendingApproval {
            return Err(ApiError::Conflict(format!(
                "campaign {id} is waiting for approval; practices can opt out once it is approved"
            )));
        }
    }
    let participation = api::record_opt_out(hub, &caller.0, &id, &body.ods).await?;
    Ok(HttpResponse::json(200, &participation))
}

async fn put_practice(
    hub: &Hub,
    caller: &StaffId,
    ods: &str,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let path_ods = crate::domain::OdsCode::parse(ods)
        .map_err(|error| ApiError::field("ods", error.to_string()))?;
    let body: PracticeRequest = parse_body(&request.body)?;
    if crate::domain::OdsCode::parse(&body.ods).is_ok_and(|ods| ods != path_ods) {
        return Err(ApiError::field(
            "ods",
            format!("must match the practice in the path ({path_ods})"),
        ));
    }
    let practice = api::put_practice(hub, caller, &body).await?;
    Ok(HttpResponse::json(200, &practice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_their_templates() {
        let (route, params) = match_route("/campaigns/abc12345/opt-outs").expect("route");
        assert_eq!(route.path, "/campaigns/{id}/opt-outs");
        assert_eq!(params, vec!["abc12345".to_string()]);
        assert_eq!(
            match_route("/campaigns/").map(|(r, _)| r.path),
            Some("/campaigns")
        );
        assert!(match_route("/campaigns//approve").is_none());
        assert!(match_route("/nope").is_none());
        assert!(match_route("").is_none());
        assert!(is_public("/optout"));
        assert!(!is_public("/campaigns"));
    }

    #[test]
    fn json_errors_name_the_field() {
        let error = parse_body::<CreateCampaignRequest>(b"{\"name\": 1}").unwrap_err();
        assert_eq!(error.body()["field"], "name");
        let error = parse_body::<CreateCampaignRequest>(b"{\"nme\": \"x\"}").unwrap_err();
        assert_eq!(error.body()["field"], "nme");
        let error =
            parse_body::<CreateCampaignRequest>(br#"{"target": {"min_agee": 1}}"#).unwrap_err();
        assert_eq!(error.body()["field"], "target.min_agee");
        let error = parse_body::<CreateCampaignRequest>(br#"{"target": {}}"#).unwrap_err();
        assert_eq!(error.body()["field"], "name");
        let error = parse_body::<CreateCampaignRequest>(
            br#"{"name":"a","message":"b","optout_deadline":"c","justification":"d","target":{"postcodes":[1]}}"#,
        )
        .unwrap_err();
        assert_eq!(error.body()["field"], "target.postcodes[0]");
        let error = parse_body::<CreateCampaignRequest>(b"{\"name\": ").unwrap_err();
        assert_eq!(error.body()["field"], "body");
        assert!(error.body()["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 1 column")));
        let error = parse_body::<CreateCampaignRequest>(b"[]").unwrap_err();
        assert!(error.body()["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("expected a JSON object")));
        let error = parse_body::<CreateCampaignRequest>(b"{}").unwrap_err();
        assert_eq!(error.body()["field"], "name");
    }

    #[test]
    fn bodies_must_have_the_shape_of_the_type() {
        let base = r#""name":"a","message":"b","optout_deadline":"c","justification":"d""#;
        let ok = format!(r#"{{{base},"target":{{"min_age":null}}}}"#);
        assert!(parse_body::<CreateCampaignRequest>(ok.as_bytes()).is_ok());
        let array = format!(r#"{{{base},"target":[null, null]}}"#);
        let error = parse_body::<CreateCampaignRequest>(array.as_bytes()).unwrap_err();
        assert_eq!(error.body()["field"], "target");
        let stray = br#"{"ods":"G85001","name":"n","notice_email":"a@b.c","connection":{"kind":"simulated","x":1}}"#;
        let error = parse_body::<PracticeRequest>(stray).unwrap_err();
        assert_eq!(error.body()["field"], "connection.x");
    }
}
