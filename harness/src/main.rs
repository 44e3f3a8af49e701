//! `chimney-harness`: run the testbed from the command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chimney-harness",
    version,
    about = "Chimney Testbed harness: drives chimney-device as a VMM and guest driver would"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `chimney_harness=debug`.
    #[arg(long, default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start chimney-device in a private network namespace with a TAP, connect as the VMM,
    /// and run the foundation sequence (NIC path, then the control ring); print a pass/fail
    /// summary. Exit status 0 only if every step passed. Needs root.
    Smoke(chimney_harness::smoke::SmokeOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Smoke(opts) => {
            let report = chimney_harness::smoke::run(&opts);
            print!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
