//! Proxy mode's front (`corral run --proxy`): corral accepts on `--bind`
//! itself and forwards each request over keep-alive HTTP/1.1 to the least
//! busy worker, each worker on its own Unix socket. Because every request
//! passes here, a draining worker is stopped only once it holds none, a
//! request that never reached a worker (or an idempotent one whose worker
//! died before answering) is sent again elsewhere, and overload is
//! answered 503 with `Retry-After` from a bounded queue instead of a
//! reset. The manager opens and closes workers in [`Backends`]; this
//! module only moves requests.

mod answers;
pub mod backends;
mod dispatched;
mod head;
pub mod headers;
mod link;
pub mod metrics;
pub mod pool;
pub mod request_body;
pub mod response_body;
pub mod sockets;
pub mod threads;
mod tunnel;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::ProxyConfig;
use crate::http::framing;
use crate::http::server::{self, ConnectionPlace, Limits, Listener, Peer, RequestBody};
use answers::{answer, body_refused, refused};
use backends::Place;
pub use backends::{Backends, Key, Load};
use dispatched::Dispatched;
use head::Head;
use link::LinkError;
pub use metrics::Metrics;
use metrics::Retry;
use pool::{ConnectError, Pool};
use request_body::{BodyError, BodyLimits, BoxError, Held};
use response_body::{Ahead, Done, FrontBody, WorkerBody};
pub use threads::FrontThreads;

/// The front's server limits: clients, keep-alive and the header
/// timeout as configured, HTTP/2, and at shutdown a second for a client
/// that connected just in time to send its request.
fn limits(config: &ProxyConfig) -> Limits {
    Limits {
        connections: config.max_connections as usize,
        header_read_timeout: config.client_header_timeout,
        keep_alive: config.keep_alive,
        send_timeout: config.send_timeout,
        shutdown_grace: None,
        first_request_grace: Duration::from_secs(1),
        http2: true,
        strict_framing: true,
        max_headers: config.head_limits.fields,
    }
}

/// Attempts per request at most: a request is sent again after a refused
/// connection (to another worker each time) or once after a failure that
/// left it unanswered.
const MAX_ATTEMPTS: u32 = 4;

/// Recorded for a request whose client left before its answer (nginx's
/// 499); nobody receives it.
const CLIENT_GONE: StatusCode = match StatusCode::from_u16(499) {
    Ok(code) => code,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// What every request handler shares.
struct Shared {
    backends: Arc<Backends>,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    config: ProxyConfig,
}

/// A request's line in the metrics, written when it is dropped: its
/// answer's status, or 499 (as nginx logs it) if its client left first and
/// the exchange was dropped with it.
struct Counted<'a> {
    metrics: &'a Metrics,
    method: Method,
    version: Version,
    status: StatusCode,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.metrics
            .answered(self.status, &self.method, self.version);
    }
}

/// The running front, as the manager holds it.
pub struct Front {
    pub backends: Arc<Backends>,
    pub pool: Arc<Pool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Last: the runtime ends once the rest is gone.
    _threads: FrontThreads,
}

impl Front {
    /// Starts serving on `listeners`, on `threads` (where the listeners
    /// were made). Requests wait in the queue until the manager opens a
    /// first worker.
    pub fn start(
        config: &ProxyConfig,
        threads: FrontThreads,
        listeners: Vec<Listener>,
        metrics: Arc<Metrics>,
    ) -> Front {
        let backends = Backends::new(
            config.worker_concurrency,
            config.max_queue,
            config.queue_timeout,
        );
        let pool = Arc::new(Pool::default());
        let shared = Arc::new(Shared {
            backends: backends.clone(),
            pool: pool.clone(),
            metrics,
            config: config.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = threads.handle().spawn(server::serve(
            listeners,
            limits(config),
            move |req, peer| Shared::handle(shared.clone(), req, peer),
            stopped,
        ));
        Front {
            backends,
            pool,
            stop,
            task,
            _threads: threads,
        }
    }

    /// Stops accepting (what the kernel already queued is still taken in
    /// and answered); requests in progress finish with `Connection: close`.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Every client connection is done.
    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// RFC 9110's idempotent methods: sending one twice means what sending it
/// once does.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

impl Shared {
    fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            timeout: self.config.client_body_timeout,
            max_size: self.config.client_max_body_size,
        }
    }

    /// The exchange is boxed here, before any future holds it: hyper keeps
    /// the space of a connection's request future for as long as the
    /// connection lives, and the exchange's is large (boxed, an idle
    /// keep-alive connection holds a pointer's worth of it); and the small
    /// future returned is what gets moved on its way to the connection.
    fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        peer: Peer,
    ) -> impl Future<Output = Response<FrontBody>> + Send + 'static {
        let started = Instant::now();
        let (method, version) = (req.method().clone(), req.version());
        let shared = self.clone();
        let forward = Box::pin(Self::forward(self, req, peer, started));
        async move {
            let mut counted = Counted {
                metrics: &shared.metrics,
                method,
                version,
                status: CLIENT_GONE,
            };
            let response = forward.await;
            counted.status = response.status();
            if !matches!(response.body(), FrontBody::Proxied { .. }) {
                shared.metrics.observe_duration(started.elapsed());
            }
            response
        }
    }

    async fn forward(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
        peer: Peer,
        started: Instant,
    ) -> Response<FrontBody> {
        if req.extensions().get::<framing::Ambiguous>().is_some() {
            // Never forwarded: a worker could read its length otherwise.
            let mut r = answer(
                StatusCode::BAD_REQUEST,
                "the request's length is ambiguous (Content-Length with Transfer-Encoding, or twice)\n",
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        if let Some((status, why)) = self.config.head_limits.refusal(&req) {
            return answer(status, why);
        }
        if req.method() == Method::TRACE {
            // nginx's answer: TRACE echoes a request's cookies and
            // credentials back (cross-site tracing), and no app needs it
            // through a proxy.
            return answer(StatusCode::METHOD_NOT_ALLOWED, "TRACE is not allowed\n");
        }
        let upgrade = headers::is_upgrade(req.headers());
        let mut client_side = upgrade.then(|| {
            let place = req.extensions_mut().remove::<ConnectionPlace>();
            (hyper::upgrade::on(&mut req), place)
        });
        let (parts, body) = req.into_parts();
        let head = Head::for_worker(parts, peer, upgrade, &self.config.forwarded_allow_ips);
        let mut body = match Held::read(body, self.body_limits()).await {
            Ok(b) => b,
            Err(e) => {
                debug!(error = %e, "reading a request body");
                return body_refused(&e);
            }
        };
        if let (Held::Whole(whole), false) = (&body, upgrade) {
            return self.forward_whole(head, whole.clone(), started).await;
        }
        let retry_ok = idempotent(&head.method) && body.replayable() && !upgrade;
        let mut avoid = None;
        let mut retried = false;
        for _ in 0..MAX_ATTEMPTS {
            let place = match self.place(avoid).await {
                Ok(p) => p,
                Err(no_place) => return no_place,
            };
            let key = place.key;
            let mut sender = match self.pool.checkout(key, &place.socket).await {
                Ok(s) => s,
                Err(e) => {
                    avoid = Some(self.connect_failed(key, &e));
                    continue;
                }
            };
            let Some(outgoing) = body.take() else {
                break;
            };
            let sent = sender.try_send_request(head.request(outgoing));
            let limit = self.config.request_timeout;
            let (result, place) = Dispatched::new(
                async move {
                    match limit {
                        None => Ok(sent.await),
                        Some(limit) => tokio::time::timeout(limit, sent).await,
                    }
                },
                place,
            )
            .await;
            match result {
                Ok(Ok(response)) => {
                    match self
                        .respond(response, place, sender, started, client_side.take())
                        .await
                    {
                        Ok(response) => return response,
                        // Nothing has gone to the client yet: as good as no
                        // answer at all.
                        Err(error) if retry_ok && !retried => {
                            retried = true;
                            debug!(worker = key.id, error = %error, "broken answer: retrying once");
                            self.metrics.retried(Retry::NoResponse);
                            avoid = Some(key);
                            continue;
                        }
                        Err(error) => {
                            warn!(worker = key.id, error = %error, method = %head.method, path = %head.uri, "worker failed mid-response");
                            return answer(
                                StatusCode::BAD_GATEWAY,
                                "the worker failed to answer\n",
                            );
                        }
                    }
                }
                Ok(Err(mut failed)) => {
                    if let Some(unsent) = failed.take_message() {
                        body.put_back(unsent.into_body());
                        self.metrics.retried(Retry::Unsent);
                        avoid = Some(key);
                        continue;
                    }
                    let error = failed.into_error();
                    if let Some(e) = client_fault(&error) {
                        debug!(worker = key.id, error = %e, "the client's body failed on its way");
                        return body_refused(e);
                    }
                    if retry_ok && !retried {
                        retried = true;
                        debug!(worker = key.id, error = %error, "no answer: retrying once");
                        self.metrics.retried(Retry::NoResponse);
                        avoid = Some(key);
                        continue;
                    }
                    warn!(worker = key.id, error = %error, method = %head.method, path = %head.uri, "worker failed the request");
                    return answer(StatusCode::BAD_GATEWAY, "the worker failed to answer\n");
                }
                Err(_elapsed) => return self.timed_out(key, &head),
            }
        }
        answer(
            StatusCode::BAD_GATEWAY,
            "no worker could take the request\n",
        )
    }

    /// A request whose body is in hand (none, or held whole), over
    /// corral's own exchange ([`link`]): sent again, to another worker,
    /// while no worker has seen it, and once more after a failure that left
    /// it unanswered if its method is idempotent.
    async fn forward_whole(
        &self,
        head: Head,
        body: Bytes,
        started: Instant,
    ) -> Response<FrontBody> {
        let retry_ok = idempotent(&head.method);
        let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut avoid = None;
        let mut retried = false;
        for _ in 0..MAX_ATTEMPTS {
            let place = match self.place(avoid).await {
                Ok(p) => p,
                Err(no_place) => return no_place,
            };
            let key = place.key;
            let mut link = match self.pool.checkout_link(key, &place.socket).await {
                Ok(link) => link,
                Err(e) => {
                    avoid = Some(self.connect_failed(key, &e));
                    continue;
                }
            };
            link.encode(&head, target, &body);
            let limit = self.config.request_timeout;
            let (method, home) = (head.method.clone(), (self.pool.clone(), key));
            let (result, place) = Dispatched::new(
                async move {
                    let exchange = link.exchange(&method, home);
                    match limit {
                        None => Ok(exchange.await),
                        Some(limit) => tokio::time::timeout(limit, exchange).await,
                    }
                },
                place,
            )
            .await;
            let error: BoxError = match result {
                Ok(Ok((parts, body))) => {
                    match self
                        .relay(parts, WorkerBody::Link(body), place, None, started)
                        .await
                    {
                        Ok(response) => return response,
                        Err(error) => error,
                    }
                }
                Ok(Err(LinkError::Unsent(e))) => {
                    debug!(worker = key.id, error = %e, "unsent: retrying on another worker");
                    self.metrics.retried(Retry::Unsent);
                    avoid = Some(key);
                    continue;
                }
                Ok(Err(error)) => error.into(),
                Err(_elapsed) => return self.timed_out(key, &head),
            };
            if retry_ok && !retried {
                retried = true;
                debug!(worker = key.id, error = %error, "no answer: retrying once");
                self.metrics.retried(Retry::NoResponse);
                avoid = Some(key);
                continue;
            }
            warn!(worker = key.id, error = %error, method = %head.method, path = %head.uri, "worker failed the request");
            return answer(StatusCode::BAD_GATEWAY, "the worker failed to answer\n");
        }
        answer(
            StatusCode::BAD_GATEWAY,
            "no worker could take the request\n",
        )
    }

    /// A worker's place for an attempt, the wait for it observed; the 503
    /// when none comes.
    async fn place(&self, avoid: Option<Key>) -> Result<Place, Response<FrontBody>> {
        // Most requests find room at once: a wait of nothing, and no clock
        // read for it.
        if let Some(place) = self.backends.try_acquire(avoid) {
            self.metrics.observe_queue_wait(Duration::ZERO);
            return Ok(place);
        }
        let waited = Instant::now();
        let place = self.backends.acquire(avoid).await.map_err(refused)?;
        self.metrics.observe_queue_wait(waited.elapsed());
        Ok(place)
    }

    /// A worker's socket that refused a connection is marked broken; the
    /// request goes to another worker (the key to avoid).
    fn connect_failed(&self, key: Key, e: &ConnectError) -> Key {
        if matches!(e, ConnectError::Refused(_)) {
            self.backends.mark_broken(key);
        }
        debug!(worker = key.id, error = %e, "retrying on another worker");
        self.metrics.retried(Retry::Connect);
        key
    }

    /// No answer within `--request-timeout`: 504, and with
    /// `--kill-stuck` the worker is replaced.
    fn timed_out(&self, key: Key, head: &Head) -> Response<FrontBody> {
        warn!(worker = key.id, method = %head.method, path = %head.uri, "request timed out");
        if self.config.kill_stuck {
            self.backends.mark_stuck(key);
        }
        answer(
            StatusCode::GATEWAY_TIMEOUT,
            "the worker did not answer in time\n",
        )
    }

    async fn respond(
        &self,
        mut response: Response<Incoming>,
        place: Place,
        sender: pool::Sender,
        started: Instant,
        client_side: Option<(hyper::upgrade::OnUpgrade, Option<ConnectionPlace>)>,
    ) -> Result<Response<FrontBody>, BoxError> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let worker_side = switching.then(|| hyper::upgrade::on(&mut response));
        let (mut parts, body) = response.into_parts();
        if let (Some((client_side, connection)), Some(worker_side)) = (client_side, worker_side) {
            parts.version = Version::HTTP_11;
            headers::strip_hop_by_hop(&mut parts.headers, true);
            tokio::spawn(tunnel::run(
                client_side,
                worker_side,
                (place, connection),
                self.config.tunnel_idle_timeout,
            ));
            drop(sender);
            return Ok(Response::from_parts(parts, FrontBody::empty()));
        }
        self.relay(parts, WorkerBody::Hyper(body), place, Some(sender), started)
            .await
    }

    /// A worker's answer on its way to the client, its body read ahead
    /// (`response_body::read_ahead`).
    async fn relay(
        &self,
        mut parts: hyper::http::response::Parts,
        mut body: WorkerBody,
        place: Place,
        sender: Option<pool::Sender>,
        started: Instant,
    ) -> Result<Response<FrontBody>, BoxError> {
        // The client gets the front's HTTP version, as from nginx: a worker
        // answering HTTP/1.0 would otherwise close every client connection.
        parts.version = Version::HTTP_11;
        headers::strip_hop_by_hop(&mut parts.headers, false);
        let done = Done {
            place,
            sender,
            pool: self.pool.clone(),
            metrics: self.metrics.clone(),
            started,
        };
        // A worker that fails while its answer is read ahead has sent the
        // client nothing yet: the caller may send the request elsewhere.
        Ok(match response_body::read_ahead(&mut body).await? {
            Ahead::Whole(bytes) => {
                done.release();
                // A body the worker sent chunked goes with a Content-Length.
                Response::from_parts(parts, FrontBody::full(bytes))
            }
            Ahead::Partial(ahead) => Response::from_parts(
                parts,
                FrontBody::Proxied {
                    ahead,
                    body,
                    done: Some(done),
                },
            ),
        })
    }
}

/// A failed exchange whose cause is the client's body (streamed past the
/// read-ahead), not the worker.
fn client_fault(e: &hyper::Error) -> Option<&BodyError> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(body) = s.downcast_ref::<BodyError>() {
            return Some(body);
        }
        source = s.source();
    }
    None
}
