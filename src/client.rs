//! `corral status`, `corral scale`, `corral restart`: small clients of a
//! running manager's admin API, reading the same contract types the
//! operator reads.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::cli::{ClientArgs, ScaleArgs, StatusArgs};
use crate::contract::{ErrorDoc, ScaleRequest, WorkersDoc};
use crate::http::client::{self, HttpError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot start: {0}")]
    Runtime(#[from] std::io::Error),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("token file {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("unexpected answer: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("`{0}` is not a worker count (a whole number, or `default`)")]
    BadCount(String),
}

fn token(args: &ClientArgs) -> Result<Option<String>, ClientError> {
    if let Ok(t) = std::env::var("CORRAL_ADMIN_TOKEN") {
        return Ok(Some(t.trim().to_string()));
    }
    args.token_file
        .as_deref()
        .map(|p: &Path| {
            std::fs::read_to_string(p)
                .map(|t| t.trim().to_string())
                .map_err(|source| ClientError::Token {
                    path: p.display().to_string(),
                    source,
                })
        })
        .transpose()
}

async fn call(
    args: &ClientArgs,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<Bytes, ClientError> {
    let token = token(args)?;
    let uri = client::url(&args.admin, path, &[])?;
    let answer = client::Client::new()
        .send(
            method,
            uri,
            token.as_deref(),
            body.map(String::into_bytes),
            Duration::from_secs(10),
        )
        .await?;
    if !answer.status.is_success() {
        let message = serde_json::from_slice::<ErrorDoc>(&answer.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer.body).into_owned());
        return Err(ClientError::Refused {
            status: answer.status,
            message,
        });
    }
    Ok(answer.body)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub fn status(args: StatusArgs) -> Result<(), ClientError> {
    let rt = runtime()?;
    let bytes = rt.block_on(call(&args.client, Method::GET, "/workers", None))?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let doc: WorkersDoc = serde_json::from_slice(&bytes)?;
    print!("{}", render_status(&doc, now()));
    Ok(())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The readable table `corral status` prints.
pub fn render_status(doc: &WorkersDoc, now: f64) -> String {
    let mut out = format!(
        "desired {} (configured {}{})  running {}  ready {}  generation {}{}\n",
        doc.desired,
        doc.configured,
        doc.requested
            .map(|r| format!(", requested {r}"))
            .unwrap_or_default(),
        doc.running,
        doc.ready,
        doc.generation,
        if doc.shutting_down {
            "  SHUTTING DOWN"
        } else {
            ""
        },
    );
    out += &format!(
        "limits: min {} max {}{}\n",
        doc.limits.min,
        doc.limits.max,
        doc.limits
            .memory_cap
            .map(|c| format!(" memory cap {c}"))
            .unwrap_or_default()
    );
    if let Some(c) = doc.concurrency {
        out += &format!(
            "proxy: {:.2} requests in flight per worker (recent mean), {} queued\n",
            c,
            doc.queued.unwrap_or(0)
        );
    }
    // Proxy mode's per-worker columns; shared-socket mode does not see requests.
    let proxied = doc.concurrency.is_some();
    let requests = |w: &crate::contract::WorkerDoc| {
        if proxied {
            format!(
                " {:>8} {:>9}",
                w.in_flight.unwrap_or(0),
                w.requests.unwrap_or(0)
            )
        } else {
            String::new()
        }
    };
    for l in &doc.listeners {
        out += &format!(
            "listener {}  queue {} (max {} recently)\n",
            l.address,
            l.queue_length.map_or("-".into(), |q| q.to_string()),
            l.queue_max_window.map_or("-".into(), |q| q.to_string()),
        );
    }
    out += &format!(
        "{:>3} {:>8} {:<9} {:>4} {:>8} {:>8} {:>6} {:>9}{}  {}\n",
        "ID",
        "PID",
        "STATE",
        "GEN",
        "UPTIME",
        "RESTARTS",
        "CPU%",
        "RSS",
        if proxied {
            format!(" {:>8} {:>9}", "INFLIGHT", "REQUESTS")
        } else {
            String::new()
        },
        "LAST EXIT"
    );
    for w in &doc.workers {
        let state = serde_json::to_value(w.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let last = w
            .last_exit
            .as_ref()
            .map(|e| {
                format!(
                    "{} (code {:?}, signal {:?})",
                    e.reason.as_str(),
                    e.code,
                    e.signal
                )
            })
            .unwrap_or_default();
        out += &format!(
            "{:>3} {:>8} {:<9} {:>4} {:>7.0}s {:>8} {:>6.1} {:>8.1}M{}  {}\n",
            w.id,
            w.pid,
            state,
            w.generation,
            (now - w.started_at).max(0.0),
            w.restarts,
            w.cpu_utilisation * 100.0,
            w.rss_bytes as f64 / 1048576.0,
            requests(w),
            last
        );
    }
    out
}

pub fn scale(args: ScaleArgs) -> Result<(), ClientError> {
    let desired = match args.workers.as_str() {
        "default" => None,
        n => Some(
            n.parse::<u32>()
                .map_err(|_| ClientError::BadCount(n.to_string()))?,
        ),
    };
    let body = serde_json::to_string(&ScaleRequest { desired })?;
    let rt = runtime()?;
    let bytes = rt.block_on(call(&args.client, Method::PUT, "/workers", Some(body)))?;
    let doc: WorkersDoc = serde_json::from_slice(&bytes)?;
    println!("desired {} (configured {})", doc.desired, doc.configured);
    Ok(())
}

pub fn restart(args: ClientArgs) -> Result<(), ClientError> {
    let rt = runtime()?;
    let bytes = rt.block_on(call(&args, Method::POST, "/workers/restart", None))?;
    let doc: WorkersDoc = serde_json::from_slice(&bytes)?;
    println!("rolling restart to generation {}", doc.generation);
    Ok(())
}
