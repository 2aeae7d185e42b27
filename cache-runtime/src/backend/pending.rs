//! Invalidations that did not reach Redis, kept to be replayed once it answers again.
//!
//! Failing open means a mutation succeeds while Redis is unreachable; its invalidation is then
//! lost, and if Redis comes back with its data (a network blip, a pause, not a restart) other
//! processes would read the old value until its TTL. Replaying the lost invalidations on the
//! first read that reaches Redis again shrinks that window to the breaker's probe interval.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::log_gate::LogGate;

/// At most this many are kept; beyond it the oldest are dropped (and that is logged): a bound on
/// memory during a long outage, after which entries live until their TTL as before.
pub(crate) const MAX_PENDING: usize = 10_000;

/// One lost invalidation: the cache key, and the bus announcement to repeat with it, if any.
pub(crate) type Pending = (String, Option<(String, String)>);

#[derive(Default)]
pub(crate) struct PendingInvalidations {
    items: Mutex<Vec<Pending>>,
    /// Lets the read path check for work with one relaxed load.
    any: AtomicBool,
}

impl PendingInvalidations {
    pub(crate) fn push(&self, pending: Pending) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if items.iter().any(|(key, _)| *key == pending.0) {
            return;
        }
        if items.len() >= MAX_PENDING {
            items.remove(0);
            static GATE: LogGate = LogGate::new();
            if let Some(suppressed) = GATE.admit() {
                tracing::error!(
                    suppressed,
                    "more than {MAX_PENDING} invalidations are waiting for redis; the oldest \
                     are dropped and those entries live until their ttl"
                );
            }
        }
        items.push(pending);
        self.any.store(true, Ordering::Release);
    }

    /// Whether anything waits; cheap enough for every read.
    pub(crate) fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    pub(crate) fn take(&self) -> Vec<Pending> {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        self.any.store(false, Ordering::Release);
        std::mem::take(&mut *items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_once_and_bounded() {
        let pending = PendingInvalidations::default();
        assert!(!pending.any());
        pending.push(("a".to_owned(), None));
        pending.push(("a".to_owned(), None));
        for n in 0..MAX_PENDING {
            pending.push((n.to_string(), None));
        }
        assert!(pending.any());
        let items = pending.take();
        assert_eq!(items.len(), MAX_PENDING);
        assert_eq!(items[0].0, "0", "the oldest (`a`) was dropped");
        assert!(!pending.any());
        assert!(pending.take().is_empty());
    }
}
