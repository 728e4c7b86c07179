//! The storage the Raft engine asks for: its log, its term and vote, and
//! the position of the last snapshot, durable and in plain text.
//!
//! Owns `raft-log.jsonl` (one entry a line, plus `{"commit":N}` lines that
//! record how far the log is known committed), `raft-state.json` (term and
//! vote) and `cluster.json` (the members the directory was created with).
//! The engine reads the log through [`raft::Storage`]; the node's loop
//! writes it through [`LogStore::append`], [`LogStore::set_hard_state`] and
//! [`LogStore::sync`]. Term and vote are replaced atomically and fsynced
//! the moment they change, before the loop sends anything; entries are
//! fsynced once per batch (many entries, one fsync) before the loop
//! acknowledges them. It must never apply entries (that is
//! `state_machine`) or send anything.
//!
//! # Format
//!
//! ```text
//! {"index":7,"term":2}                                   the empty entry a new leader appends
//! {"index":8,"term":2,"op":{"op":"set","key":"k","value":"v"}}
//! {"commit":8}
//! ```
//!
//! Entries are contiguous and in order. An entry the engine overwrites (a
//! follower's uncommitted tail that a new leader replaces) is cut off the
//! file before the new one is appended, so the file always reads as the
//! log. A commit line is a hint that needs no fsync of its own: losing one
//! only means entries are applied again from the log once a leader says
//! they are committed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;

use crate::cluster::members::Members;
use crate::storage::datadir::Layout;
use crate::storage::snapshot::{self, ReadError, WriteError};
use crate::storage::wal::{self, LineError, Op, TornTail};

#[derive(Debug, Error)]
pub enum LogStoreError {
    #[error(
        "{} was created for a cluster of {stored}, but this member was started with {given}; start it with the same members, or use a fresh --working-dir for a new cluster",
        dir.display()
    )]
    MembersChanged {
        dir: PathBuf,
        stored: String,
        given: String,
    },
    #[error("cannot read the Raft log: {0}")]
    Log(ReadError),
    #[error("cannot read {}: {reason}; fix or restore that file (it was left untouched)", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("cannot use {}: {error}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error(transparent)]
    Save(#[from] WriteError),
}

/// `cluster.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    members: Vec<String>,
}

/// `raft-state.json`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct StateFile {
    term: u64,
    voted_for: Option<String>,
}

/// `snapshot.meta.json`: where in the log `snapshot.jsonl` stands.
#[derive(Serialize, Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMeta {
    pub index: u64,
    pub term: u64,
}

/// `snapshot.next.json`: a switch to a snapshot, decided.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NextFile {
    index: u64,
    term: u64,
    /// The data file's name, in the same directory.
    data: String,
}

/// Where a snapshot's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSource {
    /// This member's compaction: the log after the snapshot is kept.
    Compaction,
    /// The leader: this member's log is replaced by the snapshot.
    Leader,
}

/// One line of `raft-log.jsonl`, as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn<'a> {
    index: Option<u64>,
    term: Option<u64>,
    #[serde(borrow)]
    op: Option<&'a RawValue>,
    commit: Option<u64>,
}

/// What a log line holds.
enum Line<'a> {
    Entry {
        index: u64,
        term: u64,
        op: Option<&'a str>,
    },
    Commit(u64),
}

fn parse_line(line: &[u8]) -> Result<Line<'_>, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not valid UTF-8".to_owned())?;
    let parsed: LineIn = serde_json::from_str(text).map_err(|e| {
        format!(
            "not a Raft log line ({e}); each line must be {{\"index\":N,\"term\":N,\"op\":{{...}}}} or {{\"commit\":N}}"
        )
    })?;
    match parsed {
        LineIn {
            index: Some(index),
            term: Some(term),
            op,
            commit: None,
        } => {
            let op = op.map(RawValue::get);
            if let Some(op) = op {
                crate::cluster::wire::check_op(op)?;
            }
            Ok(Line::Entry { index, term, op })
        }
        LineIn {
            index: None,
            term: None,
            op: None,
            commit: Some(commit),
        } => Ok(Line::Commit(commit)),
        _ => Err("neither an entry (index, term, op) nor a commit line".to_owned()),
    }
}

/// The Raft log and state of one member.
pub struct LogStore {
    layout: Layout,
    members: Arc<Members>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Where the log starts: the snapshot's position (0, 0 before any).
    snapshot: SnapshotMeta,
    /// The entries after the snapshot: `entries[i].index == snapshot.index + 1 + i`.
    entries: Vec<Entry>,
    /// Where each entry's line starts in the file, to cut an overwritten
    /// tail off.
    offsets: Vec<u64>,
    /// `raft-log.jsonl`, open for appending.
    log: File,
    log_len: u64,
    /// The highest commit line written.
    commit_written: u64,
    /// Whether lines were appended since the last fsync.
    unsynced: bool,
    /// Entries appended since the last fsync: the batch it makes durable.
    unsynced_entries: usize,
    buf: Vec<u8>,
}

impl LogStore {
    /// Opens a member's directory: checks (or, on a first start, records)
    /// its members, reads term, vote and log, and cuts a torn last line off
    /// the log. Everything else that does not read is an error naming the
    /// file and line, and nothing is changed.
    pub fn open(layout: &Layout, members: Arc<Members>) -> Result<LogStore, LogStoreError> {
        check_members(layout, &members)?;
        finish_switch(layout, true)?;
        remove_leftovers(layout)?;
        let state: Option<StateFile> = read_json(&layout.raft_state())?;
        let snapshot: SnapshotMeta = read_json(&layout.snapshot_meta())?.unwrap_or_default();
        let mut hard_state = HardState::default();
        if let Some(state) = state {
            hard_state.term = state.term;
            hard_state.vote = match state.voted_for {
                None => 0,
                Some(id) => members.node_of(&id).ok_or_else(|| LogStoreError::BadFile {
                    path: layout.raft_state(),
                    reason: format!("voted-for {id:?} is not a member of this cluster"),
                })?,
            };
        }

        let mut entries: Vec<Entry> = Vec::new();
        let mut offsets = Vec::new();
        let mut commit = snapshot.index;
        let first = snapshot.index + 1;
        let replayed = wal::read_log(&layout.raft_log(), TornTail::Truncate, |line, offset| {
            match parse_line(line).map_err(LineError::Unparsable)? {
                Line::Commit(n) => commit = commit.max(n),
                Line::Entry { index, term, op } => {
                    let expected = entries.last().map_or(first, |e| e.index + 1);
                    if index < first && entries.is_empty() {
                        // Already in the snapshot: a compaction wrote the
                        // snapshot and stopped before trimming the log.
                        return Ok(());
                    }
                    if index != expected {
                        return Err(LineError::Misplaced(format!(
                            "entry {index} where entry {expected} should be; the log must hold entries in order without gaps"
                        )));
                    }
                    entries.push(Entry {
                        index,
                        term,
                        data: op.map_or_else(bytes::Bytes::new, |op| {
                            bytes::Bytes::copy_from_slice(op.as_bytes())
                        }),
                        ..Default::default()
                    });
                    offsets.push(offset);
                }
            }
            Ok(())
        })
        .map_err(LogStoreError::Log)?;
        let last = entries.last().map_or(snapshot.index, |e| e.index);
        hard_state.commit = commit.min(last);
        let io_err = |error| LogStoreError::Io {
            path: layout.raft_log(),
            error,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.raft_log())
            .map_err(io_err)?;
        log.sync_all().map_err(io_err)?;
        snapshot::sync_dir(&layout.raft_log()).map_err(io_err)?;
        let conf_state = ConfState::from((members.nodes().collect::<Vec<_>>(), vec![]));
        Ok(LogStore {
            layout: layout.clone(),
            members,
            hard_state,
            conf_state,
            snapshot,
            entries,
            offsets,
            log,
            log_len: replayed.valid_bytes,
            commit_written: commit,
            unsynced: false,
            unsynced_entries: 0,
            buf: Vec::new(),
        })
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The entries from just after the snapshot up to `to`, for rebuilding
    /// the state machine at start.
    pub fn entries_through(&self, to: u64) -> &[Entry] {
        let count = to.saturating_sub(self.snapshot.index) as usize;
        &self.entries[..count.min(self.entries.len())]
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.index
    }

    /// The size of `raft-log.jsonl`, for deciding when to compact.
    pub fn log_bytes(&self) -> u64 {
        self.log_len
    }

    /// Makes `data`, a data file already written and fsynced in this
    /// directory, the snapshot at `index` (of `term`), and drops the log
    /// through `index` (all of it, for a leader's snapshot). Durable when
    /// it returns; see the module docs for the crash points.
    pub fn adopt_snapshot(
        &mut self,
        data: &std::path::Path,
        index: u64,
        term: u64,
        source: SnapshotSource,
    ) -> Result<(), LogStoreError> {
        // The commit lines through what the snapshot holds go first; and
        // the data file must be there, whole, before the switch is
        // decided: a decided switch is rolled forward whatever follows.
        self.sync()?;
        File::open(data)
            .and_then(|file| file.sync_all())
            .map_err(|error| LogStoreError::Io {
                path: data.to_owned(),
                error,
            })?;
        let next = NextFile {
            index,
            term,
            data: data
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        write_json(&self.layout.snapshot_next(), &next)?;
        crate::storage::fault::crash_point("snapshot-switch:after-commit-point");
        finish_switch(&self.layout, false)?;
        crate::storage::fault::crash_point("snapshot-switch:after-switch");
        let keep_from = match source {
            SnapshotSource::Compaction => {
                ((index + 1).saturating_sub(self.first()) as usize).min(self.entries.len())
            }
            SnapshotSource::Leader => self.entries.len(),
        };
        self.entries.drain(..keep_from);
        self.snapshot = SnapshotMeta { index, term };
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.rewrite_log()
    }

    /// Rewrites `raft-log.jsonl` as the entries in memory and the commit
    /// index, by temp file, fsync, rename and directory fsync.
    fn rewrite_log(&mut self) -> Result<(), LogStoreError> {
        let commit = self.hard_state.commit;
        let entries = std::mem::take(&mut self.entries);
        let mut offsets = Vec::with_capacity(entries.len());
        let mut line = Vec::new();
        let len = snapshot::replace_file(&self.layout.raft_log(), |out| {
            for entry in &entries {
                offsets.push(out.bytes());
                line.clear();
                entry_line(&mut line, entry);
                out.write_all(&line)?;
            }
            writeln!(out, "{{\"commit\":{commit}}}")?;
            Ok(out.bytes())
        })?;
        self.entries = entries;
        self.offsets = offsets;
        self.log = OpenOptions::new()
            .append(true)
            .open(self.layout.raft_log())
            .map_err(|error| self.io(error))?;
        self.log_len = len;
        self.commit_written = commit;
        self.unsynced = false;
        Ok(())
    }

    fn first(&self) -> u64 {
        self.snapshot.index + 1
    }

    fn last(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    /// Appends entries the engine handed over, first cutting off any
    /// entries they replace. Durable only after [`LogStore::sync`].
    pub fn append(&mut self, new: &[Entry]) -> Result<(), LogStoreError> {
        let Some(head) = new.first() else {
            return Ok(());
        };
        assert!(
            head.index >= self.first() && head.index <= self.last() + 1,
            "the engine appends after the snapshot and without gaps"
        );
        let keep = (head.index - self.first()) as usize;
        if keep < self.entries.len() {
            let cut = self.offsets[keep];
            self.log.set_len(cut).map_err(|error| self.io(error))?;
            self.log_len = cut;
            self.entries.truncate(keep);
            self.offsets.truncate(keep);
            // The commit lines after the cut went with it, but every one of
            // them named an index before it: committed entries are never
            // replaced.
        }
        self.buf.clear();
        self.unsynced_entries += new.len();
        for entry in new {
            self.offsets.push(self.log_len + self.buf.len() as u64);
            write!(
                self.buf,
                "{{\"index\":{},\"term\":{}",
                entry.index, entry.term
            )
            .expect("writing to memory");
            if !entry.data.is_empty() {
                self.buf.extend_from_slice(b",\"op\":");
                self.buf.extend_from_slice(&entry.data);
            }
            self.buf.extend_from_slice(b"}\n");
            self.entries.push(entry.clone());
        }
        self.write_buf()
    }

    /// Takes the engine's term, vote and commit index. A new term or vote
    /// is on disk (fsynced) when this returns; a new commit index is
    /// recorded with the next append.
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogStoreError> {
        if hs.term != self.hard_state.term || hs.vote != self.hard_state.vote {
            let state = StateFile {
                term: hs.term,
                voted_for: self.members.id_of(hs.vote).map(str::to_owned),
            };
            write_json(&self.layout.raft_state(), &state)?;
        }
        self.hard_state = hs.clone();
        self.set_commit(hs.commit)
    }

    /// Records that the log is committed through `commit`.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), LogStoreError> {
        self.hard_state.commit = self.hard_state.commit.max(commit);
        if commit <= self.commit_written {
            return Ok(());
        }
        self.commit_written = commit;
        self.buf.clear();
        writeln!(self.buf, "{{\"commit\":{commit}}}").expect("writing to memory");
        self.write_buf()
    }

    /// Makes everything appended durable: one fsync for the whole batch.
    pub fn sync(&mut self) -> Result<(), LogStoreError> {
        let metrics = crate::metrics::get();
        if self.unsynced {
            let started = std::time::Instant::now();
            self.log.sync_data().map_err(|error| self.io(error))?;
            metrics.fsynced(started.elapsed(), self.unsynced_entries);
            self.unsynced = false;
            self.unsynced_entries = 0;
        }
        metrics.set_log_bytes(self.log_len);
        Ok(())
    }

    fn write_buf(&mut self) -> Result<(), LogStoreError> {
        self.log
            .write_all(&self.buf)
            .map_err(|error| self.io(error))?;
        self.log_len += self.buf.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    fn io(&self, error: io::Error) -> LogStoreError {
        crate::metrics::get().disk_errors.inc();
        LogStoreError::Io {
            path: self.layout.raft_log(),
            error,
        }
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last() + 1,
            "the engine asks only for entries it has"
        );
        let from = (low - self.first()) as usize;
        let to = (high - self.first()) as usize;
        let mut entries = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if index < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(index - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// The position of the last snapshot, without its data: the network
    /// streams `snapshot.jsonl` itself when it sends this (see
    /// `cluster::network`), so the data is never held in a message.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.index == 0 || request_index > self.snapshot.index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = self.snapshot.index;
        meta.term = self.snapshot.term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snapshot)
    }
}

/// Appends an entry's log line to `out`.
fn entry_line(out: &mut Vec<u8>, entry: &Entry) {
    write!(out, "{{\"index\":{},\"term\":{}", entry.index, entry.term).expect("writing to memory");
    if !entry.data.is_empty() {
        out.extend_from_slice(b",\"op\":");
        out.extend_from_slice(&entry.data);
    }
    out.extend_from_slice(b"}\n");
}

/// Rolls a decided switch to a snapshot forward (see the module docs).
/// At start its data file may already be in place (a crash came after the
/// rename); while the member runs it must be there.
fn finish_switch(layout: &Layout, at_start: bool) -> Result<(), LogStoreError> {
    let io = |path: PathBuf| move |error| LogStoreError::Io { path, error };
    if let Some(next) = read_json::<NextFile>(&layout.snapshot_next())? {
        let data = layout.root().join(&next.data);
        match std::fs::rename(&data, layout.snapshot()) {
            Ok(()) => snapshot::sync_dir(&layout.snapshot()).map_err(io(layout.snapshot()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound && at_start => {}
            Err(error) => return Err(LogStoreError::Io { path: data, error }),
        }
        let meta = SnapshotMeta {
            index: next.index,
            term: next.term,
        };
        write_json(&layout.snapshot_meta(), &meta)?;
        std::fs::remove_file(layout.snapshot_next()).map_err(io(layout.snapshot_next()))?;
        snapshot::sync_dir(&layout.snapshot_next()).map_err(io(layout.snapshot_next()))?;
    }
    Ok(())
}

/// Removes snapshot data files that no decided switch names: leftovers of
/// a compaction or a transfer that a crash cut short. Only at start: while
/// the member runs, one may be being written.
fn remove_leftovers(layout: &Layout) -> Result<(), LogStoreError> {
    let mut leftovers = vec![layout.snapshot_compact(), layout.snapshot_incoming()];
    let listing = std::fs::read_dir(layout.root()).map_err(|error| LogStoreError::Io {
        path: layout.root().to_owned(),
        error,
    })?;
    for entry in listing.flatten() {
        if Layout::is_snapshot_received(&entry.file_name().to_string_lossy()) {
            leftovers.push(entry.path());
        }
    }
    for leftover in leftovers {
        match std::fs::remove_file(&leftover) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(LogStoreError::Io {
                    path: leftover,
                    error,
                });
            }
        }
    }
    Ok(())
}

/// Records the members on a first start; refuses a start with others.
fn check_members(layout: &Layout, members: &Members) -> Result<(), LogStoreError> {
    let given = members.ids().to_vec();
    match read_json::<ClusterFile>(&layout.cluster())? {
        Some(stored) if stored.members == given => Ok(()),
        Some(stored) => Err(LogStoreError::MembersChanged {
            dir: layout.root().to_owned(),
            stored: stored.members.join(","),
            given: given.join(","),
        }),
        None => {
            let file = ClusterFile { members: given };
            write_json(&layout.cluster(), &file)?;
            Ok(())
        }
    }
}

/// Replaces a small JSON file (one line) atomically: temp file, fsync,
/// rename, directory fsync.
pub fn write_json(path: &std::path::Path, value: &impl Serialize) -> Result<(), WriteError> {
    snapshot::replace_file(path, |out| {
        serde_json::to_writer(&mut *out, value)?;
        out.write_all(b"\n")
    })
}

/// Reads a small JSON file; a missing one is `None`.
pub fn read_json<T: for<'de> Deserialize<'de>>(
    path: &std::path::Path,
) -> Result<Option<T>, LogStoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(LogStoreError::Io {
                path: path.to_owned(),
                error,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LogStoreError::BadFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// One piece of a member's committed state, in replay order.
pub enum Committed<'a> {
    /// A pair of the snapshot.
    Pair(&'a str, &'a str),
    /// A committed operation of the log, after every pair.
    Op(Op<'a>),
}

/// Reads a member's committed state without the server: every pair of the
/// snapshot, then every committed operation of the log, in order. A
/// decided switch to a newer snapshot that a crash cut short counts as
/// done, as the next start will make it; a torn last line is skipped,
/// never cut off. Files a running member replaces meanwhile can mix two
/// moments: the caller checks their identities and reads again.
pub fn read_committed(
    layout: &Layout,
    mut each: impl FnMut(Committed<'_>),
) -> Result<(), LogStoreError> {
    let (data, meta) = match read_json::<NextFile>(&layout.snapshot_next())? {
        Some(next) => {
            let pending = layout.root().join(&next.data);
            let data = if pending.exists() {
                pending
            } else {
                layout.snapshot()
            };
            (
                data,
                SnapshotMeta {
                    index: next.index,
                    term: next.term,
                },
            )
        }
        None => (
            layout.snapshot(),
            read_json(&layout.snapshot_meta())?.unwrap_or_default(),
        ),
    };
    snapshot::read_file(&data, |key, value| each(Committed::Pair(key, value)))
        .map_err(LogStoreError::Log)?;
    // Two passes: the commit lines come after the entries they cover.
    let mut commit = meta.index;
    wal::read_log(&layout.raft_log(), TornTail::Skip, |line, _| {
        if let Line::Commit(n) = parse_line(line).map_err(LineError::Unparsable)? {
            commit = commit.max(n);
        }
        Ok(())
    })
    .map_err(LogStoreError::Log)?;
    wal::read_log(&layout.raft_log(), TornTail::Skip, |line, _| {
        if let Line::Entry {
            index,
            op: Some(json),
            ..
        } = parse_line(line).map_err(LineError::Unparsable)?
            && index > meta.index
            && index <= commit
        {
            let op = wal::parse_record(json.as_bytes()).map_err(LineError::Unparsable)?;
            each(Committed::Op(op));
        }
        Ok(())
    })
    .map_err(LogStoreError::Log)?;
    Ok(())
}

/// The files that make up a member's committed state, for readers that
/// must notice a running member replacing them.
pub fn committed_files(layout: &Layout) -> [PathBuf; 4] {
    [
        layout.snapshot(),
        layout.snapshot_meta(),
        layout.snapshot_next(),
        layout.raft_log(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn members() -> Arc<Members> {
        Arc::new(Members::new(":8001", &[":8002".into(), ":8003".into()]).unwrap())
    }

    fn entry(index: u64, term: u64, op: &str) -> Entry {
        Entry {
            index,
            term,
            data: bytes::Bytes::copy_from_slice(op.as_bytes()),
            ..Default::default()
        }
    }

    const SET_A: &str = r#"{"op":"set","key":"a","value":"1"}"#;
    const SET_B: &str = r#"{"op":"set","key":"b","value":"2"}"#;

    #[test]
    fn survives_a_restart_and_cuts_replaced_entries() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let mut store = LogStore::open(&layout, members()).unwrap();
        store
            .append(&[entry(1, 1, ""), entry(2, 1, SET_A), entry(3, 1, SET_B)])
            .unwrap();
        let hs = HardState {
            term: 2,
            vote: 2,
            commit: 2,
            ..Default::default()
        };
        store.set_hard_state(&hs).unwrap();
        // A new leader replaces entry 3.
        store.append(&[entry(3, 2, SET_A)]).unwrap();
        store.sync().unwrap();
        drop(store);

        let text = std::fs::read_to_string(layout.raft_log()).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"index\":1,\"term\":1}}\n{{\"index\":2,\"term\":1,\"op\":{SET_A}}}\n{{\"index\":3,\"term\":2,\"op\":{SET_A}}}\n"
            ),
            "the commit line after the replaced entry went with it"
        );
        let state = std::fs::read_to_string(layout.raft_state()).unwrap();
        assert_eq!(state, "{\"term\":2,\"voted-for\":\"127.0.0.1:8002\"}\n");

        let store = LogStore::open(&layout, members()).unwrap();
        assert_eq!(store.hard_state().term, 2);
        assert_eq!(store.hard_state().vote, 2);
        assert_eq!(store.last_index().unwrap(), 3);
        assert_eq!(store.term(3).unwrap(), 2);
        let got = store
            .entries(2, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got, vec![entry(2, 1, SET_A), entry(3, 2, SET_A)]);
    }

    #[test]
    fn refuses_other_members_and_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        LogStore::open(&layout, members()).unwrap();
        let others = Arc::new(Members::new(":8001", &[":8002".into()]).unwrap());
        let err = LogStore::open(&layout, others).err().unwrap();
        assert!(
            err.to_string().contains("created for a cluster of"),
            "{err}"
        );

        std::fs::write(
            layout.raft_log(),
            format!("{{\"index\":1,\"term\":1}}\n{{\"index\":3,\"term\":1,\"op\":{SET_A}}}\n"),
        )
        .unwrap();
        let err = LogStore::open(&layout, members()).err().unwrap();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn offline_readers_see_only_committed_operations() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let mut store = LogStore::open(&layout, members()).unwrap();
        store
            .append(&[entry(1, 1, ""), entry(2, 1, SET_A), entry(3, 1, SET_B)])
            .unwrap();
        store.set_commit(2).unwrap();
        store.sync().unwrap();
        let mut ops = Vec::new();
        read_committed(&layout, |item| {
            if let Committed::Op(op) = item {
                ops.push(op.into_owned());
            }
        })
        .unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(serde_json::to_string(&ops[0]).unwrap(), SET_A);
    }

    /// The engine's own reference storage (raft-rs's `MemStorage`) and this
    /// one, given the same appends (overwriting tails included) and
    /// reopened from disk now and then, must answer every question the
    /// engine asks the same way.
    #[test]
    fn answers_as_the_engines_reference_storage_does() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let mut ours = LogStore::open(&layout, members()).unwrap();
        let reference = raft::storage::MemStorage::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let mut term = 1;
        for round in 0..300 {
            let last = ours.last_index().unwrap();
            // Append at the end most of the time, else overwrite a tail.
            let start = if next(4) == 0 {
                1 + next(last + 1)
            } else {
                last + 1
            };
            term += next(2);
            let batch: Vec<Entry> = (0..1 + next(5))
                .map(|i| {
                    let op = if next(3) == 0 { "" } else { SET_A };
                    entry(start + i, term, op)
                })
                .collect();
            ours.append(&batch).unwrap();
            reference.wl().append(&batch).unwrap();
            if round % 37 == 0 {
                ours.sync().unwrap();
                drop(ours);
                ours = LogStore::open(&layout, members()).unwrap();
            }
            let (first, last) = (ours.first_index().unwrap(), ours.last_index().unwrap());
            assert_eq!(first, reference.first_index().unwrap(), "round {round}");
            assert_eq!(last, reference.last_index().unwrap(), "round {round}");
            for index in first.saturating_sub(1)..=last + 1 {
                assert_eq!(ours.term(index), reference.term(index), "term({index})");
            }
            let low = first + next(last - first + 1);
            let high = low + next(last + 2 - low);
            let max = if next(2) == 0 { None } else { Some(next(200)) };
            let context = || GetEntriesContext::empty(false);
            assert_eq!(
                ours.entries(low, high, max, context()),
                reference.entries(low, high, max, context()),
                "entries({low}, {high}, {max:?})"
            );
        }
    }
}
