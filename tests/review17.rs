//! Review of issue 17 (a hit answered before the full path's future is built, keys compared as
//! arrays): repros against the early hit path, on a multi-thread runtime, with counted loads; a
//! real redis-server for the tiered scenarios.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cachette::{
    cache_put, cached, configure, invalidate, stats, KeyBuilder, MemoryBackend, RedisBackend,
    TestClock, TieredBackend,
};
use support::redis_server::{OnExit, RedisServer};
use tokio::sync::{Mutex, Notify};

struct Fixture {
    server: RedisServer,
    tiered: TieredBackend,
    peer: TieredBackend,
}

fn clock() -> &'static TestClock {
    static CLOCK: OnceLock<TestClock> = OnceLock::new();
    CLOCK.get_or_init(TestClock::new)
}

/// One server and one configuration for the binary: `memory` (the default), `clocked` (a memory
/// backend on a test clock), `tiered` and `tiered.peer` (two instances on one Redis and prefix,
/// each with its own L1 and bus: another process's stand-in).
fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = RedisServer::start();
        let tiered_over = |server: &RedisServer| {
            let l2 = RedisBackend::builder()
                .url(server.url())
                .prefix("r17")
                .op_timeout(Duration::from_millis(200))
                .build()
                .expect("valid configuration");
            TieredBackend::builder(l2)
                .heartbeat(Duration::from_millis(100))
                .build()
        };
        let tiered = tiered_over(&server);
        let peer = tiered_over(&server);
        configure()
            .memory(
                "memory.clocked",
                MemoryBackend::builder().clock(clock()).build(),
            )
            .tiered("tiered", tiered.clone())
            .tiered("tiered.peer", peer.clone())
            .install()
            .expect("configured once");
        Mutex::new(Fixture {
            server,
            tiered,
            peer,
        })
    })
}

fn site(function: &str) -> cachette::SiteStats {
    stats()
        .site(function)
        .cloned()
        .unwrap_or_else(|| panic!("no stats for {function}"))
}

/// Waits, bounded, for a condition that has no notification of its own.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Memory: counting under contention.

static HOT_LOADS: AtomicUsize = AtomicUsize::new(0);
static HOT_GATE: Notify = Notify::const_new();

#[cached(ttl = "60s", key = "hot:<id>")]
async fn hot(id: u64) -> Arc<String> {
    HOT_LOADS.fetch_add(1, Ordering::SeqCst);
    HOT_GATE.notified().await;
    Arc::new(format!("hot {id}"))
}

/// 64 tasks on a cold key, then 64 x 500 hits: one load; every call counted once (hits +
/// misses = calls, misses = loads + coalesced), no hit counted twice by the early probe and the
/// full path.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_on_one_key_load_once_and_count_each_call_once() {
    fixture();
    let callers: Vec<_> = (0..64).map(|_| tokio::spawn(hot(1))).collect();
    eventually("the leader's load", || {
        HOT_LOADS.load(Ordering::SeqCst) == 1
    })
    .await;
    // Let the others reach the flight (or the early probe), then release the leader.
    tokio::time::sleep(Duration::from_millis(50)).await;
    HOT_GATE.notify_one();
    for caller in callers {
        assert_eq!(caller.await.expect("completes").as_str(), "hot 1");
    }
    let hitters: Vec<_> = (0..64)
        .map(|_| {
            tokio::spawn(async {
                for _ in 0..500 {
                    assert_eq!(hot(1).await.as_str(), "hot 1");
                }
            })
        })
        .collect();
    for hitter in hitters {
        hitter.await.expect("completes");
    }
    assert_eq!(HOT_LOADS.load(Ordering::SeqCst), 1);
    let counted = site("review17::hot");
    assert_eq!(counted.loads, 1);
    assert_eq!(counted.hits + counted.misses, 64 + 64 * 500, "{counted:?}");
    assert_eq!(
        counted.misses,
        counted.loads + counted.coalesced,
        "{counted:?}"
    );
    assert_eq!(counted.errors + counted.bypasses + counted.stale, 0);
}

// ---------------------------------------------------------------------------------------------
// Memory: expiry on a test clock, `None` and `Err` not cached, panics and cancellation.

static TIMED_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "10s", key = "timed:<id>", backend = "memory.clocked")]
async fn timed(id: u64) -> u64 {
    TIMED_LOADS.fetch_add(1, Ordering::SeqCst);
    id * 10 + TIMED_LOADS.load(Ordering::SeqCst) as u64
}

#[cached(ttl = "10s", key = "timed.sync:<id>", backend = "memory.clocked")]
fn timed_sync(id: u64) -> u64 {
    TIMED_LOADS.fetch_add(1, Ordering::SeqCst);
    id * 10 + TIMED_LOADS.load(Ordering::SeqCst) as u64
}

/// An entry past its ttl is a miss for the early probe (async and sync): reloaded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_entry_is_reloaded_not_served_early() {
    fixture();
    let first = timed(1).await;
    let first_sync = tokio::task::spawn_blocking(|| timed_sync(1))
        .await
        .expect("runs");
    assert_eq!(TIMED_LOADS.load(Ordering::SeqCst), 2);
    assert_eq!(timed(1).await, first);
    assert_eq!(
        tokio::task::spawn_blocking(|| timed_sync(1)).await.unwrap(),
        first_sync
    );
    clock().advance(Duration::from_secs(11));
    let callers: Vec<_> = (0..16).map(|_| tokio::spawn(timed(1))).collect();
    let mut seen = Vec::new();
    for caller in callers {
        seen.push(caller.await.expect("completes"));
    }
    let sync = tokio::task::spawn_blocking(|| timed_sync(1)).await.unwrap();
    assert!(seen.iter().all(|value| *value != first), "{seen:?}");
    assert_ne!(sync, first_sync);
    assert_eq!(TIMED_LOADS.load(Ordering::SeqCst), 4, "one reload each");
}

static MAYBE_LOADS: AtomicUsize = AtomicUsize::new(0);
static MAYBE_PRESENT: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = "60s", key = "maybe:<id>")]
async fn maybe(id: u64) -> Option<u64> {
    MAYBE_LOADS.fetch_add(1, Ordering::SeqCst);
    (MAYBE_PRESENT.load(Ordering::SeqCst) == 1).then_some(id)
}

#[cached(ttl = "60s", key = "fallible:<id>")]
async fn fallible(id: u64) -> Result<u64, String> {
    MAYBE_LOADS.fetch_add(1, Ordering::SeqCst);
    match MAYBE_PRESENT.load(Ordering::SeqCst) {
        1 => Ok(id),
        _ => Err("down".to_owned()),
    }
}

/// `None` and `Err` are not cached: every call loads until a value comes, then hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn none_and_err_are_not_served_by_the_early_probe() {
    fixture();
    for round in 1..=3 {
        assert_eq!(maybe(7).await, None);
        assert_eq!(fallible(7).await, Err("down".to_owned()));
        assert_eq!(MAYBE_LOADS.load(Ordering::SeqCst), 2 * round);
    }
    MAYBE_PRESENT.store(1, Ordering::SeqCst);
    assert_eq!(maybe(7).await, Some(7));
    assert_eq!(fallible(7).await, Ok(7));
    MAYBE_PRESENT.store(0, Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(maybe(7).await, Some(7));
        assert_eq!(fallible(7).await, Ok(7));
    }
    assert_eq!(MAYBE_LOADS.load(Ordering::SeqCst), 8);
}

static FRAGILE_LOADS: AtomicUsize = AtomicUsize::new(0);
static FRAGILE_GATE: Notify = Notify::const_new();

#[cached(ttl = "60s", key = "fragile:<id>")]
async fn fragile(id: u64) -> u64 {
    let load = FRAGILE_LOADS.fetch_add(1, Ordering::SeqCst);
    match load {
        0 => panic!("the first load panics"),
        1 => {
            // The second load waits forever: its caller gives up.
            FRAGILE_GATE.notified().await;
            unreachable!("never released")
        }
        _ => id,
    }
}

/// After an early miss, a panicking load and a cancelled one each leave the key to the next
/// caller, which loads and stores; nothing is stuck and nothing wrong is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_or_a_cancellation_after_an_early_miss_leaves_the_key_usable() {
    fixture();
    let panicked = tokio::spawn(fragile(3)).await;
    assert!(panicked.expect_err("panics").is_panic());
    let cancelled = tokio::time::timeout(Duration::from_millis(50), fragile(3)).await;
    assert!(cancelled.is_err(), "the caller gave up");
    let callers: Vec<_> = (0..16).map(|_| tokio::spawn(fragile(3))).collect();
    for caller in callers {
        assert_eq!(caller.await.expect("completes"), 3);
    }
    assert_eq!(FRAGILE_LOADS.load(Ordering::SeqCst), 3);
    let counted = site("review17::fragile");
    assert_eq!(counted.load_failures, 2, "{counted:?}");
}

// ---------------------------------------------------------------------------------------------
// Memory: two sites' templates making one key with different types.

static SHARED_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "shared:<id>")]
async fn shared_as_number(id: u64) -> u64 {
    SHARED_LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

#[cached(ttl = "60s", key = "shared:<id>")]
async fn shared_as_text(id: u64) -> String {
    SHARED_LOADS.fetch_add(1, Ordering::SeqCst);
    format!("#{id}")
}

/// Each site gets its own type back, whichever stored last: a mismatch is a miss, never a value
/// of the other type; and a hit after the site's own fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_type_mismatch_is_a_miss_for_the_early_probe() {
    fixture();
    for round in 0..5 {
        assert_eq!(shared_as_number(5).await, 5);
        assert_eq!(shared_as_number(5).await, 5, "a hit on its own fill");
        assert_eq!(shared_as_text(5).await, "#5");
        assert_eq!(shared_as_text(5).await, "#5");
        assert_eq!(SHARED_LOADS.load(Ordering::SeqCst), 2 * (round + 1));
    }
}

// ---------------------------------------------------------------------------------------------
// Keys: equality across inline and heap, at the 16- and 46-byte boundaries, NULs.

static TEXT_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "t:<text>")]
async fn by_text(text: String) -> usize {
    TEXT_LOADS.fetch_add(1, Ordering::SeqCst);
    text.len()
}

/// For texts making keys of 14..=18 and 44..=49 bytes (the vector compare's 16 and the inline
/// 46 either side), a key built by hand in other pieces (one character at a time) invalidates
/// the macro's entry, and a key one NUL longer, or one byte shorter, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hand_built_keys_name_the_entry_at_every_boundary() {
    fixture();
    // "t:<" + text + ">" is text.len() + 4 bytes.
    for key_len in (14..=18).chain(44..=49) {
        let text: String = (0..key_len - 4)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let loads = TEXT_LOADS.load(Ordering::SeqCst);
        assert_eq!(by_text(text.clone()).await, text.len());
        assert_eq!(by_text(text.clone()).await, text.len());
        assert_eq!(
            TEXT_LOADS.load(Ordering::SeqCst),
            loads + 1,
            "{key_len}: a hit"
        );
        // Near misses: a NUL after the text (zeros are the inline padding), one byte short.
        let with_nul = KeyBuilder::new().lit("t:").arg(&text).lit("\0").finish();
        let shorter = KeyBuilder::new().lit("t:").arg(&text[1..]).finish();
        assert_eq!(with_nul.as_str().len(), key_len + 1);
        invalidate(&with_nul).await;
        invalidate(&shorter).await;
        assert_eq!(by_text(text.clone()).await, text.len());
        assert_eq!(
            TEXT_LOADS.load(Ordering::SeqCst),
            loads + 1,
            "{key_len}: another key's invalidation removed the entry"
        );
        // The same text, built a character at a time (inline, then spilled, at its own points).
        let mut by_hand = KeyBuilder::new();
        for ch in "t:".chars() {
            by_hand = by_hand.lit(ch.encode_utf8(&mut [0; 4]));
        }
        let by_hand = by_hand.arg(&text.as_str()).finish();
        assert_eq!(by_hand.as_str().len(), key_len);
        invalidate(&by_hand).await;
        assert_eq!(by_text(text.clone()).await, text.len());
        assert_eq!(
            TEXT_LOADS.load(Ordering::SeqCst),
            loads + 2,
            "{key_len}: the hand-built key did not reach the entry"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tiered: the early L1 hit and the bus.

static ITEM_LOADS: AtomicUsize = AtomicUsize::new(0);
static ITEM_VERSION: AtomicUsize = AtomicUsize::new(1);

#[cached(ttl = "60s", key = "item:<id>", backend = "tiered")]
async fn item(id: u64) -> String {
    ITEM_LOADS.fetch_add(1, Ordering::SeqCst);
    format!("item {id} v{}", ITEM_VERSION.load(Ordering::SeqCst))
}

#[cache_put(ttl = "60s", key = "item:<id>", backend = "tiered.peer")]
async fn put_item_on_peer(id: u64, version: usize) -> String {
    format!("item {id} v{version}")
}

#[cached(ttl = "60s", key = "item:<id>", backend = "tiered.peer")]
async fn item_on_peer(id: u64) -> String {
    ITEM_LOADS.fetch_add(1, Ordering::SeqCst);
    format!("item {id} v{}", ITEM_VERSION.load(Ordering::SeqCst))
}

/// A warm L1 copy, served by the early probe, is dropped when the peer's write-through is
/// announced; while the bus is down (Redis frozen) the early probe serves nothing from L1; after
/// a lost subscription, a write the process missed is not served from its old L1 copy.
async fn the_early_l1_hit_follows_the_bus(fixture: &mut Fixture) {
    item(1).await;
    fixture.tiered.l1_ready().await;
    item_on_peer(1).await;
    fixture.peer.l1_ready().await;
    assert_eq!(item(1).await, "item 1 v1"); // fills L1
    let loads = ITEM_LOADS.load(Ordering::SeqCst);
    let hits = site("review17::item").l1_hits;
    for _ in 0..100 {
        assert_eq!(item(1).await, "item 1 v1");
    }
    assert!(site("review17::item").l1_hits >= hits + 100);
    assert_eq!(ITEM_LOADS.load(Ordering::SeqCst), loads);

    // Another process writes through: its announcement drops this process's copy.
    let received = fixture.tiered.invalidations_received();
    put_item_on_peer(1, 2).await;
    let tiered = fixture.tiered.clone();
    eventually("the announcement", move || {
        tiered.invalidations_received() > received
    })
    .await;
    assert_eq!(item(1).await, "item 1 v2", "served the old L1 copy");

    // Redis frozen: once the bus is known down, L1 serves nothing; the call runs uncached.
    assert_eq!(item(1).await, "item 1 v2");
    let flushes = fixture.tiered.l1_flushes();
    fixture.server.pause();
    let tiered = fixture.tiered.clone();
    eventually("the bus to go down", move || tiered.l1_flushes() > flushes).await;
    ITEM_VERSION.store(3, Ordering::SeqCst);
    let loads = ITEM_LOADS.load(Ordering::SeqCst);
    assert_eq!(item(1).await, "item 1 v3", "served L1 with the bus down");
    assert_eq!(ITEM_LOADS.load(Ordering::SeqCst), loads + 1);
    fixture.server.resume();
    fixture.tiered.l1_ready().await;
    fixture.peer.l1_ready().await;

    // A subscription lost while the peer writes: the old copy is in a dead epoch.
    assert_eq!(item(1).await, "item 1 v2", "L2 still holds v2");
    assert_eq!(item(1).await, "item 1 v2");
    let flushes = fixture.tiered.l1_flushes();
    let mut raw = fixture.server.connection().await;
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw)
        .await
        .expect("client kill");
    put_item_on_peer(1, 4).await;
    let tiered = fixture.tiered.clone();
    eventually("the lost subscription", move || {
        tiered.l1_flushes() > flushes
    })
    .await;
    fixture.tiered.l1_ready().await;
    assert_eq!(
        item(1).await,
        "item 1 v4",
        "served a copy from before the lost bus"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiered_scenarios() {
    let _stop = OnExit(|| {
        if let Ok(mut fixture) = fixture().try_lock() {
            fixture.server.kill();
        }
    });
    let mut fixture = fixture().lock().await;
    the_early_l1_hit_follows_the_bus(&mut fixture).await;
}

// ---------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------
// `Send`: a non-`Send` return type.

type BoxError = Box<dyn std::error::Error>;

#[cached(ttl = "60s", key = "nsm:<id>", backend = "memory")]
async fn non_send_memory(id: u64) -> Result<u64, BoxError> {
    Ok(id)
}

#[cached(ttl = "60s", key = "nst:<id>", backend = "memory", tags("nst"))]
async fn non_send_tagged(id: u64) -> Result<u64, BoxError> {
    Ok(id)
}

/// ARCHITECTURE.md said a non-`Send` `R` (`Result<V, Box<dyn Error>>`) does not make the
/// caller's future lose `Send`; a memory site's did (a follower's `Next<R>` was held across the
/// uncached load it awaited), so it could not be spawned nor serve an axum handler, though the
/// function itself holds no `R` across an await. Checked at compile time.
#[test]
fn a_non_send_result_keeps_a_memory_sites_future_send() {
    fn is_send<T: Send>(_: T) {}
    is_send(non_send_memory(4));
    is_send(non_send_tagged(4));
}
