//! One cluster member as the HTTP layer sees it: the handle ([`Node`])
//! that turns requests into events for the loop that drives the Raft
//! engine (`raft_loop`), and waits for its answers asynchronously.
//!
//! A write is answered once its entry is committed and applied; a read once
//! a quorum has confirmed this member still leads (one read-index round
//! serves every read that arrived before it started) and the store has
//! applied up to that point. The handle also takes the members' messages
//! (`/raft/*`; snapshots in `transfer`) and the test partition. It must
//! never touch the engine or the store's writes itself: those belong to
//! the loop's thread.

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use raft::SnapshotStatus;
use raft::eraftpb::{Message, MessageType};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::error;

use crate::cluster::compaction;
use crate::cluster::log_store::LogStore;
use crate::cluster::members::Members;
use crate::cluster::network::Network;
use crate::cluster::partition::{Partition, PartitionError};
use crate::cluster::raft_loop;
use crate::cluster::transfer::Incoming;
use crate::cluster::wire::{self, WireError};
use crate::security::Security;
use crate::storage::datadir::Layout;
use crate::storage::store::Store;
use crate::storage::wal::Op;

/// Where the loop sends a request's answer.
pub(super) type Answer = oneshot::Sender<Result<(), Refused>>;

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
        received: Box<crate::cluster::transfer::Received>,
    },
    /// A compaction wrote its data file.
    Compacted(compaction::Compacted),
    /// A compaction failed; the log keeps everything.
    CompactionFailed(String),
    /// Shutdown begins: hand leadership to an up-to-date follower, and
    /// answer once this member no longer leads.
    HandOff(oneshot::Sender<()>),
    Stop,
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
    #[error("cannot store the snapshot being received in {}: {error}", path.display())]
    Disk {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
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

impl Role {
    /// The name `/cluster/info` and the metrics give it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::Follower => "follower",
        }
    }
}

/// The engine's state, as the loop last published it. Engine node numbers
/// here; [`Node::info`] names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct State {
    pub(super) role: Role,
    pub(super) term: u64,
    pub(super) leader: u64,
    pub(super) vote: u64,
    pub(super) commit: u64,
    pub(super) applied: u64,
    /// This member is handing leadership over and holds requests until it
    /// knows who took it, so they can be sent there rather than refused.
    pub(super) holding: bool,
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
pub(super) struct Shared {
    pub(super) events: mpsc::Sender<Event>,
    pub(super) state: RwLock<State>,
    pub(super) members: Arc<Members>,
    pub(super) partition: Arc<Partition>,
    /// How long a write may wait for its commit (and a read for its
    /// confirmation) before it is answered "unknown".
    pub(super) commit_timeout: Duration,
    pub(super) layout: Layout,
    /// The snapshot being received from a leader, if any.
    pub(super) incoming: Mutex<Option<Incoming>>,
    /// How many snapshots were received whole: names each one's file.
    pub(super) receipts: AtomicU64,
}

/// The handle to a running member. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(super) shared: Arc<Shared>,
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
    /// The token and TLS the members' own traffic carries.
    pub security: Security,
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
            security,
            layout,
            max_log_bytes,
        } = start;
        let hard_state = log.hard_state().clone();
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
            receipts: AtomicU64::new(0),
        });
        let network = Network::start(
            runtime,
            members,
            partition,
            layout.snapshot(),
            events.clone(),
            &security,
        );
        let thread = raft_loop::spawn(raft_loop::Parts {
            log,
            applied,
            shared: Arc::clone(&shared),
            inbox,
            store,
            network,
            max_log_bytes,
            state,
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

    pub(super) fn decode(&self, body: &[u8]) -> Result<Vec<Message>, ReceiveError> {
        let mut messages = wire::decode(body, &self.shared.members)?;
        let partition = &self.shared.partition;
        messages.retain(|m| partition.allows(m.from));
        if messages.is_empty() {
            return Err(ReceiveError::Partitioned);
        }
        Ok(messages)
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
