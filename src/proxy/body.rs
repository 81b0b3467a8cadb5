//! The bodies on either side of the front. Towards a worker, a request
//! body is either held whole (small ones, so the request can be sent
//! again) or streamed as it arrives. Towards the client, a worker's
//! response streams through with its [`Done`] attached: the worker's place
//! and connection are given back when the last byte has gone, not when the
//! head arrived, so a long response (server-sent events) keeps its worker
//! counted as busy, and a draining worker is stopped only after it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::backends::Lease;
use super::metrics::Metrics;
use super::pool::{Pool, Sender};

/// Request bodies up to this size are read before forwarding and kept, so
/// the request can be retried on another worker.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// A request body on its way to a worker.
pub enum Outgoing {
    Full(Full<Bytes>),
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
            Outgoing::Full(full) => full_frame(full, cx),
            Outgoing::Stream(ahead, body) => match ahead.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Pin::new(body).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Full(full) => full.is_end_stream(),
            Outgoing::Stream(ahead, body) => ahead.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Full(full) => full.size_hint(),
            Outgoing::Stream(ahead, body) => plus(
                body.size_hint(),
                ahead.as_ref().map_or(0, |b| b.len() as u64),
            ),
        }
    }
}

/// A whole body's next frame: `Full` cannot fail.
fn full_frame(
    full: &mut Full<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
    Pin::new(full)
        .poll_frame(cx)
        .map(|frame| frame.map(|f| f.map_err(|never| match never {})))
}

/// `hint` with `extra` bytes read ahead put back in front.
fn plus(hint: SizeHint, extra: u64) -> SizeHint {
    let mut out = SizeHint::new();
    out.set_lower(hint.lower() + extra);
    if let Some(upper) = hint.upper() {
        out.set_upper(upper + extra);
    }
    out
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
            Held::Whole(b) => Some(Outgoing::Full(Full::new(b.clone()))),
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
    Full(Full<Bytes>),
    /// Frames already read from the worker, then the rest of its body.
    Proxied {
        ahead: VecDeque<Frame<Bytes>>,
        body: Incoming,
        done: Option<Done>,
    },
}

impl FrontBody {
    pub fn full(bytes: impl Into<Bytes>) -> FrontBody {
        FrontBody::Full(Full::new(bytes.into()))
    }

    pub fn empty() -> FrontBody {
        FrontBody::Full(Full::default())
    }
}

/// How long the front waits, once a worker's response head is in, for its
/// body to follow before sending the head on alone.
const READ_AHEAD_WAIT: Duration = Duration::from_millis(2);

/// A worker's response body as far as it could be read at once.
pub enum Ahead {
    /// All of it (at most [`REPLAY_LIMIT`]): the client gets it in one
    /// write with a Content-Length, and the worker is free already.
    Whole(Bytes),
    /// Its first frames; the rest streams.
    Partial(VecDeque<Frame<Bytes>>),
}

/// Reads what of `body` arrives with its head: Uvicorn writes a response's
/// head and body separately, and forwarding them as they come would cost
/// the client (and the front) a write and a wakeup more per request. A
/// stream (server-sent events) is held up by at most [`READ_AHEAD_WAIT`].
pub async fn read_ahead(body: &mut Incoming) -> Result<Ahead, hyper::Error> {
    let mut frames = VecDeque::new();
    let mut size = 0u64;
    loop {
        if body.is_end_stream() {
            break;
        }
        let next = if frames.is_empty() {
            tokio::time::timeout(READ_AHEAD_WAIT, body.frame())
                .await
                .ok()
        } else {
            futures::FutureExt::now_or_never(body.frame())
        };
        match next {
            None => return Ok(Ahead::Partial(frames)),
            Some(None) => break,
            Some(Some(frame)) => {
                let frame = frame?;
                size += frame.data_ref().map_or(0, |d| d.len() as u64);
                let data_only = frame.is_data();
                frames.push_back(frame);
                if size > REPLAY_LIMIT || !data_only {
                    return Ok(Ahead::Partial(frames));
                }
            }
        }
    }
    let mut whole = bytes::BytesMut::with_capacity(size as usize);
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            whole.extend_from_slice(&data);
        }
    }
    Ok(Ahead::Whole(whole.freeze()))
}

impl Done {
    /// The whole response is in hand: the worker and its connection are
    /// free before the client has it.
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.checkin(self.lease.key, sender);
        }
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
            FrontBody::Full(full) => full_frame(full, cx),
            FrontBody::Proxied { ahead, body, done } => {
                if let Some(frame) = ahead.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
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
            FrontBody::Full(full) => full.is_end_stream(),
            FrontBody::Proxied { ahead, body, .. } => ahead.is_empty() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FrontBody::Full(full) => full.size_hint(),
            FrontBody::Proxied { ahead, body, .. } => {
                let extra: u64 = ahead
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                plus(body.size_hint(), extra)
            }
        }
    }
}

impl Drop for FrontBody {
    fn drop(&mut self) {
        // The client went away, or an empty body was never polled to its
        // end: the connection may hold an unread rest, so it is not reused,
        // unless the worker's body had ended.
        if let FrontBody::Proxied { ahead, body, done } = self
            && let Some(d) = done.take()
        {
            d.finish(ahead.is_empty() && body.is_end_stream());
        }
    }
}
