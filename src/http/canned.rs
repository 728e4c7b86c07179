//! Gives hyper's own error responses the Content-Type every response must
//! carry (SPEC §2).
//!
//! hyper answers a request it cannot parse (a bad request line, a head
//! over the size limit, a URI too long) with 400, 431 or 414 before any
//! request reaches the routes, and offers no hook to add a header. This
//! wrapper around a connection's stream watches what hyper writes: a
//! write that is exactly one of those canned answers (its status line,
//! only the headers hyper puts there, nothing after the head) gets
//! `content-type: text/plain; charset=utf-8` inserted after its status
//! line. Every other write passes through untouched, at the cost of
//! comparing a few bytes. It must never change a body, or any response
//! the routes made.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const HEADER: &[u8] = b"content-type: text/plain; charset=utf-8\r\n";

/// A stream whose canned error heads gain a Content-Type.
pub struct WithContentType<S> {
    inner: S,
    /// A rewritten head being written: the bytes, how many went out, and
    /// how many of the caller's bytes it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> WithContentType<S> {
    pub fn new(inner: S) -> Self {
        WithContentType {
            inner,
            pending: None,
        }
    }
}

/// The status lines hyper answers unparsable requests with.
const CANNED: [&[u8]; 3] = [
    b"HTTP/1.1 400 Bad Request\r\n",
    b"HTTP/1.1 414 URI Too Long\r\n",
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
];

/// The only headers hyper puts in those answers.
const CANNED_HEADERS: [&[u8]; 3] = [b"connection:", b"content-length: 0", b"date:"];

/// `write` with the header inserted, if it is exactly one of hyper's
/// canned answers: one of their status lines, only their headers, and
/// nothing after the head. Anything else (a response of the routes, or
/// a body that happens to look like a head) is left alone.
fn with_header(write: &[u8]) -> Option<Vec<u8>> {
    let status = CANNED.iter().find(|line| write.starts_with(line))?;
    if !write.ends_with(b"\r\n\r\n") {
        return None;
    }
    let headers = &write[status.len()..write.len() - 4];
    let only_canned = headers.is_empty()
        || headers.split(|&b| b == b'\n').all(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            CANNED_HEADERS.iter().any(|name| {
                line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
            })
        });
    if !only_canned {
        return None;
    }
    let mut fixed = Vec::with_capacity(write.len() + HEADER.len());
    fixed.extend_from_slice(status);
    fixed.extend_from_slice(HEADER);
    fixed.extend_from_slice(&write[status.len()..]);
    Some(fixed)
}

impl<S: AsyncWrite + Unpin> WithContentType<S> {
    /// Writes out a rewritten head; ready with the caller's count once
    /// all of it is out.
    fn drain_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<usize>>> {
        while let Some((bytes, written, stands_for)) = self.pending.as_mut() {
            if *written == bytes.len() {
                let stands_for = *stands_for;
                self.pending = None;
                return Poll::Ready(Ok(Some(stands_for)));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(None))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WithContentType<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WithContentType<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match with_header(buf) {
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
                Some(fixed) => this.pending = Some((fixed, 0, buf.len())),
            }
        }
        // A caller that got Pending writes the same bytes again, which
        // the rewritten head already stands for.
        match ready!(this.drain_pending(cx))? {
            Some(stands_for) => Poll::Ready(Ok(stands_for)),
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.pending.is_some() || first.is_some_and(|b| with_header(b).is_some()) {
            // Only the head: a partial write, which callers expect.
            let head = first.map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, head);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canned_error_heads_gain_the_header() {
        let canned = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let fixed = with_header(canned).unwrap();
        assert_eq!(
            fixed,
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 19\r\n\r\n";
        assert_eq!(with_header(ours), None);
        assert_eq!(
            with_header(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        // Not a whole head, or more than a head: left alone.
        assert_eq!(with_header(b"HTTP/1.1 400 Bad Request\r\n"), None);
        assert_eq!(
            with_header(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore"),
            None
        );
        assert_eq!(
            with_header(b"HTTP/1.1 400 Bad Request\r\nx-other: 1\r\n\r\n"),
            None
        );
    }
}
