//! A site's own counters, exact and cheap to bump from every core: one stripe per thread (up
//! to [`STRIPES`]), each on a cache line of its own, summed only when read.
//!
//! A single `AtomicU64` per counter would be exact too, but every hit on every core would then
//! write the same cache line, which under contention costs more than the hit itself.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A power of two, so that a thread's stripe is a mask of its number; more than the cores of
/// most machines that run one service, for 1 KiB a site.
const STRIPES: usize = 8;

/// What a site counts. The discriminant is the counter's slot in a stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Hits,
    L1Hits,
    Misses,
    Stale,
    Bypasses,
    Errors,
    Loads,
    LoadFailures,
    LoadNanos,
    Coalesced,
    Refreshes,
}

const COUNTS: usize = 11;

/// Each stripe on its own pair of cache lines (adjacent-line prefetch pairs them on x86).
#[repr(align(128))]
struct Stripe([AtomicU64; COUNTS]);

/// The counters of one site, built in its `static`.
pub(crate) struct SiteCounters {
    stripes: [Stripe; STRIPES],
}

impl SiteCounters {
    pub(crate) const fn new() -> Self {
        SiteCounters {
            stripes: [const { Stripe([const { AtomicU64::new(0) }; COUNTS]) }; STRIPES],
        }
    }

    #[inline]
    pub(crate) fn add(&self, count: Count, by: u64) {
        self.stripes[this_stripe()].0[count as usize].fetch_add(by, Ordering::Relaxed);
    }

    pub(crate) fn add_duration(&self, count: Count, duration: Duration) {
        self.add(
            count,
            u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    /// The sum over the stripes: exact once the counting calls have returned (a `Relaxed`
    /// increment is still one indivisible add).
    pub(crate) fn get(&self, count: Count) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.0[count as usize].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl std::fmt::Debug for SiteCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteCounters")
            .field("hits", &self.get(Count::Hits))
            .field("misses", &self.get(Count::Misses))
            .finish_non_exhaustive()
    }
}

/// This thread's stripe, dealt round-robin on first use.
#[inline]
fn this_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|stripe| {
        let mut index = stripe.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            stripe.set(index);
        }
        index
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        static COUNTERS: SiteCounters = SiteCounters::new();
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        COUNTERS.add(Count::Hits, 1);
                    }
                    COUNTERS.add(Count::Misses, 2);
                });
            }
        });
        assert_eq!(COUNTERS.get(Count::Hits), 16_000);
        assert_eq!(COUNTERS.get(Count::Misses), 32);
        assert_eq!(COUNTERS.get(Count::Loads), 0);
    }
}
