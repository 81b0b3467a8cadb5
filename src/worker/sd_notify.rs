//! The worker's end of sd_notify: datagrams to `NOTIFY_SOCKET` (a path, or
//! `@name` in the abstract namespace). Without the variable it is silent,
//! so the worker runs the same under corral, systemd or alone.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Notifier {
    target: Option<Arc<(UnixDatagram, SocketAddr)>>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some(Arc::new((UnixDatagram::unbound().ok()?, addr)))
        });
        Notifier { target }
    }

    /// Best effort, as sd_notify(3): a manager that is gone is no error.
    pub fn send(&self, message: &str) {
        if let Some(t) = &self.target {
            let _ = t.0.send_to_addr(message.as_bytes(), &t.1);
        }
    }
}

/// Half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
