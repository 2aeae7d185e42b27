//! The versioned envelope around a serialised value, as a remote backend stores it.
//!
//! A remote store outlives the process that wrote to it: it may hold values written by an older
//! build, by a build whose value type changed, or bytes that are not ours at all. The envelope
//! lets a reader tell all of these apart from a good value and treat them as a miss, instead of
//! misinterpreting them.
//!
//! Stored bytes are `header || payload`. The header has a fixed layout, all integers
//! little-endian:
//!
//! | offset | size | field                                                                    |
//! |-------:|-----:|--------------------------------------------------------------------------|
//! |      0 |    4 | magic, `b"CCHT"`                                                         |
//! |      4 |    1 | envelope format version, `2`                                            |
//! |      5 |    1 | codec id (`1`: bincode 2, serde, standard configuration)                |
//! |      6 |    8 | type fingerprint: xxh3-64 of the type name then the schema version (u32) |
//! |     14 |    8 | key hash: which entry the value was written for (the caller's hash)     |
//! |     22 |    8 | `created_at_ms`, unix milliseconds                                      |
//! |     30 |    8 | `fresh_until_ms`, unix milliseconds                                     |
//! |     38 |    8 | `stale_until_ms`, unix milliseconds                                     |
//! |     46 |    4 | payload length in bytes (u32)                                           |
//! |     50 |    8 | checksum: xxh3-64 of bytes `0..50` then the payload                     |
//! |     58 |    … | payload, exactly `payload length` bytes                                 |
//!
//! The magic and the format version come first and keep their place in every future version,
//! so that a reader can always say *which* envelope it is looking at before parsing the rest.
//! The checksum covers the timestamps as well as the payload: a flipped bit in
//! `stale_until_ms` would otherwise silently keep a value alive for years.
//!
//! The key hash makes a value valid only where it was written: the bytes say nothing else
//! about their key, so a good envelope copied under another key (`COPY`, `RENAME`, a restore
//! into the wrong place) would otherwise be served as that key's value. Format 1 had no key
//! hash; its entries are refused by version, a miss that the next fill overwrites.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use xxhash_rust::xxh3::Xxh3Default;

/// The first bytes of every envelope.
pub(crate) const MAGIC: [u8; 4] = *b"CCHT";

/// The envelope format this module writes, and the only one it reads.
pub(crate) const FORMAT_VERSION: u8 = 2;

/// Length of the fixed header, in bytes.
pub(crate) const HEADER_LEN: usize = 58;

/// The part of the header the checksum covers, besides the payload: everything before it.
const CHECKSUMMED_HEADER_LEN: usize = 50;

/// The most a payload may make the decoder claim, in bytes: 16 MiB.
///
/// Bincode counts this budget against the in-memory size of what it decodes (a `u64` counts
/// 8 bytes, a string its length), before allocating. It is what stops a corrupt or hostile
/// length prefix (`2^40` elements) from turning into an allocation of that size. Encoding
/// rejects payloads longer than this, since they could never be read back.
pub(crate) const MAX_PAYLOAD_LEN: usize = 16 * 1024 * 1024;

/// Why stored bytes could not be turned into a value, or a value into bytes.
///
/// On the read path every variant means the same to the caller, a miss; they are distinct so
/// that logs say which of "not ours", "older build" and "corrupt" happened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvelopeError {
    /// No bytes at all.
    #[error("empty envelope")]
    Empty,
    /// Fewer bytes than the header, or than the header's payload length, requires.
    #[error("truncated envelope")]
    Truncated,
    /// The bytes do not start with [`MAGIC`]: not written by this crate.
    #[error("not a cachette envelope (bad magic)")]
    BadMagic,
    /// Written by a build with another envelope format.
    #[error("unsupported envelope format version {0}")]
    UnsupportedEnvelopeVersion(u8),
    /// Written for another key: a valid entry copied, renamed or restored to where it does not
    /// belong.
    #[error("key hash mismatch: expected {expected:#018x}, found {found:#018x}")]
    KeyMismatch {
        /// The hash of the key being read.
        expected: u64,
        /// The hash in the header.
        found: u64,
    },
    /// Written with a codec this reader was not asked to use.
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    /// Written for another type, or another schema version of this type.
    #[error("type fingerprint mismatch: expected {expected:#018x}, found {found:#018x}")]
    TypeMismatch {
        /// The fingerprint of the type being read.
        expected: u64,
        /// The fingerprint in the header.
        found: u64,
    },
    /// The bytes after the header, or those the codec consumed, differ from the payload length.
    #[error("payload length does not match the header")]
    LengthMismatch,
    /// The checksum does not match: the bytes were altered after they were written.
    #[error("checksum mismatch: expected {expected:#018x}, found {found:#018x}")]
    ChecksumMismatch {
        /// The checksum of the bytes as read.
        expected: u64,
        /// The checksum in the header.
        found: u64,
    },
    /// The codec could not decode the payload.
    #[error("payload does not decode: {0}")]
    Payload(String),
    /// The value could not be encoded.
    #[error("value does not encode: {0}")]
    Encode(String),
}

/// A serialisation format for payloads, identified in the header by [`Codec::ID`].
pub(crate) trait Codec {
    /// The codec's id in the header; never reused for another format.
    const ID: u8;

    /// Appends the encoding of `value` to `out`.
    fn encode<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), EnvelopeError>;

    /// Decodes a value that must span exactly `bytes`.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EnvelopeError>;
}

/// Bincode 2 through serde, standard configuration (varint integers, little-endian).
pub(crate) struct Bincode;

impl Codec for Bincode {
    const ID: u8 = 1;

    fn encode<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
            .map(drop)
            .map_err(|error| EnvelopeError::Encode(error.to_string()))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EnvelopeError> {
        let config = bincode::config::standard().with_limit::<MAX_PAYLOAD_LEN>();
        let (value, read) = bincode::serde::decode_from_slice(bytes, config)
            .map_err(|error| EnvelopeError::Payload(error.to_string()))?;
        // A shorter read means the bytes are not what the writer produced for this type, even
        // if a prefix of them happens to decode.
        if read != bytes.len() {
            return Err(EnvelopeError::LengthMismatch);
        }
        Ok(value)
    }
}

/// The lifetime of an entry, in unix milliseconds, as the writer decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Times {
    /// When the value was computed.
    pub(crate) created_at_ms: u64,
    /// Until when the value may be served without recomputing it.
    pub(crate) fresh_until_ms: u64,
    /// Until when the value may still be served while it is recomputed.
    pub(crate) stale_until_ms: u64,
}

/// The decoded header of a valid envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// When the value was computed, unix milliseconds.
    pub(crate) created_at_ms: u64,
    /// Until when the value may be served without recomputing it, unix milliseconds.
    pub(crate) fresh_until_ms: u64,
    /// Until when the value may still be served while it is recomputed, unix milliseconds.
    pub(crate) stale_until_ms: u64,
    /// The codec the payload was written with.
    pub(crate) codec: u8,
    /// The type fingerprint, see [`fingerprint`].
    pub(crate) fingerprint: u64,
    /// The hash of the key the entry was written for.
    pub(crate) key_hash: u64,
}

impl Header {
    /// The entry's lifetime, in the form [`encode`] takes it.
    pub(crate) fn times(&self) -> Times {
        Times {
            created_at_ms: self.created_at_ms,
            fresh_until_ms: self.fresh_until_ms,
            stale_until_ms: self.stale_until_ms,
        }
    }

    /// How long the entry is still fresh at `now_ms` (served without a load), or `None`.
    pub(crate) fn fresh_remaining(&self, now_ms: u64) -> Option<Duration> {
        self.fresh_until_ms
            .checked_sub(now_ms)
            .filter(|&left| left > 0)
            .map(Duration::from_millis)
    }

    /// How long the entry may still be served at `now_ms`, or `None` once it may not.
    ///
    /// The caller reads the clock once and passes it in: deciding "still alive?" on one
    /// reading and computing "how long?" on a later one can underflow at the boundary.
    pub(crate) fn remaining(&self, now_ms: u64) -> Option<Duration> {
        self.stale_until_ms
            .checked_sub(now_ms)
            .filter(|&left| left > 0)
            .map(Duration::from_millis)
    }
}

/// The fingerprint of `T` at `schema_version`: xxh3-64 of the type name, then the version as
/// 4 little-endian bytes.
///
/// The type name is not guaranteed stable across compiler versions; if it changes, old entries
/// merely stop matching and are recomputed, which is the safe direction. The schema version is
/// for changes the name cannot see, such as a field added to the struct.
pub(crate) fn fingerprint<T: ?Sized>(schema_version: u32) -> u64 {
    let mut hasher = Xxh3Default::new();
    hasher.update(std::any::type_name::<T>().as_bytes());
    hasher.update(&schema_version.to_le_bytes());
    hasher.digest()
}

/// Wraps `value` in an envelope written with codec `C`, for the entry whose key hashes to
/// `key_hash` (the caller decides what the hash covers; [`decode`] must be given the same).
pub(crate) fn encode<T: Serialize, C: Codec>(
    value: &T,
    schema_version: u32,
    key_hash: u64,
    times: Times,
) -> Result<Vec<u8>, EnvelopeError> {
    // The header is written last, in place, so that the payload is encoded straight into the
    // buffer that gets stored.
    let mut out = vec![0; HEADER_LEN];
    C::encode(value, &mut out)?;
    let payload_len = out.len() - HEADER_LEN;
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(EnvelopeError::Encode(format!(
            "payload of {payload_len} bytes exceeds the limit of {MAX_PAYLOAD_LEN}"
        )));
    }
    let payload_len = u32::try_from(payload_len)
        .map_err(|_| EnvelopeError::Encode("payload longer than u32::MAX".into()))?;
    let ids = Ids {
        codec: C::ID,
        fingerprint: fingerprint::<T>(schema_version),
        key_hash,
    };
    write_header(&mut out, ids, times, payload_len);
    Ok(out)
}

/// What an entry was written with and for: the header fields a reader must match.
#[derive(Clone, Copy)]
struct Ids {
    codec: u8,
    fingerprint: u64,
    key_hash: u64,
}

/// Fills `out[..HEADER_LEN]`, checksum included, for the payload that follows it.
fn write_header(out: &mut [u8], ids: Ids, times: Times, payload_len: u32) {
    let (header, payload) = out.split_at_mut(HEADER_LEN);
    let mut fields = Vec::with_capacity(CHECKSUMMED_HEADER_LEN);
    fields.extend_from_slice(&MAGIC);
    fields.push(FORMAT_VERSION);
    fields.push(ids.codec);
    fields.extend_from_slice(&ids.fingerprint.to_le_bytes());
    fields.extend_from_slice(&ids.key_hash.to_le_bytes());
    fields.extend_from_slice(&times.created_at_ms.to_le_bytes());
    fields.extend_from_slice(&times.fresh_until_ms.to_le_bytes());
    fields.extend_from_slice(&times.stale_until_ms.to_le_bytes());
    fields.extend_from_slice(&payload_len.to_le_bytes());
    debug_assert_eq!(fields.len(), CHECKSUMMED_HEADER_LEN);
    let sum = checksum(&fields, payload);
    fields.extend_from_slice(&sum.to_le_bytes());
    header.copy_from_slice(&fields);
}

fn checksum(header: &[u8], payload: &[u8]) -> u64 {
    let mut hasher = Xxh3Default::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.digest()
}

/// Reads a value of type `T` at `schema_version`, written with codec `C` for the key that
/// hashes to `key_hash`, from an envelope.
///
/// Any input is safe: malformed bytes give an error, never a panic or an unbounded allocation.
pub(crate) fn decode<T: DeserializeOwned, C: Codec>(
    bytes: &[u8],
    schema_version: u32,
    key_hash: u64,
) -> Result<(Header, T), EnvelopeError> {
    if bytes.is_empty() {
        return Err(EnvelopeError::Empty);
    }
    // Magic and version are judged on whatever is there, before asking for a whole header:
    // a short foreign value is "not ours" rather than "truncated", and a future format may
    // have a shorter header.
    let magic_seen = bytes.get(..MAGIC.len()).unwrap_or(bytes);
    if !MAGIC.starts_with(magic_seen) {
        return Err(EnvelopeError::BadMagic);
    }
    if let Some(&version) = bytes.get(MAGIC.len()) {
        if version != FORMAT_VERSION {
            return Err(EnvelopeError::UnsupportedEnvelopeVersion(version));
        }
    }

    let mut reader = Reader(bytes);
    let (_magic, _version) = (reader.array::<4>()?, reader.u8()?);
    let codec = reader.u8()?;
    let found = reader.u64()?;
    let found_key_hash = reader.u64()?;
    let times = Times {
        created_at_ms: reader.u64()?,
        fresh_until_ms: reader.u64()?,
        stale_until_ms: reader.u64()?,
    };
    let payload_len = reader.u32()?;
    let stored_sum = reader.u64()?;
    let payload = reader.0;

    if codec != C::ID {
        return Err(EnvelopeError::UnknownCodec(codec));
    }
    let expected = fingerprint::<T>(schema_version);
    if found != expected {
        return Err(EnvelopeError::TypeMismatch { expected, found });
    }
    if found_key_hash != key_hash {
        return Err(EnvelopeError::KeyMismatch {
            expected: key_hash,
            found: found_key_hash,
        });
    }
    // A u32 always fits in usize on the targets we support; saturating keeps a hypothetical
    // 16-bit target on the error path instead of a wrap-around.
    let payload_len = usize::try_from(payload_len).unwrap_or(usize::MAX);
    match payload.len().cmp(&payload_len) {
        std::cmp::Ordering::Less => return Err(EnvelopeError::Truncated),
        std::cmp::Ordering::Greater => return Err(EnvelopeError::LengthMismatch),
        std::cmp::Ordering::Equal => {}
    }
    let covered = bytes
        .get(..CHECKSUMMED_HEADER_LEN)
        .ok_or(EnvelopeError::Truncated)?;
    let actual_sum = checksum(covered, payload);
    if actual_sum != stored_sum {
        return Err(EnvelopeError::ChecksumMismatch {
            expected: actual_sum,
            found: stored_sum,
        });
    }

    let value = C::decode(payload)?;
    let header = Header {
        created_at_ms: times.created_at_ms,
        fresh_until_ms: times.fresh_until_ms,
        stale_until_ms: times.stale_until_ms,
        codec,
        fingerprint: found,
        key_hash,
    };
    Ok((header, value))
}

/// A cursor over the header that can only fail, never index out of bounds.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(EnvelopeError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        self.array::<1>().map(|[byte]| byte)
    }

    fn u32(&mut self) -> Result<u32, EnvelopeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, EnvelopeError> {
        self.array().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Profile {
        id: u64,
        name: String,
        email: String,
        tags: Vec<String>,
        scores: Vec<u32>,
        active: bool,
        ratio: f64,
        note: Option<String>,
    }

    fn profile() -> Profile {
        Profile {
            id: 0xdead_beef_cafe,
            name: "Ada Lovelace".into(),
            email: "ada@analytical-engine.example".into(),
            tags: vec![
                "math".into(),
                "poetry".into(),
                "engines".into(),
                "notes".into(),
            ],
            scores: (0..40).map(|i| i * 1_000).collect(),
            active: true,
            ratio: 0.618,
            note: Some("first published algorithm, translated from Menabrea".into()),
        }
    }

    const TIMES: Times = Times {
        created_at_ms: 1_700_000_000_000,
        fresh_until_ms: 1_700_000_060_000,
        stale_until_ms: 1_700_000_600_000,
    };

    /// The key hash the tests' envelopes are written for.
    const KEY: u64 = 0x6b65_795f_6861_7368;

    fn envelope() -> Vec<u8> {
        encode::<_, Bincode>(&profile(), 3, KEY, TIMES).expect("encodes")
    }

    /// An envelope with a valid checksum around an arbitrary payload, as a hostile or buggy
    /// writer could produce.
    fn sealed(fingerprint: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0; HEADER_LEN];
        out.extend_from_slice(payload);
        let len = u32::try_from(payload.len()).expect("small payload");
        let ids = Ids {
            codec: Bincode::ID,
            fingerprint,
            key_hash: KEY,
        };
        write_header(&mut out, ids, TIMES, len);
        out
    }

    fn decode_profile(bytes: &[u8]) -> Result<(Header, Profile), EnvelopeError> {
        decode::<Profile, Bincode>(bytes, 3, KEY)
    }

    #[test]
    fn round_trip() {
        let bytes = envelope();
        assert!(
            (150..=300).contains(&(bytes.len() - HEADER_LEN)),
            "payload of {} bytes",
            bytes.len() - HEADER_LEN
        );
        assert_eq!(&bytes[..4], b"CCHT");
        let (header, value) = decode_profile(&bytes).expect("decodes");
        assert_eq!(value, profile());
        assert_eq!(header.times(), TIMES);
        assert_eq!(header.codec, Bincode::ID);
        assert_eq!(header.fingerprint, fingerprint::<Profile>(3));
        assert_eq!(header.key_hash, KEY);
    }

    #[test]
    fn header_layout_is_fixed() {
        let bytes = envelope();
        let payload_len = (bytes.len() - HEADER_LEN) as u32;
        assert_eq!(bytes[4], 2);
        assert_eq!(bytes[5], 1);
        assert_eq!(bytes[6..14], fingerprint::<Profile>(3).to_le_bytes());
        assert_eq!(bytes[14..22], KEY.to_le_bytes());
        assert_eq!(bytes[22..30], TIMES.created_at_ms.to_le_bytes());
        assert_eq!(bytes[30..38], TIMES.fresh_until_ms.to_le_bytes());
        assert_eq!(bytes[38..46], TIMES.stale_until_ms.to_le_bytes());
        assert_eq!(bytes[46..50], payload_len.to_le_bytes());
        let sum = checksum(&bytes[..50], &bytes[HEADER_LEN..]);
        assert_eq!(bytes[50..58], sum.to_le_bytes());
    }

    #[test]
    fn empty() {
        assert!(matches!(decode_profile(&[]), Err(EnvelopeError::Empty)));
    }

    #[test]
    fn truncated_header() {
        let bytes = envelope();
        for len in [1, 3, 4, 5, 20, HEADER_LEN - 1] {
            assert!(
                matches!(decode_profile(&bytes[..len]), Err(EnvelopeError::Truncated)),
                "length {len}"
            );
        }
    }

    #[test]
    fn truncated_payload() {
        let bytes = envelope();
        for len in [HEADER_LEN, bytes.len() - 1] {
            assert!(
                matches!(decode_profile(&bytes[..len]), Err(EnvelopeError::Truncated)),
                "length {len}"
            );
        }
    }

    #[test]
    fn bad_magic() {
        let mut bytes = envelope();
        bytes[0] = b'X';
        assert!(matches!(
            decode_profile(&bytes),
            Err(EnvelopeError::BadMagic)
        ));
        // Short foreign values are not ours either, rather than truncated.
        assert!(matches!(
            decode_profile(b"{}"),
            Err(EnvelopeError::BadMagic)
        ));
    }

    #[test]
    fn unsupported_version() {
        let mut bytes = envelope();
        bytes[4] = 3;
        assert!(matches!(
            decode_profile(&bytes),
            Err(EnvelopeError::UnsupportedEnvelopeVersion(3))
        ));
        // A future format may have a shorter header: the version is judged first.
        assert!(matches!(
            decode_profile(&bytes[..5]),
            Err(EnvelopeError::UnsupportedEnvelopeVersion(3))
        ));
    }

    /// `String::from("format one")` at schema version 0 as format 1 wrote it, before the header
    /// carried its key's hash.
    const FORMAT_1: &str = "43434854010131c58169f47289980068e5cf8b0100006052e6cf8b010000c08f\
                            eecf8b0100000b00000010a7d07c5dff27060a666f726d6174206f6e65";

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn an_envelope_of_format_1_is_a_miss() {
        let bytes = unhex(FORMAT_1);
        assert!(matches!(
            decode::<String, Bincode>(&bytes, 0, KEY),
            Err(EnvelopeError::UnsupportedEnvelopeVersion(1))
        ));
        // Whatever key it is read for, and even if it was left truncated.
        for len in [5, 20, bytes.len()] {
            assert!(matches!(
                decode::<String, Bincode>(&bytes[..len], 0, 0),
                Err(EnvelopeError::UnsupportedEnvelopeVersion(1))
            ));
        }
    }

    #[test]
    fn another_key() {
        let bytes = envelope();
        match decode::<Profile, Bincode>(&bytes, 3, KEY ^ 1) {
            Err(EnvelopeError::KeyMismatch { expected, found }) => {
                assert_eq!(expected, KEY ^ 1);
                assert_eq!(found, KEY);
            }
            other => panic!("expected a key mismatch, got {other:?}"),
        }
    }

    #[test]
    fn corrupted_key_hash() {
        // Rewriting the key hash in place, without resealing, does not move an entry either.
        let mut bytes = envelope();
        bytes[14..22].copy_from_slice(&(KEY ^ 1).to_le_bytes());
        assert!(matches!(
            decode::<Profile, Bincode>(&bytes, 3, KEY ^ 1),
            Err(EnvelopeError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn remaining_time_at_the_boundary() {
        let header = decode_profile(&envelope()).expect("decodes").0;
        let end = TIMES.stale_until_ms;
        assert_eq!(header.remaining(end - 1), Some(Duration::from_millis(1)));
        assert_eq!(header.remaining(end), None);
        assert_eq!(header.remaining(end + 1), None);
        assert_eq!(header.remaining(0), Some(Duration::from_millis(end)));
        assert_eq!(header.remaining(u64::MAX), None);
    }

    #[test]
    fn unknown_codec() {
        let mut bytes = envelope();
        bytes[5] = 9;
        assert!(matches!(
            decode_profile(&bytes),
            Err(EnvelopeError::UnknownCodec(9))
        ));
    }

    #[test]
    fn another_type() {
        let bytes = encode::<_, Bincode>(&vec![1u8, 2, 3], 3, KEY, TIMES).expect("encodes");
        match decode_profile(&bytes) {
            Err(EnvelopeError::TypeMismatch { expected, found }) => {
                assert_eq!(expected, fingerprint::<Profile>(3));
                assert_eq!(found, fingerprint::<Vec<u8>>(3));
            }
            other => panic!("expected a type mismatch, got {other:?}"),
        }
    }

    #[test]
    fn another_schema_version() {
        let bytes = encode::<_, Bincode>(&profile(), 2, KEY, TIMES).expect("encodes");
        assert!(matches!(
            decode_profile(&bytes),
            Err(EnvelopeError::TypeMismatch { .. })
        ));
    }

    #[test]
    fn trailing_garbage() {
        let mut bytes = envelope();
        bytes.extend_from_slice(b"garbage");
        assert!(matches!(
            decode_profile(&bytes),
            Err(EnvelopeError::LengthMismatch)
        ));
    }

    #[test]
    fn payload_longer_than_its_value() {
        // The header agrees with the payload's length, but the value ends before it does.
        let mut payload = Vec::new();
        Bincode::encode(&7u32, &mut payload).expect("encodes");
        payload.push(0);
        let bytes = sealed(fingerprint::<u32>(0), &payload);
        assert!(matches!(
            decode::<u32, Bincode>(&bytes, 0, KEY),
            Err(EnvelopeError::LengthMismatch)
        ));
    }

    #[test]
    fn corrupted_timestamp() {
        let mut bytes = envelope();
        bytes[39] ^= 0x80;
        assert!(matches!(
            decode_profile(&bytes),
            Err(EnvelopeError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn undecodable_payload() {
        // Bincode's `bool` is 0 or 1.
        let bytes = sealed(fingerprint::<bool>(0), &[7]);
        assert!(matches!(
            decode::<bool, Bincode>(&bytes, 0, KEY),
            Err(EnvelopeError::Payload(_))
        ));
    }

    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        // Standard-configuration varint: 0xfd, then a u64, announces that many elements.
        let mut payload = vec![0xfd];
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        payload.extend_from_slice(b"abc");
        let bytes = sealed(fingerprint::<Vec<String>>(0), &payload);
        assert!(matches!(
            decode::<Vec<String>, Bincode>(&bytes, 0, KEY),
            Err(EnvelopeError::Payload(_))
        ));
        // A string allocates its whole length up front: only the limit stands in the way.
        let bytes = sealed(fingerprint::<String>(0), &payload);
        assert!(matches!(
            decode::<String, Bincode>(&bytes, 0, KEY),
            Err(EnvelopeError::Payload(message)) if message.contains("LimitExceeded")
        ));
        let bytes = sealed(fingerprint::<Vec<u64>>(0), &payload);
        assert!(matches!(
            decode::<Vec<u64>, Bincode>(&bytes, 0, KEY),
            Err(EnvelopeError::Payload(_))
        ));
    }

    #[test]
    fn payload_over_the_limit_does_not_encode() {
        let big = vec![0u8; MAX_PAYLOAD_LEN + 1];
        assert!(matches!(
            encode::<_, Bincode>(&big, 0, KEY, TIMES),
            Err(EnvelopeError::Encode(_))
        ));
    }

    #[test]
    fn errors_render() {
        let error = EnvelopeError::TypeMismatch {
            expected: 1,
            found: 2,
        };
        assert_eq!(
            error.to_string(),
            "type fingerprint mismatch: expected 0x0000000000000001, found 0x0000000000000002"
        );
    }

    proptest! {
        #[test]
        fn remaining_time_is_what_is_left_and_never_underflows(
            stale_until_ms in any::<u64>(),
            now_ms in any::<u64>(),
        ) {
            let header = Header { stale_until_ms, ..decode_profile(&envelope()).expect("decodes").0 };
            let expected = (stale_until_ms > now_ms)
                .then(|| Duration::from_millis(stale_until_ms - now_ms));
            prop_assert_eq!(header.remaining(now_ms), expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Vec<String>, Bincode>(&bytes, 0, KEY);
        }

        #[test]
        fn arbitrary_payload_behind_a_valid_header_never_panics(
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let bytes = sealed(fingerprint::<Vec<String>>(0), &payload);
            let _ = decode::<Vec<String>, Bincode>(&bytes, 0, KEY);
        }

        #[test]
        fn a_flipped_byte_never_yields_another_value(
            index in any::<proptest::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let mut bytes = envelope();
            let at = index.index(bytes.len());
            bytes[at] ^= mask;
            // Stronger than "never another value": the checksum covers every byte that is not
            // checked on its own, so no single-byte change decodes at all.
            let result = decode_profile(&bytes);
            prop_assert!(result.is_err(), "byte {} ^ {:#04x} decoded: {:?}", at, mask, result);
        }
    }
}
