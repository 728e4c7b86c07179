//! Slow-client limits (SPEC §7): a client must send a complete request
//! head within 10 s of its first byte, and a keep-alive connection that
//! stays idle for 30 s is closed.
//!
//! hyper has one timer for both (it runs from the end of a response to
//! the end of the next head), so this module keeps the two apart with a
//! [`Phase`] per connection, shared by two watchers: [`Deadlines`], around
//! the connection's stream, starts the head's 10 s at the first byte read
//! while idle and the idle 30 s at each response written; the connection's
//! service (`gate`) ends the head's clock with [`Phase::served`] when hyper
//! has parsed a head and calls it, which is the only sure sign (blank lines before
//! a request line, pipelined requests read ahead and bodies all look like
//! heads to anything but the parser). When a limit passes, the next read
//! fails with `TimedOut` and hyper closes the connection.
//!
//! It must never change a byte, and never time a request once its head has
//! arrived: its body is bounded by the routes (`read_body`), its handler
//! by the commit timeout, and a response that a client stops reading by
//! the idle limit (writing it counts as activity).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// From a request's first byte to the end of its head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// From the end of a response to the next request's first byte.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const SERVED: u8 = 2;

/// Where a connection is between requests, as both watchers see it. Both
/// run on the connection's own task, so relaxed atomics suffice.
#[derive(Debug, Default)]
pub struct Phase(AtomicU8);

impl Phase {
    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed);
    }

    /// A head has been parsed whole: its clock stops. The connection's
    /// service calls this, as hyper calls the service exactly then.
    pub fn served(&self) {
        self.set(SERVED);
    }
}

/// A stream whose reads fail once a slow-client limit has passed.
///
/// The clock is read and the timer touched only when a read has to wait,
/// which a keep-alive connection does once per request (for the next
/// one): the timer stays armed at or before the current limit, and when
/// it fires early (the limit moved on) it is set again.
pub struct Deadlines<S> {
    inner: S,
    phase: Arc<Phase>,
    /// When the current wait began (the idle time or the head's), taken at
    /// the first read that had to wait in it; `None` until then.
    since: Option<Instant>,
    /// Fires at or before the current limit. Boxed once per connection.
    timer: Pin<Box<Sleep>>,
    /// Whether `timer` has been polled since it was last set, so that it
    /// will wake this connection's task.
    registered: bool,
}

impl<S> Deadlines<S> {
    /// Wraps a new connection's stream; `phase` is shared with the
    /// connection's service.
    pub fn new(inner: S, phase: Arc<Phase>) -> Self {
        let now = Instant::now();
        phase.set(IDLE);
        Deadlines {
            inner,
            phase,
            since: Some(now),
            timer: Box::pin(tokio::time::sleep_until(now + IDLE_TIMEOUT)),
            registered: false,
        }
    }

    /// The first bytes after idling start a head.
    fn read_some(&mut self) {
        if self.phase.get() == IDLE {
            self.phase.set(HEAD);
            // Taken at the first read that waits: a head that came whole
            // (nearly all) never reads the clock.
            self.since = None;
        }
    }

    /// Notes a response being written: from here the connection is idle
    /// until the next request begins (writing more of a long response
    /// keeps pushing that limit back). An interim `100 Continue` leaves
    /// the request being served.
    fn wrote(&mut self, first: &[u8]) {
        if first.starts_with(b"HTTP/1.1 1") {
            return;
        }
        if self.phase.get() != HEAD {
            self.phase.set(IDLE);
            self.since = None;
        }
    }

    /// A read has to wait: `Ready` with an error once the current limit
    /// has passed, else `Pending` with the timer set to wake the task no
    /// later than the limit.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let head = self.phase.get() == HEAD;
        let limit = if head { HEAD_TIMEOUT } else { IDLE_TIMEOUT };
        let since = *self.since.get_or_insert_with(Instant::now);
        let deadline = since + limit;
        loop {
            let late = self.timer.deadline() > deadline;
            if self.registered && !late && !self.timer.is_elapsed() {
                return Poll::Pending;
            }
            if self.timer.is_elapsed() || late {
                if Instant::now() >= deadline {
                    let what = if head {
                        "request head not complete 10 s after its first byte"
                    } else {
                        "connection idle for 30 s"
                    };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                }
                self.timer.as_mut().reset(deadline);
            }
            self.registered = true;
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.read_some();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.phase.get() == SERVED => Poll::Pending,
            Poll::Pending => self.wait(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written
            && *n > 0
        {
            self.wrote(&buf[..*n]);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &written
            && *n > 0
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
        {
            let first: &[u8] = first;
            self.wrote(first);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        // hyper writes a head and a body without copying them together
        // only when the stream takes both at once.
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_start_a_head_a_call_ends_it_and_a_response_makes_it_idle() {
        let phase = Arc::new(Phase::default());
        let mut d = Deadlines::new((), Arc::clone(&phase));
        assert_eq!(phase.get(), IDLE);
        // Blank lines, or a head's first bytes: a head has begun, and
        // only the parser can say when it ends.
        d.read_some();
        assert_eq!(phase.get(), HEAD);
        // A canned 400 for a bad head leaves the clock running.
        d.wrote(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert_eq!(phase.get(), HEAD);
        phase.set(SERVED);
        d.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(phase.get(), SERVED);
        d.read_some();
        assert_eq!(phase.get(), SERVED, "a body being read is not a head");
        d.wrote(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(phase.get(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_times_out_at_its_limit_even_after_the_limit_moved() {
        let phase = Arc::new(Phase::default());
        let mut d = Deadlines::new((), Arc::clone(&phase));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(d.wait(&mut cx).is_pending());
        // 20 s idle, then a response: the idle limit starts again.
        tokio::time::advance(Duration::from_secs(20)).await;
        d.wrote(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(d.wait(&mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(25)).await;
        assert!(
            d.wait(&mut cx).is_pending(),
            "45 s after the start, 25 s idle"
        );
        // Bytes of a head: 10 s from the first wait in it.
        d.read_some();
        assert!(d.wait(&mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(d.wait(&mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(d.wait(&mut cx), Poll::Ready(Err(_))));
    }
}
