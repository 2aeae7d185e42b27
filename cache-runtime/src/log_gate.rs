//! Rate limits for log lines that could otherwise repeat on every call under load (an
//! unreadable entry read by every caller, an invalidation that keeps failing).
//!
//! One gate per log site: the first event logs, the next ones within the interval are only
//! counted, and the next line that gets through says how many were suppressed. Lock-free, so a
//! gate costs a hot path two atomic operations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often one log site may emit a line.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one event per interval through and counts the rest.
pub(crate) struct LogGate {
    /// Milliseconds since the process epoch before which events are suppressed; 0 = open.
    closed_until_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    /// A gate that lets the first event through.
    pub(crate) const fn new() -> Self {
        LogGate {
            closed_until_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if this event may be logged, `n` being how many were suppressed since the last
    /// logged one; `None` if it is to be dropped.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(now_ms())
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let closed_until = self.closed_until_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if now_ms >= closed_until
            && self
                .closed_until_ms
                .compare_exchange(
                    closed_until,
                    now_ms.saturating_add(interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Starts at 1 so that a fresh gate (0) is open.
    let since = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(since.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_gets_through_with_the_count_of_the_rest() {
        let gate = LogGate::new();
        assert_eq!(gate.admit_at(1), Some(0));
        for ms in 2..1000 {
            assert_eq!(gate.admit_at(ms), None);
        }
        assert_eq!(gate.admit_at(10_000), None, "still inside the interval");
        assert_eq!(gate.admit_at(10_001), Some(999));
        assert_eq!(gate.admit_at(10_002), None);
    }

    #[test]
    fn many_threads_get_one_line_through() {
        let gate = LogGate::new();
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        if gate.admit_at(5).is_some() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1);
        assert_eq!(gate.suppressed.load(Ordering::Relaxed), 7999);
    }
}
