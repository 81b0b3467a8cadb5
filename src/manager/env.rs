//! The environment variables the manager owns. Spawning a worker sets them
//! and re-exec strips them, so neither passes on a stale value it inherited;
//! both read the names from here.

/// Carries the re-exec hand-off from one image to the next.
pub const STATE_ENV: &str = "CORRAL_REEXEC_STATE";

/// Variables the manager owns: never passed through from its own environment.
pub const MANAGED_ENV: [&str; 9] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "CORRAL_WORKER_ID",
    "CORRAL_WORKER_GENERATION",
    STATE_ENV,
];
