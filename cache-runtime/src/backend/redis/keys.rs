//! Where one cache entry lives in Redis: `<prefix>:<format>:{<cache key>}:<role>`.
//!
//! The braces are a Redis Cluster hash tag: the value, lock and fence keys of one entry hash to
//! one slot, so one script can touch all three, in cluster mode too, with no key change later.
//! Cache keys never contain braces (templates reject them, values escape them), so the tag is
//! exactly the cache key. Keys longer than [`MAX_TAGGED_KEY`] are replaced by a fixed-length
//! hash, which keeps every Redis key short whatever the arguments.

use std::fmt::Write as _;

/// The key layout's version; bumping it moves every entry to new keys (old ones expire).
pub(crate) const KEY_FORMAT: u32 = 1;

/// Cache keys longer than this (in bytes) are stored under their hash.
pub(crate) const MAX_TAGGED_KEY: usize = 200;

/// The parts of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The envelope holding the value.
    Value,
    /// The cross-process load lock.
    Lock,
    /// The fence an invalidation leaves against late fills.
    Fence,
    /// Set while callers in other processes wait for the lock holder: its fill or release then
    /// wakes them ([`wake_channel`]).
    Waiters,
    /// A tag's current generation (`backend/tags.rs`), under the tag's own hash tag: the tag
    /// takes the place of the cache key, so `{products}:g` is one slot, touched alone.
    Generation,
    /// Set when a refresh-ahead of the key starts, for its interval: no other may start
    /// meanwhile, in any process.
    Refresh,
}

impl Role {
    fn suffix(self) -> &'static str {
        match self {
            Role::Value => "v",
            Role::Lock => "l",
            Role::Fence => "f",
            Role::Waiters => "w",
            Role::Generation => "g",
            Role::Refresh => "r",
        }
    }
}

/// The Redis keys of one cache key, sharing one hash tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryKeys {
    /// `<prefix>:<format>:{<tag>}:`, to which a role's suffix is appended.
    base: String,
}

impl EntryKeys {
    pub(crate) fn new(prefix: &str, cache_key: &str) -> Self {
        let mut base = String::with_capacity(prefix.len() + cache_key.len().min(40) + 12);
        let _ = write!(base, "{prefix}:{KEY_FORMAT}:{{");
        if cache_key.len() > MAX_TAGGED_KEY {
            // `#h` cannot start a real cache key's hash part: `#` only appears in `<#...>`.
            let digest = xxhash_rust::xxh3::xxh3_128(cache_key.as_bytes());
            let _ = write!(base, "#h{digest:032x}");
        } else {
            base.push_str(cache_key);
        }
        base.push_str("}:");
        EntryKeys { base }
    }

    pub(crate) fn key(&self, role: Role) -> String {
        let mut key = String::with_capacity(self.base.len() + 1);
        key.push_str(&self.base);
        key.push_str(role.suffix());
        key
    }
}

/// The Redis Cluster slot of an entry's keys (or a tag's: the tag takes the cache key's
/// place), as the server computes it: CRC16/XMODEM of the hash tag [`EntryKeys`] writes,
/// modulo 16,384. `None` for an empty key, whose `{}` is no hash tag (each role's key then
/// hashes whole, to a slot of its own). What a cluster's breakers are chosen by
/// (`breakers.rs`); computed only while one of them is not healthy.
#[cfg(feature = "cluster")]
pub(crate) fn entry_slot(cache_key: &str) -> Option<u16> {
    if cache_key.is_empty() {
        return None;
    }
    let crc = if cache_key.len() > MAX_TAGGED_KEY {
        let digest = xxhash_rust::xxh3::xxh3_128(cache_key.as_bytes());
        crc16(format!("#h{digest:032x}").as_bytes())
    } else {
        crc16(cache_key.as_bytes())
    };
    Some(crc % 16_384)
}

/// CRC16/XMODEM, a byte at a time (a replay looks up hundreds of keys' slots).
#[cfg(feature = "cluster")]
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &byte| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ byte)]
    })
}

#[cfg(feature = "cluster")]
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = (index as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
};

/// The seed of [`entry_hash`] for one application prefix: computed once per backend.
pub(crate) fn entry_hash_seed(prefix: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(prefix.as_bytes())
}

/// Which entry an envelope belongs to: xxh3-64 of the cache key, seeded by the prefix's hash
/// ([`entry_hash_seed`]). The prefix is in it so that an entry copied into another
/// application's keys is a miss there too; the role and the key layout version are not, since
/// a value is only ever read from a value key of the layout that wrote it.
pub(crate) fn entry_hash(seed: u64, cache_key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(cache_key.as_bytes(), seed)
}

/// The pub/sub channel a tiered backend announces invalidations on: one per prefix, so that
/// services sharing a Redis under different prefixes do not hear each other.
pub(crate) fn bus_channel(prefix: &str) -> String {
    format!("{prefix}:{KEY_FORMAT}:bus")
}

/// A bus message that tells every process to drop its whole L1 (the invalidation queue
/// overflowed somewhere, so which keys changed is not known). Not `<origin> <key>`-shaped, so
/// a process of an older version ignores it.
pub(crate) const FLUSH_MESSAGE: &str = "*";

/// What a bus message's key part starts with when it invalidates a tag rather than a key:
/// `<origin> {t}<tag>`. A cache key never holds a brace, so no key invalidation looks like
/// this; a process of an older version drops a key that does not exist.
pub(crate) const TAG_MESSAGE_MARK: &str = "{t}";

/// The pub/sub channel a lock holder's fill or release wakes waiting processes on, with the
/// cache key as the message: one per prefix, like [`bus_channel`].
pub(crate) fn wake_channel(prefix: &str) -> String {
    format!("{prefix}:{KEY_FORMAT}:wake")
}

/// One role's key, written straight into a command's argument (`cmd.arg(KeyArg {..})`): the
/// hit path renders its key without building `EntryKeys` and a `String` per role first. Renders
/// exactly what [`EntryKeys::key`] does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyArg<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) cache_key: &'a str,
    pub(crate) role: Role,
}

impl redis::ToRedisArgs for KeyArg<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        let mut hashed = [0u8; 34];
        let tag = if self.cache_key.len() > MAX_TAGGED_KEY {
            let digest = xxhash_rust::xxh3::xxh3_128(self.cache_key.as_bytes());
            let mut text = String::with_capacity(34);
            let _ = write!(text, "#h{digest:032x}");
            hashed.copy_from_slice(text.as_bytes());
            &hashed[..]
        } else {
            self.cache_key.as_bytes()
        };
        let mut format = itoa::Buffer::new();
        let parts: [&[u8]; 7] = [
            self.prefix.as_bytes(),
            b":",
            format.format(KEY_FORMAT).as_bytes(),
            b":{",
            tag,
            b"}:",
            self.role.suffix().as_bytes(),
        ];
        // Assembled on the stack and written as one argument: the command's streaming writer
        // costs more per piece than copying the pieces (callgrind: ~1,300 instructions a key).
        let len = parts.iter().map(|part| part.len()).sum::<usize>();
        let mut stack = [0u8; 320];
        let mut heap = Vec::new();
        let buffer = if len <= stack.len() {
            &mut stack[..len]
        } else {
            heap.resize(len, 0);
            &mut heap[..]
        };
        let mut at = 0;
        for part in parts {
            buffer[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out.write_arg(buffer);
    }
}

impl redis::ToSingleRedisArg for KeyArg<'_> {}

/// Checks an application prefix: non-empty, and free of the characters that carry structure.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && !prefix.contains(['{', '}', '*', '?', '[', ']'])
        && !prefix.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash slot Redis Cluster computes: the part between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("tagged");
        let close = key[open..].find('}').expect("closed") + open;
        &key[open + 1..close]
    }

    #[test]
    fn roles_of_one_entry_share_a_hash_tag() {
        let keys = EntryKeys::new("shop", "user:<42>");
        assert_eq!(keys.key(Role::Value), "shop:1:{user:<42>}:v");
        assert_eq!(keys.key(Role::Lock), "shop:1:{user:<42>}:l");
        assert_eq!(keys.key(Role::Fence), "shop:1:{user:<42>}:f");
        for role in [Role::Lock, Role::Fence] {
            assert_eq!(hash_tag(&keys.key(role)), hash_tag(&keys.key(Role::Value)));
        }
    }

    /// Against redis-rs's own slot computation, which routes the commands.
    #[cfg(feature = "cluster")]
    #[test]
    fn an_entry_slot_is_the_slot_redis_routes_its_keys_to() {
        use redis::cluster_routing::{Route, SlotAddr};
        let long = "k".repeat(MAX_TAGGED_KEY + 1);
        for key in [
            "user:<1>",
            "a",
            "odd:<\u{e9}\u{0}>",
            "x:<#h>",
            long.as_str(),
        ] {
            let slot = entry_slot(key).expect("a non-empty key");
            for role in [Role::Value, Role::Lock, Role::Fence, Role::Generation] {
                let redis_key = EntryKeys::new("app", key).key(role);
                assert_eq!(
                    Route::with_key(&redis_key, SlotAddr::Master),
                    Route::new(slot, SlotAddr::Master),
                    "{redis_key}"
                );
            }
        }
        assert_eq!(entry_slot(""), None);
    }

    #[test]
    fn long_keys_are_hashed_to_a_fixed_length() {
        let long = format!("q:<{}>", "x".repeat(5_000));
        let other = format!("q:<{}y>", "x".repeat(5_000));
        let (a, b) = (EntryKeys::new("p", &long), EntryKeys::new("p", &other));
        assert_ne!(a, b);
        assert_eq!(a.key(Role::Value).len(), "p:1:{#h}:v".len() + 32);
        let short = "q:<".to_owned() + &"x".repeat(MAX_TAGGED_KEY - 4) + ">";
        assert_eq!(
            hash_tag(&EntryKeys::new("p", &short).key(Role::Value)),
            short
        );
    }

    #[test]
    fn a_key_argument_renders_what_entry_keys_render() {
        use redis::ToRedisArgs;
        let long = format!("q:<{}>", "x".repeat(5_000));
        let long_prefix = "p".repeat(400);
        let cases = [
            ("shop", "user:<42>"),
            ("shop", ""),
            ("shop", long.as_str()),
            (long_prefix.as_str(), "user:<42>"),
        ];
        for (prefix, cache_key) in cases {
            for role in [Role::Value, Role::Lock, Role::Fence] {
                let arg = KeyArg {
                    prefix,
                    cache_key,
                    role,
                };
                let expected = EntryKeys::new(prefix, cache_key).key(role);
                assert_eq!(arg.to_redis_args(), vec![expected.into_bytes()]);
            }
        }
    }

    #[test]
    fn entry_hashes_differ_by_key_and_by_prefix() {
        let shop = entry_hash_seed("shop");
        let hashes = [
            entry_hash(shop, "user:<1>"),
            entry_hash(shop, "user:<2>"),
            entry_hash(entry_hash_seed("shop2"), "user:<1>"),
            entry_hash(entry_hash_seed("sho"), "puser:<1>"),
        ];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(hashes[0], entry_hash(entry_hash_seed("shop"), "user:<1>"));
    }

    #[test]
    fn prefixes_with_structure_are_refused() {
        assert!(valid_prefix("shop-api"));
        for bad in ["", "a{b", "a}", "a*", "a b", "a\n"] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}
