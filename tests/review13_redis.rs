//! Review of issue 13 against a real redis-server: what a caller that waited for another
//! process's lock is counted as, when that process's load stored nothing and the caller then
//! loaded itself.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, configure, stats, RedisBackend};
use support::redis_server::RedisServer;
use tokio::sync::Notify;

static HOLDER_STARTED: Notify = Notify::const_new();
static HOLDER_GO: Notify = Notify::const_new();
static WAITER_LOADS: AtomicUsize = AtomicUsize::new(0);

/// "Another process" (its own backend instance, same server and prefix): holds the lock while
/// its load runs, and its load fails: nothing is filled.
#[cached(ttl = 60, key = "w:gated", backend = "redis.holder")]
async fn holder() -> Result<u64, String> {
    HOLDER_STARTED.notify_one();
    HOLDER_GO.notified().await;
    Err("the holder's load failed".to_owned())
}

/// This process's caller of the same entry.
#[cached(ttl = 60, key = "w:gated", backend = "redis.waiter")]
async fn waiter() -> Result<u64, String> {
    WAITER_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_then_loads_itself_did_not_coalesce() {
    let server = RedisServer::start();
    let redis = || {
        RedisBackend::builder()
            .url(server.url())
            .prefix("rv13")
            .build()
            .expect("valid configuration")
    };
    configure()
        .redis("redis.holder", redis())
        .redis("redis.waiter", redis())
        .install()
        .expect("configured once");

    let held = tokio::spawn(holder());
    HOLDER_STARTED.notified().await;
    let waiting = tokio::spawn(waiter());
    // Until the waiter is registered in Redis as waiting for the holder.
    let mut connection = server.connection().await;
    let started = Instant::now();
    loop {
        let waiters: Vec<String> = redis::cmd("KEYS")
            .arg("rv13:*:w")
            .query_async(&mut connection)
            .await
            .expect("redis answers");
        if !waiters.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the waiter registers"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    HOLDER_GO.notify_one();
    assert!(held.await.expect("completes").is_err());
    assert_eq!(waiting.await.expect("completes"), Ok(7));
    assert_eq!(
        WAITER_LOADS.load(Ordering::SeqCst),
        1,
        "nothing was filled: the waiter loaded itself"
    );

    let stats = stats();
    let site = stats.site("review13_redis::waiter").expect("ran");
    assert_eq!((site.misses, site.loads), (1, 1));
    // `cachette_coalesced_total`: "callers that waited for another caller's load instead of
    // loading"; ARCHITECTURE: cluster scope is "a leader whose claim found the lock held and
    // later got the fill". This caller got no fill and ran its own load.
    assert_eq!(
        site.coalesced, 0,
        "the waiter ran its own load, yet it is counted as coalesced: {site:?}"
    );
}
