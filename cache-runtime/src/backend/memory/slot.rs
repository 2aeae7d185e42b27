//! What the memory store keeps per entry: its key's name there ([`SlotKey`]: the key's form
//! when it has at most 16 bytes, else its text; see `key::canonical`) and the entry ([`Slot`]:
//! the value, when it expires, when it is due for a refresh, its L1 epoch, its weight), and
//! the probe a read looks them up with ([`Probe`]).
//!
//! A probe is hashed once, and the store's tables are given that hash through [`Prehashed`]
//! rather than hashing again.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock};

use ahash::RandomState;

use super::stored::Stored;
use crate::clock::Moment;
use crate::key::canonical::{head_hash, short_form};
use crate::key::{CacheKey, HitKey, HEAD};

/// Texts of up to this many bytes (with a form longer than 16) are held in the slot itself;
/// 22 keeps a [`SlotKey`] at 24 bytes. Longer ones are shared text (`Arc<str>`), one more
/// cache line for the read that compares them.
const INLINE: usize = 22;

/// A key's name, as the store holds it.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum SlotKey {
    /// A form of at most 16 bytes (`user:<42>`: 14). Invariant: zeros past `len`.
    Form { len: u8, bytes: [u8; HEAD] },
    /// A text whose form is longer, inline. Invariant: zeros past `len`.
    Text { len: u8, bytes: [u8; INLINE] },
    /// A longer text.
    Heap(Arc<str>),
}

impl SlotKey {
    pub(super) fn new(key: &CacheKey) -> SlotKey {
        match key.form() {
            Some((head, len)) => SlotKey::Form {
                len: len as u8,
                bytes: head.to_le_bytes(),
            },
            None => {
                let text = key.as_str();
                if text.len() <= INLINE {
                    let mut bytes = [0; INLINE];
                    bytes[..text.len()].copy_from_slice(text.as_bytes());
                    SlotKey::Text {
                        len: text.len() as u8,
                        bytes,
                    }
                } else {
                    SlotKey::Heap(Arc::from(text))
                }
            }
        }
    }

    fn text(&self) -> Option<&[u8]> {
        match self {
            SlotKey::Form { .. } => None,
            SlotKey::Text { len, bytes } => Some(&bytes[..usize::from(*len)]),
            SlotKey::Heap(text) => Some(text.as_bytes()),
        }
    }
}

impl Hash for SlotKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let hash = match self {
            SlotKey::Form { len, bytes } => {
                head_hash(keyed(), u128::from_le_bytes(*bytes), usize::from(*len))
            }
            SlotKey::Text { len, bytes } => text_hash(&bytes[..usize::from(*len)]),
            SlotKey::Heap(text) => text_hash(text.as_bytes()),
        };
        state.write_u64(hash);
    }
}

/// The hash of a key named by its text: aHash, keyed once per process from the OS's
/// randomness, since keys are request data (ARCHITECTURE.md, "The memory hit at the floor");
/// one `write` of the bytes (`str`'s `Hash` adds a terminator, which a single field does not
/// need). A form is hashed by [`head_hash`], as its `u128` and its length.
fn text_hash(text: &[u8]) -> u64 {
    let mut hasher = keyed().build_hasher();
    hasher.write(text);
    hasher.finish()
}

#[inline(always)]
fn keyed() -> &'static RandomState {
    static KEYED: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    &KEYED
}

/// A lookup by a key's name, with its hash computed once.
pub(super) struct Probe<'a> {
    pub(super) hash: u64,
    name: Name<'a>,
}

/// What a probe compares: a form (with a slot's form, as its `u128`), or a text.
enum Name<'a> {
    Form { head: u128, len: usize },
    Text(&'a [u8]),
}

impl<'a> Probe<'a> {
    #[inline(always)]
    fn form(head: u128, len: usize) -> Probe<'a> {
        Probe {
            hash: head_hash(keyed(), head, len),
            name: Name::Form { head, len },
        }
    }

    /// The probe of a key: its builder knows which name it has.
    #[inline]
    pub(super) fn key(key: &'a CacheKey) -> Probe<'a> {
        match key.form() {
            Some((head, len)) => Probe::form(head, len),
            None => Probe {
                hash: text_hash(key.as_str().as_bytes()),
                name: Name::Text(key.as_str().as_bytes()),
            },
        }
    }

    /// The probe of a hit key, if its form fit (else the key is named by its text, and the
    /// caller asks by that).
    #[inline(always)]
    pub(super) fn hit(key: &HitKey) -> Option<Probe<'static>> {
        let (head, len) = key.head()?;
        Some(Probe::form(head, len))
    }

    /// The probe of a key given as text (an invalidation by hand): its name is worked out
    /// from the text.
    pub(super) fn text(text: &'a str) -> Probe<'a> {
        match short_form(text.as_bytes()) {
            Some((head, len)) => Probe::form(head, len),
            None => Probe {
                hash: text_hash(text.as_bytes()),
                name: Name::Text(text.as_bytes()),
            },
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
        match (&self.name, slot) {
            // Zeros past both forms (the slot's invariant, and the builders'), so the lengths
            // and the two words settle it.
            (
                Name::Form { head, len },
                SlotKey::Form {
                    len: slot_len,
                    bytes,
                },
            ) => *len == usize::from(*slot_len) && *head == u128::from_le_bytes(*bytes),
            (Name::Text(text), slot) => slot.text() == Some(text),
            (Name::Form { .. }, _) => false,
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

    /// A key as text, and as a hit key where it is literal text and integers (and fits).
    fn keys(parts: &[(&str, Option<i64>)]) -> (CacheKey, HitKey) {
        let mut text = KeyBuilder::new();
        let mut hit = HitKey::new();
        for (lit, value) in parts {
            text = text.lit(lit);
            hit = hit.lit(lit);
            if let Some(value) = value {
                text = text.arg(value);
                hit = hit.int(*value);
            }
        }
        (text.finish(), hit)
    }

    #[test]
    fn a_probe_matches_exactly_the_same_text() {
        let built = [
            keys(&[("", None)]),
            keys(&[("k", None)]),
            keys(&[("sixteen-bytes-ab", None)]),
            keys(&[("seventeen-bytes-a", None)]),
            keys(&[("twenty-two-bytes-abcde", None)]),
            keys(&[("twenty-three-bytes-abcd", None)]),
            keys(&[(
                "a key over forty-six bytes, which the key holds on the heap",
                None,
            )]),
            keys(&[("user:", Some(42))]),
            keys(&[("user:", Some(4))]),
            keys(&[("user:", Some(-42))]),
            keys(&[("acct:", Some(i64::MAX))]),
            keys(&[("longer:", Some(42))]),
            keys(&[("u:", Some(1)), (":", Some(2))]),
            keys(&[
                ("a long key with an integer ", Some(123_456_789)),
                (" in it", None),
            ]),
        ];
        // Values that are not integers as `KeyWriter` writes them stay text; one that is, from
        // a string, is the integer's key, as its text is.
        let texts = ["042", "4a", "-0", "42"].map(|value| {
            let key = KeyBuilder::new().lit("user:").arg(value).finish();
            // No hit key: one that does not fit stands for none.
            (key, HitKey::new().lit("seventeen bytes.."))
        });
        let all: Vec<_> = built.iter().chain(&texts).collect();
        for (key, _) in &all {
            let text = key.as_str();
            let slot = SlotKey::new(key);
            for (other, other_hit) in &all {
                let same = text == other.as_str();
                assert_eq!(
                    Probe::key(other).equivalent(&slot),
                    same,
                    "{text:?} {other:?}"
                );
                assert_eq!(Probe::text(other.as_str()).equivalent(&slot), same);
                assert_eq!(SlotKey::new(other) == slot, same);
                if let Some(probe) = Probe::hit(other_hit) {
                    assert_eq!(probe.equivalent(&slot), same, "hit {text:?} {other:?}");
                }
            }
            let hash = |value: &dyn Fn(&mut PrehashedHasher)| {
                let mut hasher = Prehashed.build_hasher();
                value(&mut hasher);
                hasher.finish()
            };
            assert_eq!(
                hash(&|h| slot.hash(h)),
                hash(&|h| Probe::key(key).hash(h)),
                "a slot and its probe hash alike: {text:?}"
            );
        }
        let (key, hit) = keys(&[("user:", Some(42))]);
        assert_eq!(
            Probe::hit(&hit).expect("fits").hash,
            Probe::key(&key).hash,
            "a hit key and its text hash alike"
        );
        assert!(
            Probe::hit(&keys(&[("longest:", Some(42))]).1).is_none(),
            "17 bytes"
        );
    }
}
