//! Review of issue 16 on a real local Redis Cluster (3 masters + 3 replicas): what a paused
//! (SIGSTOP) master does to the store's own connections to the seeds.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, RedisBackend};
use support::redis_cluster::RedisCluster;

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "resume:<id>", backend = "redis.first_seed_paused")]
async fn resumed(id: u64) -> Result<u64, String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(id)
}

#[invalidates("resume:<id>")]
async fn change(id: u64) {
    let _ = id;
}

fn health() -> cachette::BackendHealth {
    cachette::health()
        .into_iter()
        .find(|backend| backend.name == "redis.first_seed_paused")
        .expect("configured")
}

/// A master that hangs (SIGSTOP: its port accepts, nothing answers) is failed over by its
/// replica within seconds, and the cluster serves every slot again. If it is the first seed
/// and the invalidation queue overflowed meanwhile, the purge asks the seeds for the masters
/// one after another inside one operation timeout: the hung seed uses it all, the purge fails,
/// and caching through redis stays off for every key for as long as that node hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_first_seed_does_not_keep_caching_off_after_the_failover() {
    let mut cluster = RedisCluster::start();
    let paused_port = cluster.master_ports()[0];
    let mut seeds = cluster.seeds();
    let paused_url = cluster.node_by_port(paused_port).url();
    seeds.retain(|seed| *seed != paused_url);
    seeds.insert(0, paused_url);
    let backend = RedisBackend::builder()
        .cluster(seeds)
        .prefix("paused")
        .op_timeout(Duration::from_millis(250))
        .build()
        .expect("valid");
    configure()
        .redis("redis.first_seed_paused", backend)
        .install()
        .expect("configured once");
    assert_eq!(resumed(1).await, Ok(1));

    cluster.node_by_port(paused_port).pause();
    let paused_at = Instant::now();
    // Invalidations while a shard hangs: queued, until the queue overflows.
    let mut next = 0u64;
    while !health().pending_overflowed {
        assert!(
            paused_at.elapsed() < Duration::from_secs(20),
            "the queue did not overflow: {:?}",
            health()
        );
        let calls: Vec<_> = (next..next + 2_000).map(|id| tokio::spawn(change(id))).collect();
        for call in calls {
            call.await.expect("no panic");
        }
        next += 2_000;
    }
    eprintln!("overflowed {:?} after the pause", paused_at.elapsed());

    // The replica takes over within the node timeout and an election; the purge and caching
    // must follow, the hung node still hanging.
    let deadline = paused_at + Duration::from_secs(40);
    let resumed_after = loop {
        let before = LOADS.load(Ordering::SeqCst);
        let id = 1_000_000 + next;
        next += 1;
        let _ = resumed(id).await;
        let _ = resumed(id).await;
        if !health().pending_overflowed && LOADS.load(Ordering::SeqCst) == before + 1 {
            break paused_at.elapsed();
        }
        if Instant::now() > deadline {
            cluster.node_by_port(paused_port).resume();
            panic!(
                "caching still off {:?} after pausing the first seed: {:?}",
                paused_at.elapsed(),
                health()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("caching resumed {resumed_after:?} after the pause, the node still paused");
    cluster.node_by_port(paused_port).resume();
}
