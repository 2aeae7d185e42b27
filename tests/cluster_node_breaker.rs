//! A Redis Cluster whose masters have no replica (4 masters, `cluster-require-full-coverage
//! no`): one master dies. Its keys fail open, and its breaker opens; the live masters' keys
//! stay cached, since each master has a breaker of its own. When it comes back, its keys are
//! cached again by themselves (its breaker's probe closes it).

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

#[cached(ttl = "300s", key = "nb:<id>", backend = "redis")]
async fn value(id: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

static TAGGED_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "300s", key = "nbt:<id>", backend = "redis", tags("grp:<group>"))]
async fn tagged(id: u64, group: u64) -> u64 {
    TAGGED_LOADS.fetch_add(1, Ordering::SeqCst);
    id + group
}

/// Calls the tagged `id` of `group`: whether it loaded.
async fn call_tagged(id: u64, group: u64) -> bool {
    let before = TAGGED_LOADS.load(Ordering::SeqCst);
    assert_eq!(tagged(id, group).await, id + group);
    TAGGED_LOADS.load(Ordering::SeqCst) != before
}

/// The first group from `from` whose tag's generation is (or is not) on `victim`.
fn group(cluster: &RedisCluster, victim: u16, on_victim: bool) -> u64 {
    (0..)
        .find(|group| {
            let key = format!("nb:1:{{grp:<{group}>}}:g");
            (cluster.master_port_of(&key) == victim) == on_victim
        })
        .expect("a group")
}

#[invalidates("nb:<id>")]
async fn change(id: u64) {
    let _ = id;
}

/// Calls `id`: whether it loaded, and how long it took (checking the value: fail-open returns
/// it too).
async fn call(id: u64) -> (bool, Duration) {
    let before = LOADS.load(Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(value(id).await, id, "the loader's value, cached or not");
    (LOADS.load(Ordering::SeqCst) != before, started.elapsed())
}

/// `count` fresh ids from `next` on, split into (on `victim`'s slots, the others).
fn fresh(cluster: &RedisCluster, victim: u16, next: &mut u64, count: u64) -> (Vec<u64>, Vec<u64>) {
    let ids: Vec<u64> = (*next..*next + count).collect();
    *next += count;
    let keys: Vec<String> = ids
        .iter()
        .map(|id| format!("nb:1:{{nb:<{id}>}}:v"))
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (on_victim, others): (Vec<_>, Vec<_>) = ids
        .into_iter()
        .zip(cluster.master_ports_of(&keys))
        .partition(|(_, port)| *port == victim);
    let ids = |pairs: Vec<(u64, u16)>| pairs.into_iter().map(|(id, _)| id).collect();
    (ids(on_victim), ids(others))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_opens_its_own_breaker_only() {
    let mut cluster = RedisCluster::start_without_replicas(4);
    cluster_backend::install(&cluster, "nb", OP_TIMEOUT, CONNECT_TIMEOUT);
    let victim = cluster.master_ports()[0];
    let mut next = 0;
    let (on_victim, others) = fresh(&cluster, victim, &mut next, 48);
    for &id in on_victim.iter().chain(&others) {
        call(id).await;
        assert!(!call(id).await.0, "{id} cached before the kill");
    }

    // The dead master's keys fail open, each within an op timeout, until its breaker opens
    // (then at once).
    cluster.node_by_port(victim).kill();
    let (mut dead_keys, _) = fresh(&cluster, victim, &mut next, 400);
    let killed = Instant::now();
    while health().breaker != Some(BreakerState::Open) {
        let id = dead_keys.pop().expect("keys of the dead master left");
        let (_, took) = call(id).await;
        assert!(took <= 2 * OP_TIMEOUT, "a call took {took:?}");
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "no breaker opened; {:?}",
            health()
        );
    }
    eprintln!("a breaker open {:?} after the kill", killed.elapsed());

    // Invalidations of the dead master's keys are queued (replayed before every operation
    // while they are): their replays must not fail the live masters' calls.
    let changed: Vec<u64> = dead_keys.split_off(dead_keys.len() - 20);
    for &id in &changed {
        change(id).await;
    }
    assert!(
        health().pending_invalidations >= changed.len(),
        "{:?}",
        health()
    );

    // Tagged reads whose tag is on the dead master fail open (their tag's breaker is the dead
    // master's); a tagged entry of a live master with its tag on a live master stays cached.
    let (dead_group, live_group) = (
        group(&cluster, victim, true),
        group(&cluster, victim, false),
    );
    for id in 0..10 {
        call_tagged(id, dead_group).await;
        assert!(call_tagged(id, dead_group).await, "no generation to be had");
    }
    let live_tagged: Vec<u64> = (1_000..1_048)
        .filter(|id| cluster.master_port_of(&format!("nb:1:{{nbt:<{id}>}}:v")) != victim)
        .collect();
    let mut tagged_not_cached = Vec::new();
    for &id in &live_tagged {
        call_tagged(id, live_group).await;
        if call_tagged(id, live_group).await {
            tagged_not_cached.push(id);
        }
    }
    assert!(
        tagged_not_cached.is_empty(),
        "{} of {} tagged entries of the live masters not cached: {tagged_not_cached:?}; {:?}",
        tagged_not_cached.len(),
        live_tagged.len(),
        health()
    );

    // Every key of the live masters: loaded once, then a hit.
    let (_, live) = fresh(&cluster, victim, &mut next, 144);
    let mut not_cached = Vec::new();
    for &id in &live {
        let (_, first) = call(id).await;
        let (loaded_again, second) = call(id).await;
        assert!(first.max(second) <= 2 * OP_TIMEOUT);
        if loaded_again {
            not_cached.push(id);
        }
    }
    assert!(
        not_cached.is_empty(),
        "{} of {} keys of the live masters not cached with one master dead: {not_cached:?}; {:?}",
        not_cached.len(),
        live.len(),
        health()
    );
    // The dead master's keys still fail open, at once: its breaker is open.
    let id = dead_keys.pop().expect("keys of the dead master left");
    let (_, took) = call(id).await;
    assert!(took < OP_TIMEOUT, "a call on the dead master took {took:?}");
    assert_ne!(health().breaker, Some(BreakerState::Closed));

    // It comes back: its keys are cached again by themselves, within the recovery bound (a
    // doomed replacement attempt under way, the failure that starts the next, that attempt, the
    // probe that closes its breaker).
    cluster.node_by_port(victim).restart();
    cluster.wait_until_ok(Duration::from_secs(20));
    let back = Instant::now();
    let backoff = (CONNECT_TIMEOUT * 2).max(Duration::from_secs(1));
    let bound = 2 * backoff + 2 * PROBE_INTERVAL + OP_TIMEOUT;
    loop {
        let id = dead_keys.pop().expect("keys of the returned master left");
        call(id).await;
        if !call(id).await.0 {
            break;
        }
        assert!(
            back.elapsed() < bound,
            "the returned master's keys not cached {:?} after (bound {bound:?}); {:?}",
            back.elapsed(),
            health()
        );
        // The poll's pace: an open breaker answers at once.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "the returned master's keys cached {:?} after",
        back.elapsed()
    );
    while health().pending_invalidations > 0 {
        assert!(
            back.elapsed() < bound,
            "invalidations still pending {:?} after the return; {:?}",
            back.elapsed(),
            health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (on_victim, others) = fresh(&cluster, victim, &mut next, 48);
    for &id in on_victim.iter().chain(&others) {
        call(id).await;
        assert!(!call(id).await.0, "{id} cached after the master returned");
    }
    assert_eq!(
        health().breaker,
        Some(BreakerState::Closed),
        "{:?}",
        health()
    );
}
