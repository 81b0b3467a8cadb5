//! What each connection of a server is doing, so that none holds a place it
//! does not use. A connection is busy from a request's head until its
//! response body is sent (or dropped), else idle. An idle connection is
//! closed past its deadline: the header timeout before its first request
//! (a client that connects and says nothing, or trickles its head), the
//! keep-alive timeout after one (HTTP/1.1 between requests, HTTP/2 with no
//! open stream). And when the server is at its connection cap, a new client
//! makes room by closing the connection idle longest, as nginx reuses its
//! idle connections when it runs out: silent clients can fill the cap, but
//! they cannot keep a probe or a real client out. A connection that has
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
    epoch: Instant,
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Arc<Activity>>>,
}

/// How long a new connection has to begin its first request before it
/// may be evicted: a client sends it right after connecting, an attacker
/// never does.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(100);

/// One connection's state.
pub struct Activity {
    /// The connection's socket, looked at (never read) for waiting bytes.
    fd: RawFd,
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after the epoch when the connection last became idle.
    idle_since: AtomicU64,
    served: AtomicBool,
    evicting: AtomicBool,
    changed: Notify,
    evict: Notify,
}

/// A connection's place in the registry, given up on drop.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
}

/// One request in flight, until dropped.
pub struct InFlight(Arc<Activity>);

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry {
            epoch: Instant::now(),
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
            epoch: self.epoch,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            served: AtomicBool::new(false),
            evicting: AtomicBool::new(false),
            changed: Notify::new(),
            evict: Notify::new(),
        });
        activity.stamp_idle();
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
            .min_by_key(|a| a.idle_since.load(Ordering::SeqCst));
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
    fn stamp_idle(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.idle_since.store(ms, Ordering::SeqCst);
    }

    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.idle_since.load(Ordering::SeqCst))
    }

    /// Idle, not already asked to go, and not a new client about to send
    /// its first request.
    fn evictable(&self, now: Instant) -> bool {
        if self.in_flight.load(Ordering::SeqCst) > 0 || self.evicting.load(Ordering::SeqCst) {
            return false;
        }
        if self.served.load(Ordering::SeqCst) {
            return true;
        }
        now.duration_since(self.idle_since()) >= FIRST_REQUEST_GRACE && !self.bytes_waiting()
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
        self.served.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// Resolves once the connection has been idle past its deadline:
    /// `first_request` before any request began, `keep_alive` after.
    pub async fn idle_past(&self, first_request: Duration, keep_alive: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                changed.await;
                continue;
            }
            let limit = if self.served.load(Ordering::SeqCst) {
                keep_alive
            } else {
                first_request
            };
            let deadline = self.idle_since() + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = changed => {}
            }
        }
    }

    /// Resolves once the server asks this connection to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.stamp_idle();
            self.0.changed.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is sent.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        request: InFlight,
    }
}

impl<B> Tracked<B> {
    pub fn new(body: B, request: InFlight) -> Tracked<B> {
        Tracked { body, request }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
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
    async fn the_cap_evicts_the_connection_idle_longest_and_never_a_busy_one() {
        let registry = Registry::new();
        let (old, _r1) = registry.register(-1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (busy, _r2) = registry.register(-1);
        let _request = busy.begin();
        let (young, _r3) = registry.register(-1);
        assert!(registry.evict_idlest(), "the old one may go");
        tokio::time::timeout(Duration::from_millis(1), old.evicted())
            .await
            .expect("the oldest idle one goes first");
        assert!(
            !registry.evict_idlest(),
            "a new one is spared its first moments"
        );
        tokio::time::advance(FIRST_REQUEST_GRACE).await;
        assert!(registry.evict_idlest());
        tokio::time::timeout(Duration::from_millis(1), young.evicted())
            .await
            .expect("then the next idle one");
        assert!(
            !registry.evict_idlest(),
            "a busy connection is never evicted"
        );
    }
}
