//! Review of fail-safe in process (issue 15): what a `#[cache_put]`, a neighbouring site, a
//! cancelled caller, a panicking weigher and the size bound do to kept entries, and how the
//! callers are counted (`stats()` and the exported requests by tier), on a test clock.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cachette::{
    cache_put, cached, configure, invalidates, metric_names as names, stats, MemoryBackend,
    TestClock,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::scripted_loader::{loads, release, run_loader, set, until_loads, Loader};

#[cached(
    ttl = "60s",
    key = "kp:<id>",
    backend = "memory",
    stale = "10m",
    throttle = "5s"
)]
async fn kept_price(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(
    ttl = "60s",
    key = "kq:<id>",
    backend = "memory",
    stale = "10m",
    hard_timeout = "100ms"
)]
async fn kept_quote(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[invalidates("kq:<id>")]
async fn requote(id: u64) {
    let _ = id;
}

/// The write-through of `kept_price`.
#[cache_put(key = "kp:<id>", ttl = "60s", backend = "memory")]
async fn put_price(id: u64, price: u64) -> Result<u64, String> {
    let _ = id;
    Ok(price)
}

/// A site without fail-safe whose template makes `kept_price`'s keys.
#[cached(ttl = "60s", key = "kp:<id>", backend = "memory")]
async fn plain_price(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

static WEIGHER_PANICS: AtomicBool = AtomicBool::new(false);

#[cached(
    ttl = "60s",
    key = "kw:<id>",
    backend = "memory.weighed",
    stale = "10m"
)]
async fn kept_weighed(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(ttl = "60s", key = "kb:<id>", backend = "memory.small", stale = "10m")]
async fn kept_bounded(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(
    ttl = "60s",
    key = "kj:<id>",
    backend = "memory",
    stale = "10m",
    jitter = 0.2
)]
async fn kept_jittered(id: u64) -> Result<u64, String> {
    let _ = id;
    run_loader().await
}

#[cached(ttl = "60s", key = "ko:<id>", backend = "memory", stale = "10m")]
async fn kept_listing(id: u64) -> Option<u64> {
    let _ = id;
    run_loader().await.ok()
}

const TTL: Duration = Duration::from_secs(60);

fn site_stats(function: &str) -> cachette::SiteStats {
    stats()
        .sites
        .into_iter()
        .find(|site| site.function.ends_with(function))
        .expect("the site is listed")
}

/// The exported stale answers of a site since the last look, by tier: (memory, l2). A look
/// resets the debugging recorder's counters.
fn stale_by_tier(snapshotter: &Snapshotter, function: &str) -> (u64, u64) {
    cachette::publish_metrics();
    let (mut memory, mut l2) = (0, 0);
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let label = |name: &str| {
            key.labels()
                .find(|label| label.key() == name)
                .map(|label| label.value().to_owned())
        };
        let ours = key.name() == names::REQUESTS
            && label("site").is_some_and(|site| site.ends_with(function))
            && label("result").as_deref() == Some("stale");
        let DebugValue::Counter(count) = value else {
            continue;
        };
        match label("tier").as_deref() {
            Some("memory") if ours => memory += count,
            Some("l2") if ours => l2 += count,
            _ => {}
        }
    }
    (memory, l2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_of_fail_safe_in_process() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder");
    let clock = TestClock::new();
    let weighed = MemoryBackend::builder()
        .clock(&clock)
        .max_bytes(1 << 20)
        .weigher(|_, _| {
            assert!(!WEIGHER_PANICS.load(Ordering::SeqCst), "the weigher panics");
            1
        })
        .build();
    let small = MemoryBackend::builder()
        .clock(&clock)
        .max_entries(8)
        .build();
    configure()
        .memory("memory", MemoryBackend::builder().clock(&clock).build())
        .memory("memory.weighed", weighed)
        .memory("memory.small", small.clone())
        .install()
        .expect("configured once");

    followers_of_a_stale_serve_are_counted_in_memory(&clock, &snapshotter).await;
    a_put_is_read_by_a_fail_safe_site(&clock).await;
    a_neighbour_of_another_kind_gives_no_wrong_value(&clock).await;
    a_cancelled_leader_releases_its_flight(&clock).await;
    a_cancelled_caller_after_the_hard_timeout_releases_everything(&clock).await;
    a_panicking_weigher_on_the_write_back_hangs_nobody(&clock).await;
    evicted_kept_entries_are_misses(&clock, &small).await;
    jitter_keeps_the_window(&clock).await;
    nothing_from_a_failing_loader_reaches_the_followers(&clock).await;
}

async fn followers_of_a_stale_serve_are_counted_in_memory(
    clock: &TestClock,
    snapshotter: &Snapshotter,
) {
    set(Loader::Counts);
    let value = kept_price(1).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::WaitsThenFails);
    let before = loads();
    let _ = stale_by_tier(snapshotter, "::kept_price");
    let leader = tokio::spawn(kept_price(1));
    until_loads(before + 1).await;
    let followers: Vec<_> = (0..3).map(|_| tokio::spawn(kept_price(1))).collect();
    // A bounded pause for the followers to reach the flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    release();
    assert_eq!(leader.await.expect("no panic"), Ok(value));
    for follower in followers {
        assert_eq!(follower.await.expect("no panic"), Ok(value));
    }
    let hits_before = site_stats("::kept_price").hits;
    assert_eq!(kept_price(1).await, Ok(value), "the written-back value");
    assert_eq!(site_stats("::kept_price").hits, hits_before + 1, "one hit");
    assert_eq!(site_stats("::kept_price").stale, 4, "four answered stale");
    assert_eq!(
        stale_by_tier(snapshotter, "::kept_price"),
        (4, 0),
        "the leader and its three followers answered from memory; a memory site has no L2"
    );
    set(Loader::Counts);
}

async fn a_put_is_read_by_a_fail_safe_site(clock: &TestClock) {
    set(Loader::Counts);
    kept_price(2).await.expect("loaded");
    assert_eq!(put_price(2, 4242).await, Ok(4242));
    let before = loads();
    assert_eq!(kept_price(2).await, Ok(4242), "the value put, as a hit");
    assert_eq!(loads(), before, "no load after a put");
    // Past the put's ttl, the next load replaces it.
    clock.advance(TTL + Duration::from_secs(1));
    let reloaded = kept_price(2).await.expect("loaded");
    assert_ne!(reloaded, 4242);
}

async fn a_neighbour_of_another_kind_gives_no_wrong_value(clock: &TestClock) {
    set(Loader::Counts);
    let kept = kept_price(3).await.expect("loaded");
    let plain = plain_price(3).await.expect("loaded or read");
    assert!(plain >= kept);
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Fails);
    // Whatever the neighbour stored, nothing stale beyond the window, no panic: a value or the
    // failure.
    let after = kept_price(3).await;
    assert!(
        after == Ok(plain) || after == Ok(kept) || after.is_err(),
        "{after:?}"
    );
    let plain_after = plain_price(3).await;
    assert!(
        plain_after.is_err(),
        "a site without fail-safe never serves stale"
    );
    set(Loader::Counts);
}

async fn a_cancelled_leader_releases_its_flight(clock: &TestClock) {
    set(Loader::Counts);
    let value = kept_price(4).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Waits);
    let before = loads();
    let leader = tokio::spawn(kept_price(4));
    until_loads(before + 1).await;
    let follower = tokio::spawn(kept_price(4));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The follower leads the next flight, finds the stale value and loads, which fails.
    set(Loader::Fails);
    leader.abort();
    assert!(leader.await.is_err(), "cancelled");
    let answered = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the follower is not hung")
        .expect("no panic");
    assert_eq!(answered, Ok(value), "stale after its own failed load");
    assert_eq!(loads(), before + 2);
    set(Loader::Counts);
}

async fn a_cancelled_caller_after_the_hard_timeout_releases_everything(clock: &TestClock) {
    set(Loader::Counts);
    kept_quote(1).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Waits);
    let before = loads();
    let caller = tokio::spawn(kept_quote(1));
    until_loads(before + 1).await;
    // Invalidated during the load: past the hard timeout the caller waits for the load itself.
    requote(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !caller.is_finished(),
        "giving back the load still under way"
    );
    caller.abort();
    assert!(caller.await.is_err());
    set(Loader::Counts);
    let next = tokio::time::timeout(Duration::from_secs(5), kept_quote(1))
        .await
        .expect("not hung");
    assert!(next.is_ok());
}

async fn a_panicking_weigher_on_the_write_back_hangs_nobody(clock: &TestClock) {
    set(Loader::Counts);
    let value = kept_weighed(1).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::WaitsThenFails);
    let before = loads();
    let leader = tokio::spawn(kept_weighed(1));
    until_loads(before + 1).await;
    let follower = tokio::spawn(kept_weighed(1));
    tokio::time::sleep(Duration::from_millis(50)).await;
    WEIGHER_PANICS.store(true, Ordering::SeqCst);
    set(Loader::Fails);
    release();
    assert!(leader.await.is_err(), "the weigher's panic is the caller's");
    let follower = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the follower is not hung");
    assert!(follower.is_err(), "it led, and the weigher panicked again");
    WEIGHER_PANICS.store(false, Ordering::SeqCst);
    assert_eq!(
        kept_weighed(1).await,
        Ok(value),
        "the stale entry is still there"
    );
    set(Loader::Counts);
}

async fn evicted_kept_entries_are_misses(clock: &TestClock, small: &MemoryBackend) {
    set(Loader::Counts);
    for id in 0..64 {
        kept_bounded(id).await.expect("loaded");
    }
    small.run_pending_tasks();
    assert!(small.entry_count() <= 8);
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Fails);
    let mut stale = 0;
    for id in 0..64 {
        if kept_bounded(id).await.is_ok() {
            stale += 1;
        }
    }
    assert!(stale <= 8, "at most the bound is kept: {stale}");
    set(Loader::Counts);
}

async fn jitter_keeps_the_window(clock: &TestClock) {
    set(Loader::Counts);
    let value = kept_jittered(1).await.expect("loaded");
    // Within the ttl whatever the jitter took off: a hit.
    clock.advance(Duration::from_secs(47));
    let before = loads();
    assert_eq!(kept_jittered(1).await, Ok(value));
    assert_eq!(loads(), before);
    clock.advance(Duration::from_secs(14));
    set(Loader::Fails);
    assert_eq!(
        kept_jittered(1).await,
        Ok(value),
        "stale after the jittered ttl"
    );
    set(Loader::Counts);
}

async fn nothing_from_a_failing_loader_reaches_the_followers(clock: &TestClock) {
    set(Loader::Counts);
    kept_listing(1).await.expect("loaded");
    clock.advance(TTL + Duration::from_secs(1));
    set(Loader::WaitsThenFails);
    let before = (loads(), site_stats("::kept_listing"));
    let leader = tokio::spawn(kept_listing(1));
    until_loads(before.0 + 1).await;
    let followers: Vec<_> = (0..3).map(|_| tokio::spawn(kept_listing(1))).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    release();
    assert_eq!(leader.await.expect("no panic"), None);
    for follower in followers {
        let answered = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("not hung");
        assert_eq!(
            answered.expect("no panic"),
            None,
            "the source says it is gone"
        );
    }
    assert_eq!(loads(), before.0 + 1, "one load answered them all");
    let after = site_stats("::kept_listing");
    assert_eq!(after.stale, before.1.stale, "nothing stale");
    assert_eq!(after.misses, before.1.misses + 4, "four misses, once each");
    set(Loader::Counts);
}
