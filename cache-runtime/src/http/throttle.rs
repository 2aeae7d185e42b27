//! The stale-if-error throttle: after a handler failed to revalidate a stale response, it is
//! not run again for that response until the policy's interval has passed (counted on the
//! backend's clock, in this process), so that a failing origin gets one request per interval
//! per response instead of one per client request.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::clock::Clock;
use crate::key::CacheKey;

/// Past this many throttled responses, the ones whose interval has ended are dropped when
/// another is added: a table of failures must not grow with every key that ever failed.
const PRUNE_ABOVE: usize = 1024;

/// Until when (Unix ms on the backend's clock) each failed response's handler is left alone.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    until: Mutex<HashMap<CacheKey, u64>>,
}

impl Throttle {
    /// Whether `key`'s handler failed less than an interval before `now_ms`.
    pub(crate) fn active(&self, key: &CacheKey, now_ms: u64) -> bool {
        self.table().get(key).is_some_and(|until| *until > now_ms)
    }

    fn failed(&self, key: &CacheKey, until_ms: u64, now_ms: u64) {
        let mut table = self.table();
        if table.len() >= PRUNE_ABOVE {
            table.retain(|_, until| *until > now_ms);
        }
        table.insert(key.clone(), until_ms);
    }

    fn cleared(&self, key: &CacheKey) {
        self.table().remove(key);
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, u64>> {
        // Every critical section is one lookup, insert, remove or retain: never half-done.
        self.until.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Held while a handler revalidates a response: unless told that it succeeded, it throttles
/// the response when dropped, so that a handler that panics (or a revalidation that is
/// dropped half-way) counts as the failure it is.
pub(crate) struct Attempt<'a> {
    throttle: &'a Throttle,
    key: &'a CacheKey,
    clock: &'a Clock,
    interval: Duration,
    succeeded: bool,
}

impl<'a> Attempt<'a> {
    pub(crate) fn start(
        throttle: &'a Throttle,
        key: &'a CacheKey,
        clock: &'a Clock,
        interval: Duration,
    ) -> Self {
        Attempt {
            throttle,
            key,
            clock,
            interval,
            succeeded: false,
        }
    }

    /// The handler answered (with anything but a failure): its response is no longer
    /// throttled.
    pub(crate) fn succeeded(mut self) {
        self.succeeded = true;
        self.throttle.cleared(self.key);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.succeeded {
            let now = self.clock.unix_ms();
            let interval = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
            self.throttle
                .failed(self.key, now.saturating_add(interval), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyBuilder;
    use crate::TestClock;

    #[test]
    fn a_failure_throttles_for_one_interval_and_a_success_clears_it() {
        let test = TestClock::new();
        let clock = test.clock();
        let throttle = Throttle::default();
        let key = KeyBuilder::new().lit("k").finish();
        let interval = Duration::from_secs(10);
        assert!(!throttle.active(&key, clock.unix_ms()));
        drop(Attempt::start(&throttle, &key, &clock, interval));
        assert!(throttle.active(&key, clock.unix_ms()));
        test.advance(Duration::from_millis(9_999));
        assert!(throttle.active(&key, clock.unix_ms()));
        test.advance(Duration::from_millis(1));
        assert!(!throttle.active(&key, clock.unix_ms()));
        drop(Attempt::start(&throttle, &key, &clock, interval));
        Attempt::start(&throttle, &key, &clock, interval).succeeded();
        assert!(!throttle.active(&key, clock.unix_ms()));
    }

    #[test]
    fn a_panicking_attempt_throttles() {
        let test = TestClock::new();
        let clock = test.clock();
        let throttle = Throttle::default();
        let key = KeyBuilder::new().lit("k").finish();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _attempt = Attempt::start(&throttle, &key, &clock, Duration::from_secs(1));
            panic!("the handler panics");
        }));
        assert!(panicked.is_err());
        assert!(throttle.active(&key, clock.unix_ms()));
    }

    #[test]
    fn ended_intervals_are_pruned() {
        let test = TestClock::new();
        let clock = test.clock();
        let throttle = Throttle::default();
        for i in 0..PRUNE_ABOVE as u64 {
            let key = KeyBuilder::new().lit("k").arg(&i).finish();
            drop(Attempt::start(
                &throttle,
                &key,
                &clock,
                Duration::from_secs(1),
            ));
        }
        test.advance(Duration::from_secs(2));
        let last = KeyBuilder::new().lit("last").finish();
        drop(Attempt::start(
            &throttle,
            &last,
            &clock,
            Duration::from_secs(1),
        ));
        assert_eq!(throttle.table().len(), 1);
    }
}
