//! The memory store: shards of our own (`engine.rs`: a table holding entries in its buckets,
//! and a clock over them), each behind a read-write lock striped by thread, on cache lines of
//! its own.
//!
//! The shards sit 128 bytes apart, and their locks' stripes too: a read lock writes its lock
//! word, so two shards on one line would make hits on different keys, on different cores, write
//! one line.
//!
//! One structure is both the read path and the policy: a hit marks the entry read (a count it
//! stops writing once saturated, so a hot key's line is not written on every hit).

use std::num::NonZeroUsize;

use super::engine::{Engine, Removed};
use super::slot::{Probe, Slot, SlotKey};
use super::striped::{StripedLock, StripedReadGuard, StripedWriteGuard};
use crate::clock::Moment;

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
/// What an entry of a byte-bounded store is guessed to weigh, for the table's first size.
const GUESSED_ENTRY_BYTES: u64 = 1024;

impl Store {
    pub(super) fn new(bound: Bound) -> Store {
        let parallelism = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let (capacity, floor) = match bound {
            Bound::Entries(entries) => (entries, MIN_SHARD_ENTRIES),
            Bound::Bytes(bytes) => (bytes, MIN_SHARD_BYTES),
        };
        // Four per core, fewer for a small bound.
        let mut shards = (parallelism * 4).next_power_of_two().min(MAX_SHARDS);
        while shards > 1 && capacity / (shards as u64) < floor {
            shards /= 2;
        }
        let per_shard = capacity.div_ceil(shards as u64).max(1);
        let expected = match bound {
            Bound::Entries(_) => per_shard,
            Bound::Bytes(_) => (per_shard / GUESSED_ENTRY_BYTES).max(MIN_SHARD_ENTRIES),
        };
        let by_bytes = matches!(bound, Bound::Bytes(_));
        let shards = (0..shards)
            .map(|_| {
                Shard(StripedLock::new(Engine::new(
                    per_shard,
                    by_bytes,
                    expected as usize,
                )))
            })
            .collect();
        Store { shards }
    }

    // The table (hashbrown) probes with the low bits and tags with the top seven, so the shard
    // takes bits neither uses; otherwise every key of a shard would share a tag or a home bucket.
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
        let mut removed = Removed::default();
        self.write(probe.hash)
            .insert(probe, key, slot, now, &mut removed);
        removed
    }

    /// Removes the entry under `probe` if `remove` says so.
    pub(super) fn remove_if(
        &self,
        probe: &Probe<'_>,
        remove: impl FnOnce(&Slot) -> bool,
    ) -> Option<Slot> {
        self.write(probe.hash).remove_if(probe, remove)
    }

    /// Empties the store, shard by shard (an entry stored in a shard after it was emptied
    /// stays).
    pub(super) fn drain(&self) -> Vec<Slot> {
        let mut drained = Vec::new();
        for shard in self.shards.iter() {
            let mut engine = shard.0.write();
            drained.extend(engine.drain());
        }
        drained
    }

    /// Removes every entry that expired by `now`.
    pub(super) fn remove_expired(&self, now: Moment) -> Vec<Slot> {
        let mut removed = Vec::new();
        for shard in self.shards.iter() {
            // A write holds back every hit on the shard: none for nothing to remove.
            if shard.0.read().any_expired(now) {
                shard.0.write().remove_expired(now, &mut removed);
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
