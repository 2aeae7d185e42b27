//! The memory store's name for a key: its text, with every placeholder value that is a decimal
//! integer (`<42>`, `<-7>`) written as a mark byte and the integer's eight bytes instead.
//!
//! Why: rendering an integer in decimal is a chain of dependent multiplications, the largest
//! single cost of a hit once the store was fast (about 20 ns of a 60 ns read, `hit_count`). A
//! site whose key is literal text and integer arguments asks its hit with a [`HitKey`], which
//! puts the integers' bytes next to the literal text in a register and never renders text (or,
//! for a longer form, with a [`HitPieces`]).
//!
//! The rule: the store names every key by its form. A form of at most 16 bytes is hashed and
//! compared as a `u128` and its length; a longer one as its [`Piece`]s (runs of text and
//! integers), so that a [`HitPieces`] is hashed and compared without its runs being copied
//! together. It keeps the text the identity: the form is a function of the text, and two texts
//! have the same form exactly when they are the same text. A text is
//! UTF-8, which never holds the marks (0xFE, 0xFF); a value always stands between `<` and `>`
//! (neither occurs inside one: they are escaped); and an integer's decimal text is read back
//! from its bytes exactly (no leading zeros, no `-0`, at most `u64::MAX`), so the form decodes
//! to the text it came from. So a `#[invalidates]` from another function, an `invalidate` by
//! hand or an invalidation from the bus, which all name the entry by text, reach it; and a
//! [`HitKey`] equals the form of the text `KeyBuilder` makes of the same parts (a property
//! test below holds them to it).

use std::fmt;
use std::hash::{BuildHasher, Hasher};

use super::{padded, same_bytes, HEAD};

/// The mark of a non-negative integer value, then its eight bytes, little-endian.
const UNSIGNED: u8 = 0xFF;
/// The mark of a negative one, then its magnitude's eight bytes.
const NEGATIVE: u8 = 0xFE;
/// An integer value's bytes in the form.
const INTEGER: usize = 9;

/// A piece of a form: a run of text (between two integer values, or before the first or
/// after the last; possibly empty), or an integer value's nine bytes (as a `u128`): how a
/// text is read into its form, and how a form is hashed ([`LongHash`]) and compared
/// ([`SameForm`]) without being put together.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Piece<'a> {
    Run(&'a [u8]),
    Integer(u128),
}

/// The form of `text`, in pieces, to `piece`.
#[inline]
pub(crate) fn pieces(text: &[u8], mut piece: impl FnMut(Piece<'_>)) {
    let mut run = 0;
    let mut at = 0;
    while let Some(offset) = text[at..].iter().position(|&byte| byte == b'<') {
        let open = at + offset;
        match integer_value(&text[open + 1..]) {
            Some((mark, magnitude, length)) => {
                piece(Piece::Run(&text[run..open]));
                piece(Piece::Integer(integer_form(mark, magnitude)));
                // Past the value and its `>`.
                at = open + 1 + length + 1;
                run = at;
            }
            None => at = open + 1,
        }
    }
    piece(Piece::Run(&text[run..]));
}

/// The form of `text`, in pieces, to `chunk`: runs of the text and each integer value's nine
/// bytes.
#[inline]
pub(crate) fn chunks(text: &[u8], mut chunk: impl FnMut(&[u8])) {
    pieces(text, |piece| match piece {
        Piece::Run(run) => chunk(run),
        Piece::Integer(form) => chunk(&form.to_le_bytes()[..INTEGER]),
    });
}

/// The hash of a form, fed its bytes in pieces of any size: the same for every way of cutting
/// one form into pieces (a text's runs and integers, a stored form's bytes at once, a hit
/// key's literals and string values), and for a form of at most 16 bytes the hash
/// [`head_hash`] gives its `u128`. So a [`HitPieces`] hashes its literal runs and its
/// arguments' text where they lie, never copied together.
///
/// How: the bytes are gathered into 16-byte words in a register (`padded`'s loads), each
/// full word written to the keyed hasher as a `u128`, then the last (zeros past the form,
/// written if the form does not fill it or is empty) and the form's length, which together
/// name the bytes exactly.
pub(crate) struct LongHash<H> {
    hasher: H,
    word: u128,
    filled: usize,
    len: usize,
}

impl<H: Hasher> LongHash<H> {
    #[inline(always)]
    pub(crate) fn new(hasher: H) -> Self {
        LongHash {
            hasher,
            word: 0,
            filled: 0,
            len: 0,
        }
    }

    #[inline(always)]
    pub(crate) fn piece(&mut self, piece: Piece<'_>) {
        match piece {
            Piece::Run(run) => self.bytes(run),
            Piece::Integer(form) => self.word_bytes(form, INTEGER),
        }
    }

    /// Bytes of the form.
    #[inline(always)]
    pub(crate) fn bytes(&mut self, mut run: &[u8]) {
        self.len += run.len();
        if self.filled + run.len() < HEAD {
            self.word |= padded(run).wrapping_shl(8 * self.filled as u32);
            self.filled += run.len();
            return;
        }
        let take = HEAD - self.filled;
        self.hasher
            .write_u128(self.word | padded(&run[..take]).wrapping_shl(8 * self.filled as u32));
        run = &run[take..];
        while run.len() >= HEAD {
            self.hasher.write_u128(padded(&run[..HEAD]));
            run = &run[HEAD..];
        }
        self.word = padded(run);
        self.filled = run.len();
    }

    /// `count` (at most 16) bytes of the form, given as a little-endian `u128` (zeros past
    /// them).
    #[inline(always)]
    fn word_bytes(&mut self, bytes: u128, count: usize) {
        self.len += count;
        let free = HEAD - self.filled;
        self.word |= bytes.wrapping_shl(8 * self.filled as u32);
        if count < free {
            self.filled += count;
            return;
        }
        self.hasher.write_u128(self.word);
        // The bytes that did not fit (none when `count == free`).
        self.word = match free {
            HEAD => 0,
            free => bytes >> (8 * free),
        };
        self.filled = count - free;
    }

    #[inline(always)]
    pub(crate) fn finish(mut self) -> u64 {
        if self.filled > 0 || self.len == 0 {
            self.hasher.write_u128(self.word);
        }
        self.hasher.write_usize(self.len);
        self.hasher.finish()
    }
}

/// What a form's pieces are fed to, one at a time.
pub(crate) trait PieceSink {
    fn piece(&mut self, piece: Piece<'_>);
}

impl<H: Hasher> PieceSink for LongHash<H> {
    #[inline(always)]
    fn piece(&mut self, piece: Piece<'_>) {
        LongHash::piece(self, piece);
    }
}

impl PieceSink for SameForm<'_> {
    #[inline(always)]
    fn piece(&mut self, piece: Piece<'_>) {
        SameForm::piece(self, piece);
    }
}

/// The form's bytes, put together (for messages and tests only).
impl PieceSink for Vec<u8> {
    fn piece(&mut self, piece: Piece<'_>) {
        match piece {
            Piece::Run(run) => self.extend_from_slice(run),
            Piece::Integer(integer) => self.extend_from_slice(&integer.to_le_bytes()[..INTEGER]),
        }
    }
}

/// Whether a form given in pieces is the stored form `form`: the pieces' bytes compared with
/// it piece by piece as they are fed, never put together.
pub(crate) struct SameForm<'f> {
    form: &'f [u8],
    at: usize,
    same: bool,
}

impl<'f> SameForm<'f> {
    #[inline(always)]
    pub(crate) fn new(form: &'f [u8]) -> Self {
        SameForm {
            form,
            at: 0,
            same: true,
        }
    }

    #[inline(always)]
    pub(crate) fn piece(&mut self, piece: Piece<'_>) {
        let len = match piece {
            Piece::Run(run) => run.len(),
            Piece::Integer(_) => INTEGER,
        };
        let stored = self.form.get(self.at..self.at + len);
        self.same &= match (piece, stored) {
            (Piece::Run(run), Some(stored)) => same_bytes(stored, run),
            (Piece::Integer(form), Some(stored)) => {
                same_bytes(stored, &form.to_le_bytes()[..INTEGER])
            }
            (_, None) => false,
        };
        self.at += len;
    }

    #[inline(always)]
    pub(crate) fn finish(&self) -> bool {
        self.same && self.at == self.form.len()
    }
}

/// The integer a value is, read from `rest` (the text just past its `<`), if it is one as a
/// `KeyWriter` writes it: its mark, its magnitude, and its text's length (its `>` follows).
fn integer_value(rest: &[u8]) -> Option<(u8, u64, usize)> {
    let (mark, sign) = match rest.first() {
        Some(b'-') => (NEGATIVE, 1),
        _ => (UNSIGNED, 0),
    };
    let digits = rest[sign..]
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    let end = sign + digits;
    if digits == 0 || digits > 20 || rest.get(end) != Some(&b'>') {
        return None;
    }
    let text = &rest[sign..end];
    // `007` and `-0` are texts no integer renders to: they stay text.
    if text[0] == b'0' && (digits > 1 || mark == NEGATIVE) {
        return None;
    }
    let magnitude = text.iter().try_fold(0u64, |value, digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })?;
    Some((mark, magnitude, end))
}

/// The form of `text` as a `u128` and its length, if it has at most 16 bytes (else the store
/// reads a longer form in pieces from the text), worked out from the text: for a text given as such (an invalidation by
/// text), and for a key whose builder could not follow its form (see `KeyBuilder`).
pub(crate) fn short_form(text: &[u8]) -> Option<(u128, usize)> {
    let (mut head, mut len, mut fits) = (0u128, 0, true);
    chunks(text, |chunk| {
        if fits && len + chunk.len() <= HEAD {
            head |= padded(chunk).wrapping_shl(8 * len as u32);
            len += chunk.len();
        } else {
            fits = false;
        }
    });
    fits.then_some((head, len))
}

/// The integer a whole value's text is, as a `KeyWriter` writes one, as its form's nine bytes.
#[inline]
pub(crate) fn integer_text(text: &[u8]) -> Option<u128> {
    let mut rest = [0u8; 22];
    let len = text.len();
    if len > 21 {
        return None;
    }
    rest[..len].copy_from_slice(text);
    rest[len] = b'>';
    let (mark, magnitude, length) = integer_value(&rest[..=len])?;
    (length == len).then(|| integer_form(mark, magnitude))
}

#[inline(always)]
fn integer_form(mark: u8, magnitude: u64) -> u128 {
    u128::from(mark) | u128::from(magnitude) << 8
}

/// The form's nine bytes of an unsigned integer value.
#[inline(always)]
pub(crate) fn unsigned_form(value: u64) -> u128 {
    integer_form(UNSIGNED, value)
}

/// The form's nine bytes of a signed integer value.
#[inline(always)]
pub(crate) fn signed_form(value: i64) -> u128 {
    match value < 0 {
        true => integer_form(NEGATIVE, value.unsigned_abs()),
        false => integer_form(UNSIGNED, value as u64),
    }
}

/// The hash of a form of at most 16 bytes, given as its `u128` and length.
#[inline(always)]
pub(crate) fn head_hash<S: BuildHasher>(keyed: &S, head: u128, len: usize) -> u64 {
    let mut hasher = keyed.build_hasher();
    hasher.write_u128(head);
    hasher.write_usize(len);
    hasher.finish()
}

/// A key's short form, followed by `KeyBuilder` beside the text it builds, in registers: so a
/// key built from parts knows its name in the memory store without its text being read back.
/// It follows literal text, integer values and plain string values exactly; for anything
/// else (an escaped string, nested options, a wide integer) it gives up, and the form is
/// worked out from the finished text ([`short_form`]).
#[derive(Clone, Copy, Default)]
pub(crate) struct FormBuilder {
    head: u128,
    len: usize,
    state: Followed,
    value: Value,
    /// Whether an integer value was written (a long form without one is the text).
    integers: bool,
    /// Whether something the builder does not follow was written once the form was long
    /// (a `u128`'s digits, a string then an integer in one value, a literal holding `<`):
    /// the text may then hold an integer value `integers` did not see.
    lost_long: bool,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Followed {
    /// `head` and `len` are the form so far (at most 16 bytes).
    #[default]
    Short,
    /// The form so far has more than 16 bytes: it can only grow, so the store reads it in
    /// pieces from the text.
    Long,
    /// Given up: the finished text says.
    Lost,
}

/// What the value being written (between `<` and `>`) has been so far.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Value {
    #[default]
    Outside,
    /// Nothing written yet.
    Empty,
    /// One integer: its form.
    Integer(u128),
    /// Plain text, already in the form after its `<`.
    Text,
    /// Something the builder does not follow (the form is then worked out from the text, or
    /// has no bytes to follow): not an integer the builder saw, whatever it held before.
    Lost,
}

impl FormBuilder {
    #[inline(always)]
    fn push(&mut self, bytes: u128, count: usize) {
        if self.state == Followed::Short {
            if self.len + count <= HEAD {
                self.head |= bytes.wrapping_shl(8 * self.len as u32);
                self.len += count;
            } else {
                self.state = Followed::Long;
            }
        }
    }

    /// Literal text (or text written outside any value, such as a `:hash` part's).
    #[inline(always)]
    pub(crate) fn text(&mut self, text: &[u8]) {
        match text.len() <= HEAD {
            true => self.push(padded(text), text.len()),
            false => self.push(0, text.len()),
        }
    }

    #[inline(always)]
    pub(crate) fn begin_value(&mut self) {
        self.value = Value::Empty;
    }

    /// An integer written into the value, as its form's nine bytes.
    #[inline(always)]
    pub(crate) fn integer(&mut self, form: u128) {
        match self.value {
            Value::Empty => self.value = Value::Integer(form),
            _ => self.lose(),
        }
    }

    /// Plain text written into the value (it needed no escaping).
    #[inline(always)]
    pub(crate) fn value_text(&mut self, text: &[u8]) {
        match self.value {
            Value::Empty => match integer_text(text) {
                // A string that reads as an integer has the integer's text, so its form.
                Some(form) => self.value = Value::Integer(form),
                None => {
                    self.push(u128::from(b'<'), 1);
                    self.text(text);
                    self.value = Value::Text;
                }
            },
            _ => self.lose(),
        }
    }

    /// Anything else written into the value.
    #[inline(always)]
    pub(crate) fn lose(&mut self) {
        match self.state {
            Followed::Short => self.state = Followed::Lost,
            Followed::Long => self.lost_long = true,
            Followed::Lost => {}
        }
        if self.value != Value::Outside {
            self.value = Value::Lost;
        }
    }

    #[inline(always)]
    pub(crate) fn end_value(&mut self) {
        match self.value {
            Value::Integer(form) => {
                self.integers = true;
                self.push(form, INTEGER);
            }
            Value::Text => self.push(u128::from(b'>'), 1),
            Value::Empty => self.push(u128::from(u16::from_le_bytes(*b"<>")), 2),
            Value::Outside | Value::Lost => {}
        }
        self.value = Value::Outside;
    }

    /// The key's form, given its finished `text`.
    #[inline(always)]
    pub(crate) fn finish(self, text: &str) -> Form {
        match self.state {
            Followed::Short => Form::Short(self.head, self.len),
            Followed::Long if self.integers => Form::Long,
            Followed::Long if self.lost_long => long_form(text),
            Followed::Long => Form::Text,
            Followed::Lost => match short_form(text.as_bytes()) {
                Some((head, len)) => Form::Short(head, len),
                None => long_form(text),
            },
        }
    }
}

/// The form of a text whose form is longer than 16 bytes, read from the text: whether it holds
/// an integer value.
fn long_form(text: &str) -> Form {
    let mut integers = false;
    pieces(text.as_bytes(), |piece| {
        integers |= matches!(piece, Piece::Integer(_));
    });
    if integers {
        Form::Long
    } else {
        Form::Text
    }
}

/// What a built key's form is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Form {
    /// At most 16 bytes, as a `u128` and its length.
    Short(u128, usize),
    /// Longer, and the text itself: the text holds no integer value, so a probe hashes and
    /// compares its bytes as one run, without reading it for values.
    Text,
    /// Longer, with integer values: read in pieces from the text.
    Long,
}

/// The key of an in-process hit, built from a template's literal text and integer arguments
/// without rendering text: the canonical form of the key's text, in a register. The `#[cached]`
/// expansion asks a hit with one where every placeholder is a plain integer parameter, before
/// it builds the key's text for the rest of the call; a form longer than 16 bytes does not
/// fit, and the expansion asks with a [`HitPieces`] instead.
///
/// Not a stable API (it is reached through the macros' `__private`).
#[doc(hidden)]
#[derive(Clone, Copy, Default)]
pub struct HitKey {
    head: u128,
    len: usize,
    overflowed: bool,
}

impl HitKey {
    /// An empty key.
    #[inline(always)]
    pub fn new() -> Self {
        HitKey::default()
    }

    /// Literal template text, as [`KeyBuilder::lit`](super::KeyBuilder::lit) appends it.
    #[inline(always)]
    pub fn lit(self, text: &str) -> Self {
        self.push(padded_or_zero(text.as_bytes()), text.len())
    }

    /// A placeholder holding an unsigned integer.
    #[inline(always)]
    pub fn uint(self, value: u64) -> Self {
        self.push(unsigned_form(value), INTEGER)
    }

    /// A placeholder holding a signed integer.
    #[inline(always)]
    pub fn int(self, value: i64) -> Self {
        self.push(signed_form(value), INTEGER)
    }

    #[inline(always)]
    fn push(mut self, bytes: u128, count: usize) -> Self {
        if self.len + count <= HEAD {
            self.head |= bytes.wrapping_shl(8 * self.len as u32);
            self.len += count;
        } else {
            self.overflowed = true;
        }
        self
    }

    /// The form as a `u128` and its length, if it fits one.
    #[inline(always)]
    pub(crate) fn head(&self) -> Option<(u128, usize)> {
        (!self.overflowed).then_some((self.head, self.len))
    }
}

/// What a hit key names in the memory store (see [`AsHitKey`]).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub enum HitName<'a> {
    /// A form of at most 16 bytes, as its `u128` (zeros past it) and length.
    Short { head: u128, len: usize },
    /// A form in pieces (longer than 16 bytes, or holding a string argument): each of `runs`
    /// followed by the value of `values` at its index, then `last`.
    Pieces {
        runs: &'a [&'a str],
        values: &'a [HitValue<'a>],
        last: &'a str,
    },
}

impl HitName<'_> {
    /// The pieces of a long name, to `sink`, in order.
    ///
    /// A sink rather than a closure: a closure called from this many places was not
    /// inlined, and its state (the hash's word) went through memory on every piece.
    #[inline(always)]
    pub(crate) fn each_piece(&self, sink: &mut impl PieceSink) {
        if let HitName::Pieces { runs, values, last } = *self {
            for (run, value) in runs.iter().zip(values) {
                sink.piece(Piece::Run(run.as_bytes()));
                match *value {
                    HitValue::Integer(form) => sink.piece(Piece::Integer(form)),
                    HitValue::Text(text) => {
                        sink.piece(Piece::Run(b"<"));
                        sink.piece(Piece::Run(text.as_bytes()));
                        sink.piece(Piece::Run(b">"));
                    }
                    // `name` gives no name with one of these.
                    HitValue::Unfollowed => {}
                }
            }
            sink.piece(Piece::Run(last.as_bytes()));
        }
    }
}

/// A key an in-process hit can be asked by without its text: a [`HitKey`] or [`HitPieces`].
///
/// Not a stable API (it is reached through the macros' `__private`).
#[doc(hidden)]
pub trait AsHitKey: fmt::Display {
    /// Its name, or `None` if it has none (the caller then asks by the key's text).
    fn name(&self) -> Option<HitName<'_>>;

    /// Its probe's hash, if it was worked out where the key was made (see
    /// `backend::memory::HashedHit`).
    #[inline(always)]
    fn known_hash(&self) -> Option<u64> {
        None
    }
}

impl AsHitKey for HitKey {
    #[inline(always)]
    fn name(&self) -> Option<HitName<'_>> {
        let (head, len) = self.head()?;
        Some(HitName::Short { head, len })
    }
}

/// The hit key of a template whose form may be longer than the 16 bytes a [`HitKey`] holds
/// (a long literal, several integers, a default key's function path) or whose arguments
/// include strings: its literal runs as given (`'static` text from the expansion), each
/// followed by an argument's value, then a last run. The memory store hashes and compares
/// such a form piece by piece, so the text is never rendered and neither the runs nor the
/// strings are copied together.
///
/// Not a stable API (it is reached through the macros' `__private`).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct HitPieces<'a, const N: usize> {
    runs: [&'a str; N],
    values: [HitValue<'a>; N],
    last: &'a str,
}

/// An argument's value in a [`HitPieces`]: made by [`hit_uint`], [`hit_int`] or [`hit_str`].
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub enum HitValue<'a> {
    /// An integer, as its form's nine bytes.
    Integer(u128),
    /// A string that needs no escaping and does not read as an integer: it stands in the
    /// form as it is, between `<` and `>`.
    Text(&'a str),
    /// A string a hit key does not follow (one that needs escaping): the hit is asked by the
    /// key's text instead.
    Unfollowed,
}

impl<'a, const N: usize> HitPieces<'a, N> {
    /// `runs[i]`, then the value `values[i]`, for each `i`; then `last`. Runs are literal
    /// template text: no `<`, `>`, `{` or `}` (the macros check it).
    #[inline(always)]
    pub fn new(runs: [&'a str; N], values: [HitValue<'a>; N], last: &'a str) -> Self {
        HitPieces { runs, values, last }
    }

    /// The form's length in bytes (constant where the runs are literals and the values
    /// integers).
    #[inline(always)]
    fn len(&self) -> usize {
        let values: usize = self
            .values
            .iter()
            .map(|value| match value {
                HitValue::Integer(_) => INTEGER,
                HitValue::Text(text) => text.len() + 2,
                HitValue::Unfollowed => 0,
            })
            .sum();
        self.runs.iter().map(|run| run.len()).sum::<usize>() + values + self.last.len()
    }

    fn form(&self) -> Vec<u8> {
        let mut form = Vec::with_capacity(self.len());
        self.as_name().each_piece(&mut form);
        form
    }

    #[inline(always)]
    fn as_name(&self) -> HitName<'_> {
        HitName::Pieces {
            runs: &self.runs,
            values: &self.values,
            last: self.last,
        }
    }
}

/// An unsigned integer argument of a [`HitPieces`].
#[doc(hidden)]
#[inline(always)]
pub fn hit_uint(value: u64) -> HitValue<'static> {
    HitValue::Integer(unsigned_form(value))
}

/// A signed integer argument of a [`HitPieces`].
#[doc(hidden)]
#[inline(always)]
pub fn hit_int(value: i64) -> HitValue<'static> {
    HitValue::Integer(signed_form(value))
}

/// A string argument of a [`HitPieces`]: in the form as `KeyWriter::write_str` writes it,
/// when it needs no escaping (else [`HitValue::Unfollowed`]); a string that reads as an
/// integer (`"42"`) has that integer's text, so its form.
#[doc(hidden)]
#[inline(always)]
pub fn hit_str(text: &str) -> HitValue<'_> {
    if !super::needs_no_escape(text) {
        return HitValue::Unfollowed;
    }
    match text.as_bytes().first() {
        Some(b'0'..=b'9' | b'-') => match integer_text(text.as_bytes()) {
            Some(form) => HitValue::Integer(form),
            None => HitValue::Text(text),
        },
        _ => HitValue::Text(text),
    }
}

/// A parameter the expansion found written as `&str`, `String` or `&String`, before the type
/// checker has said which `str` or `String` it is: the macro sees names only, and a user's type
/// of that name (one that derefs to `str` but writes another key text) must not be asked as
/// `std`'s. `(&HitArg(&name)).__cachette_hit_value()` is [`hit_str`] for `std`'s types (the
/// inherent method, whose bound holds only for them) and [`HitValue::Unfollowed`] for any
/// other ([`OtherHitArg`], found one auto-reference later), which asks the hit by the key's
/// text. The name is the crate's own, so that no user's trait in scope is found first.
#[doc(hidden)]
pub struct HitArg<'a, T: ?Sized>(pub &'a T);

impl<'a, T: StdText + ?Sized> HitArg<'a, T> {
    /// The string's [`hit_str`].
    #[doc(hidden)]
    #[inline(always)]
    pub fn __cachette_hit_value(&self) -> HitValue<'a> {
        hit_str(self.0.std_text())
    }
}

/// The [`HitArg`] of a type that is not `std`'s `str` or `String`: the text path.
#[doc(hidden)]
pub trait OtherHitArg {
    /// [`HitValue::Unfollowed`].
    fn __cachette_hit_value(&self) -> HitValue<'static>;
}

impl<T: ?Sized> OtherHitArg for &HitArg<'_, T> {
    #[inline(always)]
    fn __cachette_hit_value(&self) -> HitValue<'static> {
        HitValue::Unfollowed
    }
}

/// `std`'s string types, whose key text is the string itself (`KeyPart` for `str` and
/// `String`), and references to them (a `ref` binding adds one). Sealed: implemented here only.
#[doc(hidden)]
pub trait StdText: sealed::Sealed {
    #[doc(hidden)]
    fn std_text(&self) -> &str;
}

impl StdText for str {
    #[inline(always)]
    fn std_text(&self) -> &str {
        self
    }
}

impl StdText for String {
    #[inline(always)]
    fn std_text(&self) -> &str {
        self
    }
}

impl<T: StdText + ?Sized> StdText for &T {
    #[inline(always)]
    fn std_text(&self) -> &str {
        (**self).std_text()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for str {}
    impl Sealed for String {}
    impl<T: Sealed + ?Sized> Sealed for &T {}
}

impl<const N: usize> AsHitKey for HitPieces<'_, N> {
    #[inline(always)]
    fn name(&self) -> Option<HitName<'_>> {
        let mut integers = true;
        for value in &self.values {
            match value {
                HitValue::Integer(_) => {}
                HitValue::Text(_) => integers = false,
                HitValue::Unfollowed => return None,
            }
        }
        if !integers || self.len() > HEAD {
            return Some(self.as_name());
        }
        // A short one of integers (a default key in a crate's root, say) has the name a
        // `HitKey` gives.
        let mut key = HitKey::new();
        for (run, value) in self.runs.iter().zip(self.values) {
            if let HitValue::Integer(form) = value {
                key = key.lit(run).push(form, INTEGER);
            }
        }
        let (head, len) = key.lit(self.last).head()?;
        Some(HitName::Short { head, len })
    }
}

impl<const N: usize> fmt::Debug for HitPieces<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<const N: usize> fmt::Display for HitPieces<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text_of(&self.form()))
    }
}

/// A literal's bytes as a `u128`, or 0 for one too long to be pushed (the push then marks the
/// key overflowed, by its length).
#[inline(always)]
fn padded_or_zero(bytes: &[u8]) -> u128 {
    if bytes.len() <= HEAD {
        padded(bytes)
    } else {
        0
    }
}

/// The text of a form (the inverse of [`chunks`]): for the messages that name a key.
pub(crate) fn text_of(form: &[u8]) -> String {
    let mut text = String::new();
    let mut at = 0;
    while at < form.len() {
        let run = form[at..]
            .iter()
            .position(|&byte| byte == UNSIGNED || byte == NEGATIVE)
            .map_or(form.len(), |offset| at + offset);
        text.push_str(&String::from_utf8_lossy(&form[at..run]));
        if run + INTEGER > form.len() {
            break;
        }
        let magnitude = u64::from_le_bytes(form[run + 1..run + INTEGER].try_into().expect("8"));
        let sign = if form[run] == NEGATIVE { "-" } else { "" };
        text.push_str(&format!("<{sign}{magnitude}>"));
        at = run + INTEGER;
    }
    text
}

impl fmt::Debug for HitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for HitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.head() {
            Some((head, len)) => f.write_str(&text_of(&head.to_le_bytes()[..len])),
            None => f.write_str("(a key too long for a hit key)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheKey, KeyBuilder};
    use proptest::prelude::*;

    /// Whether `text`'s form is long and the text itself, read from the text.
    pub(super) fn form_is_text(text: &str) -> bool {
        short_form(text.as_bytes()).is_none() && form(text) == text.as_bytes()
    }

    fn form(text: &str) -> Vec<u8> {
        let mut form = Vec::new();
        chunks(text.as_bytes(), |chunk| form.extend_from_slice(chunk));
        form
    }

    #[test]
    fn integer_values_are_rewritten_and_everything_else_is_kept() {
        let mut expected = b"user:".to_vec();
        expected.push(UNSIGNED);
        expected.extend_from_slice(&42u64.to_le_bytes());
        assert_eq!(form("user:<42>"), expected);
        for kept in [
            "user:42",
            "user:<007>",
            "user:<-0>",
            "user:<18446744073709551616>",
            "user:<4a>",
            "user:<>",
            "user:<42",
            "<%none>",
            "<#00ff>",
        ] {
            assert_eq!(form(kept), kept.as_bytes(), "{kept}");
        }
        assert_eq!(text_of(&form("a<-7>b<0><x>")), "a<-7>b<0><x>");
    }

    #[derive(Debug, Clone)]
    enum Part {
        Lit(String),
        Uint(u64),
        Int(i64),
        Str(String),
        Opt(Option<Option<u32>>),
        Wide(u128),
    }

    fn part() -> impl Strategy<Value = Part> {
        prop_oneof![
            "[a-z0-9:]{0,6}".prop_map(Part::Lit),
            prop_oneof![0..20u64, any::<u64>()].prop_map(Part::Uint),
            prop_oneof![-20..20i64, any::<i64>()].prop_map(Part::Int),
            "[0-9\\-]{0,4}".prop_map(Part::Str),
            "[ a%<0-9]{0,3}".prop_map(Part::Str),
            any::<Option<Option<u32>>>().prop_map(Part::Opt),
            prop_oneof![0..20u128, any::<u128>()].prop_map(Part::Wide),
        ]
    }

    fn built_key(parts: &[Part]) -> CacheKey {
        let mut builder = KeyBuilder::new();
        for part in parts {
            builder = match part {
                Part::Lit(text) => builder.lit(text),
                Part::Uint(value) => builder.arg(value),
                Part::Int(value) => builder.arg(value),
                Part::Str(value) => builder.arg(value),
                Part::Opt(value) => builder.arg(value),
                Part::Wide(value) => builder.arg(value),
            };
        }
        builder.finish()
    }

    fn text_key(parts: &[Part]) -> String {
        built_key(parts).as_str().to_owned()
    }

    proptest! {
        #[test]
        fn a_hit_key_is_the_form_of_the_text_of_the_same_parts(
            parts in proptest::collection::vec(part(), 0..4)
        ) {
            let mut hit = HitKey::new();
            let mut typed = true;
            for part in &parts {
                hit = match part {
                    Part::Lit(text) => hit.lit(text),
                    Part::Uint(value) => hit.uint(*value),
                    Part::Int(value) => hit.int(*value),
                    Part::Str(_) | Part::Opt(_) | Part::Wide(_) => {
                        typed = false;
                        hit
                    }
                };
            }
            let text = text_key(&parts);
            let form = form(&text);
            if let (true, Some((head, len))) = (typed, hit.head()) {
                prop_assert_eq!(&head.to_le_bytes()[..len], &form[..]);
            }
            prop_assert_eq!(text_of(&form), text);
        }

        /// A form hashes alike however it is cut into pieces, and a short one as its `u128`.
        #[test]
        fn a_form_hashes_alike_in_any_pieces(
            form in proptest::collection::vec(any::<u8>(), 0..70),
            cuts in proptest::collection::vec(0..70usize, 0..8),
            integer in proptest::option::of(any::<u64>()),
        ) {
            let keyed = ahash::RandomState::with_seeds(1, 2, 3, 4);
            let mut whole = LongHash::new(keyed.build_hasher());
            let mut bytes = form.clone();
            if let Some(value) = integer {
                bytes.extend_from_slice(&unsigned_form(value).to_le_bytes()[..INTEGER]);
            }
            whole.bytes(&bytes);
            let whole = whole.finish();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut.min(form.len())).collect();
            cuts.sort_unstable();
            let mut cut = LongHash::new(keyed.build_hasher());
            let mut at = 0;
            for end in cuts.into_iter().chain([form.len()]) {
                cut.bytes(&form[at..end]);
                at = end;
            }
            if let Some(value) = integer {
                cut.piece(Piece::Integer(unsigned_form(value)));
            }
            prop_assert_eq!(cut.finish(), whole);
            if bytes.len() <= HEAD {
                let mut head = [0u8; HEAD];
                head[..bytes.len()].copy_from_slice(&bytes);
                prop_assert_eq!(head_hash(&keyed, u128::from_le_bytes(head), bytes.len()), whole);
            }
        }

        #[test]
        fn two_texts_share_a_form_only_if_they_are_one(
            a in proptest::collection::vec(part(), 0..4),
            b in proptest::collection::vec(part(), 0..4),
        ) {
            let (a, b) = (text_key(&a), text_key(&b));
            prop_assert_eq!(form(&a) == form(&b), a == b);
        }

        #[test]
        fn a_key_built_knows_the_short_form_its_text_has(
            parts in proptest::collection::vec(part(), 0..4)
        ) {
            let key = built_key(&parts);
            prop_assert_eq!(key.form(), short_form(key.as_str().as_bytes()));
            prop_assert_eq!(key.form_is_text(), form_is_text(key.as_str()), "{}", key.as_str());
        }
    }
}

#[cfg(test)]
mod review_tests {
    use super::*;
    use crate::key::{KeyPart, KeyWriter};
    use crate::KeyBuilder;
    use proptest::prelude::*;

    /// One call a user's `KeyPart` makes on its writer.
    #[derive(Debug, Clone)]
    enum Write {
        Str(String),
        Int(i128),
        None,
        U64(u64),
        I64(i64),
        Nested(Option<Option<u8>>),
    }

    /// A user's `KeyPart` that writes its value in several calls, in any order.
    #[derive(Debug, Clone)]
    struct Odd(Vec<Write>);

    impl KeyPart for Odd {
        fn write_key_part(&self, out: &mut KeyWriter<'_>) {
            for write in &self.0 {
                match write {
                    Write::Str(text) => out.write_str(text),
                    Write::Int(value) => out.write_int(*value),
                    Write::None => out.write_none(),
                    Write::U64(value) => value.write_key_part(out),
                    Write::I64(value) => value.write_key_part(out),
                    Write::Nested(value) => value.write_key_part(out),
                }
            }
        }
    }

    fn write() -> impl Strategy<Value = Write> {
        prop_oneof![
            "[0-9\\-]{0,3}".prop_map(Write::Str),
            "[a0-9%<> -]{0,3}".prop_map(Write::Str),
            prop_oneof![-20..20i128, any::<i128>()].prop_map(Write::Int),
            Just(Write::None),
            prop_oneof![0..20u64, any::<u64>()].prop_map(Write::U64),
            prop_oneof![-20..20i64, any::<i64>()].prop_map(Write::I64),
            any::<Option<Option<u8>>>().prop_map(Write::Nested),
        ]
    }

    fn key(parts: &[(String, Odd)]) -> crate::CacheKey {
        parts
            .iter()
            .fold(KeyBuilder::new(), |builder, (lit, odd)| {
                builder.lit(lit).arg(odd)
            })
            .finish()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// However a `KeyPart` writes its value, the form the builder followed is the form of
        /// the text it built, and two keys share a name only if they share a text.
        #[test]
        fn odd_key_parts_keep_the_form_of_their_text(
            a in proptest::collection::vec(("[a-z:]{0,5}", proptest::collection::vec(write(), 0..4).prop_map(Odd)), 0..3),
            b in proptest::collection::vec(("[a-z:]{0,5}", proptest::collection::vec(write(), 0..4).prop_map(Odd)), 0..3),
        ) {
            let (ka, kb) = (key(&a), key(&b));
            prop_assert_eq!(ka.form(), short_form(ka.as_str().as_bytes()), "{}", ka.as_str());
            prop_assert_eq!(kb.form(), short_form(kb.as_str().as_bytes()), "{}", kb.as_str());
            prop_assert_eq!(ka.form_is_text(), super::tests::form_is_text(ka.as_str()), "{}", ka.as_str());
            prop_assert_eq!(kb.form_is_text(), super::tests::form_is_text(kb.as_str()), "{}", kb.as_str());
            if ka.as_str() != kb.as_str() {
                prop_assert!(ka.form().is_none() || ka.form() != kb.form(), "{} {}", ka.as_str(), kb.as_str());
            }
        }
    }
}
