//! The write-ahead log: every write is appended to `wal.jsonl` and made
//! durable before it is applied to the store and acknowledged.
//!
//! Owns the log's format, the one writer thread that appends, syncs and
//! applies in log order (so memory always equals snapshot + log replay),
//! recovery (dropping a torn last record) and checkpoints. It must never
//! block a tokio worker thread: requests reach the writer through a channel
//! and wait for its answer asynchronously.
//!
//! # Format
//!
//! JSON Lines, one record per line: `{"op":"set","key":"k","value":"v"}`,
//! `{"op":"delete","key":"k"}` or `{"op":"clear"}`.
//!
//! # Why replaying a log twice is harmless
//!
//! Every record either sets or removes one key, or removes all of them. So
//! for any key, the state after replaying a log L is decided by L's last
//! record touching that key (or its last `clear`), and otherwise by the
//! state before. Replaying L over a state that already includes L therefore
//! changes nothing; and a snapshot that holds, for each key, its value at
//! *some* moment after L began, replayed with all of L, ends in the state at
//! L's end. The checkpoint protocol below leans on exactly this.
//!
//! # Files and the checkpoint protocol
//!
//! `snapshot.jsonl` (the data file), then `wal.prev.jsonl` (a log being
//! folded into the snapshot by a checkpoint), then `wal.jsonl` (the log being
//! written): the state is the snapshot with both logs replayed in that order.
//! A checkpoint, when the log passes `--wal-max-bytes`:
//!
//! 1. the writer syncs `wal.jsonl`, renames it to `wal.prev.jsonl`, starts a
//!    new empty `wal.jsonl` and syncs the directory (writes wait only for
//!    this);
//! 2. a background thread copies the store one shard at a time (reads and
//!    writes go on; the copy is "fuzzy", each key as it was at some moment
//!    after step 1), sorts it and replaces `snapshot.jsonl` atomically;
//! 3. it removes `wal.prev.jsonl` and syncs the directory.
//!
//! A crash before 2 completes leaves the old snapshot and both logs; after
//! 2, the new snapshot and both logs (replaying `wal.prev.jsonl` again is
//! harmless); after 3, the new snapshot and `wal.jsonl`, which it needs in
//! full (see above). At shutdown the store is saved whole and both logs are
//! removed afterwards; at start, a leftover `wal.prev.jsonl` is folded in
//! before serving.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{error, info, warn};

use crate::storage::datadir::Layout;
use crate::storage::snapshot::{self, ReadError};
use crate::storage::store::Store;
use crate::storage::{fault, validate};

/// When the writer makes appended records durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncPolicy {
    /// Before acknowledging each write (group commit shares one fsync
    /// between all writes waiting at the time).
    Always,
    /// At least once a second: survives a crash of the process, may lose
    /// up to a second of writes on power loss.
    Periodic,
}

/// How often `periodic` syncs.
const PERIODIC_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bound on records gathered into one append, so a flood of writers
/// cannot make one batch (and its latency) unbounded.
const MAX_BATCH: usize = 4096;

/// One change to the store, as logged and as submitted by the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Op<'a> {
    Set {
        #[serde(borrow)]
        key: Cow<'a, str>,
        #[serde(borrow)]
        value: Cow<'a, str>,
    },
    Delete {
        #[serde(borrow)]
        key: Cow<'a, str>,
    },
    Clear,
}

impl Op<'_> {
    /// Applies the change to `store`.
    pub fn apply(&self, store: &Store) {
        match self {
            Op::Set { key, value } => store.put(key, value),
            Op::Delete { key } => {
                store.delete(key);
            }
            Op::Clear => store.clear(),
        }
    }

    /// Records the change in `builder`, as it would change a store.
    pub fn apply_to_builder(&self, builder: &mut crate::storage::store::Builder) {
        match self {
            Op::Set { key, value } => builder.push(key, value),
            Op::Delete { key } => builder.delete(key),
            Op::Clear => builder.clear(),
        }
    }

    /// The key a set or delete touches.
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Set { key, .. } | Op::Delete { key } => Some(key),
            Op::Clear => None,
        }
    }

    /// The same change, owning its text.
    pub fn into_owned(self) -> Op<'static> {
        match self {
            Op::Set { key, value } => Op::Set {
                key: Cow::Owned(key.into_owned()),
                value: Cow::Owned(value.into_owned()),
            },
            Op::Delete { key } => Op::Delete {
                key: Cow::Owned(key.into_owned()),
            },
            Op::Clear => Op::Clear,
        }
    }
}

/// Why a write was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WriteError {
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the write-ahead log cannot be written; the server accepts no more writes")]
    LogFailed,
}

/// What to do with a torn last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornTail {
    /// Cut it off the file (the one writer does this at start).
    Truncate,
    /// Leave the file alone and just not apply it (readers).
    Skip,
}

/// What replaying a log found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    pub records: u64,
    /// The byte length of the whole records: where a torn tail began.
    pub valid_bytes: u64,
    /// Whether a torn last record was found (and dropped).
    pub torn: bool,
}

/// Replays the log at `path` (missing = empty), calling `each` with every
/// whole record in order. A last record without its newline, or that does
/// not parse, is a write cut short by a crash: it was never acknowledged,
/// so it is dropped with a warning naming its byte offset (and cut off the
/// file with `TornTail::Truncate`). A bad record with whole records after
/// it is corruption: an error naming the line, and the file is untouched.
pub fn replay(
    path: &Path,
    torn_tail: TornTail,
    mut each: impl FnMut(Op<'_>),
) -> Result<Replayed, ReadError> {
    read_log(path, torn_tail, |line, _| {
        each(parse_record(line).map_err(LineError::Unparsable)?);
        Ok(())
    })
}

/// Why a log line was not taken.
#[derive(Debug)]
pub enum LineError {
    /// It does not parse: the torn tail if nothing follows, else corruption.
    Unparsable(String),
    /// It parses but cannot be right where it stands (say, an index out of
    /// sequence): corruption, wherever it is.
    Misplaced(String),
}

/// Reads an append-only JSON Lines log at `path` (missing = empty) by the
/// torn-tail rules of [`replay`], calling `take` with each whole line (its
/// trailing newline removed) and the byte offset it starts at. `take` must
/// have no effect when it returns an error. Shared by this log and the
/// cluster's Raft log, so both cut a crash's torn write the same way.
pub fn read_log(
    path: &Path,
    torn_tail: TornTail,
    mut take: impl FnMut(&[u8], u64) -> Result<(), LineError>,
) -> Result<Replayed, ReadError> {
    let name = path.display().to_string();
    let io_error = |error| ReadError::Io {
        source_name: name.clone(),
        error,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replayed::default()),
        Err(e) => return Err(io_error(e)),
    };
    // Only what the file held when opened: a reader racing a live writer
    // would otherwise see a record half-written when it first reads, then
    // whole records after it once the append completes, and cry
    // corruption. Cut at this length, a half-written record is simply the
    // torn tail, and it was not acknowledged yet.
    let len = file.metadata().map_err(io_error)?.len();
    let replayed = read_lines(file, len, &name, &mut take)?;
    if replayed.torn {
        let at = replayed.valid_bytes;
        warn!(
            "{name}: dropped a torn last record at byte offset {at} (a write cut short by a crash; it was never acknowledged)"
        );
        if torn_tail == TornTail::Truncate {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_error)?;
            file.set_len(at)
                .and_then(|()| file.sync_all())
                .map_err(io_error)?;
        }
    }
    Ok(replayed)
}

/// Reads the first `len` bytes of `log` (see [`read_log`]).
fn read_lines(
    log: impl Read,
    len: u64,
    name: &str,
    take: &mut impl FnMut(&[u8], u64) -> Result<(), LineError>,
) -> Result<Replayed, ReadError> {
    let io_error = |error| ReadError::Io {
        source_name: name.to_owned(),
        error,
    };
    let mut input = BufReader::with_capacity(1 << 20, log.take(len));
    let mut replayed = Replayed::default();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let mut offset = 0u64;
    // A bad line is only known to be the torn tail once nothing follows.
    let mut suspect: Option<(u64, String)> = None;
    loop {
        buf.clear();
        let n = input.read_until(b'\n', &mut buf).map_err(io_error)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let start = offset;
        offset += n as u64;
        let whole = buf.ends_with(b"\n");
        let blank = buf.iter().all(u8::is_ascii_whitespace);
        if let Some((bad_line, reason)) = suspect.take() {
            if blank && whole {
                suspect = Some((bad_line, reason));
                continue;
            }
            return Err(ReadError::Invalid {
                source_name: name.to_owned(),
                line: bad_line,
                reason: format!(
                    "{reason}, and whole records follow it, so it is not a torn last write"
                ),
            });
        }
        if blank && whole {
            replayed.valid_bytes = offset;
            continue;
        }
        if !whole {
            // No newline: the append was cut short, whatever it holds.
            replayed.torn = true;
            break;
        }
        match take(&buf[..buf.len() - 1], start) {
            Ok(()) => {
                replayed.records += 1;
                replayed.valid_bytes = offset;
            }
            Err(LineError::Unparsable(reason)) => {
                suspect = Some((line_no, reason));
                replayed.valid_bytes = start;
            }
            Err(LineError::Misplaced(reason)) => {
                return Err(ReadError::Invalid {
                    source_name: name.to_owned(),
                    line: line_no,
                    reason,
                });
            }
        }
    }
    if suspect.is_some() {
        replayed.torn = true;
    }
    Ok(replayed)
}

/// Parses and checks one log record (without its newline).
pub fn parse_record(line: &[u8]) -> Result<Op<'_>, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not valid UTF-8".to_owned())?;
    let op: Op = serde_json::from_str(text).map_err(|e| {
        format!(
            "not a log record ({e}); each line must be {{\"op\":\"set\"|\"delete\"|\"clear\",...}}"
        )
    })?;
    match &op {
        Op::Set { key, value } => {
            validate::key(key).map_err(|e| e.to_string())?;
            validate::value(value).map_err(|e| e.to_string())?;
        }
        Op::Delete { key } => validate::key(key).map_err(|e| e.to_string())?,
        Op::Clear => {}
    }
    Ok(op)
}

/// Replays both logs of a directory, in order, onto `store`.
pub fn replay_all(layout: &Layout, store: &Store, torn_tail: TornTail) -> Result<u64, ReadError> {
    let mut records = 0;
    for log in [layout.wal_prev(), layout.wal()] {
        records += replay(&log, torn_tail, |op| op.apply(store))?.records;
    }
    Ok(records)
}

/// A request to the writer thread.
enum Message {
    Write {
        op: Op<'static>,
        done: tokio::sync::oneshot::Sender<Result<(), WriteError>>,
    },
    /// Finish what was sent before, sync, and stop.
    Stop,
}

/// The handle the HTTP layer submits writes through.
pub struct Wal {
    tx: mpsc::Sender<Message>,
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct Options {
    pub fsync: FsyncPolicy,
    /// Start a checkpoint when `wal.jsonl` grows past this many bytes.
    pub max_bytes: u64,
}

impl Wal {
    /// Logs `op`, waits until it is durable (as `--fsync` defines) and
    /// applied, and returns. The caller may acknowledge it then.
    pub async fn submit(&self, op: Op<'static>) -> Result<(), WriteError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Message::Write { op, done })
            .map_err(|_| WriteError::ShuttingDown)?;
        // A dropped answer means the writer stopped before this write.
        answer.await.unwrap_or(Err(WriteError::ShuttingDown))
    }
}

/// The running writer thread.
pub struct Writer {
    tx: mpsc::Sender<Message>,
    thread: JoinHandle<()>,
}

impl Writer {
    /// Opens `wal.jsonl` for appending and starts the writer thread.
    pub fn start(layout: Layout, store: Arc<Store>, options: Options) -> io::Result<(Wal, Writer)> {
        let log = open_log(&layout.wal())?;
        let log_len = log.metadata()?.len();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kvs-wal".into())
            .spawn(move || {
                let mut state = WriterState {
                    layout,
                    store,
                    options,
                    log,
                    log_len,
                    unsynced: false,
                    last_sync: Instant::now(),
                    checkpoint: None,
                    failed: false,
                };
                state.run(&rx);
            })?;
        Ok((Wal { tx: tx.clone() }, Writer { tx, thread }))
    }

    /// Stops the writer once everything submitted so far is durable and
    /// applied, and waits for a running checkpoint. Later submissions fail
    /// with `ShuttingDown`.
    pub fn stop(self) {
        let _ = self.tx.send(Message::Stop);
        if self.thread.join().is_err() {
            error!("the write-ahead log thread panicked");
        }
    }
}

/// Opens (creating if needed) a log for appending, making its existence
/// durable: always, since an earlier run may have died between creating it
/// and syncing its directory.
fn open_log(path: &Path) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    file.seek(io::SeekFrom::End(0))?;
    file.sync_all()?;
    snapshot::sync_dir(path)?;
    Ok(file)
}

struct WriterState {
    layout: Layout,
    store: Arc<Store>,
    options: Options,
    /// `wal.jsonl`, open for appending.
    log: File,
    /// Its length: where the next batch goes, and what a failed batch is
    /// cut back to.
    log_len: u64,
    /// Whether records were appended since the last fsync (`periodic`).
    unsynced: bool,
    last_sync: Instant,
    /// The checkpoint thread, while one runs.
    checkpoint: Option<JoinHandle<()>>,
    /// Set after a failed append or fsync: the log's tail is unknown, so no
    /// further write may be acknowledged.
    failed: bool,
}

impl WriterState {
    fn run(&mut self, rx: &mpsc::Receiver<Message>) {
        let mut batch: Vec<(
            Op<'static>,
            tokio::sync::oneshot::Sender<Result<(), WriteError>>,
        )> = Vec::new();
        let mut buf = Vec::new();
        loop {
            let first = match self.next_message(rx) {
                Some(message) => message,
                None => continue,
            };
            let mut stop = matches!(first, Message::Stop);
            if let Message::Write { op, done } = first {
                batch.push((op, done));
            }
            // Group commit: everything that queued while the last fsync
            // ran goes into this one append and this one fsync.
            while !stop && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Message::Write { op, done }) => batch.push((op, done)),
                    Ok(Message::Stop) => stop = true,
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch, &mut buf);
            }
            if stop {
                self.finish();
                return;
            }
            self.maybe_checkpoint();
        }
    }

    /// Waits for the next message; in `periodic` mode wakes up to sync
    /// when a second has passed with records unsynced. `None` means "woke
    /// up, nothing to do".
    fn next_message(&mut self, rx: &mpsc::Receiver<Message>) -> Option<Message> {
        if !self.unsynced {
            return Some(rx.recv().unwrap_or(Message::Stop));
        }
        let due = self.last_sync + PERIODIC_INTERVAL;
        match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(message) => {
                if Instant::now() >= due {
                    self.sync();
                }
                Some(message)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.sync();
                None
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Message::Stop),
        }
    }

    fn commit(
        &mut self,
        batch: &mut Vec<(
            Op<'static>,
            tokio::sync::oneshot::Sender<Result<(), WriteError>>,
        )>,
        buf: &mut Vec<u8>,
    ) {
        if self.failed {
            for (_, done) in batch.drain(..) {
                let _ = done.send(Err(WriteError::LogFailed));
            }
            return;
        }
        buf.clear();
        let len_before = self.log_len;
        for (op, _) in batch.iter() {
            serde_json::to_writer(&mut *buf, op).expect("a record always serializes");
            buf.push(b'\n');
        }
        let durable = self
            .log
            .write_all(buf)
            .and_then(|()| match self.options.fsync {
                FsyncPolicy::Always => self.log.sync_data(),
                FsyncPolicy::Periodic => Ok(()),
            });
        if let Err(e) = durable {
            error!(
                "cannot append to {}: {e}; refusing all further writes (reads go on; the data saved at shutdown is what was acknowledged)",
                self.layout.wal().display()
            );
            self.failed = true;
            // Whole records of this batch may have reached the file; they
            // were not applied or acknowledged, so they must not be
            // replayed either.
            if let Err(e) = self
                .log
                .set_len(len_before)
                .and_then(|()| self.log.sync_data())
            {
                error!(
                    "cannot cut {} back to its last acknowledged record: {e}; a restart may replay writes that were refused",
                    self.layout.wal().display()
                );
            }
            for (_, done) in batch.drain(..) {
                let _ = done.send(Err(WriteError::LogFailed));
            }
            return;
        }
        self.log_len += buf.len() as u64;
        match self.options.fsync {
            FsyncPolicy::Always => self.last_sync = Instant::now(),
            FsyncPolicy::Periodic => self.unsynced = true,
        }
        fault::crash_point("wal:after-append");
        // Applied in log order, after the append: readers see a write only
        // once it is logged, and memory never disagrees with the log.
        for (op, done) in batch.drain(..) {
            op.apply(&self.store);
            let _ = done.send(Ok(()));
        }
    }

    fn sync(&mut self) {
        if let Err(e) = self.log.sync_data() {
            error!(
                "cannot sync {}: {e}; refusing all further writes",
                self.layout.wal().display()
            );
            self.failed = true;
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
    }

    /// Starts a checkpoint when the log has grown past the limit and none
    /// is running.
    fn maybe_checkpoint(&mut self) {
        if self.failed {
            return;
        }
        if let Some(running) = &self.checkpoint {
            if !running.is_finished() {
                return;
            }
            if let Some(done) = self.checkpoint.take() {
                let _ = done.join();
            }
        }
        if self.log_len < self.options.max_bytes || self.layout.wal_prev().exists() {
            return;
        }
        if let Err(e) = self.switch_logs() {
            error!("cannot start a checkpoint: {e}; refusing all further writes");
            self.failed = true;
            return;
        }
        let layout = self.layout.clone();
        let store = Arc::clone(&self.store);
        let spawned = std::thread::Builder::new()
            .name("kvs-checkpoint".into())
            .spawn(move || {
                if let Err(e) = checkpoint(&layout, &store) {
                    // Nothing is lost: the logs still hold every write.
                    error!("checkpoint failed: {e}; the logs keep every write and the next start folds them in");
                }
            });
        match spawned {
            Ok(thread) => self.checkpoint = Some(thread),
            Err(e) => error!("cannot start the checkpoint thread: {e}"),
        }
    }

    /// Step 1 of a checkpoint: `wal.jsonl` becomes `wal.prev.jsonl` and a
    /// new, empty `wal.jsonl` takes the writes.
    fn switch_logs(&mut self) -> io::Result<()> {
        self.log.sync_data()?;
        self.unsynced = false;
        std::fs::rename(self.layout.wal(), self.layout.wal_prev())?;
        fault::crash_point("checkpoint:after-log-switch");
        self.log = open_log(&self.layout.wal())?;
        self.log_len = 0;
        info!(
            "checkpoint begun: {} is now {}",
            self.layout.wal().display(),
            self.layout.wal_prev().display()
        );
        Ok(())
    }

    /// Makes everything durable and waits for a running checkpoint.
    fn finish(&mut self) {
        if self.unsynced {
            self.sync();
        }
        if let Some(running) = self.checkpoint.take() {
            let _ = running.join();
        }
    }
}

/// Steps 2 and 3 of a checkpoint (see the module docs).
fn checkpoint(layout: &Layout, store: &Store) -> Result<(), CheckpointError> {
    let started = Instant::now();
    let pairs = store.fuzzy_copy();
    // The copy may hold writes that `--fsync periodic` has not synced yet.
    // Every one of them is in wal.jsonl already (records are appended
    // before they are applied), so syncing it now means the snapshot never
    // holds a write that a power cut could take out of the log: replay
    // still ends in a state the clients saw, not a mixture.
    File::open(layout.wal())
        .and_then(|log| log.sync_data())
        .map_err(|error| CheckpointError::Remove {
            path: layout.wal(),
            error,
        })?;
    fault::crash_point("checkpoint:after-copy");
    let saved = snapshot::write_atomic(&layout.snapshot(), pairs.iter())?;
    drop(pairs);
    fault::crash_point("checkpoint:after-snapshot");
    remove_logs(&[layout.wal_prev()])?;
    info!(
        "checkpoint done: saved {} keys ({} bytes) in {} ms",
        saved.records,
        saved.bytes,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Makes `pairs`, the whole current state (every logged write included),
/// the data file, then removes both logs. A crash between the two steps is
/// harmless: replaying the logs over a state that contains them changes
/// nothing (see the module docs). Used by the shutdown save, by a start
/// that finds an interrupted checkpoint, and by `kvs restore` before it
/// replaces the data.
pub fn fold_into_data_file<'a>(
    layout: &Layout,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<snapshot::WriteSummary, CheckpointError> {
    let saved = snapshot::write_atomic(&layout.snapshot(), pairs)?;
    fault::crash_point("fold:after-data-file");
    remove_logs(&[layout.wal_prev(), layout.wal()])?;
    Ok(saved)
}

/// Removes logs whose records the data file now holds, durably.
fn remove_logs(logs: &[PathBuf]) -> Result<(), CheckpointError> {
    let mut removed_any = None;
    for log in logs {
        match std::fs::remove_file(log) {
            Ok(()) => removed_any = Some(log),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(CheckpointError::Remove {
                    path: log.clone(),
                    error,
                });
            }
        }
    }
    if let Some(log) = removed_any {
        snapshot::sync_dir(log).map_err(|error| CheckpointError::Remove {
            path: log.clone(),
            error,
        })?;
    }
    Ok(())
}

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Save(#[from] snapshot::WriteError),
    #[error("cannot remove or sync {}: {error}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(text: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn replay_all_of(
        path: &Path,
        torn: TornTail,
    ) -> Result<(Vec<Op<'static>>, Replayed), ReadError> {
        let mut ops = Vec::new();
        let replayed = replay(path, torn, |op| ops.push(op.into_owned()))?;
        Ok((ops, replayed))
    }

    const GOOD: &str = "{\"op\":\"set\",\"key\":\"a\",\"value\":\"1\"}\n{\"op\":\"delete\",\"key\":\"a\"}\n{\"op\":\"clear\"}\n";

    #[test]
    fn records_round_trip() {
        for op in [
            Op::Set {
                key: "k".into(),
                value: "multi\nline \"quoted\" 🦀".into(),
            },
            Op::Delete { key: "k".into() },
            Op::Clear,
        ] {
            let line = serde_json::to_string(&op).unwrap();
            assert!(line.starts_with("{\"op\":"), "{line}");
            assert_eq!(parse_record(line.as_bytes()).unwrap(), op);
        }
    }

    #[test]
    fn a_torn_tail_is_dropped_and_truncated() {
        for tail in [
            &b"{\"op\":\"set\",\"key\":\"b\",\"va"[..],
            b"{\"op\":\"clear\"}",
            b"garbage\n",
        ] {
            let mut text = GOOD.as_bytes().to_vec();
            text.extend_from_slice(tail);
            let (_dir, path) = log_with(&text);
            let (ops, replayed) = replay_all_of(&path, TornTail::Skip).unwrap();
            assert_eq!(ops.len(), 3);
            assert!(replayed.torn);
            assert_eq!(replayed.valid_bytes, GOOD.len() as u64);
            assert_eq!(std::fs::read(&path).unwrap(), text, "Skip leaves the file");
            replay_all_of(&path, TornTail::Truncate).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), GOOD.as_bytes());
        }
    }

    #[test]
    fn a_bad_record_before_good_ones_is_corruption() {
        let text = format!("{GOOD}{{\"op\":\"bogus\"}}\n\n{GOOD}");
        let (_dir, path) = log_with(text.as_bytes());
        let err = replay_all_of(&path, TornTail::Truncate).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 4:"), "{msg}");
        assert!(msg.contains("whole records follow it"), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), text.as_bytes());
    }

    /// A log that a writer is still appending to: the first read returns
    /// what was there (ending in half a record), later reads return the
    /// rest of that record and more.
    struct Growing {
        parts: Vec<Vec<u8>>,
    }

    impl Read for Growing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.parts.is_empty() {
                return Ok(0);
            }
            let part = &mut self.parts[0];
            let n = part.len().min(buf.len());
            buf[..n].copy_from_slice(&part[..n]);
            part.drain(..n);
            if part.is_empty() {
                self.parts.remove(0);
            }
            Ok(n)
        }
    }

    #[test]
    fn a_record_being_appended_while_read_is_a_torn_tail_not_corruption() {
        let half = "{\"op\":\"set\",\"key\":\"b\",\"va";
        let first = format!("{GOOD}{half}");
        let rest = format!("lue\":\"2\"}}\n{GOOD}");
        let log = Growing {
            parts: vec![first.clone().into_bytes(), rest.into_bytes()],
        };
        let mut ops = 0;
        let replayed = read_lines(log, first.len() as u64, "wal.jsonl", &mut |line, _| {
            parse_record(line).map_err(LineError::Unparsable)?;
            ops += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(ops, 3);
        assert!(replayed.torn);
        assert_eq!(replayed.valid_bytes, GOOD.len() as u64);
    }

    #[test]
    fn invalid_keys_in_records_are_refused() {
        let text = "{\"op\":\"set\",\"key\":\"a b\",\"value\":\"1\"}\n{\"op\":\"clear\"}\n";
        let (_dir, path) = log_with(text.as_bytes());
        let err = replay_all_of(&path, TornTail::Skip).unwrap_err();
        assert!(
            err.to_string().contains("key contains invalid characters"),
            "{err}"
        );
    }
}
