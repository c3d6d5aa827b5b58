//! `snapvol`: the command-line interface to the snapvol snapshot engine.

mod cli;
mod commands;
mod diff_transfer;
mod output;
mod rbd_diff;
mod serve;
mod size;
mod transfer;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Usage errors exit 2 and --help/--version exit 0, inside clap.
    let cli = cli::Cli::parse();
    let default_level = match cli.command {
        cli::Command::Serve(_) => "info",
        _ => "warn",
    };
    init_logging(cli.log_level.as_deref().unwrap_or(default_level));
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("snapvol: error: {}", output::error_message(&err));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr at `level` unless `RUST_LOG` says otherwise.
fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or journald gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
