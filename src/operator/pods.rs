//! The operator's clients: each pod's corral admin API (through the shared
//! contract types) and Prometheus' HTTP query API. Every call has a
//! deadline; errors say which endpoint failed and how.

use std::time::Duration;

use hyper::{Method, StatusCode};

use super::spec::PromServer;
use crate::contract::{ErrorDoc, ScaleRequest, VERSION, WorkersDoc};
use crate::http::{self, HttpError};

const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Unreachable(#[from] HttpError),
    #[error("{addr} refused the token ({status})")]
    Unauthorized { addr: String, status: StatusCode },
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
pub async fn workers(addr: &str) -> Result<WorkersDoc, PodError> {
    let (status, body) = http::request(addr, Method::GET, "/workers", None, None, TIMEOUT).await?;
    if !status.is_success() {
        return Err(refused(addr, status, &body));
    }
    let doc: WorkersDoc = serde_json::from_slice(&body).map_err(|e| PodError::Decode {
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

/// Sets a pod's worker count (`None`: back to its configured default).
pub async fn set_desired(
    addr: &str,
    token: Option<&str>,
    desired: Option<u32>,
) -> Result<(), PodError> {
    let body = serde_json::to_string(&ScaleRequest { desired }).unwrap_or_default();
    let (status, answer) =
        http::request(addr, Method::PUT, "/workers", token, Some(body), TIMEOUT).await?;
    match status {
        s if s.is_success() => Ok(()),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(PodError::Unauthorized {
            addr: addr.to_string(),
            status,
        }),
        _ => Err(refused(addr, status, &answer)),
    }
}

fn refused(addr: &str, status: StatusCode, body: &[u8]) -> PodError {
    PodError::Refused {
        addr: addr.to_string(),
        status,
        message: serde_json::from_slice::<ErrorDoc>(body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(200).collect()),
    }
}

/// Runs an instant query; `Ok(None)` when it returns no sample.
pub async fn prometheus(server: &PromServer, query: &str) -> Result<Option<f64>, PodError> {
    let path = format!(
        "{}/api/v1/query?query={}",
        server.prefix,
        http::encode_query_value(query)
    );
    let addr = server.authority.as_str();
    let (status, body) = http::request(addr, Method::GET, &path, None, None, TIMEOUT).await?;
    if !status.is_success() {
        return Err(refused(addr, status, &body));
    }
    parse_prometheus(&body).map_err(|message| PodError::Decode {
        addr: addr.to_string(),
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
