//! What the memory store keeps per entry: a compact copy of the key's text ([`SlotKey`]) and the
//! entry ([`Slot`]: the value, when it expires, when it is due for a refresh, its L1 epoch, its
//! weight), and the probe a read looks them up with ([`Probe`]).
//!
//! The key is hashed once per operation, by [`text_hash`]; the store's tables are given that
//! hash through [`Prehashed`] rather than hashing again.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock};

use ahash::RandomState;

use super::stored::Stored;
use crate::clock::Moment;
use crate::key::{padded, CacheKey, HEAD};

/// Texts of up to this many bytes are held in the slot itself; 22 keeps a [`SlotKey`] at 24
/// bytes and covers `user:<id>`-style keys. Longer ones are shared text (`Arc<str>`), one
/// more cache line for the read that compares them.
const INLINE: usize = 22;

/// The text of an entry's key, as the store holds it.
#[derive(Clone)]
pub(super) enum SlotKey {
    /// Invariant: `bytes[len..]` are zeros, so equal texts are equal arrays; a text is inline
    /// exactly while it fits.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Heap(Arc<str>),
}

impl SlotKey {
    pub(super) fn new(text: &str) -> SlotKey {
        if text.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            SlotKey::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            SlotKey::Heap(Arc::from(text))
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            SlotKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            SlotKey::Heap(text) => text.as_bytes(),
        }
    }
}

impl PartialEq for SlotKey {
    fn eq(&self, other: &SlotKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SlotKey {}

impl Hash for SlotKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(text_hash(self.as_bytes()));
    }
}

/// The hash of a key's text: aHash, keyed once per process from the OS's randomness, since
/// keys are request data (ARCHITECTURE.md, "The memory hit at the floor"). A text of up to 16
/// bytes is hashed as its zero-padded little-endian `u128` and its length ([`head_hash`]);
/// a longer one as one `write` of the bytes (`str`'s `Hash` adds a terminator, which a single
/// field does not need).
#[inline]
pub(super) fn text_hash(text: &[u8]) -> u64 {
    if text.len() <= HEAD {
        return head_hash(padded(text), text.len());
    }
    let mut hasher = keyed().build_hasher();
    hasher.write(text);
    hasher.finish()
}

/// The hash of a text of up to 16 bytes, from its head as `CacheKey` holds it: two words in
/// registers, so that a hit's hash does not read its key's bytes at other widths than they
/// were stored with.
#[inline(always)]
fn head_hash(head: u128, len: usize) -> u64 {
    let mut hasher = keyed().build_hasher();
    hasher.write_u128(head);
    hasher.write_usize(len);
    hasher.finish()
}

#[inline(always)]
fn keyed() -> &'static RandomState {
    static KEYED: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    &KEYED
}

/// A lookup by a key's text, with its hash computed once.
pub(super) struct Probe<'a> {
    pub(super) hash: u64,
    pub(super) text: ProbeText<'a>,
}

/// What a probe compares: a whole key (its inline bytes compare as arrays) or a text.
pub(super) enum ProbeText<'a> {
    Key(&'a CacheKey),
    Text(&'a str),
}

impl<'a> Probe<'a> {
    #[inline]
    pub(super) fn key(key: &'a CacheKey) -> Probe<'a> {
        let hash = match key.inline_parts() {
            Some((len, head, _)) if len <= HEAD => head_hash(head, len),
            _ => text_hash(key.as_str().as_bytes()),
        };
        Probe {
            hash,
            text: ProbeText::Key(key),
        }
    }

    pub(super) fn text(text: &'a str) -> Probe<'a> {
        Probe {
            hash: text_hash(text.as_bytes()),
            text: ProbeText::Text(text),
        }
    }
}

impl Hash for Probe<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl quick_cache::Equivalent<SlotKey> for Probe<'_> {
    #[inline]
    fn equivalent(&self, slot: &SlotKey) -> bool {
        match (&self.text, slot) {
            // Both inline: zeros past both texts (the invariants of `CacheKey` and `SlotKey`),
            // so comparing the lengths and the first 16 bytes settles every key of up to 16
            // bytes. The key's head is read as the two words it was stored as.
            (ProbeText::Key(key), SlotKey::Inline { len, bytes }) => match key.inline_parts() {
                Some((key_len, head, tail)) => {
                    let slot_head = u128::from_le_bytes(bytes[..HEAD].try_into().expect("16"));
                    key_len == usize::from(*len)
                        && head == slot_head
                        && (key_len <= HEAD || tail[..INLINE - HEAD] == bytes[HEAD..])
                }
                None => false,
            },
            (ProbeText::Key(key), SlotKey::Heap(text)) => key.as_str() == &**text,
            (ProbeText::Text(text), slot) => text.as_bytes() == slot.as_bytes(),
        }
    }
}

/// Hands the store's tables the hash a [`Probe`] or a [`SlotKey`] writes, as it is.
#[derive(Clone, Copy, Default)]
pub(super) struct Prehashed;

impl BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;

    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

pub(super) struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    #[inline]
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    // Only `write_u64` is ever called (by `Probe` and `SlotKey`); anything else is hashed
    // properly rather than trusted.
    fn write(&mut self, bytes: &[u8]) {
        self.0 = text_hash(bytes) ^ self.0.rotate_left(5);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// One entry.
pub(super) struct Slot {
    pub(super) value: Stored,
    pub(super) expires_at: Moment,
    /// From when a hit starts a refresh-ahead (`expires_at` for a site without `refresh`).
    pub(super) refresh_at: Moment,
    /// The tiered backend's L1 epoch when the entry was stored (0 in a plain memory backend):
    /// advancing the epoch turns every older entry into a miss at once.
    pub(super) epoch: u64,
    /// Computed once on insert: the byte bound and the gauges use it.
    pub(super) weight: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyBuilder;
    use quick_cache::Equivalent;

    fn key(text: &str) -> CacheKey {
        KeyBuilder::new().lit(text).finish()
    }

    #[test]
    fn a_probe_matches_exactly_the_same_text() {
        let texts = [
            "",
            "k",
            "sixteen-bytes-ab",
            "seventeen-bytes-a",
            "twenty-two-bytes-abcde",
            "twenty-three-bytes-abcd",
            "a key over forty-six bytes, which the key holds on the heap",
        ];
        for text in texts {
            let slot = SlotKey::new(text);
            assert_eq!(matches!(slot, SlotKey::Inline { .. }), text.len() <= INLINE);
            for other in texts {
                let same = text == other;
                let key = key(other);
                assert_eq!(
                    Probe::key(&key).equivalent(&slot),
                    same,
                    "{text:?} {other:?}"
                );
                assert_eq!(Probe::text(other).equivalent(&slot), same);
                assert_eq!(SlotKey::new(other) == slot, same);
            }
            let hash = |value: &dyn Fn(&mut PrehashedHasher)| {
                let mut hasher = Prehashed.build_hasher();
                value(&mut hasher);
                hasher.finish()
            };
            let key = key(text);
            assert_eq!(
                hash(&|h| slot.hash(h)),
                hash(&|h| Probe::key(&key).hash(h)),
                "a slot and its probe hash alike"
            );
        }
    }
}
