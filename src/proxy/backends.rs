//! The front's table of workers: which take requests, how many each holds,
//! and the requests waiting for one. A request leaves with a [`Place`] on
//! the worker with the fewest in flight (ties go round in turn), at most
//! `--worker-concurrency` per worker; when none has room it waits in a
//! bounded FIFO queue and is handed the next freed place directly. The
//! manager opens a worker once it is ready and closes it to drain; a closed
//! worker whose last place ends wakes the manager, which then sends the
//! stop signal. One mutex guards it all: every operation is a few field
//! updates, never I/O.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use super::sockets::Address;

/// A worker process, as the front names it: a slot is reused by the next
/// worker, the pid tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub id: u32,
    pub pid: i32,
}

/// What the manager reads back about one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub key: Key,
    pub in_flight: u32,
    pub requests: u64,
    /// A request to it passed `--request-timeout`.
    pub stuck: bool,
    /// It refused a connection on its socket: it is not serving.
    pub broken: bool,
}

/// Why a request got no worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-queue` requests already wait.
    QueueFull,
    /// It waited `--queue-timeout`.
    Timeout,
}

#[derive(Debug)]
struct Backend {
    key: Key,
    socket: Arc<Address>,
    open: bool,
    load: Load,
}

struct Waiter {
    tx: oneshot::Sender<Place>,
    avoid: Option<Key>,
}

#[derive(Default)]
struct State {
    workers: Vec<Backend>,
    /// Where the next tie-break starts, so equal workers take turns.
    next: usize,
    waiters: VecDeque<Waiter>,
}

pub struct Backends {
    state: Mutex<State>,
    concurrency: Option<u32>,
    max_queue: usize,
    queue_timeout: Duration,
    /// Wakes the manager when it has something to act on: a closed worker
    /// went idle, or a worker's load says it is due for recycling.
    pub changed: Notify,
}

/// A place on one worker, held from dispatch until the response has been
/// sent; dropping it frees the place.
pub struct Place {
    backends: Arc<Backends>,
    pub key: Key,
    /// Where the worker listens; shared, not copied: a place is taken
    /// per request.
    pub socket: Arc<Address>,
    armed: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.armed {
            self.backends.release(self.key);
        }
    }
}

impl Backends {
    pub fn new(concurrency: Option<u32>, max_queue: u32, queue_timeout: Duration) -> Arc<Backends> {
        Arc::new(Backends {
            state: Mutex::new(State::default()),
            concurrency,
            max_queue: max_queue as usize,
            queue_timeout,
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds
        // consistent counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place now, on the least busy open worker with room, if there is
    /// one; as [`Backends::acquire`] but never queued.
    pub fn try_acquire(self: &Arc<Self>, avoid: Option<Key>) -> Option<Place> {
        let mut state = self.lock();
        let i = self.pick(&state, avoid)?;
        Some(self.grant(&mut state, i))
    }

    /// A place on the least busy open worker, waiting in the queue if none
    /// has room. `avoid` is the worker a retry must not go back to, unless
    /// it is the only one open.
    pub async fn acquire(self: &Arc<Self>, avoid: Option<Key>) -> Result<Place, Refusal> {
        let rx = {
            let mut state = self.lock();
            if let Some(i) = self.pick(&state, avoid) {
                return Ok(self.grant(&mut state, i));
            }
            state.waiters.retain(|w| !w.tx.is_closed());
            if state.waiters.len() >= self.max_queue {
                return Err(Refusal::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            state.waiters.push_back(Waiter { tx, avoid });
            rx
        };
        match tokio::time::timeout(self.queue_timeout, rx).await {
            Ok(Ok(place)) => Ok(place),
            _ => Err(Refusal::Timeout),
        }
    }

    /// The open worker with room and the fewest in flight; among equals,
    /// the first at or after the rotating start.
    fn pick(&self, state: &State, avoid: Option<Key>) -> Option<usize> {
        let n = state.workers.len();
        let has_room = |b: &Backend| {
            b.open && !b.load.broken && self.concurrency.is_none_or(|c| b.load.in_flight < c)
        };
        let best = |skip: Option<Key>| {
            (0..n)
                .map(|k| (state.next + k) % n)
                .filter(|&i| has_room(&state.workers[i]) && Some(state.workers[i].key) != skip)
                .min_by_key(|&i| state.workers[i].load.in_flight)
        };
        best(avoid).or_else(|| avoid.and_then(|_| best(None)))
    }

    fn grant(self: &Arc<Self>, state: &mut State, i: usize) -> Place {
        let b = &mut state.workers[i];
        b.load.in_flight += 1;
        b.load.requests += 1;
        let place = Place {
            backends: self.clone(),
            key: b.key,
            socket: b.socket.clone(),
            armed: true,
        };
        state.next = (i + 1) % state.workers.len();
        place
    }

    fn release(self: &Arc<Self>, key: Key) {
        let mut state = self.lock();
        if let Some(b) = state.workers.iter_mut().find(|b| b.key == key) {
            b.load.in_flight = b.load.in_flight.saturating_sub(1);
            if !b.open && b.load.in_flight == 0 {
                self.changed.notify_one();
            }
        }
        self.dispatch(&mut state);
    }

    /// Hands freed places to the oldest waiters that fit.
    fn dispatch(self: &Arc<Self>, state: &mut State) {
        while let Some(w) = state.waiters.front() {
            if w.tx.is_closed() {
                state.waiters.pop_front();
                continue;
            }
            let Some(i) = self.pick(state, w.avoid) else {
                return;
            };
            let w = state.waiters.pop_front().expect("a waiter was just seen");
            let place = self.grant(state, i);
            if let Err(mut place) = w.tx.send(place) {
                // It gave up as the place came: take the place back here,
                // under the lock already held, not in the place's drop.
                place.armed = false;
                let b = &mut state.workers[i];
                b.load.in_flight -= 1;
                b.load.requests -= 1;
            }
        }
    }

    /// A worker is ready: it takes requests from now on. Opening one that
    /// is known already changes nothing (the manager says it every pass).
    pub fn open(self: &Arc<Self>, key: Key, socket: Arc<Address>) {
        let mut state = self.lock();
        if state.workers.iter().any(|b| b.key == key) {
            return;
        }
        state.workers.push(Backend {
            key,
            socket,
            open: true,
            load: Load {
                key,
                in_flight: 0,
                requests: 0,
                stuck: false,
                broken: false,
            },
        });
        self.dispatch(&mut state);
    }

    /// A worker drains: no new requests. True once it holds none.
    pub fn close(&self, key: Key) -> bool {
        let mut state = self.lock();
        match state.workers.iter_mut().find(|b| b.key == key) {
            Some(b) => {
                b.open = false;
                b.load.in_flight == 0
            }
            None => true,
        }
    }

    /// Forgets every worker not in `alive` (they have exited).
    pub fn retain(&self, alive: impl Fn(Key) -> bool) {
        let mut state = self.lock();
        state.workers.retain(|b| alive(b.key));
        let n = state.workers.len();
        state.next = if n == 0 { 0 } else { state.next % n };
    }

    /// The worker refused a connection: route around it until the manager
    /// has replaced it.
    pub fn mark_broken(&self, key: Key) {
        self.mark(key, |l| l.broken = true);
    }

    /// A request to the worker passed `--request-timeout` (`--kill-stuck`).
    pub fn mark_stuck(&self, key: Key) {
        self.mark(key, |l| l.stuck = true);
    }

    fn mark(&self, key: Key, change: impl FnOnce(&mut Load)) {
        let mut state = self.lock();
        if let Some(b) = state.workers.iter_mut().find(|b| b.key == key) {
            change(&mut b.load);
            self.changed.notify_one();
        }
    }

    /// Each known worker's load, and the requests waiting.
    pub fn loads(&self) -> (Vec<Load>, u32) {
        let state = self.lock();
        let queued = state.waiters.iter().filter(|w| !w.tx.is_closed()).count();
        (
            state.workers.iter().map(|b| b.load.clone()).collect(),
            queued as u32,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> Key {
        Key {
            id,
            pid: 100 + id as i32,
        }
    }

    fn unix(path: &str) -> Arc<Address> {
        Arc::new(Address::Unix(path.into()))
    }

    fn with(n: u32, concurrency: Option<u32>, max_queue: u32) -> Arc<Backends> {
        let b = Backends::new(concurrency, max_queue, Duration::from_secs(5));
        for id in 1..=n {
            b.open(key(id), unix(&format!("/w{id}")));
        }
        b
    }

    fn in_flight(b: &Backends) -> Vec<u32> {
        b.loads().0.iter().map(|l| l.in_flight).collect()
    }

    #[tokio::test]
    async fn the_least_busy_worker_gets_the_request_and_ties_take_turns() {
        let b = with(3, None, 10);
        let first: Vec<u32> = [
            b.acquire(None).await.unwrap(),
            b.acquire(None).await.unwrap(),
            b.acquire(None).await.unwrap(),
        ]
        .iter()
        .map(|l| l.key.id)
        .collect();
        assert_eq!(first, vec![1, 2, 3]);
        let held = b.acquire(None).await.unwrap();
        assert_eq!(held.key.id, 1, "all equal: the turn comes round");
        drop(held);
        // Worker 1 is back to one, tied with 2 and 3: the turn is 2's.
        let next = b.acquire(None).await.unwrap();
        let after = b.acquire(None).await.unwrap();
        assert_eq!((next.key.id, after.key.id), (2, 3));
    }

    #[tokio::test]
    async fn a_place_is_taken_at_once_only_when_a_worker_has_room() {
        let b = with(2, Some(1), 10);
        let first = b.try_acquire(None).expect("room on 1");
        let second = b.try_acquire(None).expect("room on 2");
        assert_eq!((first.key.id, second.key.id), (1, 2));
        assert!(b.try_acquire(None).is_none(), "both full: never queued");
        assert_eq!(b.lock().waiters.len(), 0);
        drop(second);
        assert_eq!(b.try_acquire(Some(key(1))).map(|p| p.key.id), Some(2));
    }

    #[tokio::test]
    async fn a_busier_worker_is_passed_over() {
        let b = with(2, None, 10);
        let a = b.acquire(None).await.unwrap();
        let c = b.acquire(None).await.unwrap();
        let d = b.acquire(None).await.unwrap();
        assert_eq!((a.key.id, c.key.id, d.key.id), (1, 2, 1));
        drop(a);
        drop(d);
        assert_eq!(b.acquire(None).await.unwrap().key.id, 1, "1 idle, 2 busy");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_past_the_concurrency_wait_in_order_and_overflow_is_refused() {
        let b = with(1, Some(1), 2);
        let held = b.acquire(None).await.unwrap();
        let (b1, b2) = (b.clone(), b.clone());
        let first = tokio::spawn(async move { b1.acquire(None).await.map(|l| l.key.id) });
        tokio::task::yield_now().await;
        let second = tokio::spawn(async move { b2.acquire(None).await.map(|l| l.key.id) });
        tokio::task::yield_now().await;
        assert_eq!(b.loads().1, 2, "two wait");
        assert_eq!(b.acquire(None).await.err(), Some(Refusal::QueueFull));
        drop(held);
        assert_eq!(first.await.unwrap(), Ok(1), "the oldest waiter goes first");
        assert_eq!(second.await.unwrap(), Ok(1));
        assert_eq!(in_flight(&b), vec![0]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_the_queue_timeout_and_its_place_is_not_lost() {
        let b = with(1, Some(1), 8);
        let held = b.acquire(None).await.unwrap();
        assert_eq!(b.acquire(None).await.err(), Some(Refusal::Timeout));
        drop(held);
        assert_eq!(in_flight(&b), vec![0]);
        assert_eq!(b.loads().1, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_worker_ready_requests_wait_for_the_first() {
        let b = with(0, None, 8);
        let b1 = b.clone();
        let waiting = tokio::spawn(async move { b1.acquire(None).await.map(|l| l.key.id) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.open(key(7), unix("/w7"));
        assert_eq!(waiting.await.unwrap(), Ok(7));
    }

    #[tokio::test]
    async fn a_closed_worker_takes_no_requests_and_says_when_it_is_idle() {
        let b = with(2, None, 8);
        let on_1 = b.acquire(None).await.unwrap();
        assert_eq!(on_1.key.id, 1);
        assert!(!b.close(key(1)), "one still in flight");
        for _ in 0..3 {
            assert_eq!(b.acquire(None).await.unwrap().key.id, 2);
        }
        drop(on_1);
        tokio::time::timeout(Duration::from_secs(1), b.changed.notified())
            .await
            .expect("the manager is woken");
        assert!(b.close(key(1)));
        b.retain(|k| k != key(1));
        assert_eq!(b.loads().0.len(), 1);
    }

    #[tokio::test]
    async fn a_retry_avoids_the_worker_that_failed_unless_it_is_the_only_one() {
        let b = with(2, None, 8);
        for _ in 0..4 {
            assert_eq!(b.acquire(Some(key(1))).await.unwrap().key.id, 2);
        }
        b.close(key(2));
        assert_eq!(b.acquire(Some(key(1))).await.unwrap().key.id, 1);
        b.mark_broken(key(1));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.acquire(None))
                .await
                .is_err(),
            "a broken worker gets nothing"
        );
    }

    #[tokio::test]
    async fn requests_are_counted_per_worker() {
        let b = with(2, None, 8);
        for _ in 0..5 {
            drop(b.acquire(None).await.unwrap());
        }
        let requests: Vec<u64> = b.loads().0.iter().map(|l| l.requests).collect();
        assert_eq!(requests.iter().sum::<u64>(), 5);
        assert_eq!(in_flight(&b), vec![0, 0]);
    }
}
