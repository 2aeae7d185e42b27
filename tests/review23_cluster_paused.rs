//! review23: the whole cluster frozen (SIGSTOP) while the store asks for its first slot map
//! (the ask, made after the first failure, hangs with it): no call waits more than two op
//! timeouts; thawed, every key is cached again and every breaker closes. Then one master
//! dies: the map asked now (the frozen ask got none) gives it a breaker of its own, and the
//! live masters' keys stay cached.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, BreakerState};
use support::cluster_backend::{self, health};
use support::redis_cluster::RedisCluster;

const OP_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "300s", key = "rp:<id>", backend = "redis")]
async fn value(id: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

async fn call(id: u64) -> (bool, Duration) {
    let before = LOADS.load(Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(value(id).await, id);
    (LOADS.load(Ordering::SeqCst) != before, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_cluster_during_the_first_map_then_a_dead_master() {
    let mut cluster = RedisCluster::start_without_replicas(4);
    cluster_backend::install(&cluster, "rp", OP_TIMEOUT, CONNECT_TIMEOUT);
    let mut next = 0u64;
    for id in 0..40 {
        call(id).await;
        assert!(!call(id).await.0);
    }
    next += 40;

    cluster.pause_all();
    let paused = Instant::now();
    while paused.elapsed() < 3 * PROBE_INTERVAL {
        let (_, took) = call(next).await;
        next += 1;
        assert!(took <= 2 * OP_TIMEOUT, "a call took {took:?} while frozen");
    }
    assert_ne!(
        health().breaker,
        Some(BreakerState::Closed),
        "{:?}",
        health()
    );
    cluster.resume_all();

    let thawed = Instant::now();
    let backoff = (CONNECT_TIMEOUT * 2).max(Duration::from_secs(1));
    let bound = 2 * backoff + 2 * PROBE_INTERVAL + OP_TIMEOUT;
    loop {
        call(next).await;
        if !call(next).await.0 && health().breaker == Some(BreakerState::Closed) {
            break;
        }
        next += 1;
        assert!(
            thawed.elapsed() < bound,
            "not cached {:?} after the thaw: {:?}",
            thawed.elapsed(),
            health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    next += 1;

    // One master dies: its breaker only.
    let victim = cluster.master_ports()[0];
    cluster.node_by_port(victim).kill();
    let killed = Instant::now();
    while health().breaker != Some(BreakerState::Open) {
        let key = format!("rp:1:{{rp:<{next}>}}:v");
        if cluster.master_port_of(&key) == victim {
            let (_, took) = call(next).await;
            assert!(took <= 2 * OP_TIMEOUT, "a call took {took:?}");
        }
        next += 1;
        assert!(killed.elapsed() < Duration::from_secs(20), "{:?}", health());
    }
    let ids: Vec<u64> = (next..next + 120).collect();
    let keys: Vec<String> = ids
        .iter()
        .map(|id| format!("rp:1:{{rp:<{id}>}}:v"))
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let live: Vec<u64> = ids
        .iter()
        .zip(cluster.master_ports_of(&keys))
        .filter(|(_, port)| *port != victim)
        .map(|(id, _)| *id)
        .collect();
    let mut not_cached = Vec::new();
    for &id in &live {
        call(id).await;
        if call(id).await.0 {
            not_cached.push(id);
        }
    }
    assert!(
        not_cached.is_empty(),
        "{} of {} live keys not cached: {:?}",
        not_cached.len(),
        live.len(),
        health()
    );
}
