//! Fail-safe in process (`stale` on a memory backend, and on the default while it is memory),
//! on a test clock: after the ttl, a loader that fails, panics or hangs past its hard timeout
//! gives way to the stale value, which every caller then hits for the throttle, so the loader
//! runs at most once per interval; the leader's followers answer stale too; an invalidated
//! entry is never served stale, even when the invalidation lands during the failing load; an
//! answer of `None` ends the entry; past its window an entry is gone.

mod support;

use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, MemoryBackend, TestClock};
use support::scripted_loader::{
    loads, release, run_loader, set, stale_answers, until_loads, Loader,
};

#[cached(
    ttl = "60s",
    key = "price:<id>",
    backend = "memory",
    stale = "10m",
    throttle = "5s"
)]
async fn price(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(
    ttl = "60s",
    key = "quote:<id>",
    backend = "memory",
    stale = "10m",
    hard_timeout = "200ms"
)]
async fn quote(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(ttl = "60s", key = "listing:<id>", backend = "memory", stale = "10m")]
async fn listing(id: u64) -> Option<u64> {
    let _ = id;
    match run_loader().await {
        Ok(version) if id != 0 => Some(version),
        _ => None,
    }
}

/// On the configured default, which this test makes memory.
#[cached(ttl = "60s", key = "rate:<id>", stale = "10m", throttle = "5s")]
async fn rate(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[invalidates("price:<id>")]
async fn reprice(id: u64) {
    let _ = id;
}

const TTL: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_safe_in_memory() {
    let clock = TestClock::new();
    configure()
        .memory("memory", MemoryBackend::builder().clock(&clock).build())
        .default_backend("memory")
        .install()
        .expect("configured once");

    an_error_after_the_ttl_serves_the_stale_value_throttled(&clock).await;
    a_panic_serves_the_stale_value(&clock).await;
    followers_answer_stale_with_their_leader(&clock).await;
    an_invalidated_entry_is_never_served_stale(&clock).await;
    an_invalidation_during_the_failing_load_is_respected(&clock).await;
    a_hung_loader_gives_way_after_the_hard_timeout(&clock).await;
    nothing_ends_the_entry(&clock).await;
    past_its_window_an_entry_is_gone(&clock).await;
    the_default_backend_keeps_entries_too(&clock).await;
}

async fn an_error_after_the_ttl_serves_the_stale_value_throttled(clock: &TestClock) {
    set(Loader::Counts);
    let value = price(1).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Fails);
    let before = (loads(), stale_answers("::price"));
    assert_eq!(price(1).await, Ok(value), "the stale value, not the error");
    assert_eq!(loads(), before.0 + 1);
    assert_eq!(stale_answers("::price"), before.1 + 1, "counted stale");
    // Within the throttle every caller hits the value written back; the loader rests.
    for _ in 0..10 {
        assert_eq!(price(1).await, Ok(value));
    }
    clock.advance(Duration::from_secs(4));
    assert_eq!(price(1).await, Ok(value));
    assert_eq!(
        loads(),
        before.0 + 1,
        "not retried within the throttle (5 s)"
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        price(1).await,
        Ok(value),
        "stale again after a second failure"
    );
    assert_eq!(loads(), before.0 + 2, "retried once after it");
    set(Loader::Counts);
    clock.advance(Duration::from_secs(6));
    let fresh = price(1).await.expect("loaded");
    assert!(fresh > value, "a working loader replaces the stale value");
}

async fn a_panic_serves_the_stale_value(clock: &TestClock) {
    set(Loader::Counts);
    let value = price(2).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Panics);
    assert_eq!(price(2).await, Ok(value), "the stale value, not the panic");
    set(Loader::Counts);
}

async fn followers_answer_stale_with_their_leader(clock: &TestClock) {
    set(Loader::Counts);
    let value = price(3).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::WaitsThenFails);
    let before = (loads(), stale_answers("::price"));
    let leader = tokio::spawn(price(3));
    until_loads(before.0 + 1).await;
    let followers: Vec<_> = (0..7).map(|_| tokio::spawn(price(3))).collect();
    // A bounded pause for the followers to reach the leader's flight (their first poll); one
    // that came later would hit the written-back value.
    tokio::time::sleep(Duration::from_millis(100)).await;
    release();
    assert_eq!(leader.await.expect("no panic"), Ok(value));
    for follower in followers {
        assert_eq!(follower.await.expect("no panic"), Ok(value));
    }
    assert_eq!(loads(), before.0 + 1, "one failing load");
    assert_eq!(
        stale_answers("::price") - before.1,
        8,
        "all 8 answered stale"
    );
    set(Loader::Counts);
}

async fn an_invalidated_entry_is_never_served_stale(clock: &TestClock) {
    set(Loader::Counts);
    price(4).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    reprice(4).await;
    set(Loader::Fails);
    assert_eq!(price(4).await, Err("the database is down".to_owned()));
    set(Loader::Counts);
}

async fn an_invalidation_during_the_failing_load_is_respected(clock: &TestClock) {
    set(Loader::Counts);
    price(5).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::WaitsThenFails);
    let before = loads();
    let caller = tokio::spawn(price(5));
    until_loads(before + 1).await;
    reprice(5).await;
    release();
    assert_eq!(
        caller.await.expect("no panic"),
        Err("the database timed out".to_owned()),
        "invalidated during the load: the failure, not the stale value"
    );
    set(Loader::Counts);
}

async fn a_hung_loader_gives_way_after_the_hard_timeout(clock: &TestClock) {
    set(Loader::Counts);
    let value = quote(1).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Waits);
    let started = Instant::now();
    assert_eq!(
        quote(1).await,
        Ok(value),
        "the stale value after the hard timeout"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "answered after the hard timeout, not {waited:?}"
    );
    set(Loader::Counts);
}

async fn nothing_ends_the_entry(clock: &TestClock) {
    set(Loader::Counts);
    listing(7).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    // The loader answers `None` (here, when its database fails): the source says the value is
    // gone, which is no failure to cover, and ends the stale entry.
    set(Loader::Fails);
    assert_eq!(listing(7).await, None);
    let before = loads();
    assert_eq!(listing(7).await, None, "nothing kept to serve");
    assert_eq!(
        loads(),
        before + 1,
        "and nothing cached: the loader runs again"
    );
    set(Loader::Counts);
    assert!(listing(7).await.is_some());
}

async fn past_its_window_an_entry_is_gone(clock: &TestClock) {
    set(Loader::Counts);
    price(8).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(601));
    set(Loader::Fails);
    assert_eq!(price(8).await, Err("the database is down".to_owned()));
    set(Loader::Counts);
}

async fn the_default_backend_keeps_entries_too(clock: &TestClock) {
    set(Loader::Counts);
    let value = rate(1).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Fails);
    assert_eq!(
        rate(1).await,
        Ok(value),
        "the stale value on the default backend"
    );
    assert_eq!(stale_answers("::rate"), 1);
    set(Loader::Counts);
}
