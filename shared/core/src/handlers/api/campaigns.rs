//! Creating a campaign: validation, the preview staff see before they
//! confirm, and the create itself.

use super::{load, ApiError, FieldError};
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
    let name = super::check_text("name", &request.name, 1, 100, false).unwrap_or_else(|error| {
        fail(&error.field, error.message);
        String::new()
    });
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
    let justification = super::check_text("justification", &request.justification, 10, 2000, true)
        .unwrap_or_else(|error| {
            let message = if error.message.starts_with("must be at least") {
                "must explain the emergency (at least 10 characters)".into()
            } else {
                error.message
            };
            fail(&error.field, message);
            String::new()
        });
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
    /// As a patient with no recorded name sees it (the fallbacks), when
    /// the message uses names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example_without_names: Option<String>,
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

/// What the approver is shown: the stored campaign's preview, as its
/// creator saw it (cohort and plan from today's registry).
pub async fn preview_of(hub: &Hub, campaign: &Campaign) -> Result<Preview, ApiError> {
    let new = NewCampaign {
        name: campaign.name.clone(),
        template: campaign.template.clone(),
        target: campaign.target.clone(),
        deadline: campaign.optout_deadline,
        justification: campaign.justification.clone(),
        options: campaign.options,
    };
    preview(hub, &new).await
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
        example_without_names: (new.template.uses(crate::domain::Field::FirstName)
            || new.template.uses(crate::domain::Field::LastName))
        .then(|| new.template.example_without_names()),
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
    Ok(create_campaign_once(hub, caller, request, None).await?.0)
}

/// The `Idempotency-Key` header of a create.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// One person's key names one campaign: its id is derived from both, so a
/// replayed create (a retried request, or a signed one sent again within
/// its five minutes) finds the first campaign instead of making another.
fn keyed_id(caller: &StaffId, key: &str) -> Result<CampaignId, ApiError> {
    use sha2::{Digest, Sha256};
    let valid = (8..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(ApiError::field(
            IDEMPOTENCY_KEY,
            "must be 8 to 128 visible ASCII characters (a UUID, say)",
        ));
    }
    let digest = Sha256::digest(format!("{}\n{key}", caller.as_str()));
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    CampaignId::parse(&hex).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("keyed id")))
}

/// Whether a stored campaign is what this request would have created.
fn same_request(stored: &Campaign, new: &NewCampaign) -> bool {
    stored.name == new.name
        && stored.template == new.template
        && stored.target == new.target
        && stored.optout_deadline == new.deadline
        && stored.justification == new.justification
        && stored.options == new.options
}

/// Creates the campaign, or with a key already used by this caller for the
/// same request, answers with the first one (`true`: a replay).
pub async fn create_campaign_once(
    hub: &Hub,
    caller: &StaffId,
    request: &CreateCampaignRequest,
    key: Option<&str>,
) -> Result<(Created, bool), ApiError> {
    let id = match key {
        Some(key) => keyed_id(caller, key.trim())?,
        None => CampaignId::new(),
    };
    let new = validate(request, hub)?;
    if let Some(first) = hub.store.get_campaign(&id).await? {
        return replayed(hub, caller, first, &new).await;
    }
    let preview = preview(hub, &new).await?;
    let now = hub.now();
    let campaign = Campaign {
        id: id.clone(),
        name: new.name.clone(),
        template: new.template.clone(),
        target: new.target.clone(),
        options: new.options,
        optout_deadline: new.deadline,
        justification: new.justification.clone(),
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
        deadline_change: None,
        paused_until: None,
        version: 0,
    };
    match hub.store.create_campaign(&campaign).await {
        Ok(()) => {}
        // The same key, twice at once: the other request won.
        Err(crate::ports::StoreError::Conflict(_)) if key.is_some() => {
            let first = load(hub, &id).await?;
            return replayed(hub, caller, first, &new).await;
        }
        Err(other) => return Err(other.into()),
    }
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
    Ok((
        Created {
            campaign: report::view(hub, &campaign).await?,
            preview,
        },
        false,
    ))
}

async fn replayed(
    hub: &Hub,
    caller: &StaffId,
    first: Campaign,
    new: &NewCampaign,
) -> Result<(Created, bool), ApiError> {
    if &first.created_by != caller || !same_request(&first, new) {
        return Err(ApiError::Conflict(format!(
            "this {IDEMPOTENCY_KEY} was used for a different campaign; send a new key"
        )));
    }
    let preview = preview(hub, new).await?;
    tracing::info!(campaign = %first.id, "create replayed");
    Ok((
        Created {
            campaign: report::view(hub, &first).await?,
            preview,
        },
        true,
    ))
}
