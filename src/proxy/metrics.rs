//! The front's per-request series, counted as requests pass. The gauges
//! that describe a moment (in flight, queued, per-worker requests) are
//! rendered by the admin API from the manager's snapshot instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Method, StatusCode, Version};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

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
    /// `requests`' series by code, method and protocol as one number, found
    /// without hashing: prometheus hashes the label values at every
    /// `with_label_values`, which cost more than the rest of the count.
    answered: Mutex<Vec<(u32, IntCounter)>>,
    duration: Histogram,
    queue_wait: Histogram,
    retries: IntCounterVec,
}

/// The method labels: the standard methods by name, anything else as
/// `other`, so a client cannot grow the series without bound.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];

fn method_index(method: &Method) -> u32 {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

const PROTOCOLS: [&str; 3] = ["http/1.1", "http/1.0", "h2"];

fn protocol_index(version: Version) -> u32 {
    match version {
        Version::HTTP_2 => 2,
        Version::HTTP_10 => 1,
        _ => 0,
    }
}

/// How many series `answered` keeps at hand; any others (an app answering
/// with many codes) are looked up by label.
const ANSWERED_AT_HAND: usize = 32;

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
            answered: Mutex::new(Vec::new()),
            duration,
            queue_wait,
            retries,
        }))
    }

    pub fn answered(&self, code: StatusCode, method: &Method, version: Version) {
        let (method, protocol) = (method_index(method), protocol_index(version));
        let key = u32::from(code.as_u16()) << 8 | method << 2 | protocol;
        let series = || {
            self.requests.with_label_values(&[
                code.as_str(),
                METHODS[method as usize],
                PROTOCOLS[protocol as usize],
            ])
        };
        let Ok(mut at_hand) = self.answered.lock() else {
            return series().inc();
        };
        match at_hand.iter().find(|(k, _)| *k == key) {
            Some((_, counter)) => counter.inc(),
            None => {
                let counter = series();
                counter.inc();
                if at_hand.len() < ANSWERED_AT_HAND {
                    at_hand.push((key, counter));
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The count of each `(code, method, protocol)` series, as scraped.
    fn counts(registry: &Registry) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for family in registry.gather() {
            if family.name() != "http_requests_total" {
                continue;
            }
            for m in family.get_metric() {
                let labels: Vec<&str> = m.get_label().iter().map(|l| l.value()).collect();
                out.push((labels.join(" "), m.get_counter().value() as u64));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn each_answer_counts_once_in_its_own_series_past_those_at_hand() {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        let ok = StatusCode::OK;
        metrics.answered(ok, &Method::GET, Version::HTTP_11);
        metrics.answered(ok, &Method::GET, Version::HTTP_11);
        metrics.answered(ok, &Method::GET, Version::HTTP_2);
        metrics.answered(ok, &Method::from_bytes(b"PURGE").unwrap(), Version::HTTP_10);
        metrics.answered(StatusCode::NOT_FOUND, &Method::POST, Version::HTTP_11);
        assert_eq!(
            counts(&registry),
            [
                ("200 GET h2".to_string(), 1),
                ("200 GET http/1.1".to_string(), 2),
                ("200 other http/1.0".to_string(), 1),
                ("404 POST http/1.1".to_string(), 1),
            ]
        );
        // More series than are kept at hand: each still counted, twice.
        for _ in 0..2 {
            for code in 200..(200 + 2 * ANSWERED_AT_HAND as u16) {
                let code = StatusCode::from_u16(code).unwrap();
                metrics.answered(code, &Method::DELETE, Version::HTTP_11);
            }
        }
        let deletes: Vec<u64> = counts(&registry)
            .into_iter()
            .filter(|(labels, _)| labels.contains("DELETE"))
            .map(|(_, n)| n)
            .collect();
        assert_eq!(deletes, vec![2; 2 * ANSWERED_AT_HAND]);
    }
}
