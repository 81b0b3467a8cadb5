//! The admin API: probes, the worker-count contract, metrics. Served by the
//! manager on its own port, apart from the workers' listeners, so it
//! answers while every worker is busy or dead. Reads come from the latest
//! snapshot; changes go to the supervision loop as commands and are answered
//! by it, so the loop stays the only owner of worker state.

pub mod metrics;
pub mod openapi;

use std::sync::Arc;
use std::time::Duration;

use crate::http::server::RequestBody;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::contract::{ErrorDoc, ProbeDoc, ScaleRequest};
use crate::manager::{Command, ScaleError, Snapshot};
use metrics::Metrics;

/// How long a mutation or liveness ping may wait for the loop.
const LOOP_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BODY: usize = 64 * 1024;

pub struct AdminState {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub commands: mpsc::Sender<Command>,
    /// `None`: mutations are refused.
    pub token: Option<Vec<u8>>,
    pub metrics: Arc<Metrics>,
}

type Resp = Response<Full<Bytes>>;

/// Serves the admin API until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: watch::Receiver<bool>) {
    let handle = move |req, _| handle(state.clone(), req);
    use crate::http::server::{self, Listener, SMALL};
    server::serve(vec![Listener::Tcp(listener)], SMALL, handle, shutdown).await;
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    let text = serde_json::to_vec_pretty(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_default()
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json(
        status,
        &ErrorDoc {
            error: message.into(),
            limited_by: None,
            limit: None,
        },
    )
}

/// What answers a request.
#[derive(Debug, Clone, Copy)]
enum Route {
    Livez,
    Readyz,
    Workers,
    Scale,
    Restart,
    Metrics,
    OpenApi,
}

/// The router: every path and method the API answers. `/openapi.json`
/// documents exactly these (a test holds the two together), and any other
/// method on a known path is a 405 naming these.
const ROUTES: &[(&str, &str, Route)] = &[
    ("/livez", "GET", Route::Livez),
    ("/readyz", "GET", Route::Readyz),
    ("/workers", "GET", Route::Workers),
    ("/workers", "PUT", Route::Scale),
    ("/workers/restart", "POST", Route::Restart),
    ("/metrics", "GET", Route::Metrics),
    ("/openapi.json", "GET", Route::OpenApi),
];

async fn handle(state: Arc<AdminState>, req: Request<RequestBody>) -> Resp {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    let route = ROUTES
        .iter()
        .find(|(p, m, _)| *p == path && *m == method.as_str())
        .map(|r| r.2);
    let Some(route) = route else {
        let allowed: Vec<&str> = ROUTES
            .iter()
            .filter(|(p, _, _)| *p == path)
            .map(|r| r.1)
            .collect();
        if allowed.is_empty() {
            return error(StatusCode::NOT_FOUND, format!("no such path: {path}"));
        }
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        );
        if let Ok(v) = allowed.join(", ").parse() {
            r.headers_mut().insert(ALLOW, v);
        }
        return r;
    };
    match route {
        Route::Livez => livez(&state).await,
        Route::Readyz => readyz(&state),
        Route::Workers => json(StatusCode::OK, &state.snapshot.borrow().doc),
        Route::Scale => scale(&state, req).await,
        Route::Restart => restart(&state, req).await,
        Route::Metrics => {
            let snapshot = state.snapshot.borrow().clone();
            Response::builder()
                .header(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
                .body(Full::new(Bytes::from(state.metrics.render(&snapshot))))
                .unwrap_or_default()
        }
        Route::OpenApi => {
            static DOCUMENT: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
            let text = DOCUMENT.get_or_init(|| {
                Bytes::from(serde_json::to_vec_pretty(&openapi::document()).unwrap_or_default())
            });
            Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(text.clone()))
                .unwrap_or_default()
        }
    }
}

async fn livez(state: &AdminState) -> Resp {
    let (tx, rx) = oneshot::channel();
    let answered = state
        .commands
        .send(Command::Ping { reply: tx })
        .await
        .is_ok()
        && tokio::time::timeout(LOOP_TIMEOUT, rx)
            .await
            .is_ok_and(|r| r.is_ok());
    if answered {
        json(
            StatusCode::OK,
            &ProbeDoc {
                ok: true,
                reason: "supervision loop alive".into(),
            },
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &ProbeDoc {
                ok: false,
                reason: "supervision loop not answering".into(),
            },
        )
    }
}

/// Why the pod should or should not get traffic now.
pub fn readiness(s: &Snapshot) -> Result<String, String> {
    let doc = &s.doc;
    if doc.shutting_down {
        return Err("shutting down".into());
    }
    if doc.ready < s.min_ready {
        if s.failures > 0 {
            return Err(format!(
                "crash loop: {} of {} workers ready, {} failed starts in a row",
                doc.ready, s.min_ready, s.failures
            ));
        }
        return Err(format!(
            "booting: {} of {} workers ready",
            doc.ready, s.min_ready
        ));
    }
    Ok(format!("{} of {} workers ready", doc.ready, doc.desired))
}

fn readyz(state: &AdminState) -> Resp {
    match readiness(&state.snapshot.borrow()) {
        Ok(reason) => json(StatusCode::OK, &ProbeDoc { ok: true, reason }),
        Err(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &ProbeDoc { ok: false, reason },
        ),
    }
}

/// Checks the bearer token; `Err` is the answer to send.
#[allow(
    clippy::result_large_err,
    reason = "the error is the reply, built once per request"
)]
fn authorize(state: &AdminState, req: &Request<RequestBody>) -> Result<(), Resp> {
    let Some(token) = &state.token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "changes are disabled: start corral with --admin-token-file",
        ));
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if bool::from(p.as_bytes().ct_eq(token)) => Ok(()),
        _ => {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            Err(r)
        }
    }
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the reply, built once per request"
)]
async fn read_body(req: Request<RequestBody>) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY} bytes, or unreadable"),
        )),
    }
}

async fn ask(
    state: &AdminState,
    make: impl FnOnce(oneshot::Sender<Result<(), ScaleError>>) -> Command,
) -> Resp {
    let mut changes = state.snapshot.clone();
    changes.mark_unchanged();
    let (tx, rx) = oneshot::channel();
    if state.commands.send(make(tx)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervision loop has stopped",
        );
    }
    match tokio::time::timeout(LOOP_TIMEOUT, rx).await {
        Ok(Ok(Ok(()))) => {
            // The loop publishes right after it handles a command.
            let _ = tokio::time::timeout(LOOP_TIMEOUT, changes.changed()).await;
            json(StatusCode::OK, &state.snapshot.borrow().doc)
        }
        Ok(Ok(Err(ScaleError::ShuttingDown))) => {
            error(StatusCode::CONFLICT, "the manager is shutting down")
        }
        Ok(Ok(Err(e @ ScaleError::Limited { by, limit, .. }))) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &ErrorDoc {
                error: e.to_string(),
                limited_by: Some(by),
                limit: Some(limit),
            },
        ),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervision loop did not answer",
        ),
    }
}

async fn scale(state: &AdminState, req: Request<RequestBody>) -> Resp {
    if let Err(r) = authorize(state, &req) {
        return r;
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request = match parse_scale_request(&body) {
        Ok(r) => r,
        Err((status, message)) => return error(status, message),
    };
    ask(state, |reply| Command::Scale {
        desired: request.desired,
        reply,
    })
    .await
}

/// Reads a `PUT /workers` body: 400 when it is not JSON, 422 when it is
/// JSON of the wrong shape.
fn parse_scale_request(body: &[u8]) -> Result<ScaleRequest, (StatusCode, String)> {
    // Through a JSON object first: serde would also read the struct from
    // an array (`[3]`), which the API does not promise.
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
        .and_then(|object| {
            serde_json::from_value::<ScaleRequest>(serde_json::Value::Object(object))
        })
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("expected {{\"desired\": <whole number or null>}}: {e}"),
            ),
            _ => (StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
        })
}

async fn restart(state: &AdminState, req: Request<RequestBody>) -> Resp {
    if let Err(r) = authorize(state, &req) {
        return r;
    }
    if let Err(r) = read_body(req).await {
        return r;
    }
    ask(state, |reply| Command::Restart { reply }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scale_bodies() {
        assert_eq!(
            parse_scale_request(br#"{"desired": 3}"#).map(|r| r.desired),
            Ok(Some(3))
        );
        assert_eq!(
            parse_scale_request(br#"{"desired": null}"#).map(|r| r.desired),
            Ok(None)
        );
        for (body, status) in [
            (&b"{"[..], StatusCode::BAD_REQUEST),
            (b"", StatusCode::BAD_REQUEST),
            (b"[3]", StatusCode::UNPROCESSABLE_ENTITY),
            (br#"{"desired": -1}"#, StatusCode::UNPROCESSABLE_ENTITY),
            (br#"{"desired": 1e99}"#, StatusCode::UNPROCESSABLE_ENTITY),
            (
                br#"{"desired": 3, "extra": 1}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        ] {
            assert_eq!(
                parse_scale_request(body).map_err(|e| e.0).err(),
                Some(status),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    proptest! {
        #[test]
        fn any_body_is_a_request_or_a_client_error(body in any::<Vec<u8>>()) {
            if let Err((status, _)) = parse_scale_request(&body) {
                prop_assert!(status.is_client_error());
            }
        }

        #[test]
        fn any_json_value_for_desired_is_a_request_or_a_422(value in "[-0-9.eE]{1,30}|\\[\\]|\"[a-z]*\"|true|null") {
            let body = format!(r#"{{"desired": {value}}}"#);
            if let Err((status, _)) = parse_scale_request(body.as_bytes()) {
                prop_assert!(status.is_client_error());
            }
        }
    }
}
