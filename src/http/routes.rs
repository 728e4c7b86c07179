//! The HTTP API of the SPEC, §2, as one warp filter.
//!
//! Owns the mapping from requests to store operations and the exact status,
//! body and headers of every response. Routing is done by hand after one
//! warp filter has extracted the request's parts, rather than by chaining a
//! warp filter per route: warp's rejection system would otherwise decide
//! the body and status of errors (405 instead of 404 for unknown paths,
//! 411/413 carrying a sibling's 405, its own error texts), and the SPEC
//! fixes those to the byte. This module must never touch files or block:
//! it runs on tokio's worker threads.
//!
//! In cluster mode (SPEC §6) the same routes answer, with writes and reads
//! going through the member's Raft node instead of the write-ahead log;
//! this module knows of Raft only "not the leader" (307 or 503) and
//! "outcome unknown" (503). It also serves `/cluster/*` and takes the
//! members' `/raft/*` messages; in single-node mode those are 404.
//! `/metrics` answers in both modes. The token is checked before a request
//! gets here (`gate`).

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use warp::Filter;
use warp::http::header::{
    ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};

use crate::cluster::node::{Leadership, Node, ReceiveError, Refused};
use crate::cluster::partition::PartitionFile;
use crate::metrics::{self, RaftState, RouteLabel};
use crate::storage::store::Store;
use crate::storage::validate::{self, ValueError};
use crate::storage::wal::{Op, Wal, WriteError};

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const APPLICATION_JSON: &str = "application/json";
const POST_METHOD: &str = "POST";
const INFO_METHODS: &str = "GET, HEAD";

/// The largest body a member accepts on `/raft/*` or `/cluster/*`.
const MAX_CLUSTER_BODY: u64 = 256 * 1024 * 1024;

/// What writes (and, in a cluster, reads) go through.
#[derive(Clone)]
pub enum Backend {
    /// A single node: writes are logged by the write-ahead log's writer,
    /// reads come straight from the store.
    Single(Arc<Wal>),
    /// A cluster member: both go through its Raft node.
    Cluster(Node),
}
const KV_METHODS: &str = "GET, HEAD, PUT, DELETE";
const HEALTH_METHODS: &str = "GET, HEAD";
const CLEAR_METHODS: &str = "DELETE";

/// What every request is answered with: the store, and where writes go.
/// (The token is checked before a request gets here, by `gate`.)
pub struct Api {
    /// Reads are answered from it.
    pub store: Arc<Store>,
    /// Writes (and a member's reads) go through it.
    pub backend: Backend,
    /// PUT bodies above this size get 413.
    pub max_value_bytes: u64,
    /// `http` or `https`: what redirects to the leader begin with.
    pub scheme: &'static str,
}

/// The whole API. Never rejects: every request gets a response from here.
///
/// Reads are answered from the store; writes go through the backend, which
/// answers once they are durable and applied. Every answer is counted in
/// the metrics.
pub fn routes(
    api: Api,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    let api = Arc::new(api);
    // The query string matters only to a redirect, which must keep it.
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  content_length,
                  body| {
                let api = Arc::clone(&api);
                async move {
                    let started = Instant::now();
                    let route = route(path.as_str());
                    let label = route.label();
                    let request = Request {
                        method,
                        path: path.as_str(),
                        query: &query,
                        content_length,
                        max_value_bytes: api.max_value_bytes,
                        scheme: api.scheme,
                    };
                    let response = handle(&api.store, &api.backend, route, &request, body).await;
                    let took = started.elapsed();
                    let status = response.status().as_u16();
                    metrics::get().request(request.method.as_str(), label, status, took);
                    // Never headers: they may carry the token.
                    tracing::debug!(
                        "{} {} {status} in {} µs",
                        request.method,
                        request.path,
                        took.as_micros()
                    );
                    response
                }
            },
        )
        // Unreachable in practice (hyper refuses a malformed Content-Length
        // before warp sees it, and nothing else here can reject), but if a
        // rejection ever happens it must still be a plain-text answer.
        .recover(|_| async { Ok::<_, Infallible>(text(StatusCode::BAD_REQUEST, "bad request\n")) })
}

/// The answer to a request without the token (see `gate`).
pub fn unauthorized() -> Response {
    let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// What `handle` needs of a request, besides its body.
struct Request<'a> {
    method: Method,
    /// The raw path, still percent-encoded.
    path: &'a str,
    /// The raw query string, without `?`; empty when there is none.
    query: &'a str,
    content_length: Option<u64>,
    max_value_bytes: u64,
    /// `http` or `https`, for redirects.
    scheme: &'static str,
}

/// The paths the API knows.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Health,
    Clear,
    /// `/kv/{key}`, with the key still percent-encoded.
    Kv(&'a str),
    ClusterInfo,
    ClusterPartition,
    ClusterHeal,
    /// `/raft/...`: messages between members.
    Raft,
    /// `/raft/install-snapshot`: a snapshot message, once its data came.
    RaftSnapshot,
    /// `/raft/snapshot-chunk`: a piece of a snapshot's data.
    RaftChunk,
    Metrics,
    Unknown,
}

impl Route<'_> {
    /// How the metrics count it.
    fn label(&self) -> RouteLabel {
        match self {
            Route::Health => RouteLabel::Health,
            Route::Clear => RouteLabel::Clear,
            Route::Kv(_) => RouteLabel::Kv,
            Route::ClusterInfo => RouteLabel::ClusterInfo,
            Route::ClusterPartition => RouteLabel::ClusterPartition,
            Route::ClusterHeal => RouteLabel::ClusterHeal,
            Route::Raft | Route::RaftSnapshot | Route::RaftChunk => RouteLabel::Raft,
            Route::Metrics => RouteLabel::Metrics,
            Route::Unknown => RouteLabel::Unknown,
        }
    }
}

/// How the metrics count a request for `path`.
pub fn route_label(path: &str) -> RouteLabel {
    route(path).label()
}

fn route(path: &str) -> Route<'_> {
    match path {
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        "/clear" => Route::Clear,
        "/cluster/info" => Route::ClusterInfo,
        "/cluster/partition" => Route::ClusterPartition,
        "/cluster/heal" => Route::ClusterHeal,
        "/raft/append-entries" | "/raft/request-vote" | "/raft/message" => Route::Raft,
        "/raft/install-snapshot" => Route::RaftSnapshot,
        "/raft/snapshot-chunk" => Route::RaftChunk,
        _ => match path.strip_prefix("/kv/") {
            Some(raw_key) => Route::Kv(raw_key),
            None => Route::Unknown,
        },
    }
}

async fn handle<B: Buf>(
    store: &Store,
    backend: &Backend,
    route: Route<'_>,
    request: &Request<'_>,
    body: impl Stream<Item = Result<B, warp::Error>>,
) -> Response {
    let method = &request.method;
    let node = match backend {
        Backend::Single(_) => None,
        Backend::Cluster(node) => Some(node),
    };
    // Asked once: a second look could see a leader change in between.
    let follows = match (&route, node) {
        (Route::Clear | Route::Kv(_), Some(node)) => match node.leadership() {
            Leadership::Other(leader) => Some(leader),
            Leadership::Me => None,
        },
        _ => None,
    };
    if let Some(leader) = follows {
        // Followers and candidates send every data request to the leader,
        // as it is: the leader validates it.
        return refused(Refused::NotLeader(leader), request, "");
    }
    match (route, node) {
        (Route::Health, _) => match *method {
            Method::GET | Method::HEAD => text(StatusCode::OK, "ok\n"),
            _ => method_not_allowed(HEALTH_METHODS),
        },
        (Route::Metrics, _) => match *method {
            Method::GET | Method::HEAD => exposition(store, node),
            _ => method_not_allowed(INFO_METHODS),
        },
        (Route::Unknown, _)
        | (
            Route::ClusterInfo
            | Route::ClusterPartition
            | Route::ClusterHeal
            | Route::Raft
            | Route::RaftSnapshot
            | Route::RaftChunk,
            None,
        ) => text(StatusCode::NOT_FOUND, "not found\n"),
        (Route::ClusterInfo, Some(node)) => match *method {
            Method::GET | Method::HEAD => json(StatusCode::OK, &node.info()),
            _ => method_not_allowed(INFO_METHODS),
        },
        (
            Route::ClusterPartition
            | Route::ClusterHeal
            | Route::Raft
            | Route::RaftSnapshot
            | Route::RaftChunk,
            Some(_),
        ) if method != Method::POST => method_not_allowed(POST_METHOD),
        (Route::ClusterPartition, Some(node)) => {
            let bytes = match read_body(request, MAX_CLUSTER_BODY, body).await {
                Ok(bytes) => bytes,
                Err(response) => return response,
            };
            partition(node, &bytes).await
        }
        (Route::ClusterHeal, Some(node)) => {
            let node = node.clone();
            match tokio::task::spawn_blocking(move || node.heal()).await {
                Ok(Ok(())) => text(StatusCode::OK, Bytes::new()),
                Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "heal failed\n"),
            }
        }
        (Route::Raft, Some(node)) => {
            let bytes = match read_body(request, MAX_CLUSTER_BODY, body).await {
                Ok(bytes) => bytes,
                Err(response) => return response,
            };
            received(node.receive(&bytes))
        }
        (Route::RaftSnapshot | Route::RaftChunk, Some(node)) => {
            let bytes = match read_body(request, MAX_CLUSTER_BODY, body).await {
                Ok(bytes) => bytes,
                Err(response) => return response,
            };
            // Both write or read files: not on a worker thread.
            let node = node.clone();
            let chunk = request.path == "/raft/snapshot-chunk";
            let done = tokio::task::spawn_blocking(move || {
                if chunk {
                    node.receive_chunk(&bytes)
                } else {
                    node.receive_snapshot(&bytes)
                }
            })
            .await;
            match done {
                Ok(result) => received(result),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "receiving failed\n"),
            }
        }
        (Route::Clear, _) => match *method {
            Method::DELETE => write(backend, Op::Clear, request).await,
            _ => method_not_allowed(CLEAR_METHODS),
        },
        (Route::Kv(raw_key), _) => {
            // The SPEC's order: the key first, then the method, then the
            // value, so `POST /kv/` is a 400 and `POST /kv/k` a 405.
            let key = match decode_key(raw_key) {
                Ok(key) => key,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            match *method {
                Method::GET | Method::HEAD => {
                    if let Some(node) = node
                        && let Err(refusal) = node.read().await
                    {
                        return refused(refusal, request, "read not confirmed");
                    }
                    read(store, &key, method == Method::HEAD)
                }
                Method::PUT => {
                    let bytes = match read_body(request, request.max_value_bytes, body).await {
                        Ok(bytes) => bytes,
                        Err(response) => return response,
                    };
                    let value = match validate::value_bytes(&bytes) {
                        Ok(value) => value.to_owned(),
                        Err(e) => return value_error(e),
                    };
                    let op = Op::Set {
                        key: Cow::Owned(key.into_owned()),
                        value: Cow::Owned(value),
                    };
                    write(backend, op, request).await
                }
                Method::DELETE => {
                    let op = Op::Delete {
                        key: Cow::Owned(key.into_owned()),
                    };
                    write(backend, op, request).await
                }
                _ => method_not_allowed(KV_METHODS),
            }
        }
    }
}

/// GET or HEAD of one key, from the store.
fn read(store: &Store, key: &str, head: bool) -> Response {
    if head {
        return match store.value_len(key) {
            Some(len) => {
                // What GET would say, without copying the value.
                let mut response = text(StatusCode::OK, Bytes::new());
                response
                    .headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(len));
                response
            }
            None => key_not_found(),
        };
    }
    match store.get(key) {
        Some(value) => text(StatusCode::OK, value),
        None => key_not_found(),
    }
}

/// Makes a write durable through the backend and answers it.
async fn write(backend: &Backend, op: Op<'static>, request: &Request<'_>) -> Response {
    match backend {
        Backend::Single(wal) => written(wal.submit(op).await),
        Backend::Cluster(node) => match node.write(&op).await {
            Ok(()) => text(StatusCode::OK, Bytes::new()),
            Err(refusal) => refused(refusal, request, "write outcome unknown"),
        },
    }
}

/// The answer to a request the cluster did not carry out: a redirect to
/// the leader (keeping path and query, so clients repeat the request
/// there), or a 503 that says why. `unknown` heads the body when the
/// outcome cannot be known.
fn refused(refusal: Refused, request: &Request<'_>, unknown: &str) -> Response {
    match refusal {
        Refused::NotLeader(Some(leader)) => {
            let mut location = format!("{}://{leader}{}", request.scheme, request.path);
            if !request.query.is_empty() {
                location.push('?');
                location.push_str(request.query);
            }
            let mut response = text(StatusCode::TEMPORARY_REDIRECT, Bytes::new());
            match HeaderValue::try_from(location) {
                Ok(location) => {
                    response.headers_mut().insert(LOCATION, location);
                    response
                }
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "no leader\n"),
            }
        }
        Refused::NotLeader(None) => text(StatusCode::SERVICE_UNAVAILABLE, "no leader\n"),
        Refused::Unknown(reason) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{unknown}: {reason}\n"),
        ),
        Refused::ShuttingDown => text(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down\n"),
    }
}

/// The answer to a peer's post under `/raft/`.
fn received(result: Result<(), ReceiveError>) -> Response {
    match result {
        Ok(()) => text(StatusCode::OK, Bytes::new()),
        Err(e @ (ReceiveError::Wire(_) | ReceiveError::BadSnapshot(_))) => {
            text(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
        Err(e @ ReceiveError::OutOfOrder(_)) => text(StatusCode::CONFLICT, format!("{e}\n")),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// `POST /cluster/partition` with `{"peers":[...]}`.
async fn partition(node: &Node, body: &[u8]) -> Response {
    let file: PartitionFile = match serde_json::from_slice(body) {
        Ok(file) => file,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"peers\":[\"HOST:PORT\",...]}}: {e}\n"),
            );
        }
    };
    let node = node.clone();
    match tokio::task::spawn_blocking(move || node.partition(&file.peers)).await {
        Ok(Ok(())) => text(StatusCode::OK, Bytes::new()),
        Ok(Err(e)) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "partition failed\n"),
    }
}

/// Percent-decodes and validates a key from the path. Borrows from the
/// path when nothing needed decoding, which is nearly always.
fn decode_key(raw: &str) -> Result<Cow<'_, str>, validate::KeyError> {
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| validate::KeyError::InvalidCharacters)?;
    validate::key(&key)?;
    Ok(key)
}

/// Reads a body, refusing it as soon as it is known to be larger than
/// `max`: from Content-Length before reading anything, or, for a chunked
/// body, from the first chunk that crosses the limit.
async fn read_body<B: Buf>(
    request: &Request<'_>,
    max: u64,
    body: impl Stream<Item = Result<B, warp::Error>>,
) -> Result<Bytes, Response> {
    if request.content_length.is_some_and(|n| n > max) {
        return Err(value_error(ValueError::TooLarge));
    }
    // Trust Content-Length for the first allocation only up to the limit.
    let capacity = request.content_length.unwrap_or(0).min(max);
    let mut value = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    let mut body = std::pin::pin!(body);
    loop {
        // A body nearly always came with its head: a timer only for one
        // that has not.
        let next = match body.next().now_or_never() {
            Some(next) => next,
            None => tokio::time::timeout(BODY_STALL_TIMEOUT, body.next())
                .await
                .map_err(|_| body_stalled())?,
        };
        let Some(chunk) = next else {
            break;
        };
        let chunk =
            chunk.map_err(|_| text(StatusCode::BAD_REQUEST, "request body could not be read\n"))?;
        if (value.len() + chunk.remaining()) as u64 > max {
            return Err(value_error(ValueError::TooLarge));
        }
        value.put(chunk);
    }
    Ok(value.freeze())
}

/// How long a request body may go without sending a byte: as long as a
/// connection may stay idle (SPEC §7 bounds the head and the idle time;
/// this keeps a body from holding a connection without limit).
const BODY_STALL_TIMEOUT: std::time::Duration = crate::http::deadlines::IDLE_TIMEOUT;

fn body_stalled() -> Response {
    let mut response = text(
        StatusCode::REQUEST_TIMEOUT,
        "request body stalled: no data for 30 s; send the whole body without pausing\n",
    );
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The answer to a write: 200 once it is durable and applied; otherwise
/// it was not applied, so it must not be acknowledged: 503 while shutting
/// down, and 503 with `Retry-After` while a disk error keeps the log
/// closed (writes resume by themselves once it is healed).
fn written(result: Result<(), WriteError>) -> Response {
    let (body, header) = match result {
        Ok(()) => return text(StatusCode::OK, Bytes::new()),
        Err(WriteError::ShuttingDown) => {
            ("server is shutting down\n".into(), (CONNECTION, "close"))
        }
        Err(e @ WriteError::DiskFailed(_)) => (format!("{e}\n"), (RETRY_AFTER, "1")),
    };
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, body);
    response
        .headers_mut()
        .insert(header.0, HeaderValue::from_static(header.1));
    response
}

fn value_error(e: ValueError) -> Response {
    let status = match e {
        ValueError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ValueError::Empty | ValueError::NotUtf8 => StatusCode::BAD_REQUEST,
    };
    text(status, format!("{e}\n"))
}

fn key_not_found() -> Response {
    text(StatusCode::NOT_FOUND, "key not found\n")
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// `GET /metrics`: the Prometheus exposition, with a member's Raft state.
fn exposition(store: &Store, node: Option<&Node>) -> Response {
    let raft = node.map(|node| {
        let info = node.info();
        RaftState {
            term: info.term,
            role: info.role.name(),
            commit_index: info.commit_index,
            applied_index: info.last_applied,
        }
    });
    let mut response = text(StatusCode::OK, metrics::get().encode(store.len(), raft));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}

/// A JSON answer (`/cluster/info`).
fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let mut bytes = serde_json::to_vec(body).expect("the answer always serializes");
    bytes.push(b'\n');
    let mut response = text(status, bytes);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(APPLICATION_JSON));
    response
}

/// Every response is built here, so every one carries the same
/// Content-Type, empty ones included.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = Response::new(body.into().into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_paths() {
        assert_eq!(route("/health"), Route::Health);
        assert_eq!(route("/clear"), Route::Clear);
        assert_eq!(route("/kv/a"), Route::Kv("a"));
        assert_eq!(route("/kv/"), Route::Kv(""));
        assert_eq!(route("/kv"), Route::Unknown);
        assert_eq!(route("/health/"), Route::Unknown);
        assert_eq!(route("/"), Route::Unknown);
    }

    #[test]
    fn decodes_keys_before_validating() {
        assert_eq!(decode_key("a%3Ab").as_deref(), Ok("a:b"));
        assert_eq!(
            decode_key("a%20b"),
            Err(validate::KeyError::InvalidCharacters)
        );
        assert_eq!(
            decode_key("a%2Fb"),
            Err(validate::KeyError::InvalidCharacters)
        );
        assert_eq!(
            decode_key("a/b"),
            Err(validate::KeyError::InvalidCharacters)
        );
        assert_eq!(
            decode_key("%ff"),
            Err(validate::KeyError::InvalidCharacters)
        );
        assert_eq!(decode_key(""), Err(validate::KeyError::Empty));
    }
}
