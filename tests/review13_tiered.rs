//! Review of issue 13 against a real redis-server: callers of a tiered backend that join a
//! flight whose leader finds the value in L2 (no load anywhere) are counted as what they got.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cachette::{cached, configure, stats, RedisBackend, TieredBackend};
use support::redis_server::RedisServer;

static LOADS: AtomicUsize = AtomicUsize::new(0);

/// Another process, which filled the entry in Redis earlier.
#[cached(ttl = 60, key = "hot:<id>", backend = "redis.filler")]
async fn fill(id: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

/// This process: a cold L1 in front of the same Redis entries.
#[cached(ttl = 60, key = "hot:<id>", backend = "tiered.reader")]
async fn read(id: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_leader_that_hit_l2_are_not_misses() {
    let server = RedisServer::start();
    let redis = || {
        RedisBackend::builder()
            .url(server.url())
            .prefix("tv13")
            .op_timeout(Duration::from_secs(3))
            .build()
            .expect("valid configuration")
    };
    configure()
        .redis("redis.filler", redis())
        .tiered("tiered.reader", TieredBackend::builder(redis()).build())
        .install()
        .expect("configured once");
    assert_eq!(fill(1).await, 1);
    assert_eq!(LOADS.load(Ordering::SeqCst), 1, "the entry is in Redis");

    // Five concurrent callers on a cold L1: one leads and claims (held in Redis by the pause,
    // so that the others join its flight), and finds the entry filled.
    let paused = server.pause_writes(400);
    let callers: Vec<_> = (0..5).map(|_| tokio::spawn(read(1))).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(paused);
    for caller in callers {
        assert_eq!(caller.await.expect("completes"), 1);
    }
    assert_eq!(
        LOADS.load(Ordering::SeqCst),
        1,
        "nothing loaded: all from L2"
    );

    let stats = stats();
    let site = stats.site("review13_tiered::read").expect("ran");
    assert_eq!(site.loads, 0);
    assert_eq!(
        (site.hits, site.misses),
        (5, 0),
        "every caller got the L2 entry and nobody loaded, yet followers count as misses: {site:?}"
    );
}
