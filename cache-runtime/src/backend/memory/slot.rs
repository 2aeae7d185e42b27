//! What the memory store keeps per entry: its key's name there ([`SlotKey`]: the key's form
//! when it has at most 16 bytes, else its text; see `key::canonical`) and the entry ([`Slot`]:
//! the value, when it expires, when it is due for a refresh, its L1 epoch, its weight), and
//! the probe a read looks them up with ([`Probe`]).
//!
//! A probe is hashed once, and the store's tables are given that hash through [`Prehashed`]
//! rather than hashing again.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};

use ahash::RandomState;

use super::stored::Stored;
use crate::clock::Moment;
use crate::key::canonical::{
    chunks, head_hash, pieces, short_form, AsHitKey, HitName, LongHash, Piece, SameForm,
};
#[cfg(test)]
use crate::key::HitKey;
use crate::key::{same_bytes, CacheKey, HEAD};

/// Forms of up to this many bytes (past 16) are held in the slot itself; 22 keeps a
/// [`SlotKey`] at 24 bytes. Longer ones are shared (`Arc<[u8]>`), one more cache line for the
/// read that compares them.
const INLINE: usize = 22;

/// A key's name, as the store holds it: its form (`key::canonical`).
#[derive(Clone, PartialEq, Eq)]
pub(super) enum SlotKey {
    /// A form of at most 16 bytes (`user:<42>`: 14). Invariant: zeros past `len`.
    Form { len: u8, bytes: [u8; HEAD] },
    /// A longer form, inline. Invariant: zeros past `len`.
    Long { len: u8, bytes: [u8; INLINE] },
    /// A longer form still.
    Heap(Arc<[u8]>),
}

impl SlotKey {
    pub(super) fn new(key: &CacheKey) -> SlotKey {
        if let Some((head, len)) = key.form() {
            return SlotKey::Form {
                len: len as u8,
                bytes: head.to_le_bytes(),
            };
        }
        let mut form = Vec::with_capacity(key.as_str().len() + 16);
        chunks(key.as_str().as_bytes(), |chunk| {
            form.extend_from_slice(chunk)
        });
        if form.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..form.len()].copy_from_slice(&form);
            SlotKey::Long {
                len: form.len() as u8,
                bytes,
            }
        } else {
            SlotKey::Heap(Arc::from(form))
        }
    }

    /// A form longer than 16 bytes, as its bytes.
    #[inline(always)]
    fn long(&self) -> Option<&[u8]> {
        match self {
            SlotKey::Form { .. } => None,
            SlotKey::Long { len, bytes } => Some(&bytes[..usize::from(*len)]),
            SlotKey::Heap(form) => Some(form),
        }
    }

    /// The form, as its bytes, whatever its length.
    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        match self {
            SlotKey::Form { len, bytes } => &bytes[..usize::from(*len)],
            SlotKey::Long { len, bytes } => &bytes[..usize::from(*len)],
            SlotKey::Heap(form) => form,
        }
    }
}

impl Hash for SlotKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let hash = match self {
            SlotKey::Form { len, bytes } => {
                head_hash(keyed(), u128::from_le_bytes(*bytes), usize::from(*len))
            }
            SlotKey::Long { len, bytes } => form_hash(&bytes[..usize::from(*len)]),
            SlotKey::Heap(form) => form_hash(form),
        };
        state.write_u64(hash);
    }
}

/// The hash of a stored form longer than 16 bytes: the hash [`text_hash`] gives its text (a
/// form hashes alike however it is cut into pieces: here, all at once).
fn form_hash(form: &[u8]) -> u64 {
    let mut hash = LongHash::new(keyed().build_hasher());
    hash.bytes(form);
    hash.finish()
}

/// The hash of a text's form when it is longer than 16 bytes: aHash, keyed once per process
/// from the OS's randomness, since keys are request data (ARCHITECTURE.md, "The memory hit at
/// the floor"), fed the form's pieces ([`LongHash`]) as the text is read.
fn text_hash(text: &[u8]) -> u64 {
    let mut hash = LongHash::new(keyed().build_hasher());
    pieces(text, |piece| hash.piece(piece));
    hash.finish()
}

/// The hash of a form given in pieces.
#[inline(always)]
fn pieces_hash(name: HitName<'_>) -> u64 {
    let mut hash = LongHash::new(keyed().build_hasher());
    name.each_piece(&mut hash);
    hash.finish()
}

/// A hit key with its probe's hash worked out where the key was made, from a copy of it.
///
/// Why: the key's pieces are constants where the expansion writes them (a literal's length,
/// the bytes of `"("`), so its hash folds to a few instructions there. Hashed where the probe
/// is made, the pieces are read back from the key's memory, which the probe lends to the
/// store and a call on a cold path before it (a site's first resolution) might have written:
/// the lengths are loaded and every shift of the hash is worked out at run time (a default
/// key's hash cost twice as many instructions).
#[derive(Clone, Copy)]
pub(crate) struct HashedHit<K> {
    key: K,
    hash: Option<u64>,
}

impl<K: AsHitKey + Copy> HashedHit<K> {
    #[inline(always)]
    pub(crate) fn new(key: K) -> Self {
        let copy = key;
        let hash = match copy.name() {
            Some(name @ HitName::Pieces { .. }) => Some(pieces_hash(name)),
            _ => None,
        };
        HashedHit { key, hash }
    }
}

impl<K: AsHitKey> AsHitKey for HashedHit<K> {
    #[inline(always)]
    fn name(&self) -> Option<HitName<'_>> {
        self.key.name()
    }

    #[inline(always)]
    fn known_hash(&self) -> Option<u64> {
        self.hash
    }
}

impl<K: std::fmt::Display> std::fmt::Display for HashedHit<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.key.fmt(f)
    }
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

/// What a probe compares: a short form (with a slot's, as its `u128`), or a long form given
/// as a text, or in a hit key's pieces (with a slot's long form, piece by piece).
enum Name<'a> {
    Short {
        head: u128,
        len: usize,
    },
    /// A long form, as its bytes.
    Form(&'a [u8]),
    /// A text whose form is long.
    Text(&'a [u8]),
    Pieces(HitName<'a>),
}

impl<'a> Probe<'a> {
    #[inline(always)]
    fn form(head: u128, len: usize) -> Probe<'a> {
        Probe {
            hash: head_hash(keyed(), head, len),
            name: Name::Short { head, len },
        }
    }

    /// The probe of a text whose form is longer than 16 bytes.
    fn long_text(text: &'a [u8]) -> Probe<'a> {
        Probe {
            hash: text_hash(text),
            name: Name::Text(text),
        }
    }

    /// The probe of a key: its builder knows which name it has.
    #[inline]
    pub(super) fn key(key: &'a CacheKey) -> Probe<'a> {
        let text = key.as_str().as_bytes();
        match key.form() {
            Some((head, len)) => Probe::form(head, len),
            // One run: the text's pieces without reading it for values.
            None if key.form_is_text() => {
                let mut hash = LongHash::new(keyed().build_hasher());
                hash.piece(Piece::Run(text));
                Probe {
                    hash: hash.finish(),
                    name: Name::Form(text),
                }
            }
            None => Probe::long_text(text),
        }
    }

    /// The probe of a hit key, if it has a name (else the caller asks by the key's text).
    #[inline(always)]
    pub(super) fn hit<K: AsHitKey + ?Sized>(key: &'a K) -> Option<Probe<'a>> {
        match key.name()? {
            HitName::Short { head, len } => Some(Probe::form(head, len)),
            name @ HitName::Pieces { .. } => Some(Probe {
                hash: key.known_hash().unwrap_or_else(|| pieces_hash(name)),
                name: Name::Pieces(name),
            }),
        }
    }

    /// The probe of a key given as text (an invalidation by hand): its name is worked out
    /// from the text.
    pub(super) fn text(text: &'a str) -> Probe<'a> {
        match short_form(text.as_bytes()) {
            Some((head, len)) => Probe::form(head, len),
            None => Probe::long_text(text.as_bytes()),
        }
    }
}

impl Hash for Probe<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Probe<'_> {
    /// Whether this probe names `slot`'s key.
    ///
    // Only the short compare inline: with the long ones beside it, the table's compare
    // closure was no longer inlined into its probe loop, a call and a jump table for every
    // candidate of every hit (+36 instructions a short hit).
    #[inline(always)]
    pub(super) fn equivalent(&self, slot: &SlotKey) -> bool {
        match &self.name {
            Name::Short { head, len } => short_equivalent(*head, *len, slot),
            name => long_equivalent(name, slot),
        }
    }
}

/// Zeros past both forms (the slot's invariant, and the builders'), so the lengths and the
/// two words settle it.
#[inline(always)]
fn short_equivalent(head: u128, len: usize, slot: &SlotKey) -> bool {
    match slot {
        SlotKey::Form {
            len: slot_len,
            bytes,
        } => len == usize::from(*slot_len) && head == u128::from_le_bytes(*bytes),
        _ => false,
    }
}

#[inline(never)]
fn long_equivalent(name: &Name<'_>, slot: &SlotKey) -> bool {
    match name {
        Name::Short { head, len } => short_equivalent(*head, *len, slot),
        Name::Form(form) => slot
            .long()
            .is_some_and(|stored| stored.len() == form.len() && same_bytes(stored, form)),
        Name::Text(text) => text_equivalent(text, slot),
        Name::Pieces(name) => pieces_equivalent(name, slot),
    }
}

#[inline(always)]
fn text_equivalent(text: &[u8], slot: &SlotKey) -> bool {
    slot.long().is_some_and(|form| {
        let mut same = SameForm::new(form);
        pieces(text, |piece| same.piece(piece));
        same.finish()
    })
}

/// A form in pieces may be short (a string argument's length is known only now): it hashes as
/// a short form does, and is compared with any slot's bytes.
#[inline(always)]
fn pieces_equivalent(name: &HitName<'_>, slot: &SlotKey) -> bool {
    let mut same = SameForm::new(slot.bytes());
    name.each_piece(&mut same);
    same.finish()
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
    /// The entry's L1 epoch and its read count, in one word so that the entry keeps to one
    /// cache line (`engine.rs`).
    pub(super) mark: Mark,
    /// Computed once on insert: the byte bound and the gauges use it.
    pub(super) weight: u32,
}

/// The tiered backend's L1 epoch when the entry was stored (0 in a plain memory backend;
/// advancing the epoch turns every older entry into a miss at once), in the top 30 bits, and
/// the eviction policy's count of reads (0 to 3) in the low 2.
///
/// Only writers (under the shard's write lock) set the epoch; readers change only the count,
/// by a load and a store that may lose a concurrent reader's raise (the count is a hint). 30
/// bits of epoch: the bus advances it on every failed resubscription and every FLUSH message,
/// but an outage also drains L1 (`bus.rs`, `go_down`), so only entries that outlive 2^30 FLUSH
/// messages within their ttl could read as current again (review 28).
pub(super) struct Mark(AtomicU32);

const READS: u32 = 0b11;
const EPOCH_BITS: u32 = 30;

impl Mark {
    pub(super) fn new(epoch: u64) -> Mark {
        Mark(AtomicU32::new(Mark::epoch_bits(epoch) << 2))
    }

    #[inline(always)]
    fn epoch_bits(epoch: u64) -> u32 {
        (epoch as u32) & ((1 << EPOCH_BITS) - 1)
    }

    /// Whether the entry was stored in `epoch`.
    #[inline(always)]
    pub(super) fn in_epoch(&self, epoch: u64) -> bool {
        self.0.load(Ordering::Relaxed) >> 2 == Mark::epoch_bits(epoch)
    }

    /// A read: the count raised unless saturated, when the word is no longer written.
    #[inline(always)]
    pub(super) fn read(&self) {
        let mark = self.0.load(Ordering::Relaxed);
        if mark & READS != READS {
            self.0.store(mark + 1, Ordering::Relaxed);
        }
    }

    /// The hand passing: true (and the count lowered) if the entry was read since it last
    /// passed.
    pub(super) fn passed(&mut self) -> bool {
        let mark = self.0.get_mut();
        if *mark & READS == 0 {
            return false;
        }
        *mark -= 1;
        true
    }

    /// A refill takes the read count of the entry it replaces: a hot key stays hot.
    pub(super) fn keep_reads_of(&mut self, old: &Mark) {
        let reads = old.0.load(Ordering::Relaxed) & READS;
        *self.0.get_mut() = (*self.0.get_mut() & !READS) | reads;
    }

    #[cfg(test)]
    pub(super) fn reads(&self) -> u32 {
        self.0.load(Ordering::Relaxed) & READS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::canonical::{HitPieces, HitValue};
    use crate::KeyBuilder;
    use proptest::prelude::*;

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

    /// A key of literal runs and integers as text, and as the hit key a `#[cached]` expansion
    /// asks with (`HitPieces`, whatever its length: it names a short form as a `HitKey` does).
    fn text_and_pieces(parts: &[(String, i64)], last: &str) -> (CacheKey, Box<dyn AsHitKey>) {
        let text = parts
            .iter()
            .fold(KeyBuilder::new(), |key, (run, value)| {
                key.lit(run).arg(value)
            })
            .lit(last)
            .finish();
        let leak = |text: &str| -> &'static str { Box::leak(text.to_owned().into_boxed_str()) };
        let run = |i: usize| leak(&parts[i].0);
        let int = |i: usize| crate::key::canonical::hit_int(parts[i].1);
        let last = leak(last);
        let pieces: Box<dyn AsHitKey> = match parts.len() {
            0 => Box::new(HitPieces::<0>::new([], [], last)),
            1 => Box::new(HitPieces::new([run(0)], [int(0)], last)),
            2 => Box::new(HitPieces::new([run(0), run(1)], [int(0), int(1)], last)),
            _ => Box::new(HitPieces::new(
                [run(0), run(1), run(2)],
                [int(0), int(1), int(2)],
                last,
            )),
        };
        (text, pieces)
    }

    fn parts() -> impl Strategy<Value = (Vec<(String, i64)>, String)> {
        (
            proptest::collection::vec(
                ("[a-z:(),]{0,12}", prop_oneof![-20..20i64, any::<i64>()]),
                0..=3,
            ),
            "[a-z:()]{0,20}",
        )
    }

    proptest! {
        /// A hit key in pieces names exactly the entry its text names: same hash, and it
        /// matches a slot exactly when the slot's text is its text.
        #[test]
        fn a_hit_key_in_pieces_names_the_entry_of_its_text(
            (a, a_last) in parts(),
            (b, b_last) in parts(),
        ) {
            let (a_text, a_pieces) = text_and_pieces(&a, &a_last);
            let (b_text, _) = text_and_pieces(&b, &b_last);
            let probe = Probe::hit(&*a_pieces).expect("pieces always name a key");
            prop_assert_eq!(probe.hash, Probe::key(&a_text).hash, "{}", a_text.as_str());
            prop_assert_eq!(probe.hash, Probe::text(a_text.as_str()).hash);
            let slot_hash = Prehashed.hash_one(SlotKey::new(&a_text));
            prop_assert_eq!(probe.hash, slot_hash, "the slot's {}", a_text.as_str());
            prop_assert!(probe.equivalent(&SlotKey::new(&a_text)), "{}", a_text.as_str());
            prop_assert_eq!(
                probe.equivalent(&SlotKey::new(&b_text)),
                a_text.as_str() == b_text.as_str(),
                "{} {}", a_text.as_str(), b_text.as_str()
            );
            prop_assert_eq!(a_pieces.to_string(), a_text.as_str());
            // Nor a text it is the start of.
            let (longer, _) = text_and_pieces(&a, &format!("{a_last}x"));
            prop_assert!(!probe.equivalent(&SlotKey::new(&longer)), "{}", longer.as_str());
        }
    }

    fn leak(text: &str) -> &'static str {
        Box::leak(text.to_owned().into_boxed_str())
    }

    /// A letter text of `len` bytes, changed at `at` (if any).
    fn letters(len: usize, at: Option<usize>) -> String {
        (0..len)
            .map(|i| {
                let c = b'a' + (i % 26) as u8;
                if Some(i) == at {
                    if c == b'z' {
                        'y'
                    } else {
                        (c + 1) as char
                    }
                } else {
                    c as char
                }
            })
            .collect()
    }

    /// Review 26: every probe (a key's, a text's, a hit key's pieces) of a literal key of
    /// each length 0..=80 matches its own slot and no slot of a text one byte off, or one
    /// byte longer or shorter: across the short/long/heap slots and every word boundary.
    #[test]
    fn review26_literal_probes_at_every_length() {
        for len in 0..=80usize {
            let text = letters(len, None);
            let key = KeyBuilder::new().lit(&text).finish();
            let mut others: Vec<String> = (0..len).map(|at| letters(len, Some(at))).collect();
            others.push(letters(len + 1, None));
            if len > 0 {
                others.push(letters(len - 1, None));
            }
            others.push(text.clone());
            for other in &others {
                let other_key = KeyBuilder::new().lit(other).finish();
                let slot = SlotKey::new(&other_key);
                let same = *other == text;
                assert_eq!(
                    Probe::key(&key).equivalent(&slot),
                    same,
                    "key {text:?} {other:?}"
                );
                assert_eq!(
                    Probe::text(&text).equivalent(&slot),
                    same,
                    "text {text:?} {other:?}"
                );
                let pieces = HitPieces::<0>::new([], [], leak(&text));
                let probe = Probe::hit(&pieces).expect("pieces");
                assert_eq!(probe.equivalent(&slot), same, "pieces0 {text:?} {other:?}");
                if same {
                    assert_eq!(probe.hash, Prehashed.hash_one(&slot), "hash {text:?}");
                    assert_eq!(Probe::key(&key).hash, Prehashed.hash_one(&slot));
                }
                // Cut in two runs around an integer-free string value: `a<s>b`.
                for cut in [0, len / 3, len / 2, len] {
                    let (a, b) = text.split_at(cut);
                    let k = KeyBuilder::new().lit("r:").arg(a).lit(b).finish();
                    let o = KeyBuilder::new()
                        .lit("r:")
                        .arg(&other[..other.len().min(cut)])
                        .lit(&other[other.len().min(cut)..])
                        .finish();
                    let slot = SlotKey::new(&o);
                    let pieces =
                        HitPieces::new(["r:"], [crate::key::canonical::hit_str(leak(a))], leak(b));
                    let probe = Probe::hit(&pieces).expect("pieces");
                    let same = k.as_str() == o.as_str();
                    assert_eq!(
                        probe.equivalent(&slot),
                        same,
                        "str {:?} {:?}",
                        k.as_str(),
                        o.as_str()
                    );
                    assert_eq!(
                        Probe::key(&k).equivalent(&slot),
                        same,
                        "strkey {:?} {:?}",
                        k.as_str(),
                        o.as_str()
                    );
                    assert_eq!(Probe::text(k.as_str()).equivalent(&slot), same);
                    if same {
                        assert_eq!(
                            probe.hash,
                            Prehashed.hash_one(&slot),
                            "str hash {:?}",
                            k.as_str()
                        );
                        assert_eq!(
                            Probe::key(&k).hash,
                            Prehashed.hash_one(&slot),
                            "strkey hash {:?}",
                            k.as_str()
                        );
                        assert_eq!(
                            Probe::text(k.as_str()).hash,
                            Prehashed.hash_one(&slot),
                            "strtext hash {:?}",
                            k.as_str()
                        );
                    }
                }
            }
        }
    }

    /// Review 26: integer pieces at every offset of a long form (so an integer's nine bytes
    /// straddle each word boundary), against its slot and one with the integer changed.
    #[test]
    fn review26_integer_pieces_at_every_offset() {
        for pre in 0..=60usize {
            for value in [0i64, 1, -1, 42, i64::MAX, i64::MIN, 1 << 40] {
                let run = letters(pre, None);
                let key = KeyBuilder::new().lit(&run).arg(&value).lit("z").finish();
                for other in [value, value.wrapping_add(1), value ^ (1 << 56)] {
                    let o = KeyBuilder::new().lit(&run).arg(&other).lit("z").finish();
                    let slot = SlotKey::new(&o);
                    let same = value == other;
                    let pieces =
                        HitPieces::new([leak(&run)], [crate::key::canonical::hit_int(value)], "z");
                    let probe = Probe::hit(&pieces).expect("pieces");
                    assert_eq!(
                        probe.equivalent(&slot),
                        same,
                        "{:?} {:?}",
                        key.as_str(),
                        o.as_str()
                    );
                    assert_eq!(Probe::key(&key).equivalent(&slot), same);
                    assert_eq!(Probe::text(key.as_str()).equivalent(&slot), same);
                    if same {
                        assert_eq!(probe.hash, Prehashed.hash_one(&slot));
                    }
                }
            }
        }
    }

    /// A value of a review-26 key: an integer, or a string (plain, integer-like, or one that
    /// needs escaping).
    fn review26_value() -> impl Strategy<Value = Result<i64, String>> {
        prop_oneof![
            prop_oneof![-20..20i64, any::<i64>()].prop_map(Ok),
            "[a-z0-9:()-]{0,40}".prop_map(Err),
            "(-?[0-9]{1,21})|(0[0-9]{0,3})|(-0)".prop_map(Err),
            "[a-z <>{}\\%\u{e9}]{0,6}".prop_map(Err),
        ]
    }

    /// Runs, each followed by an integer or a string value, then the last run.
    type Parts = (Vec<(String, Result<i64, String>)>, String);

    fn review26_parts() -> impl Strategy<Value = Parts> {
        (
            proptest::collection::vec(("[a-z:(),]{0,30}", review26_value()), 0..=3),
            "[a-z:()]{0,40}",
        )
    }

    fn review26_key(
        parts: &[(String, Result<i64, String>)],
        last: &str,
    ) -> (CacheKey, Box<dyn AsHitKey>) {
        let mut text = KeyBuilder::new();
        for (run, value) in parts {
            text = text.lit(run);
            text = match value {
                Ok(v) => text.arg(v),
                Err(s) => text.arg(s.as_str()),
            };
        }
        let text = text.lit(last).finish();
        let values: Vec<HitValue<'static>> = parts
            .iter()
            .map(|(_, v)| match v {
                Ok(v) => crate::key::canonical::hit_int(*v),
                Err(s) => crate::key::canonical::hit_str(leak(s)),
            })
            .collect();
        let runs: Vec<&'static str> = parts.iter().map(|(r, _)| leak(r)).collect();
        let last = leak(last);
        let pieces: Box<dyn AsHitKey> = match parts.len() {
            0 => Box::new(HitPieces::<0>::new([], [], last)),
            1 => Box::new(HitPieces::new([runs[0]], [values[0]], last)),
            2 => Box::new(HitPieces::new(
                [runs[0], runs[1]],
                [values[0], values[1]],
                last,
            )),
            _ => Box::new(HitPieces::new(
                [runs[0], runs[1], runs[2]],
                [values[0], values[1], values[2]],
                last,
            )),
        };
        (text, pieces)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// Review 26: string values (plain, integer-like, escaped) in pieces, long runs: a
        /// probe of each kind matches exactly the slot of its own text, with its hash.
        #[test]
        fn review26_string_pieces_name_the_entry_of_their_text(
            (a, a_last) in review26_parts(),
            (b, b_last) in review26_parts(),
        ) {
            let (a_text, a_pieces) = review26_key(&a, &a_last);
            let (b_text, _) = review26_key(&b, &b_last);
            let a_slot = SlotKey::new(&a_text);
            let b_slot = SlotKey::new(&b_text);
            let same = a_text.as_str() == b_text.as_str();
            prop_assert_eq!(SlotKey::new(&b_text) == a_slot, same);
            prop_assert!(Probe::key(&a_text).equivalent(&a_slot));
            prop_assert_eq!(Probe::key(&a_text).hash, Prehashed.hash_one(&a_slot), "{}", a_text.as_str());
            prop_assert_eq!(Probe::text(a_text.as_str()).hash, Prehashed.hash_one(&a_slot));
            prop_assert_eq!(Probe::key(&a_text).equivalent(&b_slot), same, "{} {}", a_text.as_str(), b_text.as_str());
            prop_assert_eq!(Probe::text(a_text.as_str()).equivalent(&b_slot), same);
            if let Some(probe) = Probe::hit(&*a_pieces) {
                prop_assert_eq!(probe.hash, Prehashed.hash_one(&a_slot), "pieces {}", a_text.as_str());
                prop_assert!(probe.equivalent(&a_slot), "pieces {}", a_text.as_str());
                prop_assert_eq!(probe.equivalent(&b_slot), same, "pieces {} {}", a_text.as_str(), b_text.as_str());
                prop_assert_eq!(a_pieces.to_string(), a_text.as_str());
            }
        }
    }
}
