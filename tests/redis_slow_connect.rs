//! One real `redis-server` whose *new* connections answer later than the operation timeout (a
//! TCP forwarder in front of it holds back each new connection's first bytes,
//! `support/delaying_proxy.rs`), the store's connection dropped by the server (`CLIENT KILL`).
//! The cluster's connection is replaced after timeouts (`tests/cluster_slow_connect.rs`); a
//! server's never is: redis-rs's `ConnectionManager` reconnects on its own, in a task of its
//! own that the calls timing out do not cancel. This holds that it does not flap either:
//! caching is back within a reconnection, a probe interval and an operation timeout, and no
//! call fails.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cachette::{cached, configure, RedisBackend};
use support::delaying_proxy::DelayingProxy;
use support::redis_server::RedisServer;

const OP_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longer than an operation timeout plus the breaker's probe interval, within the connect
/// timeout.
const NEW_CONNECTION_DELAY: Duration = Duration::from_secs(2);
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const CALLERS: u64 = 8;
const KEYS: u64 = 64;

/// Within this of its connection being dropped, the store caches again: the reconnection
/// (within the connect timeout), then the probe that closes the breaker.
fn recovery_bound() -> Duration {
    CONNECT_TIMEOUT + PROBE_INTERVAL + OP_TIMEOUT
}

/// When each uncached call (the loader) ran.
static UNCACHED: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[cached(ttl = "300s", key = "slow1:<id>", backend = "redis.slow_connect")]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_connection_reconnects_once_however_slow_connecting_is() {
    let server = RedisServer::start();
    let proxy = DelayingProxy::start(server.port()).await;
    let backend = RedisBackend::builder()
        .url(format!("redis://127.0.0.1:{}/", proxy.port()))
        .prefix("slow1")
        .op_timeout(OP_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .expect("valid");
    configure()
        .redis("redis.slow_connect", backend)
        .install()
        .expect("configured once");
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
        "every key cached before the fault"
    );

    proxy.delay_new_connections(NEW_CONNECTION_DELAY);
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut id, mut failed, mut slowest) = (caller, 0usize, Duration::ZERO);
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    if value(id % KEYS).await != Ok(id % KEYS) {
                        failed += 1;
                    }
                    slowest = slowest.max(started.elapsed());
                    id += 1;
                    // Paced like a service's requests (an uncached call is instant).
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                (failed, slowest)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(200)).await;
    let accepted = proxy.accepted();
    let dropped_at = Instant::now();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut server.blocking_connection())
        .expect("client kill");
    assert!(killed >= 1, "the store's connection was dropped");
    let watch = recovery_bound() + Duration::from_secs(3);
    tokio::time::sleep(watch).await;
    stop.store(true, Ordering::SeqCst);
    let (mut failed, mut slowest) = (0, Duration::ZERO);
    for caller in callers {
        let (caller_failed, caller_slowest) = caller.await.expect("a caller panicked");
        failed += caller_failed;
        slowest = slowest.max(caller_slowest);
    }

    let fallbacks: Vec<Duration> = UNCACHED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|at| **at >= dropped_at)
        .map(|at| at.duration_since(dropped_at))
        .collect();
    let last = fallbacks.iter().max().copied();
    let reconnections = proxy.accepted() - accepted;
    eprintln!(
        "{} uncached calls in the {watch:?} after the connection was dropped, the last {last:?} \
         after; {reconnections} connections opened; slowest call {slowest:?}; {failed} failed",
        fallbacks.len()
    );
    assert_eq!(failed, 0, "fail-open");
    assert!(
        last.is_none_or(|last| last <= recovery_bound()),
        "an uncached call {last:?} after the connection was dropped, past {:?}",
        recovery_bound()
    );
    // The reconnection, and the breaker's diagnosis of why connections fail (one per 10 s).
    assert!(reconnections <= 3, "{reconnections} connections opened");
    // One operation timeout per call, and the scheduling of a loaded 2-core machine.
    assert!(slowest <= 4 * OP_TIMEOUT, "a call took {slowest:?}");
}
