//! One cluster member: the Raft engine (raft-rs) driven by a loop on its
//! own thread, and the handle the HTTP layer talks to it through.
//!
//! The loop owns the engine and everything it touches: it ticks the clock,
//! steps messages from peers, proposes writes, starts read-index rounds,
//! and handles each `Ready` in the order raft-rs prescribes (send what
//! needs no persistence, apply what is committed, persist entries and
//! term/vote with one fsync, then send what needed them). Because the
//! loop is the only writer of the log and of the store, every write and
//! fsync happens on this thread, never on a tokio worker.
//!
//! The handle ([`Node`]) turns requests into events for the loop and waits
//! for answers asynchronously: a write is answered once its entry is
//! committed and applied here; a read once a quorum has confirmed this
//! member still leads (one read-index round serves every read that arrived
//! before it started) and the store has applied up to that point. It must
//! never implement Raft itself: elections, replication, commit and
//! check-quorum are the engine's.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{Entry, Message, MessageType};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::cluster::log_store::{LogStore, SnapshotSource};
use crate::cluster::members::Members;
use crate::cluster::network::Network;
use crate::cluster::partition::{Partition, PartitionError};
use crate::cluster::wire::{self, SnapshotChunk, WireError};
use crate::cluster::{logger, state_machine};
use crate::storage::datadir::Layout;
use crate::storage::snapshot;
use crate::storage::store::{Builder, Store};
use crate::storage::wal::Op;

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

/// Where the loop sends a request's answer.
type Answer = oneshot::Sender<Result<(), Refused>>;

/// What the loop is asked to do.
pub enum Event {
    Propose {
        data: Bytes,
        done: Answer,
    },
    Read {
        done: Answer,
    },
    /// Messages from peers, already decoded and let through the partition.
    Raft(Vec<Message>),
    /// A peer could not be reached.
    Unreachable(u64),
    /// How sending a snapshot to a peer went.
    SnapshotStatus(u64, SnapshotStatus),
    /// A leader's snapshot message, its data received and loaded.
    Snapshot {
        message: Message,
        data: Box<Builder>,
    },
    /// A compaction wrote its data file.
    Compacted(Compacted),
    /// A compaction failed; the log keeps everything.
    CompactionFailed(String),
    /// Shutdown begins: hand leadership to an up-to-date follower, and
    /// answer once this member no longer leads.
    HandOff(oneshot::Sender<()>),
    Stop,
}

/// What a compaction thread wrote.
pub struct Compacted {
    index: u64,
    term: u64,
    /// Snapshots installed when the compaction began: one installed since
    /// means the copy may mix the store before and after it.
    installs: u64,
    keys: u64,
    bytes: u64,
    started: Instant,
}

/// Why a request was not answered with success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// This member does not lead; the ID of the one it knows leads, if
    /// any. Nothing was proposed.
    NotLeader(Option<String>),
    /// What happened cannot be known from here: a write may or may not
    /// take effect, a read was not confirmed. Says why.
    Unknown(&'static str),
    /// The server is shutting down; nothing was proposed.
    ShuttingDown,
}

/// Why a batch of messages from a peer was refused.
#[derive(Debug, Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("this member is partitioned from the sender")]
    Partitioned,
    #[error("this member is shutting down")]
    ShuttingDown,
    #[error("snapshot chunk out of order: {0}")]
    OutOfOrder(String),
    #[error("cannot store the snapshot being received: {0}")]
    Disk(std::io::Error),
    #[error("the snapshot received is not a valid data file: {0}")]
    BadSnapshot(crate::storage::snapshot::ReadError),
}

/// A member's role, as `/cluster/info` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Candidate,
    Follower,
}

/// The engine's state, as the loop last published it. Engine node numbers
/// here; [`Node::info`] names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    role: Role,
    term: u64,
    leader: u64,
    vote: u64,
    commit: u64,
    applied: u64,
    /// This member is handing leadership over and holds requests until it
    /// knows who took it, so they can be sent there rather than refused.
    holding: bool,
}

/// `GET /cluster/info`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Info {
    pub id: String,
    pub role: Role,
    pub term: u64,
    pub leader: Option<String>,
    pub peers: Vec<String>,
    pub voted_for: Option<String>,
    pub commit_index: u64,
    pub last_applied: u64,
}

/// Who leads, as far as this member knows.
pub enum Leadership {
    /// This member.
    Me,
    /// Another member, by ID, or none known.
    Other(Option<String>),
}

/// What the loop and the handles share.
struct Shared {
    events: mpsc::Sender<Event>,
    state: RwLock<State>,
    members: Arc<Members>,
    partition: Arc<Partition>,
    /// How long a write may wait for its commit (and a read for its
    /// confirmation) before it is answered "unknown".
    commit_timeout: Duration,
    layout: Layout,
    /// The snapshot being received from a leader, if any.
    incoming: Mutex<Option<Incoming>>,
}

/// A snapshot transfer under way into `snapshot.incoming.jsonl`.
struct Incoming {
    from: u64,
    index: u64,
    /// Bytes written so far: where the next chunk must start.
    written: u64,
    /// Whether the last chunk arrived (and the file is synced).
    complete: bool,
}

/// The handle to a running member. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

/// The loop's thread, to stop and join at shutdown.
pub struct Running {
    events: mpsc::Sender<Event>,
    thread: JoinHandle<()>,
}

/// What a member starts from.
pub struct Start {
    pub members: Arc<Members>,
    pub partition: Arc<Partition>,
    pub log: LogStore,
    pub store: Arc<Store>,
    /// The index the store has applied through.
    pub applied: u64,
    pub commit_timeout: Duration,
    pub layout: Layout,
    /// Compact the log once it grows past this many bytes.
    pub max_log_bytes: u64,
}

impl Node {
    /// Starts the engine and its loop. Sender tasks run on `runtime`.
    pub fn start(start: Start, runtime: &tokio::runtime::Handle) -> io::Result<(Node, Running)> {
        let Start {
            members,
            partition,
            log,
            store,
            applied,
            commit_timeout,
            layout,
            max_log_bytes,
        } = start;
        let config = raft::Config {
            id: members.my_node(),
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
        let hard_state = log.hard_state().clone();
        let raw = RawNode::new(&config, log, &logger::logger())
            .map_err(|e| io::Error::other(format!("the Raft engine refused to start: {e}")))?;
        let (events, inbox) = mpsc::channel();
        let state = State {
            role: Role::Follower,
            term: hard_state.term,
            leader: 0,
            vote: hard_state.vote,
            commit: hard_state.commit,
            applied,
            holding: false,
        };
        let shared = Arc::new(Shared {
            events: events.clone(),
            state: RwLock::new(state),
            members: Arc::clone(&members),
            partition: Arc::clone(&partition),
            commit_timeout,
            layout: layout.clone(),
            incoming: Mutex::new(None),
        });
        let network = Network::start(
            runtime,
            members,
            partition,
            layout.snapshot(),
            events.clone(),
        );
        let runner = Runner {
            raw,
            inbox,
            shared: Arc::clone(&shared),
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
            layout,
            max_log_bytes,
            compacting: false,
            compaction_retry: None,
            installs: 0,
            install: None,
            hand_off: None,
            holding_until: None,
        };
        let thread = std::thread::Builder::new()
            .name("kvs-raft".into())
            .spawn(move || {
                // A panic here would leave the server answering requests
                // that nothing will ever settle: stop the member instead.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.run()));
                if ran.is_err() {
                    fatal("the Raft loop panicked");
                }
            })?;
        Ok((Node { shared }, Running { events, thread }))
    }

    /// Replicates `op`; returns once it is committed and applied here.
    pub async fn write(&self, op: &Op<'_>) -> Result<(), Refused> {
        let data = Bytes::from(serde_json::to_vec(op).expect("an operation always serializes"));
        self.ask(
            |done| Event::Propose { data, done },
            "not committed within --commit-timeout",
        )
        .await
    }

    /// Returns once a read of the store from now on is linearizable: this
    /// member leads, a quorum confirmed it after the read arrived, and the
    /// store has applied everything committed before that.
    pub async fn read(&self) -> Result<(), Refused> {
        self.ask(
            |done| Event::Read { done },
            "leadership not confirmed within --commit-timeout",
        )
        .await
    }

    async fn ask(
        &self,
        event: impl FnOnce(Answer) -> Event,
        late: &'static str,
    ) -> Result<(), Refused> {
        let (done, answer) = oneshot::channel();
        self.shared
            .events
            .send(event(done))
            .map_err(|_| Refused::ShuttingDown)?;
        match tokio::time::timeout(self.shared.commit_timeout, answer).await {
            Ok(Ok(result)) => result,
            // The loop stopped before answering.
            Ok(Err(_)) => Err(Refused::Unknown("the server is shutting down")),
            Err(_) => Err(Refused::Unknown(late)),
        }
    }

    /// If this member leads, hands leadership to the most up-to-date
    /// follower and returns once it no longer leads (or after `within`),
    /// so that a restart costs clients no election timeout.
    pub async fn hand_off(&self, within: Duration) {
        let (done, handed) = oneshot::channel();
        if self.shared.events.send(Event::HandOff(done)).is_ok() {
            let _ = tokio::time::timeout(within, handed).await;
        }
    }

    /// Who leads, as the loop last saw it.
    pub fn leadership(&self) -> Leadership {
        let state = *self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        if state.role == Role::Leader || state.holding {
            Leadership::Me
        } else {
            Leadership::Other(self.id_of(state.leader))
        }
    }

    /// The member's state for `/cluster/info`.
    pub fn info(&self) -> Info {
        let state = *self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        let members = &self.shared.members;
        Info {
            id: members.me().to_owned(),
            role: state.role,
            term: state.term,
            leader: self.id_of(state.leader),
            peers: members.others().map(str::to_owned).collect(),
            voted_for: self.id_of(state.vote),
            commit_index: state.commit,
            last_applied: state.applied,
        }
    }

    fn id_of(&self, node: u64) -> Option<String> {
        self.shared.members.id_of(node).map(str::to_owned)
    }

    /// Takes a batch of messages a peer posted.
    pub fn receive(&self, body: &[u8]) -> Result<(), ReceiveError> {
        let messages = self.decode(body)?;
        if messages
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        {
            return Err(ReceiveError::OutOfOrder(
                "a snapshot goes to /raft/install-snapshot".into(),
            ));
        }
        self.shared
            .events
            .send(Event::Raft(messages))
            .map_err(|_| ReceiveError::ShuttingDown)
    }

    fn decode(&self, body: &[u8]) -> Result<Vec<Message>, ReceiveError> {
        let mut messages = wire::decode(body, &self.shared.members)?;
        let partition = &self.shared.partition;
        messages.retain(|m| partition.allows(m.from));
        if messages.is_empty() {
            return Err(ReceiveError::Partitioned);
        }
        Ok(messages)
    }

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
            File::create(&path).map_err(ReceiveError::Disk)?
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
                .map_err(ReceiveError::Disk)?
        };
        file.write_all(chunk.data.as_bytes())
            .map_err(ReceiveError::Disk)?;
        if chunk.last {
            file.sync_all().map_err(ReceiveError::Disk)?;
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
            let index = message.get_snapshot().get_metadata().index;
            let received = self
                .shared
                .incoming
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            match received {
                Some(i) if i.from == message.from && i.index == index && i.complete => {}
                _ => {
                    return Err(ReceiveError::OutOfOrder(format!(
                        "the snapshot at index {index} came before all of its data"
                    )));
                }
            }
            let mut data = Builder::new();
            snapshot::read_file(&self.shared.layout.snapshot_incoming(), |key, value| {
                data.push(key, value)
            })
            .map_err(ReceiveError::BadSnapshot)?;
            self.shared
                .events
                .send(Event::Snapshot {
                    message,
                    data: Box::new(data),
                })
                .map_err(|_| ReceiveError::ShuttingDown)?;
        }
        Ok(())
    }

    /// `POST /cluster/partition`. Blocking: it fsyncs.
    pub fn partition(&self, peers: &[String]) -> Result<(), PartitionError> {
        self.shared.partition.set(peers, &self.shared.members)
    }

    /// `POST /cluster/heal`. Blocking: it fsyncs.
    pub fn heal(&self) -> Result<(), PartitionError> {
        self.shared.partition.heal()
    }
}

impl Running {
    /// Stops the loop once it has handled what was sent before, and waits
    /// for it. Everything the loop wrote is durable by then (each `Ready`
    /// is synced before the next).
    pub fn stop(self) {
        let _ = self.events.send(Event::Stop);
        if self.thread.join().is_err() {
            error!("the Raft loop panicked");
        }
    }
}

/// The loop's state.
struct Runner {
    raw: RawNode<LogStore>,
    inbox: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
    store: Arc<Store>,
    network: Network,
    /// Proposed writes waiting for their entry to be applied, by log
    /// index, with the term they were proposed in: an entry of another
    /// term at that index means the write was lost with a leadership change.
    writes: BTreeMap<u64, (u64, Answer)>,
    /// Writes that arrived since the last proposal, proposed together.
    proposals: Vec<(Bytes, Answer)>,
    /// Reads that arrived since the last read-index round began.
    reads_waiting: Vec<Answer>,
    /// Read-index rounds under way, by the number they were started with.
    reads_in_flight: HashMap<u64, Vec<Answer>>,
    /// Rounds a quorum confirmed, waiting for the store to apply through
    /// their index.
    reads_confirmed: Vec<(u64, Vec<Answer>)>,
    next_read: u64,
    /// The index the store has applied through.
    applied: u64,
    /// What the handles were last shown.
    published: State,
    layout: Layout,
    max_log_bytes: u64,
    /// Whether a compaction thread is running.
    compacting: bool,
    /// When to try again after a failed compaction.
    compaction_retry: Option<Instant>,
    /// How many leader snapshots were installed.
    installs: u64,
    /// A leader's snapshot stepped into the engine, with its data, until
    /// the engine's `Ready` says whether it took it.
    install: Option<(u64, Box<Builder>)>,
    /// Who waits for this member to stop leading.
    hand_off: Option<oneshot::Sender<()>>,
    /// Until when requests are held during a hand-off (see `State`).
    holding_until: Option<Instant>,
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
            self.install = None;
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
            Event::Snapshot { message, data } => {
                let index = message.get_snapshot().get_metadata().index;
                self.install = Some((index, data));
                let _ = self.raw.step(message);
            }
            Event::Compacted(done) => self.compacted(done),
            Event::CompactionFailed(e) => {
                error!("compaction failed: {e}; the Raft log keeps every entry, retrying in 10 s");
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
        let log = &self.raw.raft.raft_log;
        if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > log.last_index()
        {
            fatal(&format!(
                "the leader {} says entries through index {} are committed on this member, but its Raft log ends at index {}: this data directory lost entries this member had acknowledged (was it deleted or replaced?). Restore the directory from a backup, or rebuild the cluster with every member's directory empty",
                self.shared.members.id_of(message.from).unwrap_or("?"),
                message.commit,
                log.last_index()
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
                    self.writes.insert(first + i as u64, (term, done));
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

    /// Installs the leader's snapshot the engine just took: durably first,
    /// then in memory.
    fn install_snapshot(&mut self, index: u64, term: u64) {
        let Some((received, data)) = self.install.take() else {
            fatal("the engine took a snapshot whose data never arrived");
        };
        if received != index {
            fatal("the engine took a snapshot other than the one received");
        }
        let started = Instant::now();
        let incoming = self.layout.snapshot_incoming();
        if let Err(e) =
            self.raw
                .mut_store()
                .adopt_snapshot(&incoming, index, term, SnapshotSource::Leader)
        {
            fatal(&format!("cannot install the leader's snapshot: {e}"));
        }
        data.replace(&self.store);
        self.applied = index;
        self.installs += 1;
        info!(
            "installed the leader's snapshot at index {index} ({} keys) in {} ms",
            self.store.len(),
            started.elapsed().as_millis()
        );
    }

    /// Starts a compaction once the log has grown past its limit: a
    /// thread copies the store (reads and writes go on) and writes it as
    /// the data file; the loop then switches to it (see `compacted`).
    fn maybe_compact(&mut self) {
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
        let target = self.layout.snapshot_compact();
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
    fn compacted(&mut self, done: Compacted) {
        self.compacting = false;
        let path = self.layout.snapshot_compact();
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
        info!(
            "compaction done: snapshot at index {} ({} keys, {} bytes) in {} ms; the Raft log went from {before} to {} bytes",
            done.index,
            done.keys,
            done.bytes,
            done.started.elapsed().as_millis(),
            self.raw.store().log_bytes()
        );
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
fn fatal(what: &str) -> ! {
    error!(
        "{what}; this member stops now (exit 2) so that it never acknowledges what is not on disk"
    );
    std::process::exit(2);
}
