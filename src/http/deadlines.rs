//! Slow-client limits (SPEC §7): a client must send a complete request
//! head within 10 s of its first byte, and a keep-alive connection that
//! stays idle for 30 s is closed.
//!
//! hyper has one timer for both (it runs from the end of a response to
//! the end of the next head), so this wrapper around a connection's
//! stream keeps the two apart. It watches the bytes going by: the first
//! byte read after a response starts the head's 10 s, the blank line that
//! ends the head stops it, and a response written starts the idle 30 s.
//! When a limit passes, the next read fails with `TimedOut` and hyper
//! closes the connection. It must never change a byte, and never time a
//! request whose head has arrived (its handler, its body and its response
//! are bounded elsewhere).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// From a request's first byte to the end of its head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// From the end of a response to the next request's first byte.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's first byte (a new connection, or after a
    /// response).
    Idle,
    /// Reading a request head.
    Head,
    /// The head has arrived: the request is being served.
    Busy,
}

/// A stream whose reads fail once a slow-client limit has passed.
pub struct Deadlines<S> {
    inner: S,
    phase: Phase,
    /// When the current phase's limit passes (unused while `Busy`).
    deadline: Instant,
    /// Wakes a pending read at `deadline`. Boxed once per connection;
    /// moving a deadline later only updates it, which tokio does without
    /// touching its timer wheel.
    timer: Pin<Box<Sleep>>,
    /// Whether the head read so far ends at the start of a line (after a
    /// newline, and perhaps a carriage return): a newline there ends it.
    at_line_start: bool,
}

impl<S> Deadlines<S> {
    pub fn new(inner: S) -> Self {
        let deadline = Instant::now() + IDLE_TIMEOUT;
        Deadlines {
            inner,
            phase: Phase::Idle,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            at_line_start: false,
        }
    }

    /// Follows the request in the bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.deadline = Instant::now() + HEAD_TIMEOUT;
            // Blank lines before a request line are skipped by parsers,
            // not taken for the end of a head.
            self.at_line_start = false;
        }
        if self.phase == Phase::Head && self.head_ends(bytes) {
            self.phase = Phase::Busy;
        }
    }

    /// Whether `bytes`, the next ones of a head, hold the empty line that
    /// ends it (`\r\n\r\n`, or `\n\n` as lenient parsers accept).
    fn head_ends(&mut self, bytes: &[u8]) -> bool {
        let mut line_start = 0;
        for newline in memchr::memchr_iter(b'\n', bytes) {
            let line = &bytes[line_start..newline];
            let continues = line_start > 0 || self.at_line_start;
            if continues && (line.is_empty() || line == b"\r") {
                return true;
            }
            line_start = newline + 1;
        }
        let rest = &bytes[line_start..];
        let after_newline = line_start > 0 || self.at_line_start;
        self.at_line_start = after_newline && (rest.is_empty() || rest == b"\r");
        false
    }

    /// Notes a response being written: the connection is busy answering,
    /// and idle from there until the next request begins. An interim
    /// `100 Continue` leaves the request being served.
    fn wrote(&mut self, bytes: &[u8]) {
        if bytes.starts_with(b"HTTP/1.1 1") {
            return;
        }
        if self.phase == Phase::Busy || self.phase == Phase::Idle {
            self.phase = Phase::Idle;
            self.deadline = Instant::now() + IDLE_TIMEOUT;
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
                let this = &mut *self;
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.phase == Phase::Busy => Poll::Pending,
            Poll::Pending => {
                let this = &mut *self;
                loop {
                    if Instant::now() >= this.deadline {
                        let limit = match this.phase {
                            Phase::Head => "request head not complete 10 s after its first byte",
                            _ => "connection idle for 30 s",
                        };
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, limit)));
                    }
                    if this.timer.deadline() != this.deadline {
                        this.timer.as_mut().reset(this.deadline);
                    }
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
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

    fn ends(chunks: &[&[u8]]) -> Option<usize> {
        let mut d = Deadlines::new(());
        for (i, chunk) in chunks.iter().enumerate() {
            d.saw(chunk);
            if d.phase == Phase::Busy {
                return Some(i);
            }
        }
        None
    }

    #[tokio::test]
    async fn finds_the_end_of_a_head_across_reads() {
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]), Some(0));
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\n", b"\r\n"]), Some(1));
        assert_eq!(ends(&[b"GET / HTTP/1.1\r", b"\n", b"\r", b"\n"]), Some(3));
        assert_eq!(ends(&[b"GET / HTTP/1.1\n\n"]), Some(0));
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), None);
        assert_eq!(
            ends(&[b"GET / HT", b"TP/1.1\r\nA: b\r\n", b"C: d\r\n"]),
            None
        );
        // Blank lines before the request line do not end it.
        assert_eq!(ends(&[b"\r\n", b"GET / HTTP/1.1\r\n"]), None);
    }

    #[tokio::test]
    async fn a_response_makes_the_connection_idle_but_an_interim_one_does_not() {
        let mut d = Deadlines::new(());
        d.saw(b"PUT /kv/a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(d.phase, Phase::Busy);
        d.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(d.phase, Phase::Busy);
        d.wrote(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(d.phase, Phase::Idle);
    }
}
