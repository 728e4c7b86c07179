//! What the offline tools (`get`, `dump`, `restore`) share: reading a
//! working directory's data (the data file with the write-ahead logs
//! replayed over it) without the server's write path.
//!
//! Owns reading a directory while a server may be writing it, and the
//! notice that says so. It must never write: the only writer among the
//! tools is `restore`, through `snapshot` and `wal`, under the lock.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::cluster::log_store::{self, Committed};
use crate::error::Error;
use crate::storage::datadir::{Layout, ReadOnly};
use crate::storage::snapshot;
use crate::storage::store::{Builder, Sorted};
use crate::storage::wal::{self, Op, TornTail};

/// How often a read is retried when a checkpoint moves files under it.
const ATTEMPTS: usize = 5;

/// Opens `dir` read-only and, if a server holds it, says on stderr that
/// what follows is the data as it was read.
pub fn open_read_only(dir: &Path) -> Result<ReadOnly, Error> {
    let opened = ReadOnly::open(dir)?;
    if let Some(pid) = opened.writer_pid {
        eprintln!(
            "kvs: note: a kvs process (pid {pid}) is using {}; this shows the writes it had logged when they were read",
            dir.display()
        );
    }
    Ok(opened)
}

/// What a read of the data does with it, in replay order.
pub trait Replay {
    /// The read starts (again): forget anything seen so far.
    fn restart(&mut self);
    /// A pair of the data file.
    fn pair(&mut self, key: &str, value: &str);
    /// A log record, after every pair.
    fn op(&mut self, op: Op<'_>);
}

/// Reads the data file and then both logs, in replay order, into `into`.
/// A torn last log record is skipped, never cut off: only the lock holder
/// may change the files.
///
/// A server's checkpoint renames and replaces these files; if one did so
/// during the read (the files' identities changed), the read is redone, so
/// the result is always the data file and logs of one moment.
pub fn read_all(layout: &Layout, into: &mut impl Replay) -> Result<(), Error> {
    if layout.is_cluster_member() {
        return read_member(layout, into);
    }
    let files = [layout.snapshot(), layout.wal_prev(), layout.wal()];
    for _ in 0..ATTEMPTS {
        let before = identities(&files);
        into.restart();
        snapshot::read_file(&layout.snapshot(), |key, value| into.pair(key, value))
            .map_err(Error::Load)?;
        for log in [layout.wal_prev(), layout.wal()] {
            wal::replay(&log, TornTail::Skip, |op| into.op(op)).map_err(Error::Log)?;
        }
        if identities(&files) == before {
            return Ok(());
        }
    }
    Err(Error::Busy {
        dir: layout.root().to_owned(),
    })
}

/// A cluster member's committed state: its snapshot, then the committed
/// entries of its Raft log; read again if a running member replaced a
/// file meanwhile (a compaction or an installed snapshot).
fn read_member(layout: &Layout, into: &mut impl Replay) -> Result<(), Error> {
    let files = log_store::committed_files(layout);
    for _ in 0..ATTEMPTS {
        let before = identities(&files);
        into.restart();
        log_store::read_committed(layout, |item| match item {
            Committed::Pair(key, value) => into.pair(key, value),
            Committed::Op(op) => into.op(op),
        })
        .map_err(Error::Cluster)?;
        if identities(&files) == before {
            return Ok(());
        }
    }
    Err(Error::Busy {
        dir: layout.root().to_owned(),
    })
}

/// Which files (by inode) make up the data right now.
fn identities<const N: usize>(files: &[PathBuf; N]) -> [Option<u64>; N] {
    files
        .each_ref()
        .map(|path| std::fs::metadata(path).ok().map(|m| m.ino()))
}

/// Collects the pairs whose key starts with a prefix.
struct Collect<'a> {
    prefix: &'a str,
    builder: Builder,
}

impl Replay for Collect<'_> {
    fn restart(&mut self) {
        self.builder = Builder::new();
    }

    fn pair(&mut self, key: &str, value: &str) {
        if key.starts_with(self.prefix) {
            self.builder.push(key, value);
        }
    }

    fn op(&mut self, op: Op<'_>) {
        if op.key().is_none_or(|key| key.starts_with(self.prefix)) {
            op.apply_to_builder(&mut self.builder);
        }
    }
}

/// The pairs whose key starts with `prefix`, sorted, held once in memory.
pub fn load_sorted(layout: &Layout, prefix: &str) -> Result<Sorted, Error> {
    let mut collect = Collect {
        prefix,
        builder: Builder::new(),
    };
    read_all(layout, &mut collect)?;
    Ok(collect.builder.into_sorted())
}
