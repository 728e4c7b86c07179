//! `kvs serve`: start, recover, serve, drain, save, exit.
//!
//! Owns the order of a server's life (SPEC §3 and the log protocol in
//! `wal`): lock the directory, load the data file and replay the logs,
//! start the log writer, listen, serve until a signal, drain, stop the
//! writer, save atomically, remove the logs. It must never parse a file
//! format (that is `snapshot` and `wal`) or answer a request (that is
//! `routes`); and the save runs on this thread after the runtime has
//! stopped serving, never on a tokio worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cli::ServeArgs;
use crate::error::Error;
use crate::http::server::{self, Config};
use crate::shutdown::Signals;
use crate::storage::datadir::{Layout, Locked};
use crate::storage::snapshot;
use crate::storage::store::{self, Store};
use crate::storage::wal::{self, TornTail, Writer};

pub fn run(args: ServeArgs, signals: Signals) -> Result<(), Error> {
    info!(
        "kvs {} starting (pid {}), working directory {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        args.dir.path.display()
    );
    let dir = Locked::open(&args.dir.path)?;
    if dir.removed_stale_temp {
        warn!("removed a temp file left by an interrupted save; the data file itself was complete");
    }
    raise_open_files_limit();
    let layout = dir.layout().clone();

    let store = Arc::new(recover(&layout)?);
    info!(
        "write-ahead log: {}, fsync {}, checkpoint every {} bytes",
        layout.wal().display(),
        match args.fsync {
            wal::FsyncPolicy::Always => "always (before each acknowledgement)",
            wal::FsyncPolicy::Periodic => "periodic (at least once a second)",
        },
        args.wal_max_bytes
    );
    let options = wal::Options {
        fsync: args.fsync,
        max_bytes: args.wal_max_bytes,
    };
    let (wal, writer) =
        Writer::start(layout.clone(), Arc::clone(&store), options).map_err(|error| {
            Error::Startup {
                what: "opening the write-ahead log",
                error,
            }
        })?;
    let wal = Arc::new(wal);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::Startup {
            what: "starting the async runtime",
            error,
        })?;
    let config = Config {
        max_value_bytes: args.max_value_bytes,
        shutdown_timeout: args.shutdown_timeout,
    };
    let addr = SocketAddr::new(args.bind, args.port);
    let served = runtime.block_on(async {
        let listener = listen(addr).map_err(|error| Error::Listen { addr, error })?;
        let local = listener.local_addr().unwrap_or(addr);
        info!("listening on {local}");
        server::run(
            listener,
            Arc::clone(&store),
            Arc::clone(&wal),
            &config,
            signals.nth(1),
            signals.nth(2),
        )
        .await;
        Ok::<_, Error>(())
    });
    // Connections that outlived the drain are dropped here, unanswered.
    runtime.shutdown_timeout(Duration::from_millis(100));
    // Writes already queued are logged and applied (they were not
    // acknowledged, but they are not lost either); later ones are refused.
    writer.stop();
    served?;

    // The writer has stopped, and it is the store's only writer: what the
    // view holds now is final.
    let started = Instant::now();
    let saved = wal::fold_into_data_file(&layout, store.view().sorted())?;
    info!(
        "saved {} keys ({} bytes) to {} in {} ms",
        saved.records,
        saved.bytes,
        layout.snapshot().display(),
        started.elapsed().as_millis()
    );
    info!("exiting");
    Ok(())
}

/// Loads the data file and replays the logs over it, cutting a torn last
/// record off. A checkpoint that a crash interrupted (`wal.prev.jsonl`
/// still there) is completed before serving.
fn recover(layout: &Layout) -> Result<Store, Error> {
    let started = Instant::now();
    let mut builder = store::Builder::new();
    let read = snapshot::read_file(&layout.snapshot(), |key, value| builder.push(key, value))
        .map_err(Error::Load)?;
    let store = builder.build();
    let records = wal::replay_all(layout, &store, TornTail::Truncate).map_err(Error::Log)?;
    info!(
        "loaded {} keys ({} bytes) from {} and {records} log records in {} ms",
        store.len(),
        read.bytes,
        layout.snapshot().display(),
        started.elapsed().as_millis()
    );
    if layout.wal_prev().exists() {
        info!("completing a checkpoint interrupted by a crash");
        wal::fold_into_data_file(layout, store.view().sorted())?;
    }
    Ok(store)
}

/// Binds the listening socket with a deep accept queue: the default of 128
/// (std's and so tokio's) overflows when thousands of clients connect at
/// once, and each overflow costs a client a one-second SYN retransmit.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    /// The kernel caps this at net.core.somaxconn.
    const BACKLOG: u32 = 4096;
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std does: a restart may bind while old connections linger in
    // TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Raises the open-files soft limit to the hard limit, so that the server
/// can hold as many connections as the system allows, and says what the
/// limit now is.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!("open files limit: {limit}"),
        Err(e) => warn!(
            "cannot raise the open files limit: {e}; fewer concurrent connections may be possible"
        ),
    }
}
