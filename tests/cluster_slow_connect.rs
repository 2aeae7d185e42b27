//! A real local Redis Cluster (3 masters + 3 replicas) whose *new* connections take longer to
//! answer than the operation timeout, while the connections already made keep flowing: what a
//! debug build's TLS handshakes on a loaded machine look like, made deterministic by a TCP
//! forwarder in front of every seed (`support/delaying_proxy.rs`) that holds back each new
//! connection's first bytes.
//!
//! A timeout makes the store look for a fresh cluster connection (a hung master keeps its slots
//! in the old one's map, ARCHITECTURE.md "A hung master"). When every fresh connection is
//! slower than the operation timeout, replacing the connection in use by one still connecting
//! made the next operations time out too, which replaced that one in turn: caching came and
//! went for as long as connecting stayed slow (10-23 s measured with TLS under load).
//!
//! Two faults, in turn, on one runtime (a backend's connection lives on the runtime that first
//! used it) and one cluster:
//! 1. the whole cluster frozen (SIGSTOP) for 1.2 s, shorter than the node timeout (no
//!    failover): the connection in use is sound again once the nodes thaw;
//! 2. a master frozen until its replica takes over: the connection in use still routes the
//!    master's slots to it, so caching comes back only through a fresh connection.
//!
//! Each phase counts the calls that fell back to the loader (every key was cached before the
//! faults, and nothing invalidates it) in each second after the fault cleared, and requires none
//! after the recovery bound, and no failed call at all.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cachette::{cached, configure, RedisBackend};
use support::delaying_proxy::DelayingProxy;
use support::redis_cluster::RedisCluster;

const BACKEND: &str = "redis.slow_connect";
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// Room for a fresh connection through the proxies (which delay it by `NEW_CONNECTION_DELAY`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a fresh connection takes to answer its first command: longer than an operation
/// timeout plus the breaker's probe interval (1 s), so a connection renewed after a probe's
/// timeout is still connecting when the next probe comes.
const NEW_CONNECTION_DELAY: Duration = Duration::from_secs(2);
/// The breaker's probe interval (the default).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Phase 1's freeze: several operation timeouts (the breaker opens, a replacement is asked
/// for), shorter than the node timeout (1.5 s), so that no replica takes over.
const FREEZE: Duration = Duration::from_millis(1_200);
/// Calls running at once, over `KEYS` keys spread over every shard.
const CALLERS: u64 = 8;
const KEYS: u64 = 64;

/// No sooner than this after one replacement attempt starts may the next: max(1 s, 2 x the
/// connect timeout) (ARCHITECTURE.md, "A hung master").
fn backoff() -> Duration {
    (CONNECT_TIMEOUT * 2).max(Duration::from_secs(1))
}

/// Within this of the fault clearing, caching is back for every key: a doomed attempt still in
/// flight (at most a backoff), the next one after a probe's timeout triggers it (a probe
/// interval and an operation timeout), that attempt (at most a backoff), and the probe that
/// closes the breaker.
fn recovery_bound() -> Duration {
    2 * backoff() + 2 * PROBE_INTERVAL + OP_TIMEOUT
}

/// How long each phase watches after its fault cleared: the bound and 3 s of no fallback.
fn watch() -> Duration {
    recovery_bound() + Duration::from_secs(3)
}

/// When each uncached call (the loader) ran.
static UNCACHED: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[cached(ttl = "300s", key = "slow:<id>", backend = "redis.slow_connect")]
async fn value(id: u64) -> Result<u64, String> {
    UNCACHED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Instant::now());
    Ok(id)
}

fn uncached_count() -> usize {
    UNCACHED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len()
}

/// One call: when it started, how long it took, whether it returned its value.
struct Call {
    started: Instant,
    took: Duration,
    ok: bool,
}

/// `CALLERS` tasks calling over every key until `stop`, about a call a millisecond each.
fn start_callers(stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<Call>>> {
    (0..CALLERS)
        .map(|caller| {
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let mut calls = Vec::new();
                let mut id = caller;
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let ok = value(id % KEYS).await == Ok(id % KEYS);
                    calls.push(Call {
                        started,
                        took: started.elapsed(),
                        ok,
                    });
                    id += 1;
                    // Paced like a service's requests: an uncached call with the breaker open
                    // is instant, and 8 tasks spinning on 2 cores would starve the connecting.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                calls
            })
        })
        .collect()
}

/// What a phase saw after its fault cleared at `cleared`, and what it got wrong.
fn judge(phase: &str, cleared: Instant, calls: &[Call], connections: usize) -> Vec<String> {
    let end = cleared + watch();
    let during = |at: &Instant| *at >= cleared && *at < end;
    let fallbacks: Vec<Duration> = UNCACHED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|at| during(at))
        .map(|at| at.duration_since(cleared))
        .collect();
    let mut per_second = vec![0usize; usize::try_from(watch().as_secs()).unwrap_or(0) + 1];
    for after in &fallbacks {
        let second = usize::try_from(after.as_secs()).unwrap_or(usize::MAX);
        if let Some(count) = per_second.get_mut(second) {
            *count += 1;
        }
    }
    let watched: Vec<&Call> = calls.iter().filter(|call| during(&call.started)).collect();
    let failed = watched.iter().filter(|call| !call.ok).count();
    let slowest = watched
        .iter()
        .map(|call| call.took)
        .max()
        .unwrap_or_default();
    let last = fallbacks.iter().max().copied();
    let quiet = watched
        .iter()
        .filter(|call| call.started >= cleared + recovery_bound())
        .count();
    eprintln!(
        "{phase}: {} calls in the {:?} after the fault cleared, {} uncached, the last {last:?} \
         after; per second {per_second:?}; slowest {slowest:?}; {failed} failed; {connections} \
         connections opened through the seeds' proxies",
        watched.len(),
        watch(),
        fallbacks.len(),
    );
    let mut wrong = Vec::new();
    if failed > 0 {
        wrong.push(format!("{phase}: {failed} calls failed (fail-open)"));
    }
    if let Some(last) = last.filter(|last| *last > recovery_bound()) {
        wrong.push(format!(
            "{phase}: an uncached call {last:?} after the fault cleared, past the bound of \
             {:?}; uncached calls per second {per_second:?}",
            recovery_bound()
        ));
    }
    if quiet == 0 {
        wrong.push(format!("{phase}: no call after the recovery bound"));
    }
    // One operation timeout per call, and the scheduling of a loaded 2-core machine.
    if slowest > 4 * OP_TIMEOUT {
        wrong.push(format!("{phase}: a call took {slowest:?}"));
    }
    wrong
}

/// Connections opened through the proxies so far.
fn accepted(proxies: &[DelayingProxy]) -> usize {
    proxies.iter().map(DelayingProxy::accepted).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caching_recovers_when_fresh_connections_are_slower_than_the_op_timeout() {
    let mut cluster = RedisCluster::start();
    let mut proxies = Vec::new();
    for port in cluster.ports() {
        proxies.push(DelayingProxy::start(port).await);
    }
    let seeds: Vec<String> = proxies
        .iter()
        .map(|proxy| format!("redis://127.0.0.1:{}/", proxy.port()))
        .collect();
    let backend = RedisBackend::builder()
        .cluster(seeds)
        .prefix("slow")
        .op_timeout(OP_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .expect("valid");
    configure()
        .redis(BACKEND, backend)
        .install()
        .expect("configured once");

    // Every key cached while connecting is quick: a second pass loads nothing.
    for id in 0..KEYS {
        assert_eq!(value(id).await, Ok(id));
    }
    let loaded = uncached_count();
    for id in 0..KEYS {
        assert_eq!(value(id).await, Ok(id));
    }
    assert_eq!(
        uncached_count(),
        loaded,
        "every key cached before the faults"
    );

    // From now on every fresh connection answers its first command only after the delay.
    for proxy in &proxies {
        proxy.delay_new_connections(NEW_CONNECTION_DELAY);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let callers = start_callers(&stop);

    // Phase 1: the whole cluster frozen, briefly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.pause_all();
    tokio::time::sleep(FREEZE).await;
    cluster.resume_all();
    let thawed = Instant::now();
    let before = accepted(&proxies);
    tokio::time::sleep(watch()).await;
    let connections_after_thaw = accepted(&proxies) - before;

    // Phase 2: a master frozen until its replica takes over; the fault clears at the promotion.
    let ports = cluster.master_ports();
    let (hung, witness) = (ports[0], ports[1]);
    cluster.node_by_port(hung).pause();
    let hung_at = Instant::now();
    let promoted = loop {
        if !cluster.master_ports_seen_by(witness).contains(&hung) {
            break Instant::now();
        }
        assert!(
            hung_at.elapsed() < Duration::from_secs(30),
            "the hung master's replica was not promoted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "phase 2: the replica of the hung master {hung} promoted {:?} after the freeze",
        promoted - hung_at
    );
    let before = accepted(&proxies);
    tokio::time::sleep(watch()).await;
    let connections_after_promotion = accepted(&proxies) - before;

    stop.store(true, Ordering::SeqCst);
    let mut calls = Vec::new();
    for caller in callers {
        calls.extend(caller.await.expect("a caller panicked"));
    }
    cluster.node_by_port(hung).resume();

    let mut wrong = judge(
        "phase 1 (cluster frozen 1.2 s)",
        thawed,
        &calls,
        connections_after_thaw,
    );
    wrong.extend(judge(
        "phase 2 (a master hung, its replica promoted)",
        promoted,
        &calls,
        connections_after_promotion,
    ));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
