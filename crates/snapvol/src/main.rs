//! `snapvol`: the command-line interface to the snapvol snapshot engine.

mod cli;
mod commands;
mod output;
mod size;
mod transfer;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Usage errors exit 2 and --help/--version exit 0, inside clap.
    let cli = cli::Cli::parse();
    init_logging();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("snapvol: error: {}", output::error_message(&err));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr at level `warn` unless `RUST_LOG` says otherwise.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
