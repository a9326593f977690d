//! The staff commands: `hub campaign ...` and `hub practices ...`.

use crate::client::{CliError, Client, ConfigFile, Connection};
use crate::views::{
    AuditEvent, CampaignView, Created, Detail, Evidence, Participation, Practice, PracticeReport,
    Preview, Report,
};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
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
    /// Approve a campaign someone else created: practices are notified and
    /// the opt-out deadline is scheduled.
    Approve { id: String },
    /// Stop a campaign at once, at any stage, and purge its patient data.
    Cancel {
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Move the opt-out deadline: RFC 3339, `now`, or `+30m` / `+2h` / `+1d`.
    Deadline { id: String, deadline: String },
    /// Record a practice's opt-out on its behalf (it replied by email).
    OptOut { id: String, ods: String },
    /// Every campaign, newest first.
    List,
    /// One campaign: state, counts, per-practice progress and ETA.
    Show { id: String },
    /// Who did what to a campaign, and when.
    Audit { id: String },
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

#[derive(Subcommand, Debug)]
pub enum PracticesCommand {
    /// The practice registry.
    List,
    /// Add or update practices from a CSV file with the columns
    /// ods,name,notice_email[,dsa_signed][,list_size][,fhir_base_url][,fhir_secret].
    Import { file: PathBuf },
    /// Add or change one practice.
    Set {
        ods: String,
        #[arg(long)]
        name: Option<String>,
        /// Where the campaign notice is emailed.
        #[arg(long)]
        email: Option<String>,
        /// Date the data sharing agreement was signed (YYYY-MM-DD), or `none`.
        #[arg(long)]
        dsa_signed: Option<String>,
        /// Registered list size (for estimates).
        #[arg(long)]
        list_size: Option<u64>,
        /// FHIR R4 base URL of the practice's GP system.
        #[arg(long)]
        fhir_url: Option<String>,
    },
}

pub struct Context {
    pub client: Client,
    pub config: ConfigFile,
    pub json: bool,
}

impl Context {
    pub async fn new(connection: &Connection, json: bool) -> Result<Self, CliError> {
        let config = ConfigFile::load(connection.config.as_ref())?;
        let client = Client::connect(connection, &config).await?;
        Ok(Self {
            client,
            config,
            json,
        })
    }
}

const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

fn segment(value: &str) -> String {
    utf8_percent_encode(value.trim(), SEGMENT).to_string()
}

fn view<T: DeserializeOwned>(value: Value) -> Result<T, CliError> {
    serde_json::from_value(value).map_err(|e| {
        CliError::Failure(anyhow::anyhow!(
            "the hub's answer is not what this tool expects: {e}"
        ))
    })
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

pub async fn campaign(command: CampaignCommand, cx: &Context) -> Result<(), CliError> {
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
        CampaignCommand::Approve { id } => {
            let answer = cx
                .client
                .post(&format!("/campaigns/{}/approve", segment(&id)), &json!({}))
                .await?;
            done(cx, answer, |c: CampaignView| {
                format!(
                    "Approved campaign {} ({}). Practices are being notified; the opt-out \
                     deadline is {}.",
                    c.id,
                    c.state,
                    when(c.optout_deadline)
                )
            })
        }
        CampaignCommand::Cancel { id, reason } => {
            let answer = cx
                .client
                .post(
                    &format!("/campaigns/{}/cancel", segment(&id)),
                    &json!({ "reason": reason }),
                )
                .await?;
            done(cx, answer, |c: CampaignView| {
                format!(
                    "Cancelled campaign {}. Sending stops within seconds; its patient data is purged.",
                    c.id
                )
            })
        }
        CampaignCommand::Deadline { id, deadline } => {
            let deadline = parse_deadline(&deadline)?;
            let answer = cx
                .client
                .post(
                    &format!("/campaigns/{}/deadline", segment(&id)),
                    &json!({ "optout_deadline": deadline }),
                )
                .await?;
            done(cx, answer, |c: CampaignView| {
                format!(
                    "The opt-out deadline of campaign {} is now {}.",
                    c.id,
                    when(c.optout_deadline)
                )
            })
        }
        CampaignCommand::OptOut { id, ods } => {
            let answer = cx
                .client
                .post(
                    &format!("/campaigns/{}/opt-outs", segment(&id)),
                    &json!({ "ods": ods }),
                )
                .await?;
            done(cx, answer, |p: Participation| {
                format!("Practice {} is {} for campaign {id}.", p.ods, p.state)
            })
        }
        CampaignCommand::List => {
            let answer = cx.client.get("/campaigns").await?;
            if cx.json {
                print_json(&answer);
                return Ok(());
            }
            let campaigns: Vec<CampaignView> = view(answer["campaigns"].clone())?;
            if campaigns.is_empty() {
                println!("No campaigns.");
            }
            println!(
                "{:<14} {:<18} {:<17} {:<30} created by",
                "id", "state", "created", "name"
            );
            for c in campaigns {
                println!(
                    "{:<14} {:<18} {:<17} {:<30} {}",
                    c.id,
                    c.state,
                    c.created_at.format("%Y-%m-%d %H:%M"),
                    truncate(&c.name, 30),
                    short_identity(&c.created_by)
                );
            }
            Ok(())
        }
        CampaignCommand::Show { id } => {
            let answer = cx
                .client
                .get(&format!("/campaigns/{}", segment(&id)))
                .await?;
            if cx.json {
                print_json(&answer);
                return Ok(());
            }
            print_detail(&view(answer)?);
            Ok(())
        }
        CampaignCommand::Audit { id } => {
            let answer = cx
                .client
                .get(&format!("/campaigns/{}/audit", segment(&id)))
                .await?;
            if cx.json {
                print_json(&answer);
                return Ok(());
            }
            let events: Vec<AuditEvent> = view(answer["events"].clone())?;
            for e in events {
                println!(
                    "{}  {:<24} {:<28} {}",
                    e.at.format("%Y-%m-%d %H:%M:%S"),
                    e.action,
                    short_identity(&e.actor),
                    e.detail
                );
            }
            Ok(())
        }
        CampaignCommand::Evidence { id } => {
            let answer = cx
                .client
                .get(&format!("/campaigns/{}/evidence", segment(&id)))
                .await?;
            if cx.json {
                print_json(&answer);
                return Ok(());
            }
            print!("{}", evidence_text(&view(answer)?));
            Ok(())
        }
        CampaignCommand::Report { id, csv } => {
            let answer = cx
                .client
                .get(&format!("/campaigns/{}/report", segment(&id)))
                .await?;
            if cx.json && !csv {
                print_json(&answer);
                return Ok(());
            }
            let report: Report = view(answer)?;
            if csv {
                print_report_csv(&report)
            } else {
                print_report(&report);
                Ok(())
            }
        }
        CampaignCommand::Watch {
            id,
            interval,
            max_wait,
        } => crate::watch::watch(cx, &segment(&id), interval, max_wait).await,
    }
}

/// Prints the hub's answer as JSON, or the sentence `human` makes of it.
fn done<T: DeserializeOwned>(
    cx: &Context,
    answer: Value,
    human: impl FnOnce(T) -> String,
) -> Result<(), CliError> {
    if cx.json {
        print_json(&answer);
    } else {
        println!("{}", human(view(answer)?));
    }
    Ok(())
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
    let preview: Preview = view(preview_json.clone())?;
    let currency = cx.config.currency.clone().unwrap_or_else(|| "£".into());
    let text = preview_text(&preview, price, &currency);
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
        confirm("Create this campaign? It then needs a second person's approval. [y/N] ")?;
    } else if !cx.json {
        println!("{text}");
    }
    let created = cx.client.post("/campaigns", &body).await?;
    if cx.json {
        print_json(&created);
        return Ok(());
    }
    let created: Created = view(created)?;
    println!(
        "Created campaign {} ({}).\nA second authorised person must approve it: hub campaign approve {}",
        created.campaign.id, created.campaign.state, created.campaign.id
    );
    Ok(())
}

fn confirm(question: &str) -> Result<(), CliError> {
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{question}");
    let _ = stderr.flush();
    let mut answer = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::usage(format!("cannot read the answer: {e}")))?;
    if read == 0 && !std::io::stdin().is_terminal() {
        return Err(CliError::Declined(
            "not created: no answer on standard input (pass --yes to create without asking)".into(),
        ));
    }
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(CliError::Declined("not created".into())),
    }
}

pub fn preview_text(p: &Preview, price: f64, currency: &str) -> String {
    let mut out = String::new();
    let line = |out: &mut String, text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(&mut out, "Preview (nothing has been created yet)".into());
    line(&mut out, String::new());
    line(
        &mut out,
        "The message as a patient sees it (example personalisation):".into(),
    );
    for text_line in p.example.lines() {
        line(&mut out, format!("  | {text_line}"));
    }
    let encoding = match p.encoding.as_str() {
        "gsm7" | "gsm_7" | "gsm" => "GSM-7".to_string(),
        "unicode" | "ucs2" => "Unicode (UCS-2)".to_string(),
        other => other.to_string(),
    };
    let worst = if p.worst_case_fragments > p.fragments {
        format!(
            " (up to {} with the longest personalisation)",
            p.worst_case_fragments
        )
    } else {
        String::new()
    };
    line(
        &mut out,
        format!(
            "{encoding}, {} characters, {} fragment{}{worst}",
            p.characters,
            p.fragments,
            plural(u64::from(p.fragments))
        ),
    );
    line(&mut out, String::new());
    let taking_part: Vec<_> = p.practices.iter().filter(|p| p.dsa_signed).collect();
    let without_dsa: Vec<_> = p.practices.iter().filter(|p| !p.dsa_signed).collect();
    line(
        &mut out,
        format!(
            "Estimated cohort: up to {} patients in {} practice{} (registered list sizes; \
             age and postcode filters and exclusions reduce it)",
            thousands(p.estimated_cohort),
            taking_part.len(),
            plural(taking_part.len() as u64)
        ),
    );
    line(
        &mut out,
        format!("  {:<8} {:<40} {:>10}", "ODS", "practice", "list size"),
    );
    for practice in &taking_part {
        line(
            &mut out,
            format!(
                "  {:<8} {:<40} {:>10}",
                practice.ods,
                truncate(&practice.name, 40),
                thousands(practice.list_size)
            ),
        );
    }
    if !without_dsa.is_empty() {
        line(
            &mut out,
            format!(
                "  Not taking part (no signed data sharing agreement): {}",
                without_dsa
                    .iter()
                    .map(|p| p.ods.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    line(&mut out, String::new());
    line(
        &mut out,
        format!(
            "Opt-out deadline: {} ({})",
            when(p.optout_deadline),
            relative(p.optout_deadline)
        ),
    );
    let verdict = if p.plan.meets_target {
        format!("within the {} target", duration(p.plan.target.secs))
    } else {
        format!("MISSES the {} target", duration(p.plan.target.secs))
    };
    line(
        &mut out,
        format!(
            "Sending: about {} after the deadline at {:.0} messages/s: {verdict}",
            duration(p.plan.eta.secs),
            p.plan.messages_per_second
        ),
    );
    for warning in &p.plan.warnings {
        line(&mut out, format!("  warning: {warning}"));
    }
    let cost = |fragments: u32| p.estimated_cohort as f64 * f64::from(fragments) * price;
    let mut estimate = format!(
        "Estimated SMS cost: {currency}{} ({} × {} fragment{} × {currency}{price})",
        money(cost(p.fragments)),
        thousands(p.estimated_cohort),
        p.fragments,
        plural(u64::from(p.fragments))
    );
    if p.worst_case_fragments > p.fragments {
        estimate.push_str(&format!(
            "; at most {currency}{}",
            money(cost(p.worst_case_fragments))
        ));
    }
    line(&mut out, estimate);
    out.trim_end().to_string()
}

fn print_detail(d: &Detail) {
    let c = &d.campaign;
    println!("Campaign {} — {}", c.id, c.name);
    println!("State:     {}", c.state);
    println!(
        "Created:   {} by {}",
        when(c.created_at),
        short_identity(&c.created_by)
    );
    if let Some(approver) = &c.approved_by {
        println!("Approved:  by {}", short_identity(approver));
    }
    if let Some(by) = &c.cancelled_by {
        println!(
            "Cancelled: by {} ({})",
            short_identity(by),
            d.cancel_reason.as_deref().unwrap_or("")
        );
    }
    println!(
        "Deadline:  {} ({})",
        when(c.optout_deadline),
        relative(c.optout_deadline)
    );
    println!("Message:   {}", c.message);
    if let Some(t) = &c.totals {
        println!(
            "Totals:    cohort {}, sent {}, delivered {}, failed {}, letters {}, excluded {}",
            thousands(t.cohort),
            thousands(t.sent),
            thousands(t.delivered),
            thousands(t.failed),
            thousands(t.letters),
            thousands(t.excluded_total())
        );
    }
    if let Some(eta) = c.eta_seconds {
        println!("ETA:       {}", duration(eta));
    }
    if !d.practices.is_empty() {
        println!();
        print_practice_rows(&d.practices);
    }
}

fn print_practice_rows(rows: &[PracticeReport]) {
    println!(
        "{:<8} {:<30} {:<18} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9}",
        "ODS", "practice", "state", "cohort", "sent", "delivered", "failed", "letters", "excluded"
    );
    for p in rows {
        println!(
            "{:<8} {:<30} {:<18} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9}",
            p.ods,
            truncate(&p.name, 30),
            p.state,
            p.cohort,
            p.sent,
            p.delivered,
            p.failed,
            p.letters,
            p.excluded
        );
        if let Some(error) = &p.last_error {
            println!("         last error: {error}");
        }
    }
}

fn print_report(r: &Report) {
    let t = &r.totals;
    println!("{} — {}", r.name, r.state);
    println!("  cohort        {:>12}", thousands(t.cohort));
    println!("  sent          {:>12}", thousands(t.sent));
    println!("    delivered   {:>12}", thousands(t.delivered));
    println!("    failed      {:>12}", thousands(t.failed));
    println!("  letters       {:>12}", thousands(t.letters));
    println!("  excluded      {:>12}", thousands(t.excluded_total()));
    for (reason, count) in &t.excluded {
        println!("    {reason:<22}{:>8}", thousands(*count));
    }
    println!("  written back  {:>12}", thousands(t.written_back));
    println!(
        "  every patient accounted for (cohort = sent + letters + excluded): {}",
        if r.adds_up { "yes" } else { "NO" }
    );
    if !r.opted_out_practices.is_empty() {
        println!("  opted out: {}", r.opted_out_practices.join(", "));
    }
    if !r.failed_practices.is_empty() {
        println!("  GP system failed: {}", r.failed_practices.join(", "));
    }
    println!(
        "  patient data remaining: {}{}",
        r.patient_data_remaining,
        r.purged_items
            .map(|n| format!(" ({n} items purged)"))
            .unwrap_or_default()
    );
    println!();
    print_practice_rows(&r.practices);
}

fn maybe(at: Option<DateTime<Utc>>) -> String {
    at.map(when).unwrap_or_else(|| "—".into())
}

/// The evidence export as a document a DPO or Caldicott Guardian can read.
pub fn evidence_text(e: &Evidence) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut line = |text: String| {
        let _ = writeln!(out, "{text}");
    };
    line(format!("Evidence for campaign {} — {}", e.campaign, e.name));
    line(format!(
        "Generated {}; state {}",
        when(e.generated_at),
        e.state
    ));
    line(String::new());
    line("Authorisation".into());
    line(format!(
        "  created    {} by {}",
        when(e.created_at),
        e.created_by
    ));
    line(format!(
        "  approved   {} by {}",
        maybe(e.approved_at),
        e.approved_by.as_deref().unwrap_or("—")
    ));
    if let Some(by) = &e.cancelled_by {
        line(format!(
            "  cancelled  by {by}: {}",
            e.cancel_reason.as_deref().unwrap_or("")
        ));
    }
    line(format!("  justification: {}", e.justification));
    line(format!("  message: {}", e.message_template));
    line(format!(
        "  opt-out deadline {}; reached {}",
        when(e.optout_deadline),
        maybe(e.deadline_reached_at)
    ));
    line(String::new());
    line("Staff actions".into());
    for a in &e.staff_actions {
        line(format!(
            "  {}  {:<22} {:<40} {}",
            a.at.format("%Y-%m-%d %H:%M:%S"),
            a.action,
            a.actor,
            a.detail
        ));
    }
    line(String::new());
    line("States".into());
    for s in &e.states {
        line(format!(
            "  {}  {}",
            s.at.format("%Y-%m-%d %H:%M:%S"),
            s.state
        ));
    }
    line(String::new());
    line("Practices".into());
    line(format!(
        "  {:<8} {:<30} {:<18} {:<17} {:<17} {:>9} {:>9}",
        "ODS", "practice", "state", "notified", "opted out", "cohort", "sent"
    ));
    for p in &e.practices {
        line(format!(
            "  {:<8} {:<30} {:<18} {:<17} {:<17} {:>9} {:>9}{}",
            p.ods,
            truncate(&p.name, 30),
            p.state,
            p.notified_at
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "—".into()),
            p.opted_out_at
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "—".into()),
            thousands(p.outcomes.cohort),
            thousands(p.outcomes.sent),
            if p.notice_rejected {
                "  (notice address refused)"
            } else {
                ""
            }
        ));
    }
    if !e.opt_outs.is_empty() {
        line(String::new());
        line("Opt-outs".into());
        for o in &e.opt_outs {
            line(format!(
                "  {}  {} by {}",
                o.ods,
                maybe(o.at),
                o.by.as_deref().unwrap_or("—")
            ));
        }
    }
    let t = &e.outcomes;
    line(String::new());
    line("Outcomes".into());
    line(format!("  cohort        {:>12}", thousands(t.cohort)));
    line(format!("  sent          {:>12}", thousands(t.sent)));
    line(format!("    delivered   {:>12}", thousands(t.delivered)));
    line(format!("    failed      {:>12}", thousands(t.failed)));
    line(format!("  letters       {:>12}", thousands(t.letters)));
    line(format!(
        "  excluded      {:>12}",
        thousands(t.excluded_total())
    ));
    for (reason, count) in &t.excluded {
        line(format!("    {reason:<22}{:>8}", thousands(*count)));
    }
    line(format!("  written back  {:>12}", thousands(t.written_back)));
    line(format!(
        "  every patient accounted for: {}",
        if e.adds_up { "yes" } else { "NO" }
    ));
    let d = &e.patient_data;
    line(String::new());
    line("Patient data".into());
    line(format!(
        "  extracted     {} to {} ({} practices, {} failed)",
        maybe(d.extraction_started_at),
        maybe(d.extraction_ended_at),
        d.practices_extracted,
        d.practices_failed
    ));
    line(format!(
        "  held          {} recipients in {} chunks (TTL {} h; receipts awaited {} h)",
        thousands(d.recipients_stored),
        d.chunks,
        d.ttl_hours,
        d.receipt_window_hours
    ));
    for p in &d.purges {
        line(format!(
            "  purged        {}: {} items deleted, {} remaining",
            when(p.at),
            thousands(p.items_deleted),
            p.items_remaining
        ));
    }
    line(format!(
        "  remaining now {}{}",
        d.items_remaining,
        if d.purged_at.is_none() {
            " (not purged yet)"
        } else {
            ""
        }
    ));
    out
}

fn print_report_csv(r: &Report) -> Result<(), CliError> {
    let mut writer = csv::Writer::from_writer(std::io::stdout());
    let fail = |e: csv::Error| CliError::Failure(anyhow::anyhow!("cannot write CSV: {e}"));
    writer
        .write_record([
            "ods",
            "name",
            "state",
            "cohort",
            "sent",
            "delivered",
            "failed",
            "letters",
            "excluded",
            "written_back",
        ])
        .map_err(fail)?;
    for p in &r.practices {
        writer
            .write_record([
                p.ods.clone(),
                p.name.clone(),
                p.state.clone(),
                p.cohort.to_string(),
                p.sent.to_string(),
                p.delivered.to_string(),
                p.failed.to_string(),
                p.letters.to_string(),
                p.excluded.to_string(),
                p.written_back.to_string(),
            ])
            .map_err(fail)?;
    }
    writer
        .flush()
        .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot write CSV: {e}")))
}

pub async fn practices(command: PracticesCommand, cx: &Context) -> Result<(), CliError> {
    match command {
        PracticesCommand::List => {
            let answer = cx.client.get("/practices").await?;
            if cx.json {
                print_json(&answer);
                return Ok(());
            }
            let practices: Vec<Practice> = view(answer["practices"].clone())?;
            println!(
                "{:<8} {:<36} {:>10} {:<11} notice email",
                "ODS", "practice", "list size", "DSA signed"
            );
            for p in practices {
                println!(
                    "{:<8} {:<36} {:>10} {:<11} {}",
                    p.ods,
                    truncate(&p.name, 36),
                    thousands(p.list_size),
                    p.dsa_signed.as_deref().unwrap_or("-"),
                    p.notice_email
                );
            }
            Ok(())
        }
        PracticesCommand::Import { file } => import(cx, &file).await,
        PracticesCommand::Set {
            ods,
            name,
            email,
            dsa_signed,
            list_size,
            fhir_url,
        } => {
            let answer = cx.client.get("/practices").await?;
            let existing: Vec<Practice> = view(answer["practices"].clone())?;
            let wanted = ods.trim().to_ascii_uppercase();
            let current = existing.into_iter().find(|p| p.ods == wanted);
            let mut body = match &current {
                Some(p) => json!({
                    "ods": p.ods,
                    "name": p.name,
                    "notice_email": p.notice_email,
                    "dsa_signed": p.dsa_signed,
                    "connection": p.connection,
                    "list_size": p.list_size,
                }),
                None if name.is_some() && email.is_some() => json!({ "ods": wanted }),
                None => {
                    return Err(CliError::usage(format!(
                    "practice {wanted} is not in the registry: give --name and --email to add it"
                )))
                }
            };
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            if let Some(email) = email {
                body["notice_email"] = json!(email);
            }
            if let Some(dsa) = dsa_signed {
                body["dsa_signed"] = match dsa.trim() {
                    "" | "none" | "-" => Value::Null,
                    date => json!(date),
                };
            }
            if let Some(size) = list_size {
                body["list_size"] = json!(size);
            }
            if let Some(url) = fhir_url {
                body["connection"] = json!({ "kind": "fhir", "base_url": url });
            }
            if body.get("connection").is_some_and(Value::is_null) {
                if let Some(fields) = body.as_object_mut() {
                    fields.remove("connection");
                }
            }
            let saved = cx
                .client
                .put(&format!("/practices/{}", segment(&wanted)), &body)
                .await?;
            done(cx, saved, |p: Practice| {
                format!(
                    "Saved {} {} (DSA signed: {}).",
                    p.ods,
                    p.name,
                    p.dsa_signed.as_deref().unwrap_or("no")
                )
            })
        }
    }
}

const IMPORT_COLUMNS: [&str; 7] = [
    "ods",
    "name",
    "notice_email",
    "dsa_signed",
    "list_size",
    "fhir_base_url",
    "fhir_secret",
];

/// One PUT per row; a refused row is reported and the rest go on.
async fn import(cx: &Context, file: &Path) -> Result<(), CliError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(file)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| CliError::usage(format!("{}: {e}", file.display())))?
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    if let Some(unknown) = headers
        .iter()
        .find(|h| !IMPORT_COLUMNS.contains(&h.as_str()))
    {
        return Err(CliError::usage(format!(
            "{}: unknown column {unknown:?}; the columns are {}",
            file.display(),
            IMPORT_COLUMNS.join(",")
        )));
    }
    for required in ["ods", "name", "notice_email"] {
        if !headers.iter().any(|h| h == required) {
            return Err(CliError::usage(format!(
                "{}: the column {required:?} is required",
                file.display()
            )));
        }
    }
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record =
            record.map_err(|e| CliError::usage(format!("{} line {line}: {e}", file.display())))?;
        let cell = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .and_then(|at| record.get(at))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let mut body = json!({
            "ods": cell("ods").unwrap_or_default(),
            "name": cell("name").unwrap_or_default(),
            "notice_email": cell("notice_email").unwrap_or_default(),
            "dsa_signed": cell("dsa_signed"),
        });
        if let Some(size) = cell("list_size") {
            let size: u64 = size.replace(',', "").parse().map_err(|_| {
                CliError::usage(format!(
                    "{} line {line}: list_size must be a whole number",
                    file.display()
                ))
            })?;
            body["list_size"] = json!(size);
        }
        if let Some(url) = cell("fhir_base_url") {
            body["connection"] =
                json!({ "kind": "fhir", "base_url": url, "secret": cell("fhir_secret") });
        }
        rows.push((line, body));
    }
    let mut imported = Vec::new();
    let mut refused = Vec::new();
    for (line, body) in rows {
        let ods = body["ods"].as_str().unwrap_or_default().to_string();
        match cx
            .client
            .put(&format!("/practices/{}", segment(&ods)), &body)
            .await
        {
            Ok(_) => imported.push(ods),
            Err(CliError::Refused(refusal)) => refused.push(json!({
                "line": line,
                "ods": ods,
                "error": refusal.to_string(),
            })),
            Err(other) => return Err(other),
        }
    }
    if cx.json {
        print_json(&json!({ "imported": imported, "refused": refused }));
    } else {
        println!(
            "Imported {} practice{} from {}.",
            imported.len(),
            plural(imported.len() as u64),
            file.display()
        );
        for r in &refused {
            println!(
                "  line {} ({}): {}",
                r["line"],
                r["ods"].as_str().unwrap_or(""),
                r["error"].as_str().unwrap_or("")
            );
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(CliError::Refused(crate::client::Refusal {
            status: 400,
            body: json!({
                "code": "validation_failed",
                "message": format!("{} row{} refused; see above", refused.len(), plural(refused.len() as u64)),
            }),
        }))
    }
}

pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn money(amount: f64) -> String {
    let pence = (amount * 100.0).round().max(0.0) as u64;
    format!("{}.{:02}", thousands(pence / 100), pence % 100)
}

pub fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m {s:02}s"),
        (h, m) => format!("{h}h {m:02}m"),
    }
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn relative(at: DateTime<Utc>) -> String {
    let seconds = (at - Utc::now()).num_seconds();
    if seconds >= 0 {
        format!("in {}", duration(seconds as u64))
    } else {
        format!("{} ago", duration(seconds.unsigned_abs()))
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// `arn:aws:iam::123:user/alice` reads as `user/alice`.
fn short_identity(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(money(27_000.456), "27,000.46");
        assert_eq!(duration(3 * 3600 + 5 * 60), "3h 05m");
        assert_eq!(duration(75), "1m 15s");
    }

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
