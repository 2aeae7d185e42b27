//! The coarse monotonic clock, read from a word of our own that a background thread keeps
//! current, so that a hit's expiry check is one load instead of a call into the vDSO (the call
//! cost a hit 0.12-0.20x `#[concurrent_cached]` in `hit_count rounds`, BENCHMARKS.md item 10).
//!
//! The thread ticks at the coarse clock's own resolution (a finer tick would only store the
//! same reading again), so a reading lags the kernel's by at most one tick plus however long
//! the thread waits to be scheduled. It stops ticking for a process that stopped reading:
//! about once a second it empties the word; the next reader finds it empty, reads the kernel's
//! clock itself and fills the word again; a word still empty at the following check means
//! nobody read the clock for a second, and the thread parks until a reader unparks it. So an
//! idle process is not woken hundreds of times a second, and a reader never trusts a word the
//! thread has stopped keeping: while the thread is parked the word is empty.
//!
//! A child forked after the thread started has no such thread (fork copies only the thread
//! that calls it): a handler run in the child empties the word and marks it forked, and there
//! every reading is the kernel's.
//!
//! Why not `coarsetime`'s own `Updater` (or quanta's upkeep thread): both tick for the life of
//! the process whether anything reads the clock or not, and their readers cannot tell a
//! reading the thread keeps from one it stopped keeping.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

use super::Moment;

/// The process's kept clock.
static REAL: Recent = Recent::new(Duration::from_secs(1));

/// Set in a child forked after a keeper started: its keepers did not come along.
static FORKED: AtomicBool = AtomicBool::new(false);

/// The coarse monotonic clock, as of at most one tick (plus the keeper's scheduling delay)
/// ago.
#[inline(always)]
pub(crate) fn now() -> Moment {
    REAL.now()
}

/// A kept reading and its keeper.
struct Recent {
    /// The last reading, in `coarsetime` ticks; 0 while nobody keeps it (a reader takes the
    /// kernel's clock then). Only the keeper writes it once a tick; a reader writes it only
    /// after finding it empty.
    reading: Line,
    /// The keeper, once started; `None` if it could not be started, and every reading is then
    /// the kernel's.
    keeper: OnceLock<Option<Thread>>,
    /// How often the keeper checks whether anyone still reads.
    check_every: Duration,
    /// How many times the keeper has ticked (what shows that it parks).
    ticks: AtomicU64,
}

/// On a cache line of its own: hits on every core read it, and nothing else may share the
/// line the keeper writes.
#[repr(align(128))]
struct Line(AtomicU64);

impl Recent {
    const fn new(check_every: Duration) -> Recent {
        Recent {
            reading: Line(AtomicU64::new(0)),
            keeper: OnceLock::new(),
            check_every,
            ticks: AtomicU64::new(0),
        }
    }

    #[inline(always)]
    fn now(&'static self) -> Moment {
        let ticks = self.reading.0.load(Ordering::Relaxed);
        if ticks != 0 {
            return Moment::from_ticks(ticks);
        }
        self.read_and_keep()
    }

    /// The kernel's clock, stored for the readers after us, and the keeper woken (or
    /// started): the word was empty.
    #[cold]
    #[inline(never)]
    fn read_and_keep(&'static self) -> Moment {
        let now = Moment::now_without_cache_update();
        if FORKED.load(Ordering::Relaxed) {
            return now;
        }
        if let Some(keeper) = self.keeper.get_or_init(|| self.start()) {
            // Woken first: a keeper that parks between our fill and a late unpark would leave
            // the word unkept for as long as we are descheduled; woken first, it parks at most
            // until the fill's next check.
            keeper.unpark();
            self.reading.0.fetch_max(now.as_ticks(), Ordering::Relaxed);
        }
        now
    }

    fn start(&'static self) -> Option<Thread> {
        forget_keepers_in_forked_children();
        let tick = resolution();
        std::thread::Builder::new()
            .name("cachette-clock".into())
            .spawn(move || self.keep(tick))
            .ok()
            .map(|handle| handle.thread().clone())
    }

    /// A reading a tick; a park once a check finds the word still empty since the last one.
    fn keep(&self, tick: Duration) -> ! {
        let ticks_per_check = (self.check_every.as_nanos() / tick.as_nanos()).max(1);
        loop {
            for _ in 0..ticks_per_check {
                std::thread::sleep(tick);
                self.ticks.fetch_add(1, Ordering::Relaxed);
                let now = Moment::now_without_cache_update().as_ticks();
                // Only a kept word moves: an empty one stays empty until a reader fills it.
                let _ =
                    self.reading
                        .0
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |ticks| {
                            (ticks != 0).then_some(now.max(ticks))
                        });
            }
            if self.reading.0.swap(0, Ordering::Relaxed) == 0 {
                // An unpark between the swap and here is kept by `park`, which then returns
                // at once; a spurious return costs one check's ticks.
                std::thread::park();
            }
        }
    }
}

/// Registers, once, what a forked child runs: it empties the process's word and marks the
/// process forked, so that no reading there trusts a word its keeper (not forked) left.
#[cfg(unix)]
fn forget_keepers_in_forked_children() {
    extern "C" fn in_child() {
        // Async-signal-safe: two atomic stores.
        FORKED.store(true, Ordering::Relaxed);
        REAL.reading.0.store(0, Ordering::Relaxed);
    }
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: registers a handler that only stores to atomics; no other handler is
        // removed or replaced.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

#[cfg(not(unix))]
fn forget_keepers_in_forked_children() {}

/// The coarse clock's resolution (the kernel's tick), held to 1-10 ms.
#[cfg(target_os = "linux")]
fn resolution() -> Duration {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid pointer to a timespec.
    let known = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } == 0;
    let res = match known {
        true => Duration::new(res.tv_sec as u64, res.tv_nsec as u32),
        false => Duration::from_millis(4),
    };
    res.clamp(Duration::from_millis(1), Duration::from_millis(10))
}

/// Elsewhere `coarsetime` reads a fine clock: a millisecond's tick.
#[cfg(not(target_os = "linux"))]
fn resolution() -> Duration {
    Duration::from_millis(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn kept(check_every: Duration) -> &'static Recent {
        Box::leak(Box::new(Recent::new(check_every)))
    }

    fn behind(reading: Moment) -> Duration {
        let kernel = Moment::now_without_cache_update();
        Duration::from(kernel.duration_since(reading))
    }

    fn ticks_within(clock: &Recent, window: Duration) -> u64 {
        let before = clock.ticks.load(Ordering::Relaxed);
        std::thread::sleep(window);
        clock.ticks.load(Ordering::Relaxed) - before
    }

    #[test]
    fn a_reading_keeps_up_with_the_kernels_clock() {
        let clock = kept(Duration::from_secs(1));
        let tick = resolution();
        let end = Instant::now() + Duration::from_millis(300);
        let mut fast = 0;
        while Instant::now() < end {
            let lag = behind(clock.now());
            // One tick, and the keeper's scheduling on a loaded machine.
            assert!(
                lag <= tick * 2 + Duration::from_millis(50),
                "{lag:?} behind"
            );
            fast += u32::from(clock.reading.0.load(Ordering::Relaxed) != 0);
        }
        assert!(fast > 0, "the kept word was used");
    }

    #[test]
    fn an_unread_clock_stops_ticking_and_its_next_reading_is_the_kernels() {
        let check = Duration::from_millis(50);
        let clock = kept(check);
        clock.now();
        assert!(ticks_within(clock, check * 2) > 0, "it ticks while read");
        // Unread for two checks: the word emptied, then found empty; the keeper parks.
        std::thread::sleep(check * 3);
        assert_eq!(ticks_within(clock, check * 4), 0, "parked");
        assert_eq!(clock.reading.0.load(Ordering::Relaxed), 0);
        // A reading then is the kernel's own, not the word's last value, and wakes it.
        assert!(behind(clock.now()) <= resolution() + Duration::from_millis(20));
        assert!(ticks_within(clock, check * 2) > 0, "woken");
    }

    #[test]
    fn readings_never_go_back() {
        let clock = kept(Duration::from_millis(20));
        let mut last = clock.now();
        let end = Instant::now() + Duration::from_millis(200);
        while Instant::now() < end {
            let now = clock.now();
            assert!(now >= last);
            last = now;
        }
    }

    /// A child forked after the keeper started has no keeper (fork copies only the calling
    /// thread), so the word it inherited must not be trusted: its clock has to move.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_forked_childs_clock_moves() {
        // The process's own clock: the one the fork handler knows.
        let clock = &REAL;
        clock.now();
        // SAFETY: the child only loads and stores atomics, sleeps and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let first = clock.now();
            std::thread::sleep(Duration::from_millis(200));
            let moved = clock.now().duration_since(first).as_millis();
            // SAFETY: exits the child without running the parent's exit handlers.
            unsafe { libc::_exit(moved.min(250) as i32) };
        }
        let mut status = 0;
        // SAFETY: our own child, a valid pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "{status}");
        let moved_ms = libc::WEXITSTATUS(status);
        assert!(
            moved_ms >= 150,
            "the forked child's clock moved {moved_ms} ms in 200 ms of sleep"
        );
    }
}
