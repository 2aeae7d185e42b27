//! Backends: where values are stored, with the single-flight layer every backend shares.

mod breaker;
mod memory;
mod redis;
mod redis_keys;
mod redis_store;
/// The same real-redis-server helper the integration tests use.
#[cfg(test)]
#[allow(dead_code)] // not every helper method is used here
#[path = "../../../tests/support/redis_server.rs"]
mod test_redis_server;

use std::fmt;
use std::sync::Arc;

pub use memory::{MemoryBackend, MemoryBackendBuilder, Weigher};
pub use redis::{RedisBackend, RedisBackendBuilder};

use crate::flight::{Flights, Outcome, Role};
use crate::key::CacheKey;
use crate::shape::{AnyValue, Produced, ReturnShape};
use crate::site::Site;

/// A configured backend: its store and the flights under way in it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Backend {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    store: Store,
    flights: Flights,
    warned_sync_invalidation: std::sync::atomic::AtomicBool,
}

/// The stores a backend can be. The Redis and tiered stores join this enum: dispatch stays
/// static, so a memory hit pays no boxing or virtual call.
pub(crate) enum Store {
    Memory(MemoryBackend),
    Redis(RedisBackend),
}

/// What a caller does next after looking at the cache.
pub(crate) enum Step<'a, V> {
    Hit(V),
    Lead(crate::flight::LeaderGuard<'a>),
    Follow(Arc<crate::flight::Flight>),
}

/// What a follower does next with its leader's outcome.
pub(crate) enum Next<R> {
    /// Return this.
    Return(R),
    /// Run the body itself, uncached (the leader failed, or stored another type).
    RunUncached,
    /// Look again; one of the followers leads the next flight.
    Retry,
}

impl Backend {
    pub(crate) fn new(name: String, store: Store) -> Self {
        Backend {
            inner: Arc::new(Inner {
                name,
                store,
                flights: Flights::new(),
                warned_sync_invalidation: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    pub(crate) fn redis(&self) -> Option<&RedisBackend> {
        match &self.inner.store {
            Store::Redis(redis) => Some(redis),
            Store::Memory(_) => None,
        }
    }

    /// Reads the key; on a miss, joins or leads its flight.
    pub(crate) fn step<V: 'static + Clone>(&self, site: &Site, key: &CacheKey) -> Step<'_, V> {
        if let Some(value) = self.lookup(site, key.as_str()) {
            return Step::Hit(value);
        }
        match self.inner.flights.join(key) {
            Role::Leader(guard) => {
                // Another leader may have filled the key between our read and our join.
                if let Some(value) = self.lookup(site, key.as_str()) {
                    guard.complete(Outcome::Abandoned, || {});
                    return Step::Hit(value);
                }
                Step::Lead(guard)
            }
            Role::Follower(flight) => Step::Follow(flight),
        }
    }

    fn lookup<V: 'static + Clone>(&self, site: &Site, key: &str) -> Option<V> {
        match &self.inner.store {
            // Downcast and clone under the store's read lock: a hit moves no reference count.
            Store::Memory(memory) => memory.read(key, |any| downcast::<V>(site, key, any)),
            // Read through the remote call path, which decodes envelopes.
            Store::Redis(_) => None,
        }
    }

    /// Classifies the leader's return value, and stores it unless the flight went stale.
    pub(crate) fn complete<R, S: ReturnShape<R>>(
        &self,
        site: &Site,
        shape: S,
        key: CacheKey,
        guard: crate::flight::LeaderGuard<'_>,
        ret: &R,
    ) {
        match shape.produced(ret) {
            Produced::Value(value) => {
                let value: AnyValue = Arc::new(value.clone());
                let shared = Arc::clone(&value);
                guard.complete(Outcome::Value(shared), || match &self.inner.store {
                    Store::Memory(memory) => memory.insert(key, value, site.ttl),
                    // Filled through the remote call path, which encodes envelopes.
                    Store::Redis(_) => {}
                });
            }
            Produced::Absent => guard.complete(Outcome::Absent, || {}),
            Produced::Failed => guard.complete(Outcome::Failed, || {}),
        }
    }

    /// Removes `key`; a remote store's failure is logged (the entry may then live until its
    /// TTL, which the log says).
    pub(crate) async fn invalidate(&self, key: &str) {
        self.inner.flights.invalidate(key);
        match &self.inner.store {
            Store::Memory(memory) => memory.invalidate(key),
            Store::Redis(redis) => {
                if let Err(error) = redis.store.invalidate(key).await {
                    tracing::error!(
                        backend = %self.inner.name,
                        key,
                        %error,
                        "invalidation did not reach redis; the entry lives until its ttl"
                    );
                }
            }
        }
    }

    /// Removes `key` without awaiting: in-process stores only. A remote store cannot be reached
    /// from a synchronous function, which is reported once per backend.
    pub(crate) fn invalidate_blocking(&self, key: &str) {
        self.inner.flights.invalidate(key);
        match &self.inner.store {
            Store::Memory(memory) => memory.invalidate(key),
            Store::Redis(_) => {
                if !self
                    .inner
                    .warned_sync_invalidation
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::error!(
                        backend = %self.inner.name,
                        "a synchronous `#[invalidates]` function cannot reach a redis backend; \
                         make it `async fn` (entries there live until their ttl)"
                    );
                }
            }
        }
    }
}

/// Interprets a leader's outcome for one follower.
pub(crate) fn follow<R, S: ReturnShape<R>>(
    site: &Site,
    shape: S,
    key: &str,
    outcome: Outcome,
) -> Next<R> {
    match outcome {
        Outcome::Value(any) => match downcast::<S::Value>(site, key, &any) {
            Some(value) => Next::Return(shape.rebuild(value)),
            None => Next::RunUncached,
        },
        Outcome::Absent => shape.absent().map_or(Next::Retry, Next::Return),
        Outcome::Failed => Next::RunUncached,
        Outcome::Abandoned => Next::Retry,
    }
}

fn downcast<V: 'static + Clone>(site: &Site, key: &str, any: &AnyValue) -> Option<V> {
    match any.downcast_ref::<V>() {
        Some(value) => Some(value.clone()),
        None => {
            site.warn_type_mismatch(key, std::any::type_name::<V>());
            None
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.inner.name)
            .finish()
    }
}
