//! The built-in worker's routes: `/`, `/healthz`, `/delay/{ms}`,
//! `/cpu/{ms}`, `/status/{code}`, `/echo`. Enough to demo and test a
//! manager: slow requests for draining, CPU burn for autoscaling, chosen
//! status codes for probes.

use std::time::{Duration, Instant};

use crate::http::server::RequestBody;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};

/// Longest delay or burn a request may ask for.
const MAX_MS: u64 = 600_000;
const MAX_ECHO: usize = 1 << 20;

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the reply, built once per request"
)]
fn millis(raw: &str) -> Result<u64, Response<Full<Bytes>>> {
    match raw.parse::<u64>() {
        Ok(ms) if ms <= MAX_MS => Ok(ms),
        _ => Err(text(
            StatusCode::BAD_REQUEST,
            format!("`{raw}`: milliseconds from 0 to {MAX_MS}\n"),
        )),
    }
}

pub async fn handle(req: Request<RequestBody>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let id = std::env::var("CORRAL_WORKER_ID").unwrap_or_else(|_| "-".into());
    match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) => text(
            StatusCode::OK,
            format!(
                "corral built-in worker\nworker: {id}\npid: {}\nversion: {}\n",
                std::process::id(),
                env!("CARGO_PKG_VERSION")
            ),
        ),
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, ["pid"]) => text(StatusCode::OK, format!("{}\n", std::process::id())),
        (&Method::GET, ["delay", ms]) => match millis(ms) {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, format!("slept {ms}ms\n"))
            }
            Err(r) => r,
        },
        (&Method::GET, ["cpu", ms]) => match millis(ms) {
            Ok(ms) => {
                burn(Duration::from_millis(ms));
                text(StatusCode::OK, format!("burned {ms}ms\n"))
            }
            Err(r) => r,
        },
        (_, ["status", code]) => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => text(status, format!("{}\n", status.as_u16())),
            None => text(
                StatusCode::BAD_REQUEST,
                format!("`{code}` is not a status code\n"),
            ),
        },
        (_, ["echo"]) => {
            let content_type = req.headers().get(CONTENT_TYPE).cloned();
            match Limited::new(req.into_body(), MAX_ECHO).collect().await {
                Ok(body) => {
                    let mut r = Response::new(Full::new(body.to_bytes()));
                    if let Some(ct) = content_type {
                        r.headers_mut().insert(CONTENT_TYPE, ct);
                    }
                    r
                }
                Err(_) => text(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB\n".into()),
            }
        }
        _ => text(StatusCode::NOT_FOUND, format!("no route for {path}\n")),
    }
}

/// Keeps this thread busy for `d` of its own CPU time, as a CPU-bound
/// request in a sync worker would: on a contended machine it takes longer
/// but costs the same, so a load of /cpu requests has a known CPU cost.
/// (Wall time, should the thread clock ever be unavailable.)
fn burn(d: Duration) {
    let thread_cpu = || {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
            .ok()
            .map(Duration::from)
    };
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let spent = || match (cpu, thread_cpu()) {
        (Some(start), Some(now)) => now.saturating_sub(start),
        _ => wall.elapsed(),
    };
    let mut x: u64 = 1;
    while spent() < d {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::time::{ClockId, clock_gettime};

    #[test]
    fn burn_spends_its_duration_in_cpu_time_not_wall_time() {
        let cpu = || Duration::from(clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap());
        let before = cpu();
        burn(Duration::from_millis(30));
        assert!(cpu() - before >= Duration::from_millis(30));
    }
}
