//! What one server takes on and how long it waits (its limits), and the
//! HTTP/1.1 and HTTP/2 settings that follow from them.

use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::session::Protocols;
use crate::http::framing::{MAX_HEAD_BYTES, MAX_HEADERS};

/// How much one server takes on, and how it lets go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once, across the server.
    pub connections: usize,
    /// How long a client may take to send a request's headers, from its
    /// connection for the first request (a silent client is closed then).
    pub header_read_timeout: Duration,
    /// How long a connection may stay idle after a request (HTTP/1.1
    /// keep-alive; HTTP/2 with no open stream).
    pub keep_alive: Duration,
    /// How long a response may wait for its client to take the next part.
    pub send_timeout: Duration,
    /// How long answers in progress get once shutdown begins; `None`
    /// waits for all of them (whoever stops the server enforces a limit).
    pub shutdown_grace: Option<Duration>,
    /// At shutdown, how long a connection that has not sent its first
    /// request yet gets to send it: a client that connected just before
    /// the listener closed is answered, not reset with its request unread.
    pub first_request_grace: Duration,
    /// HTTP/2 beside HTTP/1.1 (h2c by prior knowledge, h2 by ALPN).
    pub http2: bool,
    /// Mark HTTP/1.1 requests whose length could be read two ways
    /// ([`crate::http::framing::Ambiguous`]), for a front that must not forward them.
    pub strict_framing: bool,
    /// Header fields an HTTP/1.1 request may have; more get 431.
    pub max_headers: usize,
}

/// HTTP/2 limits. Streams open at once per connection (nginx's default);
/// streams a client may reset before the server has even taken them (the
/// rapid reset attack, CVE-2023-44487: past it the connection is closed
/// with GOAWAY); and the header list a client may send.
const H2_MAX_STREAMS: u32 = 128;
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_LOCAL_RESETS: usize = 256;
const H2_MAX_HEADER_LIST: u32 = MAX_HEAD_BYTES as u32;

/// corral's admin-style servers: a handful of probes, scrapes and operator
/// calls at a time, never a flood.
pub const SMALL: Limits = Limits {
    connections: 64,
    header_read_timeout: Duration::from_secs(10),
    keep_alive: Duration::from_secs(30),
    send_timeout: Duration::from_secs(10),
    shutdown_grace: Some(Duration::from_secs(5)),
    first_request_grace: Duration::ZERO,
    http2: false,
    strict_framing: false,
    max_headers: MAX_HEADERS,
};

pub(super) fn protocols(limits: &Limits) -> Protocols {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // hyper's own head timer bounds a trickled head on servers without
        // the framing reader's (the admin API, the built-in worker). It
        // also runs while a keep-alive connection waits for its next
        // request, so never before ours (the header timeout counted from
        // the connection, keep-alive after a request) would. With the
        // framing reader's timer it would only add a timer per request.
        .header_read_timeout(
            (!limits.strict_framing).then_some(limits.header_read_timeout.max(limits.keep_alive)),
        )
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(limits.max_headers);
    let http2 = limits.http2.then(|| {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        http2
    });
    // The framing reader times a head out and refuses an ambiguous one,
    // whichever answers the request: with it, plain requests need no hyper.
    let plain = limits.strict_framing.then_some(limits.max_headers);
    Protocols {
        http1,
        plain,
        http2,
    }
}
