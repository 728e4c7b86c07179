//! Receiving a leader's snapshot (SPEC §6: a member too far behind gets
//! the leader's snapshot, then follows the log).
//!
//! The data comes first, in chunks of whole lines, into
//! `snapshot.incoming.jsonl`; then the engine's snapshot message, which
//! carries only a position. The data is loaded and checked before the
//! engine sees the message, so the engine never takes a snapshot whose
//! data is bad or missing; if it takes it, the loop installs it durably
//! (through the log store's commit point) and then in memory. The sending
//! side is `network`. This module must never write outside the incoming
//! file, except through the log store.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use raft::eraftpb::{Message, MessageType};
use tracing::info;

use crate::cluster::log_store::SnapshotSource;
use crate::cluster::node::{Event, Node, ReceiveError, Refused};
use crate::cluster::raft_loop::{Runner, fatal};
use crate::cluster::wire::{SnapshotChunk, WireError};
use crate::storage::snapshot;
use crate::storage::store::Builder;

/// A snapshot transfer under way into `snapshot.incoming.jsonl`.
pub(super) struct Incoming {
    from: u64,
    index: u64,
    /// Bytes written so far: where the next chunk must start.
    written: u64,
    /// Whether the last chunk arrived (and the file is synced).
    complete: bool,
}

impl Node {
    /// Takes one chunk of a snapshot's data (`POST /raft/snapshot-chunk`).
    /// Blocking: it writes and, at the last chunk, fsyncs.
    pub fn receive_chunk(&self, body: &[u8]) -> Result<(), ReceiveError> {
        let chunk: SnapshotChunk = serde_json::from_slice(body).map_err(WireError::from)?;
        let from = self
            .shared
            .members
            .node_of(&chunk.from)
            .ok_or_else(|| WireError::UnknownMember(chunk.from.clone()))?;
        if !self.shared.partition.allows(from) {
            return Err(ReceiveError::Partitioned);
        }
        let path = self.shared.layout.snapshot_incoming();
        let mut incoming = self
            .shared
            .incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut file = if chunk.offset == 0 {
            *incoming = Some(Incoming {
                from,
                index: chunk.index,
                written: 0,
                complete: false,
            });
            File::create(&path).map_err(|e| ReceiveError::Disk {
                path: path.clone(),
                error: e,
            })?
        } else {
            match incoming.as_ref() {
                Some(i)
                    if i.from == from
                        && i.index == chunk.index
                        && i.written == chunk.offset
                        && !i.complete => {}
                _ => {
                    return Err(ReceiveError::OutOfOrder(format!(
                        "offset {} of the snapshot at index {} from {}",
                        chunk.offset, chunk.index, chunk.from
                    )));
                }
            }
            OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| ReceiveError::Disk {
                    path: path.clone(),
                    error: e,
                })?
        };
        file.write_all(chunk.data.as_bytes())
            .map_err(|e| ReceiveError::Disk {
                path: path.clone(),
                error: e,
            })?;
        if chunk.last {
            file.sync_all().map_err(|e| ReceiveError::Disk {
                path: path.clone(),
                error: e,
            })?;
        }
        if let Some(i) = incoming.as_mut() {
            i.written += chunk.data.len() as u64;
            i.complete = chunk.last;
        }
        Ok(())
    }

    /// Takes a leader's snapshot message (`POST /raft/install-snapshot`)
    /// once its data has arrived: loads and checks the data, then hands
    /// both to the loop, which installs them if the engine accepts the
    /// snapshot. Blocking: it reads the whole data file.
    pub fn receive_snapshot(&self, body: &[u8]) -> Result<(), ReceiveError> {
        for message in self.decode(body)? {
            if message.get_msg_type() != MessageType::MsgSnapshot {
                self.shared
                    .events
                    .send(Event::Raft(vec![message]))
                    .map_err(|_| ReceiveError::ShuttingDown)?;
                continue;
            }
            let meta = message.get_snapshot().get_metadata();
            let (index, term) = (meta.index, meta.term);
            let layout = &self.shared.layout;
            let receipt = self.shared.receipts.fetch_add(1, Ordering::Relaxed);
            let path = layout.snapshot_received(index, term, receipt);
            {
                // Under the lock, so that no chunk of a next transfer can
                // land in the file once it is complete.
                let mut incoming = self
                    .shared
                    .incoming
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match incoming.take() {
                    Some(i) if i.from == message.from && i.index == index && i.complete => {}
                    _ => {
                        return Err(ReceiveError::OutOfOrder(format!(
                            "the snapshot at index {index} came before all of its data"
                        )));
                    }
                }
                std::fs::rename(layout.snapshot_incoming(), &path).map_err(|error| {
                    ReceiveError::Disk {
                        path: path.clone(),
                        error,
                    }
                })?;
            }
            let mut data = Builder::new();
            snapshot::read_file(&path, |key, value| data.push(key, value))
                .map_err(ReceiveError::BadSnapshot)?;
            let received = Received {
                index,
                term,
                path,
                data,
            };
            self.shared
                .events
                .send(Event::Snapshot {
                    message,
                    received: Box::new(received),
                })
                .map_err(|_| ReceiveError::ShuttingDown)?;
        }
        Ok(())
    }
}

/// A leader's snapshot received whole, its data loaded and checked,
/// waiting for the engine to take it (or not).
pub struct Received {
    pub(super) index: u64,
    pub(super) term: u64,
    /// Its own copy of the data file.
    pub(super) path: PathBuf,
    pub(super) data: Builder,
}

impl Runner {
    /// Steps a received snapshot's message into the engine; the `Ready`
    /// that follows says whether it took it.
    pub(super) fn offer_snapshot(&mut self, message: Message, received: Received) {
        self.received.push(received);
        // A stale snapshot is the engine's to ignore.
        let _ = self.raw.step(message);
    }

    /// Forgets the received snapshots the engine did not take.
    pub(super) fn drop_untaken_snapshots(&mut self) {
        for stale in self.received.drain(..) {
            let _ = std::fs::remove_file(&stale.path);
        }
    }

    /// Installs the leader's snapshot the engine just took: durably first,
    /// then in memory.
    pub(super) fn install_snapshot(&mut self, index: u64, term: u64) {
        let Some(at) = self
            .received
            .iter()
            .position(|r| r.index == index && r.term == term)
        else {
            fatal("the engine took a snapshot whose data never arrived");
        };
        let Received { path, data, .. } = self.received.swap_remove(at);
        let started = Instant::now();
        if let Err(e) =
            self.raw
                .mut_store()
                .adopt_snapshot(&path, index, term, SnapshotSource::Leader)
        {
            fatal(&format!("cannot install the leader's snapshot: {e}"));
        }
        data.replace(&self.store);
        self.applied = index;
        // Writes proposed here at indexes the snapshot covers are never
        // applied one by one: whether they took effect is not known here.
        let rest = self.writes.split_off(&(index + 1));
        for (_, (_, done)) in std::mem::replace(&mut self.writes, rest) {
            let _ = done.send(Err(Refused::Unknown(
                "leadership changed before the write was committed",
            )));
        }
        self.installs += 1;
        info!(
            "installed the leader's snapshot at index {index} ({} keys) in {} ms",
            self.store.len(),
            started.elapsed().as_millis()
        );
    }
}
