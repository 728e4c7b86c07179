//! The loop that drives raft-rs, on a thread of its own.
//!
//! It owns the engine and everything it touches: it ticks the clock, steps
//! messages from peers, proposes writes, starts read-index rounds, and
//! handles each `Ready` in the order raft-rs prescribes (send what needs
//! no persistence, apply what is committed, persist entries and term/vote
//! with one fsync, then send what needed them). Because the loop is the
//! only writer of the Raft log and of the store, every write and fsync
//! happens on this thread, never on a tokio worker. It must never
//! implement Raft itself: elections, replication, commit and check-quorum
//! are the engine's.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{Entry, Message, MessageType};
use raft::{RawNode, ReadOnlyOption, StateRole};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::cluster::log_store::LogStore;
use crate::cluster::network::Network;
use crate::cluster::node::{Answer, Event, Refused, Role, Shared, State};
use crate::cluster::{logger, state_machine};
use crate::storage::store::Store;

/// One engine tick. Heartbeats go every 2 ticks (100 ms); the election
/// timeout is 10 ticks (500 ms), randomized by the engine up to 20 ticks
/// (1 s); check-quorum looks back one election timeout (SPEC §6).
const TICK: Duration = Duration::from_millis(50);
const HEARTBEAT_TICKS: usize = 2;
const ELECTION_TICKS: usize = 10;

/// The most events the loop takes before handling a `Ready`: bounds how
/// long a flood of requests can hold back persisting and sending.
const MAX_EVENTS: usize = 4096;

/// The longest a hand-off holds requests: past an election timeout the
/// engine has abandoned the transfer anyway.
const HOLD_LIMIT: Duration = Duration::from_secs(1);

/// What the loop is built from.
pub(super) struct Parts {
    pub log: LogStore,
    /// The index the store has applied through.
    pub applied: u64,
    pub shared: Arc<Shared>,
    pub inbox: mpsc::Receiver<Event>,
    pub store: Arc<Store>,
    pub network: Network,
    pub max_log_bytes: u64,
    /// What the handles were first shown.
    pub state: State,
}

/// Starts the engine on `parts.log` and its loop on a new thread.
pub(super) fn spawn(parts: Parts) -> io::Result<JoinHandle<()>> {
    let Parts {
        log,
        applied,
        shared,
        inbox,
        store,
        network,
        max_log_bytes,
        state,
    } = parts;
    let config = raft::Config {
        id: shared.members.my_node(),
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::Safe,
        batch_append: true,
        ..Default::default()
    };
    let raw = RawNode::new(&config, log, &logger::logger())
        .map_err(|e| io::Error::other(format!("the Raft engine refused to start: {e}")))?;
    let runner = Runner {
        raw,
        inbox,
        shared,
        store,
        network,
        writes: BTreeMap::new(),
        proposals: Vec::new(),
        reads_waiting: Vec::new(),
        reads_in_flight: HashMap::new(),
        reads_confirmed: Vec::new(),
        next_read: 1,
        applied,
        published: state,
        max_log_bytes,
        compacting: false,
        compaction_retry: None,
        installs: 0,
        received: Vec::new(),
        hand_off: None,
        holding_until: None,
    };
    std::thread::Builder::new()
        .name("kvs-raft".into())
        .spawn(move || {
            // A panic here would leave the server answering requests
            // that nothing will ever settle: stop the member instead.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.run()));
            if ran.is_err() {
                fatal("the Raft loop panicked");
            }
        })
}

/// The loop's state.
pub(super) struct Runner {
    pub(super) raw: RawNode<LogStore>,
    pub(super) inbox: mpsc::Receiver<Event>,
    pub(super) shared: Arc<Shared>,
    pub(super) store: Arc<Store>,
    pub(super) network: Network,
    /// Proposed writes waiting for their entry to be applied, by log
    /// index, with the term they were proposed in: an entry of another
    /// term at that index means the write was lost with a leadership change.
    pub(super) writes: BTreeMap<u64, (u64, Answer)>,
    /// Writes that arrived since the last proposal, proposed together.
    pub(super) proposals: Vec<(Bytes, Answer)>,
    /// Reads that arrived since the last read-index round began.
    pub(super) reads_waiting: Vec<Answer>,
    /// Read-index rounds under way, by the number they were started with.
    pub(super) reads_in_flight: HashMap<u64, Vec<Answer>>,
    /// Rounds a quorum confirmed, waiting for the store to apply through
    /// their index.
    pub(super) reads_confirmed: Vec<(u64, Vec<Answer>)>,
    pub(super) next_read: u64,
    /// The index the store has applied through.
    pub(super) applied: u64,
    /// What the handles were last shown.
    pub(super) published: State,
    pub(super) max_log_bytes: u64,
    /// Whether a compaction thread is running.
    pub(super) compacting: bool,
    /// When to try again after a failed compaction.
    pub(super) compaction_retry: Option<Instant>,
    /// How many leader snapshots were installed.
    pub(super) installs: u64,
    /// Leaders' snapshots stepped into the engine, with their data, until
    /// the engine's `Ready` says whether it took one.
    pub(super) received: Vec<crate::cluster::transfer::Received>,
    /// Who waits for this member to stop leading.
    pub(super) hand_off: Option<oneshot::Sender<()>>,
    /// Until when requests are held during a hand-off (see `State`).
    pub(super) holding_until: Option<Instant>,
}

impl Runner {
    fn run(mut self) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let mut stop = false;
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(event) => {
                    stop |= self.handle(event);
                    for _ in 0..MAX_EVENTS {
                        match self.inbox.try_recv() {
                            Ok(event) => stop |= self.handle(event),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick += TICK;
                if next_tick < now {
                    // The loop fell behind (a long fsync): skip the missed
                    // ticks rather than fire them in a burst.
                    next_tick = now + TICK;
                }
            }
            self.propose();
            self.start_read_round();
            self.on_ready();
            // A snapshot the engine did not take in that `Ready` was stale.
            self.drop_untaken_snapshots();
            self.publish();
            self.maybe_compact();
            if stop {
                self.finish();
                return;
            }
        }
    }

    /// Takes one event; says whether it asks the loop to stop.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Propose { data, done } => self.proposals.push((data, done)),
            Event::Read { done } => self.reads_waiting.push(done),
            Event::Raft(messages) => {
                for message in messages {
                    self.check_not_forgotten(&message);
                    // A stale or misdirected message is the engine's to
                    // ignore; it says so in its own log.
                    let _ = self.raw.step(message);
                }
            }
            Event::Unreachable(node) => self.raw.report_unreachable(node),
            Event::SnapshotStatus(node, status) => self.raw.report_snapshot(node, status),
            Event::Snapshot { message, received } => self.offer_snapshot(message, *received),
            Event::Compacted(done) => self.compacted(done),
            Event::CompactionFailed(e) => {
                error!("compaction failed: {e}; the Raft log keeps every entry, retrying in 10 s");
                crate::metrics::get().checkpoint_failed();
                self.compacting = false;
                self.compaction_retry = Some(Instant::now() + Duration::from_secs(10));
            }
            Event::HandOff(done) => self.hand_off(done),
            Event::Stop => return true,
        }
        false
    }

    /// A leader only tells a member that entries it has acknowledged are
    /// committed. A commit index past the end of this member's log means
    /// it acknowledged entries it no longer has: its directory was lost
    /// or replaced while the cluster went on. It must not take part with
    /// a log that forgot what it promised (nor with a vote it may have
    /// forgotten), so it stops with an error that says so.
    fn check_not_forgotten(&self, message: &Message) {
        let raft = &self.raw.raft;
        // Only a leader of this term or a later one speaks for the
        // cluster; an older one's message is the engine's to ignore.
        if message.get_msg_type() == MessageType::MsgHeartbeat
            && message.term >= raft.term
            && message.commit > raft.raft_log.last_index()
        {
            fatal(&format!(
                "leader {} says index {} is committed here but this member's Raft log ends at {}, so its data directory lost what it had acknowledged; restore the directory from a backup or recreate the cluster",
                self.shared.members.id_of(message.from).unwrap_or("?"),
                message.commit,
                raft.raft_log.last_index()
            ));
        }
    }

    /// Starts a leadership transfer to the follower with the longest
    /// matching log; raft-rs sends it the rest of the log, then tells it
    /// to campaign at once.
    fn hand_off(&mut self, done: oneshot::Sender<()>) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            let _ = done.send(());
            return;
        }
        let me = raft.id;
        let best = raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .max_by_key(|(id, progress)| (progress.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id);
        let Some(to) = best else {
            let _ = done.send(());
            return;
        };
        info!(
            "shutting down: handing leadership to {}",
            self.shared.members.id_of(to).unwrap_or("?")
        );
        self.raw.transfer_leader(to);
        self.hand_off = Some(done);
        self.holding_until = Some(Instant::now() + HOLD_LIMIT);
    }

    /// Whether requests are held for a hand-off: from its start until this
    /// member knows the new leader (or the hold has lasted too long).
    fn holding(&mut self) -> bool {
        let raft = &self.raw.raft;
        let unsettled = raft.state == StateRole::Leader || raft.leader_id == raft::INVALID_ID;
        match self.holding_until {
            Some(until) if unsettled && Instant::now() < until => true,
            _ => {
                self.holding_until = None;
                false
            }
        }
    }

    fn not_leader(&self) -> Refused {
        let leader = self.raw.raft.leader_id;
        Refused::NotLeader(self.shared.members.id_of(leader).map(str::to_owned))
    }

    /// Proposes every write that arrived since the last call, as one
    /// message: they share one append and one fsync.
    fn propose(&mut self) {
        if self.proposals.is_empty() {
            return;
        }
        if self.holding() {
            // Leadership is being handed over: hold writes until it has
            // gone, then send them to the new leader, rather than refuse.
            return;
        }
        let proposals = std::mem::take(&mut self.proposals);
        if self.raw.raft.state != StateRole::Leader {
            let refusal = self.not_leader();
            for (_, done) in proposals {
                let _ = done.send(Err(refusal.clone()));
            }
            return;
        }
        let count = proposals.len() as u64;
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgPropose);
        message.from = self.raw.raft.id;
        let mut entries = Vec::with_capacity(proposals.len());
        let mut waiting = Vec::with_capacity(proposals.len());
        for (data, done) in proposals {
            entries.push(Entry {
                data,
                ..Default::default()
            });
            waiting.push(done);
        }
        message.set_entries(entries.into());
        match self.raw.step(message) {
            Ok(()) => {
                let term = self.raw.raft.term;
                let first = self.raw.raft.raft_log.last_index() + 1 - count;
                for (i, done) in waiting.into_iter().enumerate() {
                    // An older write waiting at this index lost its entry
                    // when this member's log was cut back.
                    if let Some((_, lost)) = self.writes.insert(first + i as u64, (term, done)) {
                        let _ = lost.send(Err(Refused::Unknown(
                            "leadership changed before the write was committed",
                        )));
                    }
                }
            }
            Err(e) => {
                warn!("the engine dropped {count} proposal(s): {e}");
                for done in waiting {
                    let _ = done.send(Err(Refused::NotLeader(None)));
                }
            }
        }
    }

    /// Starts one read-index round for every read waiting, once this
    /// leader has committed an entry of its own term (raft-rs drops a
    /// read index asked for before that).
    fn start_read_round(&mut self) {
        if self.reads_waiting.is_empty() {
            return;
        }
        if self.raw.raft.state != StateRole::Leader && self.holding() {
            return;
        }
        if self.raw.raft.state != StateRole::Leader {
            let refusal = self.not_leader();
            for done in self.reads_waiting.drain(..) {
                let _ = done.send(Err(refusal.clone()));
            }
            return;
        }
        if !self.raw.raft.commit_to_current_term() {
            return;
        }
        let round = self.next_read;
        self.next_read += 1;
        self.raw.read_index(round.to_string().into_bytes());
        let waiting = std::mem::take(&mut self.reads_waiting);
        self.reads_in_flight.insert(round, waiting);
    }

    /// Handles one `Ready`, if the engine has one, in raft-rs's order.
    fn on_ready(&mut self) {
        if !self.raw.has_ready() {
            return;
        }
        let mut ready = self.raw.ready();
        // A leader's appends and heartbeats may go before its own copy is
        // durable: the entries count for commit only once it is.
        self.network.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let meta = ready.snapshot().get_metadata();
            self.install_snapshot(meta.index, meta.term);
        }
        self.apply(ready.take_committed_entries());
        let log = self.raw.mut_store();
        if let Err(e) = log.append(ready.entries()) {
            fatal(&format!("cannot append to the Raft log: {e}"));
        }
        if let Some(hs) = ready.hs()
            && let Err(e) = log.set_hard_state(hs)
        {
            fatal(&format!("cannot save the term and vote: {e}"));
        }
        if let Err(e) = log.sync() {
            fatal(&format!("cannot sync the Raft log: {e}"));
        }
        for read in ready.take_read_states() {
            let round = std::str::from_utf8(&read.request_ctx)
                .ok()
                .and_then(|s| s.parse().ok());
            if let Some(waiting) = round.and_then(|r| self.reads_in_flight.remove(&r)) {
                self.reads_confirmed.push((read.index, waiting));
            }
        }
        // Votes and acknowledgements: only now that what they promise is
        // on disk.
        self.network.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index()
            && let Err(e) = self.raw.mut_store().set_commit(commit)
        {
            fatal(&format!("cannot record the commit index: {e}"));
        }
        self.network.send(light.take_messages());
        self.apply(light.take_committed_entries());
        self.raw.advance_apply();
        self.release_reads();
    }

    /// Applies committed entries to the store and answers their writers.
    fn apply(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            state_machine::apply(&self.store, &entry);
            self.applied = entry.index;
            if let Some((term, done)) = self.writes.remove(&entry.index) {
                let outcome = if term == entry.term {
                    Ok(())
                } else {
                    Err(Refused::Unknown(
                        "leadership changed before the write was committed",
                    ))
                };
                let _ = done.send(outcome);
            }
        }
    }

    /// Answers the reads whose confirmed index the store has applied.
    fn release_reads(&mut self) {
        let applied = self.applied;
        self.reads_confirmed.retain_mut(|(index, waiting)| {
            if *index > applied {
                return true;
            }
            for done in waiting.drain(..) {
                let _ = done.send(Ok(()));
            }
            false
        });
    }

    /// Shows the handles the engine's state; on losing leadership, answers
    /// every write and read that can no longer be settled here.
    fn publish(&mut self) {
        let holding = self.holding();
        // A hand-off is over once another member leads, this one knows
        // which, and every write it proposed is settled: until then it
        // must go on taking the new leader's messages, which carry the
        // commits of those writes.
        if self.hand_off.is_some()
            && (!holding || self.holding_until.is_none())
            && self.raw.raft.state != StateRole::Leader
            && self.writes.is_empty()
            && self.proposals.is_empty()
            && let Some(done) = self.hand_off.take()
        {
            let _ = done.send(());
        }
        let raft = &self.raw.raft;
        let state = State {
            role: match raft.state {
                StateRole::Leader => Role::Leader,
                StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
                StateRole::Follower => Role::Follower,
            },
            term: raft.term,
            leader: raft.leader_id,
            vote: raft.vote,
            commit: raft.raft_log.committed,
            applied: self.applied,
            holding,
        };
        if state == self.published {
            return;
        }
        if self.published.role == Role::Leader && state.role != Role::Leader {
            self.lost_leadership();
        }
        if state.leader != self.published.leader && state.leader != raft::INVALID_ID {
            crate::metrics::get().raft_leader_changes.inc();
        }
        if state.role != self.published.role || state.leader != self.published.leader {
            let leader = self.shared.members.id_of(state.leader).unwrap_or("none");
            info!(
                "role {:?} in term {}, leader {leader}",
                state.role, state.term
            );
        }
        self.published = state;
        *self.shared.state.write().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Answers what only a leader can settle. Writes already proposed stay
    /// waiting: the next leader may still commit them, and applying the
    /// entry at their index settles them either way (or the commit
    /// timeout does).
    fn lost_leadership(&mut self) {
        let reads = std::mem::take(&mut self.reads_in_flight)
            .into_values()
            .chain(
                std::mem::take(&mut self.reads_confirmed)
                    .into_iter()
                    .map(|(_, w)| w),
            )
            .flatten();
        for done in reads {
            let _ = done.send(Err(Refused::Unknown(
                "leadership was lost before the read was confirmed",
            )));
        }
    }

    /// At shutdown: whatever cannot be finished is answered.
    fn finish(&mut self) {
        for (_, done) in self.proposals.drain(..) {
            let _ = done.send(Err(Refused::ShuttingDown));
        }
        for done in self.reads_waiting.drain(..) {
            let _ = done.send(Err(Refused::ShuttingDown));
        }
        for (_, (_, done)) in std::mem::take(&mut self.writes) {
            let _ = done.send(Err(Refused::Unknown("the server is shutting down")));
        }
        self.lost_leadership();
        info!(
            "Raft loop stopped at term {}, applied through index {}",
            self.raw.raft.term, self.applied
        );
    }
}

/// A member that cannot persist what Raft requires must stop taking part
/// at once: going on could acknowledge what is not durable. The cluster
/// carries on without it; restart it once the disk is fixed.
pub(super) fn fatal(what: &str) -> ! {
    error!(
        "{what}; this member stops now (exit 2) so that it never acknowledges what is not on disk"
    );
    std::process::exit(2);
}
