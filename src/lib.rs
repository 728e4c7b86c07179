//! kvs: an HTTP key-value server whose data survives restarts, and the
//! offline tools that operate its data file.
//!
//! The binary (`main.rs`) is a thin shell over these modules. They form a
//! library only so that tests can reach what the binary is built from (the
//! clap definition that completions and man pages are generated from); it
//! is not a stable API.

pub mod cli;
pub mod completions;
pub mod datadir;
pub mod dump;
pub mod error;
pub mod fault;
pub mod get;
pub mod offline;
pub mod restore;
pub mod routes;
pub mod serve;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod store;
pub mod validate;
pub mod wal;
