//! The replicated state machine: today's in-memory store, changed only by
//! committed log entries, applied in log order.
//!
//! Owns rebuilding the store at start (the snapshot file, then every entry
//! the log holds as committed) and applying one entry. It must never
//! decide what is committed (the engine does) or write a file.

use std::time::Instant;

use raft::eraftpb::Entry;
use tracing::info;

use crate::cluster::log_store::LogStore;
use crate::storage::datadir::Layout;
use crate::storage::snapshot::{self, ReadError};
use crate::storage::store::{self, Store};
use crate::storage::wal;

/// Loads `snapshot.jsonl` and applies the committed entries after it.
/// Returns the store and the index it has applied through.
pub fn recover(layout: &Layout, log: &LogStore) -> Result<(Store, u64), ReadError> {
    let started = Instant::now();
    let mut builder = store::Builder::new();
    let read = snapshot::read_file(&layout.snapshot(), |key, value| builder.push(key, value))?;
    let store = builder.build();
    let commit = log.hard_state().commit;
    let entries = log.entries_through(commit);
    for entry in entries {
        apply(&store, entry);
    }
    let applied = entries.last().map_or(log.snapshot_index(), |e| e.index);
    info!(
        "loaded {} keys ({} bytes) from {} and {} committed log entries (through index {applied}) in {} ms",
        store.len(),
        read.bytes,
        layout.snapshot().display(),
        entries.len(),
        started.elapsed().as_millis()
    );
    Ok((store, applied))
}

/// Applies one committed entry. The empty entry a new leader appends
/// changes nothing.
pub fn apply(store: &Store, entry: &Entry) {
    if entry.data.is_empty() {
        return;
    }
    // Every entry was checked when it was proposed, received or read from
    // disk, so one that does not parse here is a bug, not bad input.
    let op = wal::parse_record(&entry.data)
        .unwrap_or_else(|e| panic!("log entry {} was checked but is invalid: {e}", entry.index));
    op.apply(store);
}
