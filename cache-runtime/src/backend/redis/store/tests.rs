//! The store against real redis-servers: the protocol steps, faults, and bad data.

use super::*;

use super::super::pending::MAX_PENDING;
use crate::backend::test_redis_server::RedisServer;
use futures_util::StreamExt;
use std::time::Instant;

fn store(server: &RedisServer) -> Arc<RedisStore> {
    let settings = RedisSettings {
        prefix: "test".to_owned(),
        op_timeout: Duration::from_millis(200),
        breaker: BreakerPolicy {
            failures_to_open: 2,
            probe_interval: Duration::from_millis(300),
        },
        ..RedisSettings::default()
    };
    RedisStore::new(server_target(server), settings)
}

const TTL: Duration = Duration::from_secs(60);

pub(super) fn server_target(server: &RedisServer) -> Target {
    Target::server(
        &server.url(),
        &super::super::connection::TlsMaterial::default(),
    )
    .expect("valid url")
}

#[tokio::test]
async fn a_fill_is_read_back_in_one_round_trip() {
    let server = RedisServer::start();
    let store = store(&server);
    let miss = read(&store, "k").await.expect("redis is up");
    assert_eq!(
        miss,
        Read {
            value: None,
            fence: None
        }
    );
    assert!(store
        .fill("k", miss.fence, b"bytes", TTL, None, (None, None))
        .await
        .expect("up"));
    assert_eq!(
        read(&store, "k").await.expect("up").value.as_deref(),
        Some(&b"bytes"[..])
    );
}

/// A write-back over the bytes a claim read: refused once another fill replaced them, even
/// under the same fence.
#[tokio::test]
async fn a_fill_over_expected_bytes_is_refused_once_they_changed() {
    let server = RedisServer::start();
    let store = store(&server);
    let fence = read(&store, "k").await.expect("up").fence;
    assert!(store
        .fill("k", fence, b"old", TTL, None, (None, None))
        .await
        .expect("up"));
    let over = Some(&b"old"[..]);
    assert!(store
        .fill("k", fence, b"kept", TTL, None, (over, None))
        .await
        .expect("up"));
    assert!(!store
        .fill("k", fence, b"back", TTL, None, (over, None))
        .await
        .expect("up"));
    assert_eq!(
        read(&store, "k").await.expect("up").value.as_deref(),
        Some(&b"kept"[..])
    );
}

#[tokio::test]
async fn a_fill_that_read_before_an_invalidation_is_refused() {
    let server = RedisServer::start();
    let store = store(&server);
    let before = read(&store, "k").await.expect("up");
    store.invalidate("k", None).await.expect("up");
    assert!(!store
        .fill("k", before.fence, b"old", TTL, None, (None, None))
        .await
        .expect("up"));
    assert_eq!(read(&store, "k").await.expect("up").value, None);

    let after = read(&store, "k").await.expect("up");
    // Made of nothing: random, never the 1 an `INCR` makes again after a restart.
    assert!(
        after.fence.is_some_and(|fence| fence >= 1 << 40),
        "{after:?}"
    );
    assert!(store
        .fill("k", after.fence, b"new", TTL, None, (None, None))
        .await
        .expect("up"));
    store.invalidate("k", None).await.expect("up");
    assert!(!store
        .fill("k", after.fence, b"stale", TTL, None, (None, None))
        .await
        .expect("up"));
}

#[tokio::test]
async fn a_claim_returns_a_fill_or_the_fence_and_the_lock() {
    let server = RedisServer::start();
    let store = store(&server);
    let lease = Duration::from_secs(10);
    let Claim::Load {
        fence: Some(seeded),
        token: Some(token),
        over: None,
    } = store.claim("k", lease, false).await.expect("up")
    else {
        panic!("a cold key is ours to load, under a fence of its own making");
    };
    assert_eq!(
        store.claim("k", lease, false).await.expect("up"),
        Claim::Load {
            fence: Some(seeded),
            token: None,
            over: None,
        },
        "the lock is held"
    );
    store.invalidate("k", None).await.expect("up");
    assert_eq!(
        store.claim("k", lease, false).await.expect("up"),
        Claim::Load {
            fence: Some(seeded + 1),
            token: None,
            over: None,
        }
    );
    assert!(
        !store
            .fill("k", Some(seeded), b"old", TTL, None, (None, None))
            .await
            .expect("up"),
        "a load that claimed before the invalidation is fenced off"
    );
    assert!(store
        .fill("k", Some(seeded + 1), b"v", TTL, Some(&token), (None, None))
        .await
        .expect("up"));
    assert_eq!(
        store.claim("k", lease, false).await.expect("up"),
        Claim::Filled(b"v".to_vec()),
        "a leader arriving after the fill takes it"
    );
    let over = store.claim("k", lease, true).await.expect("up");
    assert!(
        matches!(&over, Claim::Load { token: Some(_), over: Some(bytes), .. } if bytes == b"v"),
        "over an unreadable value, the claim takes the lock, and returns what it holds: {over:?}"
    );
}

#[tokio::test]
async fn a_fill_after_the_server_lost_its_keys_is_refused() {
    let mut server = RedisServer::start();
    let store = store(&server);
    let lease = Duration::from_secs(10);
    let Claim::Load { fence, .. } = store.claim("k", lease, false).await.expect("up") else {
        panic!("cold");
    };
    // Restarted empty: the fence (and any invalidation it recorded) is gone.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        match store
            .fill("k", fence, b"old", TTL, None, (None, None))
            .await
        {
            Ok(stored) => break stored,
            Err(_) => assert!(Instant::now() < deadline, "redis did not come back"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !stored,
        "a fill whose fence the server lost must be refused"
    );
}

#[tokio::test]
async fn only_the_owner_releases_or_renews_the_lock() {
    let server = RedisServer::start();
    let store = store(&server);
    let lease = Duration::from_secs(10);
    let take = |store: Arc<RedisStore>| async move {
        match store.claim("k", lease, true).await.expect("up") {
            Claim::Load { token, .. } => token,
            Claim::Filled(_) => panic!("the value is ignored"),
        }
    };
    let token = take(Arc::clone(&store)).await.expect("free");
    assert_eq!(take(Arc::clone(&store)).await, None, "held");
    assert!(!store.release("k", "someone-else").await.expect("up"));
    assert!(!store.renew("k", "someone-else", lease).await.expect("up"));
    assert!(store.renew("k", &token, lease).await.expect("up"));
    assert_eq!(take(Arc::clone(&store)).await, None, "still held");
    // The fill releases the lock of its own token in the same round trip.
    let fence = fence(&store, "k").await.expect("up");
    assert!(store
        .fill("k", fence, b"v", TTL, Some(&token), (None, None))
        .await
        .expect("up"));
    assert!(take(Arc::clone(&store)).await.is_some());
}

#[test]
fn a_blocking_invalidation_fences_like_the_async_one() {
    let server = RedisServer::start();
    let store = store(&server);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = runtime.block_on(read(&store, "k")).expect("up");
    store.invalidate_blocking("k", None).expect("up");
    store
        .invalidate_blocking("k", None)
        .expect("the connection is reused");
    let refused = runtime.block_on(store.fill("k", before.fence, b"old", TTL, None, (None, None)));
    assert!(!refused.expect("up"), "the fence moved");
    let after = runtime.block_on(read(&store, "k")).expect("up");
    assert!(
        after.fence.is_some_and(|fence| fence >= 1 << 40),
        "{after:?}"
    );
    store.invalidate_blocking("k", None).expect("up");
    let next = runtime.block_on(read(&store, "k")).expect("up");
    assert_eq!(next.fence, after.fence.map(|fence| fence + 1), "advanced");
}

#[tokio::test]
async fn a_dead_redis_opens_the_breaker_and_a_restarted_one_closes_it() {
    let mut server = RedisServer::start();
    let store = store(&server);
    read(&store, "k").await.expect("up");
    server.kill();
    assert!(read(&store, "k").await.is_err());
    assert!(read(&store, "k").await.is_err());
    let refused = Instant::now();
    assert!(matches!(read(&store, "k").await, Err(StoreError::Refused)));
    assert!(
        refused.elapsed() < Duration::from_millis(50),
        "no network wait"
    );
    server.restart();
    // The breaker lets a probe through after its interval; retry until then, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match read(&store, "k").await {
            Ok(read) => {
                assert_eq!(read.value, None);
                break;
            }
            Err(_) => assert!(Instant::now() < deadline, "redis did not come back"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store.breakers.permit(Scope::Whole, Instant::now),
        Permit::Allowed,
        "closed again"
    );
}

#[tokio::test]
async fn an_invalidation_lost_to_a_paused_redis_is_replayed_before_the_next_read() {
    let server = RedisServer::start();
    let store = store(&server);
    assert!(store
        .fill("k", None, b"old", TTL, None, (None, None))
        .await
        .expect("up"));
    server.pause();
    assert!(store.invalidate("k", None).await.is_err(), "lost");
    server.resume();
    // The breaker may refuse until its probe interval has passed; bounded retry.
    let deadline = Instant::now() + Duration::from_secs(10);
    let read = loop {
        match read(&store, "k").await {
            Ok(read) => break read,
            Err(_) => assert!(Instant::now() < deadline, "redis did not come back"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        read.value, None,
        "the old value was removed before this read"
    );
    assert!(
        read.fence.is_some_and(|fence| fence >= 1 << 40),
        "and the fence was made: {read:?}"
    );
}

#[tokio::test]
async fn an_overflowed_queue_ends_in_a_purge_of_the_prefix() {
    let mut server = RedisServer::start();
    let store = store(&server);
    let Claim::Load { fence, .. } = store.claim("loading", TTL, false).await.expect("up") else {
        panic!("cold");
    };
    for key in ["a", "b"] {
        assert!(store
            .fill(key, None, b"old", TTL, None, (None, None))
            .await
            .expect("up"));
    }
    server.kill();
    // More lost invalidations than are kept, none of them of `a`, `b` or `loading`.
    for n in 0..=MAX_PENDING {
        store.keep_for_replay(&format!("lost {n}"), None);
    }
    assert!(store.pending.overflowed());
    assert!(
        store.pending.holds("a"),
        "after an overflow no key is read from redis"
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.pending.any() {
        assert!(Instant::now() < deadline, "the replay did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Restarted empty, so re-plant what the purge must remove, then overflow again.
    let mut raw = server.connection().await;
    let mut bus = redis::Client::open(server.url())
        .expect("url")
        .get_async_pubsub()
        .await
        .expect("subscribe");
    bus.subscribe(super::super::keys::bus_channel("test"))
        .await
        .expect("subscribe");
    let _: () = redis::cmd("SET")
        .arg("test:1:{a}:v")
        .arg("old")
        .query_async(&mut raw)
        .await
        .expect("set");
    let _: () = redis::cmd("SET")
        .arg("test:1:{loading}:f")
        .arg(fence.expect("seeded"))
        .query_async(&mut raw)
        .await
        .expect("set");
    store.pending.push("x", None);
    for n in 0..MAX_PENDING {
        store.pending.push(&format!("lost {n}"), None);
    }
    assert!(store.pending.overflowed());
    while store.pending.any() {
        store.replay_batch(true).await.expect("up");
    }
    let held: Option<Vec<u8>> = redis::cmd("GET")
        .arg("test:1:{a}:v")
        .query_async(&mut raw)
        .await
        .expect("get");
    assert_eq!(held, None, "the purge deleted the entry");
    assert!(
        !store
            .fill("loading", fence, b"old", TTL, None, (None, None))
            .await
            .expect("up"),
        "and removed the fence of a load under way"
    );
    let message = tokio::time::timeout(Duration::from_secs(5), bus.on_message().next())
        .await
        .expect("a bus message")
        .expect("open");
    assert_eq!(
        message.get_payload::<String>().expect("text"),
        super::super::keys::FLUSH_MESSAGE,
        "tiered peers are told to drop their L1"
    );
    assert_eq!(store.get("a").await.expect("usable again"), None);
}

#[tokio::test]
async fn a_paused_redis_costs_at_most_the_timeout() {
    let server = RedisServer::start();
    let store = store(&server);
    read(&store, "k").await.expect("up");
    server.pause();
    let started = Instant::now();
    assert!(read(&store, "k").await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    server.resume();
}

/// What a read found: the envelope bytes, if any, and the fence generation to carry into a fill.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Read {
    value: Option<Vec<u8>>,
    fence: Option<i64>,
}

/// The value and, on a miss, the fence generation: what a loader needs.
async fn read(store: &RedisStore, cache_key: &str) -> Result<Read, StoreError> {
    let value = store.get(cache_key).await?;
    let fence = match value {
        Some(_) => None,
        None => fence(store, cache_key).await?,
    };
    Ok(Read { value, fence })
}

/// The entry's fence generation, which a fill must carry.
async fn fence(store: &RedisStore, cache_key: &str) -> Result<Option<i64>, StoreError> {
    let mut connection = store.connection().await?;
    store
        .guarded(
            Scope::Entry(cache_key),
            redis::cmd("GET")
                .arg(store.key_arg(cache_key, Role::Fence))
                .query_async(&mut connection),
        )
        .await
}

// ---- From the adversarial review of the failure paths: hostile data and the purge. ----

const REVIEW_OP_TIMEOUT: Duration = Duration::from_millis(200);

fn store_with_prefix(server: &RedisServer, prefix: &str) -> Arc<RedisStore> {
    let settings = RedisSettings {
        prefix: prefix.to_owned(),
        op_timeout: REVIEW_OP_TIMEOUT,
        breaker: BreakerPolicy {
            failures_to_open: 3,
            probe_interval: Duration::from_millis(300),
        },
        ..RedisSettings::default()
    };
    RedisStore::new(server_target(server), settings)
}

fn raw_blocking(server: &RedisServer) -> redis::Connection {
    server.blocking_connection()
}

/// After an overflow the replay ends with a purge that INCRs every fence under the prefix, in
/// a pipeline whose errors surface: one non-integer fence makes every purge fail, so the queue
/// stays overflowed and every key of the process stays "pending" (never read from Redis)
/// for as long as the foreign bytes live, with Redis up all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_fence_makes_the_overflow_purge_fail_forever() {
    let server = RedisServer::start();
    let store = store_with_prefix(&server, "u1");
    let _: () = redis::cmd("SET")
        .arg("u1:1:{g}:f")
        .arg("garbage")
        .query(&mut raw_blocking(&server))
        .expect("raw set");
    // Frozen while the queue fills, so that the background replayer cannot keep up.
    server.pause();
    for n in 0..=MAX_PENDING {
        store.keep_for_replay(&format!("lost {n}"), None);
    }
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.get("any key").await {
            Ok(_) => break,
            Err(error) => assert!(
                Instant::now() < deadline,
                "10 s after an overflow, with Redis up, reads still fail: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The caller whose replay batch is the last one also runs the purge: a SCAN of the whole
/// keyspace, one guarded round trip per page, all inside that caller's call. "Replay is bounded
/// in time per call" holds per batch, not for the purge. (Invalidations queued from a thread
/// without a runtime start no background replayer, so the callers do all of it.)
#[test]
fn the_caller_that_runs_the_purge_pays_for_the_whole_keyspace() {
    let server = RedisServer::start();
    let store = store_with_prefix(&server, "u2");
    let mut raw = raw_blocking(&server);
    let _: () = redis::cmd("EVAL")
        .arg("for i = 1, 300000 do redis.call('SET', 'u2:1:{k' .. i .. '}:v', 'x') end")
        .arg(0)
        .query(&mut raw)
        .expect("plant keys");
    for n in 0..=MAX_PENDING {
        store.keep_for_replay(&format!("lost {n}"), None);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut slowest = Duration::ZERO;
    for _ in 0..(MAX_PENDING / 200 + 3) {
        let begun = Instant::now();
        let _ = runtime.block_on(store.get("any key"));
        slowest = slowest.max(begun.elapsed());
    }
    // The purge is the background replayer's; it finishes while callers go on.
    let deadline = Instant::now() + Duration::from_secs(20);
    while runtime.block_on(store.get("any key")).is_err() {
        assert!(Instant::now() < deadline, "the purge did not finish");
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    }
    assert!(
        slowest < REVIEW_OP_TIMEOUT * 2,
        "one call took {slowest:?}, with op_timeout = {REVIEW_OP_TIMEOUT:?}"
    );
}

/// Sync invalidations from 8 threads against a frozen Redis, then against the same Redis
/// thawed: each call is bounded by about one op_timeout, and the pool recovers.
#[test]
fn sync_invalidations_from_eight_threads_are_bounded_and_recover() {
    let server = RedisServer::start();
    let store = store_with_prefix(&server, "u3");
    store.invalidate_blocking("warm", None).expect("up");
    server.pause();
    let slowest = |store: &Arc<RedisStore>, calls: usize| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let store = Arc::clone(store);
                std::thread::spawn(move || {
                    let mut slowest = Duration::ZERO;
                    let mut failed = 0;
                    for n in 0..calls {
                        let begun = Instant::now();
                        if store
                            .invalidate_blocking(&format!("k{t}-{n}"), None)
                            .is_err()
                        {
                            failed += 1;
                        }
                        slowest = slowest.max(begun.elapsed());
                    }
                    (slowest, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .fold((Duration::ZERO, 0), |(s, f), (s2, f2)| (s.max(s2), f + f2))
    };
    let (frozen, _) = slowest(&store, 3);
    server.resume();
    assert!(
        frozen < REVIEW_OP_TIMEOUT + Duration::from_millis(100),
        "a sync invalidation against a frozen Redis took {frozen:?}"
    );
    // Past the breaker's probe interval, every call succeeds again.
    std::thread::sleep(Duration::from_millis(400));
    let mut recovered = false;
    for _ in 0..20 {
        if store.invalidate_blocking("probe", None).is_ok() {
            recovered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(recovered, "the breaker never closed");
    let (thawed, failed) = slowest(&store, 20);
    assert_eq!(failed, 0, "calls failed against a thawed Redis");
    assert!(thawed < REVIEW_OP_TIMEOUT, "{thawed:?}");
}
