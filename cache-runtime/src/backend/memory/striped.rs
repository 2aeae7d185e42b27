//! A read-write lock striped by thread, for the memory store's shards: a read locks the
//! reader's own stripe (a cache line of its own), so hits on one shard from different cores
//! write no common line; a write locks every stripe.
//!
//! Why not crossbeam's `ShardedLock`, which is this lock (ARCHITECTURE.md, "The memory hit at
//! the floor", eighth round): it numbers threads in a process-wide `Mutex`, which a forked
//! child can inherit locked (its first hit then waits forever), and a write takes the stripes
//! one after another while the ones it has not reached keep admitting readers, so it waits for
//! one read a stripe, in turn, while the hits of the stripes it holds wait with it. Here a
//! thread takes the stripe fewest live threads hold (atomics, no lock) and gives it back when it
//! exits, and a writer first raises a flag that sends new readers to wait at a gate it holds, so
//! it waits for the reads in flight only.

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Stripes a lock: the cores that hit one shard at once, with room for the threads beside them
/// (more live threads than this share stripes).
const STRIPES: usize = 8;

/// One stripe, on cache lines of its own (128 bytes: adjacent-line prefetch pairs lines on x86).
#[repr(align(128))]
struct Stripe(RwLock<()>);

/// A read-write lock striped by thread. Poisoning is not reported: every caller's critical
/// section leaves the value whole (the store's, `store.rs`).
pub(super) struct StripedLock<T> {
    stripes: [Stripe; STRIPES],
    /// Writers holding the gate. A hint for readers (the stripes are what exclude): a reader that
    /// sees it raised waits at the gate instead of taking its stripe.
    writing: AtomicUsize,
    /// Held for writing by the writer for its whole write: writers one at a time, and readers
    /// held back. A read-write lock, so that a write's end wakes every reader waiting at once.
    gate: RwLock<()>,
    value: UnsafeCell<T>,
}

// SAFETY: a read guard gives `&T` to many threads at once (`T: Sync`), and a write guard `&mut T`
// to one thread while it holds every stripe, so no read guard exists (`T: Send`).
unsafe impl<T: Send + Sync> Sync for StripedLock<T> {}

impl<T> StripedLock<T> {
    pub(super) fn new(value: T) -> StripedLock<T> {
        StripedLock {
            stripes: std::array::from_fn(|_| Stripe(RwLock::new(()))),
            writing: AtomicUsize::new(0),
            gate: RwLock::new(()),
            value: UnsafeCell::new(value),
        }
    }

    /// Shared access, through this thread's stripe.
    #[inline(always)]
    pub(super) fn read(&self) -> StripedReadGuard<'_, T> {
        self.read_on(this_stripe())
    }

    #[inline(always)]
    fn read_on(&self, stripe: usize) -> StripedReadGuard<'_, T> {
        if self.writing.load(Ordering::Relaxed) != 0 {
            self.wait_for_writer();
        }
        let stripe = self.stripes[stripe % STRIPES]
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        StripedReadGuard {
            _stripe: stripe,
            lock: self,
        }
    }

    /// Waits out the writer at the gate. A read that passed the flag before it was raised may
    /// still take its stripe: the writer waits for it as for a read already in flight.
    #[cold]
    #[inline(never)]
    fn wait_for_writer(&self) {
        drop(self.gate.read().unwrap_or_else(PoisonError::into_inner));
    }

    /// Exclusive access: the gate, then every stripe, each as soon as its reads in flight end.
    pub(super) fn write(&self) -> StripedWriteGuard<'_, T> {
        let gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        self.writing.fetch_add(1, Ordering::Relaxed);
        let writing = Writing(&self.writing);
        let stripes = std::array::from_fn(|stripe| {
            self.stripes[stripe]
                .0
                .write()
                .unwrap_or_else(PoisonError::into_inner)
        });
        StripedWriteGuard {
            _stripes: stripes,
            _writing: writing,
            _gate: gate,
            lock: self,
        }
    }

    /// Writers holding the gate, for tests that wait until one is waiting for its stripes.
    #[cfg(test)]
    fn writers(&self) -> usize {
        self.writing.load(Ordering::Relaxed)
    }
}

/// Lowers the writer's flag when its guard drops, on unwinding too.
struct Writing<'a>(&'a AtomicUsize);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) struct StripedReadGuard<'a, T> {
    _stripe: RwLockReadGuard<'a, ()>,
    lock: &'a StripedLock<T>,
}

impl<T> Deref for StripedReadGuard<'_, T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: this guard holds a stripe for reading, so no write guard exists.
        unsafe { &*self.lock.value.get() }
    }
}

/// Fields drop in order: the stripes first (readers at them go on), then the flag, then the
/// gate (readers waiting there go on, to free stripes).
pub(super) struct StripedWriteGuard<'a, T> {
    _stripes: [RwLockWriteGuard<'a, ()>; STRIPES],
    _writing: Writing<'a>,
    _gate: RwLockWriteGuard<'a, ()>,
    lock: &'a StripedLock<T>,
}

impl<T> Deref for StripedWriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard holds every stripe for writing: no other guard exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for StripedWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this the only reference through it.
        unsafe { &mut *self.lock.value.get() }
    }
}

thread_local! {
    // A constant start and no destructor: the hit's read is a plain load, readable during
    // thread-local teardown, and nothing a forked child could inherit locked.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    // Gives the stripe back when the thread exits.
    static HOLDING: Holding = const {
        Holding {
            holders: &HOLDERS,
            stripe: Cell::new(usize::MAX),
        }
    };
}

/// This thread's stripe, taken on its first read.
#[inline(always)]
fn this_stripe() -> usize {
    let stripe = STRIPE.with(Cell::get);
    if stripe != usize::MAX {
        return stripe;
    }
    take_stripe()
}

/// Live threads on each stripe, of every lock (a thread keeps one stripe for all).
static HOLDERS: StripeHolders = StripeHolders::new();

#[cold]
fn take_stripe() -> usize {
    let stripe = HOLDERS.take();
    // In a thread-local destructor after `HOLDING`'s, the stripe is used but not counted.
    if HOLDING
        .try_with(|holding| holding.stripe.set(stripe))
        .is_err()
    {
        HOLDERS.give_back(stripe);
    }
    STRIPE.with(|cell| cell.set(stripe));
    stripe
}

/// A thread's hold on its stripe.
struct Holding {
    holders: &'static StripeHolders,
    stripe: Cell<usize>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let stripe = self.stripe.get();
        if stripe != usize::MAX {
            self.holders.give_back(stripe);
        }
    }
}

/// How many live threads hold each stripe. Numbers alone would never be given back: long-lived
/// threads whose first reads came between short-lived ones' would share stripes with fewer
/// threads alive than stripes.
struct StripeHolders([AtomicUsize; STRIPES]);

impl StripeHolders {
    const fn new() -> StripeHolders {
        StripeHolders([const { AtomicUsize::new(0) }; STRIPES])
    }

    /// The stripe fewest threads hold (the first of them). Two threads taking one at once may
    /// take the same: they then share a line, nothing worse.
    fn take(&self) -> usize {
        let (stripe, _) = self
            .0
            .iter()
            .map(|holders| holders.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, holders)| holders)
            .unwrap_or((0, 0));
        self.0[stripe].fetch_add(1, Ordering::Relaxed);
        stripe
    }

    fn give_back(&self, stripe: usize) {
        self.0[stripe].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    /// Waits, within a bound, until a writer holds the gate.
    fn until_a_writer_waits(lock: &StripedLock<u32>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock.writers() == 0 {
            assert!(Instant::now() < deadline, "the writer never took the gate");
            std::thread::yield_now();
        }
    }

    /// A writer waiting for a read in flight on one stripe holds back new reads on every
    /// stripe: none reads before the write, so the writer waits for the reads in flight, not for
    /// one read a stripe in turn (crossbeam's `ShardedLock` let the stripes it had not reached
    /// admit readers, which then read the value from before the write).
    #[test]
    fn a_waiting_writer_holds_back_new_reads_on_every_stripe() {
        for stripe in 0..STRIPES {
            let lock = Arc::new(StripedLock::new(0u32));
            let (release, released) = mpsc::channel::<()>();
            let (holding, held) = mpsc::channel();
            let reader = {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    let guard = lock.read_on(0);
                    holding.send(()).unwrap();
                    released.recv().unwrap();
                    drop(guard);
                })
            };
            held.recv().unwrap();
            let writer = {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || *lock.write() = 1)
            };
            until_a_writer_waits(&lock);
            let (read, seen) = mpsc::channel();
            let late = {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || read.send(*lock.read_on(stripe)).unwrap())
            };
            assert!(
                seen.recv_timeout(Duration::from_millis(100)).is_err(),
                "a read on stripe {stripe} went ahead of the waiting writer"
            );
            release.send(()).unwrap();
            assert_eq!(
                seen.recv().unwrap(),
                1,
                "stripe {stripe} read before the write"
            );
            for thread in [reader, writer, late] {
                thread.join().unwrap();
            }
        }
    }

    /// A write excludes every read, whichever stripe it is on: readers on all stripes never see
    /// a half-done write of two fields.
    #[test]
    fn reads_on_every_stripe_never_see_a_write_half_done() {
        let lock = Arc::new(StripedLock::new((0u64, 0u64)));
        let readers: Vec<_> = (0..STRIPES)
            .map(|stripe| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let pair = *lock.read_on(stripe);
                        assert_eq!(pair.0, pair.1, "stripe {stripe} saw a torn write");
                    }
                })
            })
            .collect();
        for n in 1..=20_000u64 {
            let mut pair = lock.write();
            pair.0 = n;
            std::hint::black_box(&mut *pair);
            pair.1 = n;
        }
        for reader in readers {
            reader.join().unwrap();
        }
        assert_eq!(*lock.read(), (20_000, 20_000));
    }

    /// A panic under a write guard lowers the flag and frees the gate and every stripe: reads
    /// and writes go on (the poisoning is not reported).
    #[test]
    fn a_panic_under_the_write_guard_leaves_the_lock_usable() {
        let lock = Arc::new(StripedLock::new(0u32));
        let panicked = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                let mut guard = lock.write();
                *guard = 7;
                panic!("under the write guard");
            })
            .join()
        };
        assert!(panicked.is_err());
        assert_eq!(lock.writers(), 0, "the flag stayed raised");
        assert_eq!(*lock.read(), 7);
        *lock.write() = 8;
        assert_eq!(*lock.read_on(3), 8);
    }

    /// A thread keeps its stripe: the same on every read.
    #[test]
    fn a_thread_keeps_its_stripe() {
        let stripes: Vec<(usize, usize)> = (0..2 * STRIPES)
            .map(|_| {
                std::thread::spawn(|| (this_stripe(), this_stripe()))
                    .join()
                    .unwrap()
            })
            .collect();
        assert!(stripes
            .iter()
            .all(|(first, again)| first == again && *first < STRIPES));
    }

    /// Live threads take different stripes while there are free ones, and a stripe given back
    /// is taken again first: threads that come and go leave the ones that stay apart (review
    /// 27b: five long-lived threads whose first reads came between short-lived ones' held
    /// stripes `[1, 1, 3, 5, 7]` when threads were numbered in turn).
    #[test]
    fn stripes_go_to_the_fewest_holders_and_come_back() {
        let holders = StripeHolders::new();
        let mut taken: Vec<usize> = (0..STRIPES).map(|_| holders.take()).collect();
        taken.sort();
        assert_eq!(taken, (0..STRIPES).collect::<Vec<_>>());
        for churn in 0..3 * STRIPES {
            let stripe = churn % STRIPES;
            holders.give_back(stripe);
            assert_eq!(holders.take(), stripe, "a free stripe went unused");
        }
        assert!(holders
            .0
            .iter()
            .all(|holders| holders.load(Ordering::Relaxed) == 1));
        let ninth = holders.take();
        holders.give_back(3);
        assert_ne!(
            holders.take(),
            ninth,
            "a stripe with two holders taken before a free one"
        );
    }

    /// A thread's hold gives its stripe back when it ends (its thread exits); one that never
    /// took a stripe gives nothing back.
    #[test]
    fn a_hold_gives_its_stripe_back_when_it_ends() {
        let holders: &'static StripeHolders = Box::leak(Box::new(StripeHolders::new()));
        let stripe = holders.take();
        let hold = Holding {
            holders,
            stripe: Cell::new(stripe),
        };
        assert_eq!(holders.0[stripe].load(Ordering::Relaxed), 1);
        drop(hold);
        assert_eq!(holders.0[stripe].load(Ordering::Relaxed), 0);
        drop(Holding {
            holders,
            stripe: Cell::new(usize::MAX),
        });
        assert!(holders.0.iter().all(|h| h.load(Ordering::Relaxed) == 0));
    }
}
