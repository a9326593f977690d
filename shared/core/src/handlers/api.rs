//! The staff API's operations, independent of HTTP: validation with
//! errors that name the field, and every action audited with the caller.

use super::optout_token;
use super::report::{self, CampaignReport, CampaignView};
use super::Hub;
use crate::domain::{
    plan, AgeBand, Campaign, CampaignId, CampaignOptions, CampaignState, LifecycleError,
    MessageTemplate, OdsCode, Participation, PostcodeFilter, Progress, StaffId, Target,
};
use crate::ports::{
    GpConnection, Job, Practice, QueueError, ScheduledAction, SchedulerError, StoreError,
};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Errors of the staff API; `status()` is the one place they become HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request is not valid")]
    Validation(Vec<FieldError>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the hub is busy; try again")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Validation(_) => 400,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Unavailable(_) => 503,
            Self::Internal(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation_failed",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// The JSON error body shared by every route.
    pub fn body(&self) -> serde_json::Value {
        let errors = match self {
            Self::Validation(errors) => errors.clone(),
            _ => Vec::new(),
        };
        serde_json::json!({
            "code": self.code(),
            "message": self.to_string(),
            "field": errors.first().map(|e| e.field.clone()),
            "errors": errors,
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(what) => Self::Conflict(format!(
                "changed by someone else; reload and retry ({what})"
            )),
            StoreError::Unavailable { what, .. } => Self::Unavailable(what),
            StoreError::Unexpected(error) => Self::Internal(error),
        }
    }
}

impl From<SchedulerError> for ApiError {
    fn from(error: SchedulerError) -> Self {
        match error {
            SchedulerError::Unavailable(why) => Self::Unavailable(why),
            SchedulerError::Unexpected(error) => Self::Internal(error),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        match error {
            QueueError::Unavailable(why) => Self::Unavailable(why),
            QueueError::Unexpected(error) => Self::Internal(error),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(error: LifecycleError) -> Self {
        match error {
            LifecycleError::SelfApproval => Self::Forbidden(error.to_string()),
            LifecycleError::DeadlineInPast => Self::field("optout_deadline", error.to_string()),
            _ => Self::Conflict(error.to_string()),
        }
    }
}

impl From<super::JobError> for ApiError {
    fn from(error: super::JobError) -> Self {
        match error {
            super::JobError::Store(e) => e.into(),
            super::JobError::Queue(e) => e.into(),
            other => Self::Internal(anyhow::anyhow!(other.to_string())),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRequest {
    #[serde(default)]
    pub min_age: Option<i64>,
    #[serde(default)]
    pub max_age: Option<i64>,
    /// Areas (`SE`), districts (`SE13`) or sectors (`SE13 6`).
    #[serde(default)]
    pub postcodes: Vec<String>,
    /// ODS codes; empty means every participating practice.
    #[serde(default)]
    pub practices: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaignRequest {
    pub name: String,
    pub message: String,
    #[serde(default)]
    pub target: TargetRequest,
    /// RFC 3339, e.g. `2026-11-22T18:00:00Z`.
    pub optout_deadline: String,
    pub justification: String,
    #[serde(default)]
    pub postal_fallback: bool,
    #[serde(default)]
    pub one_message_per_mobile: bool,
}

/// A validated create request.
pub struct NewCampaign {
    pub name: String,
    pub template: MessageTemplate,
    pub target: Target,
    pub deadline: DateTime<Utc>,
    pub justification: String,
    pub options: CampaignOptions,
}

const MAX_AGE: i64 = 130;

pub fn validate(request: &CreateCampaignRequest, hub: &Hub) -> Result<NewCampaign, ApiError> {
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.into(),
            message,
        })
    };
    let name = request.name.trim().to_string();
    if name.is_empty() {
        fail("name", "is required".into());
    } else if name.chars().count() > 100 {
        fail("name", "must be at most 100 characters".into());
    }
    let template = match MessageTemplate::parse(&request.message, &hub.config.template_rules) {
        Ok(template) => Some(template),
        Err(error) => {
            fail("message", error.to_string());
            None
        }
    };
    let age_field =
        |value: Option<i64>, field: &str, fail: &mut dyn FnMut(&str, String)| match value {
            Some(age) if !(0..=MAX_AGE).contains(&age) => {
                fail(field, format!("must be between 0 and {MAX_AGE}"));
                None
            }
            other => other.map(|age| age as u32),
        };
    let min_age = age_field(request.target.min_age, "target.min_age", &mut fail);
    let max_age = age_field(request.target.max_age, "target.max_age", &mut fail);
    if let (Some(min), Some(max)) = (min_age, max_age) {
        if min > max {
            fail(
                "target.max_age",
                format!("must not be below target.min_age ({min})"),
            );
        }
    }
    let mut postcodes = Vec::new();
    for (i, raw) in request.target.postcodes.iter().enumerate() {
        match PostcodeFilter::parse(raw) {
            Ok(filter) if !postcodes.contains(&filter) => postcodes.push(filter),
            Ok(_) => {}
            Err(error) => fail(
                &format!("target.postcodes[{i}]"),
                format!("{error}: give an area (SE), district (SE13) or sector (SE13 6)"),
            ),
        }
    }
    let mut practices = Vec::new();
    for (i, raw) in request.target.practices.iter().enumerate() {
        match OdsCode::parse(raw) {
            Ok(ods) if !practices.contains(&ods) => practices.push(ods),
            Ok(_) => {}
            Err(error) => fail(&format!("target.practices[{i}]"), error.to_string()),
        }
    }
    let now = hub.now();
    let deadline = match DateTime::parse_from_rfc3339(request.optout_deadline.trim()) {
        Ok(deadline) => {
            let deadline = deadline.with_timezone(&Utc);
            if deadline <= now {
                fail("optout_deadline", "must be in the future".into());
            } else if deadline - now > hub.config.max_deadline_ahead {
                fail(
                    "optout_deadline",
                    format!(
                        "must be within {} days",
                        hub.config.max_deadline_ahead.num_days()
                    ),
                );
            }
            Some(deadline)
        }
        Err(_) => {
            fail(
                "optout_deadline",
                "must be an RFC 3339 date and time, e.g. 2026-11-22T18:00:00Z".into(),
            );
            None
        }
    };
    let justification = request.justification.trim().to_string();
    if justification.chars().count() < 10 {
        fail(
            "justification",
            "must explain the emergency (at least 10 characters)".into(),
        );
    } else if justification.chars().count() > 2000 {
        fail("justification", "must be at most 2000 characters".into());
    }
    match (template, deadline) {
        (Some(template), Some(deadline)) if errors.is_empty() => Ok(NewCampaign {
            name,
            template,
            target: Target {
                age: (min_age.is_some() || max_age.is_some()).then_some(AgeBand {
                    min: min_age,
                    max: max_age,
                }),
                postcodes,
                practices,
            },
            deadline,
            justification,
            options: CampaignOptions {
                postal_fallback: request.postal_fallback,
                one_message_per_mobile: request.one_message_per_mobile,
            },
        }),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// What the staff see before they commit to a campaign.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub example: String,
    pub encoding: crate::domain::Encoding,
    pub characters: usize,
    pub fragments: u32,
    pub worst_case_fragments: u32,
    pub practices: Vec<PracticeEstimate>,
    pub estimated_cohort: u64,
    pub optout_deadline: DateTime<Utc>,
    pub plan: plan::SendPlan,
    pub eta: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PracticeEstimate {
    pub ods: OdsCode,
    pub name: String,
    pub list_size: u64,
    pub dsa_signed: bool,
}

async fn preview(hub: &Hub, new: &NewCampaign) -> Result<Preview, ApiError> {
    let practices: Vec<PracticeEstimate> = hub
        .store
        .list_practices()
        .await?
        .into_iter()
        .filter(|p| new.target.includes_practice(&p.ods))
        .map(|p| PracticeEstimate {
            dsa_signed: p.dsa_signed.is_some(),
            ods: p.ods,
            name: p.name,
            list_size: p.list_size,
        })
        .collect();
    // Registry list sizes are the upper bound; age and postcode filters cut it.
    let estimated_cohort = practices
        .iter()
        .filter(|p| p.dsa_signed)
        .map(|p| p.list_size)
        .sum();
    let example = new.template.measure_example();
    let worst = new.template.worst_case_length();
    let plan = plan::plan(
        estimated_cohort,
        example.fragments,
        &hub.config.providers,
        hub.config.rate_cap,
        plan::TARGET,
    );
    Ok(Preview {
        example: new.template.example(),
        encoding: example.encoding,
        characters: example.units,
        fragments: example.fragments,
        worst_case_fragments: worst.fragments,
        eta: plan::human_duration(plan.eta),
        practices,
        estimated_cohort,
        optout_deadline: new.deadline,
        plan,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub campaign: CampaignView,
    pub preview: Preview,
}

/// Validates and previews without creating anything.
pub async fn dry_run(hub: &Hub, request: &CreateCampaignRequest) -> Result<Preview, ApiError> {
    let new = validate(request, hub)?;
    preview(hub, &new).await
}

pub async fn create_campaign(
    hub: &Hub,
    caller: &StaffId,
    request: &CreateCampaignRequest,
) -> Result<Created, ApiError> {
    let new = validate(request, hub)?;
    let preview = preview(hub, &new).await?;
    let now = hub.now();
    let campaign = Campaign {
        id: CampaignId::new(),
        name: new.name,
        template: new.template,
        target: new.target,
        options: new.options,
        optout_deadline: new.deadline,
        justification: new.justification,
        created_by: caller.clone(),
        created_at: now,
        approved_by: None,
        approved_at: None,
        state: CampaignState::PendingApproval,
        state_changed_at: now,
        cancelled_by: None,
        cancel_reason: None,
        extraction_jobs_queued: false,
        progress: Progress::default(),
        purged_at: None,
        purged_items: None,
        version: 0,
    };
    hub.store.create_campaign(&campaign).await?;
    hub.audit(
        Some(&campaign.id),
        caller.as_str(),
        "campaign_created",
        serde_json::json!({
            "name": campaign.name,
            "target": campaign.target,
            "optout_deadline": campaign.optout_deadline,
            "estimated_cohort": preview.estimated_cohort,
            "meets_target": preview.plan.meets_target,
        }),
    )
    .await?;
    tracing::info!(campaign = %campaign.id, "campaign created");
    Ok(Created {
        campaign: report::view(hub, &campaign).await?,
        preview,
    })
}

pub fn parse_campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
    CampaignId::parse(raw).ok_or_else(|| ApiError::field("id", "is not a campaign id"))
}

async fn load(hub: &Hub, id: &CampaignId) -> Result<Campaign, ApiError> {
    hub.store
        .get_campaign(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("campaign {id}")))
}

/// A second authorised person approves: practices are notified and the
/// deadline is scheduled.
pub async fn approve(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
) -> Result<CampaignView, ApiError> {
    let mut campaign = load(hub, id).await?;
    campaign.approve(caller, hub.now())?;
    let practices: Vec<Practice> = hub
        .store
        .list_practices()
        .await?
        .into_iter()
        .filter(|p| p.dsa_signed.is_some() && campaign.target.includes_practice(&p.ods))
        .collect();
    let participations: Vec<Participation> = practices
        .iter()
        .map(|p| Participation::notified(id.clone(), p.ods.clone()))
        .collect();
    // Participations first: if the approval write then loses a race, the
    // winner created the same ones (insert-if-absent).
    hub.store.create_participations(&participations).await?;
    let campaign = hub.store.update_campaign(&campaign).await?;
    hub.scheduler
        .schedule(
            &ScheduledAction::Deadline {
                campaign: id.clone(),
            },
            campaign.optout_deadline,
        )
        .await?;
    let notices: Vec<Job> = practices
        .iter()
        .map(|p| Job::Notice {
            campaign: id.clone(),
            ods: p.ods.clone(),
        })
        .collect();
    hub.queue.send(&notices).await?;
    hub.audit(
        Some(id),
        caller.as_str(),
        "campaign_approved",
        serde_json::json!({ "practices_notified": practices.len() }),
    )
    .await?;
    tracing::info!(campaign = %id, practices = practices.len(), "campaign approved");
    Ok(report::view(hub, &campaign).await?)
}

pub async fn cancel(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
    reason: &str,
) -> Result<CampaignView, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ApiError::field("reason", "is required"));
    }
    let now = hub.now();
    let mut refusal = None;
    // Sending bumps the campaign's version constantly; re-read and retry so
    // a cancel mid-send always lands.
    let (campaign, cancelled) = hub
        .update_campaign_with(id, |campaign| {
            refusal = campaign.cancel(caller, reason.to_string(), now).err();
            refusal.is_none()
        })
        .await?;
    if let (false, Some(refusal)) = (cancelled, refusal) {
        return Err(refusal.into());
    }
    tracing::warn!(campaign = %id, "campaign cancelled");
    hub.audit(
        Some(id),
        caller.as_str(),
        "campaign_cancelled",
        serde_json::json!({ "reason": reason }),
    )
    .await?;
    hub.scheduler
        .cancel(&ScheduledAction::Deadline {
            campaign: id.clone(),
        })
        .await?;
    hub.scheduler
        .cancel(&ScheduledAction::Purge {
            campaign: id.clone(),
        })
        .await?;
    hub.queue
        .send(&[Job::Purge {
            campaign: id.clone(),
        }])
        .await?;
    Ok(report::view(hub, &campaign).await?)
}

/// Staff move the deadline (bring it forward when the emergency cannot wait).
pub async fn reschedule_deadline(
    hub: &Hub,
    caller: &StaffId,
    id: &CampaignId,
    raw_deadline: &str,
) -> Result<CampaignView, ApiError> {
    let deadline = DateTime::parse_from_rfc3339(raw_deadline.trim())
        .map_err(|_| {
            ApiError::field(
                "optout_deadline",
                "must be an RFC 3339 date and time, e.g. 2026-11-22T18:00:00Z",
            )
        })?
        .with_timezone(&Utc);
    let now = hub.now();
    // "Now" typed a moment ago is still now.
    let deadline = if deadline < now && now - deadline <= chrono::Duration::minutes(1) {
        now
    } else {
        deadline
    };
    if deadline - now > hub.config.max_deadline_ahead {
        return Err(ApiError::field("optout_deadline", "is too far ahead"));
    }
    let mut campaign = load(hub, id).await?;
    let previous = campaign.optout_deadline;
    campaign.reschedule_deadline(deadline, now)?;
    let campaign = hub.store.update_campaign(&campaign).await?;
    if campaign.state == CampaignState::OptOutWindow {
        hub.scheduler
            .schedule(
                &ScheduledAction::Deadline {
                    campaign: id.clone(),
                },
                deadline,
            )
            .await?;
    }
    hub.audit(
        Some(id),
        caller.as_str(),
        "deadline_changed",
        serde_json::json!({ "from": previous, "to": deadline }),
    )
    .await?;
    Ok(report::view(hub, &campaign).await?)
}

/// Records a practice's opt-out (by link, or by staff when the practice
/// replied to the notice by email).
pub async fn record_opt_out(
    hub: &Hub,
    actor: &str,
    id: &CampaignId,
    raw_ods: &str,
) -> Result<Participation, ApiError> {
    let ods = OdsCode::parse(raw_ods).map_err(|e| ApiError::field("ods", e.to_string()))?;
    for _ in 0..10 {
        let campaign = load(hub, id).await?;
        campaign.check_opt_out_allowed(hub.now())?;
        let Some(mut participation) = hub.store.get_participation(id, &ods).await? else {
            return Err(ApiError::NotFound(format!(
                "practice {ods} in campaign {id}"
            )));
        };
        match participation.opt_out(actor, hub.now()) {
            Ok(true) => {}
            Ok(false) => return Ok(participation),
            Err(refused) => return Err(ApiError::Conflict(refused.to_string())),
        }
        match hub.store.update_participation(&participation).await {
            Ok(stored) => {
                hub.audit(
                    Some(id),
                    actor,
                    "practice_opted_out",
                    serde_json::json!({ "ods": ods }),
                )
                .await?;
                tracing::info!(campaign = %id, ods = %ods, "practice opted out");
                return Ok(stored);
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(other) => return Err(other.into()),
        }
    }
    Err(ApiError::Unavailable("opt-out kept conflicting".into()))
}

/// The practice's one-click link.
pub async fn opt_out_by_link(hub: &Hub, token: &str) -> Result<Participation, ApiError> {
    let claim = optout_token::verify(&hub.optout_key, token, hub.now())
        .map_err(|e| ApiError::Forbidden(e.to_string()))?;
    record_opt_out(hub, "practice-link", &claim.campaign, claim.ods.as_str()).await
}

pub async fn get(hub: &Hub, id: &CampaignId) -> Result<CampaignView, ApiError> {
    let campaign = load(hub, id).await?;
    Ok(report::view(hub, &campaign).await?)
}

/// A campaign with its per-practice progress: what `GET /campaigns/{id}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignDetail {
    #[serde(flatten)]
    pub campaign: CampaignView,
    pub approved_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    pub practices: Vec<report::PracticeReport>,
    pub opted_out_practices: Vec<OdsCode>,
    pub failed_practices: Vec<OdsCode>,
}

pub async fn detail(hub: &Hub, id: &CampaignId) -> Result<CampaignDetail, ApiError> {
    let campaign = load(hub, id).await?;
    let report = report::build(hub, &campaign).await?;
    let mut view = report::summary(&campaign);
    // As `report::view`: totals and ETA once the deadline has passed.
    if !matches!(
        campaign.state,
        CampaignState::PendingApproval | CampaignState::OptOutWindow
    ) {
        view.totals = Some(report.totals);
        view.eta_seconds = report.eta_seconds;
    }
    Ok(CampaignDetail {
        campaign: view,
        approved_at: campaign.approved_at,
        cancel_reason: campaign.cancel_reason,
        practices: report.practices,
        opted_out_practices: report.opted_out_practices,
        failed_practices: report.failed_practices,
    })
}

pub async fn list(hub: &Hub) -> Result<Vec<CampaignView>, ApiError> {
    let mut campaigns = hub.store.list_campaigns().await?;
    campaigns.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    let mut views = Vec::with_capacity(campaigns.len());
    for campaign in &campaigns {
        views.push(report::summary(campaign));
    }
    Ok(views)
}

pub async fn report(hub: &Hub, id: &CampaignId) -> Result<CampaignReport, ApiError> {
    let campaign = load(hub, id).await?;
    Ok(report::build(hub, &campaign).await?)
}

pub async fn audit(hub: &Hub, id: &CampaignId) -> Result<Vec<crate::domain::AuditEvent>, ApiError> {
    load(hub, id).await?;
    Ok(hub.store.list_audit(id).await?)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PracticeRequest {
    pub ods: String,
    pub name: String,
    pub notice_email: String,
    #[serde(default)]
    pub dsa_signed: Option<String>,
    /// The practice's GP system. Left out, it is the simulated estate where
    /// the hub runs one (the local stack), and an error everywhere else.
    #[serde(default)]
    pub connection: Option<GpConnection>,
    #[serde(default)]
    pub list_size: u64,
}

/// `simulated_gp`: whether this hub runs the simulated GP estate (only the
/// local stack does); elsewhere a practice must name its real GP system.
pub fn validate_practice(
    request: &PracticeRequest,
    simulated_gp: bool,
) -> Result<Practice, ApiError> {
    let mut errors = Vec::new();
    let ods = OdsCode::parse(&request.ods)
        .map_err(|e| {
            errors.push(FieldError {
                field: "ods".into(),
                message: e.to_string(),
            })
        })
        .ok();
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        errors.push(FieldError {
            field: "name".into(),
            message: "is required (at most 200 characters)".into(),
        });
    }
    let email = request.notice_email.trim();
    let valid_email = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !email.contains(' ')
    });
    if !valid_email {
        errors.push(FieldError {
            field: "notice_email".into(),
            message: "must be an email address".into(),
        });
    }
    let dsa_signed = match request.dsa_signed.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => match NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
            Ok(date) => Some(date),
            Err(_) => {
                errors.push(FieldError {
                    field: "dsa_signed".into(),
                    message: "must be a date, YYYY-MM-DD".into(),
                });
                None
            }
        },
    };
    let connection = match &request.connection {
        Some(GpConnection::Fhir { base_url, .. })
            if !(base_url.starts_with("https://") || base_url.starts_with("http://")) =>
        {
            errors.push(FieldError {
                field: "connection.base_url".into(),
                message: "must be an http(s) URL".into(),
            });
            None
        }
        Some(GpConnection::Simulated) | None if simulated_gp => Some(GpConnection::Simulated),
        Some(GpConnection::Simulated) => {
            errors.push(FieldError {
                field: "connection".into(),
                message: "the simulated GP estate exists only on the local stack: \
                          give the practice's GP system (kind fhir, base_url)"
                    .into(),
            });
            None
        }
        None => {
            errors.push(FieldError {
                field: "connection".into(),
                message: "is required: the practice's GP system (kind fhir, base_url)".into(),
            });
            None
        }
        Some(connection) => Some(connection.clone()),
    };
    match (ods, connection) {
        (Some(ods), Some(connection)) if errors.is_empty() => Ok(Practice {
            ods,
            name: name.to_string(),
            notice_email: email.to_string(),
            dsa_signed,
            connection,
            list_size: request.list_size,
        }),
        _ => Err(ApiError::Validation(errors)),
    }
}

pub async fn put_practice(
    hub: &Hub,
    caller: &StaffId,
    request: &PracticeRequest,
) -> Result<Practice, ApiError> {
    let mut request = request.clone();
    if request.connection.is_none() {
        // A registry update that names no GP system keeps the one on record.
        if let Ok(ods) = OdsCode::parse(&request.ods) {
            if let Some(existing) = hub.store.get_practice(&ods).await? {
                request.connection = Some(existing.connection);
            }
        }
    }
    let practice = validate_practice(&request, hub.config.simulated_gp)?;
    hub.store.put_practice(&practice).await?;
    hub.audit(
        None,
        caller.as_str(),
        "practice_saved",
        serde_json::json!({ "ods": practice.ods, "dsa_signed": practice.dsa_signed }),
    )
    .await?;
    Ok(practice)
}

pub async fn list_practices(hub: &Hub) -> Result<Vec<Practice>, ApiError> {
    let mut practices = hub.store.list_practices().await?;
    practices.sort_by(|a, b| a.ods.cmp(&b.ods));
    Ok(practices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn practice(connection: Option<GpConnection>) -> PracticeRequest {
        PracticeRequest {
            ods: "G85001".into(),
            name: "Lewisham Medical Centre".into(),
            notice_email: "manager@example.nhs.uk".into(),
            dsa_signed: Some("2026-01-15".into()),
            connection,
            list_size: 12_000,
        }
    }

    fn refused_field(result: Result<Practice, ApiError>) -> String {
        let error = result.expect_err("refused");
        error.body()["field"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn a_deployed_hub_needs_each_practices_real_gp_system() {
        // No connection, or the simulator's, is an error naming the field.
        assert_eq!(
            refused_field(validate_practice(&practice(None), false)),
            "connection"
        );
        assert_eq!(
            refused_field(validate_practice(
                &practice(Some(GpConnection::Simulated)),
                false
            )),
            "connection"
        );
        let fhir = GpConnection::Fhir {
            base_url: "https://gp.example.nhs.uk/fhir".into(),
            bulk_export: false,
            secret: Some("sms-hub/gp/G85001".into()),
        };
        let saved = validate_practice(&practice(Some(fhir.clone())), false).expect("saved");
        assert_eq!(saved.connection, fhir);
        // The local stack fills in its simulated estate.
        let local = validate_practice(&practice(None), true).expect("saved");
        assert_eq!(local.connection, GpConnection::Simulated);
    }
}
