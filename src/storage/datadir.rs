//! The working directory's layout and who may use it.
//!
//! Owns the file names inside `--working-dir` and the exclusive `flock` on
//! `LOCK` that makes one process at a time the directory's writer. Writers
//! (`kvs serve`, `kvs restore`) get a [`Locked`] directory; readers (`kvs
//! get`, `kvs dump`) get a [`ReadOnly`] one, which never creates, locks or
//! changes a file. This module must never read or write the data itself.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::storage::snapshot;

/// The data file.
const SNAPSHOT: &str = "snapshot.jsonl";
/// The write-ahead log being appended to.
const WAL: &str = "wal.jsonl";
/// A log being folded into the data file by a checkpoint.
const WAL_PREV: &str = "wal.prev.jsonl";
/// Held with an exclusive `flock` by the one writer; holds its pid as text.
const LOCK: &str = "LOCK";
/// A cluster member's identity: the members it was created with. Its
/// presence is what makes a directory a cluster member's.
const CLUSTER: &str = "cluster.json";
/// A cluster member's current term and vote.
const RAFT_STATE: &str = "raft-state.json";
/// A cluster member's Raft log, one entry a line.
const RAFT_LOG: &str = "raft-log.jsonl";
/// The Raft position (index, term, members) that `snapshot.jsonl` holds
/// the state machine at, in a cluster member's directory.
const SNAPSHOT_META: &str = "snapshot.meta.json";
/// The members a cluster member exchanges Raft messages with, while a
/// test partition is in force.
const PARTITION: &str = "partition.json";
/// A snapshot a cluster member has decided to switch to: its position and
/// which data file holds it. Written last, so its presence is the commit
/// point of the switch (see `cluster::log_store`).
const SNAPSHOT_NEXT: &str = "snapshot.next.json";
/// The data file a cluster member's compaction is writing.
const SNAPSHOT_COMPACT: &str = "snapshot.compact.jsonl";
/// The data file a cluster member is receiving from its leader.
const SNAPSHOT_INCOMING: &str = "snapshot.incoming.jsonl";
/// How a data file received whole from the leader is named, before the
/// index and term it stands at.
const SNAPSHOT_RECEIVED_PREFIX: &str = "snapshot.received-";

#[derive(Debug, Error)]
pub enum DataDirError {
    #[error(
        "{} is in use by another kvs process (pid {pid}); stop it first or choose another --working-dir",
        dir.display()
    )]
    InUse { dir: PathBuf, pid: String },
    #[error("data directory {} does not exist; check --working-dir", dir.display())]
    Missing { dir: PathBuf },
    #[error("{} is not a directory; --working-dir must name a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("cannot use data directory {}: {what} failed: {error}", dir.display())]
    Io {
        dir: PathBuf,
        what: &'static str,
        #[source]
        error: io::Error,
    },
}

/// The paths inside one working directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn snapshot(&self) -> PathBuf {
        self.root.join(SNAPSHOT)
    }

    pub fn wal(&self) -> PathBuf {
        self.root.join(WAL)
    }

    pub fn wal_prev(&self) -> PathBuf {
        self.root.join(WAL_PREV)
    }

    pub fn cluster(&self) -> PathBuf {
        self.root.join(CLUSTER)
    }

    pub fn raft_state(&self) -> PathBuf {
        self.root.join(RAFT_STATE)
    }

    pub fn raft_log(&self) -> PathBuf {
        self.root.join(RAFT_LOG)
    }

    pub fn snapshot_meta(&self) -> PathBuf {
        self.root.join(SNAPSHOT_META)
    }

    pub fn partition(&self) -> PathBuf {
        self.root.join(PARTITION)
    }

    pub fn snapshot_next(&self) -> PathBuf {
        self.root.join(SNAPSHOT_NEXT)
    }

    pub fn snapshot_compact(&self) -> PathBuf {
        self.root.join(SNAPSHOT_COMPACT)
    }

    pub fn snapshot_incoming(&self) -> PathBuf {
        self.root.join(SNAPSHOT_INCOMING)
    }

    /// A snapshot received whole from a leader, at `index` of `term`,
    /// waiting for the engine to take it; `receipt` counts receipts. Each
    /// has its own file, even the same snapshot delivered twice, so a new
    /// transfer can never change or remove one being installed.
    pub fn snapshot_received(&self, index: u64, term: u64, receipt: u64) -> PathBuf {
        self.root.join(format!(
            "{SNAPSHOT_RECEIVED_PREFIX}{index}-{term}-{receipt}.jsonl"
        ))
    }

    /// Whether `name` is a file [`Layout::snapshot_received`] names.
    pub fn is_snapshot_received(name: &str) -> bool {
        name.starts_with(SNAPSHOT_RECEIVED_PREFIX) && name.ends_with(".jsonl")
    }

    /// Whether the directory belongs to a cluster member.
    pub fn is_cluster_member(&self) -> bool {
        self.cluster().exists()
    }

    /// Whether the directory holds single-node data: a data file or a
    /// write-ahead log, and no cluster identity.
    pub fn holds_single_node_data(&self) -> bool {
        !self.is_cluster_member()
            && [self.snapshot(), self.wal(), self.wal_prev()]
                .iter()
                .any(|p| p.exists())
    }

    /// Every file that is only ever replaced whole, by temp file and
    /// rename: their temp files are leftovers of interrupted writes.
    fn replaced_files(&self) -> [PathBuf; 8] {
        [
            self.snapshot(),
            self.cluster(),
            self.raft_state(),
            self.snapshot_meta(),
            self.partition(),
            self.snapshot_next(),
            self.snapshot_compact(),
            self.raft_log(),
        ]
    }

    fn lock(&self) -> PathBuf {
        self.root.join(LOCK)
    }
}

/// A working directory this process alone may write. The lock is released
/// when this is dropped (or the process dies, however it dies).
#[derive(Debug)]
pub struct Locked {
    layout: Layout,
    /// Holds the `flock`; never read after it is taken.
    _lock: File,
    /// Whether a temp file left by an interrupted save was removed, so the
    /// caller can say so.
    pub removed_stale_temp: bool,
}

impl Locked {
    /// Creates the directory if needed and takes its lock, or says which
    /// process holds it. Then removes leftovers of an interrupted save:
    /// only the lock holder may, since a live writer's temp file is not a
    /// leftover.
    pub fn open(root: &Path) -> Result<Locked, DataDirError> {
        let layout = Layout::new(root);
        let io_err = |what| {
            move |error| DataDirError::Io {
                dir: root.to_owned(),
                what,
                error,
            }
        };
        if root.exists() && !root.is_dir() {
            return Err(DataDirError::NotADirectory {
                dir: root.to_owned(),
            });
        }
        if !root.exists() {
            std::fs::create_dir_all(root).map_err(io_err("creating it"))?;
            // A new directory must survive a power cut as surely as the
            // first data file written into it.
            snapshot::sync_dir(root).map_err(io_err("syncing its parent"))?;
        }
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(layout.lock())
            .map_err(io_err("opening LOCK"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(DataDirError::InUse {
                    dir: root.to_owned(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.into()
                    },
                });
            }
            Err(TryLockError::Error(error)) => return Err(io_err("locking LOCK")(error)),
        }
        // The pid is for people and error messages; the flock is the truth.
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(io_err("writing LOCK"))?;
        let mut removed_stale_temp = false;
        for file in layout.replaced_files() {
            match std::fs::remove_file(snapshot::temp_path(&file)) {
                Ok(()) => removed_stale_temp = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_err("removing a stale temp file")(error)),
            }
        }
        Ok(Locked {
            layout,
            _lock: lock,
            removed_stale_temp,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// A working directory opened only to read it.
#[derive(Debug)]
pub struct ReadOnly {
    layout: Layout,
    /// The pid of a live process holding `LOCK`, if any: its data may be
    /// newer than what is on disk.
    pub writer_pid: Option<u32>,
}

impl ReadOnly {
    /// Opens an existing directory without creating, locking or changing
    /// anything in it.
    pub fn open(root: &Path) -> Result<ReadOnly, DataDirError> {
        let layout = Layout::new(root);
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(DataDirError::NotADirectory {
                    dir: root.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DataDirError::Missing {
                    dir: root.to_owned(),
                });
            }
            Err(error) => {
                return Err(DataDirError::Io {
                    dir: root.to_owned(),
                    what: "reading it",
                    error,
                });
            }
        }
        let writer_pid = lock_holder(&layout.lock());
        Ok(ReadOnly { layout, writer_pid })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// Finds the process holding an `flock` on `path` by looking it up in
/// `/proc/locks`, which (unlike trying the lock) changes nothing, so a
/// reader can never make a starting server think the directory is busy.
fn lock_holder(path: &Path) -> Option<u32> {
    let inode = std::fs::metadata(path).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiting
        // lockers add "->" after the number and are not holders.
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, device_inode, ..] => {
                // Only the inode is compared: on overlay filesystems the
                // device shown here differs from the one `stat` reports.
                let ino: u64 = device_inode.rsplit(':').next()?.parse().ok()?;
                (ino == inode).then(|| pid.parse().ok()).flatten()
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = Locked::open(dir.path()).unwrap();
        // flock locks belong to the open file, so a second open in the same
        // process conflicts just as another process would.
        let err = Locked::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "in use by another kvs process (pid {})",
                std::process::id()
            )),
            "{msg}"
        );
        let reader = ReadOnly::open(dir.path()).unwrap();
        assert_eq!(reader.writer_pid, Some(std::process::id()));
        drop(first);
        let reader = ReadOnly::open(dir.path()).unwrap();
        assert_eq!(reader.writer_pid, None);
        Locked::open(dir.path()).unwrap();
    }

    #[test]
    fn removes_a_stale_temp_file_only_when_locked() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let temp = snapshot::temp_path(&layout.snapshot());
        std::fs::write(&temp, "half a save").unwrap();
        ReadOnly::open(dir.path()).unwrap();
        assert!(temp.exists());
        let locked = Locked::open(dir.path()).unwrap();
        assert!(locked.removed_stale_temp);
        assert!(!temp.exists());
    }

    #[test]
    fn read_only_open_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = ReadOnly::open(&missing).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!missing.exists());
    }
}
