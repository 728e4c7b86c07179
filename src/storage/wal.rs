//! The write-ahead log: every write is appended to `wal.jsonl` and made
//! durable before it is applied to the store and acknowledged.
//!
//! Owns the log's format, the one writer thread that appends, syncs and
//! applies in log order (so memory always equals snapshot + log replay),
//! recovery (dropping a torn last record), checkpoints, and healing after
//! a disk error. It must never block a tokio worker thread: requests reach
//! the writer through a channel and wait for its answer asynchronously;
//! and it must never acknowledge a write that is not durable, nor append
//! again to a file whose write or fsync failed.
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
//!    after step 1), sorts it and replaces `snapshot.jsonl` atomically.
//!    The copy shares the pairs with the store, which never changes a pair
//!    in place (a write puts a new one in its slot), so it holds each key's
//!    value as of the moment its shard was copied, for a pointer a pair;
//! 3. it removes `wal.prev.jsonl` and syncs the directory.
//!
//! A crash before 2 completes leaves the old snapshot and both logs; after
//! 2, the new snapshot and both logs (replaying `wal.prev.jsonl` again is
//! harmless); after 3, the new snapshot and `wal.jsonl`, which it needs in
//! full (see above). At shutdown the store is saved whole and both logs are
//! removed afterwards; at start, a leftover `wal.prev.jsonl` is folded in
//! before serving.
//!
//! A checkpoint that fails (at step 1's rename, or in step 2 or 3) changes
//! nothing a replay depends on, and is tried again with backoff (100 ms,
//! doubling up to 5 s) while writes go on; no new checkpoint begins before
//! it succeeds (`wal.jsonl` just grows meanwhile). Only one background
//! thread, a checkpoint or a heal, writes the data file at a time.
//!
//! # When the disk fails
//!
//! A failed append or fsync of the log suspends writes. The batch it was
//! writing is answered 503 and never applied, so memory still holds
//! exactly the acknowledged writes. The failed file is never appended to
//! or trusted again: after a failed fsync the kernel may have dropped its
//! dirty pages and reports that only once. Whatever part of the refused
//! batch reached it is cut off at once (the file is truncated to the
//! length of its acknowledged records), since a restart must never replay
//! a write that was refused. Then a heal, retried with backoff (100 ms,
//! doubling up to 5 s) until it succeeds, while writes get 503 and reads
//! go on: (a) the store is written as the data file (temp file, fsync,
//! rename, directory fsync); (b) `wal.prev.jsonl` and `wal.jsonl` are
//! removed and the directory synced; (c) a new, empty `wal.jsonl` is
//! created and synced, with its directory. Only then are writes taken
//! again. A crash (SIGKILL, power cut) at any moment of this leaves:
//!
//! - before (a)'s rename: the old data file and the logs. Every
//!   acknowledged write is in them (with `--fsync always`, each was synced
//!   before its 200; the failure only concerned the refused batch, which
//!   the cut removed), so recovery is the usual one.
//! - after (a)'s rename, before (b) is done: the new data file, which is
//!   the state at the end of both logs, with both logs or only
//!   `wal.jsonl`. Replaying them over it changes nothing (see above), and
//!   since the cut took the refused records off, replay cannot bring back
//!   a write that was refused, nor undo a delete.
//! - after (b), before (c): the new data file alone, which is the whole
//!   state; a missing log reads as empty.
//! - after (c): the new data file and an empty log; writes resumed, and
//!   every later write is in the new log.
//!
//! Nothing arriving during the heal is acknowledged, so nothing is lost.
//! With `--fsync periodic`, a failed sync may have lost acknowledged
//! records from the log's pages; they are in memory, and step (a) saves
//! them. If even the cut fails, the heal waits and tries the cut again
//! first: until it succeeds, a crash could replay the refused batch (never
//! lose an acknowledged write), and it is logged as such.

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

/// Why a write was not acknowledged. Either way it was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WriteError {
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The log could not be appended to or synced (the OS error); writes
    /// resume by themselves once a new data file and log are durable.
    #[error("write not applied: disk error: {0}; retry later")]
    DiskFailed(Arc<str>),
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
    /// The background job (a checkpoint or a heal) has ended: join it.
    JobEnded,
}

/// A write waiting for its batch to be logged, and where its answer goes.
type Waiting = (
    Op<'static>,
    tokio::sync::oneshot::Sender<Result<(), WriteError>>,
);

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
        let prev_exists = layout.wal_prev().exists();
        let (tx, rx) = mpsc::channel();
        let wake = tx.clone();
        let thread = std::thread::Builder::new()
            .name("kvs-wal".into())
            .spawn(move || {
                let mut state = WriterState {
                    layout,
                    store,
                    options,
                    wake,
                    log: Some(log),
                    log_len,
                    unsynced: false,
                    unsynced_writes: 0,
                    last_sync: Instant::now(),
                    job: None,
                    prev_exists,
                    checkpoint_retry: None,
                    suspended: None,
                };
                state.run(&rx);
            })?;
        Ok((Wal { tx: tx.clone() }, Writer { tx, thread }))
    }

    /// Stops the writer once everything submitted so far is durable and
    /// applied (or refused), and waits for a running checkpoint or heal.
    /// Later submissions fail with `ShuttingDown`.
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

/// Appends a batch to the log.
fn append(log: &mut File, buf: &[u8]) -> io::Result<()> {
    if let Err(error) = fault::io_point("wal-append") {
        // As a full disk fails: part of the batch lands, then the error.
        let _ = log.write_all(&buf[..buf.len() / 2]);
        return Err(error);
    }
    log.write_all(buf)
}

/// Makes the log's appended records durable: `writes` of them since the
/// last fsync, which the metrics count with the time it took.
fn sync_log(log: &File, writes: usize) -> io::Result<()> {
    let started = Instant::now();
    fault::io_point("wal-fsync")?;
    log.sync_data()?;
    crate::metrics::get().fsynced(started.elapsed(), writes);
    Ok(())
}

/// When a heal or a checkpoint that failed is tried again: the first retry
/// after `FIRST_RETRY`, each further one after twice the wait before, up
/// to `MAX_RETRY`, so a disk that stays full is not hammered and one that
/// recovers is used again within seconds.
#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    wait: Duration,
}

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

impl Retry {
    fn first() -> Retry {
        Retry {
            at: Instant::now() + FIRST_RETRY,
            wait: FIRST_RETRY,
        }
    }

    /// The retry after this one failed too.
    fn next(self) -> Retry {
        let wait = (self.wait * 2).min(MAX_RETRY);
        Retry {
            at: Instant::now() + wait,
            wait,
        }
    }

    /// The retry after a failure that may follow earlier ones.
    fn after(previous: Option<Retry>) -> Retry {
        previous.map_or_else(Retry::first, Retry::next)
    }
}

/// Writes are suspended: the log failed, and a heal has not succeeded yet.
struct Suspended {
    /// The OS error that suspended them, as refused writes are told.
    reason: Arc<str>,
    since: Instant,
    retry: Retry,
    /// Heals tried so far.
    attempts: u32,
    /// The failed log and the length of its acknowledged records, while
    /// records of the refused batch may still sit after them.
    uncut: Option<(File, u64)>,
}

/// What a background job did.
enum JobOutcome {
    /// Steps 2 and 3 of a checkpoint.
    Checkpoint(Result<(), CheckpointError>),
    /// A heal: the new log, and what was saved.
    Heal(Result<(File, snapshot::WriteSummary), HealError>),
}

/// Why a heal failed; it is tried again.
#[derive(Debug, Error)]
enum HealError {
    #[error(transparent)]
    Fold(#[from] CheckpointError),
    #[error("cannot create {}: {error}", path.display())]
    NewLog {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
}

struct WriterState {
    layout: Layout,
    store: Arc<Store>,
    options: Options,
    /// Lets a background job wake the writer when it ends.
    wake: mpsc::Sender<Message>,
    /// `wal.jsonl`, open for appending; `None` while writes are suspended.
    log: Option<File>,
    /// Its length: where the next batch goes, and what a failed batch is
    /// cut back to.
    log_len: u64,
    /// Whether records were appended since the last fsync (`periodic`).
    unsynced: bool,
    /// Writes appended since the last fsync (`periodic`): the batch the
    /// next one makes durable, for the metrics.
    unsynced_writes: usize,
    last_sync: Instant,
    /// The one background thread that writes the data file, a checkpoint
    /// or a heal, while one runs: never two at once, since both write
    /// through the same temp file.
    job: Option<JoinHandle<JobOutcome>>,
    /// Whether `wal.prev.jsonl` exists: a checkpoint has switched logs and
    /// not yet folded the old one into the data file.
    prev_exists: bool,
    /// When to try again a checkpoint that failed.
    checkpoint_retry: Option<Retry>,
    /// Set from a failed append or fsync until a heal succeeds.
    suspended: Option<Suspended>,
}

impl WriterState {
    fn run(&mut self, rx: &mpsc::Receiver<Message>) {
        let mut batch: Vec<Waiting> = Vec::new();
        let mut buf = Vec::new();
        let metrics = crate::metrics::get();
        loop {
            // Read off the writer's own count once a round, whatever
            // changed it (a batch, a checkpoint's switch, a heal).
            metrics.set_log_bytes(self.log_len);
            let mut stop = false;
            match self.next_message(rx) {
                Some(Message::Write { op, done }) => batch.push((op, done)),
                Some(Message::Stop) => stop = true,
                Some(Message::JobEnded) => self.job_ended(),
                None => {}
            }
            self.sync_if_due();
            if !batch.is_empty() {
                // Group commit: everything that queued while the last
                // fsync ran goes into this one append and this one fsync.
                while !stop && batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Message::Write { op, done }) => batch.push((op, done)),
                        Ok(Message::Stop) => stop = true,
                        Ok(Message::JobEnded) => self.job_ended(),
                        Err(_) => break,
                    }
                }
                self.commit(&mut batch, &mut buf);
            }
            if stop {
                self.finish();
                return;
            }
            self.start_due_work();
        }
    }

    /// Waits for the next message, or until something is due: a periodic
    /// sync, a heal or a checkpoint retry. `None` means "woke up, nothing
    /// arrived".
    fn next_message(&self, rx: &mpsc::Receiver<Message>) -> Option<Message> {
        let Some(due) = self.next_due() else {
            return Some(rx.recv().unwrap_or(Message::Stop));
        };
        match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(message) => Some(message),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Message::Stop),
        }
    }

    /// The next moment the writer has something to do unasked.
    fn next_due(&self) -> Option<Instant> {
        let sync = self.unsynced.then(|| self.last_sync + PERIODIC_INTERVAL);
        // A retry waits for the running job, which wakes the writer.
        let retry = match (&self.job, &self.suspended) {
            (Some(_), _) => None,
            (None, Some(suspended)) => Some(suspended.retry.at),
            (None, None) => self.checkpoint_retry.map(|retry| retry.at),
        };
        [sync, retry].into_iter().flatten().min()
    }

    /// The refusal every write gets while writes are suspended.
    fn refusal(&self) -> WriteError {
        let reason = self.suspended.as_ref().map_or_else(
            || Arc::from("the write-ahead log is not open"),
            |suspended| Arc::clone(&suspended.reason),
        );
        WriteError::DiskFailed(reason)
    }

    fn commit(&mut self, batch: &mut Vec<Waiting>, buf: &mut Vec<u8>) {
        let fsync = self.options.fsync;
        let Some(log) = self.log.as_mut() else {
            let refusal = self.refusal();
            for (_, done) in batch.drain(..) {
                let _ = done.send(Err(refusal.clone()));
            }
            return;
        };
        buf.clear();
        let len_before = self.log_len;
        for (op, _) in batch.iter() {
            serde_json::to_writer(&mut *buf, op).expect("a record always serializes");
            buf.push(b'\n');
        }
        let durable = append(log, buf)
            .map_err(|e| ("append to", e))
            .and_then(|()| match fsync {
                FsyncPolicy::Always => sync_log(log, batch.len()).map_err(|e| ("sync", e)),
                FsyncPolicy::Periodic => Ok(()),
            });
        if let Err((what, e)) = durable {
            // Not applied, not acknowledged: memory keeps holding only
            // acknowledged writes, which is what the heal saves.
            self.suspend(what, e, Some(len_before));
            let refusal = self.refusal();
            for (_, done) in batch.drain(..) {
                let _ = done.send(Err(refusal.clone()));
            }
            return;
        }
        self.log_len += buf.len() as u64;
        match fsync {
            FsyncPolicy::Always => self.last_sync = Instant::now(),
            FsyncPolicy::Periodic => {
                self.unsynced = true;
                self.unsynced_writes += batch.len();
            }
        }
        fault::crash_point("wal:after-append");
        // Applied in log order, after the append: readers see a write only
        // once it is logged, and memory never disagrees with the log.
        for (op, done) in batch.drain(..) {
            op.apply(&self.store);
            let _ = done.send(Ok(()));
        }
    }

    fn sync_if_due(&mut self) {
        if self.unsynced && Instant::now() >= self.last_sync + PERIODIC_INTERVAL {
            self.sync();
        }
    }

    fn sync(&mut self) {
        self.unsynced = false;
        self.last_sync = Instant::now();
        let writes = std::mem::take(&mut self.unsynced_writes);
        let Some(log) = &self.log else {
            return;
        };
        if let Err(e) = sync_log(log, writes) {
            // Every record in the log was acknowledged, so none is cut;
            // those the failed sync may have lost are in memory, and the
            // heal saves them.
            self.suspend("sync", e, None);
        }
    }

    /// Stops taking writes after the log failed to `what` (append to,
    /// sync, create): the failed file is dropped for good, records of the
    /// refused batch (from `refused_from` on) are cut off it, and a heal
    /// is scheduled (see "When the disk fails" in the module docs).
    fn suspend(&mut self, what: &str, error: io::Error, refused_from: Option<u64>) {
        crate::metrics::get().disk_errors.inc();
        error!(
            "writes suspended: cannot {what} {}: {error}; writes get 503 until a new data file and log are written (retried with backoff, 100 ms doubling up to 5 s); reads go on",
            self.layout.wal().display()
        );
        self.unsynced = false;
        self.unsynced_writes = 0;
        let failed = self.log.take();
        let uncut = match (failed, refused_from) {
            (Some(file), Some(len)) => cut_refused(file, len, &self.layout.wal()),
            _ => None,
        };
        self.suspended = Some(Suspended {
            reason: Arc::from(error.to_string()),
            since: Instant::now(),
            retry: Retry::first(),
            attempts: 0,
            uncut,
        });
    }

    /// Starts whatever is due and can start: a heal while writes are
    /// suspended, else a checkpoint (new, or the retry of a failed one).
    fn start_due_work(&mut self) {
        if self.job.is_some() {
            return;
        }
        let now = Instant::now();
        if let Some(suspended) = &self.suspended {
            if now >= suspended.retry.at {
                self.start_heal();
            }
            return;
        }
        match self.checkpoint_retry {
            Some(retry) if now < retry.at => {}
            None if self.log_len < self.options.max_bytes && !self.prev_exists => {}
            _ => self.start_checkpoint(),
        }
    }

    fn start_heal(&mut self) {
        let wal = self.layout.wal();
        let Some(suspended) = self.suspended.as_mut() else {
            return;
        };
        suspended.attempts += 1;
        if let Some((file, len)) = suspended.uncut.take() {
            // The heal must not begin while a refused write could still be
            // replayed: the data file it writes would make the failed log
            // look like old records to replay over it.
            suspended.uncut = cut_refused(file, len, &wal);
            if suspended.uncut.is_some() {
                suspended.retry = suspended.retry.next();
                return;
            }
        }
        let started = self.spawn_job("kvs-heal", |layout, store| {
            JobOutcome::Heal(heal(layout, store))
        });
        if !started && let Some(suspended) = self.suspended.as_mut() {
            suspended.retry = suspended.retry.next();
        }
    }

    /// Step 1 of a checkpoint unless it is done already (the retry of a
    /// failed fold), then steps 2 and 3 in the background.
    fn start_checkpoint(&mut self) {
        if !self.prev_exists {
            let Some(log) = &self.log else {
                return;
            };
            if let Err(e) = sync_log(log, self.unsynced_writes) {
                self.suspend("sync", e, None);
                return;
            }
            self.unsynced = false;
            self.unsynced_writes = 0;
            if let Err(e) = std::fs::rename(self.layout.wal(), self.layout.wal_prev()) {
                // Nothing changed: the log goes on, and so do writes.
                self.checkpoint_failed(
                    &format!(
                        "cannot rename {} to {}: {e}",
                        self.layout.wal().display(),
                        self.layout.wal_prev().display()
                    ),
                    true,
                );
                return;
            }
            self.prev_exists = true;
            fault::crash_point("checkpoint:after-log-switch");
            match open_log(&self.layout.wal()) {
                Ok(log) => {
                    self.log = Some(log);
                    self.log_len = 0;
                }
                Err(e) => {
                    // The old log is wal.prev.jsonl now; with no log to
                    // append to, writes wait for the heal, which also
                    // does this checkpoint's work.
                    self.suspend("create", e, None);
                    return;
                }
            }
            info!(
                "checkpoint begun: {} is now {}",
                self.layout.wal().display(),
                self.layout.wal_prev().display()
            );
        }
        if !self.spawn_job("kvs-checkpoint", |layout, store| {
            JobOutcome::Checkpoint(checkpoint(layout, store))
        }) {
            self.checkpoint_failed("the checkpoint thread could not start", false);
        }
    }

    /// `disk` says whether the disk failed (a rename, a write, an fsync,
    /// a removal) rather than, say, a thread that could not start.
    fn checkpoint_failed(&mut self, reason: &str, disk: bool) {
        let metrics = crate::metrics::get();
        metrics.checkpoint_failed();
        if disk {
            metrics.disk_errors.inc();
        }
        let retry = Retry::after(self.checkpoint_retry);
        error!(
            "checkpoint failed: {reason}; retrying in {} ms (the logs keep every write meanwhile)",
            retry.wait.as_millis()
        );
        self.checkpoint_retry = Some(retry);
    }

    /// Runs `job` on a thread of its own, which wakes the writer when it
    /// ends. False if the thread could not start.
    fn spawn_job(
        &mut self,
        name: &str,
        job: impl FnOnce(&Layout, &Store) -> JobOutcome + Send + 'static,
    ) -> bool {
        let layout = self.layout.clone();
        let store = Arc::clone(&self.store);
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let outcome = job(&layout, &store);
                let _ = wake.send(Message::JobEnded);
                outcome
            });
        match spawned {
            Ok(thread) => {
                self.job = Some(thread);
                true
            }
            Err(e) => {
                error!("cannot start the {name} thread: {e}");
                false
            }
        }
    }

    fn job_ended(&mut self) {
        let Some(thread) = self.job.take() else {
            return;
        };
        match thread.join() {
            Ok(JobOutcome::Checkpoint(Ok(()))) => {
                self.prev_exists = false;
                self.checkpoint_retry = None;
            }
            Ok(JobOutcome::Checkpoint(Err(e))) => self.checkpoint_failed(&e.to_string(), true),
            Ok(JobOutcome::Heal(result)) => self.heal_ended(result),
            Err(_) => {
                error!("a background thread of the write-ahead log panicked; trying again");
                match self.suspended.as_mut() {
                    Some(suspended) => suspended.retry = suspended.retry.next(),
                    None => self.checkpoint_retry = Some(Retry::after(self.checkpoint_retry)),
                }
            }
        }
    }

    fn heal_ended(&mut self, result: Result<(File, snapshot::WriteSummary), HealError>) {
        let Some(suspended) = self.suspended.as_mut() else {
            return;
        };
        match result {
            Ok((log, saved)) => {
                info!(
                    "writes resumed: saved {} keys ({} bytes) to {} and started a new, empty {}, {} ms after the disk error ({} attempts)",
                    saved.records,
                    saved.bytes,
                    self.layout.snapshot().display(),
                    self.layout.wal().display(),
                    suspended.since.elapsed().as_millis(),
                    suspended.attempts
                );
                self.suspended = None;
                self.log = Some(log);
                self.log_len = 0;
                self.unsynced = false;
                self.unsynced_writes = 0;
                self.last_sync = Instant::now();
                // The heal folded wal.prev.jsonl in too.
                self.prev_exists = false;
                self.checkpoint_retry = None;
            }
            Err(e) => {
                crate::metrics::get().disk_errors.inc();
                suspended.retry = suspended.retry.next();
                warn!(
                    "writes still suspended: {e}; retrying in {} ms",
                    suspended.retry.wait.as_millis()
                );
            }
        }
    }

    /// Makes everything durable and waits for a running checkpoint or heal.
    fn finish(&mut self) {
        if self.unsynced {
            self.sync();
        }
        if let Some(running) = self.job.take() {
            let _ = running.join();
        }
    }
}

/// Cuts the refused records (from `len` on) off a failed log, so that no
/// replay can ever apply a write that was answered 503. The file is never
/// appended to again either way. Gives the file back if the cut failed.
fn cut_refused(file: File, len: u64, path: &Path) -> Option<(File, u64)> {
    match file.set_len(len) {
        Ok(()) => {
            // Best effort: any later reader (a restart after SIGKILL
            // included) sees the cut at once; the sync only helps it
            // survive a power cut, and the heal removes the file anyway.
            let _ = file.sync_all();
            None
        }
        Err(e) => {
            warn!(
                "cannot cut the refused writes off {}: {e}; the heal waits until it can",
                path.display()
            );
            Some((file, len))
        }
    }
}

/// Makes the store, which holds exactly the acknowledged writes, the data
/// file, removes both logs, and starts a new, empty `wal.jsonl`; writes
/// resume once this returns (see "When the disk fails" in the module
/// docs). The writer refuses every write meanwhile, so the store does not
/// change under the view, and reads go on beside it.
fn heal(layout: &Layout, store: &Store) -> Result<(File, snapshot::WriteSummary), HealError> {
    let saved = fold_into_data_file(layout, store.view().sorted())?;
    fault::crash_point("heal:after-fold");
    let log = open_log(&layout.wal()).map_err(|error| HealError::NewLog {
        path: layout.wal(),
        error,
    })?;
    Ok((log, saved))
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
    crate::metrics::get().checkpoint_done(started.elapsed());
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
    fn retries_back_off_from_100_ms_doubling_up_to_5_s() {
        let mut retry = Retry::after(None);
        let mut waits = vec![retry.wait.as_millis()];
        for _ in 0..8 {
            retry = Retry::after(Some(retry));
            waits.push(retry.wait.as_millis());
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert!(retry.at > Instant::now() + Duration::from_secs(4));
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
