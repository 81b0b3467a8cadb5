//! The operator's clients: each pod's corral admin API (through the shared
//! contract types) and Prometheus' HTTP query API. Every call has a
//! deadline; errors say which endpoint failed and how.

use std::time::Duration;

use hyper::{Method, StatusCode};

use super::spec::PromServer;
use crate::contract::{ErrorDoc, LimitReason, ScaleRequest, VERSION, WorkersDoc};
use crate::http::client::{self, Answer, Client, HttpError};

const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Unreachable(#[from] HttpError),
    #[error("{addr} refused the token ({status})")]
    Unauthorized { addr: String, status: StatusCode },
    #[error("{addr} refused {requested} workers: {by:?} allows {limit}")]
    Limited {
        addr: String,
        requested: u32,
        by: LimitReason,
        limit: u32,
    },
    #[error("{addr} answered {status}: {message}")]
    Refused {
        addr: String,
        status: StatusCode,
        message: String,
    },
    #[error("{addr} speaks contract version {found}, this operator {VERSION}")]
    Version { addr: String, found: u32 },
    #[error("{addr}: unexpected answer: {message}")]
    Decode { addr: String, message: String },
}

/// Reads a pod's `/workers`.
pub async fn workers(http: &Client, addr: &str) -> Result<WorkersDoc, PodError> {
    let uri = client::url(addr, "/workers", &[])?;
    let answer = http.send(Method::GET, uri, None, None, TIMEOUT).await?;
    if !answer.status.is_success() {
        return Err(refused(addr, &answer));
    }
    document(addr, &answer)
}

/// Sets a pod's worker count (`None`: back to its configured default) and
/// returns the manager's document after the change: what it drives
/// towards now, which is what the operator records.
pub async fn set_desired(
    http: &Client,
    addr: &str,
    token: Option<&str>,
    desired: Option<u32>,
) -> Result<WorkersDoc, PodError> {
    let body = serde_json::to_vec(&ScaleRequest { desired }).unwrap_or_default();
    let uri = client::url(addr, "/workers", &[])?;
    let answer = http
        .send(Method::PUT, uri, token, Some(body), TIMEOUT)
        .await?;
    match answer.status {
        s if s.is_success() => document(addr, &answer),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(PodError::Unauthorized {
            addr: addr.to_string(),
            status: answer.status,
        }),
        StatusCode::UNPROCESSABLE_ENTITY => {
            match serde_json::from_slice::<ErrorDoc>(&answer.body) {
                Ok(ErrorDoc {
                    limited_by: Some(by),
                    limit: Some(limit),
                    ..
                }) => Err(PodError::Limited {
                    addr: addr.to_string(),
                    requested: desired.unwrap_or_default(),
                    by,
                    limit,
                }),
                _ => Err(refused(addr, &answer)),
            }
        }
        _ => Err(refused(addr, &answer)),
    }
}

fn document(addr: &str, answer: &Answer) -> Result<WorkersDoc, PodError> {
    let doc: WorkersDoc = serde_json::from_slice(&answer.body).map_err(|e| PodError::Decode {
        addr: addr.to_string(),
        message: e.to_string(),
    })?;
    if doc.version != VERSION {
        return Err(PodError::Version {
            addr: addr.to_string(),
            found: doc.version,
        });
    }
    Ok(doc)
}

fn refused(addr: &str, answer: &Answer) -> PodError {
    PodError::Refused {
        addr: addr.to_string(),
        status: answer.status,
        message: serde_json::from_slice::<ErrorDoc>(&answer.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| {
                String::from_utf8_lossy(&answer.body)
                    .chars()
                    .take(200)
                    .collect()
            }),
    }
}

/// Runs an instant query; `Ok(None)` when it returns no sample.
pub async fn prometheus(
    http: &Client,
    server: &PromServer,
    query: &str,
) -> Result<Option<f64>, PodError> {
    let uri = client::url(&server.base, "/api/v1/query", &[("query", query)])?;
    let answer = http.send(Method::GET, uri, None, None, TIMEOUT).await?;
    if !answer.status.is_success() {
        return Err(refused(&server.base, &answer));
    }
    parse_prometheus(&answer.body).map_err(|message| PodError::Decode {
        addr: server.base.clone(),
        message,
    })
}

/// The first number of an instant query's answer (vector or scalar).
pub fn parse_prometheus(body: &[u8]) -> Result<Option<f64>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(format!("query failed: {}", v["error"]));
    }
    let sample = match v["data"]["resultType"].as_str() {
        Some("vector") => v["data"]["result"].get(0).map(|r| r["value"][1].clone()),
        Some("scalar") => Some(v["data"]["result"][1].clone()),
        other => return Err(format!("unsupported result type {other:?}")),
    };
    match sample {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => s
            .parse::<f64>()
            .map(|x| x.is_finite().then_some(x))
            .map_err(|_| format!("`{s}` is not a number")),
        Some(other) => Err(format!("unexpected sample {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answers_are_read() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"42.5"]}]}}"#;
        assert_eq!(parse_prometheus(vector), Ok(Some(42.5)));
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#;
        assert_eq!(parse_prometheus(scalar), Ok(Some(3.0)));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_prometheus(empty), Ok(None));
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"NaN"]}}"#;
        assert_eq!(parse_prometheus(nan), Ok(None));
        let error = br#"{"status":"error","error":"bad query"}"#;
        assert!(parse_prometheus(error).unwrap_err().contains("bad query"));
    }
}
