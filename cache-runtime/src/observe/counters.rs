//! A site's own counters, exact and cheap to bump from every core: stripes on cache lines of
//! their own, summed only when read.
//!
//! A single `AtomicU64` per counter would be exact too, but every hit on every core would then
//! write the same cache line, which under contention costs more than the hit itself. And a
//! stripe shared by threads needs a locked add (`lock xadd`, a full barrier), which cost a hit
//! about 0.1x `#[concurrent_cached]` (`hit_count rounds`, BENCHMARKS.md item 10): so the first
//! [`OWNED`] threads to count each own a stripe, which only its owner writes, with a plain load
//! and store; a thread gives its stripe back when it exits, and the next to take it goes on
//! from its counts. Threads beyond those share the other [`SHARED`] stripes, with locked adds.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Stripes owned by one thread each: more than the cores of most machines that run one
/// service (a Tokio runtime's workers own theirs).
const OWNED: usize = 8;
/// Stripes shared, round-robin, by the threads that found every owned stripe taken.
const SHARED: usize = 4;
const STRIPES: usize = OWNED + SHARED;

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
        let stripe = this_stripe();
        let counter = &self.stripes[stripe].0[count as usize];
        if stripe < OWNED {
            // Only this thread writes its owned stripe: no add can be lost between the two.
            let sum = counter.load(Ordering::Relaxed).wrapping_add(by);
            counter.store(sum, Ordering::Relaxed);
        } else {
            counter.fetch_add(by, Ordering::Relaxed);
        }
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

/// Which owned stripes a thread holds: bit `i` for stripe `i`.
static OWNERS: AtomicUsize = AtomicUsize::new(0);

const UNSET: usize = usize::MAX;

thread_local! {
    /// This thread's stripe (`UNSET` until it first counts). No destructor, so it can still be
    /// read while other thread-locals are destroyed (they may count as they go).
    static STRIPE: Cell<usize> = const { Cell::new(UNSET) };
    /// Gives an owned stripe back when the thread exits.
    static OWNERSHIP: Ownership = const { Ownership(Cell::new(UNSET)) };
}

/// This thread's stripe: an owned one if one is free when it first counts, else a shared one.
#[inline]
fn this_stripe() -> usize {
    let stripe = STRIPE.with(Cell::get);
    if stripe != UNSET {
        return stripe;
    }
    take_stripe()
}

#[cold]
fn take_stripe() -> usize {
    static NEXT_SHARED: AtomicUsize = AtomicUsize::new(0);
    let stripe = match take_owned() {
        // A thread whose thread-locals are being destroyed cannot register the give-back:
        // it counts on a shared stripe instead.
        Some(owned)
            if OWNERSHIP
                .try_with(|ownership| ownership.0.set(owned))
                .is_ok() =>
        {
            owned
        }
        Some(owned) => {
            give_back(owned);
            OWNED + NEXT_SHARED.fetch_add(1, Ordering::Relaxed) % SHARED
        }
        None => OWNED + NEXT_SHARED.fetch_add(1, Ordering::Relaxed) % SHARED,
    };
    STRIPE.with(|cell| cell.set(stripe));
    stripe
}

/// A free owned stripe, taken. `Acquire`: the counts its last owner stored are seen here.
fn take_owned() -> Option<usize> {
    let mut owners = OWNERS.load(Ordering::Relaxed);
    loop {
        let free = !owners & ((1 << OWNED) - 1);
        if free == 0 {
            return None;
        }
        let stripe = free.trailing_zeros() as usize;
        match OWNERS.compare_exchange_weak(
            owners,
            owners | (1 << stripe),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Some(stripe),
            Err(now) => owners = now,
        }
    }
}

/// `Release`: the next owner sees this thread's counts before it adds to them.
fn give_back(stripe: usize) {
    OWNERS.fetch_and(!(1 << stripe), Ordering::Release);
}

struct Ownership(Cell<usize>);

impl Drop for Ownership {
    fn drop(&mut self) {
        let owned = self.0.get();
        if owned != UNSET {
            // Whatever this thread counts from here on (other thread-locals' destructors)
            // goes to a shared stripe: the owned one may have its next owner by then.
            let _ = STRIPE.try_with(|cell| cell.set(OWNED));
            give_back(owned);
        }
    }
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

    #[test]
    fn stripes_given_back_by_exited_threads_keep_their_counts() {
        static COUNTERS: SiteCounters = SiteCounters::new();
        // Far more threads than owned stripes, in waves, so that stripes change owners, and
        // threads that find none free share the others; every count is kept.
        for _ in 0..8 {
            std::thread::scope(|scope| {
                for _ in 0..(OWNED + 3 * SHARED) {
                    scope.spawn(|| {
                        for _ in 0..5000 {
                            COUNTERS.add(Count::Hits, 1);
                        }
                    });
                }
            });
        }
        assert_eq!(
            COUNTERS.get(Count::Hits),
            8 * (OWNED + 3 * SHARED) as u64 * 5000
        );
    }

    /// Threads that count from their thread-locals' destructors, before and after their stripe
    /// is given back, and some whose first count is in a destructor: no count is lost.
    #[test]
    fn counts_from_thread_local_destructors_are_kept() {
        static COUNTERS: SiteCounters = SiteCounters::new();
        struct CountsOnDrop;
        impl Drop for CountsOnDrop {
            fn drop(&mut self) {
                for _ in 0..100 {
                    COUNTERS.add(Count::Hits, 1);
                }
            }
        }
        thread_local! {
            static EARLY: CountsOnDrop = const { CountsOnDrop };
            static LATE: CountsOnDrop = const { CountsOnDrop };
        }
        for wave in 0..20 {
            // Joined by hand: a scope's end waits for the closures only, not for the threads'
            // exit, where the thread-locals' destructors count.
            std::thread::scope(|scope| {
                let threads: Vec<_> = (0..(OWNED + SHARED))
                    .map(|thread| {
                        scope.spawn(move || {
                            // Registered before the stripe is taken: destroyed after it is given
                            // back; or only a destructor counts at all.
                            EARLY.with(|_| {});
                            if (wave + thread) % 3 != 0 {
                                for _ in 0..1000 {
                                    COUNTERS.add(Count::Hits, 1);
                                }
                                LATE.with(|_| {});
                            }
                        })
                    })
                    .collect();
                for thread in threads {
                    thread.join().expect("counted");
                }
            });
        }
        let threads = 20 * (OWNED + SHARED) as u64;
        let counting = (0..20)
            .flat_map(|wave| (0..OWNED + SHARED).map(move |thread| (wave + thread) % 3 != 0))
            .filter(|&counts| counts)
            .count() as u64;
        assert_eq!(
            COUNTERS.get(Count::Hits),
            threads * 100 + counting * (1000 + 100)
        );
    }
}
