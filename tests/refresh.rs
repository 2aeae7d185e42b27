//! Refresh-ahead (`refresh`) and the soft `timeout`, against a real redis-server on a test
//! clock. A hit on an entry older than `refresh` returns the entry at once and starts one load
//! in the background, whose value then replaces it: on memory, on Redis across two instances
//! standing for two processes (one refresh between them: the refresh claim), and on tiered,
//! where the refreshed value reaches the peer's L1 (the bus). A refresh that fails or panics
//! leaves the entry as it was and is not retried within the interval; one that an
//! invalidation overtakes stores nothing. With fail-safe, a load past the soft timeout gives
//! the caller the stale value while it goes on, and its value is stored.

mod support;

use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, stats, RedisBackend, TestClock, TieredBackend};
use support::redis_server::RedisServer;
use support::scripted_loader::{
    loads, release, run_loader, set, stale_answers, until_answers, until_loads, version, Loader,
};

#[cached(ttl = "60s", key = "rm:<id>", backend = "memory", refresh = "50s")]
async fn in_memory(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(ttl = "60s", key = "rr:<id>", backend = "redis", refresh = "50s")]
async fn on_redis(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(ttl = "60s", key = "rr:<id>", backend = "redis.peer", refresh = "50s")]
async fn on_redis_in_peer(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(ttl = "60s", key = "rt:<id>", backend = "tiered", refresh = "50s")]
async fn on_tiered(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(ttl = "60s", key = "rt:<id>", backend = "tiered.peer", refresh = "50s")]
async fn on_tiered_in_peer(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(
    ttl = "60s",
    key = "soft:<id>",
    backend = "tiered",
    stale = "10m",
    timeout = "100ms"
)]
async fn with_soft_timeout(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(ttl = "60s", key = "fs:<id>", backend = "tiered", stale = "10m")]
async fn fail_safe(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[invalidates("rm:<id>")]
async fn change_in_memory(id: u64) {
    let _ = id;
}

fn refreshes() -> u64 {
    stats().sites.iter().map(|site| site.refreshes).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_ahead_scenarios() {
    let server = RedisServer::start();
    let clock = TestClock::new();
    let redis = |prefix: &str| {
        RedisBackend::builder()
            .url(server.url())
            .prefix(prefix)
            .op_timeout(Duration::from_millis(300))
            .clock(&clock)
            .build()
            .expect("valid configuration")
    };
    let memory = cachette::MemoryBackend::builder().clock(&clock).build();
    configure()
        .memory("memory", memory)
        .redis("redis", redis("rr"))
        .redis("redis.peer", redis("rr"))
        .tiered("tiered", TieredBackend::builder(redis("rt")).build())
        .tiered("tiered.peer", TieredBackend::builder(redis("rt")).build())
        .install()
        .expect("configured once");

    a_hit_past_refresh_answers_at_once_and_refreshes_once(&clock).await;
    a_failed_refresh_leaves_the_entry_and_waits_for_the_interval(&clock).await;
    a_panicking_refresh_leaves_the_entry(&clock).await;
    an_invalidation_during_a_refresh_keeps_its_value_out(&clock).await;
    two_redis_instances_refresh_once_between_them(&clock).await;
    a_tiered_refresh_reaches_the_peer_l1(&clock).await;
    a_soft_timeout_serves_stale_and_stores_the_late_value(&clock).await;
    followers_of_a_stale_serve_are_counted_stale(&clock).await;
}

async fn a_hit_past_refresh_answers_at_once_and_refreshes_once(clock: &TestClock) {
    set(Loader::Counts);
    let first = in_memory(1).await.expect("loaded");
    let before = (loads(), refreshes());
    clock.advance(Duration::from_secs(40));
    assert_eq!(
        in_memory(1).await,
        Ok(first),
        "younger than refresh: a plain hit"
    );
    assert_eq!((loads(), refreshes()), before, "no refresh before 50 s");
    clock.advance(Duration::from_secs(11));
    // 64 callers at once on the due entry: every one answers the entry it found, one refresh.
    set(Loader::Waits);
    let callers: Vec<_> = (0..64).map(|_| tokio::spawn(in_memory(1))).collect();
    for caller in callers {
        assert_eq!(
            caller.await.expect("no panic"),
            Ok(first),
            "answered at once"
        );
    }
    assert_eq!(refreshes(), before.1 + 1, "one refresh for 64 due hits");
    release();
    until_answers(first + 1, || in_memory(1)).await;
    assert_eq!(loads(), before.0 + 1, "the refresh was the only load");
    set(Loader::Counts);
    // The refreshed entry is fresh again: its own refresh comes 50 s after it.
    clock.advance(Duration::from_secs(45));
    assert_eq!(in_memory(1).await, Ok(first + 1));
    assert_eq!(refreshes(), before.1 + 1);
}

async fn a_failed_refresh_leaves_the_entry_and_waits_for_the_interval(clock: &TestClock) {
    set(Loader::Counts);
    let value = in_memory(2).await.expect("loaded");
    clock.advance(Duration::from_secs(51));
    set(Loader::Fails);
    let before = loads();
    assert_eq!(in_memory(2).await, Ok(value));
    // The failing refresh has run once it is counted as a load.
    until_loads(before + 1).await;
    for _ in 0..20 {
        assert_eq!(in_memory(2).await, Ok(value), "the entry stays as it was");
    }
    assert_eq!(
        loads(),
        before + 1,
        "not retried within the interval (10 s)"
    );
    clock.advance(Duration::from_secs(5));
    assert_eq!(in_memory(2).await, Ok(value));
    assert_eq!(loads(), before + 1, "still within the interval");
}

async fn a_panicking_refresh_leaves_the_entry(clock: &TestClock) {
    set(Loader::Counts);
    let value = in_memory(3).await.expect("loaded");
    clock.advance(Duration::from_secs(51));
    set(Loader::Panics);
    let before = loads();
    assert_eq!(in_memory(3).await, Ok(value));
    until_loads(before + 1).await;
    set(Loader::Counts);
    assert_eq!(in_memory(3).await, Ok(value), "the entry stays as it was");
    // Its flight ended with the panic: once the entry ends, a caller loads at once.
    clock.advance(Duration::from_secs(10));
    let reloaded = tokio::time::timeout(Duration::from_secs(5), in_memory(3)).await;
    assert!(matches!(reloaded, Ok(Ok(v)) if v > value), "{reloaded:?}");
}

async fn an_invalidation_during_a_refresh_keeps_its_value_out(clock: &TestClock) {
    set(Loader::Counts);
    let value = in_memory(4).await.expect("loaded");
    clock.advance(Duration::from_secs(51));
    set(Loader::Waits);
    let before = loads();
    assert_eq!(in_memory(4).await, Ok(value));
    until_loads(before + 1).await;
    change_in_memory(4).await;
    release();
    set(Loader::Counts);
    // The refresh read before the invalidation: its value is not kept; the next caller loads.
    let after = in_memory(4).await.expect("loaded");
    let refreshed = version();
    assert!(
        after == refreshed && loads() == before + 2,
        "the caller after the invalidation loaded ({after}, version {refreshed}, {} loads)",
        loads() - before
    );
}

async fn two_redis_instances_refresh_once_between_them(clock: &TestClock) {
    set(Loader::Counts);
    let value = on_redis(5).await.expect("loaded");
    assert_eq!(
        on_redis_in_peer(5).await,
        Ok(value),
        "the peer hits the same entry"
    );
    clock.advance(Duration::from_secs(51));
    set(Loader::Waits);
    let before = (loads(), refreshes());
    let callers: Vec<_> = (0..32)
        .map(|n| {
            tokio::spawn(async move {
                if n % 2 == 0 {
                    on_redis(5).await
                } else {
                    on_redis_in_peer(5).await
                }
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(
            caller.await.expect("no panic"),
            Ok(value),
            "answered at once"
        );
    }
    until_loads(before.0 + 1).await;
    release();
    until_answers(value + 1, || on_redis_in_peer(5)).await;
    assert_eq!(on_redis(5).await, Ok(value + 1));
    assert_eq!(
        loads(),
        before.0 + 1,
        "one refresh across the two instances"
    );
    // Each instance admitted one in process; the refresh claim let one of them load.
    assert!(refreshes() - before.1 <= 2);
    set(Loader::Counts);
}

async fn a_tiered_refresh_reaches_the_peer_l1(clock: &TestClock) {
    set(Loader::Counts);
    let value = on_tiered(6).await.expect("loaded");
    assert_eq!(on_tiered_in_peer(6).await, Ok(value));
    // Both instances hold it in L1 now; the refresh of one must replace the other's copy.
    clock.advance(Duration::from_secs(51));
    let before = loads();
    assert_eq!(on_tiered(6).await, Ok(value), "answered at once");
    until_answers(value + 1, || on_tiered(6)).await;
    until_answers(value + 1, || on_tiered_in_peer(6)).await;
    assert_eq!(
        loads(),
        before + 1,
        "one refresh; the peer read its fill from L2"
    );
}

async fn a_soft_timeout_serves_stale_and_stores_the_late_value(clock: &TestClock) {
    set(Loader::Counts);
    let value = with_soft_timeout(7).await.expect("loaded");
    clock.advance(Duration::from_secs(61));
    set(Loader::Waits);
    let started = Instant::now();
    assert_eq!(with_soft_timeout(7).await, Ok(value), "the stale value");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
        "answered after the soft timeout, not {waited:?}"
    );
    release();
    set(Loader::Counts);
    until_answers(value + 1, || with_soft_timeout(7)).await;
}

async fn followers_of_a_stale_serve_are_counted_stale(clock: &TestClock) {
    set(Loader::Counts);
    let value = fail_safe(8).await.expect("loaded");
    clock.advance(Duration::from_secs(61));
    set(Loader::WaitsThenFails);
    let before = (loads(), stale_answers("::fail_safe"));
    let leader = tokio::spawn(fail_safe(8));
    until_loads(before.0 + 1).await;
    let followers: Vec<_> = (0..7).map(|_| tokio::spawn(fail_safe(8))).collect();
    // A bounded pause for the followers to reach the leader's flight (their first poll); one
    // that came later would find the written-back entry, a hit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    release();
    assert_eq!(
        leader.await.expect("no panic"),
        Ok(value),
        "the stale value"
    );
    for follower in followers {
        assert_eq!(
            follower.await.expect("no panic"),
            Ok(value),
            "the stale value"
        );
    }
    assert_eq!(loads(), before.0 + 1, "one failing load");
    assert_eq!(
        stale_answers("::fail_safe") - before.1,
        8,
        "the leader and its 7 followers all answered stale"
    );
    set(Loader::Counts);
}
