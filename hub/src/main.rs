//! `hub`: the staff command-line tool and the embedded local stack.
//!
//! Exit codes: 0 done, 1 declined at the prompt, 2 usage or configuration,
//! 3 refused by the hub (4xx), 4 failure (5xx or network).

mod bench;
mod client;
mod commands;
mod config;
mod demo;
mod format;
mod render;
mod serve;
mod sigv4;
mod views;
mod watch;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hub",
    version,
    about = "SMS Engagement Hub: staff tool and local stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: config::Connection,
    /// Print the hub's answer as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole campaign on a synthetic region on the embedded stack.
    Demo(demo::DemoArgs),
    /// Campaigns: create, approve, cancel, watch, report, ...
    #[command(subcommand)]
    Campaign(commands::campaign::CampaignCommand),
    /// The practice registry.
    #[command(subcommand)]
    Practices(commands::practices::PracticesCommand),
    /// The embedded local stack.
    #[command(subcommand)]
    Local(LocalCommand),
    /// Benchmarks on the embedded stack.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Subcommand)]
enum LocalCommand {
    /// Serve the staff API over HTTP on the embedded stack, checking SigV4
    /// signatures against local credentials.
    Serve(serve::ServeArgs),
}

/// The AWS SDK warns about every credential and region source it tries;
/// the staff see only what went wrong in the end.
const CLIENT_LOGS: &str = "warn,aws_config=error,aws_smithy_runtime=error";

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hub: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Demo(args) => {
            init_tracing("warn");
            runtime
                .block_on(demo::run(args))
                .map_err(client::CliError::Other)
        }
        Command::Local(LocalCommand::Serve(args)) => {
            init_tracing("info");
            runtime.block_on(serve::run(args, cli.connection.region.clone()))
        }
        Command::Campaign(command) => {
            init_tracing(CLIENT_LOGS);
            runtime.block_on(async {
                let cx = commands::Context::new(&cli.connection, cli.json).await?;
                commands::campaign::run(command, &cx).await
            })
        }
        // On its own current-thread runtime with paused (virtual) time.
        Command::Bench(command) => {
            init_tracing("warn");
            bench::run(command, cli.json).map_err(client::CliError::Other)
        }
        Command::Practices(command) => {
            init_tracing(CLIENT_LOGS);
            runtime.block_on(async {
                let cx = commands::Context::new(&cli.connection, cli.json).await?;
                commands::practices::run(command, &cx).await
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hub: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
