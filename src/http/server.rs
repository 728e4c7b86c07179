//! Accepts connections, serves the API on each, and drains them at shutdown.
//!
//! Owns the listener and the lifetime of every connection. The caller hands
//! [`run`] the future that starts shutdown and the one that ends the wait
//! for requests in flight (as in tokio's mini-redis), so this module never
//! looks at signals, and never saves: when `run` returns, no request is
//! being served, and the caller owns what happens to the data.
//!
//! It drives hyper directly with warp's service instead of `warp::serve`
//! because warp's graceful shutdown waits forever for a client that stalls
//! mid-request, and offers no header-read timeout or buffer limit. Each
//! connection's stream is, from the socket up: TLS when configured (its
//! handshake bounded by the head timeout), the slow-client deadlines, and
//! the Content-Type fix for hyper's own error answers.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::http::canned::WithContentType;
use crate::http::deadlines::{self, Deadlines, Phase};
use crate::http::gate::Gate;
use crate::http::routes::{self, Api, Backend};
use crate::security::Security;
use crate::security::token::Token;
use crate::storage::store::Store;

/// hyper's own head timer, which runs from the end of a response to the
/// end of the next head. `Deadlines` enforces the SPEC's two limits inside
/// it; this is only a backstop, a little longer than both together.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(45);

/// The most a connection buffers while reading a request line and headers.
/// Larger requests get 431 or 414 and the connection is closed, so a
/// hostile client costs at most this much memory per connection.
const MAX_HEADER_BUFFER: usize = 64 * 1024;

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bodies of PUT requests above this size are refused with 413.
    pub max_value_bytes: u64,
    /// How long to wait for requests in flight once shutdown starts.
    pub shutdown_timeout: Duration,
    /// The token and TLS the port enforces.
    pub security: Security,
}

/// How the drain at shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection finished its request and closed.
    Complete,
    /// `--shutdown-timeout` passed with connections still open.
    TimedOut,
    /// A second signal ended the wait.
    Interrupted,
}

/// Serves `store` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for requests in flight to finish, for at most
/// `config.shutdown_timeout` or until `stop_waiting` resolves.
///
/// Connections still open when it returns are left to be dropped with the
/// runtime; their requests were not acknowledged.
pub async fn run(
    listener: TcpListener,
    store: Arc<Store>,
    backend: Backend,
    config: &Config,
    shutdown: impl Future<Output = ()>,
    stop_waiting: impl Future<Output = ()>,
) -> Drain {
    let service = warp::service(routes::routes(Api {
        store,
        backend,
        max_value_bytes: config.max_value_bytes,
        scheme: config.security.scheme(),
    }));
    let token = config.security.token.clone();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BUFFER)
        // max_buf_size alone is a soft bound (the buffer may grow past it
        // before the check); this makes 64 KiB the limit on the head itself.
        .max_header_size(MAX_HEADER_BUFFER);
    let graceful = GracefulShutdown::new();

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Responses are small and written whole: waiting to coalesce them
        // only adds latency.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        let token = token.clone();
        let watcher = graceful.watcher();
        let http = http.clone();
        match &config.security.tls {
            None => {
                tokio::spawn(serve_connection(http, watcher, stream, service, token));
            }
            Some(tls) => {
                let acceptor = tls.acceptor.clone();
                tokio::spawn(async move {
                    // A client that never finishes its handshake is a slow
                    // client too.
                    match tokio::time::timeout(deadlines::HEAD_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(http, watcher, stream, service, token).await
                        }
                        Ok(Err(e)) => debug!("TLS handshake failed: {e}"),
                        Err(_) => debug!("TLS handshake not complete after 10 s; closing"),
                    }
                });
            }
        }
    }
    // Closing the listener refuses new connections from here on.
    drop(listener);

    let open = graceful.count();
    info!(
        "shutdown begun: no longer accepting connections; waiting up to {} for {open} open connection(s)",
        humantime::format_duration(config.shutdown_timeout)
    );
    let started = Instant::now();
    // Each watched connection finishes the request it is serving, then
    // closes; idle keep-alive connections close at once.
    let drain = tokio::select! {
        () = graceful.shutdown() => Drain::Complete,
        () = tokio::time::sleep(config.shutdown_timeout) => Drain::TimedOut,
        () = stop_waiting => Drain::Interrupted,
    };
    let waited = started.elapsed().as_millis();
    match drain {
        Drain::Complete => info!("all connections drained in {waited} ms"),
        Drain::TimedOut => warn!(
            "gave up waiting for connections after {waited} ms (--shutdown-timeout); requests still in flight were not acknowledged"
        ),
        Drain::Interrupted => warn!(
            "second signal: stopped waiting for connections after {waited} ms; requests still in flight were not acknowledged"
        ),
    }
    drain
}

/// Serves one connection until it closes, or until shutdown has let its
/// request in flight finish.
async fn serve_connection<S, Svc>(
    http: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    stream: S,
    service: Svc,
    token: Option<Arc<Token>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
        > + Send
        + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let phase = Arc::new(Phase::default());
    let stream = TokioIo::new(WithContentType::new(Deadlines::new(
        stream,
        Arc::clone(&phase),
    )));
    let connection = http.serve_connection(stream, Gate::new(service, phase, token));
    if let Err(e) = watcher.watch(connection).await {
        // Clients that vanish, stall or send garbage are routine.
        debug!("connection ended with an error: {e}");
    }
}

/// Keeps accepting after a failed accept. A peer that gave up before we
/// accepted is routine; anything else (most often running out of file
/// descriptors) is waited out briefly, as connections close and free some,
/// rather than spinning on the error.
async fn accept_failed(e: io::Error) {
    match e.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused => debug!("accept failed: {e}"),
        _ => {
            warn!("cannot accept a connection: {e}; retrying in 100 ms");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
