//! The bodies on either side of the front. Towards a worker, a request
//! body is either held whole (small ones, so the request can be sent
//! again) or streamed as it arrives. Towards the client, a worker's
//! response streams through with its [`Done`] attached: the worker's place
//! and connection are given back when the last byte has gone, not when the
//! head arrived, so a long response (server-sent events) keeps its worker
//! counted as busy, and a draining worker is stopped only after it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::backends::Lease;
use super::metrics::Metrics;
use super::pool::{Pool, Sender};

/// Request bodies up to this size are read before forwarding and kept, so
/// the request can be retried on another worker.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// A request body on its way to a worker.
pub enum Outgoing {
    Full(Option<Bytes>),
    /// What was read ahead (up to [`REPLAY_LIMIT`]), then the rest.
    Stream(Option<Bytes>, Incoming),
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Outgoing::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Outgoing::Stream(ahead, body) => match ahead.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Pin::new(body).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Full(bytes) => bytes.is_none(),
            Outgoing::Stream(ahead, body) => ahead.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Outgoing::Stream(ahead, body) => {
                let extra = ahead.as_ref().map_or(0, |b| b.len() as u64);
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

/// The client's request body while the front decides where it goes.
pub enum Held {
    /// Read whole: can be sent any number of times.
    Whole(Bytes),
    /// Streaming (what was read ahead, and the rest); `None` once handed
    /// to a worker.
    Stream(Option<(Option<Bytes>, Incoming)>),
}

impl Held {
    /// Reads a body of up to [`REPLAY_LIMIT`] whole before anything goes to
    /// a worker, so that it can be sent again and a broken one (a bad
    /// chunk size) is refused before it is forwarded; a larger one streams
    /// from what was read ahead on.
    pub async fn read(mut body: Incoming) -> Result<Held, hyper::Error> {
        if body.is_end_stream() {
            return Ok(Held::Whole(Bytes::new()));
        }
        if body.size_hint().lower() > REPLAY_LIMIT {
            return Ok(Held::Stream(Some((None, body))));
        }
        let mut ahead = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                ahead.extend_from_slice(&data);
            }
            if ahead.len() as u64 > REPLAY_LIMIT {
                return Ok(Held::Stream(Some((Some(ahead.freeze()), body))));
            }
        }
        Ok(Held::Whole(ahead.freeze()))
    }

    pub fn replayable(&self) -> bool {
        matches!(self, Held::Whole(_))
    }

    /// The body for one attempt; `None` when a stream was already sent.
    pub fn take(&mut self) -> Option<Outgoing> {
        match self {
            Held::Whole(b) if b.is_empty() => Some(Outgoing::Full(None)),
            Held::Whole(b) => Some(Outgoing::Full(Some(b.clone()))),
            Held::Stream(s) => s.take().map(|(ahead, rest)| Outgoing::Stream(ahead, rest)),
        }
    }

    /// A body a worker connection handed back unsent.
    pub fn put_back(&mut self, body: Outgoing) {
        if let (Held::Stream(slot), Outgoing::Stream(ahead, rest)) = (self, body) {
            *slot = Some((ahead, rest));
        }
    }
}

/// What a finished exchange gives back.
pub struct Done {
    pub lease: Lease,
    pub sender: Option<Sender>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
}

impl Done {
    fn finish(mut self, clean: bool) {
        if clean && let Some(sender) = self.sender.take() {
            self.pool.checkin(self.lease.key, sender);
        }
        self.metrics.observe_duration(self.started.elapsed());
    }
}

/// A response body on its way to the client.
pub enum FrontBody {
    Full(Option<Bytes>),
    Proxied { body: Incoming, done: Option<Done> },
}

impl FrontBody {
    pub fn full(bytes: impl Into<Bytes>) -> FrontBody {
        FrontBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> FrontBody {
        FrontBody::Full(None)
    }
}

impl Body for FrontBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            FrontBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            FrontBody::Proxied { body, done } => {
                let frame = Pin::new(body).poll_frame(cx);
                match &frame {
                    Poll::Ready(None) => {
                        if let Some(d) = done.take() {
                            d.finish(true);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(d) = done.take() {
                            d.finish(false);
                        }
                    }
                    _ => {}
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FrontBody::Full(bytes) => bytes.is_none(),
            FrontBody::Proxied { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FrontBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            FrontBody::Proxied { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for FrontBody {
    fn drop(&mut self) {
        // The client went away, or an empty body was never polled to its
        // end: the connection may hold an unread rest, so it is not reused,
        // unless the worker's body had ended.
        if let FrontBody::Proxied { body, done } = self
            && let Some(d) = done.take()
        {
            d.finish(body.is_end_stream());
        }
    }
}
