//! Exponential backoff, the one rule for how long to wait before trying
//! again: the manager's crashed-worker restarts and the operator's
//! reconnects to the API server both use it.

use std::time::Duration;

/// Wait before attempt number `failures + 1`: `base` doubled per failure
/// so far, capped at `max`; nothing before the first failure.
pub fn exponential(failures: u32, base: Duration, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (failures - 1).min(16);
    base.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_base_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let waits: Vec<u128> = (0..7)
            .map(|n| exponential(n, base, max).as_millis())
            .collect();
        assert_eq!(waits, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(exponential(u32::MAX, base, max), max);
    }
}
