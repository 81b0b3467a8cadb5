//! The front's per-request series, counted as requests pass. The gauges
//! that describe a moment (in flight, queued, per-worker requests) are
//! rendered by the admin API from the manager's snapshot instead.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode, Version};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// Why a request was sent a second time; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The worker's socket refused the connection.
    Connect,
    /// The connection closed before the request was written.
    Unsent,
    /// An idempotent request got no response byte: its worker died or the
    /// connection failed.
    NoResponse,
}

impl Retry {
    pub const ALL: [Retry; 3] = [Retry::Connect, Retry::Unsent, Retry::NoResponse];

    pub fn as_str(self) -> &'static str {
        match self {
            Retry::Connect => "connect",
            Retry::Unsent => "unsent",
            Retry::NoResponse => "no_response",
        }
    }
}

pub struct Metrics {
    requests: IntCounterVec,
    duration: Histogram,
    queue_wait: Histogram,
    retries: IntCounterVec,
}

/// The method label: the standard methods by name, anything else as
/// `other`, so a client cannot grow the series without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

impl Metrics {
    /// The series, registered in the admin API's registry (whose
    /// `corral_` prefix they take).
    pub fn register(registry: &Registry) -> Result<Arc<Metrics>, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "Requests answered by the proxy, by status code, method and protocol.",
            ),
            &["code", "method", "protocol"],
        )?;
        let duration = Histogram::with_opts(HistogramOpts::new(
            "http_request_duration_seconds",
            "From a request's arrival to the last byte of its response.",
        ))?;
        let queue_wait = Histogram::with_opts(HistogramOpts::new(
            "http_queue_wait_seconds",
            "How long requests waited for a worker with room.",
        ))?;
        let retries = IntCounterVec::new(
            Opts::new(
                "http_retries_total",
                "Requests sent again to another worker, by reason.",
            ),
            &["reason"],
        )?;
        for r in Retry::ALL {
            retries.with_label_values(&[r.as_str()]);
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        Ok(Arc::new(Metrics {
            requests,
            duration,
            queue_wait,
            retries,
        }))
    }

    pub fn answered(&self, code: StatusCode, method: &Method, version: Version) {
        let protocol = match version {
            Version::HTTP_2 => "h2",
            Version::HTTP_10 => "http/1.0",
            _ => "http/1.1",
        };
        self.requests
            .with_label_values(&[code.as_str(), method_label(method), protocol])
            .inc();
    }

    pub fn observe_duration(&self, d: Duration) {
        self.duration.observe(d.as_secs_f64());
    }

    pub fn observe_queue_wait(&self, d: Duration) {
        self.queue_wait.observe(d.as_secs_f64());
    }

    pub fn retried(&self, why: Retry) {
        self.retries.with_label_values(&[why.as_str()]).inc();
    }
}
