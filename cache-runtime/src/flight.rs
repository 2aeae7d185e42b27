//! Single-flight: at most one load per key at a time in this process, whatever the caller count.
//!
//! The first caller of a cold key becomes the leader and runs the body; later callers follow,
//! waiting for the leader's [`Outcome`]. A leader that is dropped (its caller cancelled) or that
//! panics completes its flight as [`Outcome::Abandoned`] from its guard's `Drop`, so followers
//! never hang: they retry, and one of them leads the next flight.
//!
//! Invalidation detaches the key's flight and marks it stale, so that (a) its result is not
//! stored, since it may have been read before the invalidation, and (b) callers arriving after
//! the invalidation start a new flight instead of receiving that result.

use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use event_listener::{Event, Listener};

use crate::key::CacheKey;
use crate::shape::AnyValue;

/// How a flight ended, as its followers see it.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// A value to return.
    Value(AnyValue),
    /// A value the leader found in the store without loading (an L2 hit): followers count it
    /// as the hit it is, not as a wait for a load.
    Found(AnyValue),
    /// A value past its ttl, served because its load failed or ran past the soft timeout
    /// (fail-safe): followers return it, counted as stale.
    Stale(AnyValue),
    /// The body produced nothing to cache, and followers can answer without it (`None`).
    Absent,
    /// The body produced nothing to share (`Err`): each follower runs the body itself.
    Failed,
    /// The leader was cancelled or panicked: followers retry, and one leads.
    Abandoned,
}

type Shard = Mutex<HashMap<CacheKey, Arc<Flight>>>;

/// The flights under way in one backend.
pub(crate) struct Flights {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

/// One load under way.
pub(crate) struct Flight {
    outcome: Mutex<Option<Outcome>>,
    done: Event,
    stale: AtomicBool,
}

/// The caller's part in a flight.
pub(crate) enum Role<'a> {
    Leader(LeaderGuard<'a>),
    Follower(Arc<Flight>),
}

const SHARDS: usize = 32;

impl Flights {
    pub(crate) fn new() -> Self {
        Flights {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<CacheKey, Arc<Flight>>> {
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        // A panic while the lock is held cannot leave the map inconsistent (every critical
        // section is a single insert or remove), so a poisoned lock is still usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the key's flight, or starts one and leads it.
    pub(crate) fn join(&self, key: &CacheKey) -> Role<'_> {
        match self.shard(key.as_str()).entry(key.clone()) {
            Entry::Occupied(entry) => Role::Follower(Arc::clone(entry.get())),
            Entry::Vacant(entry) => {
                let flight = Arc::new(Flight {
                    outcome: Mutex::new(None),
                    done: Event::new(),
                    stale: AtomicBool::new(false),
                });
                entry.insert(Arc::clone(&flight));
                Role::Leader(LeaderGuard {
                    flights: self,
                    key: key.clone(),
                    flight,
                    completed: false,
                })
            }
        }
    }

    /// Detaches the key's flight, if any, so that its result is neither stored nor given to
    /// callers that arrive from now on.
    pub(crate) fn invalidate(&self, key: &str) {
        if let Some(flight) = self.shard(key).remove(key) {
            flight.stale.store(true, Ordering::Release);
        }
    }
}

impl Flight {
    fn outcome(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for the leader's outcome.
    pub(crate) async fn wait(&self) -> Outcome {
        loop {
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            // Registered before the second check, so a completion in between is not missed.
            let listener = self.done.listen();
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            listener.await;
        }
    }

    /// Waits for the leader's outcome, blocking the thread (for synchronous functions).
    pub(crate) fn wait_blocking(&self) -> Outcome {
        loop {
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            let listener = self.done.listen();
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            listener.wait();
        }
    }
}

/// Held by the leader while it loads; completing or dropping it ends the flight.
pub(crate) struct LeaderGuard<'a> {
    flights: &'a Flights,
    key: CacheKey,
    flight: Arc<Flight>,
    completed: bool,
}

impl LeaderGuard<'_> {
    /// Ends the flight with `outcome`. `store` runs first, unless the flight went stale, under
    /// the same lock that an invalidation takes, so that an invalidation either marks the flight
    /// stale before the store (which is then skipped) or removes the stored entry after it.
    pub(crate) fn complete(mut self, outcome: Outcome, store: impl FnOnce()) {
        self.finish(|_| outcome, store);
    }

    /// [`complete`](Self::complete), the outcome chosen under that lock by whether the flight
    /// is still current (`true`) or was detached by an invalidation; says which. For an
    /// outcome that must not outlive an invalidation (a stale value served by fail-safe).
    pub(crate) fn complete_if_current(
        mut self,
        current: Outcome,
        detached: Outcome,
        store: impl FnOnce(),
    ) -> bool {
        self.finish(
            |is_current| if is_current { current } else { detached },
            store,
        )
    }

    fn finish(&mut self, outcome: impl FnOnce(bool) -> Outcome, store: impl FnOnce()) -> bool {
        let current;
        {
            let mut shard = self.flights.shard(self.key.as_str());
            current = !self.flight.stale.load(Ordering::Acquire);
            if current {
                // Should `store` panic (a user weigher, the store itself), the flight is not
                // completed yet: the guard's `Drop` then abandons it, which wakes the followers
                // and lets one of them lead, instead of leaving them waiting forever.
                store();
            }
            self.completed = true;
            if let Entry::Occupied(entry) = shard.entry(self.key.clone()) {
                if Arc::ptr_eq(entry.get(), &self.flight) {
                    entry.remove();
                }
            }
        }
        *self
            .flight
            .outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(outcome(current));
        self.flight.done.notify(usize::MAX);
        current
    }
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if !self.completed {
            self.finish(|_| Outcome::Abandoned, || {});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_empty(flights: &Flights) -> bool {
        flights.shards.iter().all(|shard| {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        })
    }

    fn key(text: &str) -> CacheKey {
        crate::KeyBuilder::new().lit(text).finish()
    }

    #[test]
    fn second_caller_follows_and_sees_the_outcome() {
        let flights = Flights::new();
        let Role::Leader(leader) = flights.join(&key("k")) else {
            panic!("first caller must lead")
        };
        let Role::Follower(flight) = flights.join(&key("k")) else {
            panic!("second caller must follow")
        };
        let mut stored = false;
        leader.complete(Outcome::Absent, || stored = true);
        assert!(stored);
        assert!(matches!(flight.wait_blocking(), Outcome::Absent));
        assert!(is_empty(&flights));
    }

    #[test]
    fn dropped_leader_abandons_its_flight() {
        let flights = Flights::new();
        let Role::Leader(leader) = flights.join(&key("k")) else {
            panic!("first caller must lead")
        };
        let Role::Follower(flight) = flights.join(&key("k")) else {
            panic!("second caller must follow")
        };
        drop(leader);
        assert!(matches!(flight.wait_blocking(), Outcome::Abandoned));
        assert!(is_empty(&flights));
    }

    #[test]
    fn a_panicking_store_abandons_the_flight() {
        let flights = Flights::new();
        let Role::Leader(leader) = flights.join(&key("k")) else {
            panic!("first caller must lead")
        };
        let Role::Follower(flight) = flights.join(&key("k")) else {
            panic!("second caller must follow")
        };
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            leader.complete(Outcome::Absent, || panic!("the store panics"));
        }));
        assert!(panicked.is_err());
        assert!(matches!(flight.wait_blocking(), Outcome::Abandoned));
        assert!(is_empty(&flights), "the next caller leads a new flight");
    }

    #[test]
    fn invalidation_skips_the_store_and_detaches_the_flight() {
        let flights = Flights::new();
        let Role::Leader(leader) = flights.join(&key("k")) else {
            panic!("first caller must lead")
        };
        flights.invalidate("k");
        let Role::Leader(next) = flights.join(&key("k")) else {
            panic!("a caller after the invalidation must start a new flight")
        };
        let mut stored = false;
        leader.complete(Outcome::Absent, || stored = true);
        assert!(
            !stored,
            "a flight that began before an invalidation must not store"
        );
        next.complete(Outcome::Absent, || stored = true);
        assert!(stored);
        assert!(is_empty(&flights));
    }
}
