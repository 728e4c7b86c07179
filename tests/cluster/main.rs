//! SPEC §6 (cluster mode: replication on Raft) against the real binary:
//! 3- and 5-member clusters of `kvs serve` processes on loopback ports,
//! started in both published forms, crashed, partitioned and restarted,
//! and judged only through what an outside client sees (`/cluster/info`,
//! `/kv`, exit codes, the data directory).

#[path = "../common/mod.rs"]
mod common;
mod fixture;

mod clstr_env;
mod compaction;
mod durability;
mod election;
mod handoff;
mod linearizable;
mod mode;
mod offline;
mod partition;
mod redirect;
mod security;
mod shutdown;
