//! What the offline tools (`get`, `dump`, `restore`) share: reading a
//! working directory's data without the server's write path.
//!
//! Owns the notice that a live server's data may be newer than the file,
//! and loading the data file into sorted pairs. It must never write: the
//! only writer among the tools is `restore`, through `snapshot`.

use crate::datadir::ReadOnly;
use crate::error::Error;
use crate::snapshot;
use crate::store::{Builder, Sorted};

/// Opens `dir` read-only and, if a server holds it, says on stderr that
/// what follows is the last saved state.
pub fn open_read_only(dir: &std::path::Path) -> Result<ReadOnly, Error> {
    let opened = ReadOnly::open(dir)?;
    if let Some(pid) = opened.writer_pid {
        eprintln!(
            "kvs: note: a kvs server (pid {pid}) is using {}; this is the data as it was last saved, \
             without the writes made since that server started",
            dir.display()
        );
    }
    Ok(opened)
}

/// The pairs of a data file whose key starts with `prefix`, sorted, held
/// once in memory.
pub fn load_sorted(dir: &ReadOnly, prefix: &str) -> Result<Sorted, Error> {
    let mut builder = Builder::new();
    snapshot::read_file(&dir.layout().snapshot(), |key, value| {
        if key.starts_with(prefix) {
            builder.push(key, value);
        }
    })
    .map_err(Error::Load)?;
    Ok(builder.into_sorted())
}
