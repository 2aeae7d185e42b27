//! An L1 hit is counted twice, as a hit and as an L1 hit, by two increments that a reader can
//! fall between: `stats()` must still never report more L1 hits than hits, and the metrics
//! publisher, which exports memory hits as hits minus L1 hits, must never subtract past zero
//! (in a debug build that panicked the publisher; a `refresh_processes` worker logged it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachette::{cached, configure, publish_metrics, stats, RedisBackend, TieredBackend};

mod support;
use support::redis_server::RedisServer;

#[cached(ttl = "600s", key = "counted:<id>", backend = "tiered")]
async fn counted(id: u64) -> u64 {
    id
}

#[test]
fn counts_read_while_l1_hits_land_never_show_more_l1_hits_than_hits() {
    let server = RedisServer::start();
    let l2 = RedisBackend::builder()
        .url(server.url())
        .build()
        .expect("valid configuration");
    let backend = TieredBackend::builder(l2).build();
    configure()
        .tiered("tiered", backend.clone())
        .install()
        .expect("configured once");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        counted(0).await;
        backend.l1_ready().await;
        // The first read after the bus is up fills L1 from Redis; the next one is an L1 hit.
        assert_eq!(counted(0).await, 0);
        assert_eq!(counted(0).await, 0);
    });
    assert!(stats().sites.iter().any(|site| site.l1_hits > 0), "L1 hits");

    let done = Arc::new(AtomicBool::new(false));
    let hitters: Vec<_> = (0..2)
        .map(|_| {
            let done = Arc::clone(&done);
            runtime.spawn(async move {
                let mut hits = 0u64;
                while !done.load(Ordering::Relaxed) {
                    assert_eq!(counted(0).await, 0);
                    hits += 1;
                }
                hits
            })
        })
        .collect();
    let mut reads = 0u64;
    let mut inverted = 0u64;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for site in stats().sites {
            if site.l1_hits > site.hits {
                inverted += 1;
            }
        }
        // Panics on an overflow in a debug build (the tests' profile).
        publish_metrics();
        reads += 1;
    }
    done.store(true, Ordering::Relaxed);
    let hits: u64 = runtime.block_on(async {
        let mut total = 0;
        for hitter in hitters {
            total += hitter.await.expect("no hitter panicked");
        }
        total
    });
    println!("{reads} reads of the counts during {hits} L1 hits, {inverted} inverted");
    assert!(hits > 10_000, "the hitters ran: {hits}");
    assert_eq!(inverted, 0, "stats() showed more L1 hits than hits");
}
