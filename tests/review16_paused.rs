//! Review of issue 16 on a real local Redis Cluster (3 masters + 3 replicas): a master that
//! hangs (SIGSTOP) rather than dies. Its port still accepts and its connections stay open, so
//! nothing but a timeout shows the client that it is gone.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, configure, RedisBackend};
use support::redis_cluster::RedisCluster;

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "hung:<id>", backend = "redis.hung_master")]
async fn value(id: u64) -> Result<u64, String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(id)
}

fn health() -> cachette::BackendHealth {
    cachette::health()
        .into_iter()
        .find(|backend| backend.name == "redis.hung_master")
        .expect("configured")
}

/// A hung master is failed over by its replica within seconds (node timeout 1.5 s); caching
/// must then resume for every key, the hung node still hung (as it resumes after a SIGKILL,
/// `a_killed_master_is_survived`). The store's requests to the hung node end by the store's
/// own timeout, which drops them: the cluster client sees no error, so nothing tells it to
/// refresh its slot map.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caching_resumes_after_a_hung_master_is_failed_over() {
    let mut cluster = RedisCluster::start();
    let hung_port = cluster.master_ports()[0];
    let mut seeds = cluster.seeds();
    // The hung node last among the seeds: only the data path is under test here.
    let hung_url = cluster.node_by_port(hung_port).url();
    seeds.retain(|seed| *seed != hung_url);
    let seeds_answering = seeds.clone();
    seeds.push(hung_url);
    let backend = RedisBackend::builder()
        .cluster(seeds)
        .prefix("hung")
        .op_timeout(Duration::from_millis(250))
        .build()
        .expect("valid");
    configure()
        .redis("redis.hung_master", backend)
        .install()
        .expect("configured once");
    for id in 0..64 {
        assert_eq!(value(id).await, Ok(id));
    }

    cluster.node_by_port(hung_port).pause();
    let paused_at = Instant::now();
    let mut round = 0u64;
    let mut slowest = Duration::ZERO;
    let resumed_after = loop {
        // 64 fresh keys, over every shard: each loaded once, then a hit.
        let ids: Vec<u64> = (0..64).map(|i| 1_000 + round * 64 + i).collect();
        round += 1;
        let before = LOADS.load(Ordering::SeqCst);
        for &id in ids.iter().chain(&ids) {
            let started = Instant::now();
            assert_eq!(value(id).await, Ok(id), "fail-open");
            slowest = slowest.max(started.elapsed());
        }
        if LOADS.load(Ordering::SeqCst) == before + ids.len() {
            break paused_at.elapsed();
        }
        if paused_at.elapsed() > Duration::from_secs(30) {
            // What the cluster says, asked of a node that answers.
            let mut other = support::redis_server::connect_blocking(&seeds_answering[0]);
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut other)
                .expect("cluster info");
            let slots: redis::Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query(&mut other)
                .expect("cluster slots");
            let hung = cluster.node_by_port(hung_port);
            hung.resume();
            panic!(
                "caching still off for some keys {:?} after a master hung: {} loads for {} \
                 keys; {:?}\nthe cluster (hung port {hung_port}): {}\nslots: {slots:?}",
                paused_at.elapsed(),
                LOADS.load(Ordering::SeqCst) - before,
                ids.len(),
                health(),
                info.lines()
                    .find(|line| line.starts_with("cluster_state"))
                    .unwrap_or("?"),
            );
        }
    };
    eprintln!(
        "caching resumed {resumed_after:?} after the master hung, the node still hung; slowest \
         call {slowest:?}"
    );
    // Fail-open: at most one operation timeout per call (and scheduling on 2 loaded cores).
    assert!(
        slowest < Duration::from_millis(500),
        "slowest call {slowest:?}"
    );
    cluster.node_by_port(hung_port).resume();
}
