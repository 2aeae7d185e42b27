//! A circuit breaker for a remote store: after repeated failures, stop sending for a while, then
//! let a single probe through; its success closes the breaker again.
//!
//! This is what makes failing open cheap: a dead or half-open Redis costs a caller at most one
//! timeout per probe interval, not one per call. Time is passed in, so tests need no sleeps.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When to open and how long to stay open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub(crate) failures_to_open: u32,
    /// How long the breaker stays open before one probe is let through.
    pub(crate) probe_interval: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failures_to_open: 3,
            probe_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else is refused until it reports, or until `until`, since a
    /// probe whose caller was cancelled never reports.
    Probing {
        until: Instant,
    },
}

/// Whether a caller may use the store now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Go ahead (the breaker is closed).
    Allowed,
    /// Go ahead as the probe: report the result, which decides the breaker's state.
    Probe,
    /// Do not touch the store: treat it as a miss.
    Refused,
}

/// Where a Redis backend's circuit breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls use Redis.
    Closed,
    /// Redis kept failing: calls skip it (and run uncached) until the next probe.
    Open,
    /// One probe is out; its result closes or reopens the breaker.
    HalfOpen,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    policy: BreakerPolicy,
    state: Mutex<State>,
    /// Whether `state` is `Closed { failures: 0 }`, readable without the lock. Every operation
    /// asks for a permit and reports its result; with Redis healthy, both then touch no lock
    /// (which all tasks would contend for) and no clock.
    healthy: AtomicBool,
    /// How many breakers of the store are not healthy (this one counted while it is not): a
    /// cluster's per-master breakers share it, so that with all of them healthy an operation
    /// need not find its own (`breakers.rs`).
    unhealthy: Arc<AtomicUsize>,
}

impl Breaker {
    #[cfg(test)]
    pub(crate) fn new(policy: BreakerPolicy) -> Self {
        Breaker::counted(policy, Arc::default())
    }

    /// A breaker counted in `unhealthy` while it is not healthy.
    pub(crate) fn counted(policy: BreakerPolicy, unhealthy: Arc<AtomicUsize>) -> Self {
        Breaker {
            policy,
            state: Mutex::new(State::Closed { failures: 0 }),
            healthy: AtomicBool::new(true),
            unhealthy,
        }
    }

    /// Whether [`permit`](Self::permit) would refuse now, without taking the probe it might
    /// give: what a replay asks to leave the keys of an open breaker out of its batch.
    pub(crate) fn would_refuse(&self, now: Instant) -> bool {
        if self.healthy.load(Ordering::Acquire) {
            return false;
        }
        match *self.state() {
            State::Closed { .. } => false,
            State::Open { until } | State::Probing { until } => now < until,
        }
    }

    /// [`permit`](Self::permit), reading the clock only if the breaker is not healthy.
    pub(crate) fn permit_at(&self, now: impl FnOnce() -> Instant) -> Permit {
        if self.healthy.load(Ordering::Acquire) {
            return Permit::Allowed;
        }
        self.permit(now())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn permit(&self, now: Instant) -> Permit {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Permit::Allowed,
            State::Open { until } | State::Probing { until } if now >= until => {
                *state = State::Probing {
                    until: now + self.policy.probe_interval,
                };
                Permit::Probe
            }
            State::Open { .. } | State::Probing { .. } => Permit::Refused,
        }
    }

    /// Records a success; returns `true` when it closed an open breaker (worth a log), after
    /// running `on_close` under the breaker's lock (so that what it reports, a gauge, changes
    /// in the order the breaker did).
    pub(crate) fn record_success(&self, on_close: impl FnOnce()) -> bool {
        if self.healthy.load(Ordering::Acquire) {
            return false;
        }
        let mut state = self.state();
        let was_open = !matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        if !self.healthy.swap(true, Ordering::AcqRel) {
            self.unhealthy.fetch_sub(1, Ordering::AcqRel);
        }
        if was_open {
            on_close();
        }
        was_open
    }

    /// The breaker's state, as [`health`](crate::health()) reports it.
    pub(crate) fn position(&self) -> BreakerState {
        if self.healthy.load(Ordering::Acquire) {
            return BreakerState::Closed;
        }
        match *self.state() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::Probing { .. } => BreakerState::HalfOpen,
        }
    }

    /// Records a failure; returns `true` when this failure opened the breaker (worth a log),
    /// after running `on_open` under the breaker's lock.
    pub(crate) fn record_failure(&self, now: Instant, on_open: impl FnOnce()) -> bool {
        let mut state = self.state();
        if self.healthy.swap(false, Ordering::AcqRel) {
            self.unhealthy.fetch_add(1, Ordering::AcqRel);
        }
        let open = State::Open {
            until: now + self.policy.probe_interval,
        };
        match *state {
            State::Closed { failures } if failures + 1 >= self.policy.failures_to_open => {
                *state = open;
                on_open();
                true
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Probing { .. } | State::Open { .. } => {
                *state = open;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_closed(breaker: &Breaker) -> bool {
        matches!(*breaker.state(), State::Closed { .. })
    }

    fn breaker() -> Breaker {
        Breaker::new(BreakerPolicy {
            failures_to_open: 3,
            probe_interval: Duration::from_secs(1),
        })
    }

    #[test]
    fn a_healthy_breaker_reads_no_clock_and_an_unhealthy_one_does() {
        let (breaker, t0) = (breaker(), Instant::now());
        let unread = || -> Instant { panic!("a healthy breaker needs no time") };
        assert_eq!(breaker.permit_at(unread), Permit::Allowed);
        breaker.record_success(|| {});
        for _ in 0..3 {
            breaker.record_failure(t0, || {});
        }
        assert_eq!(breaker.permit_at(|| t0), Permit::Refused);
        assert_eq!(
            breaker.permit_at(|| t0 + Duration::from_secs(1)),
            Permit::Probe
        );
        breaker.record_success(|| {});
        assert_eq!(breaker.permit_at(unread), Permit::Allowed);
    }

    #[test]
    fn opens_after_consecutive_failures_and_refuses() {
        let (breaker, t0) = (breaker(), Instant::now());
        assert!(!breaker.record_failure(t0, || {}));
        assert!(!breaker.record_failure(t0, || {}));
        assert_eq!(breaker.permit(t0), Permit::Allowed);
        assert!(
            breaker.record_failure(t0, || {}),
            "the third failure opens it"
        );
        assert_eq!(
            breaker.permit(t0 + Duration::from_millis(999)),
            Permit::Refused
        );
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let (breaker, t0) = (breaker(), Instant::now());
        breaker.record_failure(t0, || {});
        breaker.record_failure(t0, || {});
        breaker.record_success(|| {});
        breaker.record_failure(t0, || {});
        breaker.record_failure(t0, || {});
        assert!(is_closed(&breaker));
    }

    #[test]
    fn one_probe_per_interval_and_its_result_decides() {
        let (breaker, t0) = (breaker(), Instant::now());
        for _ in 0..3 {
            breaker.record_failure(t0, || {});
        }
        let later = t0 + Duration::from_secs(1);
        assert_eq!(breaker.permit(later), Permit::Probe);
        assert_eq!(
            breaker.permit(later),
            Permit::Refused,
            "only one probe at a time"
        );
        breaker.record_failure(later, || {});
        assert_eq!(
            breaker.permit(later + Duration::from_millis(500)),
            Permit::Refused
        );
        let again = later + Duration::from_secs(1);
        assert_eq!(breaker.permit(again), Permit::Probe);
        breaker.record_success(|| {});
        assert_eq!(breaker.permit(again), Permit::Allowed);
        assert!(is_closed(&breaker));
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_an_interval() {
        let (breaker, t0) = (breaker(), Instant::now());
        for _ in 0..3 {
            breaker.record_failure(t0, || {});
        }
        let probe_at = t0 + Duration::from_secs(1);
        assert_eq!(breaker.permit(probe_at), Permit::Probe);
        assert_eq!(
            breaker.permit(probe_at + Duration::from_millis(999)),
            Permit::Refused
        );
        assert_eq!(
            breaker.permit(probe_at + Duration::from_secs(1)),
            Permit::Probe
        );
    }
}
