//! The in-process backend: typed values in a bounded moka cache, no serialisation.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use crate::key::CacheKey;
use crate::shape::AnyValue;

/// Weighs one entry for a byte bound: the key's text and the value, type-erased.
pub type Weigher = Arc<dyn Fn(&str, &(dyn Any + Send + Sync)) -> u32 + Send + Sync>;

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
    cache: Cache<CacheKey, Entry>,
}

#[derive(Clone)]
struct Entry {
    value: AnyValue,
    ttl: Duration,
    /// The tiered backend's L1 epoch when the entry was stored (0 in a plain memory backend):
    /// advancing the epoch turns every older entry into a miss at once.
    epoch: u64,
}

struct PerEntryTtl;

impl Expiry<CacheKey, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    // moka keeps the old expiry on update by default; a refill must start a fresh TTL.
    fn expire_after_update(
        &self,
        _: &CacheKey,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Configures a [`MemoryBackend`].
pub struct MemoryBackendBuilder {
    capacity: Capacity,
    weigher: Option<Weigher>,
}

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

    /// The backend.
    pub fn build(self) -> MemoryBackend {
        let builder = Cache::builder().expire_after(PerEntryTtl);
        let cache = match self.capacity {
            Capacity::Entries(entries) => builder.max_capacity(entries).build(),
            Capacity::Bytes(bytes) => {
                let weigher = self.weigher.unwrap_or_else(|| {
                    Arc::new(|key: &str, value: &(dyn Any + Send + Sync)| {
                        let size = key.len() + std::mem::size_of_val(value);
                        u32::try_from(size).unwrap_or(u32::MAX)
                    })
                });
                builder
                    .max_capacity(bytes)
                    .weigher(move |key: &CacheKey, entry: &Entry| {
                        weigher(key.as_str(), &*entry.value)
                    })
                    .build()
            }
        };
        MemoryBackend { cache }
    }
}

impl MemoryBackend {
    /// A builder; [`MemoryBackend::default()`] holds up to 10,000 entries.
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder {
            capacity: Capacity::Entries(10_000),
            weigher: None,
        }
    }

    /// How many entries the cache holds (approximate until [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Applies pending evictions and expirations now, so that counts are exact.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    pub(crate) fn get(&self, key: &str) -> Option<AnyValue> {
        self.cache.get(key).map(|entry| entry.value)
    }

    pub(crate) fn insert(&self, key: CacheKey, value: AnyValue, ttl: Duration) {
        self.insert_in_epoch(key, value, ttl, 0);
    }

    /// The value under `key` if it was stored in `epoch`.
    pub(crate) fn get_in_epoch(&self, key: &str, epoch: u64) -> Option<AnyValue> {
        self.cache
            .get(key)
            .filter(|entry| entry.epoch == epoch)
            .map(|entry| entry.value)
    }

    pub(crate) fn insert_in_epoch(
        &self,
        key: CacheKey,
        value: AnyValue,
        ttl: Duration,
        epoch: u64,
    ) {
        self.cache.insert(key, Entry { value, ttl, epoch });
    }

    pub(crate) fn invalidate(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// Drops every entry (lazily, in moka; entries stored after this call stay).
    pub(crate) fn invalidate_all(&self) {
        self.cache.invalidate_all();
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
    use crate::KeyBuilder;

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
        let backend = MemoryBackend::default();
        let key = KeyBuilder::new().lit("k").finish();
        backend.insert(key.clone(), Arc::new(1u8), Duration::from_millis(1));
        backend.insert(key.clone(), Arc::new(2u8), Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
        let value = backend.get(key.as_str()).expect("the refill's TTL applies");
        assert_eq!(value.downcast_ref::<u8>(), Some(&2));
    }
}
