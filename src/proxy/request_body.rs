//! A request body on its way to a worker: held whole when small, so the
//! request can be sent again (a retry on another worker), or streamed as
//! it arrives; either way under the client's limits (nginx's
//! `client_body_timeout` between two reads and `client_max_body_size`).
//! Also the two body helpers the response side shares.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, SizeHint};
use tower_http::timeout::{TimeoutBody, TimeoutError};

use crate::http::server::RequestBody;

/// What a body on the request path fails with: each kind says its own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a client may do with a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Longest wait between two reads of the body.
    pub timeout: Duration,
    /// Most bytes a body may have; `None` is unbounded.
    pub max_size: Option<u64>,
}

/// Why a client's body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than --client-max-body-size")]
    TooLarge,
    #[error("the client sent nothing of its body for --client-body-timeout")]
    TimedOut,
    #[error("the request body could not be read: {0}")]
    Read(BoxError),
}

/// The client's body, read under [`BodyLimits`]: tower-http's timeout
/// between two frames over http-body-util's size limit, their errors
/// named as [`BodyError`] for the answer the client gets (408, 413).
pub struct ClientBody {
    body: Pin<Box<TimeoutBody<Limited<RequestBody>>>>,
    /// The length the client declared exceeds the limit.
    declared_too_large: bool,
}

impl ClientBody {
    pub fn new(body: RequestBody, limits: BodyLimits) -> ClientBody {
        let max = limits.max_size.unwrap_or(u64::MAX);
        ClientBody {
            declared_too_large: body.size_hint().lower() > max,
            body: Box::pin(TimeoutBody::new(
                limits.timeout,
                Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)),
            )),
        }
    }

    pub fn declared_too_large(&self) -> bool {
        self.declared_too_large
    }
}

impl From<BoxError> for BodyError {
    fn from(e: BoxError) -> BodyError {
        if e.is::<LengthLimitError>() {
            return BodyError::TooLarge;
        }
        if e.is::<TimeoutError>() {
            return BodyError::TimedOut;
        }
        BodyError::Read(e)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.body.as_mut().poll_frame(cx).map_err(BodyError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Request bodies up to this size are read before forwarding and kept, so
/// the request can be retried on another worker.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// A request body on its way to a worker.
pub enum Outgoing {
    Full(Full<Bytes>),
    /// What was read ahead (up to [`REPLAY_LIMIT`]), then the rest.
    Stream(Option<Bytes>, ClientBody),
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Outgoing::Full(full) => boxed_frame(full, cx),
            Outgoing::Stream(ahead, body) => match ahead.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => boxed_frame(body, cx),
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

/// A body's next frame, its error boxed: the bodies on the request path
/// each fail their own way, and hyper takes any boxed error.
pub(super) fn boxed_frame<B>(
    body: &mut B,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body<Data = Bytes, Error: Into<BoxError>> + Unpin,
{
    Pin::new(body)
        .poll_frame(cx)
        .map(|frame| frame.map(|f| f.map_err(Into::into)))
}

/// `hint` with `extra` bytes read ahead put back in front.
pub(super) fn plus(hint: SizeHint, extra: u64) -> SizeHint {
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
    Stream(Option<(Option<Bytes>, ClientBody)>),
}

impl Held {
    /// Reads a body of up to [`REPLAY_LIMIT`] whole before anything goes to
    /// a worker, so that it can be sent again and a broken one (a bad
    /// chunk size, too large, too slow) is refused before it is forwarded;
    /// a larger one streams from what was read ahead on.
    pub async fn read(body: RequestBody, limits: BodyLimits) -> Result<Held, BodyError> {
        if let RequestBody::Whole(whole) = body {
            // Read with its head, so already in memory whatever its size.
            let whole = whole.unwrap_or_default();
            if limits.max_size.is_some_and(|max| whole.len() as u64 > max) {
                return Err(BodyError::TooLarge);
            }
            return Ok(Held::Whole(whole));
        }
        if body.is_end_stream() {
            return Ok(Held::Whole(Bytes::new()));
        }
        let mut body = ClientBody::new(body, limits);
        if body.declared_too_large() {
            return Err(BodyError::TooLarge);
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
