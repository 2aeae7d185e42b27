//! The memory store: quick_cache's unsynchronised cache (its CLOCK-Pro-like policy, bound and
//! weights) in shards of our own, each behind a read-write lock on cache lines of its own.
//!
//! Why quick_cache's `unsync::Cache` in our shards rather than its `sync::Cache`: a read of the
//! sync cache returns a clone of the stored value, taken under its lock, and a type-erased value
//! can only be cloned as a whole (an `Arc`'s count, a line every core hitting the key writes);
//! under our own read lock the reader clones the typed value out of the slot instead. The
//! shards also sit 128 bytes apart: a read lock writes its lock word, so two shards on one
//! line would make hits on different keys, on different cores, write one line.
//!
//! One structure is both the read path and the policy: a hit marks the entry referenced (a
//! counter it stops writing once saturated, so a hot key's line is not written on every hit).

use std::num::NonZeroUsize;

use quick_cache::{Lifecycle, OptionsBuilder, Weighter};

use super::slot::{Prehashed, Probe, Slot, SlotKey};
use super::striped::{StripedLock, StripedReadGuard, StripedWriteGuard};
use crate::clock::Moment;
use crate::observe::Eviction;

type Engine = quick_cache::unsync::Cache<SlotKey, Slot, Weigh, Prehashed, Evictions>;

/// One shard, on cache lines of its own (128 bytes: adjacent-line prefetch pairs lines on x86).
/// Its lock is striped by thread (`striped.rs`): a read locks the reader's own stripe, so hits
/// on one shard from different cores write different lines; a write locks every stripe.
#[repr(align(128))]
struct Shard(StripedLock<Engine>);

pub(super) struct Store {
    shards: Box<[Shard]>,
}

/// How the store is bounded.
#[derive(Clone, Copy, Debug)]
pub(super) enum Bound {
    Entries(u64),
    Bytes(u64),
}

/// At most this many shards; fewer for a small bound (see [`Store::new`]).
const MAX_SHARDS: usize = 64;
/// A shard holds at least this many entries of an entry bound...
const MIN_SHARD_ENTRIES: u64 = 32;
/// ...or this many bytes of a byte bound: an entry heavier than about a shard's part of the
/// bound is not admitted, so a byte-bounded store keeps shards large.
const MIN_SHARD_BYTES: u64 = 64 * 1024;
/// What an entry of a byte-bounded store is guessed to weigh, for the policy's count of the
/// keys it remembers after evicting them (half as many as the entries it expects to hold).
const GUESSED_ENTRY_BYTES: u64 = 1024;

impl Store {
    pub(super) fn new(bound: Bound) -> Store {
        let parallelism = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let (capacity, floor) = match bound {
            Bound::Entries(entries) => (entries, MIN_SHARD_ENTRIES),
            Bound::Bytes(bytes) => (bytes, MIN_SHARD_BYTES),
        };
        // Four per core, as quick_cache's own sharded cache does, fewer for a small bound.
        let mut shards = (parallelism * 4).next_power_of_two().min(MAX_SHARDS);
        while shards > 1 && capacity / (shards as u64) < floor {
            shards /= 2;
        }
        let per_shard = capacity.div_ceil(shards as u64).max(1);
        let estimated_items = match bound {
            Bound::Entries(_) => per_shard,
            Bound::Bytes(_) => (per_shard / GUESSED_ENTRY_BYTES).max(MIN_SHARD_ENTRIES),
        };
        let weigh = Weigh {
            by_bytes: matches!(bound, Bound::Bytes(_)),
        };
        let options = OptionsBuilder::new()
            .estimated_items_capacity(estimated_items as usize)
            .weight_capacity(per_shard)
            .build()
            .expect("valid options");
        let shards = (0..shards)
            .map(|_| {
                Shard(StripedLock::new(Engine::with_options(
                    options.clone(),
                    weigh,
                    Prehashed,
                    Evictions,
                )))
            })
            .collect();
        Store { shards }
    }

    // The table probes with the low bits and tags with the top seven, so the shard takes bits
    // neither uses; otherwise every key of a shard would share a tag or a home bucket.
    #[inline(always)]
    fn shard(&self, hash: u64) -> &StripedLock<Engine> {
        &self.shards[self.shard_of(hash)].0
    }

    #[inline(always)]
    pub(super) fn shard_of(&self, hash: u64) -> usize {
        (hash >> 32) as usize & (self.shards.len() - 1)
    }

    // Every critical section is one call into the engine, which leaves its tables whole should
    // anything in it panic (nothing of ours runs in it but `Weigh` and `Evictions`, which do not
    // panic), so the lock reports no poisoning.
    #[inline(always)]
    fn read(&self, hash: u64) -> StripedReadGuard<'_, Engine> {
        self.shard(hash).read()
    }

    fn write(&self, hash: u64) -> StripedWriteGuard<'_, Engine> {
        self.shard(hash).write()
    }

    /// What `read` makes of the entry under `probe`, under the shard's read lock: it marks the
    /// entry referenced for the policy, and `read` can clone the typed value out without
    /// touching any count but the value's own.
    #[inline(always)]
    pub(super) fn get<T>(
        &self,
        probe: &Probe<'_>,
        read: impl FnOnce(&Slot) -> Option<T>,
    ) -> Option<T> {
        read(self.read(probe.hash).get(probe)?)
    }

    /// Stores `slot` under `key`. What it displaced or evicted comes back, to be counted and
    /// dropped once the lock is released (a value's drop is the caller's code).
    pub(super) fn insert(
        &self,
        probe: &Probe<'_>,
        key: SlotKey,
        slot: Slot,
        now: Moment,
    ) -> Removed {
        let mut engine = self.write(probe.hash);
        let mut removed = Removed {
            inserting: engine.peek(probe).is_some().then(|| key.clone()),
            now: Some(now),
            slots: Vec::new(),
        };
        engine.insert_with_lifecycle(key, slot, &mut removed);
        removed
    }

    /// Removes the entry under `probe` if `remove` says so.
    pub(super) fn remove_if(
        &self,
        probe: &Probe<'_>,
        remove: impl FnOnce(&Slot) -> bool,
    ) -> Option<Slot> {
        let (_, slot) = self.write(probe.hash).remove_if(probe, remove)?;
        Some(slot)
    }

    /// Empties the store, shard by shard (an entry stored in a shard after it was emptied
    /// stays).
    pub(super) fn drain(&self) -> Vec<Slot> {
        let mut drained = Vec::new();
        for shard in self.shards.iter() {
            let mut engine = shard.0.write();
            drained.extend(engine.drain().map(|(_, slot)| slot));
        }
        drained
    }

    /// Removes every entry that expired by `now`.
    pub(super) fn remove_expired(&self, now: Moment) -> Vec<Slot> {
        let mut removed = Vec::new();
        for shard in self.shards.iter() {
            let expired: Vec<SlotKey> = shard
                .0
                .read()
                .iter()
                .filter(|(_, slot)| slot.expires_at <= now)
                .map(|(key, _)| key.clone())
                .collect();
            // A write holds back every hit on the shard: none for nothing to remove.
            if expired.is_empty() {
                continue;
            }
            let mut engine = shard.0.write();
            for key in expired {
                if let Some((_, slot)) = engine.remove_if(&key, |slot| slot.expires_at <= now) {
                    removed.push(slot);
                }
            }
        }
        removed
    }

    /// How many entries the store holds.
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.0.read().len()).sum()
    }

    /// The summed weight the bound counts (1 per entry under an entry bound).
    #[cfg(test)]
    pub(super) fn weight(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| shard.0.read().weight())
            .sum()
    }
}

/// An entry's weight for the bound: its own under a byte bound (at least 1: the engine never
/// evicts an entry of weight 0), else 1.
#[derive(Clone, Copy)]
struct Weigh {
    by_bytes: bool,
}

impl Weighter<SlotKey, Slot> for Weigh {
    #[inline]
    fn weight(&self, _: &SlotKey, slot: &Slot) -> u64 {
        if self.by_bytes {
            u64::from(slot.weight.max(1))
        } else {
            1
        }
    }
}

/// The engine's eviction hook: what the eviction listener of moka used to be.
#[derive(Clone, Copy)]
struct Evictions;

/// What one insert displaced or evicted, and why.
#[derive(Default)]
pub(super) struct Removed {
    /// The key being inserted, if an entry was under it before: the first entry evicted under
    /// it is the one replaced (a later one is the new entry itself, refused as too heavy or
    /// evicted at once).
    inserting: Option<SlotKey>,
    now: Option<Moment>,
    pub(super) slots: Vec<(Eviction, Slot)>,
}

impl Lifecycle<SlotKey, Slot> for Evictions {
    type RequestState = Removed;

    fn on_evict(&self, removed: &mut Removed, key: SlotKey, slot: Slot) {
        let cause = if removed.inserting.as_ref() == Some(&key) {
            removed.inserting = None;
            Eviction::Replaced
        } else if removed.now.is_some_and(|now| slot.expires_at <= now) {
            Eviction::Expired
        } else {
            Eviction::Size
        };
        removed.slots.push((cause, slot));
    }
}
