//! Review of issue 16 on a real local Redis Cluster (3 masters + 3 replicas): what a hung
//! (SIGSTOP) first seed does to the store's own connections to the seeds (the purge).

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

/// The first seed hangs (SIGSTOP: its port accepts, nothing answers; a black-holed address
/// does the same to a connection attempt); here it is a replica, so that the data path does
/// not depend on it. The invalidation queue overflowed while every master hung for a few
/// seconds (no failover: no master could vote). Once the masters answer again, the replay and
/// the purge must run and caching resume. The purge asks the seeds for the masters one after
/// another, each within the operation timeout, inside one operation timeout: the hung first
/// seed uses it all, the purge fails, and caching through redis stays off for every key for
/// as long as that one replica hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_first_seed_does_not_keep_caching_off_after_an_overflow() {
    let mut cluster = RedisCluster::start();
    let masters = cluster.master_ports();
    let mut seeds = cluster.seeds();
    let replica_url = seeds
        .iter()
        .find(|seed| {
            !masters
                .iter()
                .any(|port| seed.contains(&format!(":{port}")))
        })
        .expect("a replica")
        .clone();
    seeds.retain(|seed| *seed != replica_url);
    seeds.insert(0, replica_url.clone());
    let replica_port: u16 = replica_url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("a port");
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

    cluster.node_by_port(replica_port).pause();
    for &port in &masters {
        cluster.node_by_port(port).pause();
    }
    let paused_at = Instant::now();
    // Invalidations while the masters hang: queued, until the queue overflows.
    let mut next = 0u64;
    while !health().pending_overflowed {
        if paused_at.elapsed() > Duration::from_secs(20) {
            for &port in &masters {
                cluster.node_by_port(port).resume();
            }
            panic!("the queue did not overflow: {:?}", health());
        }
        let calls: Vec<_> = (next..next + 2_000)
            .map(|id| tokio::spawn(change(id)))
            .collect();
        for call in calls {
            call.await.expect("no panic");
        }
        next += 2_000;
    }
    for &port in &masters {
        cluster.node_by_port(port).resume();
    }
    let resumed_at = Instant::now();
    eprintln!(
        "overflowed {:?} after the pause; masters resumed",
        paused_at.elapsed()
    );

    let deadline = resumed_at + Duration::from_secs(20);
    let resumed_after = loop {
        let before = LOADS.load(Ordering::SeqCst);
        let id = 1_000_000 + next;
        next += 1;
        let _ = resumed(id).await;
        let _ = resumed(id).await;
        if !health().pending_overflowed && LOADS.load(Ordering::SeqCst) == before + 1 {
            break resumed_at.elapsed();
        }
        if Instant::now() > deadline {
            cluster.node_by_port(replica_port).resume();
            panic!(
                "caching still off {:?} after the masters answer again (the first seed, a \
                 replica, hung): {:?}",
                resumed_at.elapsed(),
                health()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("caching resumed {resumed_after:?} after the masters, the first seed still hung");
    cluster.node_by_port(replica_port).resume();
}
