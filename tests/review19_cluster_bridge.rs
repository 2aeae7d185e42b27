//! Review 19: a cluster connection's replacement (`replacement.rs`) started from a call on a
//! runtime that is then no longer driven: a sync code path's current_thread runtime kept for
//! `block_on`. The attempt's task never runs, so its "one attempt at a time" flag stays set, and
//! no timeout on the main runtime starts another: after a hung master's replica takes over,
//! the main runtime's calls on its slots should be cached again within the recovery bound
//! (2 x backoff + 2 x probe interval + op timeout).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, configure, RedisBackend};
use support::redis_cluster::RedisCluster;

const OP_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const KEYS: u64 = 48;

fn recovery_bound() -> Duration {
    let backoff = (CONNECT_TIMEOUT * 2).max(Duration::from_secs(1));
    2 * backoff + 2 * PROBE_INTERVAL + OP_TIMEOUT
}

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "300s", key = "bridge:<id>", backend = "redis")]
async fn value(id: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_started_on_an_idle_runtime_does_not_block_recovery() {
    let mut cluster = RedisCluster::start();
    let backend = RedisBackend::builder()
        .cluster(cluster.seeds())
        .prefix("r19c")
        .op_timeout(OP_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .expect("valid");
    configure()
        .redis("redis", backend)
        .install()
        .expect("configured once");
    // Cached, on a connection made (and driven) on this, the main, runtime.
    for id in 0..KEYS {
        value(id).await;
    }
    let loaded = LOADS.load(Ordering::SeqCst);
    for id in 0..KEYS {
        value(id).await;
    }
    assert_eq!(LOADS.load(Ordering::SeqCst), loaded, "all cached");

    let ports = cluster.master_ports();
    let (hung, witness) = (ports[0], ports[1]);
    let keys: Vec<String> = (0..KEYS)
        .map(|id| format!("r19c:1:{{bridge:<{id}>}}:v"))
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let on_hung: Vec<u64> = (0..KEYS)
        .zip(cluster.master_ports_of(&keys))
        .filter(|(_, port)| *port == hung)
        .map(|(id, _)| id)
        .collect();
    assert!(!on_hung.is_empty(), "some keys live on the master to hang");
    cluster.node_by_port(hung).pause();

    // The first timeout is met by a call from sync code, through its own runtime.
    let first = on_hung[0];
    let bridge = std::thread::spawn(move || {
        let bridge = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        bridge.block_on(value(first));
        bridge
    })
    .join()
    .expect("no panic");

    let hung_at = Instant::now();
    let promoted = loop {
        if !cluster.master_ports_seen_by(witness).contains(&hung) {
            break Instant::now();
        }
        assert!(hung_at.elapsed() < Duration::from_secs(30), "no promotion");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The main runtime keeps calling; past the bound, its calls on the moved slots should hit.
    let mut last_uncached = None;
    while promoted.elapsed() < recovery_bound() + Duration::from_secs(3) {
        for &id in &on_hung {
            let before = LOADS.load(Ordering::SeqCst);
            value(id).await;
            if LOADS.load(Ordering::SeqCst) != before {
                last_uncached = Some(promoted.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.node_by_port(hung).resume();
    std::thread::spawn(move || drop(bridge))
        .join()
        .expect("no panic");
    println!("last uncached call {last_uncached:?} after the promotion");
    assert!(
        last_uncached.is_none_or(|at| at <= recovery_bound()),
        "calls on the promoted replica's slots still uncached {last_uncached:?} after the \
         promotion (bound {:?})",
        recovery_bound()
    );
}
