//! The in-process backend: typed values in a bounded moka cache, no serialisation, read through
//! an index of its own (`index.rs`; why: ARCHITECTURE.md, "Hit path performance").

mod index;

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;

use crate::key::CacheKey;
use crate::observe::meters::StoreMeters;
use crate::observe::Eviction;
use crate::shape::AnyValue;

use super::tags::TagTable;
use crate::clock::{Clock, TestClock};
use index::Index;

/// One hit in this many (per thread) is also read through moka, so that its eviction policy
/// still sees which keys are hot; the others cost it nothing.
const POLICY_SAMPLE: u32 = 32;

/// Weighs one entry for a byte bound: the key's text and the value, type-erased.
type Weigher = Arc<dyn Fn(&str, &(dyn Any + Send + Sync)) -> u32 + Send + Sync>;

/// An in-process cache backend (moka), holding values as they are, without serialisation.
///
/// ```
/// use cache_runtime::MemoryBackend;
///
/// let small = MemoryBackend::builder().max_entries(1_000).build();
/// assert_eq!(small.entry_count(), 0);
/// ```
#[derive(Clone)]
pub struct MemoryBackend {
    /// The authority on what is held: bound, admission, eviction, expiry.
    cache: Cache<CacheKey, Entry>,
    /// The read path: what `cache` holds, kept in step by its eviction listener.
    index: Arc<Index>,
    /// Weighs entries, for the byte bound and the size gauges.
    weigher: Weigher,
    /// What the store holds, as its gauges say, kept by inserts and the eviction listener.
    tally: Arc<Tally>,
    /// How it was built, to build it again on another clock (a tiered backend's L1 runs on
    /// its L2's clock).
    settings: Arc<MemoryBackendBuilder>,
    /// The current generation of each tag its entries carry (`backend/tags.rs`).
    tags: Arc<TagTable>,
}

#[derive(Clone)]
struct Entry {
    value: AnyValue,
    /// How long moka keeps the entry: its ttl on the real clock; `None` on a test clock, where
    /// the index alone decides expiry (moka's clock cannot be moved, and expiring by real time
    /// would end entries the test clock says are fresh).
    ttl: Option<Duration>,
    /// The entry's weight, computed once on insert: moka's byte bound and the gauges use it.
    weight: u32,
}

/// Entries and their summed weight, for the gauges: moka's own counts are approximate until
/// its maintenance runs, and its listener is the one place that sees every removal.
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

    fn evicted(&self, entry: &Entry, cause: RemovalCause) {
        self.add(-1, -i64::from(entry.weight));
        if let Some(meters) = self.meters.get() {
            meters.evicted(match cause {
                RemovalCause::Expired => Eviction::Expired,
                RemovalCause::Explicit => Eviction::Explicit,
                RemovalCause::Replaced => Eviction::Replaced,
                RemovalCause::Size => Eviction::Size,
            });
        }
    }
}

struct PerEntryTtl;

impl Expiry<CacheKey, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, entry: &Entry, _: Instant) -> Option<Duration> {
        entry.ttl
    }

    // moka keeps the old expiry on update by default; a refill must start a fresh TTL.
    fn expire_after_update(
        &self,
        _: &CacheKey,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        entry.ttl
    }
}

/// Configures a [`MemoryBackend`].
#[derive(Clone)]
pub struct MemoryBackendBuilder {
    capacity: Capacity,
    weigher: Option<Weigher>,
    clock: Clock,
}

#[derive(Clone, Copy)]
enum Capacity {
    Entries(u64),
    Bytes(u64),
}

impl MemoryBackendBuilder {
    /// Bounds the cache by entry count (the default: 10,000 entries).
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.capacity = Capacity::Entries(entries);
        self
    }

    /// Bounds the cache by the summed weight of its entries. Without [`weigher`](Self::weigher),
    /// an entry weighs its key's length plus the value's shallow size (`size_of_val`), which
    /// undercounts values that own heap data: give a weigher for those.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.capacity = Capacity::Bytes(bytes);
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
        let settings = self.clone();
        let index = Arc::new(Index::new(self.clock));
        let tally = Arc::new(Tally {
            entries: AtomicI64::new(0),
            bytes: AtomicI64::new(0),
            meters: OnceLock::new(),
        });
        let (evicted, counted) = (Arc::clone(&index), Arc::clone(&tally));
        let builder = Cache::builder()
            .expire_after(PerEntryTtl)
            .eviction_listener(move |key: Arc<CacheKey>, entry: Entry, cause| {
                evicted.remove_value(key.as_str(), &entry.value);
                counted.evicted(&entry, cause);
            });
        let cache = match self.capacity {
            Capacity::Entries(entries) => builder.max_capacity(entries).build(),
            Capacity::Bytes(bytes) => builder
                .max_capacity(bytes)
                .weigher(|_: &CacheKey, entry: &Entry| entry.weight)
                .build(),
        };
        let weigher = self.weigher.unwrap_or_else(|| {
            Arc::new(|key: &str, value: &(dyn Any + Send + Sync)| {
                let size = key.len() + std::mem::size_of_val(value);
                u32::try_from(size).unwrap_or(u32::MAX)
            })
        });
        MemoryBackend {
            cache,
            index,
            weigher,
            tally,
            settings: Arc::new(settings),
            tags: Arc::new(TagTable::new()),
        }
    }
}

impl MemoryBackend {
    /// A builder; [`MemoryBackend::default()`] holds up to 10,000 entries.
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder {
            capacity: Capacity::Entries(10_000),
            weigher: None,
            clock: Clock::Real,
        }
    }

    /// This backend, or if it runs on another clock than `clock`, an empty one built alike on
    /// `clock`.
    pub(crate) fn on_clock(self, clock: &Clock) -> MemoryBackend {
        if self.settings.clock.same_as(clock) {
            return self;
        }
        let mut settings = (*self.settings).clone();
        settings.clock = clock.clone();
        settings.build()
    }

    /// The clock this backend checks expiry against.
    pub(crate) fn clock(&self) -> &Clock {
        &self.settings.clock
    }

    /// How many entries the cache holds (approximate until [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Applies pending evictions and expirations now, so that counts are exact.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// What `read` makes of the value under `key`; `read` runs under a shard's read lock, so it
    /// should only downcast and clone.
    #[inline]
    pub(crate) fn read<T>(
        &self,
        key: &CacheKey,
        read: impl FnOnce(&AnyValue) -> Option<T>,
    ) -> Option<T> {
        self.read_in_epoch(key, 0, read)
    }

    /// Tells moka about one hit in [`POLICY_SAMPLE`], so that its eviction policy still sees
    /// which keys are hot.
    fn sample_for_policy(&self, key: &str) {
        thread_local! {
            static HITS: Cell<u32> = const { Cell::new(0) };
        }
        let hits = HITS.with(|hits| {
            hits.set(hits.get().wrapping_add(1));
            hits.get()
        });
        if hits % POLICY_SAMPLE == 0 {
            let _ = self.cache.get(key);
        }
    }

    /// The store's own read, without a call site, key checks or single-flight: the floor that
    /// the benchmarks hold a cached call's hit against. Only with the `bench-internals` feature,
    /// which the workspace's own benchmarks enable; not an API.
    #[cfg(feature = "bench-internals")]
    #[doc(hidden)]
    pub fn peek<V: Clone + 'static>(&self, key: &CacheKey) -> Option<V> {
        self.read(key, |value| value.downcast_ref::<V>().cloned())
    }

    pub(crate) fn insert(&self, key: CacheKey, value: AnyValue, ttl: Duration) {
        self.insert_in_epoch(key, value, ttl, 0);
    }

    /// What `read` makes of the value under `key`, if it was stored in `epoch` (a tiered
    /// backend's L1 epoch; see `backend::tiered::bus`).
    #[inline]
    pub(crate) fn read_in_epoch<T>(
        &self,
        key: &CacheKey,
        epoch: u64,
        read: impl FnOnce(&AnyValue) -> Option<T>,
    ) -> Option<T> {
        let value = self.index.get(key, epoch, read)?;
        self.sample_for_policy(key.as_str());
        Some(value)
    }

    /// [`read_in_epoch`](Self::read_in_epoch), and whether the entry is due for a
    /// refresh-ahead (stored with a `refresh_in` that has passed).
    #[inline]
    pub(crate) fn read_due<T>(
        &self,
        key: &CacheKey,
        epoch: u64,
        read: impl FnOnce(&AnyValue) -> Option<T>,
    ) -> Option<(T, bool)> {
        let found = self.index.get_due(key, epoch, read)?;
        self.sample_for_policy(key.as_str());
        Some(found)
    }

    pub(crate) fn insert_in_epoch(
        &self,
        key: CacheKey,
        value: AnyValue,
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
        value: AnyValue,
        (ttl, refresh_in): (Duration, Option<Duration>),
        epoch: u64,
    ) {
        // Weighed before anything is stored: a weigher that panics leaves nothing behind.
        let weight = (self.weigher)(key.as_str(), &*value);
        self.insert_weighed(key, value, weight, (ttl, refresh_in), epoch);
    }

    /// [`insert_in_epoch`](Self::insert_in_epoch), the weigher given `weighed`: the cached
    /// value inside `value` when that wraps it (a tagged entry's generations around it), since
    /// the weigher is promised a value it can downcast to the cached type.
    pub(crate) fn insert_weighing(
        &self,
        key: CacheKey,
        value: AnyValue,
        weighed: &(dyn Any + Send + Sync),
        ttl: Duration,
        epoch: u64,
    ) {
        let weight = (self.weigher)(key.as_str(), weighed);
        self.insert_weighed(key, value, weight, (ttl, None), epoch);
    }

    fn insert_weighed(
        &self,
        key: CacheKey,
        value: AnyValue,
        weight: u32,
        (ttl, refresh_in): (Duration, Option<Duration>),
        epoch: u64,
    ) {
        let now = self.index.now();
        let expires_at = index::after(now, ttl);
        let refresh_at = refresh_in.map(|refresh_in| index::after(now, refresh_in));
        // The index first: should moka refuse or evict the entry at once, its listener then
        // finds the value here to remove, and nothing stays that moka does not hold. Should
        // moka's insert panic (a user weigher), the guard takes the entry out again.
        self.index.insert(
            key.clone(),
            Arc::clone(&value),
            (expires_at, refresh_at),
            epoch,
        );
        let unaccepted = Unaccepted {
            index: &self.index,
            key: &key,
            value: &value,
        };
        self.cache.insert(
            key.clone(),
            Entry {
                value: Arc::clone(&value),
                ttl: matches!(self.settings.clock, Clock::Real).then_some(ttl),
                weight,
            },
        );
        std::mem::forget(unaccepted);
        self.tally.add(1, i64::from(weight));
    }

    /// Gives the store its metric handles, once its backend is configured under a name (the
    /// first configuration that names it keeps it).
    pub(crate) fn attach_meters(&self, meters: StoreMeters) {
        let entries = self.tally.entries.load(Ordering::Relaxed);
        let bytes = self.tally.bytes.load(Ordering::Relaxed);
        if self.tally.meters.set(meters).is_ok() {
            if let Some(meters) = self.tally.meters.get() {
                meters.grow(entries, bytes);
            }
        }
    }

    pub(crate) fn invalidate(&self, key: &str) {
        self.index.remove(key);
        self.cache.invalidate(key);
    }

    /// The generations of the tags this backend's entries carry.
    pub(crate) fn tags(&self) -> &TagTable {
        &self.tags
    }

    /// Drops every entry (lazily, in moka; entries stored after this call stay).
    pub(crate) fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }
}

/// Removes an index entry whose insert into moka did not return (it panicked), so that the index
/// never serves what moka does not hold.
struct Unaccepted<'a> {
    index: &'a Index,
    key: &'a CacheKey,
    value: &'a AnyValue,
}

impl Drop for Unaccepted<'_> {
    fn drop(&mut self) {
        self.index.remove_value(self.key.as_str(), self.value);
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
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The type-erased read.
    fn get(backend: &MemoryBackend, key: &CacheKey) -> Option<AnyValue> {
        backend.read(key, |value| Some(Arc::clone(value)))
    }
    use crate::KeyBuilder;
    /// A default backend whose index checks expiry against `clock`.
    fn on(clock: &TestClock) -> MemoryBackend {
        MemoryBackend::builder().clock(clock).build()
    }

    fn fill(backend: &MemoryBackend, count: u32, value: impl Fn(u32) -> AnyValue) {
        for n in 0..count {
            let key = KeyBuilder::new().lit("k:").arg(&n).finish();
            backend.insert(key, value(n), Duration::from_secs(60));
        }
        backend.run_pending_tasks();
    }

    #[test]
    fn a_byte_bound_limits_the_summed_weight() {
        let backend = MemoryBackend::builder().max_bytes(1_000).build();
        fill(&backend, 500, |n| Arc::new([n; 16]));
        let weight = backend.cache.weighted_size();
        assert!(weight <= 1_000, "weighted size {weight}");
        assert!(backend.entry_count() > 0);
    }

    #[test]
    fn a_custom_weigher_sees_the_typed_value() {
        let backend = MemoryBackend::builder()
            .max_bytes(10_000)
            .weigher(|_, value| {
                let text = value.downcast_ref::<String>().map_or(0, String::len);
                u32::try_from(text).unwrap_or(u32::MAX)
            })
            .build();
        fill(&backend, 100, |_| Arc::new("x".repeat(1_000)));
        assert!(
            backend.entry_count() <= 10,
            "{} entries",
            backend.entry_count()
        );
    }

    #[test]
    fn a_refill_starts_a_fresh_ttl() {
        let clock = TestClock::new();
        let backend = on(&clock);
        let key = KeyBuilder::new().lit("k").finish();
        backend.insert(key.clone(), Arc::new(1u8), Duration::from_millis(1));
        backend.insert(key.clone(), Arc::new(2u8), Duration::from_secs(60));
        clock.advance(Duration::from_millis(20));
        let value = get(&backend, &key).expect("the refill's TTL applies");
        assert_eq!(value.downcast_ref::<u8>(), Some(&2));
    }

    #[test]
    fn the_index_holds_what_moka_holds() {
        let backend = MemoryBackend::builder().max_bytes(1_000).build();
        fill(&backend, 500, |n| Arc::new([n; 16]));
        let held = (0..500u32)
            .filter(|n| {
                let key = KeyBuilder::new().lit("k:").arg(n).finish();
                get(&backend, &key).is_some()
            })
            .count();
        backend.run_pending_tasks();
        assert!(held > 0);
        assert_eq!(backend.index.len() as u64, backend.entry_count());
        assert_eq!(held as u64, backend.entry_count());
    }

    #[test]
    fn an_expired_entry_is_a_miss_and_a_refill_replaces_it() {
        let clock = TestClock::new();
        let backend = on(&clock);
        let key = KeyBuilder::new().lit("k").finish();
        backend.insert(key.clone(), Arc::new(1u8), Duration::from_millis(5));
        assert!(get(&backend, &key).is_some());
        clock.advance(Duration::from_millis(20));
        assert!(get(&backend, &key).is_none(), "expired in the index");
        // On a test clock moka keeps the entry (its own clock is real time, which the test
        // clock does not follow): the next fill replaces it, in both.
        backend.run_pending_tasks();
        backend.insert(key.clone(), Arc::new(2u8), Duration::from_millis(5));
        let value = get(&backend, &key).expect("the refill");
        assert_eq!(value.downcast_ref::<u8>(), Some(&2));
        backend.run_pending_tasks();
        assert_eq!((backend.index.len(), backend.entry_count()), (1, 1));
    }

    #[test]
    fn invalidation_removes_from_both() {
        let backend = MemoryBackend::default();
        let key = KeyBuilder::new().lit("k").finish();
        backend.insert(key.clone(), Arc::new(1u8), Duration::from_secs(60));
        backend.invalidate(key.as_str());
        assert!(get(&backend, &key).is_none());
        backend.run_pending_tasks();
        assert_eq!((backend.index.len(), backend.entry_count()), (0, 0));
    }
}
