//! Review of issue 13 against a real redis-server: the invalidation counters against the
//! pending queue they describe, when one key's invalidation fails twice during an outage.

mod support;

use std::time::{Duration, Instant};

use cachette::{configure, health, invalidate, metric_names as names, KeyBuilder, RedisBackend};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use support::redis_server::RedisServer;

fn pending() -> usize {
    health()
        .into_iter()
        .find(|backend| backend.name == "redis.q")
        .expect("configured")
        .pending_invalidations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_minus_replayed_is_what_is_pending() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder");
    let mut server = RedisServer::start();
    let redis = RedisBackend::builder()
        .url(server.url())
        .prefix("pq13")
        .op_timeout(Duration::from_millis(200))
        .build()
        .expect("valid configuration");
    configure()
        .redis("redis.q", redis)
        .install()
        .expect("configured once");
    let key = KeyBuilder::new().lit("q:1").finish();
    invalidate(&key).await;
    assert_eq!(pending(), 0, "redis confirmed it");

    // An outage: the same key's invalidation fails twice. One key waits for replay.
    server.kill();
    invalidate(&key).await;
    invalidate(&key).await;
    assert_eq!(pending(), 1, "one key waits");

    // Redis is back: the replay confirms that one key.
    server.restart();
    let started = Instant::now();
    while pending() > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "replayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut queued = 0;
    let mut replayed = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (kind, key) = key.into_parts();
        if kind != MetricKind::Counter || key.name() != names::INVALIDATIONS {
            continue;
        }
        let DebugValue::Counter(value) = value else {
            unreachable!("a counter")
        };
        for label in key.labels() {
            match (label.key(), label.value()) {
                ("event", "queued") => queued += value,
                ("event", "replayed") => replayed += value,
                _ => {}
            }
        }
    }
    assert_eq!(
        (queued, replayed, pending()),
        (1, 1, 0),
        "queued and replayed say what went through the queue: one key, kept once, confirmed once"
    );
}
