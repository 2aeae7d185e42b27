//! review23: a 4-master cluster without replicas. One master is dead, the other three are
//! frozen (SIGSTOP) while invalidations of keys on all four are made, so that every one is
//! queued. The three thaw: their invalidations are replayed (and their keys cached again)
//! while the dead master's stay queued, not lost; it returns: they are replayed too, and every
//! breaker closes. No call waits more than two op timeouts meanwhile.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, invalidates, BreakerState};
use support::cluster_backend::{self, health};
use support::redis_cluster::RedisCluster;

const OP_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "300s", key = "rr:<id>", backend = "redis")]
async fn value(id: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

#[invalidates("rr:<id>")]
async fn change(id: u64) {
    let _ = id;
}

/// Calls `id`: whether it loaded, and how long it took.
async fn call(id: u64) -> (bool, Duration) {
    let before = LOADS.load(Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(value(id).await, id);
    (LOADS.load(Ordering::SeqCst) != before, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_masters_queued_invalidations_wait_for_it_and_the_live_ones_do_not() {
    let mut cluster = RedisCluster::start_without_replicas(4);
    cluster_backend::install(&cluster, "rr", OP_TIMEOUT, CONNECT_TIMEOUT);
    let masters = cluster.master_ports();
    let victim = masters[0];
    let ids: Vec<u64> = (0..160).collect();
    let keys: Vec<String> = ids
        .iter()
        .map(|id| format!("rr:1:{{rr:<{id}>}}:v"))
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (dead, live): (Vec<_>, Vec<_>) = ids
        .iter()
        .zip(cluster.master_ports_of(&keys))
        .partition(|(_, port)| *port == victim);
    let dead: Vec<u64> = dead.into_iter().map(|(id, _)| *id).collect();
    let live: Vec<u64> = live.into_iter().map(|(id, _)| *id).collect();
    for &id in &ids {
        call(id).await;
        assert!(!call(id).await.0, "{id} cached");
    }

    cluster.node_by_port(victim).kill();
    for &port in &masters[1..] {
        cluster.node_by_port(port).pause();
    }
    for &id in &ids {
        let started = Instant::now();
        change(id).await;
        assert!(
            started.elapsed() <= 2 * OP_TIMEOUT + OP_TIMEOUT / 2,
            "an invalidation took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(health().pending_invalidations, ids.len(), "{:?}", health());
    for &port in &masters[1..] {
        cluster.node_by_port(port).resume();
    }

    // The live masters' invalidations are replayed (by the background replayer and by calls)
    // within a few probe intervals; the dead master's stay queued.
    let thawed = Instant::now();
    let bound = 4 * PROBE_INTERVAL + 2 * CONNECT_TIMEOUT;
    while health().pending_invalidations > dead.len() {
        assert!(
            thawed.elapsed() < bound,
            "live masters' invalidations still pending {:?} after the thaw: {:?}",
            thawed.elapsed(),
            health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        health().pending_invalidations,
        dead.len(),
        "the dead master's invalidations kept"
    );
    for &id in &live {
        let (loaded, took) = call(id).await;
        assert!(loaded, "{id} invalidated: loaded again");
        assert!(took <= 2 * OP_TIMEOUT, "a call took {took:?}");
        assert!(!call(id).await.0, "{id} cached again");
    }
    for &id in &dead {
        let (loaded, took) = call(id).await;
        assert!(loaded, "{id} on the dead master: uncached");
        assert!(took <= 2 * OP_TIMEOUT, "a call took {took:?}");
    }
    assert_eq!(health().pending_invalidations, dead.len(), "{:?}", health());

    // It returns (empty: nothing stale to read, but its queued invalidations must still be
    // delivered, not dropped, and its breaker close).
    cluster.node_by_port(victim).restart();
    cluster.wait_until_ok(Duration::from_secs(20));
    let back = Instant::now();
    let backoff = (CONNECT_TIMEOUT * 2).max(Duration::from_secs(1));
    let bound = 2 * backoff + 3 * PROBE_INTERVAL + OP_TIMEOUT;
    while health().pending_invalidations > 0 || health().breaker != Some(BreakerState::Closed) {
        // Calls on its keys are what probe it.
        call(dead[0]).await;
        assert!(
            back.elapsed() < bound,
            "{:?} after the return: {:?}",
            back.elapsed(),
            health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &id in &ids {
        call(id).await;
        assert!(!call(id).await.0, "{id} cached after the return");
    }
    assert_eq!(health().breaker, Some(BreakerState::Closed));
}
