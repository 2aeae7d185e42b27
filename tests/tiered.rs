//! `#[cached(backend = "tiered")]` against a real redis-server: warm hits without Redis, L1
//! bounded by L2's remaining TTL, the fence race through L1, bus loss and a Redis restart.
//! Cross-process consistency is `tests/tiered_consistency.rs`.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cachette::{cached, configure, RedisBackend, TestClock, TieredBackend};
use support::redis_server::{OnExit, RedisServer};
use tokio::sync::Mutex;

struct Fixture {
    server: RedisServer,
    /// The backend named `tiered`.
    tiered: TieredBackend,
    /// `tiered.peer`: a second instance on the same Redis and prefix, with its own L1 and bus
    /// subscription, standing in for another process where one process suffices.
    peer: TieredBackend,
}

/// One server and one configuration for this binary; the scenarios run in one test on one
/// runtime, since a backend's connections live on the runtime that first used them.
fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = RedisServer::start();
        let tiered_over = |server: &RedisServer| {
            let l2 = RedisBackend::builder()
                .url(server.url())
                .prefix("tt")
                .op_timeout(Duration::from_millis(200))
                .clock(clock())
                .build()
                .expect("valid configuration");
            TieredBackend::builder(l2)
                .heartbeat(Duration::from_millis(100))
                .build()
        };
        let tiered = tiered_over(&server);
        let peer = tiered_over(&server);
        configure()
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

/// The clock both instances run on, which the TTL scenario advances instead of sleeping.
fn clock() -> &'static TestClock {
    static CLOCK: OnceLock<TestClock> = OnceLock::new();
    CLOCK.get_or_init(TestClock::new)
}

/// Calls per command since the last `CONFIG RESETSTAT`.
async fn command_calls(server: &RedisServer) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut server.connection().await)
        .await
        .expect("info");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.strip_prefix("calls=")?.split(',').next()?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Waits, bounded, for a condition that has no notification of its own (a counter in another
/// task that moves when a socket closes).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

static ITEM_LOADS: AtomicUsize = AtomicUsize::new(0);
static ITEM_SOURCE: AtomicUsize = AtomicUsize::new(1);

#[cached(ttl = "60s", key = "item:<id>", backend = "tiered")]
async fn item(id: u64) -> String {
    ITEM_LOADS.fetch_add(1, Ordering::SeqCst);
    format!("item {id} v{}", ITEM_SOURCE.load(Ordering::SeqCst))
}

#[cached(ttl = "60s", key = "item:<id>", backend = "tiered.peer")]
async fn item_on_peer(id: u64) -> String {
    ITEM_LOADS.fetch_add(1, Ordering::SeqCst);
    format!("item {id} v{}", ITEM_SOURCE.load(Ordering::SeqCst))
}

async fn a_warm_hit_makes_no_redis_round_trip() {
    let fixture = fixture().lock().await;
    item(1).await;
    fixture.tiered.l1_ready().await;
    let first = item(1).await; // fills L1 now that the bus is up
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut fixture.server.connection().await)
        .await
        .expect("resetstat");
    let loads = ITEM_LOADS.load(Ordering::SeqCst);
    let flushes = fixture.tiered.l1_flushes();
    for _ in 0..1000 {
        assert_eq!(item(1).await, first);
    }
    assert_eq!(ITEM_LOADS.load(Ordering::SeqCst), loads);
    assert_eq!(fixture.tiered.l1_flushes(), flushes, "the bus stayed up");
    let calls = command_calls(&fixture.server).await;
    // The bus heartbeat pings; the stats query itself is `info`/`config`. Nothing else ran.
    let data: Vec<_> = calls
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "ping" | "info" | "config|resetstat"))
        .collect();
    assert!(
        data.is_empty(),
        "1000 warm hits sent data commands: {data:?}"
    );
}

static SHORT_LOADS: AtomicUsize = AtomicUsize::new(0);

// Long enough that Redis's own expiry (on real time) does not come into play.
#[cached(ttl = "60s", key = "short:<id>", backend = "tiered")]
async fn short(id: u64) -> u64 {
    SHORT_LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

#[cached(ttl = "60s", key = "short:<id>", backend = "tiered.peer")]
async fn short_on_peer(id: u64) -> u64 {
    SHORT_LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

async fn an_l2_hit_fills_l1_for_no_longer_than_l2_keeps_the_entry() {
    let fixture = fixture().lock().await;
    item_on_peer(0).await;
    fixture.peer.l1_ready().await;
    short(1).await; // loads, fills L2 for 60 s
    assert_eq!(SHORT_LOADS.load(Ordering::SeqCst), 1);
    // Age the L2 entry, then read it through the peer: an L2 hit with 20 s left.
    clock().advance(Duration::from_secs(40));
    short_on_peer(1).await;
    short_on_peer(1).await;
    assert_eq!(SHORT_LOADS.load(Ordering::SeqCst), 1, "L2 hit, then L1 hit");
    // Past the L2 entry's end, but well inside the function's 60 s ttl counted from the L1
    // fill.
    clock().advance(Duration::from_secs(21));
    short_on_peer(1).await;
    assert_eq!(
        SHORT_LOADS.load(Ordering::SeqCst),
        2,
        "the L1 entry expired with its L2 entry"
    );
}

fence_race!("tiered");

async fn a_slow_loader_cannot_store_old_data_in_l1_or_l2() {
    let fixture = fixture().lock().await;
    item(0).await;
    fixture.tiered.l1_ready().await;
    a_slow_loader_cannot_store_old_data().await;
}

async fn a_lost_bus_drops_l1_so_a_missed_invalidation_serves_nothing_stale() {
    let fixture = fixture().lock().await;
    item_on_peer(0).await;
    fixture.peer.l1_ready().await;
    let old = item_on_peer(20).await;
    assert_eq!(item_on_peer(20).await, old, "held in the peer's L1");
    let flushes = (fixture.tiered.l1_flushes(), fixture.peer.l1_flushes());

    let mut raw = fixture.server.connection().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw)
        .await
        .expect("client kill");
    assert_eq!(killed, 2, "one subscriber per tiered backend");
    // The source changes and the L2 entry goes, but no message reaches anyone: a lost
    // invalidation, as a writer would cause while the subscribers were away.
    ITEM_SOURCE.fetch_add(1, Ordering::SeqCst);
    let _: i64 = redis::cmd("DEL")
        .arg("tt:1:{item:<20>}:v")
        .query_async(&mut raw)
        .await
        .expect("del");

    eventually("both backends to drop their L1", || {
        fixture.tiered.l1_flushes() > flushes.0 && fixture.peer.l1_flushes() > flushes.1
    })
    .await;
    fixture.peer.l1_ready().await;
    let now = item_on_peer(20).await;
    assert_ne!(now, old, "the peer's L1 entry from before the loss is gone");
    assert_eq!(item_on_peer(20).await, now);
}

async fn a_redis_restart_keeps_calls_working_and_leaves_nothing_stale() {
    let mut fixture = fixture().lock().await;
    item(0).await;
    fixture.tiered.l1_ready().await;
    let old = item(30).await;
    assert_eq!(item(30).await, old);
    let flushes = fixture.tiered.l1_flushes();

    fixture.server.kill();
    // While Redis is gone the source changes; no invalidation can reach anyone.
    ITEM_SOURCE.fetch_add(1, Ordering::SeqCst);
    let started = Instant::now();
    for _ in 0..100 {
        assert!(item(30).await.starts_with("item 30"), "every call succeeds");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the breaker keeps a dead redis cheap: {:?}",
        started.elapsed()
    );
    // The subscriber notices the closed connection on its own task, perhaps after the calls
    // above (which L1 may have served until then).
    eventually("the dead bus to drop L1", || {
        fixture.tiered.l1_flushes() > flushes
    })
    .await;
    assert!(
        item(30).await.starts_with("item 30"),
        "calls succeed without L1"
    );
    fixture.server.restart();
    tokio::time::timeout(Duration::from_secs(10), fixture.tiered.l1_ready())
        .await
        .expect("the bus resubscribed by itself");
    let fresh = item(30).await;
    assert_ne!(fresh, old, "nothing from before the outage is served");
    // Hits resume by themselves: L1 again, no loader call.
    let loads = ITEM_LOADS.load(Ordering::SeqCst);
    assert_eq!(item(30).await, fresh);
    assert_eq!(item(30).await, fresh);
    assert_eq!(ITEM_LOADS.load(Ordering::SeqCst), loads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiered_backend_scenarios() {
    let _stop = OnExit(|| {
        if let Ok(mut fixture) = fixture().try_lock() {
            fixture.server.kill();
        }
    });
    a_warm_hit_makes_no_redis_round_trip().await;
    an_l2_hit_fills_l1_for_no_longer_than_l2_keeps_the_entry().await;
    a_slow_loader_cannot_store_old_data_in_l1_or_l2().await;
    a_lost_bus_drops_l1_so_a_missed_invalidation_serves_nothing_stale().await;
    a_redis_restart_keeps_calls_working_and_leaves_nothing_stale().await;
}
