//! The manager's hands on processes: start a worker, signal it, signal its
//! group. A trait, so that the supervision loop's own tests run with a
//! fake that records what it was asked instead of forking.

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::spawn::{self, SpawnError, SpawnSpec};

pub trait Processes: Send {
    fn spawn(&mut self, spec: &SpawnSpec<'_>) -> Result<Pid, SpawnError>;
    /// The worker process alone.
    fn signal(&mut self, pid: Pid, signal: Signal);
    /// The worker and whatever it started in its process group.
    fn signal_group(&mut self, pid: Pid, signal: Signal);

    /// SIGKILL to the group and to the worker itself (which may have left
    /// its group).
    fn kill(&mut self, pid: Pid) {
        self.signal_group(pid, Signal::SIGKILL);
        self.signal(pid, Signal::SIGKILL);
    }
}

/// The real thing: fork/exec and kill(2).
pub struct System;

impl Processes for System {
    fn spawn(&mut self, spec: &SpawnSpec<'_>) -> Result<Pid, SpawnError> {
        spawn::spawn(spec)
    }

    fn signal(&mut self, pid: Pid, signal: Signal) {
        // A worker that is already gone is no error: its exit is on its way.
        let _ = kill(pid, signal);
    }

    fn signal_group(&mut self, pid: Pid, signal: Signal) {
        let _ = killpg(pid, signal);
    }
}
