//! The in-process backend: typed values, no serialisation, in one bounded store that is both the
//! read path and the eviction policy (a table and a clock in shards of our own, `store.rs`; why:
//! ARCHITECTURE.md, "The memory hit at the floor").

mod engine;
mod slot;

pub(crate) use slot::HashedHit;
mod store;
mod stored;
mod striped;

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::clock::{Clock, Moment, TestClock};
use crate::key::canonical::AsHitKey;
use crate::key::CacheKey;
use crate::observe::meters::StoreMeters;
use crate::observe::Eviction;
use crate::shape::Downcast;

use super::tags::TagTable;
use slot::{Mark, Probe, Slot, SlotKey};
use store::{Bound, Store};
pub(crate) use stored::Stored;

/// Weighs one entry for a byte bound: the key's text and the value, type-erased.
type Weigher = Arc<dyn Fn(&str, &(dyn Any + Send + Sync)) -> u32 + Send + Sync>;

/// An in-process cache backend, holding values as they are, without serialisation.
///
/// ```
/// use cache_runtime::MemoryBackend;
///
/// let small = MemoryBackend::builder().max_entries(1_000).build();
/// assert_eq!(small.entry_count(), 0);
/// ```
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

struct Shared {
    /// What is held: bound, policy, expiry on read.
    store: Store,
    /// The clock expiry is checked against (a tiered backend's L1 runs on its L2's).
    clock: Clock,
    /// Weighs entries, for the byte bound and the size gauges.
    weigher: Weigher,
    /// What the store holds, as its gauges say, kept by inserts and removals.
    tally: Tally,
    /// How it was built, to build it again on another clock.
    settings: MemoryBackendBuilder,
    /// The current generation of each tag its entries carry (`backend/tags.rs`).
    tags: TagTable,
}

/// Entries and their summed weight, for the gauges, moved by every insert and every removal
/// (each cause, replacement included).
struct Tally {
    entries: AtomicI64,
    bytes: AtomicI64,
    /// The handles, once the backend is configured under a name.
    meters: OnceLock<StoreMeters>,
}

impl Tally {
    /// Moves the counts, and the gauges by the same amounts (not to the new totals: two
    /// threads' sets could land in the wrong order, and the gauge then stays wrong).
    fn add(&self, entries: i64, bytes: i64) {
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(meters) = self.meters.get() {
            meters.grow(entries, bytes);
        }
    }

    fn removed(&self, slot: &Slot, cause: Eviction) {
        self.add(-1, -i64::from(slot.weight));
        if let Some(meters) = self.meters.get() {
            meters.evicted(cause);
        }
    }
}

/// Configures a [`MemoryBackend`].
#[derive(Clone)]
pub struct MemoryBackendBuilder {
    capacity: Bound,
    weigher: Option<Weigher>,
    clock: Clock,
}

impl MemoryBackendBuilder {
    /// Bounds the cache by entry count (the default: 10,000 entries).
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.capacity = Bound::Entries(entries);
        self
    }

    /// Bounds the cache by the summed weight of its entries. Without [`weigher`](Self::weigher),
    /// an entry weighs its key's length plus the value's shallow size (`size_of_val`), which
    /// undercounts values that own heap data: give a weigher for those.
    ///
    /// The store is sharded, each shard bounded by its part of the total (shards of at least
    /// 64 KiB, so that a bound under 128 KiB is one shard): an entry heavier than its shard's
    /// part is not stored.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.capacity = Bound::Bytes(bytes);
        self
    }

    /// Sets how an entry is weighed for [`max_bytes`](Self::max_bytes); the value can be
    /// downcast to the cached type.
    pub fn weigher(
        mut self,
        weigher: impl Fn(&str, &(dyn Any + Send + Sync)) -> u32 + Send + Sync + 'static,
    ) -> Self {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// Checks expiry against a test's clock, to advance instead of sleeping.
    pub fn clock(mut self, clock: &TestClock) -> Self {
        self.clock = clock.clock();
        self
    }

    /// The backend.
    pub fn build(self) -> MemoryBackend {
        let weigher = self.weigher.clone().unwrap_or_else(|| {
            Arc::new(|key: &str, value: &(dyn Any + Send + Sync)| {
                let size = key.len() + std::mem::size_of_val(value);
                u32::try_from(size).unwrap_or(u32::MAX)
            })
        });
        MemoryBackend {
            shared: Arc::new(Shared {
                store: Store::new(self.capacity),
                clock: self.clock.clone(),
                weigher,
                tally: Tally {
                    entries: AtomicI64::new(0),
                    bytes: AtomicI64::new(0),
                    meters: OnceLock::new(),
                },
                settings: self,
                tags: TagTable::new(),
            }),
        }
    }
}

/// `at + ttl`, saturating (`coarsetime` counts in 32.32 fixed point, so a ttl of years fits).
fn after(at: Moment, ttl: Duration) -> Moment {
    let ttl = ttl.min(Duration::from_secs(u64::from(u32::MAX) / 2));
    at + coarsetime::Duration::from(ttl)
}

impl MemoryBackend {
    /// A builder; [`MemoryBackend::default()`] holds up to 10,000 entries.
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder {
            capacity: Bound::Entries(10_000),
            weigher: None,
            clock: Clock::Real,
        }
    }

    /// This backend, or if it runs on another clock than `clock`, an empty one built alike on
    /// `clock`.
    pub(crate) fn on_clock(self, clock: &Clock) -> MemoryBackend {
        if self.shared.clock.same_as(clock) {
            return self;
        }
        let mut settings = self.shared.settings.clone();
        settings.clock = clock.clone();
        settings.build()
    }

    /// The clock this backend checks expiry against.
    pub(crate) fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// How many entries the cache holds. Exact: an entry past its ttl counts until a read or
    /// [`run_pending_tasks`](Self::run_pending_tasks) removes it, or the bound evicts it.
    pub fn entry_count(&self) -> u64 {
        self.shared.store.len() as u64
    }

    /// Removes the entries past their ttl now (reads remove the ones they find; the others
    /// otherwise wait for the bound to evict them).
    pub fn run_pending_tasks(&self) {
        let now = self.shared.clock.moment();
        for slot in self.shared.store.remove_expired(now) {
            self.shared.tally.removed(&slot, Eviction::Expired);
        }
    }

    /// What `read` makes of the value under `key`; `read` runs under a shard's read lock, so it
    /// should only downcast and clone.
    #[inline]
    pub(crate) fn read<T>(
        &self,
        key: &CacheKey,
        read: impl FnOnce(&Stored) -> Option<T>,
    ) -> Option<T> {
        self.read_in_epoch(key, 0, read)
    }

    /// The store's own read, without a call site, key checks or single-flight: the floor that
    /// the benchmarks hold a cached call's hit against. Only with the `bench-internals` feature,
    /// which the workspace's own benchmarks enable; not an API.
    #[cfg(feature = "bench-internals")]
    #[doc(hidden)]
    pub fn peek<V: Clone + 'static>(&self, key: &CacheKey) -> Option<V> {
        self.read(key, |value| value.downcast_ref::<V>().cloned())
    }

    pub(crate) fn insert(&self, key: CacheKey, value: impl Into<Stored>, ttl: Duration) {
        self.insert_in_epoch(key, value, ttl, 0);
    }

    /// What `read` makes of the value under `key`, if it was stored in `epoch` (a tiered
    /// backend's L1 epoch; see `backend::tiered::bus`).
    #[inline]
    pub(crate) fn read_in_epoch<T>(
        &self,
        key: &CacheKey,
        epoch: u64,
        read: impl FnOnce(&Stored) -> Option<T>,
    ) -> Option<T> {
        self.read_due(key, epoch, read).map(|(value, _)| value)
    }

    /// [`read_in_epoch`](Self::read_in_epoch), and whether the entry is due for a
    /// refresh-ahead (stored with a `refresh_in` that has passed). A read that finds the entry
    /// past its ttl removes it.
    #[inline]
    pub(crate) fn read_due<T>(
        &self,
        key: &CacheKey,
        epoch: u64,
        read: impl FnOnce(&Stored) -> Option<T>,
    ) -> Option<(T, bool)> {
        self.read_probe(Probe::key(key), epoch, read)
    }

    /// [`read_due`](Self::read_due) by a hit key (`key::canonical`): `None` at once for one
    /// without a name (a `HitKey` whose form did not fit its register), which the caller then
    /// asks by its text.
    #[inline(always)]
    pub(crate) fn read_hit_due<T>(
        &self,
        key: &(impl AsHitKey + ?Sized),
        epoch: u64,
        read: impl FnOnce(&Stored) -> Option<T>,
    ) -> Option<(T, bool)> {
        self.read_probe(Probe::hit(key)?, epoch, read)
    }

    #[inline(always)]
    fn read_probe<T>(
        &self,
        probe: Probe<'_>,
        epoch: u64,
        read: impl FnOnce(&Stored) -> Option<T>,
    ) -> Option<(T, bool)> {
        let now = self.shared.clock.moment();
        let mut expired = false;
        let found = self.shared.store.get(&probe, |slot| {
            if slot.expires_at <= now {
                expired = true;
                None
            } else if slot.mark.in_epoch(epoch) {
                read(&slot.value).map(|value| (value, slot.refresh_at <= now))
            } else {
                None
            }
        });
        if expired {
            self.remove_expired(&probe, now);
        }
        found
    }

    #[cold]
    #[inline(never)]
    fn remove_expired(&self, probe: &Probe<'_>, now: Moment) {
        // Under the write lock, again: a refill may have replaced it since the read.
        if let Some(slot) = self
            .shared
            .store
            .remove_if(probe, |slot| slot.expires_at <= now)
        {
            self.shared.tally.removed(&slot, Eviction::Expired);
        }
    }

    pub(crate) fn insert_in_epoch(
        &self,
        key: CacheKey,
        value: impl Into<Stored>,
        ttl: Duration,
        epoch: u64,
    ) {
        self.insert_refreshing(key, value, (ttl, None), epoch);
    }

    /// [`insert_in_epoch`](Self::insert_in_epoch), the entry due for a refresh-ahead after
    /// `refresh_in` (a site with `refresh`).
    pub(crate) fn insert_refreshing(
        &self,
        key: CacheKey,
        value: impl Into<Stored>,
        (ttl, refresh_in): (Duration, Option<Duration>),
        epoch: u64,
    ) {
        let value = value.into();
        // Weighed before anything is stored: a weigher that panics leaves nothing behind.
        let weight = (self.shared.weigher)(key.as_str(), value.as_any());
        self.insert_weighed(key, value, weight, (ttl, refresh_in), epoch);
    }

    /// [`insert_in_epoch`](Self::insert_in_epoch), the weigher given `weighed`: the cached
    /// value inside `value` when that wraps it (a tagged entry's generations around it), since
    /// the weigher is promised a value it can downcast to the cached type.
    pub(crate) fn insert_weighing(
        &self,
        key: CacheKey,
        value: impl Into<Stored>,
        weighed: &(dyn Any + Send + Sync),
        ttl: Duration,
        epoch: u64,
    ) {
        let weight = (self.shared.weigher)(key.as_str(), weighed);
        self.insert_weighed(key, value.into(), weight, (ttl, None), epoch);
    }

    fn insert_weighed(
        &self,
        key: CacheKey,
        value: Stored,
        weight: u32,
        (ttl, refresh_in): (Duration, Option<Duration>),
        epoch: u64,
    ) {
        let now = self.shared.clock.moment();
        let expires_at = after(now, ttl);
        let refresh_at = refresh_in.map_or(expires_at, |refresh_in| {
            after(now, refresh_in).min(expires_at)
        });
        let slot = Slot {
            value,
            expires_at,
            refresh_at,
            mark: Mark::new(epoch),
            weight,
        };
        let probe = Probe::key(&key);
        let removed = self
            .shared
            .store
            .insert(&probe, SlotKey::new(&key), slot, now);
        self.shared.tally.add(1, i64::from(weight));
        // Counted, then dropped here, outside the shard's lock.
        for (cause, slot) in removed.slots {
            self.shared.tally.removed(&slot, cause);
        }
    }

    /// Gives the store its metric handles, once its backend is configured under a name (the
    /// first configuration that names it keeps it).
    pub(crate) fn attach_meters(&self, meters: StoreMeters) {
        let tally = &self.shared.tally;
        let entries = tally.entries.load(Ordering::Relaxed);
        let bytes = tally.bytes.load(Ordering::Relaxed);
        if tally.meters.set(meters).is_ok() {
            if let Some(meters) = tally.meters.get() {
                meters.grow(entries, bytes);
            }
        }
    }

    pub(crate) fn invalidate(&self, key: &str) {
        if let Some(slot) = self.shared.store.remove_if(&Probe::text(key), |_| true) {
            self.shared.tally.removed(&slot, Eviction::Explicit);
        }
    }

    /// The generations of the tags this backend's entries carry.
    pub(crate) fn tags(&self) -> &TagTable {
        &self.shared.tags
    }

    /// Drops every entry (shard by shard: entries stored in a shard after it was emptied stay).
    pub(crate) fn invalidate_all(&self) {
        for slot in self.shared.store.drain() {
            self.shared.tally.removed(&slot, Eviction::Explicit);
        }
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::builder().build()
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.entry_count())
            .finish()
    }
}

#[cfg(test)]
mod review22;
#[cfg(test)]
mod review25;
#[cfg(test)]
mod review27;
#[cfg(test)]
mod tests;
