//! Cluster mode (SPEC §6): every write replicated through Raft.
//!
//! Consensus is tikv's raft-rs; this folder gives it what it asks for and
//! never implements Raft itself. `members` (IDs and engine node numbers),
//! `wire` (the engine's messages as JSON), `network` (posting them to
//! peers), `partition` (the test partition filter), `log_store` (the Raft
//! log, term and vote on disk), `state_machine` (applying entries to the
//! store), `node` (the loop that drives the engine, and its handle) and
//! `logger` (the engine's log lines into ours).

pub mod log_store;
pub mod logger;
pub mod members;
pub mod network;
pub mod node;
pub mod partition;
pub mod state_machine;
pub mod wire;
