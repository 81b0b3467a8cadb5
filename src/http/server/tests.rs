//! The accept loop's limits and shutdown, against a real listener.

use super::*;
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the test server's handlers have done: each one counts itself
/// in `active` (and the most seen at once), then waits for a permit of
/// `release` before it answers, so a test decides when answers go.
struct Handlers {
    started: AtomicUsize,
    active: AtomicUsize,
    most_active: AtomicUsize,
    release: Semaphore,
}

/// Waits (at most 10 s) until `check` holds.
async fn until<F: Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: never happened"));
}

impl Handlers {
    fn new() -> Handlers {
        Handlers {
            started: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            most_active: AtomicUsize::new(0),
            release: Semaphore::new(0),
        }
    }

    /// Waits (at most 10 s) until `cond` holds of the handlers.
    async fn until(&self, what: &str, cond: impl Fn(&Handlers) -> bool) {
        until(what, || std::future::ready(cond(self))).await;
    }
}

async fn started(limits: Limits) -> (SocketAddr, watch::Sender<bool>, Arc<Handlers>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    let handlers = Arc::new(Handlers::new());
    let seen = handlers.clone();
    tokio::spawn(serve(
        vec![Listener::Tcp(listener)],
        limits,
        move |_req, _peer| {
            let h = seen.clone();
            async move {
                h.started.fetch_add(1, Ordering::SeqCst);
                let now = h.active.fetch_add(1, Ordering::SeqCst) + 1;
                h.most_active.fetch_max(now, Ordering::SeqCst);
                h.release.acquire().await.unwrap().forget();
                h.active.fetch_sub(1, Ordering::SeqCst);
                Response::new(Full::new(Bytes::from_static(b"ok")))
            }
        },
        rx,
    ));
    (addr, tx, handlers)
}

async fn get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

#[tokio::test]
async fn the_connection_cap_holds_across_the_server() {
    let limits = Limits {
        connections: 2,
        ..SMALL
    };
    let (addr, _tx, h) = started(limits).await;
    let clients: Vec<_> = (0..5).map(|_| tokio::spawn(get(addr))).collect();
    // Two are served; the others wait in the backlog until a place
    // frees. One answer at a time: each frees one place, and the next
    // client takes it.
    h.until("two handlers busy", |h| {
        h.active.load(Ordering::SeqCst) == 2
    })
    .await;
    for done in 1..=5 {
        h.release.add_permits(1);
        let busy = 2.min(5 - done);
        h.until("the next client taken in", |h| {
            h.started.load(Ordering::SeqCst) == (done + 2).min(5)
                && h.active.load(Ordering::SeqCst) == busy
        })
        .await;
    }
    for c in clients {
        assert!(c.await.unwrap().starts_with("HTTP/1.1 200"));
    }
    assert_eq!(
        h.most_active.load(Ordering::SeqCst),
        2,
        "never more than two served at once"
    );
    assert_eq!(
        h.started.load(Ordering::SeqCst),
        5,
        "the rest waited, none was refused"
    );
}

#[tokio::test]
async fn silent_connections_at_the_cap_make_room_for_a_request() {
    let limits = Limits {
        connections: 4,
        ..SMALL
    };
    let (addr, _tx, h) = started(limits).await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    h.release.add_permits(1);
    let answer = tokio::time::timeout(Duration::from_secs(2), get(addr))
        .await
        .expect("answered while silent clients fill the cap");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut closed = 0;
    for mut s in silent {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 4, "idle ones were closed to make room: {closed}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
    let limits = Limits {
        keep_alive: Duration::from_millis(300),
        ..SMALL
    };
    let (addr, _tx, h) = started(limits).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    h.until("the request taken", |h| {
        h.started.load(Ordering::SeqCst) == 1
    })
    .await;
    // Busy past keep-alive: the connection stays.
    tokio::time::sleep(Duration::from_millis(600)).await;
    h.release.add_permits(1);
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Idle past keep-alive: closed.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the idle connection was closed");
}

#[tokio::test]
async fn a_silent_client_is_cut_off_at_the_header_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        ..SMALL
    };
    let (addr, _tx, _) = started(limits).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server closed the slow connection");
}

/// Waits (at most 10 s) until a new connection to `addr` is refused.
async fn until_refused(addr: SocketAddr) {
    until("the listener to close", || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn shutdown_finishes_answers_in_progress_and_stops_accepting() {
    let (addr, tx, h) = started(SMALL).await;
    let pending = tokio::spawn(get(addr));
    h.until("the request in the handler", |h| {
        h.active.load(Ordering::SeqCst) == 1
    })
    .await;
    tx.send(true).unwrap();
    // The listener closes while the answer is still held back.
    until_refused(addr).await;
    h.release.add_permits(1);
    assert!(pending.await.unwrap().starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_connection_made_just_before_shutdown_gets_its_answer() {
    let limits = Limits {
        first_request_grace: Duration::from_secs(2),
        ..SMALL
    };
    let (addr, tx, h) = started(limits).await;
    h.release.add_permits(1);
    let mut s = TcpStream::connect(addr).await.unwrap();
    tx.send(true).unwrap();
    // Its request is written once shutdown is under way: the listener
    // has closed.
    until_refused(addr).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
}
