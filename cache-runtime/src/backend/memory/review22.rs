//! Review 22: a key whose form is longer than 16 bytes, asked by its hit pieces, by its text
//! and by a `CacheKey` built from any parts, names one entry exactly when the texts are one;
//! through the store's growth, eviction, expiry and invalidation by text.

use std::hash::BuildHasher;

use proptest::prelude::*;

use super::slot::Prehashed;
use super::*;
use crate::key::canonical::{hit_int, hit_str, hit_uint, HitPieces, HitValue};
use crate::shape::AnyValue;
use crate::KeyBuilder;

/// A part of a key.
#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Uint(u64),
    Int(i64),
    /// A string: some read as integers (`"42"`, `"-7"`), some do not (`"042"`, `"-0"`).
    Str(String),
    Opt(Option<Option<u32>>),
    Wide(u128),
    Hashed(u32),
}

fn edge_uint() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..20u64,
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(10_000_000_000_000_000),
        Just(9_999_999_999_999_999),
        Just(0xFFFF_FFFF_FFFF_FF00),
        Just(0x00FE_00FF_00FE_00FF),
        any::<u64>()
    ]
}

fn edge_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        -20..20i64,
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-1),
        Just(i64::MIN + 1),
        any::<i64>()
    ]
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        // Literal text as templates may write it: no `<`, `>`, `{`, `}`.
        "[a-z0-9:(),%#é]{0,12}".prop_map(Part::Lit),
        edge_uint().prop_map(Part::Uint),
        edge_int().prop_map(Part::Int),
        prop_oneof![
            edge_uint().prop_map(|v| v.to_string()),
            edge_int().prop_map(|v| v.to_string()),
            "[0-9\\-]{0,4}",
            Just("18446744073709551616".to_owned()),
            Just("-18446744073709551615".to_owned()),
            Just("-0".to_owned()),
            Just("007".to_owned()),
            // Strings a hit key takes as they are, across the 16-byte boundary, and ones
            // it leaves to the text (escaped, non-ASCII).
            "[a-z0-9.@_-]{0,24}",
            "[a-z%<> é.@{}-]{0,6}",
        ]
        .prop_map(Part::Str),
        any::<Option<Option<u32>>>().prop_map(Part::Opt),
        prop_oneof![0..20u128, Just(u128::from(u64::MAX)), Just(u128::MAX)].prop_map(Part::Wide),
        any::<u32>().prop_map(Part::Hashed),
    ]
}

fn built(parts: &[Part]) -> CacheKey {
    let mut builder = KeyBuilder::new();
    for part in parts {
        builder = match part {
            Part::Lit(text) => builder.lit(text),
            Part::Uint(value) => builder.arg(value),
            Part::Int(value) => builder.arg(value),
            Part::Str(value) => builder.arg(value),
            Part::Opt(value) => builder.arg(value),
            Part::Wide(value) => builder.arg(value),
            Part::Hashed(value) => builder.hashed(value),
        };
    }
    builder.finish()
}

/// The pieces the expansion would write for `parts` if all are literals, integers and strings:
/// literal runs merged, each run before a value, then the last run.
fn runs_and_integers(parts: &[Part]) -> Option<(Vec<String>, Vec<HitValue<'_>>, String)> {
    let (mut runs, mut integers, mut run) = (Vec::new(), Vec::new(), String::new());
    for part in parts {
        match part {
            Part::Lit(text) => run.push_str(text),
            Part::Uint(value) => {
                runs.push(std::mem::take(&mut run));
                integers.push(hit_uint(*value));
            }
            Part::Int(value) => {
                runs.push(std::mem::take(&mut run));
                integers.push(hit_int(*value));
            }
            Part::Str(value) => {
                runs.push(std::mem::take(&mut run));
                integers.push(hit_str(value));
            }
            _ => return None,
        }
    }
    Some((runs, integers, run))
}

/// `f` given the `HitPieces` of `runs` and `integers` (the expansion's const count: up to 5, as many as `parts` makes).
fn with_pieces<R>(
    (runs, integers, last): &(Vec<String>, Vec<HitValue<'_>>, String),
    f: impl FnOnce(&dyn AsHitKey) -> R,
) -> R {
    let r: Vec<&str> = runs.iter().map(String::as_str).collect();
    match r.len() {
        0 => f(&HitPieces::<0>::new([], [], last)),
        1 => f(&HitPieces::new([r[0]], [integers[0]], last)),
        2 => f(&HitPieces::new(
            [r[0], r[1]],
            [integers[0], integers[1]],
            last,
        )),
        3 => f(&HitPieces::new(
            [r[0], r[1], r[2]],
            [integers[0], integers[1], integers[2]],
            last,
        )),
        4 => f(&HitPieces::new(
            [r[0], r[1], r[2], r[3]],
            [integers[0], integers[1], integers[2], integers[3]],
            last,
        )),
        _ => f(&HitPieces::new(
            [r[0], r[1], r[2], r[3], r[4]],
            [
                integers[0],
                integers[1],
                integers[2],
                integers[3],
                integers[4],
            ],
            last,
        )),
    }
}

fn slot_hash(slot: &SlotKey) -> u64 {
    Prehashed.hash_one(slot)
}

fn probe_hash(probe: &Probe<'_>) -> u64 {
    Prehashed.hash_one(probe)
}

fn parts() -> impl Strategy<Value = Vec<Part>> {
    proptest::collection::vec(part(), 0..=5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Every way to name a key (built from any parts, its text, its hit pieces) hashes as the
    /// stored name of its text does and matches a stored name exactly when the texts are one.
    #[test]
    fn every_name_of_a_text_is_one_entry(a in parts(), b in parts()) {
        let (ka, kb) = (built(&a), built(&b));
        let (ta, tb) = (ka.as_str(), kb.as_str());
        let (sa, sb) = (SlotKey::new(&ka), SlotKey::new(&kb));
        let same = ta == tb;
        prop_assert_eq!(sa == sb, same, "{} {}", ta, tb);
        prop_assert_eq!(slot_hash(&sa), probe_hash(&Probe::key(&ka)), "{}", ta);
        prop_assert_eq!(slot_hash(&sa), probe_hash(&Probe::text(ta)), "{}", ta);
        for (probe, what) in [(Probe::key(&kb), "key"), (Probe::text(tb), "text")] {
            prop_assert_eq!(probe.equivalent(&sa), same, "{} {} {}", what, ta, tb);
        }
        if same {
            prop_assert_eq!(slot_hash(&sa), slot_hash(&sb));
        }
        if let Some(pieces) = runs_and_integers(&b) {
            with_pieces(&pieces, |hit| {
                let unfollowed = b.iter().any(|part| {
                    matches!(part, Part::Str(text) if !crate::key::needs_no_escape(text))
                });
                let Some(probe) = Probe::hit(hit) else {
                    assert!(unfollowed, "pieces name every key without an escaped string: {tb}");
                    return;
                };
                assert!(!unfollowed, "an escaped string is left to the text: {tb}");
                assert_eq!(hit.to_string(), tb, "the pieces' text");
                assert_eq!(probe.hash, Probe::text(tb).hash, "{tb}");
                assert_eq!(probe.hash, slot_hash(&sb), "{tb}");
                assert_eq!(probe.equivalent(&sa), same, "hit {tb} against {ta}");
                assert!(probe.equivalent(&sb), "{tb}");
            });
        }
    }
}

proptest! {
    /// A hit key hashed where it was made (`HashedHit`, as the expansion's entry points ask)
    /// hashes as its text, short or long, with integers and strings.
    #[test]
    fn a_hit_hashed_where_it_was_made_hashes_as_its_text(
        tenant in edge_uint(),
        name in "[a-z0-9.@_-]{0,24}|[0-9]{1,3}|-[0-9]{1,2}| x",
        account in edge_int(),
    ) {
        let text = KeyBuilder::new()
            .lit("t:")
            .arg(&tenant)
            .lit(":")
            .arg(name.as_str())
            .lit(":")
            .arg(&account)
            .finish();
        let pieces = HitPieces::new(
            ["t:", ":", ":"],
            [hit_uint(tenant), hit_str(&name), hit_int(account)],
            "",
        );
        let hashed = HashedHit::new(pieces);
        match (Probe::hit(&hashed), Probe::hit(&pieces)) {
            (Some(hashed), Some(plain)) => {
                prop_assert_eq!(hashed.hash, plain.hash);
                prop_assert_eq!(hashed.hash, Probe::key(&text).hash, "{}", text.as_str());
                prop_assert!(hashed.equivalent(&SlotKey::new(&text)));
            }
            (None, None) => prop_assert!(!crate::key::needs_no_escape(&name)),
            _ => prop_assert!(false, "one is named and the other not: {}", text.as_str()),
        }
        let short = HitPieces::new(["u:"], [hit_str(&name)], "");
        let short_text = KeyBuilder::new().lit("u:").arg(name.as_str()).finish();
        if let Some(probe) = Probe::hit(&HashedHit::new(short)) {
            prop_assert_eq!(probe.hash, Probe::key(&short_text).hash, "{}", short_text.as_str());
            prop_assert!(probe.equivalent(&SlotKey::new(&short_text)));
        }
    }
}

/// A long template, `tenant:<t>:account:<id>`.
fn tenant_key(tenant: u64, account: i64) -> CacheKey {
    KeyBuilder::new()
        .lit("tenant:")
        .arg(&tenant)
        .lit(":account:")
        .arg(&account)
        .finish()
}

fn tenant_pieces(tenant: u64, account: i64) -> HitPieces<'static, 2> {
    HitPieces::new(
        ["tenant:", ":account:"],
        [hit_uint(tenant), hit_int(account)],
        "",
    )
}

fn read_hit<V: Clone + 'static>(backend: &MemoryBackend, key: &dyn AsHitKey) -> Option<V> {
    backend
        .read_hit_due(key, 0, |value| value.downcast_ref::<V>().cloned())
        .map(|(value, _)| value)
}

fn read_text<V: Clone + 'static>(backend: &MemoryBackend, key: &CacheKey) -> Option<V> {
    backend.read(key, |value| value.downcast_ref::<V>().cloned())
}

/// Accounts spread over edge values, so that stored forms hold mark bytes in their magnitudes.
fn account(n: u64) -> i64 {
    match n % 4 {
        0 => n as i64,
        1 => -(n as i64),
        2 => i64::MIN + n as i64,
        _ => i64::MAX - n as i64,
    }
}

#[test]
fn long_keys_are_found_by_pieces_and_text_through_the_stores_growth() {
    // A byte bound with a weight of 1 an entry: its shards are sized for 64 entries each
    // (`GUESSED_ENTRY_BYTES`), so their tables grow, and rehash every stored key, many times.
    let backend = MemoryBackend::builder()
        .max_bytes(8 * 64 * 1024)
        .weigher(|_, _| 1)
        .build();
    const COUNT: u64 = 20_000;
    for n in 0..COUNT {
        backend.insert(
            tenant_key(n % 7, account(n)),
            Arc::new(n) as AnyValue,
            Duration::from_secs(60),
        );
    }
    assert_eq!(backend.entry_count(), COUNT);
    for n in 0..COUNT {
        let hit = tenant_pieces(n % 7, account(n));
        assert_eq!(read_hit::<u64>(&backend, &hit), Some(n), "{hit}");
        assert_eq!(
            read_text::<u64>(&backend, &tenant_key(n % 7, account(n))),
            Some(n)
        );
    }
    // Invalidated by text (as `#[invalidates]`, the bus and `invalidate` do): gone by pieces.
    for n in (0..COUNT).step_by(2) {
        backend.invalidate(tenant_key(n % 7, account(n)).as_str());
    }
    assert_eq!(backend.entry_count(), COUNT / 2);
    for n in 0..COUNT {
        let held = read_hit::<u64>(&backend, &tenant_pieces(n % 7, account(n)));
        assert_eq!(held, (n % 2 == 1).then_some(n), "{n}");
    }
    assert_eq!(tally(&backend).0, COUNT as i64 / 2);
}

fn tally(backend: &MemoryBackend) -> (i64, i64) {
    let tally = &backend.shared.tally;
    (
        tally.entries.load(Ordering::Relaxed),
        tally.bytes.load(Ordering::Relaxed),
    )
}

#[test]
fn a_string_that_reads_as_an_integer_names_the_same_long_entry() {
    let backend = MemoryBackend::default();
    let by_strings = KeyBuilder::new()
        .lit("tenant:")
        .arg(&"7")
        .lit(":account:")
        .arg(&"-9223372036854775808")
        .finish();
    backend.insert(
        by_strings,
        Arc::new(1u8) as AnyValue,
        Duration::from_secs(60),
    );
    assert_eq!(
        read_hit::<u8>(&backend, &tenant_pieces(7, i64::MIN)),
        Some(1)
    );
    // Not a neighbour's: `"07"` and `"-0"` are text.
    for (tenant, account) in [
        ("07", "-9223372036854775808"),
        ("7", "-09223372036854775808"),
    ] {
        let other = KeyBuilder::new()
            .lit("tenant:")
            .arg(&tenant)
            .lit(":account:")
            .arg(&account)
            .finish();
        assert_eq!(
            read_text::<u8>(&backend, &other),
            None,
            "{}",
            other.as_str()
        );
    }
    backend.invalidate("tenant:<7>:account:<-9223372036854775808>");
    assert_eq!(read_hit::<u8>(&backend, &tenant_pieces(7, i64::MIN)), None);
    assert_eq!(backend.entry_count(), 0);
}

#[test]
fn long_keys_evict_expire_and_weigh_as_their_texts() {
    let clock = TestClock::new();
    let backend = MemoryBackend::builder()
        .max_bytes(200_000)
        .clock(&clock)
        .build();
    for n in 0..5_000u64 {
        let ttl = Duration::from_millis(if n % 3 == 0 { 5 } else { 60_000 });
        backend.insert(tenant_key(n, account(n)), Arc::new([n; 8]) as AnyValue, ttl);
    }
    let (entries, bytes) = tally(&backend);
    assert_eq!(entries, backend.entry_count() as i64);
    assert!(bytes <= 200_000, "{bytes}");
    // Every held entry is found alike by pieces and by text.
    let mut held = 0;
    for n in 0..5_000u64 {
        let by_hit = read_hit::<[u64; 8]>(&backend, &tenant_pieces(n, account(n)));
        let by_text = read_text::<[u64; 8]>(&backend, &tenant_key(n, account(n)));
        assert_eq!(by_hit, by_text, "{n}");
        held += usize::from(by_hit.is_some());
    }
    assert_eq!(held as u64, backend.entry_count());
    clock.advance(Duration::from_millis(20));
    // Expired reads by pieces remove what they find.
    for n in (0..5_000u64).filter(|n| n % 3 == 0).take(100) {
        assert_eq!(
            read_hit::<[u64; 8]>(&backend, &tenant_pieces(n, account(n))),
            None
        );
    }
    backend.run_pending_tasks();
    for n in 0..5_000u64 {
        let by_hit = read_hit::<[u64; 8]>(&backend, &tenant_pieces(n, account(n)));
        assert!(n % 3 != 0 || by_hit.is_none(), "{n} expired");
    }
    assert_eq!(tally(&backend).0, backend.entry_count() as i64);
    assert!((0..5_000u64)
        .filter(|n| n % 3 == 0)
        .all(|n| read_text::<[u64; 8]>(&backend, &tenant_key(n, account(n))).is_none()));
}

/// Forms of exactly 16, 17, 22 and 23 bytes (the short, inline and shared names' edges), each
/// with an integer: named alike by pieces, text and key, and by pieces as a `HitKey` fits.
#[test]
fn forms_at_the_edges_of_each_name() {
    let backend = MemoryBackend::default();
    for (extra, value) in [(7usize, 0u64), (8, u64::MAX), (13, 255), (14, 0xFEFF)] {
        let run: String = "abcdefghijklmnop"[..extra].to_owned();
        let key = KeyBuilder::new().lit(&run).arg(&value).finish();
        let form_len = extra + 9;
        let hit = HitPieces::new([run.as_str()], [hit_uint(value)], "");
        backend.insert(
            key.clone(),
            Arc::new(form_len) as AnyValue,
            Duration::from_secs(60),
        );
        assert_eq!(
            read_hit::<usize>(&backend, &hit),
            Some(form_len),
            "{form_len}"
        );
        let short = crate::key::HitKey::new().lit(&run).uint(value);
        let by_short = read_hit::<usize>(&backend, &short);
        assert_eq!(by_short, (form_len <= 16).then_some(form_len), "{form_len}");
        backend.invalidate(key.as_str());
        assert_eq!(read_hit::<usize>(&backend, &hit), None, "{form_len}");
    }
    assert_eq!(backend.entry_count(), 0);
}

proptest! {
    /// A text from outside (a bus message, any string at all) never panics a probe, and names
    /// a stored key exactly when it is that key's text.
    #[test]
    fn a_foreign_text_names_only_its_own_entry(
        text in prop_oneof!["\\PC{0,40}", "[<>0-9a:-]{0,40}"],
        parts in parts(),
    ) {
        let key = built(&parts);
        let slot = SlotKey::new(&key);
        let probe = Probe::text(&text);
        prop_assert_eq!(probe.equivalent(&slot), text == key.as_str(), "{} {}", text, key.as_str());
        let own = Probe::text(key.as_str());
        prop_assert_eq!(own.hash, slot_hash(&slot));
    }
}

/// Keys whose text holds an integer value the builder did not write as one, once the form is
/// past 16 bytes: a `u128` (`write_int`), a `KeyPart` that writes `""` then an integer, a
/// string then more digits. Each must be found again by itself, and by its text.
#[test]
fn a_long_key_with_an_integer_written_another_way_is_found_again() {
    struct EmptyThenInt;
    impl crate::KeyPart for EmptyThenInt {
        fn write_key_part(&self, out: &mut crate::KeyWriter<'_>) {
            out.write_str("");
            7u64.write_key_part(out);
        }
    }
    struct MinusThenInt;
    impl crate::KeyPart for MinusThenInt {
        fn write_key_part(&self, out: &mut crate::KeyWriter<'_>) {
            out.write_str("-");
            7u64.write_key_part(out);
        }
    }
    let long = "a-long-prefix-of-text:";
    let keys = [
        KeyBuilder::new().lit(long).arg(&5u128).finish(),
        KeyBuilder::new().lit(long).arg(&-5i128).finish(),
        KeyBuilder::new().lit(long).arg(&EmptyThenInt).finish(),
        KeyBuilder::new().lit(long).arg(&MinusThenInt).finish(),
    ];
    let backend = MemoryBackend::default();
    for (n, key) in keys.iter().enumerate() {
        assert_eq!(
            slot_hash(&SlotKey::new(key)),
            probe_hash(&Probe::key(key)),
            "{}",
            key.as_str()
        );
        backend.insert(
            key.clone(),
            Arc::new(n) as AnyValue,
            Duration::from_secs(60),
        );
        assert_eq!(
            read_text::<usize>(&backend, key),
            Some(n),
            "{}",
            key.as_str()
        );
        backend.invalidate(key.as_str());
        assert_eq!(read_text::<usize>(&backend, key), None, "{}", key.as_str());
    }
    assert_eq!(backend.entry_count(), 0, "no entry left behind");
}
