//! How the hub's answers read: tables, the campaign preview, the delivery
//! report, the audit trail, CSV. Each function returns the text (every line
//! ending in a newline unless it says otherwise); the caller prints it.

use crate::format::{duration, money, plural, relative, short_identity, thousands, truncate, when};
use crate::views::{
    AuditEvent, CampaignView, Detail, Evidence, Practice, PracticeReport, Preview, Report, Totals,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::fmt::Display;
use std::path::Path;

/// Text built a line at a time.
#[derive(Default)]
struct Lines(String);

impl Lines {
    fn line(&mut self, text: impl Display) {
        use std::fmt::Write;
        let _ = writeln!(self.0, "{text}");
    }
}

/// The hub's answer as it came, indented.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// `hub campaign list`.
pub fn campaigns(campaigns: &[CampaignView]) -> String {
    let mut out = Lines::default();
    if campaigns.is_empty() {
        out.line("No campaigns.");
    }
    out.line(format_args!(
        "{:<14} {:<18} {:<17} {:<30} created by",
        "id", "state", "created", "name"
    ));
    for c in campaigns {
        out.line(format_args!(
            "{:<14} {:<18} {:<17} {:<30} {}",
            c.id,
            c.state,
            c.created_at.format("%Y-%m-%d %H:%M"),
            truncate(&c.name, 30),
            short_identity(&c.created_by)
        ));
    }
    out.0
}

/// `hub campaign audit`.
pub fn audit(events: &[AuditEvent]) -> String {
    let mut out = Lines::default();
    for e in events {
        out.line(format_args!(
            "{}  {:<24} {:<28} {}",
            e.at.format("%Y-%m-%d %H:%M:%S"),
            e.action,
            short_identity(&e.actor),
            e.detail
        ));
    }
    out.0
}

/// `hub campaign audit --csv`: the audit export, one row per event.
pub fn audit_csv(events: &[AuditEvent], to: impl std::io::Write) -> Result<(), csv::Error> {
    let mut writer = csv::Writer::from_writer(to);
    writer.write_record(["at", "actor", "action", "detail"])?;
    for e in events {
        writer.write_record([
            e.at.to_rfc3339(),
            e.actor.clone(),
            e.action.clone(),
            e.detail.to_string(),
        ])?;
    }
    writer.flush()?;
    Ok(())
}

/// `cohort 1,000, sent 900, ...`: a campaign's totals in one phrase.
pub fn totals(t: &Totals) -> String {
    format!(
        "cohort {}, sent {}, delivered {}, failed {}, letters {}, excluded {}",
        thousands(t.cohort),
        thousands(t.sent),
        thousands(t.delivered),
        thousands(t.failed),
        thousands(t.letters),
        thousands(t.excluded_total())
    )
}

/// `hub campaign show`.
pub fn detail(d: &Detail) -> String {
    let c = &d.campaign;
    let mut out = Lines::default();
    out.line(format_args!("Campaign {} — {}", c.id, c.name));
    out.line(format_args!("State:     {}", c.state));
    out.line(format_args!(
        "Created:   {} by {}",
        when(c.created_at),
        short_identity(&c.created_by)
    ));
    if let Some(approver) = &c.approved_by {
        out.line(format_args!("Approved:  by {}", short_identity(approver)));
    }
    if let Some(by) = &c.cancelled_by {
        out.line(format_args!(
            "Cancelled: by {} ({})",
            short_identity(by),
            d.cancel_reason.as_deref().unwrap_or("")
        ));
    }
    out.line(format_args!(
        "Deadline:  {} ({})",
        when(c.optout_deadline),
        relative(c.optout_deadline)
    ));
    out.line(format_args!("Message:   {}", c.message));
    if let Some(t) = &c.totals {
        out.line(format_args!("Totals:    {}", totals(t)));
    }
    if let Some(eta) = c.eta_seconds {
        out.line(format_args!("ETA:       {}", duration(eta)));
    }
    for line in held_lines(&d.practices) {
        out.line(line);
    }
    if let Some(until) = c.paused_until {
        out.line(format_args!(
            "PAUSED:    every SMS provider key is at its daily limit; sending resumes {} ({})",
            when(until),
            relative(until)
        ));
    }
    if let Some(capacity) = &c.capacity {
        out.line(format_args!("Capacity:  {}", capacity_line(capacity)));
    }
    if !d.practices.is_empty() {
        out.line("");
        out.0.push_str(&practice_rows(&d.practices));
    }
    out.0
}

/// Texts an hour, the time to reach the texts to go, and what 3 hours needs.
pub fn capacity_line(c: &crate::views::Capacity) -> String {
    let mut line = format!(
        "{} texts/hour; {} texts in {}",
        thousands(c.texts_per_hour),
        thousands(c.texts),
        duration(c.eta_seconds)
    );
    if c.days_needed > 1 {
        line.push_str(&format!(" over {} provider days", c.days_needed));
    }
    if let Some(keys) = c.keys_for_target.filter(|k| *k > c.keys_configured) {
        line.push_str(&format!(
            "; 3 hours needs {keys} provider keys (configured: {})",
            c.keys_configured
        ));
    }
    line
}

fn practice_rows(rows: &[PracticeReport]) -> String {
    let mut out = Lines::default();
    out.line(format_args!(
        "{:<8} {:<30} {:<18} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9}",
        "ODS", "practice", "state", "cohort", "sent", "delivered", "failed", "letters", "excluded"
    ));
    for p in rows {
        out.line(format_args!(
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
        ));
        if let Some(error) = &p.last_error {
            out.line(format_args!("         last error: {error}"));
        }
    }
    out.0
}

/// `hub campaign report`.
pub fn report(r: &Report) -> String {
    let t = &r.totals;
    let mut out = Lines::default();
    out.line(format_args!("{} — {}", r.name, r.state));
    out.line(format_args!("  cohort        {:>12}", thousands(t.cohort)));
    out.line(format_args!("  sent          {:>12}", thousands(t.sent)));
    out.line(format_args!(
        "    delivered   {:>12}",
        thousands(t.delivered)
    ));
    out.line(format_args!("    failed      {:>12}", thousands(t.failed)));
    out.line(format_args!("  letters       {:>12}", thousands(t.letters)));
    out.line(format_args!(
        "  excluded      {:>12}",
        thousands(t.excluded_total())
    ));
    for (reason, count) in &t.excluded {
        out.line(format_args!("    {reason:<22}{:>8}", thousands(*count)));
    }
    out.line(format_args!(
        "  written back  {:>12}",
        thousands(t.written_back)
    ));
    out.line(format_args!(
        "  every patient accounted for (cohort = sent + letters + excluded): {}",
        if r.adds_up { "yes" } else { "NO" }
    ));
    if !r.opted_out_practices.is_empty() {
        out.line(format_args!(
            "  opted out: {}",
            r.opted_out_practices.join(", ")
        ));
    }
    if !r.failed_practices.is_empty() {
        out.line(format_args!(
            "  GP system failed: {}",
            r.failed_practices.join(", ")
        ));
    }
    for line in held_lines(&r.practices) {
        out.line(line);
    }
    let malformed: Vec<String> = r
        .practices
        .iter()
        .filter(|p| p.malformed_records > 0)
        .map(|p| format!("{} {}", p.ods, thousands(p.malformed_records)))
        .collect();
    if !malformed.is_empty() {
        out.line(format_args!(
            "  malformed records (not read): {}",
            malformed.join(", ")
        ));
    }
    out.line(format_args!(
        "  patient data remaining: {}{}",
        r.patient_data_remaining,
        r.purged_items
            .map(|n| format!(" ({n} items purged)"))
            .unwrap_or_default()
    ));
    out.line("");
    out.0.push_str(&practice_rows(&r.practices));
    out.0
}

fn maybe(at: Option<DateTime<Utc>>) -> String {
    at.map(when).unwrap_or_else(|| "—".into())
}

/// `hub campaign evidence`: the evidence export as a document a DPO or
/// Caldicott Guardian can read.
pub fn evidence(e: &Evidence) -> String {
    let mut out = Lines::default();
    let mut line = |text: String| out.line(text);
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
    out.0
}

/// `hub campaign report --csv`: one row per practice.
pub fn report_csv(r: &Report, to: impl std::io::Write) -> Result<(), csv::Error> {
    let mut writer = csv::Writer::from_writer(to);
    writer.write_record([
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
    ])?;
    for p in &r.practices {
        writer.write_record([
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
        ])?;
    }
    writer.flush()?;
    Ok(())
}

/// One line per practice held as `extraction_suspect`, with what to do.
pub fn held_lines(practices: &[PracticeReport]) -> Vec<String> {
    practices
        .iter()
        .filter(|p| p.state == "extraction_suspect")
        .map(|p| {
            // Since when: every minute held is a minute nobody is texted.
            let since = p
                .held_since
                .map(|at| format!(" (held since {} UTC)", at.format("%H:%M")))
                .unwrap_or_default();
            format!(
                "  HELD {}{since}: read {} of {} registered; decide with \
                 `hub campaign extraction ID {} proceed|retry|exclude`",
                p.ods,
                thousands(p.records_read),
                thousands(p.list_size),
                p.ods
            )
        })
        .collect()
}

/// What `hub campaign create` shows before it asks (no final newline).
pub fn preview(p: &Preview, price: f64, currency: &str) -> String {
    let mut out = Lines::default();
    out.line("Preview (nothing has been created yet)");
    out.line("");
    out.line("The message as a patient sees it (example personalisation):");
    for text_line in p.example.lines() {
        out.line(format_args!("  | {text_line}"));
    }
    if let Some(without) = &p.example_without_names {
        out.line("");
        out.line("To a patient with no recorded name:");
        for text_line in without.lines() {
            out.line(format_args!("  | {text_line}"));
        }
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
    out.line(format_args!(
        "{encoding}, {} characters, {} fragment{}{worst}",
        p.characters,
        p.fragments,
        plural(u64::from(p.fragments))
    ));
    out.line("");
    let taking_part: Vec<_> = p.practices.iter().filter(|p| p.dsa_signed).collect();
    let without_dsa: Vec<_> = p.practices.iter().filter(|p| !p.dsa_signed).collect();
    out.line(format_args!(
        "Estimated cohort: up to {} patients in {} practice{} (registered list sizes; \
         age and postcode filters and exclusions reduce it)",
        thousands(p.estimated_cohort),
        taking_part.len(),
        plural(taking_part.len() as u64)
    ));
    out.line(format_args!(
        "  {:<8} {:<40} {:>10}",
        "ODS", "practice", "list size"
    ));
    for practice in &taking_part {
        out.line(format_args!(
            "  {:<8} {:<40} {:>10}",
            practice.ods,
            truncate(&practice.name, 40),
            thousands(practice.list_size)
        ));
    }
    if !without_dsa.is_empty() {
        out.line(format_args!(
            "  Not taking part (no signed data sharing agreement): {}",
            without_dsa
                .iter()
                .map(|p| p.ods.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out.line("");
    out.line(format_args!(
        "Opt-out deadline: {} ({})",
        when(p.optout_deadline),
        relative(p.optout_deadline)
    ));
    let verdict = if p.plan.meets_target {
        format!("within the {} target", duration(p.plan.target.secs))
    } else {
        format!("MISSES the {} target", duration(p.plan.target.secs))
    };
    out.line(format_args!(
        "Sending: about {} after the deadline at {:.0} messages/s ({} texts/hour): {verdict}",
        duration(p.plan.eta.secs),
        p.plan.messages_per_second,
        thousands(p.plan.texts_per_hour)
    ));
    if let Some(keys) = p.plan.keys_for_target.filter(|_| !p.plan.meets_target) {
        out.line(format_args!(
            "  3 hours needs {keys} provider keys like these, or {} days",
            p.plan.days_needed
        ));
    }
    for warning in &p.plan.warnings {
        out.line(format_args!("  warning: {warning}"));
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
    out.line(estimate);
    out.0.trim_end().to_string()
}

/// `hub practices list`.
pub fn practices(practices: &[Practice]) -> String {
    let mut out = Lines::default();
    out.line(format_args!(
        "{:<8} {:<36} {:>10} {:<11} notice email",
        "ODS", "practice", "list size", "DSA signed"
    ));
    for p in practices {
        out.line(format_args!(
            "{:<8} {:<36} {:>10} {:<11} {}",
            p.ods,
            truncate(&p.name, 36),
            thousands(p.list_size),
            p.dsa_signed.as_deref().unwrap_or("-"),
            p.notice_email
        ));
    }
    out.0
}

/// `hub practices import`: how many rows went in, and each refused row
/// (`{line, ods, error}`).
pub fn imported(count: usize, file: &Path, refused: &[Value]) -> String {
    let mut out = Lines::default();
    out.line(format_args!(
        "Imported {} practice{} from {}.",
        count,
        plural(count as u64),
        file.display()
    ));
    for r in refused {
        out.line(format_args!(
            "  line {} ({}): {}",
            r["line"],
            r["ods"].as_str().unwrap_or(""),
            r["error"].as_str().unwrap_or("")
        ));
    }
    out.0
}

/// The last line of `hub campaign watch`.
pub fn watched(d: &Detail, elapsed: std::time::Duration) -> String {
    let c = &d.campaign;
    let t = c.totals.clone().unwrap_or_default();
    format!(
        "Campaign {} {} (watched {}): {}\n",
        c.id,
        c.state,
        duration(elapsed.as_secs()),
        totals(&t)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views;
    use serde_json::json;

    fn heat() -> Report {
        views::read(json!({
            "name": "Heat",
            "state": "completed",
            "totals": {
                "cohort": 1200, "sent": 1000, "letters": 150, "delivered": 990,
                "failed": 10, "written_back": 1000,
                "excluded": { "deceased": 30, "opted_out": 20 }
            },
            "practices": [{
                "ods": "A81001", "name": "Riverside Surgery", "state": "extracted",
                "cohort": 1200, "sent": 1000, "delivered": 990, "failed": 10,
                "letters": 150, "excluded": 50, "written_back": 1000
            }],
            "patient_data_remaining": 0,
            "purged_items": 7,
            "adds_up": true
        }))
        .expect("a report")
    }

    #[test]
    fn totals_read_as_one_phrase() {
        assert_eq!(
            totals(&heat().totals),
            "cohort 1,200, sent 1,000, delivered 990, failed 10, letters 150, excluded 50"
        );
    }

    #[test]
    fn the_report_adds_up_in_text_and_csv() {
        let text = report(&heat());
        assert!(text.contains("  cohort               1,200\n"), "{text}");
        assert!(
            text.contains("every patient accounted for (cohort = sent + letters + excluded): yes")
        );
        assert!(text.contains("(7 items purged)"));
        let mut csv = Vec::new();
        report_csv(&heat(), &mut csv).expect("written");
        assert_eq!(
            String::from_utf8_lossy(&csv),
            "ods,name,state,cohort,sent,delivered,failed,letters,excluded,written_back\n\
             A81001,Riverside Surgery,extracted,1200,1000,990,10,150,50,1000\n"
        );
    }

    #[test]
    fn a_held_practice_and_malformed_records_are_shown_with_what_to_do() {
        let held: Report = views::read(json!({
            "name": "Heat",
            "state": "extracting",
            "totals": { "cohort": 0 },
            "practices": [
                { "ods": "A81001", "name": "Riverside Surgery", "state": "extracted",
                  "cohort": 0, "sent": 0, "delivered": 0, "failed": 0, "letters": 0,
                  "excluded": 0, "written_back": 0, "malformed_records": 3,
                  "records_read": 900, "list_size": 1000 },
                { "ods": "A81002", "name": "Hill Surgery", "state": "extraction_suspect",
                  "cohort": 0, "sent": 0, "delivered": 0, "failed": 0, "letters": 0,
                  "excluded": 0, "written_back": 0, "records_read": 12, "list_size": 8000,
                  "held_since": "2026-12-02T10:42:07Z" }
            ],
            "patient_data_remaining": 12,
            "adds_up": true
        }))
        .expect("a report");
        let text = report(&held);
        assert!(
            text.contains(
                "HELD A81002 (held since 10:42 UTC): read 12 of 8,000 registered; decide with \
                 `hub campaign extraction ID A81002 proceed|retry|exclude`"
            ),
            "{text}"
        );
        assert!(!text.contains("HELD A81001"), "{text}");
        assert!(
            text.contains("malformed records (not read): A81001 3"),
            "{text}"
        );
    }
}
