//! Cluster mode (SPEC §6): every write replicated through Raft.
//!
//! Consensus is tikv's raft-rs; this folder gives it what it asks for and
//! never implements Raft itself. `members` (IDs and engine node numbers),
//! `wire` (the engine's messages as JSON), `network` (posting them to
//! peers), `partition` (the test partition filter), `log_store` (the Raft
//! log, term and vote on disk), `state_machine` (applying entries to the
//! store), `node` (a member's handle, as the HTTP layer sees it),
//! `raft_loop` (the thread that drives the engine), `compaction` (trimming
//! the log), `transfer` (receiving a leader's snapshot) and `logger` (the
//! engine's log lines into ours).

pub mod compaction;
pub mod log_store;
pub mod logger;
pub mod members;
pub mod network;
pub mod node;
pub mod partition;
pub mod raft_loop;
pub mod state_machine;
pub mod transfer;
pub mod wire;
