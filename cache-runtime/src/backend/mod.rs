//! Backends: where values are stored, with the single-flight layer every backend shares.

mod breaker;
mod bus;
mod memory;
mod pending;
mod redis;
mod redis_blocking;
mod redis_keys;
mod redis_lock;
mod redis_store;
mod redis_wake;
/// Reproductions of the review of issue 11's change.
#[cfg(test)]
mod review_findings;
/// The same real-redis-server helper the integration tests use.
#[cfg(test)]
#[allow(dead_code)] // not every helper method is used here
#[path = "../../../tests/support/redis_server.rs"]
pub(crate) mod test_redis_server;
mod tiered;

use std::fmt;
use std::sync::Arc;

pub use memory::{MemoryBackend, MemoryBackendBuilder};
pub use redis::{RedisBackend, RedisBackendBuilder};
pub use tiered::{TieredBackend, TieredBackendBuilder};

pub(crate) use redis_lock::{HeldLock, LEASE};
pub(crate) use redis_store::Claim;
pub(crate) use redis_wake::{Waiting, SAFETY_POLL};

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
}

/// The stores a backend can be. Dispatch stays static, so a memory hit pays no boxing or
/// virtual call.
pub(crate) enum Store {
    Memory(MemoryBackend),
    Redis(RedisBackend),
    Tiered(TieredBackend),
}

/// What the remote call path works with: the Redis store, and for a tiered backend its L1.
pub(crate) struct Remote<'a> {
    pub(crate) l2: &'a RedisBackend,
    pub(crate) l1: Option<&'a TieredBackend>,
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
            }),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    /// The remote parts of a Redis or tiered backend; `None` for an in-process one. Starts a
    /// tiered backend's bus subscriber on first use.
    pub(crate) fn remote(&self) -> Option<Remote<'_>> {
        match &self.inner.store {
            Store::Redis(redis) => Some(Remote {
                l2: redis,
                l1: None,
            }),
            Store::Tiered(tiered) => {
                self.start_bus(tiered);
                Some(Remote {
                    l2: &tiered.l2,
                    l1: Some(tiered),
                })
            }
            Store::Memory(_) => None,
        }
    }

    /// Spawns the bus subscriber once, on the Tokio runtime of the first call. Without a Tokio
    /// runtime there is no subscriber, so L1 stays unused and calls are served from L2.
    fn start_bus(&self, tiered: &TieredBackend) {
        if !tiered.bus.claim_start() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                backend = %self.inner.name,
                "a tiered backend needs a Tokio runtime for its invalidation bus; serving from \
                 redis only"
            );
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let bus = Arc::clone(&tiered.bus);
        let client = tiered.l2.store.client().clone();
        let timing = tiered.timing;
        let l1 = tiered.l1.clone();
        runtime.spawn(async move {
            let invalidate = |key: &str| match weak.upgrade() {
                Some(inner) => {
                    // Flight first: a load under way must not store what it read before.
                    inner.flights.invalidate(key);
                    l1.invalidate(key);
                    true
                }
                None => false,
            };
            bus.run(client, timing, invalidate, || l1.invalidate_all())
                .await;
        });
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
            Store::Redis(_) | Store::Tiered(_) => None,
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
                    Store::Redis(_) | Store::Tiered(_) => {}
                });
            }
            Produced::Absent => guard.complete(Outcome::Absent, || {}),
            Produced::Failed => guard.complete(Outcome::Failed, || {}),
        }
    }

    /// Whether this backend's store is reached over the network.
    pub(crate) fn is_remote(&self) -> bool {
        !matches!(self.inner.store, Store::Memory(_))
    }

    /// Removes `keys`; a remote store's failure is logged, and the invalidations are replayed
    /// once Redis answers. Once one fails, the others of the call are queued without being
    /// tried, so a call costs at most one operation timeout.
    pub(crate) async fn invalidate(&self, keys: &[CacheKey]) {
        for key in keys {
            self.inner.flights.invalidate(key.as_str());
        }
        match &self.inner.store {
            Store::Memory(memory) => keys.iter().for_each(|key| memory.invalidate(key.as_str())),
            Store::Redis(redis) => {
                let mut reachable = true;
                for key in keys {
                    let key = key.as_str();
                    if !reachable {
                        redis.store().keep_for_replay(key, None);
                    } else if let Err(error) = redis.store().invalidate(key, None).await {
                        log_failed_invalidation(&self.inner.name, key, &error);
                        reachable = false;
                    }
                }
            }
            Store::Tiered(tiered) => {
                let mut reachable = true;
                for key in keys {
                    let key = key.as_str();
                    let (channel, message) = tiered.bus.announcement(key);
                    let announce = Some((channel.as_str(), message.as_str()));
                    if !reachable {
                        tiered.l2.store().keep_for_replay(key, announce);
                    } else if let Err(error) = tiered.l2.store().invalidate(key, announce).await {
                        log_failed_invalidation(&self.inner.name, key, &error);
                        reachable = false;
                    }
                    self.invalidate_l1(tiered, key);
                }
            }
        }
    }

    /// Drops `key` from this process's L1, after L2: a load that read L2 before the deletion is
    /// caught by its stale flight or removed here, and one that reads after sees the deletion.
    fn invalidate_l1(&self, tiered: &TieredBackend, key: &str) {
        self.inner.flights.invalidate(key);
        tiered.l1.invalidate(key);
    }

    /// [`invalidate`](Self::invalidate) without awaiting, for synchronous `#[invalidates]`
    /// functions: a remote store is reached over a blocking connection, bounded by the store's
    /// operation timeout.
    pub(crate) fn invalidate_blocking(&self, keys: &[CacheKey]) {
        for key in keys {
            self.inner.flights.invalidate(key.as_str());
        }
        match &self.inner.store {
            Store::Memory(memory) => keys.iter().for_each(|key| memory.invalidate(key.as_str())),
            Store::Redis(redis) => {
                let mut reachable = true;
                for key in keys {
                    let key = key.as_str();
                    if !reachable {
                        redis.store().keep_for_replay(key, None);
                    } else if let Err(error) = redis.store().invalidate_blocking(key, None) {
                        log_failed_invalidation(&self.inner.name, key, &error);
                        reachable = false;
                    }
                }
            }
            Store::Tiered(tiered) => {
                let mut reachable = true;
                for key in keys {
                    let key = key.as_str();
                    let (channel, message) = tiered.bus.announcement(key);
                    let announce = Some((channel.as_str(), message.as_str()));
                    if !reachable {
                        tiered.l2.store().keep_for_replay(key, announce);
                    } else if let Err(error) = tiered.l2.store().invalidate_blocking(key, announce)
                    {
                        log_failed_invalidation(&self.inner.name, key, &error);
                        reachable = false;
                    }
                    self.invalidate_l1(tiered, key);
                }
            }
        }
    }
}

fn log_failed_invalidation(backend: &str, key: &str, error: &redis_store::StoreError) {
    static GATE: crate::log_gate::LogGate = crate::log_gate::LogGate::new();
    if let Some(suppressed) = GATE.admit() {
        tracing::error!(
            backend,
            key,
            %error,
            suppressed,
            "invalidation did not reach redis; it is replayed before the next read that \
             reaches redis"
        );
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

pub(crate) fn downcast<V: 'static + Clone>(site: &Site, key: &str, any: &AnyValue) -> Option<V> {
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
