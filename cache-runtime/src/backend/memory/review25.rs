//! Review 25: exhaustive check that a hit key in pieces with string arguments hashes and
//! compares exactly as the stored name of its text, over string lengths 0..=40, literal
//! lengths across the 16-byte boundaries, integers beside them, and two strings.

use std::hash::BuildHasher;

use super::slot::Prehashed;
use super::*;
use crate::key::canonical::{hit_int, hit_str, hit_uint, HitPieces};
use crate::KeyBuilder;

const LIT: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ";

fn s(n: usize, fill: u8) -> String {
    (0..n).map(|i| (fill + (i % 7) as u8) as char).collect()
}

fn check(pieces: &dyn AsHitKey, text: &CacheKey, others: &[CacheKey]) {
    let slot = SlotKey::new(text);
    let probe = Probe::hit(pieces).expect("named");
    assert_eq!(
        probe.hash,
        Prehashed.hash_one(&slot),
        "hash vs slot {}",
        text.as_str()
    );
    assert_eq!(
        probe.hash,
        Probe::text(text.as_str()).hash,
        "hash vs text {}",
        text.as_str()
    );
    assert_eq!(
        probe.hash,
        Probe::key(text).hash,
        "hash vs key {}",
        text.as_str()
    );
    assert!(probe.equivalent(&slot), "eq {}", text.as_str());
    assert_eq!(pieces.to_string(), text.as_str());
    for other in others {
        let same = other.as_str() == text.as_str();
        assert_eq!(
            probe.equivalent(&SlotKey::new(other)),
            same,
            "{} vs {}",
            text.as_str(),
            other.as_str()
        );
    }
}

#[test]
fn one_string_every_length_and_cut() {
    let mut strings: Vec<String> = (0..=40).map(|n| s(n, b'a')).collect();
    strings.extend((1..=22).map(|n| "9".repeat(n)));
    strings.extend(
        [
            "0",
            "-0",
            "007",
            "-",
            "-1",
            "42",
            "18446744073709551615",
            "18446744073709551616",
            "-18446744073709551615",
            "-18446744073709551616",
            "9223372036854775808",
            "-9223372036854775808",
        ]
        .map(String::from),
    );
    for pre in 0..=34 {
        for post in 0..=3 {
            let prefix = &LIT[..pre];
            let suffix = &LIT[pre..pre + post];
            let mut texts = Vec::new();
            for value in &strings {
                texts.push(
                    KeyBuilder::new()
                        .lit(prefix)
                        .arg(value.as_str())
                        .lit(suffix)
                        .finish(),
                );
            }
            for (value, text) in strings.iter().zip(&texts) {
                let p = HitPieces::new([prefix], [hit_str(value)], suffix);
                check(&p, text, &texts);
                check(&HashedHit::new(p), text, &texts);
            }
        }
    }
}

#[test]
fn strings_beside_integers_and_each_other() {
    let strings: Vec<String> = [0, 1, 6, 7, 8, 9, 14, 15, 16, 17, 31, 32, 33]
        .iter()
        .map(|&n| s(n, b'k'))
        .chain(["42", "-7", "007"].map(String::from))
        .collect();
    let ints = [0i64, -1, 42, i64::MIN, i64::MAX];
    for pre in [0usize, 1, 3, 7, 8, 15, 16, 17] {
        let prefix = &LIT[..pre];
        let mut texts = Vec::new();
        let mut cases = Vec::new();
        for a in &strings {
            for &i in &ints {
                for b in &strings {
                    texts.push(
                        KeyBuilder::new()
                            .lit(prefix)
                            .arg(a.as_str())
                            .lit(":")
                            .arg(&i)
                            .arg(b.as_str())
                            .finish(),
                    );
                    cases.push((a.clone(), i, b.clone()));
                }
            }
        }
        // a compact "others" set to bound the cost
        let others: Vec<CacheKey> = texts.iter().step_by(37).cloned().collect();
        for ((a, i, b), text) in cases.iter().zip(&texts) {
            let p = HitPieces::new([prefix, ":", ""], [hit_str(a), hit_int(*i), hit_str(b)], "");
            check(&p, text, &others);
            check(&HashedHit::new(p), text, &others);
            let u = HitPieces::new(
                [prefix, ":", ""],
                [hit_str(a), hit_uint(i.unsigned_abs()), hit_str(b)],
                "",
            );
            let utext = KeyBuilder::new()
                .lit(prefix)
                .arg(a.as_str())
                .lit(":")
                .arg(&i.unsigned_abs())
                .arg(b.as_str())
                .finish();
            check(&u, &utext, &others);
        }
    }
}
