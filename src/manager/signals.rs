//! The signals the manager answers, Gunicorn's set, as one stream.

use std::io;

use tokio::signal::unix::{Signal as Stream, SignalKind, signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Graceful shutdown, Kubernetes-style.
    Term,
    /// Quick shutdown (INT and QUIT).
    Quick,
    /// Reload the config file and roll the workers.
    Hup,
    /// One more worker.
    Ttin,
    /// One fewer worker.
    Ttou,
    /// Passed on to the workers (reopen logs).
    Usr1,
    /// Re-exec the corral binary in place.
    Usr2,
    /// A child changed state: reap.
    Child,
}

pub struct Signals {
    streams: Vec<(Signal, Stream)>,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        let table = [
            (Signal::Term, SignalKind::terminate()),
            (Signal::Quick, SignalKind::interrupt()),
            (Signal::Quick, SignalKind::quit()),
            (Signal::Hup, SignalKind::hangup()),
            (Signal::Ttin, SignalKind::from_raw(libc::SIGTTIN)),
            (Signal::Ttou, SignalKind::from_raw(libc::SIGTTOU)),
            (Signal::Usr1, SignalKind::user_defined1()),
            (Signal::Usr2, SignalKind::user_defined2()),
            (Signal::Child, SignalKind::child()),
        ];
        let streams = table
            .into_iter()
            .map(|(s, kind)| Ok((s, signal(kind)?)))
            .collect::<io::Result<_>>()?;
        Ok(Signals { streams })
    }

    /// The next signal; several pending ones come out one per call.
    pub async fn recv(&mut self) -> Signal {
        std::future::poll_fn(|cx| {
            for (sig, stream) in &mut self.streams {
                if stream.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*sig);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}
