//! The end of an entry's life, against a real redis-server on a test clock: `jitter` spreads
//! the expiry of entries filled together within the stated ttl; `l1_ttl` bounds a tiered L1
//! copy below the entry's ttl. Then fail-safe (`stale`, `throttle`, `hard_timeout`) on Redis and tiered, against a real
//! redis-server, on a test clock: after the ttl, a loader that fails, panics or hangs past its
//! hard timeout gives way to the stale value; the loader is retried at most once per throttle
//! interval, in this instance and in a peer; an invalidated entry is never served stale, even
//! when the invalidation lands during the failing load; a caller dropped during a fail-safe
//! load leaves nothing held; a write-back Redis does not answer serves nothing stale.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, stats, RedisBackend, TestClock, TieredBackend};
use support::redis_server::RedisServer;
use tokio::sync::{mpsc, Notify};

/// What the loader does next.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Loader {
    Returns(u64),
    Fails,
    Panics,
    /// Waits for `RELEASE`, then fails.
    HangsThenFails,
}

static LOADER: Mutex<Loader> = Mutex::new(Loader::Returns(1));
static LOADS: AtomicUsize = AtomicUsize::new(0);
/// Told when a load starts, by the scenario that waits for it (a fresh channel each time, so
/// that no earlier load's signal is taken for this one's).
static STARTED: Mutex<Option<mpsc::UnboundedSender<()>>> = Mutex::new(None);
static RELEASE: Notify = Notify::const_new();

/// A receiver told when the next load starts.
fn next_start() -> mpsc::UnboundedReceiver<()> {
    let (sender, receiver) = mpsc::unbounded_channel();
    *STARTED.lock().expect("not poisoned") = Some(sender);
    receiver
}

fn set(loader: Loader) {
    *LOADER.lock().expect("not poisoned") = loader;
}

fn loads() -> usize {
    LOADS.load(Ordering::SeqCst)
}

async fn run_loader() -> Result<u64, String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    let loader = *LOADER.lock().expect("not poisoned");
    if let Some(started) = STARTED.lock().expect("not poisoned").take() {
        let _ = started.send(());
    }
    match loader {
        Loader::Returns(value) => Ok(value),
        Loader::Fails => Err("the database is down".to_owned()),
        Loader::Panics => panic!("the loader panicked"),
        Loader::HangsThenFails => {
            RELEASE.notified().await;
            Err("the database timed out".to_owned())
        }
    }
}

// Redis expires keys on its own, real, clock: long windows keep that out of the way; the
// test clock moves the entries' own times.
#[cached(
    ttl = "60s",
    key = "fs:<id>",
    backend = "redis",
    stale = "10m",
    throttle = "5s"
)]
async fn price(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(
    ttl = "60s",
    key = "fs:<id>",
    backend = "redis.peer",
    stale = "10m",
    throttle = "5s"
)]
async fn price_in_peer(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(
    ttl = "60s",
    key = "fs-hard:<id>",
    backend = "tiered",
    stale = "10m",
    hard_timeout = "200ms"
)]
async fn quote(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

static JITTERED_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "jit:<id>", backend = "redis", jitter = 0.5)]
async fn jittered(id: u64) -> u64 {
    JITTERED_LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

#[cached(ttl = "60s", key = "l1:<id>", backend = "tiered", l1_ttl = "5s")]
async fn profile(id: u64) -> u64 {
    id
}

#[invalidates("fs:<id>")]
async fn reprice(id: u64) {
    let _ = id;
}

#[invalidates("fs-hard:<id>")]
async fn requote(id: u64) {
    let _ = id;
}

fn stale_answers() -> u64 {
    stats()
        .sites
        .iter()
        .filter(|site| site.function.ends_with("::price") || site.function.ends_with("::quote"))
        .map(|site| site.stale)
        .sum()
}

const TTL: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_safe_scenarios() {
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
        .redis("redis", redis("fs"))
        .redis("redis.peer", redis("fs"))
        .tiered("tiered", TieredBackend::builder(redis("fst")).build())
        .install()
        .expect("configured once");

    jitter_spreads_expiry_within_the_ttl(&clock).await;
    l1_ttl_bounds_the_l1_copy(&clock).await;
    an_error_after_the_ttl_serves_the_stale_value_throttled(&clock).await;
    a_panic_serves_the_stale_value(&clock).await;
    an_invalidated_entry_is_never_served_stale(&clock).await;
    an_invalidation_during_the_failing_load_is_respected(&clock).await;
    a_hung_loader_gives_way_after_the_hard_timeout(&clock).await;
    a_cancelled_fail_safe_load_holds_nothing(&clock).await;
    a_write_back_redis_does_not_answer_serves_nothing_stale(&clock, &server).await;
}

async fn jitter_spreads_expiry_within_the_ttl(clock: &TestClock) {
    const KEYS: u64 = 200;
    for id in 0..KEYS {
        jittered(id).await;
    }
    let reloaded_after = |clock: &TestClock, by: Duration| {
        clock.advance(by);
        async move {
            let before = JITTERED_LOADS.load(Ordering::SeqCst);
            for id in 0..KEYS {
                jittered(id).await;
            }
            JITTERED_LOADS.load(Ordering::SeqCst) - before
        }
    };
    // jitter = 0.5: each ttl is between 30 s and 60 s.
    assert_eq!(reloaded_after(clock, Duration::from_secs(29)).await, 0);
    let spread = reloaded_after(clock, Duration::from_secs(16)).await as u64;
    assert!(
        (KEYS / 4..=KEYS * 3 / 4).contains(&spread),
        "at 45 s about half the entries have ended, not {spread} of {KEYS}"
    );
    // Past 60 s since the first fill every first-generation entry has ended; none outlived
    // the stated ttl (the reloaded ones were filled at 45 s).
    let rest = reloaded_after(clock, Duration::from_secs(16)).await as u64;
    assert_eq!(spread + rest, KEYS, "every entry ended within its ttl");
}

async fn l1_ttl_bounds_the_l1_copy(clock: &TestClock) {
    let l1_hits = || {
        stats()
            .sites
            .iter()
            .find(|site| site.function.ends_with("::profile"))
            .map_or(0, |site| site.l1_hits)
    };
    // The bus must be up for L1 to be used at all.
    let deadline = Instant::now() + Duration::from_secs(5);
    profile(1).await;
    while {
        profile(1).await;
        l1_hits() == 0
    } {
        assert!(Instant::now() < deadline, "L1 never served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let warm = l1_hits();
    profile(1).await;
    assert_eq!(l1_hits(), warm + 1, "an L1 hit within l1_ttl");
    clock.advance(Duration::from_secs(6));
    let before = stats()
        .sites
        .iter()
        .find(|site| site.function.ends_with("::profile"))
        .map_or(0, |site| site.hits);
    profile(1).await;
    let after = stats()
        .sites
        .iter()
        .find(|site| site.function.ends_with("::profile"))
        .map_or(0, |site| site.hits);
    assert_eq!(l1_hits(), warm + 1, "past l1_ttl: not from L1");
    assert_eq!(after, before + 1, "but still a hit, from L2");
}

async fn an_error_after_the_ttl_serves_the_stale_value_throttled(clock: &TestClock) {
    set(Loader::Returns(100));
    assert_eq!(price(1).await, Ok(100));
    let before = (loads(), stale_answers());

    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Fails);
    assert_eq!(price(1).await, Ok(100), "the stale value, not the error");
    assert_eq!(loads(), before.0 + 1, "the loader was tried once");
    assert_eq!(stale_answers(), before.1 + 1, "counted as stale");

    // Within the throttle interval, here and in a peer instance: no retry.
    for _ in 0..5 {
        assert_eq!(price(1).await, Ok(100));
        assert_eq!(price_in_peer(1).await, Ok(100));
    }
    assert_eq!(loads(), before.0 + 1, "not retried within the throttle");

    // After it, retried once, still failing: stale again; then it recovers.
    clock.advance(Duration::from_secs(6));
    assert_eq!(price_in_peer(1).await, Ok(100));
    assert_eq!(price(1).await, Ok(100));
    assert_eq!(loads(), before.0 + 2, "one retry per throttle interval");
    clock.advance(Duration::from_secs(6));
    set(Loader::Returns(120));
    assert_eq!(price(1).await, Ok(120), "a load that succeeds is served");
    assert_eq!(price_in_peer(1).await, Ok(120));
    assert_eq!(loads(), before.0 + 3);
}

async fn a_panic_serves_the_stale_value(clock: &TestClock) {
    set(Loader::Returns(200));
    assert_eq!(price(2).await, Ok(200));
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Panics);
    let served = tokio::spawn(price(2)).await;
    assert_eq!(served.expect("no panic reaches the caller"), Ok(200));
}

async fn an_invalidated_entry_is_never_served_stale(clock: &TestClock) {
    set(Loader::Returns(300));
    assert_eq!(price(3).await, Ok(300));
    clock.advance(TTL + Duration::from_secs(1));
    reprice(3).await;
    set(Loader::Fails);
    assert_eq!(
        price(3).await,
        Err("the database is down".to_owned()),
        "invalidated means wrong, not old"
    );
}

async fn an_invalidation_during_the_failing_load_is_respected(clock: &TestClock) {
    set(Loader::Returns(400));
    assert_eq!(price(4).await, Ok(400));
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::HangsThenFails);
    let mut started = next_start();
    let call = tokio::spawn(price(4));
    started.recv().await;
    // The claim read the stale value and the fence; the invalidation moves the fence.
    reprice(4).await;
    RELEASE.notify_one();
    assert_eq!(
        call.await.expect("no panic"),
        Err("the database timed out".to_owned()),
        "the stale value was invalidated during the load"
    );
}

async fn a_hung_loader_gives_way_after_the_hard_timeout(clock: &TestClock) {
    set(Loader::Returns(500));
    assert_eq!(quote(5).await, Ok(500));
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::HangsThenFails);
    let started = Instant::now();
    assert_eq!(quote(5).await, Ok(500), "stale after the hard timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // The same, with an invalidation during the hang: the stale value may not be served, so
    // the caller waits for the load's own answer.
    clock.advance(TTL + Duration::from_secs(60));
    set(Loader::HangsThenFails);
    let mut started_load = next_start();
    let call = tokio::spawn(quote(5));
    started_load.recv().await;
    requote(5).await;
    // A bounded wait for nothing to happen: past the hard timeout, the call is still waiting.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !call.is_finished(),
        "served an invalidated value, or gave up"
    );
    RELEASE.notify_one();
    assert_eq!(
        call.await.expect("no panic"),
        Err("the database timed out".to_owned())
    );
}

async fn a_cancelled_fail_safe_load_holds_nothing(clock: &TestClock) {
    set(Loader::Returns(600));
    assert_eq!(price(6).await, Ok(600));
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::HangsThenFails);
    let mut started = next_start();
    let call = tokio::spawn(price(6));
    started.recv().await;
    call.abort();
    assert!(call.await.is_err(), "cancelled");
    // Neither the flight nor the Redis lock is left: the next caller leads at once.
    set(Loader::Returns(610));
    let started = Instant::now();
    assert_eq!(price(6).await, Ok(610));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

async fn a_write_back_redis_does_not_answer_serves_nothing_stale(
    clock: &TestClock,
    server: &RedisServer,
) {
    set(Loader::Returns(700));
    assert_eq!(price(7).await, Ok(700));
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::HangsThenFails);
    let mut started = next_start();
    let call = tokio::spawn(price(7));
    started.recv().await;
    // Frozen while the load runs: the write-back cannot show that no invalidation landed.
    server.pause();
    RELEASE.notify_one();
    let answer = call.await.expect("no panic");
    server.resume();
    assert_eq!(answer, Err("the database timed out".to_owned()));
}
