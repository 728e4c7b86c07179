//! kvs: an HTTP key-value server whose data survives restarts, and the
//! offline tools that operate its data file.
//!
//! The binary (`main.rs`) is a thin shell over these modules. They form a
//! library only so that tests can reach what the binary is built from (the
//! clap definition that completions and man pages are generated from); it
//! is not a stable API.
//!
//! The folders are the layers, and imports only point down them (`cluster`,
//! a member's Raft node, sits between `http` and `storage`):
//! `commands` (one module per subcommand) use `http` (the API and its
//! server) and `storage` (the in-memory map, the data-file format, the
//! write-ahead log and the directory's layout); `storage` uses nothing
//! above it. `security` (the token, TLS) serves `http` and `cluster`;
//! `metrics` is a leaf every layer records into.

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod error;
pub mod http;
pub mod metrics;
pub mod security;
pub mod shutdown;
pub mod storage;
