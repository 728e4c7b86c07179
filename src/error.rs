//! The errors a command can end with, and the exit code of each.
//!
//! Owns the mapping from failures to exit codes (SPEC §1: 0 success, 1 not
//! found, 2 anything else). Each variant's message is the one sentence the
//! user sees on stderr, so it must name the file, line or key at fault and
//! what to do; it must never be a debug dump.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use thiserror::Error;

use crate::storage::datadir::DataDirError;
use crate::storage::snapshot::{ReadError, WriteError};

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot load the data file: {0}{hint}", hint = fix_hint(.0, "fix or remove that line"))]
    Load(ReadError),
    #[error(
        "cannot replay the write-ahead log: {0}{hint}",
        hint = fix_hint(.0, "fix that line, or move the log aside to start without its writes")
    )]
    Log(ReadError),
    #[error("{0}{hint}", hint = if .0.replaced() {
        "; the new data file is in place but may not survive a power loss"
    } else {
        "; the previous data file was left intact"
    })]
    Save(#[from] WriteError),
    #[error("{0}")]
    RemoveLog(crate::storage::wal::CheckpointError),
    #[error("{} kept changing while being read (a server is checkpointing); try again", dir.display())]
    Busy { dir: PathBuf },
    #[error("cannot listen on {addr}: {error}; choose another --port or --bind")]
    Listen {
        addr: SocketAddr,
        #[source]
        error: io::Error,
    },
    #[error("cannot start the server: {what} failed: {error}")]
    Startup {
        what: &'static str,
        #[source]
        error: io::Error,
    },
    #[error(transparent)]
    Members(#[from] crate::cluster::members::MembersError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error(
        "cannot resolve --addr {addr} to an address to listen on; give --bind and --port, or an address that resolves"
    )]
    Resolve { addr: String },
    #[error("{} holds {holds}; {fix}", dir.display())]
    ModeMismatch {
        dir: PathBuf,
        holds: &'static str,
        fix: &'static str,
    },
    #[error("{0}")]
    Cluster(crate::cluster::log_store::LogStoreError),
    #[error(
        "{} is a cluster member's directory; a member's data can only change through the cluster's leader. To seed a cluster, start it empty and PUT the pairs through the leader (see \"Running a cluster\" in the README)",
        dir.display()
    )]
    RestoreCluster { dir: PathBuf },
    #[error("cannot install the signal handler: {0}")]
    Signals(#[from] ctrlc::Error),
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] io::Error),
    #[error("invalid key {key:?}: {reason}; keys are 1 to 1024 bytes of A-Z a-z 0-9 : _ . -")]
    InvalidKey {
        key: String,
        reason: crate::storage::validate::KeyError,
    },
    #[error(
        "{} already holds {keys} keys; pass --force to replace them or --merge to add the input to them",
        dir.display()
    )]
    NotEmpty { dir: PathBuf, keys: usize },
    #[error("cannot restore: {0}; nothing was written")]
    Input(ReadError),
    #[error("cannot use {}: {error}", path.display())]
    File {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
}

impl From<crate::storage::wal::CheckpointError> for Error {
    fn from(e: crate::storage::wal::CheckpointError) -> Error {
        match e {
            // A failed data-file write keeps its own wording ("the previous
            // data file was left intact").
            crate::storage::wal::CheckpointError::Save(e) => Error::Save(e),
            other => Error::RemoveLog(other),
        }
    }
}

/// What to do about a file that could not be read: for a bad line, `fix`;
/// either way, the file was not changed.
fn fix_hint(error: &ReadError, fix: &str) -> String {
    match error {
        ReadError::Invalid { .. } => format!("; {fix} (the file was left untouched)"),
        ReadError::Io { .. } => " (the file was left untouched)".to_owned(),
    }
}

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// `kvs get` found no such key: exit 1, like grep.
    NotFound,
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> ExitCode {
        match outcome {
            Outcome::Success => ExitCode::SUCCESS,
            Outcome::NotFound => ExitCode::from(1),
        }
    }
}

/// Ends a command whose output went to stdout. A closed pipe (`kvs dump |
/// head`) is the reader's choice, not a failure.
pub fn stdout_result(written: io::Result<()>) -> Result<Outcome, Error> {
    match written {
        Ok(()) => Ok(Outcome::Success),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Outcome::Success),
        Err(e) => Err(Error::Stdout(e)),
    }
}

/// The exit code of every error: usage errors (from clap) and failures
/// alike are 2.
pub const FAILURE: u8 = 2;
