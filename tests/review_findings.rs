//! Adversarial review of the change resolving issue 11: each test reproduces one finding
//! against a real redis-server, and fails while the finding stands.
//!
//! One runtime and one server for the whole binary (a backend's connections live on the
//! runtime that first used them); the tests take turns through `SERIAL`. Every finding has its
//! own backends and prefix, since some leave their backend's state damaged on purpose.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, RedisBackend};
use support::redis_server::{OnExit, RedisServer};

const OP_TIMEOUT: Duration = Duration::from_millis(200);
/// What a caller may wait while Redis is up, per the issue: 2 x op_timeout + the loader time
/// (the loaders here are instant).
const BOUND: Duration = Duration::from_millis(400);

struct Shared {
    runtime: tokio::runtime::Runtime,
    server: RedisServer,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server = RedisServer::start();
        let redis = |prefix: &str| {
            RedisBackend::builder()
                .url(server.url())
                .prefix(prefix)
                .op_timeout(OP_TIMEOUT)
                .build()
                .expect("valid configuration")
        };
        configure()
            .redis("redis.poison", redis("p1"))
            .redis("redis.poison2", redis("p2"))
            .redis("redis.claim", redis("c"))
            .redis("redis.claimb", redis("c"))
            .redis("redis.lock", redis("l"))
            .install()
            .expect("configured once");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Shared { runtime, server }
    })
}

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    let _turn = serial();
    shared().runtime.block_on(future)
}

async fn raw() -> redis::aio::MultiplexedConnection {
    shared().server.connection().await
}

async fn raw_get(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key)
        .query_async(raw)
        .await
        .expect("raw get")
}

// ---- F1. A non-integer fence under one key: the replay never ends, and re-deletes. ----

static VICTIM_SOURCE: AtomicUsize = AtomicUsize::new(1);

#[cached(ttl = "60s", key = "victim:<id>", backend = "redis.poison")]
async fn victim(id: u64) -> usize {
    let _ = id;
    VICTIM_SOURCE.load(Ordering::SeqCst)
}

#[invalidates("victim:<id>")]
async fn change_victim(id: u64) {
    let _ = id;
}

#[invalidates("bad1:<id>")]
async fn change_bad1(id: u64) {
    let _ = id;
}

/// The invalidation script INCRs the fence; on a fence that is not an integer (foreign bytes,
/// as the standards put it) the script fails with a reply error, the invalidation is queued
/// for replay, and every replay batch containing it fails as a whole (a pipeline surfaces the
/// errors of `.ignore()`d commands) although the batch's other scripts did run. Nothing in the
/// batch is ever confirmed: the background replayer re-runs it every probe_interval / 4,
/// forever, deleting the value a peer process stored for any key in the batch (and
/// advancing its fence, refusing the peer's fills), long after the one invalidation that was
/// asked for had succeeded.
fn a_garbage_fence_under_one_key_makes_the_replay_delete_fresh_values_forever() {
    run(async {
        let mut raw = raw().await;
        assert_eq!(victim(2).await, 1);
        let _: () = redis::cmd("SET")
            .arg("p1:1:{bad1:<1>}:f")
            .arg("not a number")
            .query_async(&mut raw)
            .await
            .expect("raw set");
        change_bad1(1).await;
        VICTIM_SOURCE.store(2, Ordering::SeqCst);
        change_victim(2).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while raw_get(&mut raw, "p1:1:{victim:<2>}:v").await.is_some() {
            assert!(Instant::now() < deadline, "not even deleted once");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A peer process (here: a raw client) stores the fresh value after the invalidation.
        let _: () = redis::cmd("SET")
            .arg("p1:1:{victim:<2>}:v")
            .arg("fresh, stored by a peer")
            .query_async(&mut raw)
            .await
            .expect("raw set");
        let fence_before: Option<i64> = redis::cmd("GET")
            .arg("p1:1:{victim:<2>}:f")
            .query_async(&mut raw)
            .await
            .expect("raw get");
        // A bounded wait for nothing to happen.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fence_after: Option<i64> = redis::cmd("GET")
            .arg("p1:1:{victim:<2>}:f")
            .query_async(&mut raw)
            .await
            .expect("raw get");
        assert_eq!(
            fence_before, fence_after,
            "the fence of a key invalidated once keeps advancing: peers' fills are refused"
        );
        assert!(
            raw_get(&mut raw, "p1:1:{victim:<2>}:v").await.is_some(),
            "a value stored after the invalidation was deleted again by its replay"
        );
    });
}

// ---- F2. The same garbage fence switches caching off for every key of the process. ----

static HEALTHY_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "healthy2", backend = "redis.poison2")]
async fn healthy2() -> u64 {
    HEALTHY_LOADS.fetch_add(1, Ordering::SeqCst);
    1
}

#[invalidates("bad2:<id>")]
async fn change_bad2(id: u64) {
    let _ = id;
}

/// `settle_pending` runs before every GET, claim and fill while anything is pending and
/// returns the replay's error: with the poisoned invalidation stuck in the queue every
/// operation of every key fails (as a reply error, so the breaker stays closed and each call
/// also pays the failing 200-script pipeline).
fn a_garbage_fence_under_one_key_switches_caching_off_for_every_key() {
    run(async {
        let mut raw = raw().await;
        assert_eq!(healthy2().await, 1);
        let loads = HEALTHY_LOADS.load(Ordering::SeqCst);
        let _: () = redis::cmd("SET")
            .arg("p2:1:{bad2:<1>}:f")
            .arg("not a number")
            .query_async(&mut raw)
            .await
            .expect("raw set");
        change_bad2(1).await;
        for _ in 0..20 {
            assert_eq!(healthy2().await, 1);
        }
        assert_eq!(
            HEALTHY_LOADS.load(Ordering::SeqCst) - loads,
            0,
            "a healthy, cached key must keep hitting while Redis is up"
        );
    });
}

// ---- F3. A caller cancelled while its claim is in flight leaves an orphan lock. ----

static CLAIM_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "claimed:<id>", backend = "redis.claim")]
async fn claimed_in_a(id: u64) -> u64 {
    CLAIM_LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

#[cached(ttl = "60s", key = "claimed:<id>", backend = "redis.claimb")]
async fn claimed_in_b(id: u64) -> u64 {
    id + 100
}

/// `claim` releases a token it may still take only when its claim *timed out*
/// (`release_unowned`); a caller dropped while the claim is in flight (an axum client that
/// disconnects, a `tokio::time::timeout` shorter than op_timeout) leaves a claim that takes
/// the lock for a token nobody holds or renews. Redis stays up; it only holds writes for a
/// moment (`CLIENT PAUSE WRITE`, as a failover or a slow script would).
fn a_caller_cancelled_during_its_claim_leaves_an_orphan_lock() {
    run(async {
        let mut raw = raw().await;
        // A first miss loads the scripts into Redis: a claim sent before that would only get a
        // NOSCRIPT reply (and nothing to leave behind) while its caller is cancelled.
        assert_eq!(claimed_in_b(0).await, 100);
        // The cancellation must come while the claim is in flight, not before it was sent (a
        // slow machine may still be in the read): later each attempt, on a fresh key.
        // Past op_timeout (200 ms) the claim times out instead, and the call loads.
        for (id, cancel_after) in [(1u64, 100u64), (2, 150), (3, 180), (4, 190)] {
            let unpause = shared().server.pause_writes(2_000);
            let cancel = Duration::from_millis(cancel_after);
            let loads = CLAIM_LOADS.load(Ordering::SeqCst);
            let cancelled = tokio::time::timeout(cancel, claimed_in_a(id)).await;
            drop(unpause);
            if cancelled.is_ok() {
                continue;
            }
            assert_eq!(
                CLAIM_LOADS.load(Ordering::SeqCst),
                loads,
                "during the claim"
            );
            // The claim the cancelled caller sent now runs (it leaves the fence it makes; the
            // lock it takes may already be released again).
            let deadline = Instant::now() + Duration::from_secs(1);
            let mut ran = false;
            while !ran && Instant::now() < deadline {
                ran = redis::cmd("EXISTS")
                    .arg(format!("c:1:{{claimed:<{id}>}}:f"))
                    .query_async(&mut raw)
                    .await
                    .expect("raw exists");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if !ran {
                continue;
            }
            let begun = Instant::now();
            assert_eq!(claimed_in_b(id).await, id + 100);
            let waited = begun.elapsed();
            assert!(
                waited < BOUND,
                "the next caller waited {waited:?} for a lock no live caller holds"
            );
            return;
        }
        panic!("no attempt cancelled a caller while its claim was in flight");
    });
}

// ---- F4. A lock key of another type stalls every miss of its key for WAIT_LIMIT. ----

#[cached(ttl = "60s", key = "locked:<id>", backend = "redis.lock")]
async fn locked(id: u64) -> u64 {
    id
}

/// The claim's `SET NX` fails on any existing key, whatever its type and TTL: a hash (or a
/// string without a TTL) under the lock key makes every caller wait the 10 s WAIT_LIMIT, on
/// every miss, instead of treating foreign bytes as a miss.
fn a_foreign_lock_key_stalls_each_miss_for_the_wait_limit() {
    run(async {
        let mut raw = raw().await;
        let _: () = redis::cmd("HSET")
            .arg("l:1:{locked:<1>}:l")
            .arg("field")
            .arg("foreign")
            .query_async(&mut raw)
            .await
            .expect("raw hset");
        let begun = Instant::now();
        assert_eq!(locked(1).await, 1);
        let waited = begun.elapsed();
        assert!(
            waited < BOUND,
            "a miss waited {waited:?} on a lock key nobody holds"
        );
    });
}

/// The findings in one test, one after the other on the one server, which is stopped when the
/// test ends however it ends (a `static` is never dropped).
#[test]
fn review_findings() {
    let _stop = OnExit(|| shared().server.stop());
    a_garbage_fence_under_one_key_makes_the_replay_delete_fresh_values_forever();
    a_garbage_fence_under_one_key_switches_caching_off_for_every_key();
    a_caller_cancelled_during_its_claim_leaves_an_orphan_lock();
    a_foreign_lock_key_stalls_each_miss_for_the_wait_limit();
}
