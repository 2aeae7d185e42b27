//! review23: a single server (with the `cluster` feature built in, so through the per-master
//! breakers' code): three failures open the breaker, a probe whose call is dropped while it
//! waits leaves the breaker half-open (refusing at once), and one probe interval later the
//! next call probes again and closes it. Time is the test clock's.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, configure, health, BreakerState, RedisBackend, TestClock};
use support::redis_server::RedisServer;

const OP_TIMEOUT: Duration = Duration::from_millis(250);
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "300s", key = "pc:<id>", backend = "redis")]
async fn value(id: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

fn breaker() -> Option<BreakerState> {
    health()
        .into_iter()
        .find(|backend| backend.name == "redis")
        .expect("configured")
        .breaker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_probe_is_replaced_one_interval_later() {
    let server = RedisServer::start();
    let clock = TestClock::new();
    let redis = RedisBackend::builder()
        .url(server.url())
        .prefix("pc")
        .op_timeout(OP_TIMEOUT)
        .clock(&clock)
        .build()
        .expect("valid configuration");
    configure()
        .redis("redis", redis)
        .install()
        .expect("configured once");
    assert_eq!(value(1).await, 1);
    assert_eq!(value(1).await, 1);
    assert_eq!(LOADS.load(Ordering::SeqCst), 1, "cached");

    server.pause();
    for id in 10..13 {
        assert_eq!(value(id).await, id);
    }
    assert_eq!(breaker(), Some(BreakerState::Open));
    let started = Instant::now();
    assert_eq!(value(13).await, 13);
    assert!(started.elapsed() < OP_TIMEOUT, "open: refused at once");

    // The probe's call is dropped while it waits for the frozen server.
    clock.advance(PROBE_INTERVAL);
    let cancelled = tokio::time::timeout(OP_TIMEOUT / 5, value(14)).await;
    assert!(cancelled.is_err(), "the probe was waiting");
    assert_eq!(breaker(), Some(BreakerState::HalfOpen));
    let started = Instant::now();
    assert_eq!(value(15).await, 15);
    assert!(started.elapsed() < OP_TIMEOUT, "half-open: refused at once");

    // The server thaws; a probe interval after the lost probe, the next call probes and
    // closes the breaker.
    server.resume();
    assert_eq!(value(16).await, 16);
    assert_eq!(breaker(), Some(BreakerState::HalfOpen), "not before");
    clock.advance(PROBE_INTERVAL);
    assert_eq!(value(1).await, 1);
    assert_eq!(breaker(), Some(BreakerState::Closed));
    let loads = LOADS.load(Ordering::SeqCst);
    assert_eq!(value(1).await, 1);
    assert_eq!(LOADS.load(Ordering::SeqCst), loads, "cached again");
}
