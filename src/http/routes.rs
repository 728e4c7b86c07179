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

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::Filter;
use warp::http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};

use crate::storage::store::Store;
use crate::storage::validate::{self, ValueError};
use crate::storage::wal::{Op, Wal, WriteError};

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const KV_METHODS: &str = "GET, HEAD, PUT, DELETE";
const HEALTH_METHODS: &str = "GET, HEAD";
const CLEAR_METHODS: &str = "DELETE";

/// The whole API. Never rejects: every request gets a response from here.
///
/// Reads are answered from `store`; writes go through `wal`, which answers
/// once they are durable and applied.
pub fn routes(
    store: Arc<Store>,
    wal: Arc<Wal>,
    max_value_bytes: u64,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            move |method: Method, path: warp::path::FullPath, content_length, body| {
                let store = Arc::clone(&store);
                let wal = Arc::clone(&wal);
                async move {
                    let request = Request {
                        method,
                        path: path.as_str(),
                        content_length,
                        max_value_bytes,
                    };
                    handle(&store, &wal, request, body).await
                }
            },
        )
        // Unreachable in practice (hyper refuses a malformed Content-Length
        // before warp sees it, and nothing else here can reject), but if a
        // rejection ever happens it must still be a plain-text answer.
        .recover(|_| async { Ok::<_, Infallible>(text(StatusCode::BAD_REQUEST, "bad request\n")) })
}

/// What `handle` needs of a request, besides its body.
struct Request<'a> {
    method: Method,
    /// The raw path, still percent-encoded.
    path: &'a str,
    content_length: Option<u64>,
    max_value_bytes: u64,
}

/// The paths the API knows.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Health,
    Clear,
    /// `/kv/{key}`, with the key still percent-encoded.
    Kv(&'a str),
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    match path {
        "/health" => Route::Health,
        "/clear" => Route::Clear,
        _ => match path.strip_prefix("/kv/") {
            Some(raw_key) => Route::Kv(raw_key),
            None => Route::Unknown,
        },
    }
}

async fn handle<B: Buf>(
    store: &Store,
    wal: &Wal,
    request: Request<'_>,
    body: impl Stream<Item = Result<B, warp::Error>>,
) -> Response {
    let method = &request.method;
    match route(request.path) {
        Route::Health => match *method {
            Method::GET | Method::HEAD => text(StatusCode::OK, "ok\n"),
            _ => method_not_allowed(HEALTH_METHODS),
        },
        Route::Clear => match *method {
            Method::DELETE => written(wal.submit(Op::Clear).await),
            _ => method_not_allowed(CLEAR_METHODS),
        },
        Route::Unknown => text(StatusCode::NOT_FOUND, "not found\n"),
        Route::Kv(raw_key) => {
            // The SPEC's order: the key first, then the method, then the
            // value, so `POST /kv/` is a 400 and `POST /kv/k` a 405.
            let key = match decode_key(raw_key) {
                Ok(key) => key,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            match *method {
                Method::GET => match store.get(&key) {
                    Some(value) => text(StatusCode::OK, value),
                    None => key_not_found(),
                },
                Method::HEAD => match store.value_len(&key) {
                    Some(len) => {
                        // What GET would say, without copying the value.
                        let mut response = text(StatusCode::OK, Bytes::new());
                        response
                            .headers_mut()
                            .insert(CONTENT_LENGTH, HeaderValue::from(len));
                        response
                    }
                    None => key_not_found(),
                },
                Method::PUT => {
                    let bytes = match read_value(&request, body).await {
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
                    written(wal.submit(op).await)
                }
                Method::DELETE => {
                    let op = Op::Delete {
                        key: Cow::Owned(key.into_owned()),
                    };
                    written(wal.submit(op).await)
                }
                _ => method_not_allowed(KV_METHODS),
            }
        }
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

/// Reads a PUT body, refusing it as soon as it is known to be too large:
/// from Content-Length before reading anything, or, for a chunked body,
/// from the first chunk that crosses the limit.
async fn read_value<B: Buf>(
    request: &Request<'_>,
    body: impl Stream<Item = Result<B, warp::Error>>,
) -> Result<Bytes, Response> {
    let max = request.max_value_bytes;
    if request.content_length.is_some_and(|n| n > max) {
        return Err(value_error(ValueError::TooLarge));
    }
    // Trust Content-Length for the first allocation only up to the limit.
    let capacity = request.content_length.unwrap_or(0).min(max);
    let mut value = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|_| text(StatusCode::BAD_REQUEST, "request body could not be read\n"))?;
        if (value.len() + chunk.remaining()) as u64 > max {
            return Err(value_error(ValueError::TooLarge));
        }
        value.put(chunk);
    }
    Ok(value.freeze())
}

/// The answer to a write: 200 once it is durable and applied; otherwise
/// it was not applied, so it must not be acknowledged: 503 while shutting
/// down, 500 once the log cannot be written.
fn written(result: Result<(), WriteError>) -> Response {
    let (status, body) = match result {
        Ok(()) => return text(StatusCode::OK, Bytes::new()),
        Err(WriteError::ShuttingDown) => {
            (StatusCode::SERVICE_UNAVAILABLE, "server is shutting down\n")
        }
        Err(WriteError::LogFailed) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "write could not be made durable\n",
        ),
    };
    let mut response = text(status, body);
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
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
