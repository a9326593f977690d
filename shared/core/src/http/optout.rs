//! The practice's opt-out link: `GET /optout?token=…` shows what the
//! campaign is and a button; the button `POST`s the same token and records
//! the opt-out. Two steps, so that an email security scanner that follows
//! every link in the notice cannot opt a practice out by itself.

use super::{query_param, RawBody};
use crate::domain::{Campaign, OdsCode, ParticipationState};
use crate::handlers::api::{self, ApiError};
use crate::handlers::{optout_token, Hub};
use axum::extract::{RawQuery, State};
use axum::http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// `GET /optout`: the page with the button.
pub(super) async fn ask(
    State(hub): State<Hub>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let result = match token(query.as_deref(), &[]) {
        Ok(token) => show(&hub, &token).await,
        Err(error) => Err(error),
    };
    result.unwrap_or_else(|error| error_page(&headers, error))
}

/// `POST /optout`: the button, with the token in the form (or the query).
pub(super) async fn confirm(
    State(hub): State<Hub>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    RawBody(body): RawBody,
) -> Response {
    let result = match token(query.as_deref(), &body) {
        Ok(token) => record(&hub, &token).await,
        Err(error) => Err(error),
    };
    result.unwrap_or_else(|error| error_page(&headers, error))
}

fn token(query: Option<&str>, form: &[u8]) -> Result<String, ApiError> {
    let from_form = || {
        form_urlencoded::parse(form)
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned())
    };
    query_param(query, "token")
        .or_else(from_form)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::field("token", "is required: use the link from the notice email"))
}

struct Context {
    campaign: Campaign,
    ods: OdsCode,
    practice_name: String,
    state: ParticipationState,
}

async fn context(hub: &Hub, token: &str) -> Result<Context, ApiError> {
    let claim = optout_token::verify(&hub.optout_key, token, hub.now())
        .map_err(|error| ApiError::Forbidden(error.to_string()))?;
    let campaign = hub
        .store
        .get_campaign(&claim.campaign)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("campaign {}", claim.campaign)))?;
    let participation = hub
        .store
        .get_participation(&claim.campaign, &claim.ods)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("practice {} in this campaign", claim.ods)))?;
    let practice_name = hub
        .store
        .get_practice(&claim.ods)
        .await?
        .map(|p| p.name)
        .unwrap_or_else(|| claim.ods.to_string());
    Ok(Context {
        campaign,
        ods: claim.ods,
        practice_name,
        state: participation.state,
    })
}

async fn show(hub: &Hub, token: &str) -> Result<Response, ApiError> {
    let cx = context(hub, token).await?;
    let practice = format!("{} ({})", escape(&cx.practice_name), cx.ods);
    let deadline = cx
        .campaign
        .optout_deadline
        .format("%H:%M on %d %B %Y (UTC)");
    let about = format!(
        "<p>Campaign: <strong>{}</strong></p>\
         <p>Message to patients:</p><blockquote>{}</blockquote>\
         <p>Opt-out deadline: {deadline}</p>",
        escape(&cx.campaign.name),
        escape(cx.campaign.template.text()),
    );
    if cx.state == ParticipationState::OptedOut {
        return Ok(page(
            200,
            "Already opted out",
            &format!("<p>{practice} has already opted out of this campaign.</p>{about}"),
        ));
    }
    if cx.state != ParticipationState::Notified
        || cx.campaign.check_opt_out_allowed(hub.now()).is_err()
    {
        return Ok(page(
            409,
            "Too late to opt out",
            &format!(
                "<p>The opt-out window for {practice} has closed; the campaign is {}.</p>{about}",
                cx.campaign.state
            ),
        ));
    }
    Ok(page(
        200,
        "Opt out of this campaign?",
        &format!(
            "<p>{practice} is due to take part in an emergency text campaign. \
             If the practice opts out, none of its patients will be sent this message.</p>\
             {about}\
             <form method=\"post\"><input type=\"hidden\" name=\"token\" value=\"{}\">\
             <button type=\"submit\">Opt {practice} out</button></form>",
            escape(token)
        ),
    ))
}

async fn record(hub: &Hub, token: &str) -> Result<Response, ApiError> {
    let participation = api::opt_out_by_link(hub, token).await?;
    let cx = context(hub, token).await?;
    let when = participation
        .opted_out_at
        .map(|at| at.format(" at %H:%M on %d %B %Y (UTC)").to_string())
        .unwrap_or_default();
    Ok(page(
        200,
        "Opted out",
        &format!(
            "<p>{} ({}) opted out of <strong>{}</strong>{when}. \
             None of its patients will be sent this message.</p>",
            escape(&cx.practice_name),
            cx.ods,
            escape(&cx.campaign.name)
        ),
    ))
}

/// A browser gets an HTML page; anything else the shared JSON shape.
fn error_page(headers: &HeaderMap, error: ApiError) -> Response {
    let wants_html = headers
        .get_all(ACCEPT)
        .iter()
        .any(|accept| String::from_utf8_lossy(accept.as_bytes()).contains("text/html"));
    if !wants_html {
        return error.into_response();
    }
    let detail = match &error {
        ApiError::Validation(errors) => errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    };
    page(
        error.status(),
        "This opt-out link cannot be used",
        &format!(
            "<p>{}.</p><p>Please reply to the notice email instead.</p>",
            escape(&detail)
        ),
    )
}

fn page(status: u16, title: &str, body: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let html = format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title} — SMS Engagement Hub</title>\
             <style>body{{font-family:Arial,sans-serif;max-width:40em;margin:2em auto;padding:0 1em}}\
             blockquote{{border-left:4px solid #005eb8;padding-left:1em}}\
             button{{background:#005eb8;color:#fff;border:0;padding:.6em 1.2em;font-size:1em}}</style>\
             </head><body><h1>{title}</h1>{body}</body></html>"
    );
    let headers = [
        (CONTENT_TYPE, "text/html; charset=utf-8"),
        (CACHE_CONTROL, "no-store"),
        (
            CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'",
        ),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
    ]
    .map(|(name, value)| (name, HeaderValue::from_static(value)));
    (status, headers, html).into_response()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
