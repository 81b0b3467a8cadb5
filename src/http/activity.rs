//! What each connection of a server is doing, so that none holds a place it
//! does not use. A connection is busy from a request's head until its
//! response body is sent (or dropped), else idle. An idle connection is
//! closed past its deadline: the header timeout before its first request
//! (a client that connects and says nothing, or trickles its head), the
//! keep-alive timeout after one (HTTP/1.1 between requests, HTTP/2 with no
//! open stream). And when the server is at its connection cap, a new client
//! makes room by closing the connection idle longest, as nginx reuses its
//! idle connections when it runs out: silent clients can fill the cap, but
//! they cannot keep a probe or a real client out. A busy connection whose
//! client stops taking its response (a slow reader) is closed when no part
//! of the response has gone for the send timeout, as nginx's
//! `send_timeout`: a response that waits for its worker is not stalled,
//! one that waits for its client is. A connection that has
//! not sent a request yet is spared for its first moments, and whenever
//! its request's bytes are already waiting in the socket: that is a client
//! about to be served, not an idle one.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Every connection of one server, for eviction at the cap.
pub struct Registry {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Arc<Activity>>>,
}

/// How long a new connection has to begin its first request before it
/// may be evicted: a client sends it right after connecting, an attacker
/// never does.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(100);

/// Requests a client may abandon before their answer (an HTTP/2 stream
/// reset after dispatch, mostly) once they are also half of its requests:
/// then its connection is closed. A browser cancels a few; a Rapid Reset
/// client, whose resets reach the handler, cancels them all. h2 itself
/// counts only resets before dispatch.
pub const ABANDONED_MAX: u64 = 100;

/// An instant any thread may set and read without a lock: milliseconds
/// after an epoch, in an atomic. Connections and tunnels stamp what last
/// happened on them with it.
pub struct Stamp {
    epoch: Instant,
    ms: AtomicU64,
}

impl Stamp {
    /// Set to now.
    pub fn now() -> Stamp {
        let stamp = Stamp {
            epoch: Instant::now(),
            ms: AtomicU64::new(0),
        };
        stamp.touch();
        stamp
    }

    pub fn touch(&self) {
        self.ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    pub fn at(&self) -> Instant {
        self.epoch + Duration::from_millis(self.ms.load(Ordering::SeqCst))
    }

    /// Resolves once the stamp is `limit` old (touched meanwhile, later).
    pub async fn older_than(&self, limit: Duration) {
        loop {
            let deadline = self.at() + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One connection's state.
pub struct Activity {
    /// The connection's socket, looked at (never read) for waiting bytes.
    fd: RawFd,
    in_flight: AtomicUsize,
    /// When the connection last became idle.
    idle_since: Stamp,
    served: AtomicBool,
    evicting: AtomicBool,
    /// Response bodies with a part handed out and not yet taken: the
    /// client's turn.
    sending: AtomicUsize,
    /// When a response last moved.
    progress: Stamp,
    evict: Notify,
    /// Requests begun, and of those abandoned before their answer.
    begun: AtomicU64,
    abandoned: AtomicU64,
    abandoning: Notify,
}

/// A connection's place in the registry, given up on drop.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
}

/// One request in flight, until dropped; abandoned if dropped before
/// its answer was handed to a [`Tracked`] body.
pub struct InFlight {
    activity: Arc<Activity>,
    answered: bool,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry {
            next_id: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection on socket `fd`, idle from now.
    pub fn register(self: &Arc<Self>, fd: RawFd) -> (Arc<Activity>, Registration) {
        let activity = Arc::new(Activity {
            fd,
            in_flight: AtomicUsize::new(0),
            idle_since: Stamp::now(),
            served: AtomicBool::new(false),
            evicting: AtomicBool::new(false),
            sending: AtomicUsize::new(0),
            progress: Stamp::now(),
            evict: Notify::new(),
            begun: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            abandoning: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, activity.clone());
        let registration = Registration {
            registry: self.clone(),
            id,
        };
        (activity, registration)
    }

    /// Asks the connection idle longest to close; false if none may be.
    pub fn evict_idlest(&self) -> bool {
        let connections = self.lock();
        let now = Instant::now();
        let idlest = connections
            .values()
            .filter(|a| a.evictable(now))
            .min_by_key(|a| a.idle_since.at());
        match idlest {
            Some(a) => {
                a.evicting.store(true, Ordering::SeqCst);
                a.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Activity {
    /// Idle, not already asked to go, and not a new client about to send
    /// its first request.
    fn evictable(&self, now: Instant) -> bool {
        if self.in_flight.load(Ordering::SeqCst) > 0 || self.evicting.load(Ordering::SeqCst) {
            return false;
        }
        if self.served.load(Ordering::SeqCst) {
            return true;
        }
        now.duration_since(self.idle_since.at()) >= FIRST_REQUEST_GRACE && !self.bytes_waiting()
    }

    /// Whether the client has sent bytes not read yet (a peek, so nothing
    /// is taken from the connection).
    fn bytes_waiting(&self) -> bool {
        use nix::sys::socket::{MsgFlags, recv};
        let mut byte = [0u8; 1];
        matches!(
            recv(
                self.fd,
                &mut byte,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
            ),
            Ok(1)
        )
    }

    /// A request began: the connection is busy until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.served.store(true, Ordering::SeqCst);
        InFlight {
            activity: self.clone(),
            answered: false,
        }
    }

    /// Resolves once the client has abandoned too many requests
    /// ([`ABANDONED_MAX`]).
    pub async fn abandoning(&self) {
        self.abandoning.notified().await;
    }

    /// Resolves once the connection has been idle past its deadline:
    /// `first_request` before any request began, `keep_alive` after.
    /// Requests neither wake nor notify it: it looks at the connection
    /// when its timer fires, which is never after the deadline of the
    /// state it finds then, and at worst once a period while busy.
    pub async fn idle_past(&self, first_request: Duration, keep_alive: Duration) {
        loop {
            let limit = if self.served.load(Ordering::SeqCst) {
                keep_alive
            } else {
                first_request
            };
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(limit).await;
                continue;
            }
            let deadline = self.idle_since.at() + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Resolves once no request has been in flight for `quiet`, looking
    /// first `quiet` from now. Like [`Activity::idle_past`], requests
    /// neither wake nor notify it.
    pub async fn quiet_for(&self, quiet: Duration) {
        let mut look = Instant::now() + quiet;
        loop {
            tokio::time::sleep_until(look).await;
            let now = Instant::now();
            look = if self.in_flight.load(Ordering::SeqCst) > 0 {
                now + quiet
            } else {
                let quiet_at = self.idle_since.at() + quiet;
                if now >= quiet_at {
                    return;
                }
                quiet_at
            };
        }
    }

    /// Resolves once a response has waited for its client past `limit`.
    pub async fn stalled_past(&self, limit: Duration) {
        loop {
            let since = self.progress.at();
            let stalled = self.sending.load(Ordering::SeqCst) > 0;
            if stalled && Instant::now() >= since + limit {
                return;
            }
            let next = if stalled {
                since + limit
            } else {
                Instant::now() + limit
            };
            tokio::time::sleep_until(next).await;
        }
    }

    /// Makes the connection's close a reset (SO_LINGER 0): what the kernel
    /// still holds for the client is dropped at once.
    pub fn reset_on_close(&self) {
        use nix::sys::socket::{setsockopt, sockopt::Linger};
        // SAFETY: the socket is open while its connection is served, which
        // is when this is called.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        let abort = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        if let Err(e) = setsockopt(&fd, Linger, &abort) {
            tracing::debug!(error = %e, "SO_LINGER");
        }
    }

    /// Resolves once the server asks this connection to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.activity;
        if !self.answered {
            let abandoned = a.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
            if abandoned > ABANDONED_MAX && abandoned * 2 > a.begun.load(Ordering::Relaxed) {
                a.abandoning.notify_one();
            }
        }
        if a.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            a.idle_since.touch();
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is sent,
    /// and tells its connection whether it waits for the client.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        request: InFlight,
        handed_out: bool,
    }

    impl<B> PinnedDrop for Tracked<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            settle(this.request, this.handed_out);
        }
    }
}

impl<B> Tracked<B> {
    pub fn new(body: B, mut request: InFlight) -> Tracked<B> {
        request.answered = true;
        Tracked {
            body,
            request,
            handed_out: false,
        }
    }
}

/// The client took what was handed out (or the body is gone).
fn settle(request: &InFlight, handed_out: &mut bool) {
    if *handed_out {
        *handed_out = false;
        request.activity.sending.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        // Asked again: what was handed out has been taken.
        settle(this.request, this.handed_out);
        let activity = &this.request.activity;
        activity.progress.touch();
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            *this.handed_out = true;
            activity.sending.fetch_add(1, Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_its_deadline_and_a_busy_one_never() {
        let registry = Registry::new();
        let (a, _r) = registry.register(-1);
        let first = Duration::from_secs(10);
        let keep = Duration::from_secs(60);
        let t0 = Instant::now();
        a.idle_past(first, keep).await;
        assert_eq!(t0.elapsed(), first, "no request: the header timeout");
        let request = a.begin();
        let busy = tokio::time::timeout(Duration::from_secs(600), a.idle_past(first, keep));
        assert!(busy.await.is_err(), "a request in flight is never idle");
        drop(request);
        let t1 = Instant::now();
        a.idle_past(first, keep).await;
        assert_eq!(t1.elapsed(), keep, "after a request: keep-alive");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_quiet_a_while_after_its_last_request() {
        let registry = Registry::new();
        let (a, _r) = registry.register(-1);
        let quiet = Duration::from_millis(100);
        let t0 = Instant::now();
        a.quiet_for(quiet).await;
        assert_eq!(t0.elapsed(), quiet, "never busy: quiet from the start");
        let request = a.begin();
        let busy = tokio::time::timeout(Duration::from_secs(600), a.quiet_for(quiet));
        assert!(busy.await.is_err(), "a request in flight is never quiet");
        let t1 = Instant::now();
        let quiet_then = tokio::spawn({
            let a = a.clone();
            async move { a.quiet_for(quiet).await }
        });
        tokio::time::advance(quiet / 2).await;
        drop(request);
        quiet_then.await.unwrap();
        assert_eq!(t1.elapsed(), quiet / 2 + quiet, "counted from its end");
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_its_client_does_not_take_is_stalled_and_one_taken_is_not() {
        use http_body_util::{BodyExt, Full};
        let registry = Registry::new();
        let (a, _r) = registry.register(-1);
        let mut body = Tracked::new(Full::new(bytes::Bytes::from_static(b"part")), a.begin());
        let limit = Duration::from_secs(60);
        let waiting = tokio::time::timeout(Duration::from_secs(600), a.stalled_past(limit));
        assert!(waiting.await.is_err(), "nothing handed out: not stalled");
        assert!(body.frame().await.is_some());
        let t0 = Instant::now();
        a.stalled_past(limit).await;
        assert_eq!(t0.elapsed(), limit, "handed out and not taken");
        assert!(body.frame().await.is_none());
        let taken = tokio::time::timeout(Duration::from_secs(600), a.stalled_past(limit));
        assert!(taken.await.is_err(), "taken to its end: not stalled");
    }

    /// `a` is asked to go, at once.
    async fn goes(a: &Activity, what: &str) {
        tokio::time::timeout(Duration::from_millis(1), a.evicted())
            .await
            .unwrap_or_else(|_| panic!("{what}"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_evicts_the_connection_idle_longest_and_never_a_busy_one() {
        let registry = Registry::new();
        let (old, _r1) = registry.register(-1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (busy, _r2) = registry.register(-1);
        let _request = busy.begin();
        let (young, _r3) = registry.register(-1);
        assert!(registry.evict_idlest(), "the old one may go");
        goes(&old, "the oldest idle one goes first").await;
        assert!(
            !registry.evict_idlest(),
            "a new one is spared its first moments"
        );
        tokio::time::advance(FIRST_REQUEST_GRACE).await;
        assert!(registry.evict_idlest());
        goes(&young, "then the next idle one").await;
        assert!(
            !registry.evict_idlest(),
            "a busy connection is never evicted"
        );
    }

    /// A client that abandons most of its requests, past the limit, is
    /// closed; one that abandons as many among far more answered is not.
    #[tokio::test(start_paused = true)]
    async fn a_connection_abandoning_most_requests_is_closed() {
        let registry = Registry::new();
        let abandoning = |answered: u64, abandoned: u64| {
            let (a, _r) = registry.register(-1);
            for _ in 0..answered {
                drop(Tracked::new((), a.begin()));
            }
            for _ in 0..abandoned {
                drop(a.begin());
            }
            a
        };
        let closed = abandoning(0, ABANDONED_MAX + 1);
        tokio::time::timeout(Duration::from_secs(1), closed.abandoning())
            .await
            .expect("past the limit and half its requests");
        for (answered, abandoned) in [(0, ABANDONED_MAX), (3 * ABANDONED_MAX, ABANDONED_MAX + 1)] {
            let kept = abandoning(answered, abandoned);
            assert!(
                tokio::time::timeout(Duration::from_secs(1), kept.abandoning())
                    .await
                    .is_err(),
                "{answered} answered, {abandoned} abandoned"
            );
        }
    }
}
