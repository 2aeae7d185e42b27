//! Review of issue 14: one load across processes after a tag invalidation. Every entry of an
//! invalidated tag is still in Redis under its old generations, so each process's leader finds
//! it, refuses it, and claims again past it (`over_unreadable`). A leader that then waits for
//! another process's load must take that load's fill when woken, not skip it as the refused
//! entry and load again itself: the processes would load one after another, as many loads as
//! processes. Two backend instances on one Redis prefix stand for two processes (each has its
//! own in-process flights; the Redis lock is shared), against a real redis-server.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, configure, KeyBuilder, RedisBackend};
use support::redis_server::RedisServer;
use tokio::sync::Notify;

static LOADS: AtomicUsize = AtomicUsize::new(0);
static HOLD: AtomicBool = AtomicBool::new(false);
static LOADER_READ: Notify = Notify::const_new();
static LOADER_GO: Notify = Notify::const_new();

/// Counts itself; held at a barrier when asked.
async fn load() -> usize {
    let load = LOADS.fetch_add(1, Ordering::SeqCst) + 1;
    if HOLD.swap(false, Ordering::SeqCst) {
        LOADER_READ.notify_one();
        LOADER_GO.notified().await;
    }
    load
}

#[cached(ttl = "60s", key = "cl:<id>", backend = "redis", tags("claimed"))]
async fn in_one(id: u64) -> usize {
    let _ = id;
    load().await
}

#[cached(ttl = "60s", key = "cl:<id>", backend = "redis.other", tags("claimed"))]
async fn in_another(id: u64) -> usize {
    let _ = id;
    load().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_tag_invalidation_processes_load_once() {
    let server = RedisServer::start();
    let backend = || {
        RedisBackend::builder()
            .url(server.url())
            .prefix("r14c")
            .op_timeout(Duration::from_millis(500))
            .build()
            .expect("valid")
    };
    configure()
        .redis("redis", backend())
        .redis("redis.other", backend())
        .install()
        .expect("configured once");
    assert_eq!(in_one(1).await, 1);
    assert_eq!(in_another(1).await, 1, "the other process reads the fill");
    let tag = KeyBuilder::new().lit("claimed").finish();
    cachette::invalidate_tag(&tag).await;
    // One process loads (holding the lock) ...
    HOLD.store(true, Ordering::SeqCst);
    let first = tokio::spawn(in_one(1));
    LOADER_READ.notified().await;
    // ... while the other, having refused the old entry, waits for it: the waiters flag says
    // so (its claim found the lock held).
    let second = tokio::spawn(in_another(1));
    let mut raw = server.connection().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: bool = redis::cmd("EXISTS")
            .arg("r14c:1:{cl:<1>}:w")
            .query_async(&mut raw)
            .await
            .expect("exists");
        if waiting {
            break;
        }
        assert!(Instant::now() < deadline, "the other process never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    LOADER_GO.notify_one();
    assert_eq!(first.await.expect("no panic"), 2);
    assert_eq!(
        second.await.expect("no panic"),
        2,
        "the waiting process takes the fill it waited for"
    );
    assert_eq!(
        LOADS.load(Ordering::SeqCst),
        2,
        "one load after the invalidation"
    );
}
