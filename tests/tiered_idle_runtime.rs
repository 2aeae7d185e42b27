//! A tiered backend whose first call, which starts its invalidation bus, came from a runtime
//! that is then no longer driven (a sync code path's current_thread runtime, kept for
//! `block_on`): the bus subscribes during that call, so L1 is in use, and must go on hearing
//! its peers' invalidations afterwards.

mod support;

use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, RedisBackend, TieredBackend};
use support::redis_server::RedisServer;

#[cached(ttl = "60s", key = "item:<id>", backend = "tiered")]
async fn item(id: u64) -> u64 {
    id
}

#[cached(ttl = "60s", key = "item:<id>", backend = "tiered.peer")]
async fn item_on_peer(id: u64) -> u64 {
    id
}

#[invalidates("item:<id>")]
async fn change_item(id: u64) {
    let _ = id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_hears_peers_after_the_first_call_came_from_a_runtime_now_idle() {
    let mut server = RedisServer::start();
    let tiered_over = |server: &RedisServer| {
        let l2 = RedisBackend::builder()
            .url(server.url())
            .prefix("tiered-idle")
            .op_timeout(Duration::from_millis(200))
            .build()
            .expect("valid configuration");
        TieredBackend::builder(l2)
            .heartbeat(Duration::from_millis(100))
            .build()
    };
    let (tiered, peer) = (tiered_over(&server), tiered_over(&server));
    configure()
        .tiered("tiered", tiered.clone())
        .tiered("tiered.peer", peer.clone())
        .install()
        .expect("configured once");
    // The first call through `tiered` from sync code's own runtime, kept for later.
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
    item_on_peer(1).await;
    let patience = Duration::from_secs(5);
    let up = tokio::time::timeout(patience, async {
        tiered.l1_ready().await;
        peer.l1_ready().await;
    })
    .await;

    let heard_before = tiered.invalidations_received();
    // Announced by both backends; `tiered` hears the peer's announcement.
    change_item(1).await;
    let sent = Instant::now();
    while tiered.invalidations_received() == heard_before && sent.elapsed() < patience {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let heard = tiered.invalidations_received() - heard_before;
    std::thread::spawn(move || drop(bridge))
        .join()
        .expect("no panic");
    server.kill();
    assert!(up.is_ok(), "the buses did not come up within {patience:?}");
    assert!(
        heard > 0,
        "the peer's invalidation was not heard within {patience:?}: the bus subscriber waits on \
         the idle runtime"
    );
}
