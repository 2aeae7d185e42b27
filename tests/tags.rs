//! Tags (issue 14) on the memory, redis and tiered backends against a real redis-server: a tag
//! invalidation turns every entry carrying the tag into a miss, at once and whatever their
//! number; a load held across a tag invalidation stores nothing that is served; random
//! interleavings of fills, tag invalidations and reads never serve an entry after its tag's
//! invalidation returned; a tagged redis hit is one round trip and a warm tiered hit none; a
//! tag invalidation reaches a second tiered instance's L1 (in one process, as every backend is
//! invalidated; across real processes, over the bus, in `tests/tags_processes.rs`), and one that
//! did not reach Redis leaves nothing stale behind.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, KeyBuilder, RedisBackend, TieredBackend};
use support::redis_server::{OnExit, RedisServer};
use tokio::sync::{Mutex, Notify};

struct Fixture {
    server: RedisServer,
    tiered: TieredBackend,
    peer: TieredBackend,
}

/// One server and one configuration for this binary, the scenarios on one runtime (a backend's
/// connections live on the runtime that first used them).
fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = RedisServer::start();
        let redis_on = |prefix: &str| {
            RedisBackend::builder()
                .url(server.url())
                .prefix(prefix)
                .op_timeout(Duration::from_millis(200))
                .build()
                .expect("valid configuration")
        };
        let tiered_on = |prefix: &str| {
            TieredBackend::builder(redis_on(prefix))
                .heartbeat(Duration::from_millis(100))
                .build()
        };
        let (tiered, peer) = (tiered_on("tgt"), tiered_on("tgt"));
        configure()
            .redis("redis", redis_on("tg"))
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

/// Each category's version at the source; a load returns the version it read.
static SOURCE: [AtomicU64; 4] = [const { AtomicU64::new(1) }; 4];
static LOADS: AtomicUsize = AtomicUsize::new(0);

fn loads() -> usize {
    LOADS.load(Ordering::SeqCst)
}

/// What a list page's load reads: its category's version, after yielding `hold` times so that
/// concurrent loads cross invalidations.
async fn load_page(category: u64, hold: u32) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    let version = SOURCE[category as usize].load(Ordering::SeqCst);
    for _ in 0..hold {
        tokio::task::yield_now().await;
    }
    version
}

// One site per backend; `hold` is not part of the key.
#[cached(
    ttl = "60s",
    key = "list:<page>:<category>",
    tags("products", "category:<category>")
)]
async fn list_memory(page: u32, category: u64, hold: u32) -> u64 {
    let _ = page;
    load_page(category, hold).await
}

#[cached(
    ttl = "60s",
    key = "list:<page>:<category>",
    backend = "redis",
    tags("products", "category:<category>")
)]
async fn list_redis(page: u32, category: u64, hold: u32) -> u64 {
    let _ = page;
    load_page(category, hold).await
}

#[cached(
    ttl = "60s",
    key = "list:<page>:<category>",
    backend = "tiered",
    tags("products", "category:<category>")
)]
async fn list_tiered(page: u32, category: u64, hold: u32) -> u64 {
    let _ = page;
    load_page(category, hold).await
}

#[cached(
    ttl = "60s",
    key = "list:<page>:<category>",
    backend = "tiered.peer",
    tags("products", "category:<category>")
)]
async fn list_peer(page: u32, category: u64, hold: u32) -> u64 {
    let _ = page;
    load_page(category, hold).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Memory,
    Redis,
    Tiered,
}

async fn list(kind: Kind, page: u32, category: u64, hold: u32) -> u64 {
    match kind {
        Kind::Memory => list_memory(page, category, hold).await,
        Kind::Redis => list_redis(page, category, hold).await,
        Kind::Tiered => list_tiered(page, category, hold).await,
    }
}

/// A product update: the source changes, then its category's pages are invalidated (every
/// backend).
#[invalidates(tags("category:<category>"))]
async fn update_category(category: u64) {
    SOURCE[category as usize].fetch_add(1, Ordering::SeqCst);
}

/// Every list, whatever its category.
#[invalidates(tags("products"))]
async fn update_all() {
    for version in &SOURCE {
        version.fetch_add(1, Ordering::SeqCst);
    }
}

const KINDS: [Kind; 3] = [Kind::Memory, Kind::Redis, Kind::Tiered];

async fn a_tag_invalidation_reaches_every_entry_of_the_tag_and_no_other() {
    let fixture = fixture().lock().await;
    list_tiered(0, 0, 0).await;
    fixture.tiered.l1_ready().await;
    for kind in KINDS {
        for page in 0..20 {
            list(kind, page, 1, 0).await;
            list(kind, page, 2, 0).await;
        }
        let before = loads();
        for page in 0..20 {
            assert_eq!(
                list(kind, page, 1, 0).await,
                SOURCE[1].load(Ordering::SeqCst)
            );
        }
        assert_eq!(loads(), before, "{kind:?}: warm");
    }
    update_category(1).await;
    for kind in KINDS {
        let before = loads();
        for page in 0..20 {
            assert_eq!(
                list(kind, page, 1, 0).await,
                SOURCE[1].load(Ordering::SeqCst),
                "{kind:?}: category 1 reloaded"
            );
            list(kind, page, 2, 0).await;
        }
        assert_eq!(
            loads(),
            before + 20,
            "{kind:?}: only category 1's pages reloaded"
        );
    }
    update_all().await;
    for kind in KINDS {
        let before = loads();
        for page in 0..20 {
            assert_eq!(
                list(kind, page, 2, 0).await,
                SOURCE[2].load(Ordering::SeqCst)
            );
        }
        assert_eq!(loads(), before + 20, "{kind:?}: every entry of `products`");
    }
    // And through the function, for event handlers.
    for kind in KINDS {
        list(kind, 0, 3, 0).await;
    }
    let tag = KeyBuilder::new().lit("category:").arg(&3u64).finish();
    let version = SOURCE[3].fetch_add(1, Ordering::SeqCst) + 1;
    cachette::invalidate_tag(&tag).await;
    for kind in KINDS {
        assert_eq!(list(kind, 0, 3, 0).await, version, "{kind:?}");
    }
}

static HELD_LOADS: AtomicUsize = AtomicUsize::new(0);
static HELD_SOURCE: AtomicU64 = AtomicU64::new(1);
static LOADER_READ: Notify = Notify::const_new();
static LOADER_GO: Notify = Notify::const_new();

/// A loader that reads its source, then, the first time, waits at a barrier.
async fn held_load() -> u64 {
    let version = HELD_SOURCE.load(Ordering::SeqCst);
    if HELD_LOADS.fetch_add(1, Ordering::SeqCst) == 0 {
        LOADER_READ.notify_one();
        LOADER_GO.notified().await;
    }
    version
}

#[cached(ttl = "60s", key = "held:<id>", tags("held"))]
async fn held_memory(id: u64) -> u64 {
    let _ = id;
    held_load().await
}

#[cached(ttl = "60s", key = "held:<id>", backend = "redis", tags("held"))]
async fn held_redis(id: u64) -> u64 {
    let _ = id;
    held_load().await
}

#[cached(ttl = "60s", key = "held:<id>", backend = "tiered", tags("held"))]
async fn held_tiered(id: u64) -> u64 {
    let _ = id;
    held_load().await
}

async fn held(kind: Kind, id: u64) -> u64 {
    match kind {
        Kind::Memory => held_memory(id).await,
        Kind::Redis => held_redis(id).await,
        Kind::Tiered => held_tiered(id).await,
    }
}

#[invalidates(tags("held"))]
async fn change_held(version: u64) {
    HELD_SOURCE.store(version, Ordering::SeqCst);
}

/// The stale-fill race for tags: a load that read its source before a tag invalidation is held
/// until the invalidation returned; what it stores must never be served.
async fn a_load_held_across_a_tag_invalidation_stores_nothing_fresh() {
    let _fixture = fixture().lock().await;
    for (round, kind) in KINDS.into_iter().enumerate() {
        let id = round as u64;
        HELD_LOADS.store(0, Ordering::SeqCst);
        let old = HELD_SOURCE.load(Ordering::SeqCst);
        let slow = tokio::spawn(held(kind, id));
        LOADER_READ.notified().await;
        change_held(old + 1).await;
        LOADER_GO.notify_one();
        assert_eq!(
            slow.await.expect("completes"),
            old,
            "{kind:?}: the caller gets its load"
        );
        assert_eq!(
            held(kind, id).await,
            old + 1,
            "{kind:?}: the old value is not served"
        );
        assert_eq!(held(kind, id).await, old + 1);
        assert_eq!(
            HELD_LOADS.load(Ordering::SeqCst),
            2,
            "{kind:?}: the fresh value is stored"
        );
    }
}

/// Random interleavings of fills, reads and tag invalidations, concurrent, on every backend:
/// a read that begins after a tag invalidation returned never sees a version older than the
/// one that invalidation published. The seed is printed; `CACHETTE_TAGS_SEED` replays it.
async fn random_interleavings_never_serve_an_invalidated_tag() {
    let _fixture = fixture().lock().await;
    let seed = std::env::var("CACHETTE_TAGS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("random interleavings: seed {seed}");
    /// The newest version whose invalidation has returned, per category.
    static ACKED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
    for (category, acked) in ACKED.iter().enumerate() {
        acked.store(SOURCE[category].load(Ordering::SeqCst), Ordering::SeqCst);
    }
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(task));
            let (mut reads, mut stale) = (0usize, Vec::new());
            for _ in 0..300 {
                let category = rng.u64(0..4);
                match rng.u32(0..10) {
                    0 => {
                        // The update bumps the source before it invalidates, so once it
                        // returns, a read must see at least one past what the source held.
                        let before: Vec<u64> =
                            SOURCE.iter().map(|v| v.load(Ordering::SeqCst)).collect();
                        let touched = if rng.bool() {
                            update_all().await;
                            None
                        } else {
                            update_category(category).await;
                            Some(category as usize)
                        };
                        for (c, acked) in ACKED.iter().enumerate() {
                            if touched.is_none_or(|t| t == c) {
                                acked.fetch_max(before[c] + 1, Ordering::SeqCst);
                            }
                        }
                    }
                    _ => {
                        let kind = KINDS[rng.usize(0..3)];
                        let floor = ACKED[category as usize].load(Ordering::SeqCst);
                        let got = list(kind, rng.u32(0..3), category, rng.u32(0..3)).await;
                        reads += 1;
                        if got < floor {
                            stale.push((kind, category, got, floor));
                        }
                    }
                }
            }
            (reads, stale)
        }));
    }
    let mut reads = 0;
    for task in tasks {
        let (task_reads, stale) = task.await.expect("no panic");
        reads += task_reads;
        assert!(stale.is_empty(), "seed {seed}: stale reads {stale:?}");
    }
    assert!(reads > 1_000, "{reads} reads");
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
        .filter(|(name, _)| !matches!(name.as_str(), "ping" | "info" | "config|resetstat"))
        .collect()
}

async fn reset_stats(server: &RedisServer) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut server.connection().await)
        .await
        .expect("resetstat");
}

/// A tagged redis hit is one pipelined round trip of `GET`s (the value's and each tag's); a
/// warm tiered hit sends nothing.
async fn tagged_hits_cost_one_round_trip_on_redis_and_none_on_tiered() {
    let fixture = fixture().lock().await;
    let version = list_redis(7, 0, 0).await;
    list_tiered(7, 0, 0).await;
    fixture.tiered.l1_ready().await;
    list_tiered(7, 0, 0).await;
    reset_stats(&fixture.server).await;
    let before = loads();
    for _ in 0..100 {
        assert_eq!(list_redis(7, 0, 0).await, version);
    }
    assert_eq!(loads(), before);
    let calls = command_calls(&fixture.server).await;
    assert_eq!(
        calls,
        BTreeMap::from([("get".to_owned(), 300)]),
        "100 hits: the value and two tags each"
    );
    reset_stats(&fixture.server).await;
    for _ in 0..100 {
        list_tiered(7, 0, 0).await;
    }
    assert_eq!(loads(), before);
    let calls = command_calls(&fixture.server).await;
    assert!(calls.is_empty(), "warm tiered hits sent {calls:?}");
}

/// Waits, bounded, for something that has no notification of its own (a bus message).
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A tag invalidated through `invalidate_tag` reaches a second tiered instance's warm L1
/// entries of the tag. In one process `invalidate_tag` reaches every configured backend, the
/// peer's too, so this does not isolate the bus: `tests/tags_processes.rs` does, across real
/// processes.
async fn a_tag_invalidation_reaches_a_peer_instance() {
    let fixture = fixture().lock().await;
    list_peer(9, 2, 0).await;
    fixture.peer.l1_ready().await;
    fixture.tiered.l1_ready().await;
    let old = list_peer(9, 2, 0).await;
    let before = loads();
    assert_eq!(list_peer(9, 2, 0).await, old, "warm on the peer");
    assert_eq!(loads(), before);
    let received = fixture.peer.invalidations_received();
    SOURCE[2].fetch_add(1, Ordering::SeqCst);
    let tag = KeyBuilder::new().lit("category:").arg(&2u64).finish();
    cachette::invalidate_tag(&tag).await;
    assert!(fixture.peer.invalidations_received() >= received);
    let fresh = SOURCE[2].load(Ordering::SeqCst);
    eventually("the peer to reload", || async {
        list_peer(9, 2, 0).await == fresh
    })
    .await;
}

/// A tag invalidation that cannot reach Redis (its writes paused) is kept and replayed; until
/// then the tag is pending and no read of this process trusts Redis for it.
async fn a_tag_invalidation_redis_did_not_get_leaves_nothing_stale() {
    let fixture = fixture().lock().await;
    let old = list_redis(11, 3, 0).await;
    assert_eq!(list_redis(11, 3, 0).await, old);
    {
        let _paused = fixture.server.pause_writes(1_000);
        SOURCE[3].fetch_add(1, Ordering::SeqCst);
        let tag = KeyBuilder::new().lit("category:").arg(&3u64).finish();
        cachette::invalidate_tag(&tag).await;
        let fresh = SOURCE[3].load(Ordering::SeqCst);
        for _ in 0..5 {
            assert_eq!(list_redis(11, 3, 0).await, fresh, "while pending");
        }
    }
    let fresh = SOURCE[3].load(Ordering::SeqCst);
    eventually("the replay", || async {
        cachette::health()
            .iter()
            .all(|backend| backend.pending_invalidations == 0)
    })
    .await;
    assert_eq!(list_redis(11, 3, 0).await, fresh);
    let before = loads();
    assert_eq!(list_redis(11, 3, 0).await, fresh);
    assert_eq!(loads(), before, "cached again once replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tag_scenarios() {
    let _stop = OnExit(|| {
        if let Ok(mut fixture) = fixture().try_lock() {
            fixture.server.kill();
        }
    });
    a_tag_invalidation_reaches_every_entry_of_the_tag_and_no_other().await;
    a_load_held_across_a_tag_invalidation_stores_nothing_fresh().await;
    tagged_hits_cost_one_round_trip_on_redis_and_none_on_tiered().await;
    a_tag_invalidation_reaches_a_peer_instance().await;
    a_tag_invalidation_redis_did_not_get_leaves_nothing_stale().await;
    random_interleavings_never_serve_an_invalidated_tag().await;
}
