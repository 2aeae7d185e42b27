//! When each key of one backend may next start a refresh-ahead in this process: a hot key's
//! hits all find its entry due until a refresh replaces it (or, when the refresh fails, until
//! the entry expires), and only the first hit in an interval may start one. Across processes
//! the refresh claim (`scripts/claim.lua`, its marker) does the same with the same interval.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::key::CacheKey;

/// Past this many keys, an admission first forgets the keys whose interval is over, so the
/// ledger holds about as many keys as refresh at once.
const PRUNE_ABOVE: usize = 1024;

/// The keys of one backend whose refresh interval is running, each with when it ends.
#[derive(Default)]
pub(crate) struct RefreshLedger {
    next: Mutex<HashMap<CacheKey, Instant>>,
}

impl RefreshLedger {
    /// Whether `key` may start a refresh `now` (on the backend's clock, which a test may
    /// move); if so, it may not again for `interval`.
    pub(crate) fn admit(&self, key: &CacheKey, now: Instant, interval: Duration) -> bool {
        // A panic cannot leave the map inconsistent: each critical section is one insert, or
        // a `retain`.
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        if next.get(key).is_some_and(|until| *until > now) {
            return false;
        }
        if next.len() >= PRUNE_ABOVE {
            next.retain(|_, until| *until > now);
        }
        next.insert(key.clone(), now + interval);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyBuilder;

    #[test]
    fn a_key_is_admitted_once_per_interval_and_others_are_not_held_up() {
        let ledger = RefreshLedger::default();
        let hot = KeyBuilder::new().lit("hot").finish();
        let other = KeyBuilder::new().lit("other").finish();
        assert!(ledger.admit(&hot, Instant::now(), Duration::from_secs(60)));
        assert!(!ledger.admit(&hot, Instant::now(), Duration::from_secs(60)));
        assert!(ledger.admit(&other, Instant::now(), Duration::from_secs(60)));
        let short = KeyBuilder::new().lit("short").finish();
        assert!(ledger.admit(&short, Instant::now(), Duration::ZERO));
        assert!(
            ledger.admit(&short, Instant::now(), Duration::ZERO),
            "an interval that is over admits again"
        );
    }

    #[test]
    fn the_ledger_forgets_keys_whose_interval_is_over() {
        let ledger = RefreshLedger::default();
        for n in 0..PRUNE_ABOVE + 10 {
            let key = KeyBuilder::new().lit("k").arg(&n).finish();
            assert!(ledger.admit(&key, Instant::now(), Duration::ZERO));
        }
        let held = ledger.next.lock().unwrap().len();
        assert!(held < PRUNE_ABOVE, "{held} keys held");
    }
}
