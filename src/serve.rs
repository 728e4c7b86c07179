//! `kvs serve`: start, serve, drain, save, exit.
//!
//! Owns the order of a server's life (SPEC §3): lock the directory, load
//! the data file, listen, serve until a signal, drain, freeze the store,
//! save atomically. It must never parse the data format (that is
//! `snapshot`) or answer a request (that is `routes`); and the save runs on
//! this thread after the runtime has stopped serving, never on a tokio
//! worker.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cli::ServeArgs;
use crate::datadir::Locked;
use crate::error::Error;
use crate::server::{self, Config};
use crate::shutdown::Signals;
use crate::snapshot::{self, ReadSummary};
use crate::store::{self, Store};

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

    let data_file = dir.layout().snapshot();
    let started = Instant::now();
    let (store, read) = load(&data_file)?;
    let store = Arc::new(store);
    info!(
        "loaded {} keys ({} bytes) from {} in {} ms",
        store.len(),
        read.bytes,
        data_file.display(),
        started.elapsed().as_millis()
    );

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
    runtime.block_on(async {
        let listener = listen(addr).map_err(|error| Error::Listen { addr, error })?;
        let local = listener.local_addr().unwrap_or(addr);
        info!("listening on {local}");
        server::run(
            listener,
            Arc::clone(&store),
            &config,
            signals.nth(1),
            signals.nth(2),
        )
        .await;
        Ok::<_, Error>(())
    })?;
    // Connections that outlived the drain are dropped here, unanswered.
    runtime.shutdown_timeout(Duration::from_millis(100));

    store.freeze();
    let started = Instant::now();
    let view = store.view();
    let saved = snapshot::write_atomic(&data_file, view.sorted())?;
    info!(
        "saved {} keys ({} bytes) to {} in {} ms",
        saved.records,
        saved.bytes,
        data_file.display(),
        started.elapsed().as_millis()
    );
    info!("exiting");
    Ok(())
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

/// Loads a data file into a store, as the server does at start; the offline
/// tools load through here too, so they see exactly what a server would.
pub fn load(data_file: &Path) -> Result<(Store, ReadSummary), Error> {
    let mut builder = store::Builder::new();
    let read = snapshot::read_file(data_file, |key, value| builder.push(key, value))
        .map_err(Error::Load)?;
    Ok((builder.build(), read))
}
