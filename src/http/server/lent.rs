//! A connection's socket as hyper holds it while it serves HTTP/1.1, so
//! that hyper can give it back between requests (see [`super::session`]):
//! the bytes read before hyper had it (a parked connection's first bytes,
//! or what hyper had read ahead when it last gave the socket back) are
//! replayed first, and hyper's shutdown at the end of a connection that is
//! being handed back is held back, so the socket stays open. What hyper
//! reads goes past the connection's framing reader, where there is one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http::framing::Feed;

/// The socket lent to hyper.
pub struct Lent<S> {
    inner: S,
    /// Read before hyper had the socket: hyper reads these first.
    replay: Bytes,
    /// Set while the socket is being handed back: hyper's shutdown then
    /// only flushes.
    handing_back: Arc<AtomicBool>,
    feed: Option<Feed>,
}

impl<S> Lent<S> {
    pub fn new(
        inner: S,
        replay: Bytes,
        handing_back: Arc<AtomicBool>,
        feed: Option<Feed>,
    ) -> Lent<S> {
        Lent {
            inner,
            replay,
            handing_back,
            feed,
        }
    }

    /// The socket, and what of the replayed bytes hyper never read.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.inner, self.replay)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lent<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        if self.replay.is_empty() {
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        } else {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay.advance(n);
            if self.replay.is_empty() {
                // Its buffer goes now, not when hyper lets go of the socket.
                self.replay = Bytes::new();
            }
        }
        if let Some(feed) = &self.feed {
            feed.bytes(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Lent<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.handing_back.load(Ordering::Relaxed) {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replayed_bytes_come_first_and_a_handed_back_socket_stays_open() {
        let (near, mut far) = tokio::io::duplex(64);
        let handing_back = Arc::new(AtomicBool::new(false));
        let (feed, verdicts) = crate::http::framing::watch();
        let replay = Bytes::from_static(b"GET ");
        let mut lent = Lent::new(near, replay, handing_back.clone(), Some(feed));
        far.write_all(b"/ HTTP/1.1").await.unwrap();
        let mut got = [0u8; 14];
        lent.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1");
        assert!(!verdicts.at_rest(), "the framing reader saw both parts");
        handing_back.store(true, Ordering::Relaxed);
        lent.shutdown().await.unwrap();
        let (mut near, replay) = lent.into_parts();
        assert!(replay.is_empty());
        near.write_all(b"still open").await.unwrap();
        let mut got = [0u8; 10];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still open");
    }
}
