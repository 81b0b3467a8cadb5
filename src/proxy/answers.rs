//! The answers the front gives itself, never a worker's: plain text, and
//! for each refusal the fields a client or nginx would expect (`Retry-After`
//! on a 503, `Connection: close` after a body left unread).

use hyper::Response;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};

use super::backends::Refusal;
use super::request_body::BodyError;
use super::response_body::FrontBody;

/// A plain-text answer.
pub fn answer(status: StatusCode, text: &'static str) -> Response<FrontBody> {
    let mut r = Response::new(FrontBody::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The answer to a body the client got wrong: too large (413), too slow
/// (408) or malformed (400); the connection is closed, as nginx does,
/// since the rest of the body is not read.
pub fn body_refused(e: &BodyError) -> Response<FrontBody> {
    let (status, text) = match e {
        BodyError::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than this server takes\n",
        ),
        BodyError::TimedOut => (
            StatusCode::REQUEST_TIMEOUT,
            "the request body came too slowly\n",
        ),
        BodyError::Read(_) => (
            StatusCode::BAD_REQUEST,
            "the request body could not be read\n",
        ),
    };
    let mut r = answer(status, text);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// No worker's place for the request: 503, to be tried again in a second.
pub fn refused(refusal: Refusal) -> Response<FrontBody> {
    let mut r = answer(
        StatusCode::SERVICE_UNAVAILABLE,
        match refusal {
            Refusal::QueueFull => "too many requests are waiting for a worker\n",
            Refusal::Timeout => "no worker was free in time\n",
        },
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}
