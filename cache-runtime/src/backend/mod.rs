//! Backends: where values are stored. One folder per kind (`memory/`, `redis/`, `tiered/`), and
//! here the handle the registry holds: a named store and the flights under way in it.
//!
//! Storage takes plain values (a key, a value, a ttl); what a call does with them (look up,
//! lead or follow, store what the shape says) is `crate::call`'s, one layer up.

mod memory;
mod redis;
mod refresh_ledger;
mod tags;
/// The same real-redis-server helper the integration tests use.
#[cfg(test)]
#[allow(dead_code)] // not every helper method is used here
#[path = "../../../tests/support/redis_server.rs"]
pub(crate) mod test_redis_server;
mod tiered;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use memory::{HashedHit, Stored};
pub use memory::{MemoryBackend, MemoryBackendBuilder};
pub use redis::{RedisBackend, RedisBackendBuilder};
pub use tiered::{TieredBackend, TieredBackendBuilder};

pub use redis::BreakerState;
#[cfg(feature = "tls")]
pub(crate) use redis::{check_certificates, check_private_key};
pub(crate) use redis::{
    drain, valid_prefix, Claim, HeldLock, RedisHealth, Waiting, LEASE, SAFETY_POLL,
};
pub(crate) use tags::{note_tag_invalidation, tag_invalidations};

use crate::clock::Clock;
use crate::flight::Flights;
use crate::key::CacheKey;
use crate::observe::meters::{BackendMeters, StoreMeters};
use crate::observe::{Invalidation, Tier};
use refresh_ledger::RefreshLedger;

/// A configured backend: its store and the flights under way in it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Backend {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    store: Store,
    flights: Flights,
    /// Which keys may start a refresh-ahead in this process (`call/refresh.rs`).
    refreshes: RefreshLedger,
    meters: Arc<BackendMeters>,
}

/// The stores a backend can be. Dispatch stays static, so a memory hit pays no boxing or
/// virtual call.
pub(crate) enum Store {
    Memory(MemoryBackend),
    Redis(RedisBackend),
    Tiered(TieredBackend),
}

impl Store {
    fn tiers(&self) -> &'static [Tier] {
        match self {
            Store::Memory(_) => &[Tier::Memory],
            Store::Redis(_) => &[Tier::L2],
            Store::Tiered(_) => &[Tier::L1, Tier::L2],
        }
    }
}

impl Backend {
    /// The backend `name`, registering its metric handles and giving them to its store.
    pub(crate) fn new(name: String, store: Store) -> Self {
        let meters = Arc::new(BackendMeters::new(&name, store.tiers()));
        match &store {
            Store::Memory(memory) => memory.attach_meters(StoreMeters::new(&name, Tier::Memory)),
            Store::Redis(redis) => redis.attach_meters(Arc::clone(&meters)),
            Store::Tiered(tiered) => {
                tiered.attach_meters(Arc::clone(&meters), StoreMeters::new(&name, Tier::L1));
            }
        }
        Backend {
            inner: Arc::new(Inner {
                name,
                store,
                flights: Flights::new(),
                refreshes: RefreshLedger::default(),
                meters,
            }),
        }
    }

    /// The store's kind, as configuration names it.
    pub(crate) fn kind(&self) -> &'static str {
        match &self.inner.store {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
            Store::Tiered(_) => "tiered",
        }
    }

    /// The health of the store's Redis, if it has one: its breaker, last error and pending
    /// invalidations; and for a tiered store, whether its bus is subscribed.
    pub(crate) fn redis_health(&self) -> Option<(RedisHealth, Option<bool>)> {
        let (redis, bus) = match &self.inner.store {
            Store::Memory(_) => return None,
            Store::Redis(redis) => (redis, None),
            Store::Tiered(tiered) => (tiered.l2(), Some(tiered.bus_connected())),
        };
        Some((redis.store().health(), bus))
    }

    /// The Redis backend of a redis or tiered store (its L2), whose pending queue a drain
    /// waits for; `None` for an in-process store.
    pub(crate) fn redis(&self) -> Option<&RedisBackend> {
        match &self.inner.store {
            Store::Memory(_) => None,
            Store::Redis(redis) => Some(redis),
            Store::Tiered(tiered) => Some(tiered.l2()),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    /// Which keys of this backend may start a refresh-ahead in this process.
    pub(crate) fn refreshes(&self) -> &RefreshLedger {
        &self.inner.refreshes
    }

    /// The in-process store of a memory backend; `None` for a remote one.
    #[inline]
    pub(crate) fn memory(&self) -> Option<&MemoryBackend> {
        match &self.inner.store {
            Store::Memory(memory) => Some(memory),
            Store::Redis(_) | Store::Tiered(_) => None,
        }
    }

    /// The tiered backend, without starting its bus: for the L1 hit, which a bus that is not
    /// subscribed (never started included) turns away anyway (`TieredBackend::l1_epoch`), and
    /// which then takes the full path, where [`remote`](Self::remote) starts it.
    #[inline]
    pub(crate) fn tiered(&self) -> Option<&TieredBackend> {
        match &self.inner.store {
            Store::Tiered(tiered) => Some(tiered),
            Store::Memory(_) | Store::Redis(_) => None,
        }
    }

    /// What the remote call path works with: the Redis backend and, for a tiered backend, the
    /// tiered backend whose L1 is in front of it; `None` for an in-process backend. Starts a
    /// tiered backend's bus subscriber on first use.
    pub(crate) fn remote(&self) -> Option<(&RedisBackend, Option<&TieredBackend>)> {
        match &self.inner.store {
            Store::Redis(redis) => Some((redis, None)),
            Store::Tiered(tiered) => {
                // A message invalidates a load under way first, so that it does not store what
                // it read before; false once the backend is gone (the subscriber then ends).
                tiered.start_bus(&self.inner.name, || {
                    let inner = Arc::downgrade(&self.inner);
                    move |key: &str| match inner.upgrade() {
                        Some(inner) => {
                            inner.flights.invalidate(key);
                            true
                        }
                        None => false,
                    }
                });
                Some((tiered.l2(), Some(tiered)))
            }
            Store::Memory(_) => None,
        }
    }

    /// The clock the store's entries live by (a tiered store's is its L2's).
    pub(crate) fn clock(&self) -> &Clock {
        match &self.inner.store {
            Store::Memory(memory) => memory.clock(),
            Store::Redis(redis) => redis.clock(),
            Store::Tiered(tiered) => tiered.l2().clock(),
        }
    }

    /// The tiers a call on this backend can be answered from.
    pub(crate) fn tiers(&self) -> &'static [Tier] {
        self.inner.store.tiers()
    }

    /// Where this backend keeps its entries, for the start-up log line.
    pub(crate) fn mode(&self) -> String {
        match &self.inner.store {
            Store::Memory(_) => "in process".to_owned(),
            Store::Redis(redis) => format!("redis at {}", redis.location()),
            Store::Tiered(tiered) => {
                format!("L1 in process, L2 redis at {}", tiered.l2().location())
            }
        }
    }

    /// Whether this backend's store is reached over the network.
    pub(crate) fn is_remote(&self) -> bool {
        self.memory().is_none()
    }

    /// Removes `keys`, and detaches their loads under way so that these store nothing. A
    /// remote store's failure is logged, and the invalidations are replayed once Redis answers.
    pub(crate) async fn invalidate(&self, keys: &[CacheKey]) {
        self.detach_flights(keys);
        self.inner
            .meters
            .invalidated(Invalidation::Sent, keys.len());
        match &self.inner.store {
            Store::Memory(memory) => keys.iter().for_each(|key| memory.invalidate(key.as_str())),
            Store::Redis(redis) => redis.invalidate(&self.inner.name, keys).await,
            // Again after L2, before L1 (see `TieredBackend::invalidate`): a load that read L2
            // before the deletion may have begun after the first detach.
            Store::Tiered(tiered) => {
                let detach = |key: &str| self.inner.flights.invalidate(key);
                tiered.invalidate(&self.inner.name, keys, detach).await;
            }
        }
    }

    /// [`invalidate`](Self::invalidate) without awaiting, for synchronous `#[invalidates]`
    /// functions: a remote store is reached over a blocking connection, bounded by the store's
    /// operation timeout.
    pub(crate) fn invalidate_blocking(&self, keys: &[CacheKey]) {
        self.detach_flights(keys);
        self.inner
            .meters
            .invalidated(Invalidation::Sent, keys.len());
        match &self.inner.store {
            Store::Memory(memory) => keys.iter().for_each(|key| memory.invalidate(key.as_str())),
            Store::Redis(redis) => redis.invalidate_blocking(&self.inner.name, keys),
            Store::Tiered(tiered) => {
                let detach = |key: &str| self.inner.flights.invalidate(key);
                tiered.invalidate_blocking(&self.inner.name, keys, detach);
            }
        }
    }

    /// Invalidates `tags`: every entry carrying one becomes a miss, in O(1) per tag. Counted in
    /// the invalidations sent, like keys.
    pub(crate) async fn invalidate_tags(&self, tags: &[CacheKey]) {
        self.inner
            .meters
            .invalidated(Invalidation::Sent, tags.len());
        match &self.inner.store {
            Store::Memory(memory) => {
                for tag in tags {
                    memory.tags().forget(tag.as_str());
                }
            }
            Store::Redis(redis) => {
                redis
                    .invalidate_tags_announced(&self.inner.name, tags, |_| None::<(String, String)>)
                    .await;
            }
            Store::Tiered(tiered) => tiered.invalidate_tags(&self.inner.name, tags).await,
        }
        // After the generations are gone: see `tags::TAG_INVALIDATIONS`.
        note_tag_invalidation();
    }

    /// For encoding a value this remote store will hold: its envelope key hash, and now on its
    /// clock (Unix ms). `None` for an in-process store.
    pub(crate) fn remote_entry_hash(&self) -> Option<(impl Fn(&str) -> u64 + '_, u64)> {
        let redis = match &self.inner.store {
            Store::Memory(_) => return None,
            Store::Redis(redis) => redis,
            Store::Tiered(tiered) => tiered.l2(),
        };
        Some((|key: &str| redis.entry_hash(key), redis.now_ms()))
    }

    /// Write-through on a memory backend: detaches the key's load under way (its older value is
    /// then not stored), then stores `value`. False if the store is not in process.
    pub(crate) fn put_in_process(&self, key: CacheKey, value: Stored, ttl: Duration) -> bool {
        let Store::Memory(memory) = &self.inner.store else {
            return false;
        };
        self.inner.flights.invalidate(key.as_str());
        memory.insert(key, value, ttl);
        true
    }

    /// Write-through on a remote backend: `bytes` (an envelope) stored under `key` in one
    /// script that also fences off older fills and, for a tiered store, announces it on the bus
    /// so that peers drop their L1 copy; then this process's load under way is detached and its
    /// L1 copy dropped (the next read fills L1 from L2, through a flight). If Redis is not
    /// reached, the key's invalidation is queued for replay instead.
    pub(crate) async fn put_remote(&self, key: &CacheKey, bytes: &[u8], ttl: Duration) {
        self.detach_flights(std::slice::from_ref(key));
        let result = match &self.inner.store {
            Store::Memory(_) => return,
            Store::Redis(redis) => redis.store().put(key.as_str(), bytes, ttl, None).await,
            Store::Tiered(tiered) => tiered.put(key, bytes, ttl).await,
        };
        if let Err(error) = result {
            redis::log_failed_put(&self.inner.name, key.as_str(), &error);
        }
        if let Store::Tiered(tiered) = &self.inner.store {
            let detach = |key: &str| self.inner.flights.invalidate(key);
            tiered.drop_local(key, detach);
        }
    }

    fn detach_flights(&self, keys: &[CacheKey]) {
        for key in keys {
            self.inner.flights.invalidate(key.as_str());
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
