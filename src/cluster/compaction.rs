//! Compaction: once a member's Raft log passes `--wal-max-bytes`, the
//! store is snapshotted and the log trimmed (SPEC §6).
//!
//! The loop starts a thread that copies the store while reads and writes go
//! on (each key as of some moment after the index it is labelled with,
//! which replaying the log after the label corrects; see `log_store`) and
//! writes it as a data file; the loop then switches to it through the log
//! store's commit point. The copy shares the store's pairs (see
//! `Store::fuzzy_copy`), so it costs a pointer a pair, not a second copy
//! of the data. This module owns only that sequence: it must never block
//! the loop on the copy or the write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::cluster::log_store::SnapshotSource;
use crate::cluster::node::Event;
use crate::cluster::raft_loop::{Runner, fatal};
use crate::storage::snapshot;

/// What a compaction thread wrote.
pub struct Compacted {
    pub(super) index: u64,
    term: u64,
    /// Snapshots installed when the compaction began: one installed since
    /// means the copy may mix the store before and after it.
    installs: u64,
    keys: u64,
    bytes: u64,
    started: Instant,
}

impl Runner {
    /// Starts a compaction once the log has grown past its limit: a
    /// thread copies the store (reads and writes go on) and writes it as
    /// the data file; the loop then switches to it (see `compacted`).
    pub(super) fn maybe_compact(&mut self) {
        let log = self.raw.store();
        if self.compacting
            || log.log_bytes() < self.max_log_bytes
            || self.applied <= log.snapshot_index()
            || self.compaction_retry.is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        let index = self.applied;
        let Ok(term) = raft::Storage::term(log, index) else {
            return;
        };
        let store = Arc::clone(&self.store);
        let target = self.shared.layout.snapshot_compact();
        let events = self.shared.events.clone();
        let installs = self.installs;
        let spawned = std::thread::Builder::new()
            .name("kvs-compaction".into())
            .spawn(move || {
                let started = Instant::now();
                let pairs = store.fuzzy_copy();
                crate::storage::fault::crash_point("compaction:after-copy");
                let event = match snapshot::write_atomic(&target, pairs.iter()) {
                    Ok(saved) => Event::Compacted(Compacted {
                        index,
                        term,
                        installs,
                        keys: saved.records,
                        bytes: saved.bytes,
                        started,
                    }),
                    Err(e) => Event::CompactionFailed(e.to_string()),
                };
                let _ = events.send(event);
            });
        match spawned {
            Ok(_) => {
                self.compacting = true;
                info!(
                    "compaction begun: the Raft log is {} bytes; snapshotting at index {index}",
                    log.log_bytes()
                );
            }
            Err(e) => {
                error!("cannot start a compaction thread: {e}");
                self.compaction_retry = Some(Instant::now() + Duration::from_secs(10));
            }
        }
    }

    /// Switches to the data file a compaction wrote and trims the log.
    pub(super) fn compacted(&mut self, done: Compacted) {
        self.compacting = false;
        let path = self.shared.layout.snapshot_compact();
        if done.installs != self.installs || done.index <= self.raw.store().snapshot_index() {
            // A leader's snapshot replaced the store during the copy.
            info!(
                "compaction at index {} dropped: a newer snapshot was installed meanwhile",
                done.index
            );
            let _ = std::fs::remove_file(path);
            return;
        }
        let before = self.raw.store().log_bytes();
        if let Err(e) = self.raw.mut_store().adopt_snapshot(
            &path,
            done.index,
            done.term,
            SnapshotSource::Compaction,
        ) {
            fatal(&format!("cannot switch to the compacted snapshot: {e}"));
        }
        crate::metrics::get().checkpoint_done(done.started.elapsed());
        info!(
            "compaction done: snapshot at index {} ({} keys, {} bytes) in {} ms; the Raft log went from {before} to {} bytes",
            done.index,
            done.keys,
            done.bytes,
            done.started.elapsed().as_millis(),
            self.raw.store().log_bytes()
        );
    }
}
