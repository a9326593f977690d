//! `hub practices ...`: the practice registry: list, import a CSV, set one.

use super::{segment, Context};
use crate::client::{CliError, Refusal};
use crate::format::plural;
use crate::render::{self, print_json};
use crate::views::{self, Practice};
use clap::Subcommand;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

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
        /// How its Patients carry the practice, so how to search them:
        /// `identifier` (UK Core, the default) or `reference`.
        #[arg(long, value_parser = ["identifier", "reference"])]
        fhir_search: Option<String>,
        /// The base the FHIR server writes in its links when it sits
        /// behind a reverse proxy.
        #[arg(long)]
        fhir_link_base: Option<String>,
    },
    /// Approve the change to a practice someone else asked for (its notice
    /// address, data sharing agreement or GP system): shows it and asks.
    Approve {
        ods: String,
        /// Approve without asking.
        #[arg(long)]
        yes: bool,
    },
    /// The registry's audit trail: changes asked for and approved, and
    /// refusals outside any campaign.
    Audit,
}

/// Saved, or waiting for a second registry admin.
fn saved_or_waiting(answer: &Value) -> String {
    match answer.get("change_id").and_then(Value::as_str) {
        Some(change) => format!(
            "Practice {} change {change} ({}) waits for a second registry admin: hub practices \
             approve {}",
            answer["ods"].as_str().unwrap_or_default(),
            fields(answer),
            answer["ods"].as_str().unwrap_or_default(),
        ),
        None => format!(
            "Saved {} {} (DSA signed: {}).",
            answer["ods"].as_str().unwrap_or_default(),
            answer["name"].as_str().unwrap_or_default(),
            answer["dsa_signed"].as_str().unwrap_or("no")
        ),
    }
}

fn fields(change: &Value) -> String {
    change["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub async fn run(command: PracticesCommand, cx: &Context) -> Result<(), CliError> {
    match command {
        PracticesCommand::List => {
            let answer = cx.client.get("/practices").await?;
            cx.reply(answer, Some("practices"), |p: Vec<Practice>| {
                render::practices(&p)
            })
        }
        PracticesCommand::Import { file } => import(cx, &file).await,
        PracticesCommand::Set {
            ods,
            name,
            email,
            dsa_signed,
            list_size,
            fhir_url,
            fhir_search,
            fhir_link_base,
        } => {
            let answer = cx.client.get("/practices").await?;
            let existing: Vec<Practice> = views::read(answer["practices"].clone())?;
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
            for (field, value) in [
                ("patient_search", fhir_search),
                ("link_base", fhir_link_base),
            ] {
                let Some(value) = value else { continue };
                if body["connection"]["kind"] != "fhir" {
                    return Err(CliError::usage(
                        "--fhir-search and --fhir-link-base need a FHIR connection (give --fhir-url)",
                    ));
                }
                body["connection"][field] = json!(value);
            }
            if body.get("connection").is_some_and(Value::is_null) {
                if let Some(fields) = body.as_object_mut() {
                    fields.remove("connection");
                }
            }
            let saved = cx.client.put(&path(&wanted), &body).await?;
            cx.done(saved, |answer: Value| saved_or_waiting(&answer))
        }
        PracticesCommand::Approve { ods, yes } => {
            let wanted = ods.trim().to_ascii_uppercase();
            let answer = cx.client.get("/practices").await?;
            let change = answer["pending_changes"]
                .as_array()
                .and_then(|all| all.iter().find(|c| c["ods"] == wanted.as_str()))
                .cloned()
                .ok_or_else(|| {
                    CliError::usage(format!("no change to {wanted} is waiting for approval"))
                })?;
            let shown = |field: &str, record: &Value| match field {
                "connection" => record["connection"]["base_url"]
                    .as_str()
                    .unwrap_or("(simulated)")
                    .to_string(),
                other => record[other].as_str().unwrap_or("none").to_string(),
            };
            let mut text = format!(
                "Practice {wanted}: change {} asked for by {}",
                change["change_id"].as_str().unwrap_or_default(),
                change["requested_by"].as_str().unwrap_or_default()
            );
            for field in ["name", "notice_email", "dsa_signed", "connection"] {
                let before = if change["current"].is_null() {
                    "(new practice)".to_string()
                } else {
                    shown(field, &change["current"])
                };
                let after = shown(field, &change["proposed"]);
                let mark = if before == after { " " } else { "*" };
                text.push_str(&format!("\n {mark} {field:<13} {before} -> {after}"));
            }
            if !yes {
                eprintln!("{text}");
                super::campaign::confirm(
                    "Approve this change? Its notices and patient data follow it. [y/N] ",
                    "not approved",
                )?;
            }
            let approved = cx
                .client
                .post(
                    &format!("{}/approve", path(&wanted)),
                    &json!({ "change_id": change["change_id"] }),
                )
                .await?;
            cx.done(approved, |p: Practice| {
                format!("Approved: {} {} <{}>.", p.ods, p.name, p.notice_email)
            })
        }
        PracticesCommand::Audit => {
            let answer = cx.client.get("/practices/audit").await?;
            cx.reply(answer, Some("events"), |e: Vec<views::AuditEvent>| {
                render::audit(&e)
            })
        }
    }
}

/// `/practices/ODS`.
fn path(ods: &str) -> String {
    format!("/practices/{}", segment(ods))
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
    let mut waiting = Vec::new();
    let mut refused = Vec::new();
    for (line, body) in rows {
        let ods = body["ods"].as_str().unwrap_or_default().to_string();
        match cx.client.put(&path(&ods), &body).await {
            Ok(answer) if answer.get("change_id").is_some() => {
                waiting.push(ods);
            }
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
        print_json(
            &json!({ "imported": imported, "awaiting_approval": waiting, "refused": refused }),
        );
    } else {
        print!("{}", render::imported(imported.len(), file, &refused));
        if !waiting.is_empty() {
            println!(
                "{} change{} to notice addresses, DSAs or GP systems wait for a second registry \
                 admin (hub practices approve ODS): {}",
                waiting.len(),
                plural(waiting.len() as u64),
                waiting.join(", ")
            );
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(CliError::Refused(Refusal {
            status: 400,
            body: json!({
                "code": "validation_failed",
                "message": format!("{} row{} refused; see above", refused.len(), plural(refused.len() as u64)),
            }),
        }))
    }
}
