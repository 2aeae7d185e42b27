//! Every script touches only the keys it declares, all in one Redis Cluster slot: the server's
//! `MONITOR` shows each script call with its keys and then each command the script ran (as
//! `lua`), so the test computes the slot of every declared key and checks each command's key
//! against the declared ones, over many generated keys and every operation of the store, the
//! tags' and the write-through's included. A script that built a key from ARGV, or was given
//! keys of two entries (or an entry's and a tag's), fails it.

use std::collections::HashSet;

use futures_util::StreamExt;

use super::super::pending::tag_target;
use super::*;
use crate::backend::test_redis_server::RedisServer;
use crate::key::KeyBuilder;

/// Commands the scripts may run, with the position of their key (`PUBLISH` has none: its
/// first argument is a channel).
fn key_position(command: &str) -> Option<Option<usize>> {
    match command.to_ascii_uppercase().as_str() {
        "GET" | "SET" | "DEL" | "INCR" | "PEXPIRE" | "TYPE" | "PTTL" | "EXISTS" => Some(Some(1)),
        "PUBLISH" => Some(None),
        _ => None,
    }
}

/// CRC16/XMODEM of the hash tag, as Redis Cluster computes a key's slot.
fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// The quoted arguments of a `MONITOR` line (`sdscatrepr`'s escapes).
fn monitor_args(line: &str) -> (bool, Vec<Vec<u8>>) {
    let from_lua = line.contains("[0 lua]");
    let bytes = line.as_bytes();
    let mut args = Vec::new();
    let mut at = line.find("] ").map_or(bytes.len(), |i| i + 2);
    while at < bytes.len() {
        if bytes[at] != b'"' {
            at += 1;
            continue;
        }
        at += 1;
        let mut arg = Vec::new();
        while at < bytes.len() && bytes[at] != b'"' {
            if bytes[at] == b'\\' && at + 1 < bytes.len() {
                at += 1;
                match bytes[at] {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' => {
                        let hex = std::str::from_utf8(&bytes[at + 1..at + 3]).expect("hex");
                        arg.push(u8::from_str_radix(hex, 16).expect("hex"));
                        at += 2;
                    }
                    other => arg.push(other),
                }
            } else {
                arg.push(bytes[at]);
            }
            at += 1;
        }
        at += 1;
        args.push(arg);
    }
    (from_lua, args)
}

fn generated_keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..150)
        .map(|i| format!("user:<{i}>"))
        .chain((0..50).map(|i| format!("q:<{}{i}>", "x".repeat(250))))
        .chain((0..50).map(|i| format!("café:<%7B{i}%7D>:<#{i:032x}>")))
        .chain((0..50).map(|i| format!("p:<{}>", fastrand::u64(..) ^ i)))
        .collect();
    keys.push("-".to_owned());
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_touches_only_declared_keys_of_one_slot() {
    let server = RedisServer::start();
    let target = Target::server(
        &server.url(),
        &super::super::connection::TlsMaterial::default(),
    )
    .expect("url");
    let store = RedisStore::new(target, RedisSettings::default());
    let monitor = redis::Client::open(server.url())
        .expect("url")
        .get_async_monitor()
        .await
        .expect("monitor");
    let mut lines = monitor.into_on_message::<String>();

    let keys = generated_keys();
    for key in &keys {
        // A leader's claim and fill, a second process's claim behind a holder (which flags the
        // waiters, so the holder's fill wakes them), renewal, release, the release after an
        // unanswered claim, invalidations (announced, blocking, replayed).
        let Claim::Load { fence, token, .. } = store.claim(key, LEASE, false).await.expect("up")
        else {
            panic!("a cold key is loaded")
        };
        let token = token.expect("the lock was free");
        let _behind = store.claim(key, LEASE, false).await.expect("up");
        assert!(store.renew(key, &token, LEASE).await.expect("up"));
        assert!(store
            .fill(
                key,
                fence,
                b"v",
                Duration::from_secs(60),
                Some(&token),
                (None, None)
            )
            .await
            .expect("up"));
        let Claim::Load { token, .. } = store.claim(key, LEASE, true).await.expect("up") else {
            panic!("over an unreadable value the claim loads")
        };
        let token = token.expect("free again");
        assert!(store.release(key, &token).await.expect("up"));
        store.release_unowned(key, "nobody", store.connection().await.expect("up"));
        store
            .invalidate(key, Some(("test:1:bus", "origin key")))
            .await
            .expect("up");
        store.invalidate_blocking(key, None).expect("up");
        store.keep_for_replay(key, None);
        while store.pending.any() {
            let _ = store.replay_batch(false).await;
        }
        // Tags: each generation key is of its tag's slot, not the entry's. The capture (one
        // script per tag), the tagged read (one `GET` per key), the put (value and fence), the
        // tag invalidation (announced and replayed).
        let tags = [
            KeyBuilder::new()
                .lit("category:")
                .arg(key.as_str())
                .finish(),
            KeyBuilder::new().lit("products").finish(),
        ];
        let generations = store.capture_tags(&tags, LEASE).await.expect("up");
        let (_, current) = store.get_tagged(key, &tags).await.expect("up");
        assert_eq!(
            current,
            generations.iter().copied().map(Some).collect::<Vec<_>>()
        );
        store
            .put(
                key,
                b"w",
                Duration::from_secs(60),
                Some(("test:1:bus", "origin key")),
            )
            .await
            .expect("up");
        store
            .invalidate_tag(tags[0].as_str(), Some(("test:1:bus", "origin {t}tag")))
            .await
            .expect("up");
        store.keep_for_replay(&tag_target(tags[0].as_str()), None);
        while store.pending.any() {
            let _ = store.replay_batch(false).await;
        }
    }
    let mut end = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: String = redis::cmd("ECHO")
        .arg("slot-test-end")
        .query_async(&mut end)
        .await
        .expect("echo");

    let mut scripts = 0usize;
    let mut commands = 0usize;
    let mut declared: Option<HashSet<Vec<u8>>> = None;
    let mut names_seen = HashSet::new();
    let mut single_key_reads = 0usize;
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next())
            .await
            .expect("monitor lines keep coming")
            .expect("monitor open");
        let (from_lua, args) = monitor_args(&line);
        let Some(name) = args
            .first()
            .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase())
        else {
            continue;
        };
        if from_lua {
            let keys = declared.as_ref().expect("a script ran it");
            let position = key_position(&name)
                .unwrap_or_else(|| panic!("a script ran {name}, which this test does not know"));
            if let Some(position) = position {
                let key = &args[position];
                assert!(
                    keys.contains(key),
                    "a script touched {:?}, not among its keys: {line}",
                    String::from_utf8_lossy(key)
                );
            }
            commands += 1;
            continue;
        }
        declared = None;
        if name == "GET" {
            // The tagged read: each `GET` on its own key, so that a cluster routes each to its
            // slot (tests/cluster.rs shows they are not sent as one pipeline there).
            assert_eq!(args.len(), 2, "one key per read: {line}");
            single_key_reads += 1;
        }
        if name == "ECHO" && args.get(1).map(Vec::as_slice) == Some(b"slot-test-end".as_slice()) {
            break;
        }
        if name == "EVALSHA" || name == "EVAL" {
            let count: usize = String::from_utf8_lossy(&args[2]).parse().expect("numkeys");
            let keys: Vec<Vec<u8>> = args[3..3 + count].to_vec();
            assert!(count > 0, "a script without keys cannot be routed: {line}");
            let slots: HashSet<u16> = keys.iter().map(|key| slot(key)).collect();
            assert_eq!(slots.len(), 1, "a script's keys span slots: {line}");
            names_seen.insert(count);
            declared = Some(keys.into_iter().collect());
            scripts += 1;
        }
    }
    // claim x3 and fill, renew, release x2, invalidate x3, capture x2, put, tag invalidation
    // x2 per key
    assert!(
        scripts >= keys.len() * 15,
        "{scripts} script calls seen for {} keys",
        keys.len()
    );
    assert!(commands > scripts, "the scripts' own commands were seen");
    assert_eq!(
        single_key_reads,
        keys.len() * 3,
        "the tagged reads' GETs were seen"
    );
    assert_eq!(
        names_seen,
        HashSet::from([1, 2, 4]),
        "scripts of 1, 2 and 4 keys were seen"
    );
}

#[test]
fn the_slot_function_is_redis_clusters() {
    // Values from `CLUSTER KEYSLOT`.
    assert_eq!(slot(b"foo"), 12182);
    assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
    assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    assert_eq!(slot(b"123456789"), 12739);
}
