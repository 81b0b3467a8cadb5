//! An upgraded connection (WebSocket) between a client and its worker:
//! bytes copied both ways until either side closes, or until neither has
//! sent anything for the idle timeout (nginx's `proxy_read_timeout`, 60 s,
//! is what closes an idle WebSocket there). The worker stays busy for as
//! long as the tunnel lives.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::backends::Place;
use crate::http::activity::Stamp;
use crate::http::server::ConnectionPlace;

/// One side of the tunnel, stamping `last` whenever a byte moves.
struct Watched<T> {
    io: T,
    last: Arc<Stamp>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.last.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Runs the tunnel to its end; the worker's place and the client
/// connection's place under the front's cap go with it.
pub async fn run(
    client: OnUpgrade,
    worker: OnUpgrade,
    places: (Place, Option<ConnectionPlace>),
    idle: Duration,
) {
    match tokio::try_join!(client, worker) {
        Ok((client, worker)) => {
            let last = Arc::new(Stamp::now());
            let mut client = Watched {
                io: TokioIo::new(client),
                last: last.clone(),
            };
            let mut worker = Watched {
                io: TokioIo::new(worker),
                last: last.clone(),
            };
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut worker) => {
                    if let Err(e) = copied {
                        debug!(error = %e, "upgraded connection");
                    }
                }
                _ = last.older_than(idle) => debug!(?idle, "upgraded connection idle: closed"),
            }
        }
        Err(e) => debug!(error = %e, "upgrade failed"),
    }
    drop(places);
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_idle_only_when_no_byte_moves() {
        let last = Stamp::now();
        let limit = Duration::from_secs(60);
        tokio::time::advance(Duration::from_secs(50)).await;
        last.touch();
        let t0 = Instant::now();
        last.older_than(limit).await;
        assert_eq!(t0.elapsed(), limit, "counted from the last byte");
    }
}
