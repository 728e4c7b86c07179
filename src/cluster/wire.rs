//! The engine's messages as JSON, the way members exchange them under
//! `/raft/*`.
//!
//! raft-rs speaks protobuf structs; SPEC §6 wants JSON a person can read,
//! with members named by their IDs (`HOST:PORT`) rather than the engine's
//! node numbers. This module owns that translation in both directions and
//! checks what comes in: an entry must hold a valid operation, exactly as
//! the write-ahead log's records must. It must never send, receive or
//! decide anything.

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;

use crate::cluster::members::Members;
use crate::storage::wal::Op;

/// Why a message from a peer was refused.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("not a batch of Raft messages: {0}")]
    Json(#[from] serde_json::Error),
    #[error("message names {0:?}, which is not a member of this cluster")]
    UnknownMember(String),
    #[error("message is addressed to {to}, but this member is {me}")]
    NotForMe { to: String, me: String },
    #[error("message type {0:?} is never sent between members")]
    LocalType(String),
    #[error("entry {index} does not hold a valid operation: {reason}")]
    BadEntry { index: u64, reason: String },
    #[error("message holds text that is not UTF-8")]
    NotUtf8,
    #[error(
        "entries of an append must follow index {index} without gaps, in terms no later than {term}"
    )]
    BadEntries { index: u64, term: u64 },
}

/// The family of a message, which picks the path it is posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `/raft/append-entries`: log entries and heartbeats.
    AppendEntries,
    /// `/raft/request-vote`: votes and pre-votes.
    RequestVote,
    /// `/raft/install-snapshot`: a snapshot's position, once its data
    /// has gone to `/raft/snapshot-chunk`.
    InstallSnapshot,
    /// `/raft/message`: answers to the above, and the engine's other
    /// messages (leadership transfer, forwarded reads).
    Other,
}

impl Family {
    pub fn of(message: &Message) -> Family {
        match message.get_msg_type() {
            MessageType::MsgAppend | MessageType::MsgHeartbeat => Family::AppendEntries,
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote => Family::RequestVote,
            MessageType::MsgSnapshot => Family::InstallSnapshot,
            _ => Family::Other,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Family::AppendEntries => "/raft/append-entries",
            Family::RequestVote => "/raft/request-vote",
            Family::InstallSnapshot => "/raft/install-snapshot",
            Family::Other => "/raft/message",
        }
    }
}

/// One message on the wire. Fields the engine left at their defaults are
/// left out, so a heartbeat is a short line.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct WireMessage {
    #[serde(rename = "type")]
    kind: String,
    from: String,
    to: String,
    term: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    log_term: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    index: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    entries: Vec<WireEntry>,
    #[serde(default, skip_serializing_if = "is_zero")]
    commit: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    commit_term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<WireSnapshot>,
    #[serde(default, skip_serializing_if = "is_zero")]
    request_snapshot: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    reject: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    reject_hint: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    context: String,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    priority: i64,
}

/// A log entry on the wire: the operation as the JSON object the log file
/// holds too; none for the empty entry a new leader appends.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEntry {
    index: u64,
    term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    context: String,
}

/// A snapshot's position. Its data travels before it, in chunks.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSnapshot {
    index: u64,
    term: u64,
    members: Vec<String>,
}

/// One piece of a snapshot's data file, posted to
/// `/raft/snapshot-chunk` in order before the snapshot message itself.
/// Chunks end at line ends, so each is valid UTF-8 on its own.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotChunk {
    /// The sender's ID.
    pub from: String,
    /// The log index the snapshot stands at.
    pub index: u64,
    /// Where in the data file this piece starts.
    pub offset: u64,
    /// Whether this is the last piece.
    pub last: bool,
    /// Whole lines of the data file.
    pub data: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

const KINDS: &[(MessageType, &str)] = &[
    (MessageType::MsgAppend, "append-entries"),
    (MessageType::MsgAppendResponse, "append-entries-response"),
    (MessageType::MsgRequestVote, "request-vote"),
    (MessageType::MsgRequestVoteResponse, "request-vote-response"),
    (MessageType::MsgRequestPreVote, "request-pre-vote"),
    (
        MessageType::MsgRequestPreVoteResponse,
        "request-pre-vote-response",
    ),
    (MessageType::MsgSnapshot, "install-snapshot"),
    (MessageType::MsgHeartbeat, "heartbeat"),
    (MessageType::MsgHeartbeatResponse, "heartbeat-response"),
    (MessageType::MsgTransferLeader, "transfer-leader"),
    (MessageType::MsgTimeoutNow, "timeout-now"),
    (MessageType::MsgReadIndex, "read-index"),
    (MessageType::MsgReadIndexResp, "read-index-response"),
    (MessageType::MsgPropose, "propose"),
];

fn kind_name(kind: MessageType) -> Option<&'static str> {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, name)| *name)
}

fn kind_of(name: &str) -> Option<MessageType> {
    KINDS.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
}

/// Encodes messages to one peer as a JSON array.
pub fn encode(messages: &[Message], members: &Members) -> Result<Vec<u8>, WireError> {
    let wire: Vec<WireMessage> = messages
        .iter()
        .map(|m| to_wire(m, members))
        .collect::<Result<_, _>>()?;
    Ok(serde_json::to_vec(&wire)?)
}

/// Decodes a JSON array of messages sent to this member, checking every
/// name and every entry.
pub fn decode(body: &[u8], members: &Members) -> Result<Vec<Message>, WireError> {
    let wire: Vec<WireMessage> = serde_json::from_slice(body)?;
    wire.into_iter().map(|m| from_wire(m, members)).collect()
}

fn id(node: u64, members: &Members) -> Result<String, WireError> {
    members
        .id_of(node)
        .map(str::to_owned)
        .ok_or_else(|| WireError::UnknownMember(format!("node {node}")))
}

fn node(id: &str, members: &Members) -> Result<u64, WireError> {
    members
        .node_of(id)
        .ok_or_else(|| WireError::UnknownMember(id.to_owned()))
}

fn text(bytes: &Bytes) -> Result<String, WireError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::NotUtf8)
}

fn to_wire(m: &Message, members: &Members) -> Result<WireMessage, WireError> {
    let kind = kind_name(m.get_msg_type())
        .ok_or_else(|| WireError::LocalType(format!("{:?}", m.get_msg_type())))?;
    let entries = m
        .entries
        .iter()
        .map(|e| {
            let op = if e.data.is_empty() {
                None
            } else {
                Some(RawValue::from_string(text(&e.data)?)?)
            };
            Ok(WireEntry {
                index: e.index,
                term: e.term,
                op,
                context: text(&e.context)?,
            })
        })
        .collect::<Result<_, WireError>>()?;
    let snapshot = match m.snapshot.as_ref() {
        Some(s) if !s.is_empty() => Some(WireSnapshot {
            index: s.get_metadata().index,
            term: s.get_metadata().term,
            members: s
                .get_metadata()
                .get_conf_state()
                .voters
                .iter()
                .map(|&n| id(n, members))
                .collect::<Result<_, _>>()?,
        }),
        _ => None,
    };
    Ok(WireMessage {
        kind: kind.to_owned(),
        from: id(m.from, members)?,
        to: id(m.to, members)?,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries,
        commit: m.commit,
        commit_term: m.commit_term,
        snapshot,
        request_snapshot: m.request_snapshot,
        reject: m.reject,
        reject_hint: m.reject_hint,
        context: text(&m.context)?,
        priority: m.priority,
    })
}

fn from_wire(w: WireMessage, members: &Members) -> Result<Message, WireError> {
    let kind = kind_of(&w.kind).ok_or_else(|| WireError::LocalType(w.kind.clone()))?;
    let to = node(&w.to, members)?;
    if to != members.my_node() {
        return Err(WireError::NotForMe {
            to: w.to,
            me: members.me().to_owned(),
        });
    }
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = node(&w.from, members)?;
    m.to = to;
    m.term = w.term;
    m.log_term = w.log_term;
    m.index = w.index;
    m.commit = w.commit;
    m.commit_term = w.commit_term;
    m.request_snapshot = w.request_snapshot;
    m.reject = w.reject;
    m.reject_hint = w.reject_hint;
    m.context = Bytes::from(w.context);
    m.priority = w.priority;
    let entries = w
        .entries
        .into_iter()
        .map(|e| {
            let mut entry = Entry::default();
            entry.set_entry_type(EntryType::EntryNormal);
            entry.index = e.index;
            entry.term = e.term;
            entry.context = Bytes::from(e.context);
            if let Some(op) = e.op {
                check_op(op.get()).map_err(|reason| WireError::BadEntry {
                    index: e.index,
                    reason,
                })?;
                entry.data = Bytes::from(String::from(Box::<str>::from(op)));
            }
            Ok(entry)
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    // raft-rs trusts an append's entries to follow its index in order;
    // one that does not would be filed in the wrong places.
    if kind == MessageType::MsgAppend {
        let bad = || WireError::BadEntries {
            index: m.index,
            term: m.term,
        };
        let (mut next, mut term) = (m.index.checked_add(1).ok_or_else(bad)?, m.log_term);
        for entry in &entries {
            if entry.index != next || entry.term < term || entry.term > m.term {
                return Err(bad());
            }
            next = entry.index.checked_add(1).ok_or_else(bad)?;
            term = entry.term;
        }
    }
    m.set_entries(entries.into());
    if let Some(s) = w.snapshot {
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = s.index;
        meta.term = s.term;
        let voters = s
            .members
            .iter()
            .map(|id| node(id, members))
            .collect::<Result<Vec<_>, _>>()?;
        meta.set_conf_state(ConfState::from((voters, vec![])));
        m.set_snapshot(snapshot);
    }
    Ok(m)
}

/// Checks that an entry's payload is an operation the state machine can
/// apply, by the same rules as a write-ahead log record.
pub fn check_op(json: &str) -> Result<(), String> {
    crate::storage::wal::parse_record(json.as_bytes()).map(|_: Op<'_>| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(me: &str) -> Members {
        Members::new(me, &[":8001".into(), ":8002".into(), ":8003".into()]).unwrap()
    }

    #[test]
    fn messages_round_trip_with_ids_on_the_wire() {
        let leader = members(":8001");
        let follower = members(":8002");
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 1;
        m.to = 2;
        m.term = 3;
        m.log_term = 2;
        m.index = 7;
        m.commit = 6;
        let e = Entry {
            index: 8,
            term: 3,
            data: Bytes::from_static(br#"{"op":"set","key":"k","value":"v \"q\""}"#),
            ..Default::default()
        };
        let empty = Entry {
            index: 9,
            term: 3,
            ..Default::default()
        };
        m.set_entries(vec![e, empty].into());
        let body = encode(std::slice::from_ref(&m), &leader).unwrap();
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(
            text.contains(r#""from":"127.0.0.1:8001","to":"127.0.0.1:8002""#),
            "{text}"
        );
        assert!(text.contains(r#""op":{"op":"set""#), "{text}");
        let back = decode(&body, &follower).unwrap();
        assert_eq!(back, vec![m]);
        let err = decode(&body, &members(":8003")).unwrap_err();
        assert!(matches!(err, WireError::NotForMe { .. }), "{err}");
    }

    #[test]
    fn entries_with_invalid_operations_are_refused() {
        let body =
            br#"[{"type":"append-entries","from":"127.0.0.1:8001","to":"127.0.0.1:8002","term":1,
            "entries":[{"index":1,"term":1,"op":{"op":"set","key":"a b","value":"v"}}]}]"#;
        let err = decode(body, &members(":8002")).unwrap_err();
        assert!(err.to_string().contains("entry 1"), "{err}");
        let local = br#"[{"type":"hup","from":"127.0.0.1:8001","to":"127.0.0.1:8002","term":1}]"#;
        assert!(decode(local, &members(":8002")).is_err());
        let gap =
            br#"[{"type":"append-entries","from":"127.0.0.1:8001","to":"127.0.0.1:8002","term":2,
            "index":5,"log-term":1,"entries":[{"index":6,"term":2},{"index":8,"term":2}]}]"#;
        let err = decode(gap, &members(":8002")).unwrap_err();
        assert!(matches!(err, WireError::BadEntries { .. }), "{err}");
        let future_term =
            br#"[{"type":"append-entries","from":"127.0.0.1:8001","to":"127.0.0.1:8002","term":2,
            "index":5,"log-term":1,"entries":[{"index":6,"term":3}]}]"#;
        assert!(decode(future_term, &members(":8002")).is_err());
    }
}
