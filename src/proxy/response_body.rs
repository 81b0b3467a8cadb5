//! A worker's response body on its way to the client, with its [`Done`]
//! attached: the worker's place and connection are given back when the
//! last byte has gone, not when the head arrived, so a long response
//! (server-sent events) keeps its worker counted as busy, and a draining
//! worker is stopped only after it. (Request bodies: `request_body`.)

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::backends::Place;
use super::link::LinkBody;
use super::metrics::Metrics;
use super::pool::{Pool, Sender};
use super::request_body::{BoxError, boxed_frame, plus};

/// What a finished exchange gives back.
pub struct Done {
    pub place: Place,
    pub sender: Option<Sender>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
}

impl Done {
    fn finish(mut self, clean: bool) {
        if clean && let Some(sender) = self.sender.take() {
            self.pool.checkin(self.place.key, sender);
        }
        self.metrics.observe_duration(self.started.elapsed());
    }
}

/// A worker's answer body, as whichever way of speaking to it read it.
pub enum WorkerBody {
    Hyper(Incoming),
    Link(LinkBody),
}

impl Body for WorkerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            WorkerBody::Hyper(body) => boxed_frame(body, cx),
            WorkerBody::Link(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            WorkerBody::Hyper(body) => body.is_end_stream(),
            WorkerBody::Link(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            WorkerBody::Hyper(body) => body.size_hint(),
            WorkerBody::Link(body) => body.size_hint(),
        }
    }
}

/// A response body on its way to the client.
pub enum FrontBody {
    Full(Full<Bytes>),
    /// Frames already read from the worker, then the rest of its body.
    Proxied {
        ahead: VecDeque<Frame<Bytes>>,
        body: WorkerBody,
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
/// body to follow (to its end, if it comes) before sending on what it has.
const READ_AHEAD_WAIT: Duration = Duration::from_millis(2);

/// The most of a response body read ahead whole: past it, the body streams.
const READ_AHEAD_LIMIT: u64 = 64 * 1024;

/// A worker's response body as far as it could be read at once.
pub enum Ahead {
    /// All of it (at most [`READ_AHEAD_LIMIT`]): the client gets it in one
    /// write with a Content-Length, and the worker is free already.
    Whole(Bytes),
    /// Its first frames; the rest streams.
    Partial(VecDeque<Frame<Bytes>>),
}

/// Reads what of `body` arrives with its head: Uvicorn writes a response's
/// head and body separately, and forwarding them as they come would cost
/// the client (and the front) a write and a wakeup more per request. A
/// stream (server-sent events) is held up by at most [`READ_AHEAD_WAIT`].
/// A body whose length the worker gave, up to [`READ_AHEAD_LIMIT`], is
/// read whole however long it takes to come, so a worker that dies
/// before it has sent it has sent the client nothing, and the request
/// can go elsewhere.
pub async fn read_ahead(body: &mut WorkerBody) -> Result<Ahead, BoxError> {
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= READ_AHEAD_LIMIT);
    let mut frames = VecDeque::new();
    let mut size = 0u64;
    // One wait for the whole read-ahead: a chunked body's last chunk
    // (Uvicorn writes it apart from the data) is taken in too, so the
    // client gets one write with a Content-Length.
    let deadline = (!small).then(|| tokio::time::Instant::now() + READ_AHEAD_WAIT);
    loop {
        if body.is_end_stream() {
            break;
        }
        let next = match deadline {
            None => Some(body.frame().await),
            Some(deadline) => tokio::time::timeout_at(deadline, body.frame()).await.ok(),
        };
        match next {
            None => return Ok(Ahead::Partial(frames)),
            Some(None) => break,
            Some(Some(frame)) => {
                let frame = frame?;
                size += frame.data_ref().map_or(0, |d| d.len() as u64);
                let data_only = frame.is_data();
                frames.push_back(frame);
                if size > READ_AHEAD_LIMIT || !data_only {
                    return Ok(Ahead::Partial(frames));
                }
            }
        }
    }
    // A body that came in one piece (most do) is sent on as it is.
    if frames.len() <= 1 {
        let data = frames.pop_front().and_then(|f| f.into_data().ok());
        return Ok(Ahead::Whole(data.unwrap_or_default()));
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
            self.pool.checkin(self.place.key, sender);
        }
    }
}

impl Body for FrontBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            FrontBody::Full(full) => boxed_frame(full, cx),
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
