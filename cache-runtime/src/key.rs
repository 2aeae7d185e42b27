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

/// A rendered cache key, such as `user:<42>`.
///
/// Build one with [`KeyBuilder`], the same way the `#[cached]` expansion does; use it with
/// [`invalidate`](crate::invalidate) to remove an entry by hand.
#[derive(Clone)]
pub struct CacheKey {
    text: Text,
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

    /// The text's length and its inline bytes, zeros past the text, while it is held inline:
    /// what the memory store compares a short key with, as fixed-size arrays.
    #[inline]
    pub(crate) fn inline_bytes(&self) -> Option<(u8, &[u8; INLINE])> {
        match &self.text {
            Text::Inline { len, bytes } => Some((*len, bytes)),
            Text::Heap(_) => None,
        }
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

/// Keys up to this many bytes are held inline, so that rendering the key of a hit, which every
/// call does, allocates nothing; 46 makes a key 48 bytes, and covers `user:<id>`-style keys.
pub(crate) const INLINE: usize = 46;

/// A key's text: inline while it is short, on the heap beyond.
#[derive(Clone)]
enum Text {
    /// Invariants: `bytes[..len]` is UTF-8, since only whole `&str`s are ever appended; `bytes[len..]` are zeros, since text is only ever appended to zeros; and a text
    /// is inline exactly while it fits (`Heap` only ever holds more than `INLINE` bytes).
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Heap(String),
}

/// Equal texts are equal representations (the invariants of `Inline`), so two short keys
/// compare as fixed-size arrays: one vector compare for keys of up to 16 bytes, where comparing
/// `as_str()`s calls `memcmp` (the memory index compares the key of every hit).
impl PartialEq for Text {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Text::Inline { len, bytes },
                Text::Inline {
                    len: other_len,
                    bytes: other_bytes,
                },
            ) => {
                // Most keys fit the first 16 bytes, which are one vector compare; the zeros
                // past the text make the prefix enough for them.
                len == other_len
                    && bytes[..16] == other_bytes[..16]
                    && (usize::from(*len) <= 16 || bytes[16..] == other_bytes[16..])
            }
            (Text::Heap(text), Text::Heap(other)) => text == other,
            _ => false,
        }
    }
}

impl Default for Text {
    #[inline]
    fn default() -> Self {
        Text::Inline {
            len: 0,
            bytes: [0; INLINE],
        }
    }
}

impl Text {
    #[inline]
    fn as_str(&self) -> &str {
        match self {
            Text::Inline { len, bytes } => {
                let bytes = &bytes[..usize::from(*len)];
                debug_assert!(std::str::from_utf8(bytes).is_ok());
                // SAFETY: the invariant of `Inline`: only whole `&str`s were appended.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Text::Heap(text) => text,
        }
    }

    #[inline(always)]
    fn push_str(&mut self, text: &str) {
        // Inlined into the caller with the literal's length known, so a template's text is a
        // few stores; spilling to the heap is the rare case, kept out of line.
        if let Text::Inline { len, bytes } = self {
            let start = usize::from(*len);
            if let Some(free) = bytes.get_mut(start..start + text.len()) {
                free.copy_from_slice(text.as_bytes());
                // At most `INLINE`, which is below 256.
                *len = (start + text.len()) as u8;
                return;
            }
        }
        self.spill(text);
    }

    #[cold]
    #[inline(never)]
    fn spill(&mut self, text: &str) {
        match self {
            Text::Inline { .. } => {
                let current = self.as_str();
                let mut heap = String::with_capacity((current.len() + text.len()).max(2 * INLINE));
                heap.push_str(current);
                heap.push_str(text);
                *self = Text::Heap(heap);
            }
            Text::Heap(heap) => heap.push_str(text),
        }
    }

    #[inline(always)]
    fn push(&mut self, ch: char) {
        // The brackets around every value: one byte, stored without a copy loop.
        if let (Text::Inline { len, bytes }, true) = (&mut *self, ch.is_ascii()) {
            if usize::from(*len) < INLINE {
                bytes[usize::from(*len)] = ch as u8;
                *len += 1;
                return;
            }
        }
        self.push_str(ch.encode_utf8(&mut [0; 4]));
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
    text: Text,
    unusable: bool,
}

// Every call builds its key, from the caller's crate: the small steps are `#[inline]` so that a
// template's literal parts compile to stores, not calls.
impl fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBuilder")
            .field("text", &self.text.as_str())
            .finish()
    }
}

impl KeyBuilder {
    /// An empty key.
    #[inline(always)]
    pub fn new() -> Self {
        KeyBuilder::default()
    }

    /// Appends literal template text. It must not contain `<`, `>`, `{` or `}`; the macros check
    /// this at compile time, and hand-built keys are checked in debug builds.
    #[inline(always)]
    pub fn lit(mut self, text: &str) -> Self {
        debug_assert!(
            !text.contains(['<', '>', '{', '}']),
            "literal key text may not contain `<`, `>`, `{{` or `}}`: {text:?}"
        );
        self.text.push_str(text);
        self
    }

    /// Appends one placeholder value.
    #[inline(always)]
    pub fn arg<T: KeyPart + ?Sized>(mut self, value: &T) -> Self {
        self.text.push('<');
        value.write_key_part(&mut KeyWriter(&mut self.text));
        self.text.push('>');
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
            self.text.push_str(UNUSABLE);
            self.unusable = true;
            return self;
        }
        let digest = hasher.0.digest128();
        self.text.push_str("<#");
        write_hex(&mut self.text, &digest.to_be_bytes());
        self.text.push('>');
        self
    }

    /// The finished key.
    #[inline(always)]
    pub fn finish(self) -> CacheKey {
        CacheKey {
            text: self.text,
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

fn write_hex(out: &mut Text, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
}

/// Where a [`KeyPart`] writes its value; it escapes what could break the key's structure.
pub struct KeyWriter<'a>(&'a mut Text);

impl KeyWriter<'_> {
    /// Writes text, percent-escaping every byte outside the characters that are safe in a key.
    ///
    /// Kept as they are: ASCII letters and digits, ``-_.:@/+=,;!$&'()~^|` ``, and non-ASCII
    /// characters other than whitespace and controls (so names stay readable). Everything else,
    /// `%` itself included, becomes `%XX` per UTF-8 byte.
    #[inline]
    pub fn write_str(&mut self, text: &str) {
        // The common case, all ASCII and nothing to escape, is one table look-up a byte.
        if text
            .bytes()
            .all(|byte| byte < 0x80 && KEPT_ASCII[usize::from(byte)])
        {
            self.0.push_str(text);
        } else {
            self.write_escaped(text);
        }
    }

    fn write_escaped(&mut self, text: &str) {
        // Runs of kept characters are copied whole.
        let mut run = 0;
        for (at, ch) in text.char_indices() {
            if !is_kept(ch) {
                self.0.push_str(&text[run..at]);
                let mut utf8 = [0; 4];
                for byte in ch.encode_utf8(&mut utf8).bytes() {
                    self.0.push('%');
                    write_hex_upper(self.0, byte);
                }
                run = at + ch.len_utf8();
            }
        }
        self.0.push_str(&text[run..]);
    }

    /// Writes an integer in decimal.
    #[inline(always)]
    pub fn write_int(&mut self, value: impl itoa::Integer) {
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    /// Writes the mark of an absent value (`None`): `%none`, which escaping never produces
    /// since it always follows `%` with two hexadecimal digits.
    pub fn write_none(&mut self) {
        self.0.push_str("%none");
    }

    /// Writes the mark of a `Some` around another `Option`: `%some`, which escaping never
    /// produces either. Only nested options write it (see [`KeyPart::write_key_part_in_some`]).
    fn write_some(&mut self) {
        self.0.push_str("%some");
    }
}

fn is_kept(ch: char) -> bool {
    if ch.is_ascii() {
        KEPT_ASCII[ch as usize]
    } else {
        !ch.is_whitespace() && !ch.is_control()
    }
}

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

fn write_hex_upper(out: &mut Text, byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.push(DIGITS[usize::from(byte >> 4)] as char);
    out.push(DIGITS[usize::from(byte & 0xf)] as char);
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
    ($($ty:ty)*) => {$(
        impl KeyPart for $ty {
            #[inline(always)]
            fn write_key_part(&self, out: &mut KeyWriter<'_>) {
                out.write_int(*self);
            }
        }
    )*};
}
int_key_parts!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize);

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
