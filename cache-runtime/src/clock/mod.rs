//! Where the runtime reads the time: the real clocks, or a [`TestClock`] that moves only when a
//! test moves it, so that expiry, envelope times and breaker intervals are tested by advancing
//! time instead of sleeping.
//!
//! An enum, not a generic or a `#[cfg(test)]` arm: backends stay one type, and tests run the
//! code that ships. On a hit it costs a few instructions next to the clock read: `Real` is the
//! `Arc`'s null niche, so choosing the arm is a load of a field never written after
//! construction and a branch that always goes one way (callgrind: 7 of ~537 instructions per
//! read, ARCHITECTURE.md "Hit path performance").

mod recent;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point on the clock that in-process expiry is checked against: the kernel's coarse
/// monotonic clock (`CLOCK_MONOTONIC_COARSE` on Linux, through `coarsetime`), where
/// `Instant::now()` reads the hardware counter (about 24 ns on the virtual machines measured,
/// a fifth of a hit); and read from a word a thread of ours keeps current ([`recent`]), not
/// through the vDSO on every hit. The price is resolution: an entry can outlive its ttl by up
/// to one tick (1 to 10 ms), and by however long the keeping thread waits to be scheduled.
pub(crate) type Moment = coarsetime::Instant;

/// A backend's clock.
#[derive(Clone, Default)]
pub(crate) enum Clock {
    /// The real clocks: coarse monotonic for expiry, `Instant` for intervals, the system clock
    /// for the times written into Redis entries (which other processes read).
    #[default]
    Real,
    /// A test's clock.
    Test(Arc<ManualClock>),
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clock::Real => f.write_str("Real"),
            Clock::Test(test) => f.debug_tuple("Test").field(&test.elapsed()).finish(),
        }
    }
}

// The niche that makes `Real` a null pointer: a `Clock` is one word, no separate tag.
const _: () = assert!(std::mem::size_of::<Clock>() == std::mem::size_of::<usize>());

impl Clock {
    /// Now, on [`Moment`]'s clock. Not `coarsetime::Instant::now()`, which also stores the
    /// reading in a global that every core's hits would then write.
    #[inline]
    pub(crate) fn moment(&self) -> Moment {
        match self {
            Clock::Real => recent::now(),
            Clock::Test(test) => test.moment(),
        }
    }

    /// Now, for intervals (the circuit breaker's).
    pub(crate) fn instant(&self) -> Instant {
        match self {
            Clock::Real => Instant::now(),
            Clock::Test(test) => test.instant_origin + test.elapsed(),
        }
    }

    /// Milliseconds since the Unix epoch, for the times an envelope carries.
    pub(crate) fn unix_ms(&self) -> u64 {
        match self {
            Clock::Real => unix_ms_now(),
            Clock::Test(test) => {
                let elapsed = u64::try_from(test.elapsed().as_millis()).unwrap_or(u64::MAX);
                test.unix_origin_ms.saturating_add(elapsed)
            }
        }
    }

    /// Whether two clocks are the same one.
    pub(crate) fn same_as(&self, other: &Clock) -> bool {
        match (self, other) {
            (Clock::Real, Clock::Real) => true,
            (Clock::Test(a), Clock::Test(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// The system clock in Unix milliseconds.
pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A clock for tests: it starts at the real clocks' readings and then moves only by
/// [`advance`](Self::advance). Give the same one to every backend a test uses
/// (`MemoryBackend::builder().clock(&clock)`, `RedisBackend::builder().clock(&clock)`; a tiered
/// backend runs on its L2's clock), then advance it past a TTL instead of sleeping.
///
/// ```
/// use std::time::Duration;
/// use cache_runtime::{MemoryBackend, TestClock};
///
/// let clock = TestClock::new();
/// let memory = MemoryBackend::builder().clock(&clock).build();
/// clock.advance(Duration::from_secs(61)); // every entry of a 60 s TTL has now expired
/// # drop(memory);
/// ```
///
/// Redis itself still expires keys on its own clock; entries past their time on the test clock
/// are misses all the same, since every read checks the envelope's times. In-process stores
/// (a memory backend, a tiered backend's L1) expire entries on the test clock only.
#[derive(Clone)]
pub struct TestClock {
    inner: Arc<ManualClock>,
}

impl TestClock {
    /// A clock reading the real time now.
    #[allow(clippy::new_without_default)] // a clock "by default" would hide which one a test shares
    pub fn new() -> Self {
        TestClock {
            inner: Arc::new(ManualClock {
                coarse_origin: coarsetime::Instant::now_without_cache_update(),
                instant_origin: Instant::now(),
                unix_origin_ms: unix_ms_now(),
                elapsed_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.inner.elapsed_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How far the clock has been moved.
    pub fn elapsed(&self) -> Duration {
        self.inner.elapsed()
    }

    pub(crate) fn clock(&self) -> Clock {
        Clock::Test(Arc::clone(&self.inner))
    }
}

impl std::fmt::Debug for TestClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestClock")
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

/// The readings a [`TestClock`] started from, and how far it moved since.
pub(crate) struct ManualClock {
    coarse_origin: Moment,
    instant_origin: Instant,
    unix_origin_ms: u64,
    elapsed_nanos: AtomicU64,
}

impl ManualClock {
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_nanos.load(Ordering::Relaxed))
    }

    fn moment(&self) -> Moment {
        self.coarse_origin + coarsetime::Duration::from(self.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_clock_moves_every_reading_only_when_advanced() {
        let clock = TestClock::new();
        let inner = clock.clock();
        let (moment, instant, unix) = (inner.moment(), inner.instant(), inner.unix_ms());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            (inner.moment(), inner.instant(), inner.unix_ms()),
            (moment, instant, unix),
            "real time passing does not move it"
        );
        clock.advance(Duration::from_secs(5));
        assert_eq!(inner.instant() - instant, Duration::from_secs(5));
        assert_eq!(inner.unix_ms() - unix, 5_000);
        let moved = (inner.moment() - moment).as_millis();
        assert!((4_999..=5_001).contains(&moved), "{moved}");
        assert!(inner.same_as(&clock.clock()) && !inner.same_as(&Clock::Real));
    }
}
