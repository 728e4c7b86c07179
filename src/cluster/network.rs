//! Sends the engine's messages to the other members as HTTP `POST
//! /raft/...` with JSON bodies.
//!
//! Owns one sender task per peer, each with its own queue and a pooled
//! keep-alive connection, so a slow or unreachable peer delays only its own
//! messages. A task takes everything queued for its peer, posts it in as
//! few requests as the message families allow, and tells the node loop
//! when a peer could not be reached (the engine then slows down sending to
//! it) and how a snapshot went. Raft tolerates lost messages, so a full
//! queue or a failed post drops messages rather than wait. It must never
//! block the node loop, and never send to a member the partition excludes.
//!
//! A snapshot message carries only a position; before posting it, the
//! peer's task streams the data file (`snapshot.jsonl`, opened only then,
//! so it is at least as new as the position: see `log_store`) to
//! `/raft/snapshot-chunk` in pieces of whole lines, so neither side ever
//! holds more than a piece in a message.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc as tokio_mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, info, warn};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap};

use crate::cluster::members::Members;
use crate::cluster::node::Event;
use crate::cluster::partition::Partition;
use crate::cluster::wire::{self, Family, SnapshotChunk};
use crate::security::Security;

/// How long one post may take before the peer counts as unreachable.
/// Well under the 500 ms minimum election timeout, so a stalled link shows
/// up as lost heartbeats rather than as a queue of late ones.
const RPC_TIMEOUT: Duration = Duration::from_millis(300);

/// How long a post carrying a snapshot may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a new connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;

/// The most messages one post carries.
const MAX_BATCH: usize = 512;

/// About how much of a snapshot's data file one chunk carries.
const CHUNK_BYTES: usize = 1 << 20;

/// The sending side: the node loop hands it messages.
pub struct Network {
    /// One queue per engine node number (index 0 unused; this member's own
    /// slot is `None`).
    peers: Vec<Option<tokio_mpsc::Sender<Message>>>,
    /// Where to tell the loop about messages dropped here.
    events: mpsc::Sender<Event>,
}

impl Network {
    /// Starts a sender task per peer on `runtime`.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        members: Arc<Members>,
        partition: Arc<Partition>,
        snapshot: PathBuf,
        events: mpsc::Sender<Event>,
        security: &Security,
    ) -> Network {
        let mut headers = HeaderMap::new();
        if let Some(token) = &security.token {
            // The same token as clients': SPEC §7 puts /raft/* behind it.
            headers.insert(AUTHORIZATION, token.header().clone());
        }
        let mut client = reqwest::Client::builder()
            // Members talk to each other directly, whatever proxy the
            // environment names for other traffic.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .default_headers(headers)
            // A peer's /raft/* never redirects; following one would send
            // the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            // Shorter than the peers' own 30 s idle limit, so a pooled
            // connection is never reused just as the peer closes it.
            .pool_idle_timeout(Duration::from_secs(20));
        if let Some(config) = security.tls.as_ref().and_then(|tls| tls.client.as_ref()) {
            client = client.use_preconfigured_tls((**config).clone());
        }
        let client = client
            .build()
            .expect("an HTTP client with a prepared TLS configuration always builds");
        let scheme = security.scheme();
        let mut peers = vec![None];
        for node in members.nodes() {
            if node == members.my_node() {
                peers.push(None);
                continue;
            }
            let (tx, rx) = tokio_mpsc::channel(QUEUE);
            let link = Link {
                node,
                base: format!("{scheme}://{}", members.id_of(node).expect("a member")),
                client: client.clone(),
                complained: Arc::new(AtomicBool::new(false)),
                members: Arc::clone(&members),
                events: events.clone(),
            };
            let peer = Peer {
                link,
                partition: Arc::clone(&partition),
                snapshot: snapshot.clone(),
                sending: None,
                reachable: true,
            };
            runtime.spawn(peer.run(rx));
            peers.push(Some(tx));
        }
        Network { peers, events }
    }

    /// Queues messages for their peers. Never blocks.
    pub fn send(&self, messages: Vec<Message>) {
        for message in messages {
            let queue = self.peers.get(message.to as usize).and_then(Option::as_ref);
            match queue {
                Some(queue) => {
                    if let Err(full) = queue.try_send(message) {
                        debug!("queue to a peer is full; dropping a message");
                        let message = match full {
                            TrySendError::Full(m) | TrySendError::Closed(m) => m,
                        };
                        report_dropped(&self.events, &message);
                    }
                }
                None => warn!("dropping a message to node {}, not a peer", message.to),
            }
        }
    }
}

/// Tells the engine about a message that never left: Raft resends what
/// was lost, but only once it knows that a snapshot failed (until then
/// the peer counts as busy taking it) or that the peer could not be
/// reached (so that it probes instead of streaming into the void).
fn report_dropped(events: &mpsc::Sender<Event>, message: &Message) {
    let event = match message.get_msg_type() {
        MessageType::MsgSnapshot => {
            Event::SnapshotStatus(message.to, raft::SnapshotStatus::Failure)
        }
        MessageType::MsgAppend => Event::Unreachable(message.to),
        _ => return,
    };
    let _ = events.send(event);
}

/// What it takes to post to one peer.
#[derive(Clone)]
struct Link {
    node: u64,
    /// `http://HOST:PORT`, or `https://`.
    base: String,
    client: reqwest::Client,
    /// Whether the last post failed (a 401, or no answer), so that a token
    /// mismatch or an outage is logged once, not at every heartbeat.
    complained: Arc<AtomicBool>,
    members: Arc<Members>,
    events: mpsc::Sender<Event>,
}

impl Link {
    fn peer(&self) -> &str {
        self.base
            .split_once("://")
            .map_or(self.base.as_str(), |(_, peer)| peer)
    }

    /// Posts messages of one family; says whether the peer took them.
    async fn post(&self, family: Family, run: &[Message]) -> bool {
        let body = match wire::encode(run, &self.members) {
            Ok(body) => body,
            Err(e) => {
                warn!("cannot encode a message for {}: {e}", self.peer());
                return false;
            }
        };
        let timeout = if family == Family::InstallSnapshot {
            SNAPSHOT_TIMEOUT
        } else {
            RPC_TIMEOUT
        };
        let sent = self
            .client
            .post(format!("{}{}", self.base, family.path()))
            .header("content-type", "application/json")
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                if self.complained.swap(false, Ordering::Relaxed) {
                    info!("{} answers again", self.peer());
                }
                true
            }
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                if !self.complained.swap(true, Ordering::Relaxed) {
                    warn!(
                        "{} refuses this member's messages (401): give every member the same --token-file",
                        self.peer()
                    );
                }
                false
            }
            Ok(response) => {
                debug!("{} answered {}", self.peer(), response.status());
                false
            }
            Err(e) => {
                // Once per outage, with the cause (a refused connection, a
                // timeout, a certificate the peer's name is not in...).
                if !self.complained.swap(true, Ordering::Relaxed) {
                    warn!(
                        "cannot reach {}: {}; retrying (said once until it answers)",
                        self.peer(),
                        error_chain(&e)
                    );
                } else {
                    debug!("cannot post to {}: {e}", self.peer());
                }
                false
            }
        }
    }
}

/// An error and its causes, `: `-separated: reqwest's own message names
/// only the URL.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

struct Peer {
    link: Link,
    partition: Arc<Partition>,
    /// This member's data file, streamed with a snapshot message.
    snapshot: PathBuf,
    /// The snapshot transfer under way to this peer, if any.
    sending: Option<tokio::task::JoinHandle<()>>,
    /// Whether the last post went through, so that a peer going away or
    /// coming back is logged once, not at every heartbeat.
    reachable: bool,
}

impl Peer {
    async fn run(mut self, mut queue: tokio_mpsc::Receiver<Message>) {
        let mut batch = Vec::new();
        while let Some(first) = queue.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            if self.partition.allows(self.link.node) {
                self.post_all(&batch).await;
            } else {
                // As if the network dropped them.
                for message in &batch {
                    report_dropped(&self.link.events, message);
                }
                self.report(false);
            }
            batch.clear();
        }
    }

    /// Posts the batch in runs of one family, in order. A snapshot goes on
    /// a task of its own: streaming it takes a while, and heartbeats and
    /// appends must not wait behind it.
    async fn post_all(&mut self, batch: &[Message]) {
        let mut start = 0;
        while start < batch.len() {
            let family = Family::of(&batch[start]);
            let end = batch[start..]
                .iter()
                .position(|m| Family::of(m) != family)
                .map_or(batch.len(), |n| start + n);
            let run = &batch[start..end];
            if family == Family::InstallSnapshot {
                for message in run {
                    // One transfer to a peer at a time: the engine takes a
                    // status report as being about its latest snapshot,
                    // and two transfers would cut each other's chunks.
                    if let Some(previous) = self.sending.take() {
                        previous.abort();
                    }
                    let sender = SnapshotSender {
                        link: self.link.clone(),
                        data: self.snapshot.clone(),
                    };
                    self.sending = Some(tokio::spawn(sender.send(message.clone())));
                }
            } else {
                let delivered = self.link.post(family, run).await;
                if !delivered
                    && run
                        .iter()
                        .any(|m| m.get_msg_type() == MessageType::MsgAppend)
                {
                    // Lets the engine fall back to probing this peer instead
                    // of streaming entries into the void.
                    let _ = self.link.events.send(Event::Unreachable(self.link.node));
                }
                self.report(delivered);
            }
            start = end;
        }
    }

    fn report(&mut self, delivered: bool) {
        if delivered != self.reachable {
            self.reachable = delivered;
            if delivered {
                info!("peer {} is reachable again", self.link.peer());
            } else {
                info!(
                    "peer {} is unreachable; its messages are dropped until it answers",
                    self.link.peer()
                );
            }
        }
    }
}

/// Sends one snapshot: the data file in chunks, then the message.
struct SnapshotSender {
    link: Link,
    /// This member's data file, opened only now: it is at least as new as
    /// the position the message names (see `log_store`).
    data: PathBuf,
}

impl SnapshotSender {
    async fn send(self, message: Message) {
        let started = std::time::Instant::now();
        let index = message.get_snapshot().get_metadata().index;
        let delivered = match self.stream_data(index).await {
            Ok(bytes) => {
                let delivered = self
                    .link
                    .post(Family::InstallSnapshot, std::slice::from_ref(&message))
                    .await;
                if delivered {
                    info!(
                        "sent the snapshot at index {index} ({bytes} bytes) to {} in {} ms",
                        self.link.peer(),
                        started.elapsed().as_millis()
                    );
                }
                delivered
            }
            Err(e) => {
                warn!(
                    "cannot send the snapshot at index {index} to {}: {e}",
                    self.link.peer()
                );
                false
            }
        };
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        let _ = self
            .link
            .events
            .send(Event::SnapshotStatus(self.link.node, status));
    }

    /// Posts the data file in chunks of whole lines; returns its size.
    async fn stream_data(&self, index: u64) -> Result<u64, String> {
        let file = tokio::fs::File::open(&self.data)
            .await
            .map_err(|e| format!("cannot open {}: {e}", self.data.display()))?;
        let mut reader = tokio::io::BufReader::with_capacity(CHUNK_BYTES, file);
        let mut offset = 0u64;
        let mut piece = Vec::with_capacity(CHUNK_BYTES + 4096);
        loop {
            piece.clear();
            let mut last = false;
            while piece.len() < CHUNK_BYTES {
                let n = reader
                    .read_until(b'\n', &mut piece)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", self.data.display()))?;
                if n == 0 {
                    last = true;
                    break;
                }
            }
            let data = String::from_utf8(std::mem::take(&mut piece))
                .map_err(|_| format!("{} is not UTF-8", self.data.display()))?;
            let len = data.len() as u64;
            let chunk = SnapshotChunk {
                from: self.link.members.me().to_owned(),
                index,
                offset,
                last,
                data,
            };
            let body = serde_json::to_vec(&chunk).map_err(|e| e.to_string())?;
            let response = self
                .link
                .client
                .post(format!("{}/raft/snapshot-chunk", self.link.base))
                .header("content-type", "application/json")
                .timeout(SNAPSHOT_TIMEOUT)
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                return Err(format!("it answered {status}: {}", text.trim_end()));
            }
            offset += len;
            if last {
                return Ok(offset);
            }
        }
    }
}
