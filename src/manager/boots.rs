//! The boot record: crashes in a row, when the next start may happen, and
//! whether any worker was ever ready. One owner for the two rules every
//! path shares: a worker that became ready ends the run of failures, and a
//! crash (or a start that failed) puts the next start off by a growing
//! backoff. Pure: the caller passes the time.

use std::time::{Duration, Instant};

/// The first restart waits this long; each crash in a row doubles it.
const BACKOFF_BASE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Boots {
    failures: u32,
    next_start_at: Instant,
    ever_ready: bool,
}

impl Boots {
    pub fn new(now: Instant) -> Boots {
        Boots {
            failures: 0,
            next_start_at: now,
            ever_ready: false,
        }
    }

    /// Adopted from a previous image: a ready worker means boots work.
    pub fn adopted(now: Instant, any_ready: bool) -> Boots {
        Boots {
            ever_ready: any_ready,
            ..Boots::new(now)
        }
    }

    /// Crashes (and failed starts) in a row since a worker was last ready.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn may_start(&self, now: Instant) -> bool {
        now >= self.next_start_at
    }

    /// A worker became ready: the failures in a row are over.
    pub fn became_ready(&mut self) {
        self.failures = 0;
        self.ever_ready = true;
    }

    /// A worker crashed or could not start: the next start waits for the
    /// backoff, which is returned.
    pub fn failed(&mut self, now: Instant, max_backoff: Duration) -> Duration {
        self.failures += 1;
        let delay = crate::backoff::exponential(self.failures, BACKOFF_BASE, max_backoff);
        self.next_start_at = now + delay;
        delay
    }

    /// No worker was ever ready and `max_failures` boots failed in a row:
    /// the command cannot work, and the orchestrator should see that.
    pub fn given_up(&self, max_failures: u32) -> bool {
        !self.ever_ready && self.failures >= max_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashes_put_the_next_start_off_by_a_doubling_backoff() {
        let t0 = Instant::now();
        let max = Duration::from_secs(1);
        let mut boots = Boots::new(t0);
        assert!(boots.may_start(t0));
        assert_eq!(boots.failed(t0, max), Duration::from_millis(100));
        assert!(!boots.may_start(t0 + Duration::from_millis(99)));
        assert!(boots.may_start(t0 + Duration::from_millis(100)));
        assert_eq!(boots.failed(t0, max), Duration::from_millis(200));
        for _ in 0..10 {
            boots.failed(t0, max);
        }
        assert_eq!(boots.failed(t0, max), max);
    }

    #[test]
    fn boots_give_up_only_if_no_worker_was_ever_ready() {
        let t0 = Instant::now();
        let max = Duration::from_secs(1);
        let mut boots = Boots::new(t0);
        for _ in 0..3 {
            boots.failed(t0, max);
        }
        assert!(boots.given_up(3));
        boots.became_ready();
        assert_eq!(boots.failures(), 0);
        for _ in 0..5 {
            boots.failed(t0, max);
        }
        assert!(!boots.given_up(3), "once ready, crashes restart forever");
        assert!(!Boots::adopted(t0, true).given_up(0));
    }
}
