//! Review of refresh-ahead and the soft timeout (issue 15), against a real redis-server on a
//! test clock: hits never wait on a refresh (an L2 hit behind an expired L1 copy included, and
//! with Redis paused under the refresh's claim); with a soft timeout, followers in process and
//! waiters in another process get the stale value after it, not after the whole load; a
//! background load that an invalidation overtook, or that panics, leaves nothing wrong behind.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, RedisBackend, TestClock, TieredBackend};
use support::redis_server::RedisServer;
use support::scripted_loader::{loads, release, run_loader, set, until_loads, version, Loader};

#[cached(
    ttl = "60s",
    key = "l1r:<id>",
    backend = "tiered",
    refresh = "50s",
    l1_ttl = "5s"
)]
async fn short_l1(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

/// The versions `paused_refresh` returns: a source of its own, not the scripted loader. Its
/// refresh-ahead claims while Redis is paused; Redis runs that claim on resume, and the
/// refresh's load may then start after its scenario ended: on the scripted loader it took the
/// next scenario's `Waits` and its one `release()` (a second load there, and that scenario's
/// background load left waiting, holding its lock, for the next scenario's release).
static PAUSED_VERSION: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = "60s", key = "pr:<id>", backend = "tiered", refresh = "50s")]
async fn paused_refresh(id: u64) -> Result<u64, String> {
    let _ = id;
    Ok(PAUSED_VERSION.fetch_add(1, Ordering::SeqCst) + 1)
}

#[cached(
    ttl = "60s",
    key = "sf:<id>",
    backend = "tiered",
    stale = "10m",
    timeout = "100ms"
)]
async fn soft(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(
    ttl = "60s",
    key = "sf:<id>",
    backend = "tiered.peer",
    stale = "10m",
    timeout = "100ms"
)]
async fn soft_in_peer(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[invalidates("sf:<id>")]
async fn change_soft(id: u64) {
    let _ = id;
}

/// What a bounded call answered: its value, or that it was still waiting at `limit`.
async fn within<F: std::future::Future<Output = Result<u64, String>>>(
    limit: Duration,
    call: F,
) -> Result<Result<u64, String>, String> {
    let started = Instant::now();
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| format!("still waiting after {:?}", started.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_of_refresh_and_the_soft_timeout() {
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
    configure()
        .tiered("tiered", TieredBackend::builder(redis("rv")).build())
        .tiered("tiered.peer", TieredBackend::builder(redis("rv")).build())
        .install()
        .expect("configured once");

    let mut failures = Vec::new();
    for (name, outcome) in [
        (
            "an_l2_hit_behind_an_expired_l1_copy_does_not_wait_for_the_refresh",
            an_l2_hit_behind_an_expired_l1_copy_does_not_wait_for_the_refresh(&clock).await,
        ),
        (
            "l1_hits_stay_fast_while_redis_is_paused_under_the_refresh_claim",
            l1_hits_stay_fast_while_redis_is_paused_under_the_refresh_claim(&clock, &server).await,
        ),
        (
            "followers_and_peer_waiters_get_stale_after_the_soft_timeout",
            followers_and_peer_waiters_get_stale_after_the_soft_timeout(&clock).await,
        ),
        (
            "an_invalidation_during_the_background_load_keeps_its_value_out",
            an_invalidation_during_the_background_load_keeps_its_value_out(&clock).await,
        ),
        (
            "a_background_load_that_panics_frees_the_key",
            a_background_load_that_panics_frees_the_key(&clock).await,
        ),
    ] {
        if let Err(failure) = outcome {
            failures.push(format!("{name}: {failure}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `l1_ttl` below the refresh lead: the L1 copy ends while the L2 entry is fresh and its
/// refresh runs. A caller then reads a fresh L2 entry: a hit, which must not wait for the
/// refresh's load.
async fn an_l2_hit_behind_an_expired_l1_copy_does_not_wait_for_the_refresh(
    clock: &TestClock,
) -> Result<(), String> {
    set(Loader::Counts);
    let value = short_l1(1).await.expect("loaded");
    clock.advance(Duration::from_secs(51));
    set(Loader::Waits);
    let before = loads();
    // L1 ended at 5 s: this caller reads L2 (fresh for 9 s more), and starts the refresh.
    let answered = within(Duration::from_secs(2), short_l1(1)).await;
    until_loads(before + 1).await;
    clock.advance(Duration::from_secs(6));
    // The L1 copy is gone again; the L2 entry is fresh for 3 s more, the refresh still loads.
    let behind = within(Duration::from_secs(2), short_l1(1)).await;
    release();
    set(Loader::Counts);
    if answered != Ok(Ok(value)) {
        return Err(format!("the due hit answered {answered:?}"));
    }
    if behind != Ok(Ok(value)) {
        return Err(format!(
            "an L2 hit during the refresh answered {behind:?}, not the entry at once"
        ));
    }
    Ok(())
}

/// Redis paused while a refresh claims: L1 hits never touch Redis, so they stay fast; once
/// Redis is back, the key is refreshed later as usual.
async fn l1_hits_stay_fast_while_redis_is_paused_under_the_refresh_claim(
    clock: &TestClock,
    server: &RedisServer,
) -> Result<(), String> {
    let value = paused_refresh(1).await.expect("loaded");
    clock.advance(Duration::from_secs(51));
    server.pause();
    let mut slowest = Duration::ZERO;
    let mut wrong = None;
    for _ in 0..20 {
        let started = Instant::now();
        let answer = within(Duration::from_secs(2), paused_refresh(1)).await;
        slowest = slowest.max(started.elapsed());
        if answer != Ok(Ok(value)) {
            wrong = Some(answer);
        }
    }
    server.resume();
    if let Some(answer) = wrong {
        return Err(format!(
            "a hit under the paused refresh answered {answer:?}"
        ));
    }
    // Bounded by the op timeout (300 ms): a hit that waited on the claim would take that long.
    if slowest >= Duration::from_millis(250) {
        return Err(format!("an L1 hit took {slowest:?} while Redis was paused"));
    }
    Ok(())
}

/// A leader's load past the soft timeout: its in-process follower, and a caller of another
/// instance waiting for its lock, each get the stale value after about the soft timeout.
async fn followers_and_peer_waiters_get_stale_after_the_soft_timeout(
    clock: &TestClock,
) -> Result<(), String> {
    set(Loader::Counts);
    let value = soft(1).await.expect("loaded");
    clock.advance(Duration::from_secs(61));
    set(Loader::Waits);
    let before = loads();
    let leader = tokio::spawn(soft(1));
    until_loads(before + 1).await;
    let follower = tokio::spawn(within(Duration::from_secs(2), soft(1)));
    let waiter = tokio::spawn(within(Duration::from_secs(2), soft_in_peer(1)));
    let (follower, waiter) = (
        follower.await.expect("no panic"),
        waiter.await.expect("no panic"),
    );
    let leader_answer = within(Duration::from_secs(2), async {
        leader.await.expect("no panic")
    })
    .await;
    release();
    set(Loader::Counts);
    let loaded = loads() - before;
    if follower != Ok(Ok(value)) || waiter != Ok(Ok(value)) || leader_answer != Ok(Ok(value)) {
        return Err(format!(
            "leader {leader_answer:?}, follower {follower:?}, peer waiter {waiter:?}; \
             wanted the stale {value} for each"
        ));
    }
    if loaded != 1 {
        return Err(format!("{loaded} loads, wanted the leader's alone"));
    }
    Ok(())
}

/// A background load (past the soft timeout) that an invalidation overtakes: its value is
/// loaded from before the invalidation, so no caller after it may get it.
async fn an_invalidation_during_the_background_load_keeps_its_value_out(
    clock: &TestClock,
) -> Result<(), String> {
    set(Loader::Counts);
    let value = soft(2).await.expect("loaded");
    clock.advance(Duration::from_secs(61));
    set(Loader::Waits);
    let before = loads();
    let stale = within(Duration::from_secs(2), soft(2)).await;
    until_loads(before + 1).await;
    change_soft(2).await;
    set(Loader::Counts);
    // The background load is the only one under way: its value is the next version. Read
    // before the release, not after: released, the load may take its version on a worker at
    // once, and a read after it names the first load after the invalidation instead.
    let background = version() + 1;
    release();
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(within(Duration::from_secs(5), soft(2)).await);
        answers.push(within(Duration::from_secs(5), soft_in_peer(2)).await);
    }
    if stale != Ok(Ok(value)) {
        return Err(format!(
            "the caller got {stale:?}, wanted the stale {value}"
        ));
    }
    if answers
        .iter()
        .any(|answer| !matches!(answer, Ok(Ok(v)) if *v > background))
    {
        return Err(format!(
            "after the invalidation: {answers:?}; the background load's value was {background}"
        ));
    }
    Ok(())
}

/// A background load that panics: the key is freed (the stale value written back, or a load
/// at once), never held until the lease ends.
async fn a_background_load_that_panics_frees_the_key(clock: &TestClock) -> Result<(), String> {
    set(Loader::Counts);
    let value = soft(3).await.expect("loaded");
    clock.advance(Duration::from_secs(61));
    set(Loader::WaitsThenPanics);
    let before = loads();
    let stale = within(Duration::from_secs(2), soft(3)).await;
    until_loads(before + 1).await;
    set(Loader::Counts);
    release();
    let after = within(Duration::from_secs(2), soft_in_peer(3)).await;
    if stale != Ok(Ok(value)) {
        return Err(format!(
            "the caller got {stale:?}, wanted the stale {value}"
        ));
    }
    if !matches!(after, Ok(Ok(_))) {
        return Err(format!("after the panic a peer got {after:?}"));
    }
    Ok(())
}
