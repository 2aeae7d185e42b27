//! Cache keys: the text a template renders to, and the escaping that keeps it unforgeable.
//!
//! A key is the template's literal text with every placeholder's value written between `<` and
//! `>`: `user:<id>` renders as `user:<42>`. Literal text may not contain `<`, `>`, `{` or `}` (the
//! macro rejects them), and a value never does (they are percent-escaped), so a key splits back
//! into exactly one sequence of literal parts and values. Hence no argument can forge another
//! call's key, and two templates with different literal text never share a key.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::Serialize;

pub(crate) mod canonical;

pub use canonical::HitKey;

/// A rendered cache key, such as `user:<42>`.
///
/// Build one with [`KeyBuilder`], the same way the `#[cached]` expansion does; use it with
/// [`invalidate`](crate::invalidate) to remove an entry by hand.
#[derive(Clone)]
pub struct CacheKey {
    text: Text,
    /// The key's form in the memory store (`canonical`), when it has at most 16 bytes: the
    /// two words of its `u128`, little-endian; `form_len` is [`NO_FORM`] or [`TEXT_FORM`] for a
    /// longer one.
    form: [u64; 2],
    form_len: u8,
    /// Set by a `:hash` part that failed to serialise (its text then holds `UNUSABLE`); a
    /// flag, since every call asks and a substring search costs more than the rest of the key.
    unusable: bool,
}

impl CacheKey {
    /// The key's text.
    #[inline]
    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// Whether the key identifies its arguments. It does not when a `:hash` value failed to
    /// serialise; such a call runs uncached rather than risk sharing a key.
    #[inline]
    pub fn is_usable(&self) -> bool {
        !self.unusable
    }

    /// The key's form as a `u128` and its length, if it has at most 16 bytes: what the memory
    /// store names it by (a longer form it reads in pieces from the text).
    #[inline(always)]
    pub(crate) fn form(&self) -> Option<(u128, usize)> {
        (self.form_len != NO_FORM && self.form_len != TEXT_FORM).then(|| {
            let head = u128::from(u64::from_le(self.form[0]))
                | u128::from(u64::from_le(self.form[1])) << 64;
            (head, usize::from(self.form_len))
        })
    }

    /// Whether the key's form is longer than 16 bytes and its text itself (the text holds no
    /// integer value).
    #[inline(always)]
    pub(crate) fn form_is_text(&self) -> bool {
        self.form_len == TEXT_FORM
    }
}

// By text, as `Borrow<str>` requires: a key equals, hashes and orders as its `as_str()`.
impl PartialEq for CacheKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for CacheKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CacheKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// The `form_len` of a key whose form is longer than 16 bytes and holds integers.
const NO_FORM: u8 = u8::MAX;
/// The `form_len` of a key whose form is longer than 16 bytes and is its text.
const TEXT_FORM: u8 = u8::MAX - 1;

/// Keys up to this many bytes are held inline, so that rendering the key of a hit, which every
/// call does, allocates nothing; 46 covers `user:<id>`-style keys.
pub(crate) const INLINE: usize = 46;
/// An inline text's first bytes, held as two words (see [`Inline`]).
pub(crate) const HEAD: usize = 16;
/// The inline bytes past the head.
pub(crate) const TAIL: usize = INLINE - HEAD;

/// A short key's text.
///
/// Why the head is words: a hit hashes its key right after building it, and a load that
/// spans bytes which narrower stores (a byte, itoa's two-byte pairs, a memcpy's pieces) wrote
/// just before cannot be forwarded from them; it waits for them to reach the cache (~30 ns of
/// an 80 ns hit, ARCHITECTURE.md "The memory hit at the floor"). So the builder renders the
/// first 16 bytes in a register, [`KeyBuilder::finish`] stores them as two words, and the
/// memory store reads them back as those two words.
#[derive(Clone, Copy)]
#[repr(C)]
struct Inline {
    /// Bytes `0..16`, each word little-endian in memory, so that on every target `head`
    /// followed by `tail` is the text's bytes.
    head: [u64; 2],
    /// Bytes `16..INLINE`.
    tail: [u8; TAIL],
    len: u8,
}

impl Inline {
    #[inline(always)]
    fn head(&self) -> u128 {
        u128::from(u64::from_le(self.head[0])) | u128::from(u64::from_le(self.head[1])) << 64
    }

    #[inline(always)]
    fn bytes(&self) -> &[u8; INLINE] {
        // SAFETY: `repr(C)`: 16 bytes of `head`, then `tail` at offset 16, with no padding
        // between; every byte of both is initialised.
        unsafe { &*(self as *const Inline).cast::<[u8; INLINE]>() }
    }
}

/// A key's text: inline while it is short, on the heap beyond.
///
/// Invariants of `Inline`: its first `len` bytes are UTF-8, since only whole `&str`s are ever
/// appended; the bytes past `len` are zeros, since text is only ever appended to zeros; and a
/// text is inline exactly while it fits (`Heap` only ever holds more than `INLINE` bytes).
#[derive(Clone)]
enum Text {
    Inline(Inline),
    Heap(String),
}

/// Equal texts are equal representations (the invariants of `Inline`), so two short keys
/// compare as their lengths and head words, and their tails only past 16 bytes.
impl PartialEq for Text {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Text::Inline(a), Text::Inline(b)) => {
                a.len == b.len
                    && a.head() == b.head()
                    && (usize::from(a.len) <= HEAD || a.tail == b.tail)
            }
            (Text::Heap(text), Text::Heap(other)) => text == other,
            _ => false,
        }
    }
}

impl Text {
    #[inline]
    fn as_str(&self) -> &str {
        match self {
            Text::Inline(inline) => {
                let bytes = &inline.bytes()[..usize::from(inline.len)];
                debug_assert!(std::str::from_utf8(bytes).is_ok());
                // SAFETY: the invariant of `Inline`: only whole `&str`s were appended.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Text::Heap(text) => text,
        }
    }
}

/// `bytes` (at most 16) as a little-endian `u128`, zeros past them, read with a few
/// overlapping loads rather than copied through a buffer (which would be narrow stores read
/// back wide). A literal's folds to a constant.
#[inline(always)]
pub(crate) fn padded(bytes: &[u8]) -> u128 {
    let n = bytes.len();
    debug_assert!(n <= HEAD);
    let at = |i: usize, width: usize| -> u128 {
        let mut word = [0; 8];
        word[..width].copy_from_slice(&bytes[i..i + width]);
        u128::from(u64::from_le_bytes(word))
    };
    if n >= 8 {
        // The two words overlap when `n < 16`; the bytes they share are the same.
        at(0, 8) | at(n - 8, 8) << (8 * (n - 8))
    } else if n >= 4 {
        at(0, 4) | at(n - 4, 4) << (8 * (n - 4))
    } else if n > 0 {
        at(0, 1) | at(n / 2, 1) << (8 * (n / 2)) | at(n - 1, 1) << (8 * (n - 1))
    } else {
        0
    }
}

/// Whether two byte strings are equal, compared (at one length) in 16-byte words and a
/// [`padded`] last word. Not `==`: that calls `memcmp`, and glibc's
/// AVX-512 form (`__memcmp_evex_movbe`, its pick on an AMD EPYC of family 26) took 68% of a
/// hit's time for `account:balance:<id>`, about 90 ns, in a few dozen instructions.
#[inline(always)]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    // The callers' lengths are equal already (a compare that folds away): checked here, so
    // that the function holds on its own.
    if a.len() != b.len() {
        return false;
    }
    let mut same = true;
    let mut at = 0;
    while a.len() - at > HEAD {
        let word = |bytes: &[u8]| u128::from_le_bytes(bytes[at..at + HEAD].try_into().expect("16"));
        same &= word(a) == word(b);
        at += HEAD;
    }
    same & (padded(&a[at..]) == padded(&b[at..]))
}

/// The decimal digits of `value` (below 10^8) as ASCII, the first digit in the low byte,
/// and how many there are: computed in a register (eight digits at once, in lanes), so the
/// key's head takes them with one shift and one or.
#[inline(always)]
fn digits8(value: u64) -> (u64, usize) {
    let zoned = zoned8(value);
    // Leading zeros are the low zero bytes; a zero keeps its one digit.
    let zeros = (zoned.trailing_zeros() / 8).min(7) as usize;
    ((zoned | 0x3030_3030_3030_3030) >> (8 * zeros), 8 - zeros)
}

/// All eight decimal digits of `value` (below 10^8) as numbers 0..=9 a byte, the first digit in
/// the low byte.
#[inline(always)]
fn zoned8(value: u64) -> u64 {
    debug_assert!(value < 100_000_000);
    // Four-digit halves in 32-bit lanes, then two-digit quarters in 16-bit lanes, then digits
    // in bytes; the multiply-shifts divide exactly for these ranges (by 100 below 10^4, by 10
    // below 100), and the masks drop what a lane's product shifts into its neighbour.
    let halves = (value / 10_000) | (value % 10_000) << 32;
    let hundreds = ((halves * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let quarters = hundreds | (halves - hundreds * 100) << 16;
    let tens = ((quarters * 103) >> 10) & 0x000f_000f_000f_000f;
    tens | (quarters - tens * 10) << 8
}

/// `value` (below 10^16) as ASCII digits in a little-endian `u128`, and how many there are.
#[inline(always)]
fn digits16(value: u64) -> (u128, usize) {
    if value < 100_000_000 {
        let (digits, count) = digits8(value);
        (u128::from(digits), count)
    } else {
        let (high, count) = digits8(value / 100_000_000);
        let low = zoned8(value % 100_000_000) | 0x3030_3030_3030_3030;
        (u128::from(high) | u128::from(low) << (8 * count), count + 8)
    }
}

/// Written in place of a `:hash` value that failed to serialise. `!` cannot follow `<#` in a
/// hashed value (hex digits) and `#` is escaped in plain values, so only a failure writes it.
const UNUSABLE: &str = "<#!>";

impl Borrow<str> for CacheKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds a [`CacheKey`] from literal text and placeholder values, in template order.
///
/// ```
/// use cache_runtime::KeyBuilder;
///
/// let key = KeyBuilder::new().lit("user:").arg(&"1:admin").finish();
/// assert_eq!(key.as_str(), "user:<1:admin>");
/// let other = KeyBuilder::new().lit("user:1:").arg(&"admin").finish();
/// assert_ne!(key, other);
/// ```
#[derive(Default)]
pub struct KeyBuilder {
    /// Bytes `0..16` of the text, little-endian, zeros past it: a value of its own, so that it
    /// stays in registers while the key is built (see [`Inline`]).
    head: u128,
    /// The text's length while it is inline.
    len: usize,
    /// Bytes `16..INLINE`, zeros past the text.
    tail: [u8; TAIL],
    /// The whole text, once it outgrew `INLINE` bytes (`head`, `tail` and `len` are then
    /// unused).
    heap: Option<String>,
    unusable: bool,
    /// The key's short form, followed beside the text.
    form: canonical::FormBuilder,
}

// Every call builds its key, from the caller's crate: the small steps are `#[inline(always)]`
// so that a template's literal parts compile to a shift and an or of constants, not calls.
impl fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut inline = [0; INLINE];
        f.debug_struct("KeyBuilder")
            .field("text", &self.text(&mut inline))
            .finish()
    }
}

impl KeyBuilder {
    /// An empty key.
    #[inline(always)]
    pub fn new() -> Self {
        KeyBuilder::default()
    }

    /// The text so far (`inline` is where an inline text's bytes are put together).
    fn text<'a>(&'a self, inline: &'a mut [u8; INLINE]) -> &'a str {
        if let Some(heap) = &self.heap {
            return heap;
        }
        inline[..HEAD].copy_from_slice(&self.head.to_le_bytes());
        inline[HEAD..].copy_from_slice(&self.tail);
        // Only whole `&str`s were appended.
        std::str::from_utf8(&inline[..self.len]).expect("the text is UTF-8")
    }

    #[inline(always)]
    fn push_str(&mut self, text: &str) {
        let bytes = text.as_bytes();
        if self.heap.is_none() && self.len + bytes.len() <= HEAD {
            // `len` is below 16 unless `bytes` is empty, and then the shift (wrapped) moves 0.
            self.head |= padded(bytes).wrapping_shl(8 * self.len as u32);
            self.len += bytes.len();
        } else {
            *self = std::mem::take(self).push_str_slow(text);
        }
    }

    /// `count` (at most 16) bytes, given as a little-endian `u128`.
    #[inline(always)]
    fn push_word(&mut self, word: u128, count: usize) {
        if self.heap.is_none() && self.len + count <= HEAD {
            self.head |= word.wrapping_shl(8 * self.len as u32);
            self.len += count;
        } else {
            let bytes = word.to_le_bytes();
            // Only ASCII is pushed as words.
            let text = std::str::from_utf8(&bytes[..count]).expect("ASCII");
            *self = std::mem::take(self).push_str_slow(text);
        }
    }

    /// One ASCII byte.
    #[inline(always)]
    fn push_byte(&mut self, byte: u8) {
        debug_assert!(byte.is_ascii());
        self.push_word(u128::from(byte), 1);
    }

    /// Past the head: taken and given back by value, so that the builder's address never
    /// leaves the caller (which would keep its head in memory).
    #[cold]
    #[inline(never)]
    fn push_str_slow(mut self, text: &str) -> Self {
        if let Some(heap) = &mut self.heap {
            heap.push_str(text);
            return self;
        }
        let end = self.len + text.len();
        if end <= INLINE {
            let bytes = text.as_bytes();
            let in_head = HEAD.saturating_sub(self.len).min(bytes.len());
            self.head |= padded(&bytes[..in_head]).wrapping_shl(8 * self.len as u32);
            let from = self.len.max(HEAD) - HEAD;
            self.tail[from..end - HEAD].copy_from_slice(&bytes[in_head..]);
            self.len = end;
        } else {
            let mut inline = [0; INLINE];
            let mut heap = String::with_capacity(end.max(2 * INLINE));
            heap.push_str(self.text(&mut inline));
            heap.push_str(text);
            self.heap = Some(heap);
        }
        self
    }

    /// Appends literal template text. It must not contain `<`, `>`, `{` or `}`; the macros check
    /// this at compile time, and hand-built keys are checked in debug builds.
    #[inline(always)]
    pub fn lit(mut self, text: &str) -> Self {
        debug_assert!(
            !text.contains(['<', '>', '{', '}']),
            "literal key text may not contain `<`, `>`, `{{` or `}}`: {text:?}"
        );
        self.push_str(text);
        self.form.text(text.as_bytes());
        // A literal that breaks the rule above in a release build (a hand-built key) may hold
        // what reads as a value: its form is then worked out from the text, as a probe by text
        // works it out, so both name one entry.
        if text.as_bytes().contains(&b'<') {
            self.form.lose();
        }
        self
    }

    /// Appends one placeholder value.
    #[inline(always)]
    pub fn arg<T: KeyPart + ?Sized>(mut self, value: &T) -> Self {
        self.push_byte(b'<');
        self.form.begin_value();
        value.write_key_part(&mut KeyWriter(&mut self));
        self.push_byte(b'>');
        self.form.end_value();
        self
    }

    /// Appends a placeholder value by a stable hash of its serialised form (the `:hash`
    /// modifier). The form is bincode 2 with its standard configuration; hashing is xxh3-128.
    ///
    /// The hash is stable across processes and builds only if serialisation is: a `HashMap`
    /// serialises in an order that differs between instances, so key on a `BTreeMap` instead.
    /// A value that fails to serialise makes the key unusable ([`CacheKey::is_usable`]): the
    /// call then runs uncached, and a warning is logged.
    pub fn hashed<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        let mut hasher = HashWriter(xxhash_rust::xxh3::Xxh3Default::new());
        if let Err(error) =
            bincode::serde::encode_into_writer(value, &mut hasher, bincode::config::standard())
        {
            static GATE: crate::log_gate::LogGate = crate::log_gate::LogGate::new();
            if let Some(suppressed) = GATE.admit() {
                tracing::warn!(
                    %error,
                    suppressed,
                    "a `:hash` key part failed to serialise; the call runs uncached"
                );
            }
            self.push_str(UNUSABLE);
            self.form.text(UNUSABLE.as_bytes());
            self.unusable = true;
            return self;
        }
        let digest = hasher.0.digest128();
        self.push_str("<#");
        write_hex(&mut self, &digest.to_be_bytes());
        self.push_byte(b'>');
        // 35 bytes of text, in the form as they are: a key with one has a long form.
        self.form.text(&[0; 35]);
        self
    }

    /// The finished key.
    #[inline(always)]
    pub fn finish(self) -> CacheKey {
        let form = self.form;
        let text = match self.heap {
            Some(heap) => Text::Heap(heap),
            // The head's two stores: what the memory store's hash reads back, word for word.
            None => Text::Inline(Inline {
                head: [
                    (self.head as u64).to_le(),
                    ((self.head >> 64) as u64).to_le(),
                ],
                tail: self.tail,
                len: self.len as u8,
            }),
        };
        let (form, form_len) = match form.finish(text.as_str()) {
            canonical::Form::Short(head, len) => (
                [(head as u64).to_le(), ((head >> 64) as u64).to_le()],
                len as u8,
            ),
            canonical::Form::Text => ([0; 2], TEXT_FORM),
            canonical::Form::Long => ([0; 2], NO_FORM),
        };
        CacheKey {
            text,
            form,
            form_len,
            unusable: self.unusable,
        }
    }
}

struct HashWriter(xxhash_rust::xxh3::Xxh3Default);

impl bincode::enc::write::Writer for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.update(bytes);
        Ok(())
    }
}

fn write_hex(out: &mut KeyBuilder, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push_byte(DIGITS[usize::from(byte >> 4)]);
        out.push_byte(DIGITS[usize::from(byte & 0xf)]);
    }
}

/// Where a [`KeyPart`] writes its value; it escapes what could break the key's structure.
pub struct KeyWriter<'a>(&'a mut KeyBuilder);

impl KeyWriter<'_> {
    /// Writes text, percent-escaping every byte outside the characters that are safe in a key.
    ///
    /// Kept as they are: ASCII letters and digits, ``-_.:@/+=,;!$&'()~^|` ``, and non-ASCII
    /// characters other than whitespace and controls (so names stay readable). Everything else,
    /// `%` itself included, becomes `%XX` per UTF-8 byte.
    #[inline]
    pub fn write_str(&mut self, text: &str) {
        // The common case, all ASCII and nothing to escape, is one table look-up a byte.
        if needs_no_escape(text) {
            self.0.push_str(text);
            self.0.form.value_text(text.as_bytes());
        } else {
            // By value, so that the builder's address does not leave the caller.
            *self.0 = write_escaped(std::mem::take(self.0), text);
            self.0.form.lose();
        }
    }

    /// Writes an integer in decimal.
    #[inline(always)]
    pub fn write_int(&mut self, value: impl itoa::Integer) {
        self.0.push_str(itoa::Buffer::new().format(value));
        self.0.form.lose();
    }

    /// Writes an unsigned integer in decimal: below 10^16 (every id in practice), its digits
    /// are made in a register and appended as one word (see [`Inline`]).
    #[inline(always)]
    fn write_u64(&mut self, value: u64) {
        self.0.form.integer(canonical::unsigned_form(value));
        self.write_digits(value);
    }

    #[inline(always)]
    fn write_i64(&mut self, value: i64) {
        self.0.form.integer(canonical::signed_form(value));
        if value < 0 {
            self.0.push_byte(b'-');
        }
        self.write_digits(value.unsigned_abs());
    }

    /// The decimal text of `value`.
    #[inline(always)]
    fn write_digits(&mut self, value: u64) {
        if value < 10_000_000_000_000_000 {
            let (digits, count) = digits16(value);
            self.0.push_word(digits, count);
        } else {
            self.0.push_str(itoa::Buffer::new().format(value));
        }
    }

    /// Writes the mark of an absent value (`None`): `%none`, which escaping never produces
    /// since it always follows `%` with two hexadecimal digits.
    pub fn write_none(&mut self) {
        self.0.push_str("%none");
        self.0.form.value_text(b"%none");
    }

    /// Writes the mark of a `Some` around another `Option`: `%some`, which escaping never
    /// produces either. Only nested options write it (see [`KeyPart::write_key_part_in_some`]).
    fn write_some(&mut self) {
        self.0.push_str("%some");
        self.0.form.lose();
    }
}

fn is_kept(ch: char) -> bool {
    if ch.is_ascii() {
        KEPT_ASCII[ch as usize]
    } else {
        !ch.is_whitespace() && !ch.is_control()
    }
}

/// Whether `text` is all ASCII that a key keeps as it is: the common case, written as it is
/// (and what a hit key follows, `canonical::hit_str`). One look-up a byte and no branch: it
/// runs on every hit of a site keyed by a string.
#[inline(always)]
pub(crate) fn needs_no_escape(text: &str) -> bool {
    text.bytes()
        .fold(true, |kept, byte| kept & KEPT_BYTE[usize::from(byte)])
}

/// [`KEPT_ASCII`] over every byte value (none from 0x80 is kept as it is by this check).
const KEPT_BYTE: [bool; 256] = {
    let mut kept = [false; 256];
    let mut byte = 0;
    while byte < 128 {
        kept[byte] = KEPT_ASCII[byte];
        byte += 1;
    }
    kept
};

/// Which ASCII characters a key keeps as they are: letters, digits and ``-_.:@/+=,;!$&'()~^|` ``.
const KEPT_ASCII: [bool; 128] = {
    let mut kept = [false; 128];
    let mut byte = 0;
    while byte < 128 {
        kept[byte] = (byte as u8).is_ascii_alphanumeric();
        byte += 1;
    }
    let punctuation = b"-_.:@/+=,;!$&'()~^|`";
    let mut i = 0;
    while i < punctuation.len() {
        kept[punctuation[i] as usize] = true;
        i += 1;
    }
    kept
};

fn write_escaped(mut out: KeyBuilder, text: &str) -> KeyBuilder {
    // Runs of kept characters are copied whole.
    let mut run = 0;
    for (at, ch) in text.char_indices() {
        if !is_kept(ch) {
            out.push_str(&text[run..at]);
            let mut utf8 = [0; 4];
            for byte in ch.encode_utf8(&mut utf8).bytes() {
                out.push_byte(b'%');
                write_hex_upper(&mut out, byte);
            }
            run = at + ch.len_utf8();
        }
    }
    out.push_str(&text[run..]);
    out
}

fn write_hex_upper(out: &mut KeyBuilder, byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.push_byte(DIGITS[usize::from(byte >> 4)]);
    out.push_byte(DIGITS[usize::from(byte & 0xf)]);
}

/// A value that can stand for a placeholder in a cache key.
///
/// Implemented for integers, strings, `bool`, `char`, references to these and `Option`s of them
/// (nested too: `None` and `Some(None)` give different keys).
/// For any other `Serialize` value, write the placeholder as `<name:hash>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a cache key",
    label = "this value is used in the cache key",
    note = "key parts are integers, strings, `bool`, `char` and `Option`s of them; \
            write `<name:hash>` to key on any `Serialize` value, implement `cachette::KeyPart`, \
            or leave the parameter out of the key (`skip(name)` or an explicit `key = \"...\"`)"
)]
pub trait KeyPart {
    /// Writes this value into a key.
    fn write_key_part(&self, out: &mut KeyWriter<'_>);

    /// Writes this value as the content of a `Some`.
    ///
    /// The default writes it as [`write_key_part`](Self::write_key_part) does, so `Some(x)`
    /// renders like `x`. `Option` writes a `%some` mark first, so that `Some(None)` renders
    /// differently from `None`, at every level of nesting. An impl that forwards to another
    /// `KeyPart` (a wrapper, a smart pointer) should forward this method too.
    #[inline]
    fn write_key_part_in_some(&self, out: &mut KeyWriter<'_>) {
        self.write_key_part(out);
    }
}

macro_rules! int_key_parts {
    ($write:ident as $as:ty: $($ty:ty)*) => {$(
        impl KeyPart for $ty {
            #[inline(always)]
            fn write_key_part(&self, out: &mut KeyWriter<'_>) {
                out.$write(*self as $as);
            }
        }
    )*};
}
int_key_parts!(write_u64 as u64: u8 u16 u32 u64 usize);
int_key_parts!(write_i64 as i64: i8 i16 i32 i64 isize);
int_key_parts!(write_int as u128: u128);
int_key_parts!(write_int as i128: i128);

impl KeyPart for str {
    #[inline(always)]
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.write_str(self);
    }
}

impl KeyPart for String {
    #[inline(always)]
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.write_str(self);
    }
}

impl KeyPart for bool {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.write_str(if *self { "true" } else { "false" });
    }
}

impl KeyPart for char {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.write_str(self.encode_utf8(&mut [0; 4]));
    }
}

/// `None` is `%none` and `Some(x)` is `x`, unless `x` is itself an `Option`: then it is
/// `%some` followed by `x`'s own rendering. So every nesting depth has its own keys
/// (`%none`, `%some%none`, `%some%some%none`, ...), while a plain `Option<T>` renders as it
/// always has.
impl<T: KeyPart> KeyPart for Option<T> {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        match self {
            Some(value) => value.write_key_part_in_some(out),
            None => out.write_none(),
        }
    }

    fn write_key_part_in_some(&self, out: &mut KeyWriter<'_>) {
        out.write_some();
        self.write_key_part(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &T {
    #[inline(always)]
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part(out);
    }

    fn write_key_part_in_some(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part_in_some(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &mut T {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part(out);
    }

    fn write_key_part_in_some(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part_in_some(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for Box<T> {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part(out);
    }

    fn write_key_part_in_some(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part_in_some(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for std::sync::Arc<T> {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part(out);
    }

    fn write_key_part_in_some(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part_in_some(out);
    }
}

impl KeyPart for std::borrow::Cow<'_, str> {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.write_str(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(parts: &[Part]) -> CacheKey {
        let mut builder = KeyBuilder::new();
        for part in parts {
            builder = match part {
                Part::Lit(text) => builder.lit(text),
                Part::Str(value) => builder.arg(value),
                Part::Int(value) => builder.arg(value),
                Part::Opt(value) => builder.arg(value),
            };
        }
        builder.finish()
    }

    #[derive(Debug, Clone)]
    enum Part {
        Lit(String),
        Str(String),
        Int(i64),
        Opt(Option<String>),
    }

    /// Literal text as templates allow it: anything but `<`, `>`, `{` and `}`.
    fn literal() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[^<>{}]{0,6}").expect("valid regex")
    }

    /// Values biased towards the characters that matter: separators, escapes, the `%none` mark.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::string::string_regex("[a:<>%{}# n\u{e9}o]{0,6}").expect("valid regex"),
            Just("%none".to_string()),
            Just("%25".to_string()),
            any::<String>(),
        ]
    }

    fn part() -> impl Strategy<Value = Part> {
        prop_oneof![
            literal().prop_map(Part::Lit),
            value().prop_map(Part::Str),
            any::<i64>().prop_map(Part::Int),
            proptest::option::of(value()).prop_map(Part::Opt),
        ]
    }

    /// Splits a key back into literal text and escaped values, which must be possible for every
    /// key: this is what makes keys unforgeable.
    fn structure(key: &str) -> (Vec<&str>, Vec<&str>) {
        let mut literals = Vec::new();
        let mut values = Vec::new();
        let mut rest = key;
        loop {
            match rest.find('<') {
                None => {
                    literals.push(rest);
                    return (literals, values);
                }
                Some(open) => {
                    literals.push(&rest[..open]);
                    let close = rest[open..].find('>').expect("every `<` is closed") + open;
                    values.push(&rest[open + 1..close]);
                    rest = &rest[close + 1..];
                }
            }
        }
    }

    proptest! {
        /// One template (fixed literals, fixed value types): distinct argument tuples give
        /// distinct keys.
        #[test]
        fn distinct_arguments_give_distinct_keys(
            lits in proptest::collection::vec(literal(), 3),
            a in (value(), any::<i64>(), proptest::option::of(value())),
            b in (value(), any::<i64>(), proptest::option::of(value())),
        ) {
            let render = |(s, i, o): &(String, i64, Option<String>)| key(&[
                Part::Lit(lits[0].clone()), Part::Str(s.clone()),
                Part::Lit(lits[1].clone()), Part::Int(*i),
                Part::Opt(o.clone()), Part::Lit(lits[2].clone()),
            ]);
            prop_assert_eq!(a == b, render(&a) == render(&b));
        }

        /// Two templates whose literal text differs never produce the same key, whatever the
        /// arguments.
        #[test]
        fn different_literals_never_share_a_key(
            a in proptest::collection::vec(part(), 0..6),
            b in proptest::collection::vec(part(), 0..6),
        ) {
            let (ka, kb) = (key(&a), key(&b));
            let (lits_a, _) = structure(ka.as_str());
            let (lits_b, _) = structure(kb.as_str());
            if lits_a != lits_b {
                prop_assert_ne!(&ka, &kb);
            }
            // The literal structure a key shows is the template's own literal text.
            let template_text = |parts: &[Part]| -> String {
                parts.iter().map(|p| match p { Part::Lit(t) => t.as_str(), _ => "\u{0}" }).collect()
            };
            prop_assert_eq!(lits_a.join("\u{0}"), template_text(&a));
        }

        /// Every level of a nested `Option` is told apart: `None`, `Some(None)` and
        /// `Some(Some(None))` are three keys, and no inner value renders like a mark.
        #[test]
        fn nested_options_give_distinct_keys(
            a in nested_u8(), b in nested_u8(),
            c in nested_string(), d in nested_string(),
            e in proptest::option::of(proptest::option::of(any::<bool>())),
            f in proptest::option::of(proptest::option::of(any::<bool>())),
        ) {
            let render = |value: &dyn Fn(KeyBuilder) -> KeyBuilder| {
                value(KeyBuilder::new().lit("n:")).lit(":end").finish()
            };
            prop_assert_eq!(a == b, render(&|k| k.arg(&a)) == render(&|k| k.arg(&b)));
            prop_assert_eq!(c == d, render(&|k| k.arg(&c)) == render(&|k| k.arg(&d)));
            prop_assert_eq!(e == f, render(&|k| k.arg(&e)) == render(&|k| k.arg(&f)));
            // Through references, as expansions pass arguments, and through a `Box`.
            let by_ref = c.as_ref().map(|inner| inner.as_ref());
            prop_assert_eq!(render(&|k| k.arg(&by_ref)), render(&|k| k.arg(&c)));
            let boxed = c.clone().map(Box::new);
            prop_assert_eq!(render(&|k| k.arg(&boxed)), render(&|k| k.arg(&c)));
            // A template with one nesting depth, each value of any depth: still one key each.
            let (ka, kc) = (render(&|k| k.arg(&a)), render(&|k| k.arg(&c)));
            prop_assert_eq!(structure(ka.as_str()).1.len(), 1);
            prop_assert_eq!(structure(kc.as_str()).1.len(), 1);
        }

        /// `:hash` keys tell nested options apart too: bincode writes one tag byte per level.
        #[test]
        fn hashed_nested_options_give_distinct_keys(a in nested_u8(), b in nested_u8()) {
            let render = |value: &Option<Option<Option<u8>>>| {
                KeyBuilder::new().lit("h:").hashed(value).finish()
            };
            prop_assert_eq!(a == b, render(&a) == render(&b));
        }

        /// Escaping is reversible, so distinct strings stay distinct and nothing structural leaks.
        #[test]
        fn escaped_values_hold_no_structural_character(s in any::<String>()) {
            let k = KeyBuilder::new().arg(&s).finish();
            let inner = &k.as_str()[1..k.as_str().len() - 1];
            let structural = ['<', '>', '{', '}', '*', '?', '[', ']', ' '];
            prop_assert!(!inner.contains(structural), "{:?}", inner);
            prop_assert_eq!(percent_decode(inner), s);
        }
    }

    /// Every shape of `Option<Option<Option<u8>>>`, each depth equally likely.
    fn nested_u8() -> impl Strategy<Value = Option<Option<Option<u8>>>> {
        prop_oneof![
            Just(None),
            Just(Some(None)),
            Just(Some(Some(None))),
            any::<u8>().prop_map(|n| Some(Some(Some(n)))),
        ]
    }

    /// Every shape of `Option<Option<String>>`, with strings that look like the marks.
    fn nested_string() -> impl Strategy<Value = Option<Option<String>>> {
        let marks = prop_oneof![
            value(),
            Just("%some".to_string()),
            Just("%some%none".to_string()),
            Just(String::new()),
        ];
        prop_oneof![
            Just(None),
            Just(Some(None)),
            marks.prop_map(|text| Some(Some(text))),
        ]
    }

    #[test]
    fn every_level_of_a_nested_option_has_its_own_key() {
        let render = |value: Option<Option<Option<&str>>>| KeyBuilder::new().arg(&value).finish();
        let keys = [
            render(None),
            render(Some(None)),
            render(Some(Some(None))),
            render(Some(Some(Some("")))),
            render(Some(Some(Some("%none")))),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    fn percent_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).expect("hex escape"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("utf-8")
    }

    proptest! {
        /// `same_bytes` is `==` for strings of one length, at every length across the word
        /// boundaries, with one byte changed anywhere or not at all.
        #[test]
        fn same_bytes_is_slice_equality(
            a in proptest::collection::vec(any::<u8>(), 0..70),
            at in any::<prop::sample::Index>(),
            flip in 0u8..=255,
        ) {
            let mut b = a.clone();
            if !b.is_empty() {
                let at = at.index(b.len());
                b[at] ^= flip;
            }
            prop_assert_eq!(same_bytes(&a, &b), a == b);
        }
    }

    proptest! {
        /// Integers render as `itoa` (and `Display`) writes them, at every width, inline and
        /// past the inline bytes.
        #[test]
        fn integers_render_in_decimal(
            a in any::<u64>(), b in any::<i64>(), c in any::<u8>(), d in any::<i16>(),
            e in any::<usize>(), f in any::<isize>(), g in any::<u128>(), pad in 0..48usize,
        ) {
            let lead = "p".repeat(pad);
            let key = KeyBuilder::new()
                .lit(&lead).arg(&a).arg(&b).arg(&c).arg(&d).arg(&e).arg(&f).arg(&g)
                .finish();
            prop_assert_eq!(key.as_str(), format!("{lead}<{a}><{b}><{c}><{d}><{e}><{f}><{g}>"));
        }

        /// Keys are equal exactly when their texts are, however each was built (the inline
        /// comparison relies on the zeros past the text and on short texts staying inline).
        #[test]
        fn keys_are_equal_exactly_when_their_texts_are(
            a in proptest::collection::vec(part(), 0..6),
            b in proptest::collection::vec(part(), 0..6),
        ) {
            let (ka, kb) = (key(&a), key(&b));
            prop_assert_eq!(ka == kb, ka.as_str() == kb.as_str());
            // The same text built in other pieces (literals a character at a time, integers
            // as strings) is the same key, as a key built by hand for `invalidate` must be.
            let mut other = KeyBuilder::new();
            for part in &a {
                other = match part {
                    Part::Lit(text) => text.chars().fold(other, |k, c| k.lit(c.encode_utf8(&mut [0; 4]))),
                    Part::Int(value) => other.arg(&value.to_string()),
                    Part::Str(value) => other.arg(value),
                    Part::Opt(value) => other.arg(value),
                };
            }
            prop_assert_eq!(&ka, &other.finish());
            prop_assert_eq!(&ka, &ka.clone());
        }
    }

    #[test]
    fn integers_made_in_a_register_render_like_display() {
        // Every value below 10^6, then every power of ten and its neighbours up to 10^19
        // (the edges of the register paths and the digit-count trimming), and a walk between.
        let mut values: Vec<u64> = (0..1_000_000).collect();
        for exponent in 0..20 {
            let power = 10u64.pow(exponent);
            values.extend([power - 1, power, power + 1]);
        }
        values.extend((0..20_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 64)));
        for value in values {
            let key = KeyBuilder::new().lit("k:").arg(&value).finish();
            assert_eq!(key.as_str(), format!("k:<{value}>"));
            let signed = value as i64;
            let key = KeyBuilder::new()
                .arg(&signed)
                .lit("abcdefghij")
                .arg(&signed)
                .finish();
            assert_eq!(key.as_str(), format!("<{signed}>abcdefghij<{signed}>"));
        }
    }

    #[test]
    fn extreme_integers_render_like_display() {
        let key = KeyBuilder::new()
            .arg(&0u64)
            .arg(&u64::MAX)
            .arg(&i64::MIN)
            .arg(&i64::MAX)
            .arg(&-1i8)
            .arg(&i8::MIN)
            .arg(&9u8)
            .arg(&10u16)
            .finish();
        let expected = format!(
            "<0><{}><{}><{}><-1><-128><9><10>",
            u64::MAX,
            i64::MIN,
            i64::MAX
        );
        assert_eq!(key.as_str(), expected);
    }

    #[test]
    fn an_argument_cannot_forge_another_key() {
        let forged = KeyBuilder::new().lit("user:").arg(&"1:admin").finish();
        let real = KeyBuilder::new().lit("user:1:").arg(&"admin").finish();
        let nested = KeyBuilder::new().lit("user:").arg(&"1>:<admin").finish();
        assert_eq!(forged.as_str(), "user:<1:admin>");
        assert_eq!(real.as_str(), "user:1:<admin>");
        assert_eq!(nested.as_str(), "user:<1%3E:%3Cadmin>");
    }

    #[test]
    fn long_keys_move_to_the_heap_and_stay_equal_by_text() {
        use std::collections::hash_map::DefaultHasher;
        let hash = |value: &dyn Fn(&mut DefaultHasher)| {
            let mut hasher = DefaultHasher::new();
            value(&mut hasher);
            hasher.finish()
        };
        for len in [0, 1, INLINE - 3, INLINE - 2, INLINE - 1, INLINE, 200] {
            let text = "y".repeat(len);
            let key = KeyBuilder::new().lit("k").arg(&text.as_str()).finish();
            let expected = format!("k<{text}>");
            assert_eq!(key.as_str(), expected);
            assert_eq!(key.to_string(), expected);
            assert_eq!(key, key.clone());
            // `Borrow<str>`: a map of keys is searched by text.
            assert_eq!(hash(&|h| key.hash(h)), hash(&|h| expected.as_str().hash(h)));
        }
        let escaped = KeyBuilder::new().arg(&"\u{e9} a".repeat(20)).finish();
        assert_eq!(escaped.as_str(), format!("<{}>", "\u{e9}%20a".repeat(20)));
    }

    #[test]
    fn none_differs_from_every_string() {
        let none = KeyBuilder::new().arg(&None::<&str>).finish();
        for text in ["", "%none", "none", "%"] {
            assert_ne!(
                none,
                KeyBuilder::new().arg(&Some(text)).finish(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn values_render_readably() {
        let key = KeyBuilder::new()
            .lit("t:")
            .arg(&-7i32)
            .arg(&true)
            .arg(&'x')
            .arg(&"Zoë O'Neil")
            .arg(&None::<u8>)
            .finish();
        assert_eq!(key.as_str(), "t:<-7><true><x><Zo\u{eb}%20O'Neil><%none>");
        // A plain option's `Some` renders its value; a `Some` around an option is marked.
        let nested = KeyBuilder::new()
            .arg(&Some(5u8))
            .arg(&Some(None::<u8>))
            .arg(&Some(Some(5u8)))
            .arg(&Some(Some(Some("%some"))))
            .finish();
        assert_eq!(
            nested.as_str(),
            "<5><%some%none><%some5><%some%some%25some>"
        );
    }

    #[test]
    fn hashed_values_are_stable_and_distinct() {
        #[derive(Serialize)]
        struct Filter {
            name: &'static str,
            limit: u32,
        }
        let a = KeyBuilder::new()
            .lit("q:")
            .hashed(&Filter {
                name: "a",
                limit: 1,
            })
            .finish();
        let again = KeyBuilder::new()
            .lit("q:")
            .hashed(&Filter {
                name: "a",
                limit: 1,
            })
            .finish();
        let b = KeyBuilder::new()
            .lit("q:")
            .hashed(&Filter {
                name: "a",
                limit: 2,
            })
            .finish();
        assert_eq!(a, again);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), "q:<#>".len() + 32);
        // A string that looks like a hash is escaped, so it cannot collide with one.
        let text = &a.as_str()["q:<".len()..a.as_str().len() - 1];
        assert_ne!(a, KeyBuilder::new().lit("q:").arg(&text).finish());
        assert!(a.is_usable());
    }

    #[test]
    fn a_value_that_fails_to_serialise_makes_the_key_unusable() {
        struct Broken;
        impl Serialize for Broken {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("cannot"))
            }
        }
        let key = KeyBuilder::new().lit("q:").hashed(&Broken).finish();
        assert!(!key.is_usable());
        assert!(KeyBuilder::new().arg(&"<#!>").finish().is_usable());
    }
}

#[cfg(test)]
mod review26 {
    use super::*;

    /// `same_bytes` is `==` at every length 0..=80, every byte, every bit, at every
    /// alignment of the two slices (the last word exactly 16 bytes included).
    #[test]
    fn review26_same_bytes_exhaustive_lengths_bits_offsets() {
        let base: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(37) ^ 0x5a) as u8)
            .collect();
        for len in 0..=80usize {
            for off_a in 0..3 {
                for off_b in 0..3 {
                    let a = &base[off_a..off_a + len];
                    let mut other = base.clone();
                    // Same content at another offset.
                    other[off_b..off_b + len].copy_from_slice(a);
                    let b = &other[off_b..off_b + len];
                    assert!(same_bytes(a, b), "len {len} equal");
                    for at in 0..len {
                        for bit in 0..8 {
                            let mut flipped = b.to_vec();
                            flipped[at] ^= 1 << bit;
                            assert!(!same_bytes(a, &flipped), "len {len} at {at} bit {bit}");
                            assert!(!same_bytes(&flipped, a), "len {len} at {at} bit {bit} rev");
                        }
                    }
                }
            }
            // All zeros against one nonzero byte (padded's zero fill).
            let zeros = vec![0u8; len];
            for at in 0..len {
                let mut one = zeros.clone();
                one[at] = 0x80;
                assert!(!same_bytes(&zeros, &one), "zeros len {len} at {at}");
            }
        }
    }

    /// `padded` is the bytes, little-endian, zeros past them, at every length 0..=16.
    #[test]
    fn review26_padded_is_the_le_bytes() {
        for len in 0..=16 {
            for seed in 0..64u8 {
                let bytes: Vec<u8> = (0..len as u8)
                    .map(|i| i.wrapping_mul(seed).wrapping_add(seed | 1))
                    .collect();
                let mut word = [0u8; 16];
                word[..len].copy_from_slice(&bytes);
                assert_eq!(padded(&bytes), u128::from_le_bytes(word), "len {len}");
            }
        }
    }
}
