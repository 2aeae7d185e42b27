//! The memory backend's read path: every entry moka holds, by key, in sharded hash tables
//! behind read-write locks, each with its expiry instant.
//!
//! Why not just moka: a moka hit also records the read for its eviction policy, pins an epoch and
//! walks its concurrent table, about 250 ns, while a hit here is a hash, a shared lock and a
//! probe. moka stays the authority on what is held (the entry or byte bound, its admission and
//! eviction policy, expiry): its eviction listener removes what it drops from here, and the
//! backend tells moka about a sample of the reads (see `MemoryBackend::get`).

use std::hash::{BuildHasher, Hasher};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ahash::RandomState;

use hashbrown::HashTable;

use crate::clock::{Clock, Moment};
use crate::key::CacheKey;
use crate::shape::AnyValue;

/// A power of two, so that a shard is a few bits of the hash; 64 keeps two cores (or sixteen)
/// from meeting on one lock often, for about 4 KiB.
const SHARDS: usize = 64;

pub(super) struct Index {
    /// aHash, keyed per process and per index from the OS's randomness: keys are request
    /// data, so the hash must not be predictable (ARCHITECTURE.md, "Hit path performance").
    hasher: RandomState,
    shards: Box<[Shard]>,
    clock: Clock,
}

/// One shard on cache lines of its own (128 bytes: adjacent-line prefetch pairs lines on x86).
/// A read lock writes its lock word, so two shards sharing a line would make hits on
/// different keys, on different cores, write one line.
#[repr(align(128))]
#[derive(Default)]
struct Shard(RwLock<HashTable<Slot>>);

struct Slot {
    hash: u64,
    key: CacheKey,
    value: AnyValue,
    expires_at: Moment,
    /// From when a hit on this entry starts a refresh-ahead (`expires_at` for a site without
    /// `refresh`: never, since no hit reads it past its expiry).
    refresh_at: Moment,
    /// The tiered backend's L1 epoch when the entry was stored (0 in a plain memory backend):
    /// advancing the epoch turns every older entry into a miss at once.
    epoch: u64,
}

/// `at + ttl`, saturating (`coarsetime` counts in 32.32 fixed point, so a ttl of years fits).
pub(super) fn after(at: Moment, ttl: std::time::Duration) -> Moment {
    let ttl = ttl.min(std::time::Duration::from_secs(u64::from(u32::MAX) / 2));
    at + coarsetime::Duration::from(ttl)
}

impl Index {
    pub(super) fn new(clock: Clock) -> Self {
        Index {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            clock,
        }
    }

    /// Now, on the clock that this index checks expiry against.
    pub(super) fn now(&self) -> Moment {
        self.clock.moment()
    }

    /// One hash per operation: it picks the shard and is stored for the table's probes. The
    /// bytes go in as one write: `str`'s `Hash` adds a terminator write, and a single field
    /// needs no terminator.
    fn hash(&self, key: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(key.as_bytes());
        hasher.finish()
    }

    // The table probes with the low bits and tags with the top seven, so the shard takes bits
    // neither uses; otherwise every key of a shard would share a tag or a home bucket.
    fn shard(&self, hash: u64) -> &RwLock<HashTable<Slot>> {
        &self.shards[(hash >> 40) as usize % SHARDS].0
    }

    fn read(&self, hash: u64) -> RwLockReadGuard<'_, HashTable<Slot>> {
        // Every critical section is one probe, insert or remove: a panic cannot leave a table
        // half-changed, so a poisoned lock is still sound.
        self.shard(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, hash: u64) -> RwLockWriteGuard<'_, HashTable<Slot>> {
        self.shard(hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What `read` makes of the value under `key`, unless it has expired. `read` runs under the
    /// shard's read lock, so a hit can clone the typed value out without touching the `Arc`'s
    /// count, which cores hitting one hot key would otherwise bounce between them.
    #[inline]
    pub(super) fn get<T>(
        &self,
        key: &CacheKey,
        epoch: u64,
        read: impl FnOnce(&AnyValue) -> Option<T>,
    ) -> Option<T> {
        self.get_due(key, epoch, read).map(|(value, _)| value)
    }

    /// [`get`](Self::get), and whether the entry is due for a refresh-ahead.
    #[inline]
    pub(super) fn get_due<T>(
        &self,
        key: &CacheKey,
        epoch: u64,
        read: impl FnOnce(&AnyValue) -> Option<T>,
    ) -> Option<(T, bool)> {
        let hash = self.hash(key.as_str());
        let table = self.read(hash);
        let slot = table.find(hash, |slot| slot.key == *key)?;
        let now = self.clock.moment();
        if slot.epoch == epoch && slot.expires_at > now {
            read(&slot.value).map(|value| (value, slot.refresh_at <= now))
        } else {
            None
        }
    }

    /// Stores `value` until `expires_at`, due for a refresh-ahead from `refresh_at` if given.
    pub(super) fn insert(
        &self,
        key: CacheKey,
        value: AnyValue,
        (expires_at, refresh_at): (Moment, Option<Moment>),
        epoch: u64,
    ) {
        let refresh_at = refresh_at.map_or(expires_at, |at| at.min(expires_at));
        let hash = self.hash(key.as_str());
        let mut table = self.write(hash);
        match table.find_mut(hash, |slot| slot.key == key) {
            Some(slot) => {
                slot.value = value;
                slot.expires_at = expires_at;
                slot.refresh_at = refresh_at;
                slot.epoch = epoch;
            }
            None => {
                table.insert_unique(
                    hash,
                    Slot {
                        hash,
                        key,
                        value,
                        expires_at,
                        refresh_at,
                        epoch,
                    },
                    |slot| slot.hash,
                );
            }
        }
    }

    pub(super) fn remove(&self, key: &str) {
        self.remove_if(key, |_| true);
    }

    /// Removes `key` only if it still holds this very value: moka reports an eviction after
    /// the fact, when a refill may already have put a newer value here.
    pub(super) fn remove_value(&self, key: &str, value: &AnyValue) {
        let address = |value: &AnyValue| AnyValue::as_ptr(value).cast::<()>();
        self.remove_if(key, |slot| address(&slot.value) == address(value));
    }

    fn remove_if(&self, key: &str, holds: impl FnOnce(&Slot) -> bool) {
        let hash = self.hash(key);
        let mut table = self.write(hash);
        if let Ok(entry) = table.find_entry(hash, |slot| slot.key.as_str() == key) {
            if holds(entry.get()) {
                entry.remove();
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.0.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}
