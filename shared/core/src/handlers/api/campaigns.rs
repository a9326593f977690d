//! Creating a campaign: validation, the preview staff see before they
//! confirm, and the create itself.

use super::{ApiError, FieldError};
use crate::domain::{
    plan, AgeBand, Campaign, CampaignId, CampaignOptions, CampaignState, MessageTemplate, OdsCode,
    PostcodeFilter, Progress, StaffId, Target,
};
use crate::handlers::report::{self, CampaignView};
use crate::handlers::Hub;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
        paused_until: None,
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
