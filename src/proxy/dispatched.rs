//! A request on its way to a worker, with the worker's place. The client's
//! connection owns the exchange, so a client that resets its stream or
//! hangs up drops it; once the request has gone to a worker, the wait for
//! the worker's answer then goes on on a task of its own, and the place is
//! released only when the worker has answered: an HTTP/2 Rapid Reset after
//! dispatch cannot get past `--worker-concurrency` and the queue. A request
//! still queued is dropped with its client. Only an abandoned exchange
//! costs a task; the others run on the connection's own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::backends::Place;

/// The worker's answer to come (`F`), and its place until then.
pub struct Dispatched<F: Future + Send + 'static> {
    inner: Option<(Pin<Box<F>>, Place)>,
}

impl<F: Future + Send + 'static> Dispatched<F> {
    pub fn new(answer: F, place: Place) -> Dispatched<F> {
        Dispatched {
            inner: Some((Box::pin(answer), place)),
        }
    }
}

impl<F: Future + Send + 'static> Future for Dispatched<F> {
    /// The answer, and the place back for the rest of the exchange.
    type Output = (F::Output, Place);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some((answer, _)) = self.inner.as_mut() else {
            return Poll::Pending;
        };
        let out = ready!(answer.as_mut().poll(cx));
        match self.inner.take() {
            Some((_, place)) => Poll::Ready((out, place)),
            None => Poll::Pending,
        }
    }
}

impl<F: Future + Send + 'static> Drop for Dispatched<F> {
    fn drop(&mut self) {
        let Some((answer, place)) = self.inner.take() else {
            return;
        };
        // Outside a runtime (it is shutting down) nothing waits any more.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = answer.await;
                drop(place);
            });
        }
    }
}
