//! `hub demo`: progress bars and the printed report around the shared demo.

use crate::watch::{Bars, Shown};
use hub_core::handlers::report::CampaignReport;
use hub_local::demo::{self, DemoOptions, DemoReport, Progress, Quiet};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// GP practices in the synthetic region.
    #[arg(long, default_value_t = 12)]
    practices: usize,
    /// Registered patients across the region.
    #[arg(long, default_value_t = 30_000)]
    patients: u64,
    /// Seed for the synthetic region (same seed, same patients).
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Simulated SMS providers.
    #[arg(long, default_value_t = 2)]
    providers: usize,
    /// Each simulated provider's rate limit, in requests (texts) per second
    /// (GOV.UK Notify counts requests; 3,000 a minute is 50).
    #[arg(long, default_value_t = 2_500.0)]
    rate: f64,
    /// Only patients at least this old.
    #[arg(long)]
    min_age: Option<i64>,
    /// Only patients at most this old.
    #[arg(long)]
    max_age: Option<i64>,
    /// Only these postcode areas, districts or sectors (repeatable).
    #[arg(long = "postcode")]
    postcodes: Vec<String>,
    /// No postal letters for patients without a usable mobile.
    #[arg(long)]
    no_letters: bool,
    /// One text per mobile number (households).
    #[arg(long)]
    one_per_mobile: bool,
    /// Keep the tables and queues in this SQLite file (default: a temporary
    /// file, deleted afterwards, so memory does not grow with the cohort).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// A real GOV.UK Notify API (e.g. `https://api.notifications.service.gov.uk`)
    /// instead of the simulated one. With the simulated GP estate only Ofcom
    /// drama-range numbers are passed to it.
    #[arg(long, env = "HUB_NOTIFY_URL", requires = "notify_api_key")]
    notify_url: Option<String>,
    /// The Notify API key (use a test key). Read from the environment rather
    /// than typed on the command line.
    #[arg(long, env = "HUB_NOTIFY_API_KEY", hide_env_values = true)]
    notify_api_key: Option<String>,
    /// Notify template ids: each template's content is `((body))` (letters:
    /// address lines as personalisation).
    #[arg(long, env = "HUB_NOTIFY_SMS_TEMPLATE", requires = "notify_url")]
    notify_sms_template: Option<String>,
    #[arg(long, env = "HUB_NOTIFY_EMAIL_TEMPLATE")]
    notify_email_template: Option<String>,
    #[arg(long, env = "HUB_NOTIFY_LETTER_TEMPLATE")]
    notify_letter_template: Option<String>,
    /// A FHIR R4 server to read every practice from instead of the
    /// simulated GP estate.
    #[arg(long, env = "HUB_FHIR_URL")]
    fhir_url: Option<String>,
    /// This many practices (the last of the region) send CSV extracts over
    /// NHS MESH instead, through NHS England's mesh-sandbox started on
    /// loopback (install it with `infra/mesh.sh install`): a mixed region.
    #[arg(long, default_value_t = 0)]
    mesh_practices: usize,
    /// Call the simulators directly instead of over HTTP through the Notify
    /// and FHIR adapters: measures the hub alone.
    #[arg(long)]
    in_process: bool,
}

/// The demo's progress on the same bars as `hub campaign watch`.
struct DemoBars(Bars);

impl Progress for DemoBars {
    fn stage(&self, stage: &str) {
        self.0.status(stage.to_string());
    }

    fn update(&self, report: &CampaignReport, expected_practices: usize) {
        let extracted = report
            .practices
            .iter()
            .filter(|p| {
                p.chunks > 0 || matches!(p.state.as_str(), "extracted" | "extraction_failed")
            })
            .count();
        let totals = &report.totals;
        self.0.show(&Shown {
            practices: expected_practices as u64,
            extracted: extracted as u64,
            cohort: totals.cohort,
            excluded: totals.excluded_total(),
            sent: totals.sent,
            letters: totals.letters,
            delivered: totals.delivered,
            failed: totals.failed,
            rate: None,
        });
        self.0.status(format!("campaign {}", report.state));
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let notify = match (&args.notify_url, &args.notify_api_key) {
        (Some(url), Some(key)) => Some(hub_local::ExternalNotify {
            base_url: url.clone(),
            api_key: secrecy::SecretString::from(key.clone()),
            templates: hub_adapters::notify::NotifyTemplates {
                sms: args.notify_sms_template.clone().ok_or_else(|| {
                    anyhow::anyhow!("--notify-sms-template is required with --notify-url")
                })?,
                email: args.notify_email_template.clone(),
                letter: args.notify_letter_template.clone(),
            },
            rate_per_second: args.rate,
        }),
        _ => None,
    };
    let external = hub_local::External {
        notify,
        fhir_base_url: args.fhir_url.clone(),
        mesh_practices: args.mesh_practices,
    };
    let (_scratch, database) = database_file(args.db.clone(), "demo.sqlite")?;
    let options = DemoOptions {
        external,
        practices: args.practices,
        patients: args.patients,
        seed: args.seed,
        providers: args.providers,
        provider_rate: args.rate,
        postal_fallback: !args.no_letters,
        one_message_per_mobile: args.one_per_mobile,
        min_age: args.min_age,
        max_age: args.max_age,
        postcodes: args.postcodes,
        database,
        transport: if args.in_process {
            hub_local::Transport::InProcess
        } else {
            hub_local::Transport::Http
        },
        ..DemoOptions::default()
    };
    let report = if args.json {
        demo::run(&options, &Quiet).await?
    } else {
        let bars = DemoBars(Bars::new(std::io::IsTerminal::is_terminal(
            &std::io::stderr(),
        )));
        let report = demo::run(&options, &bars).await?;
        bars.0.finish();
        report
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    if !report.adds_up || report.duplicate_sends > 0 || report.patient_data_remaining > 0 {
        anyhow::bail!("the report does not add up; see above");
    }
    Ok(())
}

fn print_report(r: &DemoReport) {
    println!("Campaign {} — {}", r.campaign, r.state);
    println!(
        "Region: {} patients in {} practices ({} without a signed DSA: {})",
        r.region_patients,
        r.region_practices,
        r.practices_without_dsa.len(),
        r.practices_without_dsa.join(", ")
    );
    println!("Opted out: {}", r.opted_out_practices.join(", "));
    if !r.mesh_practices.is_empty() {
        println!(
            "Over MESH (CSV extracts, mesh-sandbox): {}",
            r.mesh_practices.join(", ")
        );
    }
    if !r.failed_practices.is_empty() {
        println!("GP system failed: {}", r.failed_practices.join(", "));
    }
    println!();
    println!("  cohort        {:>10}", r.cohort);
    println!("  sent          {:>10}", r.sent);
    println!("    delivered   {:>10}", r.delivered);
    println!("    failed      {:>10}", r.failed);
    println!("  letters       {:>10}", r.letters);
    let excluded: u64 = r.excluded.values().sum();
    println!("  excluded      {:>10}", excluded);
    for (reason, count) in &r.excluded {
        println!("    {:<22}{:>10}", reason, count);
    }
    println!("  written back  {:>10}", r.written_back);
    println!(
        "  check: cohort = sent + letters + excluded: {}",
        if r.adds_up { "yes" } else { "NO" }
    );
    println!();
    println!(
        "{:<8} {:<34} {:<18} {:>8} {:>8} {:>8} {:>8}",
        "ODS", "practice", "state", "cohort", "sent", "letters", "excluded"
    );
    for p in &r.practices {
        println!(
            "{:<8} {:<34} {:<18} {:>8} {:>8} {:>8} {:>8}",
            p.ods,
            p.name.chars().take(34).collect::<String>(),
            p.state,
            p.cohort,
            p.sent,
            p.letters,
            p.excluded
        );
    }
    println!();
    println!(
        "Elapsed {:.1}s (deadline to completion {:.1}s), {:.0} messages/s",
        r.seconds, r.send_seconds, r.messages_per_second
    );
    println!(
        "Duplicate sends: {}. Patient data purged: {} items; remaining in the store: {}.",
        r.duplicate_sends, r.purged_items, r.patient_data_remaining
    );
}

/// The SQLite file given, or one in a temporary directory (deleted when the
/// returned guard drops). On disk, not in memory: a 2,000,000-patient
/// campaign is gigabytes of rows, and SQLite's page cache stays at 32 MiB.
pub(crate) fn database_file(
    given: Option<std::path::PathBuf>,
    name: &str,
) -> anyhow::Result<(Option<tempfile::TempDir>, Option<std::path::PathBuf>)> {
    if given.is_some() {
        return Ok((None, given));
    }
    let scratch = tempfile::tempdir()?;
    let path = scratch.path().join(name);
    Ok((Some(scratch), Some(path)))
}
