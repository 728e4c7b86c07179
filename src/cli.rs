//! The command line: the one clap definition that the binary parses and
//! that the completion scripts and man pages are generated from.
//!
//! Owns flag names, defaults and help texts. It must never act on what it
//! parses: each subcommand's module turns its arguments into work.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::validate::DEFAULT_MAX_VALUE_BYTES;

/// Where every subcommand looks for the data unless told otherwise.
pub const DEFAULT_WORKING_DIR: &str = "data";

#[derive(Debug, Parser)]
#[command(
    name = "kvs",
    version,
    about = "A key-value server over HTTP whose data survives restarts, and the tools to operate its data file",
    long_about = None,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Serve(ServeArgs),
}

/// Serve the store over HTTP until SIGTERM or SIGINT, then save it and exit.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  kvs serve --port 8001 --working-dir data
  curl -X PUT --data-binary 'hello' http://127.0.0.1:8001/kv/greeting
  curl http://127.0.0.1:8001/kv/greeting

On SIGTERM or SIGINT the server stops accepting connections, lets requests \
in flight finish (at most --shutdown-timeout; a second signal stops the wait), \
saves every pair to DIR/snapshot.jsonl and exits 0. It exits 2 if the save \
fails, leaving the previous data file intact.")]
pub struct ServeArgs {
    /// TCP port to listen on (0 picks a free port, shown in the log)
    #[arg(long, default_value_t = 8001, value_name = "PORT")]
    pub port: u16,

    #[command(flatten)]
    pub dir: WorkingDir,

    /// Address to listen on; 0.0.0.0 exposes the server to the network
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub bind: IpAddr,

    /// How long shutdown waits for requests in flight before saving anyway
    /// (e.g. 15s, 500ms, 1m)
    #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Largest value accepted by PUT, in bytes; larger ones get 413
    #[arg(long, default_value_t = DEFAULT_MAX_VALUE_BYTES, value_name = "BYTES")]
    pub max_value_bytes: u64,
}

/// The `--working-dir` flag, shared by every subcommand so that its name,
/// default and help never drift apart.
#[derive(Debug, Args)]
pub struct WorkingDir {
    /// Directory holding the data file (snapshot.jsonl) and LOCK
    #[arg(
        long = "working-dir",
        default_value = DEFAULT_WORKING_DIR,
        value_name = "DIR"
    )]
    pub path: PathBuf,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration such as 15s, 500ms or 1m"))
}

/// The clap command, for generating completions and man pages.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn accepts_flag_equals_value() {
        let cli = Cli::try_parse_from([
            "kvs",
            "serve",
            "--port=8001",
            "--working-dir=.lsfr/run-1",
            "--shutdown-timeout=500ms",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command;
        assert_eq!(args.port, 8001);
        assert_eq!(args.dir.path, PathBuf::from(".lsfr/run-1"));
        assert_eq!(args.shutdown_timeout, Duration::from_millis(500));
    }
}
