//! Everything that holds or persists the data: `store` (the in-memory map),
//! `validate` (the key and value rules), `snapshot` (the data-file format),
//! `wal` (the write-ahead log and checkpoints), `datadir` (the directory's
//! layout and LOCK) and `fault` (crash points and injected I/O errors for tests). Nothing here
//! knows about HTTP or the command line.

pub mod datadir;
pub mod fault;
pub mod snapshot;
pub mod store;
pub mod validate;
pub mod wal;
