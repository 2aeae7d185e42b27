//! Review of issue 14, write-through, against a real redis-server: the put's fence. A put
//! advances the entry's fence so that a load that began before it cannot overwrite its value.
//! A fence that `INCR` makes of a missing key is always 1, so a load that saw such a fence,
//! then a restart of Redis (without persistence: every fence is lost), then a put (its `INCR`
//! makes 1 again) lets the old load's fill through, over the put's value. The same holds for
//! an invalidation after the restart (its script has the same `INCR`).

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cache_put, cached, configure, invalidates, RedisBackend};
use support::redis_server::RedisServer;
use tokio::sync::Notify;

static SOURCE: AtomicU64 = AtomicU64::new(1);
/// The loads to come before the one that waits at the barrier (`usize::MAX`: none waits).
static HOLD_AFTER: AtomicUsize = AtomicUsize::new(usize::MAX);
static LOADER_READ: Notify = Notify::const_new();
static LOADER_GO: Notify = Notify::const_new();

/// Reads the source, then, the first time, waits at a barrier.
async fn held_load() -> u64 {
    let version = SOURCE.load(Ordering::SeqCst);
    if HOLD_AFTER.fetch_sub(1, Ordering::SeqCst) == 0 {
        LOADER_READ.notify_one();
        LOADER_GO.notified().await;
    }
    version
}

#[cached(ttl = "60s", key = "fr:<id>", backend = "redis")]
async fn read(id: u64) -> u64 {
    let _ = id;
    held_load().await
}

#[invalidates("fr:<id>")]
async fn changed(id: u64) {
    let _ = id;
}

#[invalidates("fr:<id>")]
async fn mutate(id: u64, version: u64) {
    let _ = id;
    SOURCE.store(version, Ordering::SeqCst);
}

#[cache_put(key = "fr:<id>", ttl = "60s", backend = "redis")]
async fn save(id: u64, version: u64) -> u64 {
    let _ = id;
    SOURCE.store(version, Ordering::SeqCst);
    version
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_from_before_a_restart_cannot_overwrite_a_put_after_it() {
    // Killed when dropped, a failed assertion included.
    let mut server = RedisServer::start();
    configure()
        .redis(
            "redis",
            RedisBackend::builder()
                .url(server.url())
                .prefix("r14p")
                .op_timeout(Duration::from_millis(300))
                .build()
                .expect("valid"),
        )
        .install()
        .expect("configured once");
    for (id, through_put) in [(1, true), (2, false)] {
        let old = SOURCE.load(Ordering::SeqCst);
        // An invalidation leaves the fence `INCR` made of nothing: 1.
        changed(id).await;
        HOLD_AFTER.store(0, Ordering::SeqCst);
        let slow = tokio::spawn(read(id));
        LOADER_READ.notified().await;
        // The load read `old` under fence 1. Redis restarts and loses every key.
        server.restart();
        // The mutation, written through or invalidated (should the first command after the
        // restart fail, queued and replayed): either way a fence made of nothing.
        if through_put {
            assert_eq!(save(id, old + 1).await, old + 1);
        } else {
            mutate(id, old + 1).await;
        }
        eventually("the mutation or its replay", || {
            cachette::health()
                .iter()
                .all(|backend| backend.pending_invalidations == 0)
        })
        .await;
        let fence: Option<String> = redis::cmd("GET")
            .arg(format!("r14p:1:{{fr:<{id}>}}:f"))
            .query_async(&mut server.connection().await)
            .await
            .expect("get");
        LOADER_GO.notify_one();
        assert_eq!(
            slow.await.expect("no panic"),
            old,
            "the caller gets its own load"
        );
        assert_eq!(
            read(id).await,
            old + 1,
            "put {through_put}: the load from before the restart stored over the mutation \
             (fence {fence:?})"
        );
    }
}
