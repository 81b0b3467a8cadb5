//! A small HTTP/1.1 client over hyper for the admin API's clients: the CLI
//! and the operator. One request per connection, a deadline on the whole
//! exchange, and nothing else: both talk to a handful of known endpoints.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Largest answer read: a /workers document of many workers fits easily.
const MAX_ANSWER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Protocol { addr: String, source: hyper::Error },
    #[error("{addr}: bad request: {source}")]
    Build {
        addr: String,
        source: hyper::http::Error,
    },
    #[error("{addr}: answer unreadable or over {MAX_ANSWER} bytes")]
    Body { addr: String },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
}

/// Sends one request to `addr` (`host:port`) and returns status and body.
pub async fn request(
    addr: &str,
    method: Method,
    path_and_query: &str,
    bearer: Option<&str>,
    body: Option<String>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), HttpError> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| HttpError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let protocol = |source| HttpError::Protocol {
            addr: addr.to_string(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(protocol)?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", addr)
            .header("content-type", "application/json");
        if let Some(token) = bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| HttpError::Build {
                addr: addr.to_string(),
                source,
            })?;
        let resp = sender.send_request(req).await.map_err(protocol)?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|_| HttpError::Body {
                addr: addr.to_string(),
            })?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Timeout {
            addr: addr.to_string(),
            timeout,
        })?
}

/// Percent-encodes a query-string value (RFC 3986 unreserved pass through).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            encode_query_value(r#"rate(x{pod="a b"}[1m])"#),
            "rate%28x%7Bpod%3D%22a%20b%22%7D%5B1m%5D%29"
        );
    }
}
