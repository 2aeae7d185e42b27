//! Review of issue 13 against a real redis-server: `health()` of a tiered backend that is
//! configured, with Redis up, before its first cached call (a readiness probe's first look).

mod support;

use std::time::Duration;

use cachette::{configure, health, RedisBackend, TieredBackend};
use support::redis_server::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_tiered_backend_with_redis_up_is_healthy_before_its_first_call() {
    let server = RedisServer::start();
    let redis = RedisBackend::builder()
        .url(server.url())
        .prefix("h13")
        .build()
        .expect("valid configuration");
    configure()
        .tiered("tiered.h", TieredBackend::builder(redis).build())
        .install()
        .expect("configured once");
    // Redis answers; nothing failed, nothing is pending. A readiness probe polls; the bus is
    // started by the first cached call, which a service gated on readiness never gets.
    let started = std::time::Instant::now();
    loop {
        let tiered = health()
            .into_iter()
            .find(|backend| backend.name == "tiered.h")
            .expect("configured");
        if tiered.is_healthy() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "nothing is wrong, yet a readiness probe on is_healthy() never passes: {tiered:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
