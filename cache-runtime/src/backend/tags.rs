//! Tag generations: what makes a family of entries invalid in O(1).
//!
//! Every tag has a current *generation*, a random `u64`. A loading leader captures the
//! generations of its entry's tags before it runs the body and stores them with the value; a
//! read serves the entry only if each stored generation is still its tag's current one.
//! Invalidating a tag forgets its generation: no stored entry can match again (the next leader
//! draws a new random one), whatever the number of entries, and a load that began before the
//! invalidation stores a value that is never served. Nothing here lists a tag's members.
//!
//! A [`TagTable`] holds generations in process. For a memory backend it is the authority: a
//! generation is created on first use. For a tiered backend it holds what this process learned
//! from Redis, each with the bus epoch it was learned in, trusted only while that epoch lasts.
//! The table is bounded: a full shard is cleared, which only costs misses (an absent tag
//! matches no entry), never a stale hit.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::key::CacheKey;

/// A power of two; tags are few next to keys (categories, tenants), so 32 shards suffice.
const SHARDS: usize = 32;

/// A shard holding this many tags is cleared before the next insert: 65,536 tags in all.
const PER_SHARD: usize = 2_048;

/// Tag invalidations this process has made or heard of, on any backend. A flight's leader
/// reads it before it captures its tags' generations; a follower accepts the leader's value
/// only if it has not moved since, since a tag invalidation cannot detach flights (nothing
/// lists which flights carry a tag). Moved after the generation is gone, never before: a
/// leader that captured the old generation then read the count before the move.
static TAG_INVALIDATIONS: AtomicU64 = AtomicU64::new(0);

/// The count of tag invalidations seen so far (see [`TAG_INVALIDATIONS`]).
pub(crate) fn tag_invalidations() -> u64 {
    TAG_INVALIDATIONS.load(Ordering::Acquire)
}

/// Records that a tag's generation is gone (here, in Redis, or in a peer's message).
pub(crate) fn note_tag_invalidation() {
    TAG_INVALIDATIONS.fetch_add(1, Ordering::AcqRel);
}

/// A generation as this table knows it.
#[derive(Clone, Copy)]
struct Known {
    generation: u64,
    /// The tiered bus epoch it was learned in (0 for a memory backend).
    epoch: u64,
}

/// Tag -> current generation, sharded behind read-write locks; reads never write.
pub(crate) struct TagTable {
    hasher: RandomState,
    shards: Box<[RwLock<HashMap<String, Known>>]>,
    /// Moved by every [`forget`](Self::forget): a generation read from Redis is learned only
    /// if no invalidation arrived while it was being read.
    forgotten: AtomicU64,
}

impl TagTable {
    pub(crate) fn new() -> Self {
        TagTable {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            forgotten: AtomicU64::new(0),
        }
    }

    fn shard(&self, tag: &str) -> &RwLock<HashMap<String, Known>> {
        &self.shards[(self.hasher.hash_one(tag) as usize) % SHARDS]
    }

    /// The tag's generation, if it is known in `epoch`.
    pub(crate) fn current(&self, tag: &str, epoch: u64) -> Option<u64> {
        let shard = self
            .shard(tag)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard
            .get(tag)
            .filter(|known| known.epoch == epoch)
            .map(|known| known.generation)
    }

    /// Whether `generations` are the current ones of `tags`, in order.
    pub(crate) fn all_current(&self, tags: &[CacheKey], generations: &[u64], epoch: u64) -> bool {
        tags.len() == generations.len()
            && tags
                .iter()
                .zip(generations)
                .all(|(tag, &generation)| self.current(tag.as_str(), epoch) == Some(generation))
    }

    /// The tag's generation, created (random) if it has none: the memory backend's leader.
    pub(crate) fn current_or_create(&self, tag: &str) -> u64 {
        if let Some(generation) = self.current(tag, 0) {
            return generation;
        }
        let mut shard = self
            .shard(tag)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = shard.get(tag) {
            return known.generation;
        }
        if shard.len() >= PER_SHARD {
            shard.clear();
        }
        let generation = fastrand::u64(..);
        shard.insert(
            tag.to_owned(),
            Known {
                generation,
                epoch: 0,
            },
        );
        generation
    }

    /// The value of the forget count, to give [`learn`](Self::learn) after a read from Redis.
    pub(crate) fn forgotten(&self) -> u64 {
        self.forgotten.load(Ordering::Acquire)
    }

    /// Records a generation read from Redis in `epoch`, unless a tag was forgotten since
    /// `forgotten_before` was read (the invalidation may have crossed the read).
    pub(crate) fn learn(&self, tag: &str, generation: u64, epoch: u64, forgotten_before: u64) {
        let mut shard = self
            .shard(tag)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Checked under the shard's lock, which `forget` takes too: a forget either moved the
        // count before this check, or removes what this inserts after it.
        if self.forgotten.load(Ordering::Acquire) != forgotten_before {
            return;
        }
        if shard.len() >= PER_SHARD && !shard.contains_key(tag) {
            shard.clear();
        }
        shard.insert(tag.to_owned(), Known { generation, epoch });
    }

    /// Forgets the tag's generation: every entry stored under it becomes a miss.
    pub(crate) fn forget(&self, tag: &str) {
        let mut shard = self
            .shard(tag)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        shard.remove(tag);
        self.forgotten.fetch_add(1, Ordering::AcqRel);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

impl Default for TagTable {
    fn default() -> Self {
        TagTable::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(names: &[&str]) -> Vec<CacheKey> {
        names
            .iter()
            .map(|name| crate::KeyBuilder::new().lit(name).finish())
            .collect()
    }

    #[test]
    fn a_forgotten_tag_matches_no_stored_generation() {
        let table = TagTable::new();
        let first = table.current_or_create("products");
        assert_eq!(table.current_or_create("products"), first);
        assert!(table.all_current(&tags(&["products"]), &[first], 0));
        table.forget("products");
        assert!(!table.all_current(&tags(&["products"]), &[first], 0));
        let second = table.current_or_create("products");
        assert_ne!(first, second, "a new random generation");
        assert!(!table.all_current(&tags(&["products"]), &[first], 0));
        assert!(
            !table.all_current(&tags(&["products", "x"]), &[second], 0),
            "lengths differ"
        );
    }

    #[test]
    fn a_generation_read_across_a_forget_is_not_learned() {
        let table = TagTable::new();
        let before = table.forgotten();
        table.forget("other");
        table.learn("products", 7, 3, before);
        assert_eq!(table.current("products", 3), None);
        table.learn("products", 7, 3, table.forgotten());
        assert_eq!(table.current("products", 3), Some(7));
        assert_eq!(table.current("products", 4), None, "another epoch");
    }

    #[test]
    fn a_full_shard_is_cleared_and_only_misses() {
        let table = TagTable::new();
        let generations: Vec<u64> = (0..PER_SHARD * SHARDS * 2)
            .map(|n| table.current_or_create(&format!("t:{n}")))
            .collect();
        assert!(table.len() <= PER_SHARD * SHARDS);
        let still = (0..generations.len())
            .filter(|&n| table.current(&format!("t:{n}"), 0) == Some(generations[n]))
            .count();
        assert!(still < generations.len(), "some were cleared");
    }
}
