//! A Redis Cluster whose masters have no replica (4 masters, so that 2 are still a majority
//! with one hung and one dead; `cluster-require-full-coverage no`). When one dies, calls on
//! its slots fail open within an op timeout, and caching comes back by itself, without a
//! restart of the process: when it comes back on its port, and, while one is hung, when
//! another dies and its slots are given to a third, which only a fresh connection learns (the
//! fresh connection must not wait for the hung master to answer it).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::cached;
use support::cluster_backend::{self, health};
use support::redis_cluster::RedisCluster;

const OP_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Fresh keys per round: every master holds some.
const KEYS_PER_ROUND: u64 = 48;

/// The replacement's recovery bound (ARCHITECTURE.md, "Replacing the connection"): a doomed
/// attempt under way, the failure that starts the next, that attempt, the probe that closes the
/// breaker.
fn recovery_bound() -> Duration {
    let backoff = (CONNECT_TIMEOUT * 2).max(Duration::from_secs(1));
    2 * backoff + 2 * PROBE_INTERVAL + OP_TIMEOUT
}

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "300s", key = "down:<id>", backend = "redis")]
async fn value(id: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

/// Calls `id`: whether it loaded, and how long it took (checking the value: fail-open returns
/// it too).
async fn call(id: u64) -> (bool, Duration) {
    let before = LOADS.load(Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(value(id).await, id, "the loader's value, cached or not");
    let took = started.elapsed();
    (LOADS.load(Ordering::SeqCst) != before, took)
}

/// Whether each of `ids` (fresh keys) is cached: a hit on its second call; and the slowest call.
async fn cached(ids: &[u64]) -> (bool, Duration) {
    let (mut all, mut slowest) = (true, Duration::ZERO);
    for &id in ids {
        let (_, first) = call(id).await;
        let (loaded_again, second) = call(id).await;
        all &= !loaded_again;
        slowest = slowest.max(first).max(second);
    }
    (all, slowest)
}

/// Fresh keys, round after round, split by the master serving their slot.
struct Rounds {
    next: u64,
}

impl Rounds {
    /// The next round's ids, split into (on `victim`'s slots as the cluster now says, the
    /// others).
    fn next(&mut self, cluster: &RedisCluster, victim: u16) -> (Vec<u64>, Vec<u64>) {
        let ids: Vec<u64> = (self.next..self.next + KEYS_PER_ROUND).collect();
        self.next += KEYS_PER_ROUND;
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("down:1:{{down:<{id}>}}:v"))
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (on_victim, others): (Vec<_>, Vec<_>) = ids
            .into_iter()
            .zip(cluster.master_ports_of(&keys))
            .partition(|(_, port)| *port == victim);
        let ids = |pairs: Vec<(u64, u16)>| pairs.into_iter().map(|(id, _)| id).collect();
        (ids(on_victim), ids(others))
    }
}

/// Polls `round` (which calls fresh keys and says whether they were all cached) until it says so
/// `runs` times running, failing with `what` past `bound` from `since`.
async fn until_cached<F, Fut>(runs: u32, since: Instant, bound: Duration, what: &str, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut running = 0;
    while running < runs {
        running = if round().await {
            running + 1
        } else {
            // The poll's pace: an open breaker answers at once.
            tokio::time::sleep(Duration::from_millis(50)).await;
            0
        };
        assert!(
            since.elapsed() < bound,
            "{what}: not cached {:?} after (bound {bound:?}); {:?}",
            since.elapsed(),
            health()
        );
    }
    eprintln!("{what}: cached {:?} after", since.elapsed());
}

/// 1. The master dies: every call fails open within 2 x op timeout (how many of the live
///    masters' keys stay cached is printed; `cluster_node_breaker.rs` asserts it, once the
///    dead master's breaker is open).
/// 2. It comes back on its port: every key is cached again within the recovery bound.
/// 3. It hangs (SIGSTOP: down, no replica; its port accepts and nothing answers), and
///    another master dies and has its slots given to a third (`CLUSTER FORGET`,
///    `ADDSLOTSRANGE`: an operator's recovery, or a failover). The connection in use cannot see
///    the move (the dead node's requests end by the store's timeout); a fresh connection learns
///    it, and must replace the one in use although the hung master cannot answer it. The moved
///    keys are cached again within the recovery bound of the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_without_replica_dies_comes_back_and_its_slots_move() {
    let mut cluster = RedisCluster::start_without_replicas(4);
    cluster_backend::install(&cluster, "down", OP_TIMEOUT, CONNECT_TIMEOUT);
    let victim = cluster.master_ports()[0];
    let mut rounds = Rounds { next: 0 };
    let (on_victim, others) = rounds.next(&cluster, victim);
    assert!(!on_victim.is_empty() && !others.is_empty());
    let (all, _) = cached(&[on_victim, others].concat()).await;
    assert!(all, "every key cached before the kill; {:?}", health());

    // 1. Every call in id order, as a service's callers would mix them.
    cluster.node_by_port(victim).kill();
    let (mut live_keys, mut live_cached) = (0, 0);
    for _ in 0..3 {
        let (on_victim, _) = rounds.next(&cluster, victim);
        for id in rounds.next - KEYS_PER_ROUND..rounds.next {
            let (_, first) = call(id).await;
            let (loaded_again, second) = call(id).await;
            let took = first.max(second);
            assert!(
                took <= 2 * OP_TIMEOUT,
                "a call took {took:?} with a master dead"
            );
            if !on_victim.contains(&id) {
                live_keys += 1;
                live_cached += usize::from(!loaded_again);
            }
        }
    }
    eprintln!("with a master dead: {live_cached} of {live_keys} keys of the live masters cached");

    // 2.
    cluster.node_by_port(victim).restart();
    cluster.wait_until_ok(Duration::from_secs(20));
    let back = Instant::now();
    until_cached(
        1,
        back,
        recovery_bound(),
        "every key after the master returned",
        || {
            let (on_victim, others) = rounds.next(&cluster, victim);
            async move { cached(&[on_victim, others].concat()).await.0 }
        },
    )
    .await;

    // 3. Keys of the master to kill, fresh ones for every round to come.
    let (dying, heir) = (cluster.master_ports()[1], cluster.master_ports()[2]);
    let reserve: Vec<u64> = (rounds.next..rounds.next + 100 * KEYS_PER_ROUND).collect();
    let keys: Vec<String> = reserve
        .iter()
        .map(|id| format!("down:1:{{down:<{id}>}}:v"))
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut on_dying = reserve
        .iter()
        .zip(cluster.master_ports_of(&keys))
        .filter(|(_, port)| *port == dying)
        .map(|(id, _)| *id);
    let dying_id: String = redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut cluster.node_connection(dying))
        .expect("cluster myid");
    let ranges = cluster.slot_ranges_of(dying);
    cluster.node_by_port(victim).pause();
    cluster.node_by_port(dying).kill();
    for port in cluster.ports().into_iter().filter(|port| *port != victim) {
        let _: () = redis::cmd("CLUSTER")
            .arg("FORGET")
            .arg(&dying_id)
            .query(&mut cluster.node_connection(port))
            .expect("cluster forget");
    }
    let mut add = redis::cmd("CLUSTER");
    add.arg("ADDSLOTSRANGE");
    for (first, last) in &ranges {
        add.arg(first).arg(last);
    }
    let _: () = add
        .query(&mut cluster.node_connection(heir))
        .expect("cluster addslotsrange");
    assert!(
        !cluster.master_ports_seen_by(heir).contains(&dying),
        "the heir serves the dead master's slots"
    );
    let moved = Instant::now();
    until_cached(
        1,
        moved,
        recovery_bound(),
        "the dead master's keys after its slots moved, another master hung",
        || {
            let ids: Vec<u64> = on_dying.by_ref().take(8).collect();
            assert_eq!(ids.len(), 8, "keys left in the reserve");
            async move { cached(&ids).await.0 }
        },
    )
    .await;
    cluster.node_by_port(victim).resume();
}
