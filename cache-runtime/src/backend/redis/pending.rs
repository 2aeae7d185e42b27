//! Invalidations that did not reach Redis, kept until Redis confirms them.
//!
//! Failing open means a mutation succeeds while Redis is unreachable; its invalidation is then
//! lost, and if Redis comes back with its data (a network blip, a pause, not a restart) every
//! process would read the old value until its TTL. So a failed invalidation is kept here and
//! replayed: in batches, before the operations of later calls and by a background task, until
//! Redis confirms it. Until then its key is *pending*: this process reads nothing of it from
//! Redis and stores nothing there.
//!
//! The queue is bounded. Past the bound the keys themselves are not kept, but their loss is:
//! the queue *overflows*, every key counts as pending, and the replay ends with a purge of every
//! entry under the prefix, since which ones are stale is no longer known.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::log_gate::LogGate;
use crate::observe::meters::BackendMeters;
use crate::observe::Invalidation;

/// What a pending tag invalidation is kept under, next to pending keys: `{t}<tag>`. A cache key
/// never holds a brace, so no key is kept under such a name.
pub(crate) fn tag_target(tag: &str) -> String {
    format!("{}{tag}", super::keys::TAG_MESSAGE_MARK)
}

/// The tag of a pending target kept by [`tag_target`]; `None` for a key.
pub(crate) fn as_tag(target: &str) -> Option<&str> {
    target.strip_prefix(super::keys::TAG_MESSAGE_MARK)
}

/// At most this many keys are kept; past it, the queue overflows.
pub(crate) const MAX_PENDING: usize = 10_000;

/// The bus announcement to repeat with a replayed invalidation: (channel, message).
pub(crate) type Announcement = Option<(String, String)>;

/// Where the queue stood when an invalidation was sent: a confirmation covers only what was
/// queued before it (a later failure of the same key may be of a mutation after the delete ran).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark(u64);

/// The queue: each key with its announcement and the sequence number of its latest push.
#[derive(Default)]
struct Queue {
    items: HashMap<String, (Announcement, u64)>,
    /// The sequence number of the next push.
    next: u64,
    /// The sequence number of the latest push a full queue refused.
    last_refused: Option<u64>,
}

#[derive(Default)]
pub(crate) struct PendingInvalidations {
    items: Mutex<Queue>,
    /// Lets every operation check for work with one relaxed load. Cleared only when nothing is
    /// pending, never before a replay is confirmed.
    any: AtomicBool,
    /// The queue overflowed: every key counts as pending until a purge has run.
    overflowed: AtomicBool,
    /// One replay at a time; the others go on without waiting for it.
    replaying: AtomicBool,
    /// Woken whenever confirmations remove something (or a purge ends an overflow): what a
    /// drain waits on instead of polling.
    progress: tokio::sync::Notify,
    /// The backend's handles: queued and replayed counts, and the queue's length (set under
    /// the lock, so that the gauge's last value is the queue's).
    meters: OnceLock<Arc<BackendMeters>>,
}

/// Held by the one caller replaying; dropping it (on return, cancellation or panic) lets the
/// next one in.
pub(crate) struct Replaying<'a>(&'a PendingInvalidations);

impl Drop for Replaying<'_> {
    fn drop(&mut self) {
        self.0.replaying.store(false, Ordering::Release);
    }
}

impl PendingInvalidations {
    fn items(&self) -> MutexGuard<'_, Queue> {
        // Every critical section is a lookup, an insert, a removal or a copy.
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn push(&self, key: &str, announcement: Announcement) {
        let mut guard = self.items();
        let queue = &mut *guard;
        let seq = queue.next;
        queue.next += 1;
        let items = &mut queue.items;
        // Counted once per key kept: a key already waiting is replayed (and counted) once, and
        // a key refused by a full queue is not kept (the purge covers it).
        let mut kept = false;
        if items.len() >= MAX_PENDING && !items.contains_key(key) {
            queue.last_refused = Some(seq);
            if !self.overflowed.swap(true, Ordering::AcqRel) {
                static GATE: LogGate = LogGate::new();
                if let Some(suppressed) = GATE.admit() {
                    tracing::error!(
                        suppressed,
                        "more than {MAX_PENDING} invalidations are waiting for redis; caching \
                         through redis stops in this process, and once redis answers every \
                         entry under this prefix is deleted, since which are stale is no \
                         longer known"
                    );
                }
            }
        } else {
            // Re-stamped if already waiting: a confirmation of its earlier send leaves it.
            kept = items.insert(key.to_owned(), (announcement, seq)).is_none();
        }
        self.any.store(true, Ordering::Release);
        if let Some(meters) = self.meters.get() {
            if kept {
                meters.invalidated(Invalidation::Queued, 1);
            }
            meters.pending(queue.items.len());
        }
    }

    /// Taken before an invalidation (or a replay, or a purge) is sent; its confirmation then
    /// covers only what was queued before.
    pub(crate) fn mark(&self) -> Mark {
        Mark(self.items().next)
    }

    /// Gives the queue its backend's handles (the first configuration that names it keeps it).
    pub(crate) fn attach_meters(&self, meters: Arc<BackendMeters>) {
        let _ = self.meters.set(meters);
    }

    /// How many keys are waiting (an overflowed queue's lost keys not counted).
    pub(crate) fn len(&self) -> usize {
        self.items().items.len()
    }

    /// Whether anything waits; cheap enough for every operation.
    pub(crate) fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// Whether `key` must be left alone in Redis: its invalidation is not confirmed yet.
    pub(crate) fn holds(&self, key: &str) -> bool {
        self.any() && (self.overflowed() || self.items().items.contains_key(key))
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// The right to replay, unless another caller is replaying.
    pub(crate) fn start_replay(&self) -> Option<Replaying<'_>> {
        (!self.replaying.swap(true, Ordering::AcqRel)).then_some(Replaying(self))
    }

    /// Up to `most` pending invalidations, left in place until [`confirm`](Self::confirm).
    pub(crate) fn batch(&self, most: usize) -> Vec<(String, Announcement)> {
        self.items()
            .items
            .iter()
            .take(most)
            .map(|(key, (announcement, _))| (key.clone(), announcement.clone()))
            .collect()
    }

    /// [`batch`](Self::batch) of the keys `wanted` accepts (on a cluster, those whose master's
    /// breaker lets them through: the others would hold the batch's places), asking it of
    /// `scanned` keys at most, from a random place in the queue: a bounded time per call, and
    /// no key kept out for good by others that are not wanted.
    pub(crate) fn batch_where(
        &self,
        most: usize,
        scanned: usize,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<(String, Announcement)> {
        let queue = self.items();
        let start = fastrand::usize(..queue.items.len().max(1));
        queue
            .items
            .iter()
            .skip(start)
            .chain(queue.items.iter().take(start))
            .take(scanned)
            .filter(|(key, _)| wanted(key))
            .take(most)
            .map(|(key, (announcement, _))| (key.clone(), announcement.clone()))
            .collect()
    }

    /// Redis confirmed these invalidations (and the purge, if `purged`), sent after `sent`
    /// was taken: a key queued again since stays, and so does an overflow since.
    pub(crate) fn confirm<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
        sent: Mark,
        purged: bool,
    ) {
        let mut guard = self.items();
        let queue = &mut *guard;
        let purged = purged && queue.last_refused.is_none_or(|seq| seq < sent.0);
        let items = &mut queue.items;
        let before = items.len();
        for key in keys {
            if items.get(key).is_some_and(|(_, seq)| *seq < sent.0) {
                items.remove(key);
            }
        }
        if let Some(meters) = self.meters.get() {
            if items.len() != before {
                meters.invalidated(Invalidation::Replayed, before - items.len());
                meters.pending(items.len());
            }
        }
        if purged {
            self.overflowed.store(false, Ordering::Release);
        }
        if items.is_empty() && !self.overflowed() {
            self.any.store(false, Ordering::Release);
        }
        let progressed = purged || items.len() != before;
        drop(guard);
        // Only on progress: the confirmation of every successful invalidation comes here, and
        // almost always removes nothing.
        if progressed {
            self.progress.notify_waiters();
        }
    }

    /// Returns once nothing is pending (an overflow's purge included). It only watches: woken
    /// by each confirmation, it never polls, and dropping it leaves the queue as it was.
    pub(crate) async fn until_empty(&self) {
        loop {
            // Registered before the check, so that a confirmation between the two still wakes
            // it.
            let mut progress = std::pin::pin!(self.progress.notified());
            progress.as_mut().enable();
            if !self.any() {
                return;
            }
            progress.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_pending_until_confirmed() {
        let pending = PendingInvalidations::default();
        assert!(!pending.any());
        pending.push("a", None);
        pending.push("a", None);
        pending.push("b", None);
        assert_eq!(pending.len(), 2);
        let batch = pending.batch(10);
        assert_eq!(batch.len(), 2);
        assert!(pending.holds("a"), "a batch taken is not yet confirmed");
        pending.confirm(["a"], pending.mark(), false);
        assert!(!pending.holds("a") && pending.holds("b") && pending.any());
        pending.confirm(["b"], pending.mark(), false);
        assert!(!pending.any());
    }

    #[test]
    fn an_overflow_makes_every_key_pending_until_a_purge() {
        let pending = PendingInvalidations::default();
        for n in 0..=MAX_PENDING {
            pending.push(&n.to_string(), None);
        }
        assert!(pending.overflowed());
        assert!(pending.holds("never invalidated"));
        let keys: Vec<String> = pending
            .batch(usize::MAX)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        pending.confirm(keys.iter().map(String::as_str), pending.mark(), false);
        assert!(pending.any(), "still overflowed");
        pending.confirm([], pending.mark(), true);
        assert!(!pending.any() && !pending.holds("0"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn until_empty_is_woken_by_the_last_confirmation_and_leaves_the_queue_alone() {
        use std::time::Duration;
        let pending = Arc::new(PendingInvalidations::default());
        pending.until_empty().await;
        pending.push("a", None);
        pending.push("b", None);
        let wait = |pending: &Arc<PendingInvalidations>| {
            let pending = Arc::clone(pending);
            tokio::spawn(async move { pending.until_empty().await })
        };
        // Dropped mid-wait: the queue is as it was.
        let dropped = tokio::time::timeout(Duration::from_millis(20), pending.until_empty());
        assert!(dropped.await.is_err());
        assert_eq!(pending.len(), 2);
        let waiting = wait(&pending);
        pending.confirm(["a"], pending.mark(), false);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "b is still pending");
        pending.confirm(["b"], pending.mark(), false);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the confirmation")
            .expect("no panic");

        // An overflowed queue is empty only once purged.
        for n in 0..=MAX_PENDING {
            pending.push(&n.to_string(), None);
        }
        let waiting = wait(&pending);
        let keys: Vec<String> = pending
            .batch(usize::MAX)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        pending.confirm(keys.iter().map(String::as_str), pending.mark(), false);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the purge is still due");
        pending.confirm([], pending.mark(), true);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the purge")
            .expect("no panic");
    }

    /// A replay (or a call's own invalidation) confirms what was queued before it was sent,
    /// not a later failed invalidation of the same key queued while its reply was awaited: that
    /// one may be of a mutation after the replayed delete ran, and it was never sent.
    #[test]
    fn a_key_queued_again_while_its_replay_is_in_flight_stays_pending() {
        let pending = PendingInvalidations::default();
        pending.push("a", None);
        let sent = pending.mark();
        let batch = pending.batch(10);
        pending.push("a", None);
        pending.confirm(batch.iter().map(|(key, _)| key.as_str()), sent, false);
        assert!(pending.holds("a"), "the later invalidation of a was lost");
        assert!(pending.any());
    }

    /// Keys refused by a queue that overflows again while the purge runs are not covered by
    /// it: the purge's scan may have passed them.
    #[test]
    fn an_overflow_during_the_purge_outlives_it() {
        let pending = PendingInvalidations::default();
        for n in 0..=MAX_PENDING {
            pending.push(&n.to_string(), None);
        }
        let keys: Vec<String> = pending
            .batch(usize::MAX)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        pending.confirm(keys.iter().map(String::as_str), pending.mark(), false);
        // The purge starts (overflowed, queue empty); the queue overflows again meanwhile.
        assert!(pending.overflowed() && pending.batch(1).is_empty());
        let sent = pending.mark();
        for n in 0..=MAX_PENDING {
            pending.push(&format!("late{n}"), None);
        }
        pending.confirm([], sent, true);
        assert!(
            pending.overflowed(),
            "a key refused during the purge is no longer pending"
        );
    }

    #[test]
    fn one_replayer_at_a_time() {
        let pending = PendingInvalidations::default();
        let first = pending.start_replay().expect("free");
        assert!(pending.start_replay().is_none());
        drop(first);
        assert!(pending.start_replay().is_some());
    }
}
