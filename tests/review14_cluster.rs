//! Review of issue 14 on a real local Redis Cluster (3 masters + 3 replicas): tagged sites
//! must cache there as everywhere. A tag's generation key is in the tag's own slot, not the
//! entry's, and redis-rs refuses a cluster pipeline whose keys span slots ("Received crossed
//! slots in pipeline"): a tagged redis read (value and generations pipelined) and a capture of
//! two tags (one script each, pipelined) must not be such pipelines.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cachette::{cached, configure, invalidates, RedisBackend, TieredBackend};
use support::redis_cluster::RedisCluster;

static LOADS: AtomicUsize = AtomicUsize::new(0);

fn loads() -> usize {
    LOADS.load(Ordering::SeqCst)
}

#[cached(
    ttl = "60s",
    key = "cl:list:<page>",
    backend = "redis",
    tags("products", "category:<category>")
)]
async fn list_redis(page: u32, category: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    u64::from(page) + category
}

#[cached(
    ttl = "60s",
    key = "cl:list:<page>",
    backend = "tiered",
    tags("products", "category:<category>")
)]
async fn list_tiered(page: u32, category: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    u64::from(page) + category
}

#[invalidates(tags("category:<category>"))]
async fn update_category(category: u64) {
    let _ = category;
}

#[test]
fn tagged_sites_cache_on_a_cluster() {
    let mut cluster = RedisCluster::start();
    let backend = |prefix: &str| {
        RedisBackend::builder()
            .cluster(cluster.seeds())
            .prefix(prefix)
            .op_timeout(Duration::from_millis(500))
            .build()
            .expect("valid")
    };
    let tiered = TieredBackend::builder(backend("r14ct"))
        .heartbeat(Duration::from_millis(200))
        .build();
    configure()
        .redis("redis", backend("r14c"))
        .tiered("tiered", tiered.clone())
        .install()
        .expect("configured once");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        list_tiered(0, 0).await;
        tiered.l1_ready().await;
        for (name, call) in [("redis", false), ("tiered", true)] {
            let list = |page| async move {
                if call {
                    list_tiered(page, 1).await
                } else {
                    list_redis(page, 1).await
                }
            };
            for page in 1..=5 {
                assert_eq!(list(page).await, u64::from(page) + 1);
            }
            let before = loads();
            for page in 1..=5 {
                assert_eq!(list(page).await, u64::from(page) + 1);
            }
            assert_eq!(loads(), before, "{name}: 5 warm reads on a cluster");
            update_category(1).await;
            for page in 1..=5 {
                assert_eq!(list(page).await, u64::from(page) + 1);
            }
            assert_eq!(loads(), before + 5, "{name}: the tag's entries reloaded");
        }
    });
    cluster.stop();
}
