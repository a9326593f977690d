//! `hub campaign ...`: create (preview, confirm), approve, cancel, move the
//! deadline, opt a practice out, list, show, audit, report, watch.

use super::{segment, Context};
use crate::client::CliError;
use crate::format::when;
use crate::render::{self, print_json};
use crate::views::{
    self, AuditEvent, CampaignView, Created, Detail, Participation, Preview, Report,
};
use chrono::Utc;
use clap::Subcommand;
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// GOV.UK Notify's price of one text message fragment beyond the free
/// allowance (2025-26), in pounds; override with `--price-per-fragment`.
pub const DEFAULT_PRICE_PER_FRAGMENT: f64 = 0.0227;

#[derive(Subcommand, Debug)]
pub enum CampaignCommand {
    /// Preview a campaign described in a TOML file, then create it once you
    /// confirm (it then waits for a second person's approval).
    Create {
        /// The campaign: name, message, optout_deadline, justification,
        /// [target], postal_fallback, one_message_per_mobile.
        #[arg(long)]
        file: PathBuf,
        /// Create without asking (for scripts).
        #[arg(long)]
        yes: bool,
        /// Only show the preview; create nothing.
        #[arg(long)]
        dry_run: bool,
        /// Price of one SMS fragment, for the cost estimate.
        #[arg(long, env = "HUB_PRICE_PER_FRAGMENT")]
        price_per_fragment: Option<f64>,
    },
    /// Approve a campaign someone else created: shows what you approve (the
    /// message as a patient sees it, practices, estimated cohort, deadline)
    /// and asks; practices are then notified and the deadline scheduled.
    Approve {
        id: String,
        /// Approve without asking (for scripts): what was shown is still
        /// the version approved.
        #[arg(long)]
        yes: bool,
        /// Price of one SMS fragment, for the cost estimate.
        #[arg(long, env = "HUB_PRICE_PER_FRAGMENT")]
        price_per_fragment: Option<f64>,
    },
    /// Approve a shortened opt-out deadline someone else asked for: shows
    /// the change and its reason, and asks.
    ApproveDeadline {
        id: String,
        /// The window left after the practice notices is shorter than the
        /// hub's minimum, and the emergency cannot wait (needs --reason).
        #[arg(long)]
        emergency_override: bool,
        /// Why the override (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
        /// Approve without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Stop a campaign at once, at any stage, and purge its patient data.
    Cancel {
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Move the opt-out deadline: RFC 3339, `now`, or `+30m` / `+2h` / `+1d`.
    /// Bringing it forward once practices are notified needs --reason and
    /// a second person (`hub campaign approve-deadline`).
    Deadline {
        id: String,
        deadline: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Record a practice's opt-out on its behalf (it replied by email).
    OptOut { id: String, ods: String },
    /// Decide on a practice held as extraction_suspect (its GP system
    /// returned far fewer patients than its registered list size).
    Extraction {
        id: String,
        ods: String,
        /// proceed (send to those read), retry (read it again) or exclude.
        #[arg(value_parser = ["proceed", "retry", "exclude"])]
        decision: String,
    },
    /// Every campaign, newest first.
    List,
    /// One campaign: state, counts, per-practice progress and ETA.
    Show { id: String },
    /// Who did what to a campaign, and when: approvals, deadline changes
    /// and overrides, refusals, the watchdog's actions, the purge.
    Audit {
        id: String,
        /// The whole trail as CSV (time, actor, action, detail as JSON):
        /// the campaign's audit export.
        #[arg(long)]
        csv: bool,
    },
    /// The information-governance evidence: who created, approved and
    /// changed it, practices notified and opted out, counts by outcome and
    /// reason, and when patient data was extracted and purged. No patient data.
    Evidence { id: String },
    /// The delivery report: totals and one row per practice.
    Report {
        id: String,
        /// One CSV row per practice.
        #[arg(long)]
        csv: bool,
    },
    /// Live progress until the campaign completes (or is cancelled).
    Watch {
        id: String,
        /// Seconds between polls.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Give up after this many seconds (default: never).
        #[arg(long)]
        max_wait: Option<u64>,
    },
}

pub async fn run(command: CampaignCommand, cx: &Context) -> Result<(), CliError> {
    match command {
        CampaignCommand::Create {
            file,
            yes,
            dry_run,
            price_per_fragment,
        } => {
            let price = price_per_fragment
                .or(cx.config.price_per_fragment)
                .unwrap_or(DEFAULT_PRICE_PER_FRAGMENT);
            create(cx, &file, yes, dry_run, price).await
        }
        CampaignCommand::Approve {
            id,
            yes,
            price_per_fragment,
        } => {
            let price = price_per_fragment
                .or(cx.config.price_per_fragment)
                .unwrap_or(DEFAULT_PRICE_PER_FRAGMENT);
            approve(cx, &id, yes, price).await
        }
        CampaignCommand::ApproveDeadline {
            id,
            emergency_override,
            reason,
            yes,
        } => approve_deadline(cx, &id, emergency_override, reason, yes).await,
        CampaignCommand::Cancel { id, reason } => {
            let answer = cx
                .client
                .post(&path(&id, "/cancel"), &json!({ "reason": reason }))
                .await?;
            cx.done(answer, |c: CampaignView| {
                format!(
                    "Cancelled campaign {}. Sending stops within seconds; its patient data is purged.",
                    c.id
                )
            })
        }
        CampaignCommand::Deadline {
            id,
            deadline,
            reason,
        } => {
            let deadline = parse_deadline(&deadline)?;
            let answer = cx
                .client
                .post(
                    &path(&id, "/deadline"),
                    &json!({ "optout_deadline": deadline, "reason": reason }),
                )
                .await?;
            cx.done(answer, |c: CampaignView| match &c.deadline_change {
                Some(change) => format!(
                    "Asked to bring the opt-out deadline of campaign {} forward to {}. It stays {} \
                     until a second person approves: hub campaign approve-deadline {}",
                    c.id,
                    when(change.to),
                    when(c.optout_deadline),
                    c.id
                ),
                None => format!(
                    "The opt-out deadline of campaign {} is now {}.",
                    c.id,
                    when(c.optout_deadline)
                ),
            })
        }
        CampaignCommand::OptOut { id, ods } => {
            let answer = cx
                .client
                .post(&path(&id, "/opt-outs"), &json!({ "ods": ods }))
                .await?;
            cx.done(answer, |p: Participation| {
                format!("Practice {} is {} for campaign {id}.", p.ods, p.state)
            })
        }
        CampaignCommand::Extraction { id, ods, decision } => {
            let answer = cx
                .client
                .post(
                    &path(&id, "/extraction-decisions"),
                    &json!({ "ods": ods, "decision": decision }),
                )
                .await?;
            // The hub records the decision; its extract function carries
            // it out (`watch` shows the practice move on).
            cx.done(answer, |p: Participation| {
                format!(
                    "Decision {decision} recorded for practice {} in campaign {id} (now {}); \
                     it is being carried out.",
                    p.ods, p.state
                )
            })
        }
        CampaignCommand::List => {
            let answer = cx.client.get("/campaigns").await?;
            cx.reply(answer, Some("campaigns"), |c: Vec<CampaignView>| {
                render::campaigns(&c)
            })
        }
        CampaignCommand::Show { id } => {
            let answer = cx.client.get(&path(&id, "")).await?;
            cx.reply(answer, None, |d: Detail| render::detail(&d))
        }
        CampaignCommand::Audit { id, csv: true } => {
            let answer = cx.client.get(&path(&id, "/audit")).await?;
            let events: Vec<AuditEvent> = views::read(answer["events"].clone())?;
            render::audit_csv(&events, std::io::stdout())
                .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot write CSV: {e}")))
        }
        CampaignCommand::Audit { id, csv: false } => {
            let answer = cx.client.get(&path(&id, "/audit")).await?;
            cx.reply(answer, Some("events"), |e: Vec<AuditEvent>| {
                render::audit(&e)
            })
        }
        CampaignCommand::Evidence { id } => {
            let answer = cx.client.get(&path(&id, "/evidence")).await?;
            cx.reply(answer, None, |e: views::Evidence| render::evidence(&e))
        }
        CampaignCommand::Report { id, csv } => {
            let answer = cx.client.get(&path(&id, "/report")).await?;
            if !csv {
                return cx.reply(answer, None, |r: Report| render::report(&r));
            }
            let report: Report = views::read(answer)?;
            render::report_csv(&report, std::io::stdout())
                .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot write CSV: {e}")))
        }
        CampaignCommand::Watch {
            id,
            interval,
            max_wait,
        } => crate::watch::watch(&cx.client, cx.json, &segment(&id), interval, max_wait).await,
    }
}

/// `/campaigns/ID` and then `rest`.
fn path(id: &str, rest: &str) -> String {
    format!("/campaigns/{}{rest}", segment(id))
}

/// The campaign file, as the JSON body of `POST /campaigns`. The hub checks
/// every field and names the wrong ones.
pub fn read_campaign_file(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| CliError::usage(format!("{} is not valid TOML: {e}", path.display())))?;
    let mut body = toml_to_json(toml::Value::Table(table));
    if let Some(deadline) = body.get("optout_deadline").and_then(Value::as_str) {
        let deadline = parse_deadline(deadline)?;
        body["optout_deadline"] = Value::String(deadline);
    }
    Ok(body)
}

fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// RFC 3339 passes through; `now` and `+30m` / `+2h` / `+1d` are from now.
pub fn parse_deadline(raw: &str) -> Result<String, CliError> {
    let raw = raw.trim();
    let now = Utc::now();
    if raw.eq_ignore_ascii_case("now") {
        return Ok(now.to_rfc3339());
    }
    let Some(relative) = raw.strip_prefix('+') else {
        return Ok(raw.to_string());
    };
    let split = relative.len().saturating_sub(1);
    let (number, unit) = (relative.get(..split), relative.get(split..));
    let amount: Option<i64> = number.and_then(|n| n.parse().ok());
    let duration = match (amount, unit) {
        (Some(n), Some("m")) if n > 0 => chrono::Duration::try_minutes(n),
        (Some(n), Some("h")) if n > 0 => chrono::Duration::try_hours(n),
        (Some(n), Some("d")) if n > 0 => chrono::Duration::try_days(n),
        _ => None,
    };
    let deadline = duration
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| {
            CliError::usage(format!(
                "deadline {raw:?}: give RFC 3339 (2026-11-22T18:00:00Z), `now`, or +30m, +2h, +1d"
            ))
        })?;
    Ok(deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

async fn create(
    cx: &Context,
    file: &Path,
    yes: bool,
    dry_run: bool,
    price: f64,
) -> Result<(), CliError> {
    let body = read_campaign_file(file)?;
    let preview_json = cx.client.post("/campaigns?dry_run=true", &body).await?;
    let preview: Preview = views::read(preview_json.clone())?;
    let currency = cx.config.currency.clone().unwrap_or_else(|| "£".into());
    let text = render::preview(&preview, price, &currency);
    if dry_run {
        if cx.json {
            print_json(&preview_json);
        } else {
            println!("{text}");
        }
        return Ok(());
    }
    if !yes {
        // The preview goes where the question is asked; stdout stays JSON.
        if cx.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
        confirm(
            "Create this campaign? It then needs a second person's approval. [y/N] ",
            "not created",
        )?;
    } else if !cx.json {
        println!("{text}");
    }
    let created = cx.client.post_once("/campaigns", &body).await?;
    cx.done(created, |created: Created| {
        let c = created.campaign;
        format!(
            "Created campaign {} ({}).\nA second authorised person must approve it: hub campaign approve {}",
            c.id, c.state, c.id
        )
    })
}

/// Shows the approver what they approve, asks, and approves that version.
async fn approve(cx: &Context, id: &str, yes: bool, price: f64) -> Result<(), CliError> {
    let detail_json = cx.client.get(&path(id, "")).await?;
    let detail: Detail = views::read(detail_json)?;
    let c = &detail.campaign;
    let mut text = format!(
        "Campaign {} \"{}\" (version {}), {}\nCreated by {} at {}\n",
        c.id,
        c.name,
        c.version,
        c.state,
        c.created_by,
        when(c.created_at)
    );
    if let Some(preview) = &detail.preview {
        let currency = cx.config.currency.clone().unwrap_or_else(|| "£".into());
        let shown = render::preview(preview, price, &currency);
        let shown = shown
            .split_once('\n')
            .map_or(shown.as_str(), |(_, rest)| rest);
        text.push_str(shown);
    }
    if !yes {
        if cx.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
        confirm(
            "Approve this campaign? Its practices are notified at once. [y/N] ",
            "not approved",
        )?;
    }
    let answer = cx
        .client
        .post(&path(id, "/approve"), &json!({ "version": c.version }))
        .await?;
    cx.done(answer, |c: CampaignView| {
        format!(
            "Approved campaign {} ({}). Practices are being notified; the opt-out deadline is {}.",
            c.id,
            c.state,
            when(c.optout_deadline)
        )
    })
}

/// Shows the waiting deadline change, asks, and approves that deadline.
async fn approve_deadline(
    cx: &Context,
    id: &str,
    emergency_override: bool,
    reason: Option<String>,
    yes: bool,
) -> Result<(), CliError> {
    let detail: Detail = views::read(cx.client.get(&path(id, "")).await?)?;
    let c = &detail.campaign;
    let Some(change) = &c.deadline_change else {
        return Err(CliError::usage(format!(
            "campaign {} has no deadline change waiting for approval",
            c.id
        )));
    };
    let text = format!(
        "Campaign {} \"{}\": bring the opt-out deadline forward from {} to {}\n\
         Asked by {} at {}: {}",
        c.id,
        c.name,
        when(c.optout_deadline),
        when(change.to),
        change.requested_by,
        when(change.requested_at),
        change.reason
    );
    if !yes {
        if cx.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
        confirm(
            "Approve this deadline? Practices lose the time to opt out. [y/N] ",
            "not approved",
        )?;
    }
    let answer = cx
        .client
        .post(
            &path(id, "/deadline/approve"),
            &json!({
                "optout_deadline": change.to.to_rfc3339(),
                "emergency_override": emergency_override,
                "reason": reason,
            }),
        )
        .await?;
    cx.done(answer, |c: CampaignView| {
        format!(
            "The opt-out deadline of campaign {} is now {}.",
            c.id,
            when(c.optout_deadline)
        )
    })
}

pub(super) fn confirm(question: &str, declined: &str) -> Result<(), CliError> {
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{question}");
    let _ = stderr.flush();
    let mut answer = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::usage(format!("cannot read the answer: {e}")))?;
    if read == 0 && !std::io::stdin().is_terminal() {
        return Err(CliError::Declined(format!(
            "{declined}: no answer on standard input (pass --yes to go ahead without asking)"
        )));
    }
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(CliError::Declined(declined.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_may_be_relative() {
        assert!(parse_deadline("+2h").is_ok());
        assert!(parse_deadline("now").is_ok());
        assert_eq!(
            parse_deadline("2026-11-22T18:00:00Z").ok().as_deref(),
            Some("2026-11-22T18:00:00Z")
        );
        assert!(parse_deadline("+2x").is_err());
        assert!(parse_deadline("+").is_err());
        assert!(parse_deadline("+99999999999999d").is_err());
    }

    #[test]
    fn campaign_files_become_request_bodies() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "name = \"Heat\"\nmessage = \"Hi\"\noptout_deadline = 2026-11-22T18:00:00Z\n\
             justification = \"Level 4 heat alert\"\n[target]\nmin_age = 65\npostcodes = [\"SE13\"]\n",
        )
        .expect("write");
        let body = read_campaign_file(&path).expect("parsed");
        assert_eq!(body["optout_deadline"], "2026-11-22T18:00:00Z");
        assert_eq!(body["target"]["min_age"], 65);
        std::fs::write(&path, "name = ").expect("write");
        assert!(matches!(read_campaign_file(&path), Err(CliError::Usage(_))));
    }
}
