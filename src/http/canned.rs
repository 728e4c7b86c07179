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
//! line, if nothing was written since the connection last read (those
//! answers follow the read that brought the bad request, so the rest of a
//! body is never mistaken for one). Every other write passes through
//! untouched, at the cost of comparing a few bytes. It must never change
//! a body, or any response the routes made.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const HEADER: &[u8] = b"content-type: text/plain; charset=utf-8\r\n";

/// A stream whose canned error heads gain a Content-Type.
pub struct WithContentType<S> {
    inner: S,
    /// Whether nothing was written since the last read: hyper's canned
    /// answers follow a read that brought the bad request, so a write
    /// after other writes (a body's rest after a partial write) is never
    /// taken for one, whatever its bytes look like.
    read_last: bool,
    /// A rewritten head being written: the bytes, how many went out, and
    /// how many of the caller's bytes it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> WithContentType<S> {
    pub fn new(inner: S) -> Self {
        WithContentType {
            inner,
            read_last: false,
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
    /// Writes out the rest of a rewritten head. It stays pending, whole,
    /// until a `poll_write` reports it, so that the caller's count is
    /// given once, for the bytes it asked to write.
    fn drain_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, written, _)) = self.pending.as_mut() {
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WithContentType<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        if read.is_ok() && buf.filled().len() > before {
            self.read_last = true;
        }
        Poll::Ready(read)
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
            let fixed = if this.read_last {
                with_header(buf)
            } else {
                None
            };
            match fixed {
                None => {
                    let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
                    if n > 0 {
                        this.read_last = false;
                    }
                    return Poll::Ready(Ok(n));
                }
                Some(fixed) => this.pending = Some((fixed, 0, buf.len())),
            }
        }
        // A caller that got Pending writes the same bytes again, which
        // the rewritten head already stands for.
        ready!(this.drain_pending(cx))?;
        let (_, _, stands_for) = this.pending.take().expect("a head is pending");
        this.read_last = false;
        Poll::Ready(Ok(stands_for))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        let canned = self.read_last && first.is_some_and(|b| with_header(b).is_some());
        if self.pending.is_some() || canned {
            // Only the head: a partial write, which callers expect.
            let head = first.map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, head);
        }
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        if n > 0 {
            self.read_last = false;
        }
        Poll::Ready(Ok(n))
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

    /// Only a write right after a read is taken for a canned answer: the
    /// same bytes as the rest of a body (after other writes) pass as they
    /// are.
    #[tokio::test]
    async fn a_body_that_looks_like_a_canned_answer_is_left_alone() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let canned = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let (server, mut client) = tokio::io::duplex(4096);
        let mut server = WithContentType::new(server);

        client.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
        let mut request = [0u8; 64];
        let _ = server.read(&mut request).await.unwrap();
        server.write_all(canned).await.unwrap();
        // Written after a write: a body's rest, not an answer.
        server.write_all(canned).await.unwrap();
        drop(server);

        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        let mut expected = with_header(canned).unwrap();
        expected.extend_from_slice(canned);
        assert_eq!(seen, expected);
    }
}
