//! The front's own threads. Request work never shares a thread with the
//! supervision loop and the admin API, whose `/livez` the kubelet gives up
//! on after a second, and it may use every core the pod has. One thread is
//! a current-thread runtime: no work-stealing bookkeeping, and one core is
//! all it could use anyway. More are a multi-thread runtime, whose idle
//! threads take tasks from busy ones; the routing state behind it
//! ([`super::Backends`]) is one lock, so least-busy stays exact.

use std::io;
use std::sync::mpsc;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;

/// The front's runtime, on threads of its own until dropped.
pub struct FrontThreads {
    handle: Handle,
    /// Dropped to end the runtime: its tasks are cancelled, its threads end.
    _stop: oneshot::Sender<()>,
}

impl FrontThreads {
    /// Starts `threads` threads (at least one) named `corral-front`.
    pub fn start(threads: u32) -> io::Result<FrontThreads> {
        let (handle_tx, handle_rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("corral-front".into())
            .spawn(move || {
                let runtime = match build(threads) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                // A current-thread runtime runs its tasks only while this
                // thread is inside block_on; a multi-thread one on its own.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| io::Error::other("the front's thread ended at its start"))??;
        Ok(FrontThreads {
            handle,
            _stop: stop,
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

fn build(threads: u32) -> io::Result<Runtime> {
    let mut builder = if threads <= 1 {
        Builder::new_current_thread()
    } else {
        let mut b = Builder::new_multi_thread();
        b.worker_threads(threads as usize);
        b
    };
    builder.enable_all().thread_name("corral-front").build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tasks run on the front's threads, not the caller's, for either kind.
    #[test]
    fn tasks_run_on_the_front_threads() {
        for threads in [1, 2] {
            let front = FrontThreads::start(threads).unwrap();
            let (tx, rx) = mpsc::channel();
            front.handle().spawn(async move {
                let _ = tx.send(std::thread::current().name().map(String::from));
            });
            let name = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
            assert_eq!(name.as_deref(), Some("corral-front"), "{threads} threads");
        }
    }

    /// Dropping it cancels what runs there.
    #[test]
    fn dropping_it_ends_its_tasks() {
        let front = FrontThreads::start(2).unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        front.handle().spawn(async move {
            let _held = tx;
            std::future::pending::<()>().await;
        });
        drop(front);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
