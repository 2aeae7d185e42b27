//! One shard's entries and its eviction policy: a hashbrown table holding every entry in its
//! bucket, one cache line each, and a clock hand over the buckets that evicts what was not
//! read since it last passed.
//!
//! Why not quick_cache, the engine of the second to eighth rounds (ARCHITECTURE.md, "The
//! memory hit at the floor", ninth round): its table holds indices into a slab of entries, so
//! a hit reads the table's control bytes, an index, the slab's entry (88 bytes, over two lines)
//! and the value, each load waiting for the one before. In a store that holds several sites'
//! entries, read in no particular order, those were the hit's cost (2.2-2.6x
//! `#[concurrent_cached]` on the second machine); held in the bucket, on a line of its own, an
//! entry is one load after the control bytes, as a `HashMap`'s is.
//!
//! The policy is a CLOCK with a count of reads (up to 3) per entry: a read raises the count
//! until it saturates (after which a hot entry's line is no longer written by its hits); the
//! hand lowers it as it passes, and evicts an entry whose count is 0, or that has expired. A
//! new entry starts at 0 (a key read once, as a scan reads it, leaves on the hand's next pass);
//! a refill keeps the count of the entry it replaces.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::slot::{Prehashed, Probe, Slot, SlotKey};
use crate::clock::Moment;
use crate::observe::Eviction;

/// An entry on a cache line of its own: a hit reads the key, the value and its times from the
/// one line.
#[repr(align(64))]
struct Entry {
    key: SlotKey,
    slot: Slot,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 64);

/// Up to this many buckets are allocated when a shard is made; the table grows past it as
/// entries arrive (a large bound allocates as it fills, not at once).
const PRESIZED: usize = 4_096;

pub(super) struct Engine {
    table: HashTable<Entry>,
    /// The summed weight of the entries (1 each under an entry bound).
    weight: u64,
    capacity: u64,
    by_bytes: bool,
    /// The bucket the clock's hand is at.
    hand: usize,
    /// Keys seen lately that the shard does not hold (`Ghosts`): a full shard admits only them.
    ghosts: Ghosts,
}

/// What one write displaced or evicted, and why: counted and dropped by the caller once the
/// shard's lock is released (a value's drop is the user's code).
#[derive(Default)]
pub(super) struct Removed {
    pub(super) slots: Vec<(Eviction, Slot)>,
}

impl Engine {
    /// A shard bounded at `capacity` (entries, or bytes when `by_bytes`), expecting to hold
    /// about `expected` entries.
    pub(super) fn new(capacity: u64, by_bytes: bool, expected: usize) -> Engine {
        Engine {
            table: HashTable::with_capacity(expected.min(PRESIZED)),
            weight: 0,
            capacity: capacity.max(1),
            by_bytes,
            hand: 0,
            ghosts: Ghosts::new(expected.min(PRESIZED)),
        }
    }

    /// An entry's weight for the bound: its own under a byte bound (at least 1), else 1.
    fn weight_of(&self, slot: &Slot) -> u64 {
        if self.by_bytes {
            u64::from(slot.weight.max(1))
        } else {
            1
        }
    }

    /// The entry under `probe`, marked read for the policy.
    #[inline(always)]
    pub(super) fn get(&self, probe: &Probe<'_>) -> Option<&Slot> {
        let entry = self
            .table
            .find(probe.hash, |entry| probe.equivalent(&entry.key))?;
        entry.slot.mark.read();
        Some(&entry.slot)
    }

    /// Stores `slot` under `key`, in place of the entry there (`replaced`, whose read count it
    /// keeps), evicting by the hand until it fits. Not stored (`size`): an entry heavier than
    /// the whole shard, and, while the shard is full, one under a key it neither holds nor has
    /// seen lately (`Ghosts`).
    pub(super) fn insert(
        &mut self,
        probe: &Probe<'_>,
        key: SlotKey,
        mut slot: Slot,
        now: Moment,
        removed: &mut Removed,
    ) {
        let mut replacing = false;
        if let Ok(found) = self
            .table
            .find_entry(probe.hash, |entry| probe.equivalent(&entry.key))
        {
            replacing = true;
            let (old, _) = found.remove();
            self.weight -= self.weight_of(&old.slot);
            slot.mark.keep_reads_of(&old.slot.mark);
            removed.slots.push((Eviction::Replaced, old.slot));
        }
        let weight = self.weight_of(&slot);
        if weight > self.capacity {
            removed.slots.push((Eviction::Size, slot));
            return;
        }
        self.ghosts.cover(self.table.len());
        if self.weight + weight > self.capacity
            && !replacing
            && !self.ghosts.take(probe.hash)
            && !self.room_from_expired(weight, now, removed)
        {
            // A full shard refuses a key it neither holds nor has seen lately: a key asked once
            // (a scan, a long tail) would push out one that is read again.
            self.ghosts.remember(probe.hash);
            removed.slots.push((Eviction::Size, slot));
            return;
        }
        while self.weight + weight > self.capacity && self.evict(now, removed) {}
        self.table
            .insert_unique(probe.hash, Entry { key, slot }, |entry| {
                Prehashed.hash_one(&entry.key)
            });
        self.weight += weight;
    }

    /// Whether evicting expired entries from the next few buckets under the hand (their counts
    /// untouched) made room for `weight`: dead entries do not hold a new key out.
    fn room_from_expired(&mut self, weight: u64, now: Moment, removed: &mut Removed) -> bool {
        const LOOK_AHEAD: usize = 32;
        let buckets = self.table.num_buckets();
        for step in 0..LOOK_AHEAD.min(buckets) {
            if self.weight + weight <= self.capacity {
                break;
            }
            let bucket = (self.hand + step) % buckets;
            let expired = self
                .table
                .get_bucket(bucket)
                .is_some_and(|entry| entry.slot.expires_at <= now);
            if expired {
                if let Ok(found) = self.table.get_bucket_entry(bucket) {
                    let (entry, _) = found.remove();
                    self.let_go(entry, Eviction::Expired, removed);
                }
            }
        }
        self.weight + weight <= self.capacity
    }

    /// Counts out an entry the shard let go, and remembers its key.
    fn let_go(&mut self, entry: Entry, cause: Eviction, removed: &mut Removed) {
        self.weight -= self.weight_of(&entry.slot);
        self.ghosts.remember(Prehashed.hash_one(&entry.key));
        removed.slots.push((cause, entry.slot));
    }

    /// Gives back a table grown for many entries that now holds few (heavy ones, under a byte
    /// bound): the hand walks buckets, full or empty, and a walk under the write lock holds
    /// every reader of the shard.
    fn shrink_if_sparse(&mut self) {
        let buckets = self.table.num_buckets();
        if buckets > 64 && self.table.len() * 8 < buckets {
            self.table
                .shrink_to(self.table.len() * 2, |entry| Prehashed.hash_one(&entry.key));
            self.hand = 0;
        }
    }

    /// Moves the hand to the first entry that has expired or was not read since it last
    /// passed, lowering the read counts it passes, and evicts it. False for an empty shard.
    fn evict(&mut self, now: Moment, removed: &mut Removed) -> bool {
        if self.table.is_empty() {
            return false;
        }
        self.shrink_if_sparse();
        // Each pass lowers every count by one, and a count is at most 3: the fourth pass
        // evicts, so this ends.
        loop {
            if self.hand >= self.table.num_buckets() {
                self.hand = 0;
            }
            let bucket = self.hand;
            self.hand += 1;
            let Some(entry) = self.table.get_bucket_mut(bucket) else {
                continue;
            };
            let expired = entry.slot.expires_at <= now;
            if !expired && entry.slot.mark.passed() {
                continue;
            }
            let Some(found) = self.table.get_bucket_entry(bucket).ok() else {
                continue;
            };
            let (entry, _) = found.remove();
            let cause = if expired {
                Eviction::Expired
            } else {
                Eviction::Size
            };
            self.let_go(entry, cause, removed);
            return true;
        }
    }

    /// Removes the entry under `probe` if `remove` says so.
    pub(super) fn remove_if(
        &mut self,
        probe: &Probe<'_>,
        remove: impl FnOnce(&Slot) -> bool,
    ) -> Option<Slot> {
        let found = self
            .table
            .find_entry(probe.hash, |entry| probe.equivalent(&entry.key))
            .ok()?;
        if !remove(&found.get().slot) {
            return None;
        }
        let (entry, _) = found.remove();
        self.weight -= self.weight_of(&entry.slot);
        self.ghosts.remember(probe.hash);
        Some(entry.slot)
    }

    /// Every entry, removed.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Slot> + '_ {
        self.weight = 0;
        self.table.drain().map(|entry| entry.slot)
    }

    /// Whether any entry expired by `now` (read under the read lock, before a write for it).
    pub(super) fn any_expired(&self, now: Moment) -> bool {
        self.table.iter().any(|entry| entry.slot.expires_at <= now)
    }

    /// Removes every entry that expired by `now`.
    pub(super) fn remove_expired(&mut self, now: Moment, removed: &mut Vec<Slot>) {
        let expired: Vec<Entry> = self
            .table
            .extract_if(|entry| entry.slot.expires_at <= now)
            .collect();
        for entry in expired {
            self.weight -= self.weight_of(&entry.slot);
            self.ghosts.remember(Prehashed.hash_one(&entry.key));
            removed.push(entry.slot);
        }
        self.shrink_if_sparse();
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    pub(super) fn weight(&self) -> u64 {
        self.weight
    }
}

/// Keys a shard saw lately and does not hold: the ones it refused, evicted or had removed, by
/// hash, in buckets of four slots, two slots per entry the shard holds (grown, and emptied, as
/// the shard grows). A full shard admits a new entry only for a key found here, so a key is
/// stored on its second miss while the shard is full, and at once while it has room.
///
/// Four ways, not one: with one slot a hash, two keys of one slot refused in turn overwrote each
/// other's ghost on every miss and were never admitted (review 28: 600 of a 2,000-key working
/// set admitted in 20 passes). A key admitted leaves its slot.
struct Ghosts {
    /// The upper half of each hash, in the bucket its lower bits pick (0: none).
    slots: Box<[[u32; WAYS]]>,
    /// Turns the slot a new ghost takes in a full bucket.
    turn: u32,
}

const WAYS: usize = 4;

impl Ghosts {
    fn new(entries: usize) -> Ghosts {
        let buckets = (entries * 2).div_ceil(WAYS).max(1).next_power_of_two();
        Ghosts {
            slots: vec![[0; WAYS]; buckets].into_boxed_slice(),
            turn: 0,
        }
    }

    /// Two slots per entry of a shard holding `entries`: with fewer, a full shard's misses
    /// overwrite each other's ghosts before their keys are asked again, and it admits nothing
    /// (review 28: a byte bound of small entries held 85 entries a slot).
    fn cover(&mut self, entries: usize) {
        if entries * 2 > self.slots.len() * WAYS {
            *self = Ghosts::new(entries);
        }
    }

    fn bucket(&mut self, hash: u64) -> &mut [u32; WAYS] {
        // The table tags with the top seven bits and the store shards by bits 32 and up: the
        // fingerprint is the upper half, the bucket the lower.
        let buckets = self.slots.len();
        &mut self.slots[hash as usize & (buckets - 1)]
    }

    fn fingerprint(hash: u64) -> u32 {
        ((hash >> 32) as u32).max(1)
    }

    fn remember(&mut self, hash: u64) {
        let fingerprint = Ghosts::fingerprint(hash);
        self.turn = self.turn.wrapping_add(1);
        let turn = self.turn as usize;
        let bucket = self.bucket(hash);
        if bucket.contains(&fingerprint) {
            return;
        }
        let way = bucket
            .iter()
            .position(|&slot| slot == 0)
            .unwrap_or(turn % WAYS);
        bucket[way] = fingerprint;
    }

    /// Whether `hash` is a ghost; one that is leaves its slot (its key is being admitted).
    fn take(&mut self, hash: u64) -> bool {
        let fingerprint = Ghosts::fingerprint(hash);
        let bucket = self.bucket(hash);
        match bucket.iter().position(|&slot| slot == fingerprint) {
            Some(way) => {
                bucket[way] = 0;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::backend::memory::slot::Mark;
    use crate::backend::memory::Stored;
    use crate::clock::Clock;
    use crate::shape::{AnyValue, Downcast};
    use crate::KeyBuilder;

    fn text(n: u32) -> String {
        KeyBuilder::new()
            .lit("k:")
            .arg(&n)
            .finish()
            .as_str()
            .to_owned()
    }

    fn slot(now: Moment, weight: u32, ttl: Duration) -> Slot {
        let expires_at = now + coarsetime::Duration::from(ttl);
        Slot {
            value: Stored::from(Arc::new(weight) as AnyValue),
            expires_at,
            refresh_at: expires_at,
            mark: Mark::new(0),
            weight,
        }
    }

    fn put(engine: &mut Engine, now: Moment, n: u32, weight: u32) -> Vec<(Eviction, u32)> {
        let key = KeyBuilder::new().lit("k:").arg(&n).finish();
        let text = text(n);
        let mut removed = Removed::default();
        engine.insert(
            &Probe::text(&text),
            SlotKey::new(&key),
            slot(now, weight, Duration::from_secs(60)),
            now,
            &mut removed,
        );
        removed
            .slots
            .into_iter()
            .map(|(cause, slot)| (cause, slot.weight))
            .collect()
    }

    fn has(engine: &Engine, n: u32) -> bool {
        engine.get(&Probe::text(&text(n))).is_some()
    }

    #[test]
    fn a_refill_keeps_the_read_count_and_a_saturated_count_is_not_written() {
        let now = Clock::Real.moment();
        let mut engine = Engine::new(10, false, 10);
        put(&mut engine, now, 1, 1);
        for _ in 0..5 {
            assert!(has(&engine, 1));
        }
        let text = text(1);
        let reads = |engine: &Engine| {
            engine
                .table
                .find(Probe::text(&text).hash, |_| true)
                .map(|entry| entry.slot.mark.reads())
        };
        assert_eq!(reads(&engine), Some(3), "saturated at 3");
        assert_eq!(put(&mut engine, now, 1, 1), [(Eviction::Replaced, 1)]);
        assert_eq!(reads(&engine), Some(3), "kept by the refill");
    }

    #[test]
    fn a_full_shard_stores_a_new_key_on_its_second_miss_and_evicts_an_unread_one() {
        let now = Clock::Real.moment();
        let mut engine = Engine::new(2, false, 2);
        put(&mut engine, now, 1, 1);
        put(&mut engine, now, 2, 1);
        assert!(has(&engine, 1), "read: 1 outlasts 2");
        assert_eq!(
            put(&mut engine, now, 3, 1),
            [(Eviction::Size, 1)],
            "refused"
        );
        assert!(!has(&engine, 3));
        assert_eq!(
            put(&mut engine, now, 3, 1),
            [(Eviction::Size, 1)],
            "2 evicted"
        );
        assert!(has(&engine, 1) && !has(&engine, 2) && has(&engine, 3));
        // Evicted, 2 is a key seen lately: admitted on its next miss.
        assert_eq!(put(&mut engine, now, 2, 1).len(), 1);
        assert!(has(&engine, 2));
        assert_eq!((engine.len(), engine.weight()), (2, 2));
    }

    #[test]
    fn a_refill_heavier_than_the_room_left_is_stored() {
        let now = Clock::Real.moment();
        let mut engine = Engine::new(10, true, 4);
        put(&mut engine, now, 1, 4);
        put(&mut engine, now, 2, 6);
        assert_eq!(
            put(&mut engine, now, 1, 8),
            [(Eviction::Replaced, 4), (Eviction::Size, 6)],
            "the key held is refilled, another evicted for it"
        );
        assert!(has(&engine, 1) && !has(&engine, 2));
        assert_eq!(engine.weight(), 8);
    }

    #[test]
    fn a_removed_key_is_admitted_again_at_once() {
        let now = Clock::Real.moment();
        let mut engine = Engine::new(2, false, 2);
        put(&mut engine, now, 1, 1);
        put(&mut engine, now, 2, 1);
        assert!(engine.remove_if(&Probe::text(&text(1)), |_| true).is_some());
        put(&mut engine, now, 3, 1);
        assert!(put(&mut engine, now, 1, 1).len() == 1 && has(&engine, 1));
    }

    #[test]
    fn the_hand_takes_an_expired_entry_however_often_it_was_read() {
        let now = Clock::Real.moment();
        let mut engine = Engine::new(2, false, 2);
        put(&mut engine, now, 1, 1);
        for _ in 0..3 {
            assert!(has(&engine, 1), "read");
        }
        let mut removed = Removed::default();
        let key = KeyBuilder::new().lit("k:").arg(&2u32).finish();
        engine.insert(
            &Probe::text(&text(2)),
            SlotKey::new(&key),
            slot(now, 1, Duration::ZERO),
            now,
            &mut removed,
        );
        for _ in 0..3 {
            assert!(engine.get(&Probe::text(&text(2))).is_some(), "read");
        }
        // A new key, in a full shard: admitted, since an expired entry makes room (review 28:
        // dead entries held new keys out), whatever its count.
        assert_eq!(put(&mut engine, now, 3, 1), [(Eviction::Expired, 1)]);
        assert!(has(&engine, 1) && has(&engine, 3));
    }

    // ---- review 28 (adversarial) ----

    fn put_ttl(
        engine: &mut Engine,
        now: Moment,
        n: u32,
        weight: u32,
        ttl: Duration,
    ) -> Vec<(Eviction, u32)> {
        let key = KeyBuilder::new().lit("k:").arg(&n).finish();
        let text = text(n);
        let mut removed = Removed::default();
        engine.insert(
            &Probe::text(&text),
            SlotKey::new(&key),
            slot(now, weight, ttl),
            now,
            &mut removed,
        );
        removed
            .slots
            .into_iter()
            .map(|(cause, slot)| (cause, slot.weight))
            .collect()
    }

    /// Review 28 (fixed; the text says what was wrong): R28-1: the ghost table is sized by the bound, up front (the table is not: PRESIZED).
    #[test]
    fn review28_ghosts_are_not_allocated_up_front_for_a_large_bound() {
        let engine = Engine::new(1 << 28, false, 1 << 28);
        let bytes = engine.ghosts.slots.len() * std::mem::size_of::<[u32; WAYS]>();
        assert!(
            bytes <= PRESIZED * 64,
            "an empty shard bounded at 2^28 entries allocated {bytes} bytes of ghosts up front"
        );
    }

    /// Review 28 (fixed; the text says what was wrong): R28-2: a byte-bounded full shard refuses the refill of a key it holds when the new value
    /// is heavier: the old value is dropped (Replaced), the new one refused (Size), the hot key
    /// is gone and the next call loads again.
    #[test]
    fn review28_a_heavier_refill_of_a_resident_hot_key_is_stored() {
        let now = Clock::Real.moment();
        let mut engine = Engine::new(10, true, 8);
        put(&mut engine, now, 1, 5);
        put(&mut engine, now, 2, 5);
        for _ in 0..3 {
            assert!(has(&engine, 1));
        }
        let removed = put(&mut engine, now, 1, 6);
        assert!(
            has(&engine, 1),
            "hot key 1 refilled (5 -> 6 bytes) in a full shard is not held; removed: {:?}",
            removed
        );
    }

    /// Review 28 (fixed; the text says what was wrong): R28-3: a full shard whose entries have all expired refuses a new key (admission is asked
    /// before the hand, which would take an expired entry for free).
    #[test]
    fn review28_a_shard_full_of_expired_entries_admits_a_new_key() {
        let now = Clock::Real.moment();
        let mut engine = Engine::new(2, false, 2);
        put_ttl(&mut engine, now, 1, 1, Duration::ZERO);
        put_ttl(&mut engine, now, 2, 1, Duration::ZERO);
        let removed = put(&mut engine, now, 3, 1);
        assert!(
            has(&engine, 3),
            "new key refused while both held entries are expired; removed: {:?}",
            removed
        );
    }

    /// Review 28 (fixed; the text says what was wrong): R28-4: a key removed by `remove_expired` (run_pending_tasks) is not remembered as a ghost,
    /// unlike one removed on read (`remove_if`) or by the hand: its refill on a full shard is
    /// refused.
    #[test]
    fn review28_a_key_swept_by_remove_expired_is_admitted_again_like_one_removed_on_read() {
        let admitted_after = |sweep: bool| {
            let now = Clock::Real.moment();
            let mut engine = Engine::new(2, false, 2);
            put_ttl(&mut engine, now, 1, 1, Duration::ZERO);
            put(&mut engine, now, 2, 1);
            if sweep {
                let mut removed = Vec::new();
                engine.remove_expired(now, &mut removed);
                assert_eq!(removed.len(), 1);
            } else {
                assert!(engine
                    .remove_if(&Probe::text(&text(1)), |slot| slot.expires_at <= now)
                    .is_some());
            }
            put(&mut engine, now, 3, 1); // takes the room
            put(&mut engine, now, 1, 1); // the refill
            has(&engine, 1)
        };
        assert!(admitted_after(false), "removed on read: admitted");
        assert!(admitted_after(true), "swept by remove_expired: refused");
    }

    /// Review 28 (fixed; the text says what was wrong): R28-5: under a byte bound the table keeps the buckets it grew to for many light entries;
    /// once it holds a few heavy ones, every eviction walks the hand over the empty buckets
    /// (O(num_buckets) per insert, under the shard's write lock).
    #[test]
    fn review28_eviction_does_not_walk_empty_buckets() {
        let now = Clock::Real.moment();
        let heavy = |engine: &mut Engine, from: u32| {
            let started = std::time::Instant::now();
            for n in from..from + 400 {
                put(engine, now, n, 1 << 17); // refused: a ghost now
                put(engine, now, n, 1 << 17); // admitted: evicts one
            }
            started.elapsed()
        };
        let mut fresh = Engine::new(1 << 20, true, 32);
        heavy(&mut fresh, 1_000_000);
        let fresh_time = heavy(&mut fresh, 2_000_000);

        let mut grown = Engine::new(1 << 20, true, 32);
        for n in 0..400_000 {
            put(&mut grown, now, n, 1);
        }
        heavy(&mut grown, 1_000_000);
        let buckets = grown.table.num_buckets();
        let len = grown.len();
        let grown_time = heavy(&mut grown, 2_000_000);
        assert!(
            grown_time < fresh_time * 10,
            "800 heavy inserts: {grown_time:?} with {len} entries in {buckets} buckets, \
             {fresh_time:?} in a fresh table of {} buckets",
            fresh.table.num_buckets()
        );
    }

    /// R28 (no finding): the hand ends on a shard of capacity 1, with every entry saturated,
    /// and after growth; the weight never passes the bound.
    #[test]
    fn review28_the_hand_ends_when_every_entry_is_saturated() {
        let now = Clock::Real.moment();
        for capacity in [1u64, 2, 64] {
            let mut engine = Engine::new(capacity, false, 1);
            for n in 0..capacity as u32 {
                put(&mut engine, now, n, 1);
                for _ in 0..5 {
                    assert!(has(&engine, n));
                }
            }
            for n in 1000..1100 {
                put(&mut engine, now, n, 1);
                put(&mut engine, now, n, 1);
                assert!(engine.weight() <= capacity && engine.len() as u64 == engine.weight());
            }
        }
    }

    /// Review 28 (fixed; the text says what was wrong): R28-6: 30 bits of the epoch are kept (`Mark`): epochs less than 2^30 apart never alias,
    /// and a read count never carries into the epoch.
    #[test]
    fn review28_epochs_less_than_2_pow_30_apart_are_told_apart() {
        for epoch in [0u64, 1, 2, 7, (1 << 30) - 1, 1 << 30, (1 << 31) + 5] {
            let mark = Mark::new(epoch);
            for _ in 0..10 {
                mark.read();
            }
            assert!(mark.in_epoch(epoch), "{epoch}");
            for other in [epoch + 1, epoch + (1 << 29), epoch + (1 << 30) - 1] {
                assert!(!mark.in_epoch(other), "{epoch} read as {other}");
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u32, u32),
        Read(u32),
        Remove(u32),
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..40u32, 1..30u32).prop_map(|(n, w)| Op::Put(n, w)),
            3 => (0..40u32).prop_map(Op::Read),
            1 => (0..40u32).prop_map(Op::Remove),
            1 => Just(Op::Expire),
        ]
    }

    proptest! {
        /// Against a model: what the engine holds is exactly what was stored and not reported
        /// removed, its weight is their sum and within the bound, and every removal is
        /// reported once.
        #[test]
        fn the_engine_reports_every_entry_it_lets_go(
            by_bytes in any::<bool>(),
            capacity in 1..100u64,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let start = Clock::Real.moment();
            let mut engine = Engine::new(capacity, by_bytes, 8);
            let mut model: BTreeMap<u32, (u32, bool)> = BTreeMap::new();
            let weight = |w: u32| if by_bytes { u64::from(w) } else { 1 };
            let mut now = start;
            for op in ops {
                match op {
                    Op::Put(n, w) => {
                        let key = KeyBuilder::new().lit("k:").arg(&n).finish();
                        let text = text(n);
                        let mut removed = Removed::default();
                        // Every other entry short-lived, expired by the next `Expire`.
                        let ttl = Duration::from_secs(if n % 2 == 0 { 1 } else { 3_600 });
                        let mut slot = slot(now, w, ttl);
                        slot.value = Stored::from(Arc::new(n) as AnyValue);
                        engine.insert(&Probe::text(&text), SlotKey::new(&key), slot, now, &mut removed);
                        let was = model.remove(&n);
                        let mut stored = true;
                        for (cause, slot) in removed.slots {
                            let gone = *slot.value.downcast_ref::<u32>().expect("a u32");
                            if cause == Eviction::Replaced {
                                prop_assert!(gone == n && was.is_some(), "replaced {}", gone);
                            } else if gone == n {
                                stored = false;
                            } else {
                                prop_assert!(model.remove(&gone).is_some(), "{} reported twice", gone);
                            }
                        }
                        if stored {
                            model.insert(n, (w, n % 2 == 0));
                        }
                    }
                    Op::Read(n) => {
                        prop_assert_eq!(has(&engine, n), model.contains_key(&n), "read {}", n);
                    }
                    Op::Remove(n) => {
                        let removed = engine.remove_if(&Probe::text(&text(n)), |_| true);
                        prop_assert_eq!(removed.is_some(), model.remove(&n).is_some());
                    }
                    Op::Expire => {
                        now += coarsetime::Duration::from_secs(2);
                        prop_assert_eq!(engine.any_expired(now), model.values().any(|(_, short)| *short));
                        let mut removed = Vec::new();
                        engine.remove_expired(now, &mut removed);
                        for slot in removed {
                            let gone = *slot.value.downcast_ref::<u32>().expect("a u32");
                            prop_assert_eq!(model.remove(&gone).map(|(_, short)| short), Some(true));
                        }
                        // Later puts are short-lived from the new now.
                        model.values_mut().for_each(|(_, short)| *short = false);
                    }
                }
                let held: u64 = model.values().map(|(w, _)| weight(*w)).sum();
                prop_assert_eq!(engine.weight(), held);
                prop_assert_eq!(engine.len(), model.len());
                prop_assert!(engine.weight() <= capacity.max(1));
            }
        }
    }
}
