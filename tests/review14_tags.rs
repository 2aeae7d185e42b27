//! Review of issue 14, tags, against a real redis-server on a multi-thread runtime:
//! - followers of a tagged flight are not made to reload, one after another, by tag
//!   invalidations that happened while they waited (they asked before those returned), on
//!   memory, redis and tiered;
//! - a follower that joined after a tag invalidation returned still never gets the value
//!   loaded before it;
//! - foreign bytes of another type under a tag's generation key are a miss once, not a family
//!   cached never again.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use cachette::{cached, configure, invalidates, KeyBuilder, RedisBackend, TieredBackend};
use support::redis_server::{OnExit, RedisServer};
use tokio::sync::{Mutex, Notify};

struct Fixture {
    server: RedisServer,
    tiered: TieredBackend,
}

fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = RedisServer::start();
        let redis_on = |prefix: &str| {
            RedisBackend::builder()
                .url(server.url())
                .prefix(prefix)
                .op_timeout(Duration::from_millis(500))
                .build()
                .expect("valid configuration")
        };
        let tiered = TieredBackend::builder(redis_on("r14t"))
            .heartbeat(Duration::from_millis(100))
            .build();
        configure()
            .redis("redis", redis_on("r14"))
            .tiered("tiered", tiered.clone())
            .install()
            .expect("configured once");
        Mutex::new(Fixture { server, tiered })
    })
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Redis,
    Tiered,
}

const KINDS: [Kind; 3] = [Kind::Memory, Kind::Redis, Kind::Tiered];

static LOADS: AtomicUsize = AtomicUsize::new(0);

/// A load during which the program invalidates some other tag (another product's page, a
/// tenant's settings: any tag, anywhere in the process), as a busy service does all the time.
async fn load_while_other_tags_change(id: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    let unrelated = KeyBuilder::new().lit("unrelated:").arg(&id).finish();
    cachette::invalidate_tag(&unrelated).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    id
}

#[cached(ttl = "60s", key = "busy:<id>", tags("busy"))]
async fn busy_memory(id: u64) -> u64 {
    load_while_other_tags_change(id).await
}

#[cached(ttl = "60s", key = "busy:<id>", backend = "redis", tags("busy"))]
async fn busy_redis(id: u64) -> u64 {
    load_while_other_tags_change(id).await
}

#[cached(ttl = "60s", key = "busy:<id>", backend = "tiered", tags("busy"))]
async fn busy_tiered(id: u64) -> u64 {
    load_while_other_tags_change(id).await
}

async fn busy(kind: Kind, id: u64) -> u64 {
    match kind {
        Kind::Memory => busy_memory(id).await,
        Kind::Redis => busy_redis(id).await,
        Kind::Tiered => busy_tiered(id).await,
    }
}

/// 20 callers of one cold key: one load for all, even though an unrelated tag was invalidated
/// while they waited.
async fn followers_are_not_serialised_by_tag_invalidations_while_they_wait() {
    let fixture = fixture().lock().await;
    busy_tiered(1_000).await;
    fixture.tiered.l1_ready().await;
    for (round, kind) in KINDS.into_iter().enumerate() {
        let id = round as u64;
        let before = LOADS.load(Ordering::SeqCst);
        let callers: Vec<_> = (0..20).map(|_| tokio::spawn(busy(kind, id))).collect();
        for caller in callers {
            assert_eq!(caller.await.expect("no panic"), id);
        }
        assert_eq!(
            LOADS.load(Ordering::SeqCst) - before,
            1,
            "{kind:?}: 20 concurrent callers of one cold key"
        );
    }
}

static HELD_LOADS: AtomicUsize = AtomicUsize::new(0);
static HELD_SOURCE: AtomicU64 = AtomicU64::new(1);
static LOADER_READ: Notify = Notify::const_new();
static LOADER_GO: Notify = Notify::const_new();

async fn held_load() -> u64 {
    let version = HELD_SOURCE.load(Ordering::SeqCst);
    if HELD_LOADS.fetch_add(1, Ordering::SeqCst) == 0 {
        LOADER_READ.notify_one();
        LOADER_GO.notified().await;
    }
    version
}

#[cached(ttl = "60s", key = "late:<id>", tags("late"))]
async fn late_memory(id: u64) -> u64 {
    let _ = id;
    held_load().await
}

#[cached(ttl = "60s", key = "late:<id>", backend = "redis", tags("late"))]
async fn late_redis(id: u64) -> u64 {
    let _ = id;
    held_load().await
}

#[cached(ttl = "60s", key = "late:<id>", backend = "tiered", tags("late"))]
async fn late_tiered(id: u64) -> u64 {
    let _ = id;
    held_load().await
}

async fn late(kind: Kind, id: u64) -> u64 {
    match kind {
        Kind::Memory => late_memory(id).await,
        Kind::Redis => late_redis(id).await,
        Kind::Tiered => late_tiered(id).await,
    }
}

#[invalidates(tags("late"))]
async fn change_late(version: u64) {
    HELD_SOURCE.store(version, Ordering::SeqCst);
}

/// A caller that begins after a tag invalidation returned joins the flight that loaded before
/// it (a tag invalidation does not detach flights): it must not get that flight's value.
async fn a_follower_that_joined_after_a_tag_invalidation_gets_no_older_value() {
    let _fixture = fixture().lock().await;
    for (round, kind) in KINDS.into_iter().enumerate() {
        let id = round as u64;
        HELD_LOADS.store(0, Ordering::SeqCst);
        let old = HELD_SOURCE.load(Ordering::SeqCst);
        let early = tokio::spawn(late(kind, id));
        LOADER_READ.notified().await;
        change_late(old + 1).await;
        let joined_late = tokio::spawn(late(kind, id));
        // Nothing to wait on for "it has joined": give it a moment (if it has not joined by
        // then, it leads a flight of its own, which loads the new version all the same).
        tokio::time::sleep(Duration::from_millis(50)).await;
        LOADER_GO.notify_one();
        assert_eq!(
            early.await.expect("no panic"),
            old,
            "{kind:?}: its own load"
        );
        assert_eq!(
            joined_late.await.expect("no panic"),
            old + 1,
            "{kind:?}: began after the invalidation returned"
        );
    }
}

static FOREIGN_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "foreign:<id>", backend = "redis", tags("foreign"))]
async fn foreign_redis(id: u64) -> u64 {
    FOREIGN_LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

/// A list (another program's, a mistaken `RPUSH`) under a tag's generation key: one miss, then
/// the capture replaces it and the family is cached again.
async fn a_foreign_type_under_a_generation_key_is_one_miss() {
    let fixture = fixture().lock().await;
    let mut raw = fixture.server.connection().await;
    let () = redis::cmd("RPUSH")
        .arg("r14:1:{foreign}:g")
        .arg("not a generation")
        .query_async(&mut raw)
        .await
        .expect("rpush");
    for _ in 0..5 {
        assert_eq!(foreign_redis(1).await, 1);
    }
    assert!(
        FOREIGN_LOADS.load(Ordering::SeqCst) <= 2,
        "{} loads for 5 calls: the family is never cached again",
        FOREIGN_LOADS.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review14_tag_scenarios() {
    let _stop = OnExit(|| {
        if let Ok(mut fixture) = fixture().try_lock() {
            fixture.server.kill();
        }
    });
    a_follower_that_joined_after_a_tag_invalidation_gets_no_older_value().await;
    followers_are_not_serialised_by_tag_invalidations_while_they_wait().await;
    a_foreign_type_under_a_generation_key_is_one_miss().await;
}
