//! The command line: the one clap definition that the binary parses and
//! that the completion scripts and man pages are generated from.
//!
//! Owns flag names, defaults and help texts. It must never act on what it
//! parses: each subcommand's module turns its arguments into work.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::storage::validate::DEFAULT_MAX_VALUE_BYTES;
use crate::storage::wal::FsyncPolicy;

/// The port `kvs serve` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8001;

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
    Get(GetArgs),
    Dump(DumpArgs),
    Restore(RestoreArgs),
    Completions(CompletionsArgs),
}

/// Serve the store over HTTP until SIGTERM or SIGINT, then save it and exit.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  kvs serve --port 8001 --working-dir data
  curl -X PUT --data-binary 'hello' http://127.0.0.1:8001/kv/greeting
  curl http://127.0.0.1:8001/kv/greeting
  kvs serve --port 8001 --working-dir n1 --peers=:8001,:8002,:8003
  ADDR=10.0.42.101:8080 PEERS=10.0.42.102:8080,10.0.42.103:8080 kvs serve --token-file token

With --peers (or PEERS), the server is one member of a static cluster \
that replicates every write through Raft: writes go to the leader (other \
members answer 307 with its address) and are answered once a majority \
has them on disk; reads on the leader are linearizable. See GET \
/cluster/info. Without peers:

Every write is appended to DIR/wal.jsonl (and, with --fsync always, \
fsynced) before it is acknowledged, so a crash, SIGKILL or power loss \
loses nothing acknowledged; the next start replays the log.

On SIGTERM or SIGINT the server stops accepting connections, lets requests \
in flight finish (at most --shutdown-timeout; a second signal stops the wait), \
saves every pair to DIR/snapshot.jsonl, removes the log and exits 0. It \
exits 2 if the save fails, leaving the previous data file and the log \
intact.")]
pub struct ServeArgs {
    /// TCP port to listen on (0 picks a free port, shown in the log)
    /// [default: 8001, or the port of --addr when that is given]
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    #[command(flatten)]
    pub dir: WorkingDir,

    /// Address to listen on; 0.0.0.0 exposes the server to the network
    /// [default: 127.0.0.1, or the host of --addr when that is given]
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,

    /// How long shutdown waits for requests in flight before saving anyway
    /// (e.g. 15s, 500ms, 1m)
    #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Largest value accepted by PUT, in bytes; larger ones get 413
    #[arg(long, default_value_t = DEFAULT_MAX_VALUE_BYTES, value_name = "BYTES")]
    pub max_value_bytes: u64,

    /// When logged writes reach the disk: `always` fsyncs before each
    /// acknowledgement (concurrent writes share one fsync), so nothing
    /// acknowledged is lost even on power loss; `periodic` fsyncs at least
    /// once a second, surviving a crash of the process but losing up to a
    /// second of writes on power loss (single-node mode; a cluster member
    /// always fsyncs)
    #[arg(long, value_enum, default_value = "always", value_name = "POLICY")]
    pub fsync: FsyncPolicy,

    /// Fold the write-ahead log into the data file (a checkpoint) when it
    /// grows past this many bytes; in a cluster, snapshot the store and
    /// trim the Raft log (a compaction) when it does
    #[arg(long, default_value_t = DEFAULT_WAL_MAX_BYTES, value_name = "BYTES")]
    pub wal_max_bytes: u64,

    /// The cluster's members, comma-separated HOST:PORT or :PORT (meaning
    /// 127.0.0.1:PORT); listing this member too is allowed. Empty or unset:
    /// a single node
    #[arg(long, env = "PEERS", value_name = "LIST")]
    pub peers: Option<String>,

    /// This member's address and ID in the cluster, HOST:PORT, as the other
    /// members reach it [default: BIND:PORT]
    #[arg(long, env = "ADDR", value_name = "HOST:PORT")]
    pub addr: Option<String>,

    /// How long a cluster write may wait to be committed on a majority (and
    /// a read to have leadership confirmed) before it is answered 503
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    pub commit_timeout: Duration,

    /// File holding the token that every request but GET or HEAD /health
    /// must carry as `Authorization: Bearer TOKEN` (surrounding whitespace
    /// trimmed; at least 32 visible ASCII characters; no access for group
    /// or others). Every member of a cluster uses the same one
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// PEM certificate chain (leaf first) for the port to serve HTTPS only;
    /// needs --tls-key
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates that members verify each other's certificates
    /// against [default: the system's roots]
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Serve on an address other than loopback without --token-file, which
    /// is otherwise refused (protected mode): anyone who can reach the port
    /// can then read, change and clear every key
    #[arg(
        long,
        env = "KVS_INSECURE",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure: bool,

    /// How much the server logs to stderr
    #[arg(
        long,
        value_enum,
        default_value = "info",
        env = "KVS_LOG_LEVEL",
        value_name = "LEVEL"
    )]
    pub log_level: LogLevel,
}

/// How much `kvs serve` logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> tracing::Level {
        match level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// 64 MiB: replays in well under a second at start.
pub const DEFAULT_WAL_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Print the value stored under KEY.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Prints the value exactly as stored, adding a newline only when standard \
output is a terminal. Exits 1, with `key not found: KEY` on stderr, when \
the key is absent, like grep. Reads the data file with the write-ahead log \
replayed, as a server would load it. Never creates, locks or changes a file; \
while a server runs it shows the writes that server had logged, and says so \
on stderr.

Examples:
  kvs get greeting --working-dir data
  kvs get config:json | jq .")]
pub struct GetArgs {
    /// The key to look up
    pub key: String,

    #[command(flatten)]
    pub dir: WorkingDir,
}

/// Print every pair, sorted by key: a table on a terminal, JSON Lines otherwise.
#[derive(Debug, Args)]
#[command(after_long_help = "\
The JSON Lines output is byte for byte the data-file format, so it is a \
backup that `kvs restore` reads back. Reads the data file with the \
write-ahead log replayed, as a server would load it. Never creates, locks or \
changes a file; while a server runs it shows the writes that server had \
logged, and says so on stderr.

Examples:
  kvs dump                                  # a table on a terminal
  kvs dump > backup.jsonl                   # JSON Lines when redirected
  kvs dump --prefix user: | jq -r .value
  kvs dump --format table --prefix session:")]
pub struct DumpArgs {
    #[command(flatten)]
    pub dir: WorkingDir,

    /// Output format [default: table on a terminal, jsonl otherwise]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<DumpFormat>,

    /// Only pairs whose key starts with this prefix
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "",
        hide_default_value = true
    )]
    pub prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DumpFormat {
    /// A table with KEY and VALUE columns, long values shortened
    Table,
    /// One {"key":...,"value":...} object per line: the data-file format
    Jsonl,
}

/// Replace (or with --merge, update) the data file from JSON Lines.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Reads lines in the data-file format (any key order; a repeated key: the \
later line wins) and checks every line by the rules of the HTTP API before \
writing anything: one bad line and nothing is written, and the error names \
the line. Then writes the data file atomically (temp file, fsync, rename, \
directory fsync) and prints `restored N keys into DIR`, N being the number \
of keys the store holds afterwards. Refuses while a server holds the \
directory, and refuses to replace a store that has data unless --force or \
--merge is given. A write-ahead log left by a crashed server is counted as \
data and folded into the data file first, so a crash at any step leaves \
the old data or the new.

Examples:
  kvs restore backup.jsonl --working-dir data
  kvs dump --working-dir old | kvs restore --working-dir new
  kvs restore seed.jsonl --merge")]
pub struct RestoreArgs {
    /// JSON Lines file to read; - reads standard input
    #[arg(value_name = "FILE", default_value = "-")]
    pub input: PathBuf,

    #[command(flatten)]
    pub dir: WorkingDir,

    /// Replace a store that already holds data
    #[arg(long, conflicts_with = "merge")]
    pub force: bool,

    /// Add the input to the existing pairs; input lines win over existing keys
    #[arg(long)]
    pub merge: bool,

    /// Largest value accepted, in bytes, as for `kvs serve`
    #[arg(long, default_value_t = DEFAULT_MAX_VALUE_BYTES, value_name = "BYTES")]
    pub max_value_bytes: u64,
}

/// Print a shell completion script to standard output.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  kvs completions bash > ~/.local/share/bash-completion/completions/kvs
  kvs completions zsh > ~/.zfunc/_kvs         # with fpath+=(~/.zfunc)
  kvs completions fish > ~/.config/fish/completions/kvs.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The `--working-dir` flag, shared by every subcommand so that its name,
/// default and help never drift apart.
#[derive(Debug, Args)]
pub struct WorkingDir {
    /// Directory holding the data file (snapshot.jsonl), the write-ahead log
    /// (wal.jsonl) or a cluster member's Raft log (raft-log.jsonl), and LOCK
    #[arg(
        long = "working-dir",
        env = "DATA_DIR",
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
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.port, Some(8001));
        assert_eq!(args.dir.path, PathBuf::from(".lsfr/run-1"));
        assert_eq!(args.shutdown_timeout, Duration::from_millis(500));
    }
}
