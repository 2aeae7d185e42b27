//! Time through a `TestClock` on a Redis backend against a real redis-server: an entry's time
//! and the circuit breaker's probe interval move when the test advances the clock, and not
//! when real time passes.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, configure, health, BreakerState, RedisBackend, TestClock};
use support::redis_server::RedisServer;

static LOADS: AtomicUsize = AtomicUsize::new(0);

// Redis expires keys on its own, real, clock: a long ttl keeps that out of the test's way.
#[cached(ttl = "60s", key = "c:<id>", backend = "redis")]
async fn value(id: u64) -> u64 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

fn breaker() -> Option<BreakerState> {
    health()
        .into_iter()
        .find(|backend| backend.name == "redis")
        .and_then(|backend| backend.breaker)
}

const OP_TIMEOUT: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_the_breaker_follow_the_test_clock() {
    let server = RedisServer::start();
    let clock = TestClock::new();
    let redis = RedisBackend::builder()
        .url(server.url())
        .prefix("clock")
        .op_timeout(OP_TIMEOUT)
        .clock(&clock)
        .build()
        .expect("valid configuration");
    configure()
        .redis("redis", redis)
        .install()
        .expect("configured once");

    // An entry's time: a hit until its ttl has passed on the clock, then a miss.
    assert_eq!(value(1).await, 1);
    clock.advance(Duration::from_secs(59));
    assert_eq!(value(1).await, 1);
    assert_eq!(LOADS.load(Ordering::SeqCst), 1, "a hit inside the ttl");
    clock.advance(Duration::from_secs(2));
    assert_eq!(value(1).await, 1);
    assert_eq!(
        LOADS.load(Ordering::SeqCst),
        2,
        "past it on the clock: reloaded"
    );

    // Three failures open the breaker.
    server.pause();
    for id in 10..13 {
        assert_eq!(value(id).await, id);
    }
    assert_eq!(breaker(), Some(BreakerState::Open));
    server.resume();

    // Real time passes beyond the probe interval (1 s); the clock does not: no probe, every
    // call runs uncached at once. A bounded wait for nothing to happen.
    let until = Instant::now() + Duration::from_millis(1_200);
    while Instant::now() < until {
        let started = Instant::now();
        assert_eq!(value(2).await, 2);
        assert!(
            started.elapsed() < OP_TIMEOUT,
            "refused without touching redis"
        );
        assert_eq!(breaker(), Some(BreakerState::Open));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Past the interval on the clock, the next call is the probe; it closes the breaker.
    clock.advance(Duration::from_secs(1));
    assert_eq!(value(3).await, 3);
    assert_eq!(breaker(), Some(BreakerState::Closed));
    let loads = LOADS.load(Ordering::SeqCst);
    assert_eq!(value(3).await, 3);
    assert_eq!(
        LOADS.load(Ordering::SeqCst),
        loads,
        "cached through redis again"
    );
}
