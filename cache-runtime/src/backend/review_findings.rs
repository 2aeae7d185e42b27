//! Reproductions from the adversarial review of issue 11's change, on the store itself: each
//! test fails while its finding stands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::breaker::BreakerPolicy;
use super::pending::MAX_PENDING;
use super::redis_store::{RedisSettings, RedisStore};
use super::test_redis_server::RedisServer;

const OP_TIMEOUT: Duration = Duration::from_millis(200);

fn store(server: &RedisServer, prefix: &str) -> Arc<RedisStore> {
    let settings = RedisSettings {
        prefix: prefix.to_owned(),
        op_timeout: OP_TIMEOUT,
        breaker: BreakerPolicy {
            failures_to_open: 3,
            probe_interval: Duration::from_millis(300),
        },
        ..RedisSettings::default()
    };
    RedisStore::new(&server.url(), settings).expect("valid url")
}

fn raw(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .expect("url")
        .get_connection()
        .expect("connect")
}

/// After an overflow the replay ends with a purge that INCRs every fence under the prefix, in
/// a pipeline whose errors surface: one non-integer fence makes every purge fail, so the queue
/// stays overflowed and every key of the process stays "pending" (never read from Redis)
/// for as long as the foreign bytes live, with Redis up all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_fence_makes_the_overflow_purge_fail_forever() {
    let server = RedisServer::start();
    let store = store(&server, "u1");
    let _: () = redis::cmd("SET")
        .arg("u1:1:{g}:f")
        .arg("garbage")
        .query(&mut raw(&server))
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
    let store = store(&server, "u2");
    let mut raw = raw(&server);
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
        slowest < OP_TIMEOUT * 2,
        "one call took {slowest:?}, with op_timeout = {OP_TIMEOUT:?}"
    );
}

/// Sync invalidations from 8 threads against a frozen Redis, then against the same Redis
/// thawed: each call is bounded by about one op_timeout, and the pool recovers.
#[test]
fn sync_invalidations_from_eight_threads_are_bounded_and_recover() {
    let server = RedisServer::start();
    let store = store(&server, "u3");
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
        frozen < OP_TIMEOUT + Duration::from_millis(100),
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
    assert!(thawed < OP_TIMEOUT, "{thawed:?}");
}
