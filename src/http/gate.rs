//! The service in front of the routes on each connection: it tells the
//! connection's slow-client clock that a head has arrived, and, with a
//! token set, answers 401 to every request that does not carry it, except
//! `GET|HEAD /health` (so load balancers and orchestrators can probe
//! liveness). Unknown paths need the token too: a client without it
//! learns nothing, not even which paths exist.
//!
//! It sits at hyper's level rather than in the warp filter because there
//! the `Authorization` header is a lookup by a known header name, while a
//! warp header filter parses the name again for every request, and a
//! server without a token pays nothing at all here. It must never answer
//! anything but 401, nor read a body.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::{Either, Ready, ready};
use hyper::Method;
use hyper::header::AUTHORIZATION;

use crate::http::deadlines::Phase;
use crate::http::routes;
use crate::metrics;
use crate::security::token::Token;

/// A connection's service: the routes, behind the token.
pub struct Gate<S> {
    inner: S,
    /// The connection's slow-client clock.
    phase: Arc<Phase>,
    token: Option<Arc<Token>>,
}

impl<S> Gate<S> {
    pub fn new(inner: S, phase: Arc<Phase>, token: Option<Arc<Token>>) -> Self {
        Gate {
            inner,
            phase,
            token,
        }
    }
}

impl<B, S> hyper::service::Service<hyper::Request<B>> for Gate<S>
where
    S: hyper::service::Service<hyper::Request<B>, Response = warp::reply::Response>,
{
    type Response = warp::reply::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, S::Error>>, S::Future>;

    fn call(&self, request: hyper::Request<B>) -> Self::Future {
        // hyper calls a service exactly when it has parsed a head.
        self.phase.served();
        if let Some(token) = &self.token {
            let open = request.uri().path() == "/health"
                && matches!(*request.method(), Method::GET | Method::HEAD);
            let credentials = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
            if !open && !token.authorizes(credentials) {
                // Only refusals read the clock here: a request let through
                // is timed by the routes, which answer it.
                let started = Instant::now();
                let route = routes::route_label(request.uri().path());
                metrics::get().request(request.method().as_str(), route, 401, started.elapsed());
                // Never the header itself.
                tracing::debug!(
                    "{} {} 401 (no valid token)",
                    request.method(),
                    request.uri().path()
                );
                return Either::Left(ready(Ok(routes::unauthorized())));
            }
        }
        Either::Right(self.inner.call(request))
    }
}
