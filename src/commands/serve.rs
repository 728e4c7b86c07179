//! `kvs serve`: start, recover, serve, drain, save, exit; as a single node
//! or as a cluster member.
//!
//! Owns the order of a server's life (SPEC §3 and the log protocol in
//! `wal`): lock the directory, load the data file and replay the logs,
//! start the log writer, listen, serve until a signal, drain, stop the
//! writer, save atomically, remove the logs. It must never parse a file
//! format (that is `snapshot` and `wal`) or answer a request (that is
//! `routes`); and the save runs on this thread after the runtime has
//! stopped serving, never on a tokio worker.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cli::{DEFAULT_PORT, ServeArgs};
use crate::cluster::log_store::LogStore;
use crate::cluster::members::{self, Members};
use crate::cluster::node::{Node, Start};
use crate::cluster::partition::Partition;
use crate::cluster::state_machine;
use crate::error::Error;
use crate::http::routes::Backend;
use crate::http::server::{self, Config};
use crate::security::{self, Security};
use crate::shutdown::Signals;
use crate::storage::datadir::{Layout, Locked};
use crate::storage::snapshot;
use crate::storage::store::{self, Store};
use crate::storage::wal::{self, TornTail, Writer};

pub fn run(args: ServeArgs, signals: Signals) -> Result<(), Error> {
    let addr = listen_addr(&args)?;
    let members = cluster_members(&args, addr)?;
    info!(
        "kvs {} starting (pid {}), working directory {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        args.dir.path.display()
    );
    // Before the lock is taken, so a refused start changes nothing at all.
    security::install_crypto_provider();
    let security = Security::load(&args, addr.ip(), members.is_some())?;
    check_mode(&Layout::new(&args.dir.path), members.is_some())?;
    let dir = Locked::open(&args.dir.path)?;
    if dir.removed_stale_temp {
        warn!(
            "removed a temp file left by an interrupted save; the file it was replacing was complete"
        );
    }
    raise_open_files_limit();
    let config = Config {
        max_value_bytes: args.max_value_bytes,
        shutdown_timeout: args.shutdown_timeout,
        security,
    };
    match members {
        None => run_single(&args, dir.layout(), addr, &config, signals),
        Some(members) => run_member(&args, dir.layout(), members, addr, &config, signals),
    }
}

/// A single node: the write-ahead log and the data file.
fn run_single(
    args: &ServeArgs,
    layout: &Layout,
    addr: SocketAddr,
    config: &Config,
    signals: Signals,
) -> Result<(), Error> {
    let store = Arc::new(recover(layout)?);
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
    let runtime = build_runtime()?;
    let backend = Backend::Single(Arc::new(wal));
    let served = serve(
        &runtime,
        addr,
        Arc::clone(&store),
        backend,
        config,
        signals.nth(1),
        &signals,
    );
    // Connections that outlived the drain are dropped here, unanswered.
    runtime.shutdown_timeout(Duration::from_millis(100));
    // Writes already queued are logged and applied (they were not
    // acknowledged, but they are not lost either); later ones are refused.
    writer.stop();
    served?;

    // The writer has stopped, and it is the store's only writer: what the
    // view holds now is final.
    let started = Instant::now();
    let saved = wal::fold_into_data_file(layout, store.view().sorted())?;
    info!(
        "saved {} keys ({} bytes) to {} in {} ms",
        saved.records,
        saved.bytes,
        layout.snapshot().display(),
        started.elapsed().as_millis()
    );
    info!("exiting");
    leave_to_the_os(store);
    Ok(())
}

/// Skips freeing the store: the process is about to exit, the OS takes the
/// memory back at once, and freeing a million pairs one by one would only
/// delay the exit (by a quarter of a second for a million keys).
fn leave_to_the_os(store: Arc<Store>) {
    std::mem::forget(store);
}

/// A cluster member: the Raft log, and the store as its state machine.
fn run_member(
    args: &ServeArgs,
    layout: &Layout,
    members: Members,
    addr: SocketAddr,
    config: &Config,
    signals: Signals,
) -> Result<(), Error> {
    let members = Arc::new(members);
    let numbers: Vec<String> = members
        .nodes()
        .map(|n| format!("{n}={}", members.id_of(n).unwrap_or("?")))
        .collect();
    info!(
        "cluster member {} (node {}) of {} members: {}",
        members.me(),
        members.my_node(),
        members.len(),
        numbers.join(", ")
    );
    let log = LogStore::open(layout, Arc::clone(&members)).map_err(Error::Cluster)?;
    let (store, applied) = state_machine::recover(layout, &log).map_err(Error::Load)?;
    let store = Arc::new(store);
    let partition = Arc::new(Partition::load(layout, &members).map_err(Error::Cluster)?);
    let runtime = build_runtime()?;
    let start = Start {
        members,
        partition,
        log,
        store: Arc::clone(&store),
        applied,
        commit_timeout: args.commit_timeout,
        layout: layout.clone(),
        max_log_bytes: args.wal_max_bytes,
        security: config.security.clone(),
    };
    let (node, running) = Node::start(start, runtime.handle()).map_err(|error| Error::Startup {
        what: "starting the Raft node",
        error,
    })?;
    // At the first signal a leader first hands its leadership over, while
    // it still answers requests (with redirects to the new leader), so a
    // rolling restart costs clients no election timeout.
    let hand_off = {
        let node = node.clone();
        let (first, second) = (signals.nth(1), signals.nth(2));
        async move {
            first.await;
            // A second signal ends the wait here too, as it ends a drain.
            tokio::select! {
                () = node.hand_off(HAND_OFF_LIMIT) => {}
                () = second => {}
            }
        }
    };
    let served = serve(
        &runtime,
        addr,
        Arc::clone(&store),
        Backend::Cluster(node),
        config,
        hand_off,
        &signals,
    );
    runtime.shutdown_timeout(Duration::from_millis(100));
    // Every entry and vote was synced as the loop handled it; stopping it
    // only ends its last round.
    running.stop();
    served?;
    info!("exiting");
    leave_to_the_os(store);
    Ok(())
}

/// How long a leader's hand-off at shutdown may take: the transfer itself
/// (which the engine abandons after an election timeout), then the commit
/// of the writes it had proposed, by the new leader.
const HAND_OFF_LIMIT: Duration = Duration::from_secs(3);

fn build_runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::Startup {
            what: "starting the async runtime",
            error,
        })
}

/// Listens on `addr` and serves until `shutdown` resolves, then drains (a
/// second signal ends the wait).
fn serve(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    store: Arc<Store>,
    backend: Backend,
    config: &Config,
    shutdown: impl std::future::Future<Output = ()>,
    signals: &Signals,
) -> Result<(), Error> {
    runtime.block_on(async {
        let listener = listen(addr).map_err(|error| Error::Listen { addr, error })?;
        let local = listener.local_addr().unwrap_or(addr);
        info!("listening on {local}");
        server::run(listener, store, backend, config, shutdown, signals.nth(2)).await;
        Ok(())
    })
}

/// Where to listen: `--bind` and `--port`, each falling back to the host
/// and port of `--addr` (so a clstr node given only `ADDR` listens there),
/// then to 127.0.0.1 and 8001.
fn listen_addr(args: &ServeArgs) -> Result<SocketAddr, Error> {
    let from_addr = match &args.addr {
        None => None,
        Some(addr) => {
            let id = members::normalize(addr, "--addr")?;
            let resolved = id
                .to_socket_addrs()
                .ok()
                .and_then(|mut all| all.next())
                .ok_or_else(|| Error::Resolve { addr: id.clone() })?;
            Some(resolved)
        }
    };
    let ip = args
        .bind
        .or(from_addr.map(|a| a.ip()))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let port = args
        .port
        .or(from_addr.map(|a| a.port()))
        .unwrap_or(DEFAULT_PORT);
    Ok(SocketAddr::new(ip, port))
}

/// The cluster this member belongs to, or `None` for a single node.
fn cluster_members(args: &ServeArgs, addr: SocketAddr) -> Result<Option<Members>, Error> {
    let peers = args
        .peers
        .as_deref()
        .map(members::split_list)
        .unwrap_or_default();
    if peers.is_empty() {
        return Ok(None);
    }
    let me = match &args.addr {
        Some(addr) => members::normalize(addr, "--addr")?,
        None => {
            if addr.port() == 0 {
                return Err(Error::Usage(
                    "--port 0 cannot name a cluster member; give each member a fixed --port (or --addr)"
                        .into(),
                ));
            }
            let id = addr.to_string();
            members::check_routable(&id)?;
            id
        }
    };
    Ok(Some(Members::new(&me, &peers)?))
}

/// Refuses to start a single node on a cluster member's directory, or a
/// member on a single node's: each would misread the other's files.
fn check_mode(layout: &Layout, cluster: bool) -> Result<(), Error> {
    if cluster && layout.holds_single_node_data() {
        return Err(Error::ModeMismatch {
            dir: layout.root().to_owned(),
            holds: "a single-node store (snapshot.jsonl or wal.jsonl, and no cluster.json)",
            fix: "start it without --peers (and PEERS), or give this cluster member an empty --working-dir; nothing was changed",
        });
    }
    if !cluster && layout.is_cluster_member() {
        return Err(Error::ModeMismatch {
            dir: layout.root().to_owned(),
            holds: "a cluster member's data (cluster.json)",
            fix: "start it with --peers (or PEERS) naming the same members, or choose another --working-dir; nothing was changed",
        });
    }
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
