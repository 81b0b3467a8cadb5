//! The one HTTP client: hyper-util's pooled client over http or https
//! (rustls, the system's roots), with a deadline on each exchange and a
//! cap on the answer's size. The operator keeps one for every pod it
//! polls, so a pass over many pods reuses connections instead of opening
//! one per call.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tracing::warn;

/// Largest answer read: a /workers document of many workers fits easily.
const MAX_ANSWER: usize = 4 << 20;
/// How long an idle pooled connection is kept: longer than any poll
/// interval an autoscaler is likely to use, shorter than the servers'
/// own keep-alive timeouts.
const IDLE: Duration = Duration::from_secs(30);

/// RFC 3986 unreserved characters pass through a query value; all else is
/// percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("`{uri}` is not a URL: {message}")]
    Uri { uri: String, message: String },
    #[error("cannot reach {uri}: {source}")]
    Connect {
        uri: String,
        source: Box<hyper_util::client::legacy::Error>,
    },
    #[error("{uri}: answer unreadable or over {MAX_ANSWER} bytes")]
    Body { uri: String },
    #[error("no answer from {uri} within {timeout:?}")]
    Timeout { uri: String, timeout: Duration },
}

/// A status and a body, read whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct Client {
    inner: Pooled<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // Same reason as on corral's listeners: small requests and answers
        // must not wait for Nagle.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(3)));
        let builder = HttpsConnectorBuilder::new().with_tls_config(tls());
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let inner = Pooled::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE)
            .build(connector);
        Client { inner }
    }

    /// Sends one request and reads the whole answer within `timeout`.
    pub async fn send(
        &self,
        method: Method,
        uri: Uri,
        bearer: Option<&str>,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        let mut req = Request::builder().method(method).uri(uri.clone());
        if body.is_some() {
            req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(token) = bearer {
            let value =
                HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| HttpError::Uri {
                    uri: uri.to_string(),
                    message: "the token is not a valid header value".into(),
                })?;
            req = req.header(AUTHORIZATION, value);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| HttpError::Uri {
                uri: uri.to_string(),
                message: e.to_string(),
            })?;
        let work = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|source| HttpError::Connect {
                    uri: uri.to_string(),
                    source: Box::new(source),
                })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|_| HttpError::Body {
                    uri: uri.to_string(),
                })?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| HttpError::Timeout {
                uri: uri.to_string(),
                timeout,
            })?
    }
}

/// The TLS settings with the system's CA certificates, read once per
/// process: loading the bundle parses every certificate in it, and the CLI
/// and the tests make a client per call. A minimal image may carry no
/// bundle: http still works, and an https call fails naming the
/// certificate it could not trust.
fn tls() -> rustls::ClientConfig {
    static TLS: OnceLock<rustls::ClientConfig> = OnceLock::new();
    TLS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (trusted, _) = roots.add_parsable_certificates(found.certs);
        if trusted == 0 {
            warn!(errors = ?found.errors, "no system CA certificates: https servers will not be trusted");
        }
        rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth()
    })
    .clone()
}

/// `base` (`http://host:port`, `https://host/prefix`, or a bare
/// `host:port`, taken as http) joined with `path` and the encoded `query`.
pub fn url(base: &str, path: &str, query: &[(&str, &str)]) -> Result<Uri, HttpError> {
    let has_scheme = base.contains("://");
    let base = base.trim_end_matches('/');
    let mut text = if has_scheme {
        format!("{base}{path}")
    } else {
        format!("http://{base}{path}")
    };
    for (i, (key, value)) in query.iter().enumerate() {
        text.push(if i == 0 { '?' } else { '&' });
        text.push_str(&utf8_percent_encode(key, QUERY_VALUE).to_string());
        text.push('=');
        text.push_str(&utf8_percent_encode(value, QUERY_VALUE).to_string());
    }
    let uri: Uri = text
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| HttpError::Uri {
            uri: text.clone(),
            message: e.to_string(),
        })?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(HttpError::Uri {
            uri: text,
            message: "needs http:// or https:// and a host".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_and_encode() {
        let u = url(
            "http://prom:9090/p/",
            "/api/v1/query",
            &[("query", r#"rate(x{pod="a b"}[1m])"#)],
        )
        .unwrap();
        assert_eq!(
            u.to_string(),
            "http://prom:9090/p/api/v1/query?query=rate%28x%7Bpod%3D%22a%20b%22%7D%5B1m%5D%29"
        );
        assert_eq!(
            url("127.0.0.1:9000", "/workers", &[]).unwrap().to_string(),
            "http://127.0.0.1:9000/workers"
        );
        assert_eq!(
            url("[fd00::1]:9000", "/workers", &[])
                .unwrap()
                .authority()
                .unwrap()
                .as_str(),
            "[fd00::1]:9000"
        );
        assert!(url("https://prom.example:443", "/", &[]).is_ok());
        for bad in ["ftp://x/", "http://", "http://a b/", ""] {
            assert!(url(bad, "/x", &[]).is_err(), "{bad:?}");
        }
    }
}
