//! A Redis connection first used by a call on a runtime that is then no longer driven (a sync
//! code path's current_thread runtime, kept for `block_on`): the calls on the main runtime go
//! over the same connection, whose tasks must not sit on that idle runtime.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cachette::{cached, configure, RedisBackend};
use support::redis_server::RedisServer;

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "item:<id>", backend = "redis")]
async fn item(id: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_cached_after_the_first_came_from_a_runtime_now_idle() {
    let mut server = RedisServer::start();
    let backend = RedisBackend::builder()
        .url(server.url())
        .prefix("conn-idle")
        .op_timeout(Duration::from_millis(200))
        .build()
        .expect("valid configuration");
    configure()
        .redis("redis", backend)
        .install()
        .expect("configured once");
    // The first call, hence the connection's first command, from sync code's own runtime.
    let bridge = tokio::task::spawn_blocking(|| {
        let bridge = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        bridge.block_on(item(1));
        bridge
    })
    .await
    .expect("no panic");
    assert_eq!(LOADS.load(Ordering::SeqCst), 1);

    item(2).await;
    item(2).await;
    item(1).await;
    let loads = LOADS.load(Ordering::SeqCst);
    std::thread::spawn(move || drop(bridge))
        .join()
        .expect("no panic");
    server.kill();
    assert_eq!(
        loads, 2,
        "the main runtime's calls went uncached: the connection's tasks wait on the idle runtime"
    );
}
