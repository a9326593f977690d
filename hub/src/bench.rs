//! `hub bench limits`: the realistic-limits scenario in virtual time
//! (`hub_local::bench`), with its figures.

use crate::format::thousands;
use hub_local::bench::{run_limits, LimitsOptions, LimitsReport};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// A whole campaign with providers at their documented limits (GOV.UK
    /// Notify keys at 3,000 requests a minute and 250,000 texts a day, AWS
    /// End User Messaging senders at 10 parts a second), in virtual time.
    Limits(LimitsArgs),
}

#[derive(clap::Args)]
pub struct LimitsArgs {
    #[arg(long, default_value_t = 200)]
    practices: usize,
    #[arg(long, default_value_t = 2_000_000)]
    patients: u64,
    /// GOV.UK Notify API keys.
    #[arg(long, default_value_t = 8)]
    notify_keys: usize,
    /// AWS End User Messaging sender IDs.
    #[arg(long, default_value_t = 1)]
    eum_senders: usize,
    /// Concurrent send workers (the send function's maximum concurrency).
    #[arg(long, default_value_t = 20)]
    workers: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the tables and queues in this SQLite file (default: a temporary
    /// file, deleted afterwards, so memory does not grow with the cohort).
    #[arg(long)]
    database: Option<std::path::PathBuf>,
}

/// Runs on its own current-thread runtime with paused time, so the hub and
/// the simulators share a clock that jumps whenever everything waits.
pub fn run(command: BenchCommand, json: bool) -> anyhow::Result<()> {
    let BenchCommand::Limits(args) = command;
    let (_scratch, database) = crate::demo::database_file(args.database, "bench.sqlite")?;
    let options = LimitsOptions {
        database,
        practices: args.practices,
        patients: args.patients,
        notify_keys: args.notify_keys,
        eum_senders: args.eum_senders,
        workers: args.workers,
        seed: args.seed,
        ..LimitsOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let report = runtime.block_on(run_limits(&options))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&options, &report));
    }
    Ok(())
}

fn render(options: &LimitsOptions, r: &LimitsReport) -> String {
    let minutes = |s: f64| format!("{}m {:02}s", (s / 60.0) as u64, (s % 60.0) as u64);
    let mut out = String::new();
    out.push_str(&format!(
        "Realistic limits: {} patients in {} practices; {} Notify keys, {} End User Messaging senders, {} send workers\n",
        thousands(options.patients),
        options.practices,
        options.notify_keys,
        options.eum_senders,
        options.workers
    ));
    out.push_str(&format!(
        "  texts {}  letters {}  ({} fragment(s) each)\n",
        thousands(r.texts),
        thousands(r.letters),
        r.fragments_per_message
    ));
    out.push_str(&format!(
        "  achieved / configured rate: {:.3} overall ({:.1} of {:.1} texts/s); worst minute {}\n",
        r.utilisation,
        r.achieved_per_second,
        r.configured_per_second,
        r.worst_minute
            .map_or("n/a (under a minute)".into(), |w| format!("{w:.3}"))
    ));
    out.push_str(&format!("  429s: {}\n", r.rate_limited));
    out.push_str(&format!(
        "  deadline -> first text: {:.1}s; -> last text: {} (plan ETA {}, ratio {:.3})\n",
        r.deadline_to_first_text,
        minutes(r.completion),
        minutes(r.plan_eta),
        r.completion_vs_eta
    ));
    out.push_str(&format!(
        "  duplicates: {}  dead-lettered: {}\n",
        r.duplicates, r.dead_lettered
    ));
    out.push_str(&format!(
        "  virtual {} in real {}; peak RSS {}\n",
        minutes(r.virtual_seconds),
        minutes(r.real_seconds),
        r.peak_rss_bytes.map_or("unknown".into(), |b| format!(
            "{:.0} MiB",
            b as f64 / 1_048_576.0
        ))
    ));
    out
}
