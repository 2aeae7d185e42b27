//! Heap allocations per hit with a real metrics recorder installed (metrics-exporter-prometheus')
//! and a tracing subscriber at INFO, as `tests/alloc_per_hit.rs` counts them without either: a
//! hit moves live metric handles, builds no span, and still allocates nothing. A binary of its own, since a recorder is process-wide and must be
//! installed before the first cached call (sites register their handles then).

use cachette::{cached, configure, stats, RedisBackend, TieredBackend};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

mod support;
use support::alloc_count::{exactly, per_hit, Counting, HITS, KEYS};
use support::redis_server::RedisServer;

#[global_allocator]
static GLOBAL: Counting = Counting;

#[cached(ttl = "600s", key = "n:<id>")]
async fn number(id: u64) -> u64 {
    id * 2
}

#[cached(ttl = "600s", key = "tiered:<id>", backend = "tiered")]
async fn tiered(id: u64) -> u64 {
    id * 2
}

/// What the exporter shows for `function`'s hits, summed over tiers.
fn exported_hits(handle: &PrometheusHandle, function: &str) -> u64 {
    let site = format!("site=\"alloc_per_hit_recorded::{function}\"");
    handle
        .render()
        .lines()
        .filter(|line| line.starts_with("cachette_requests_total{"))
        .filter(|line| line.contains(&site) && line.contains("result=\"hit\""))
        .map(|line| {
            let value = line.rsplit(' ').next().expect("a value");
            value.parse::<u64>().expect("a whole number")
        })
        .sum()
}

#[test]
fn a_hit_with_a_recorder_installed_allocates_nothing() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder");
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .finish(),
    )
    .expect("the only subscriber");
    let server = RedisServer::start();
    let l2 = RedisBackend::builder()
        .url(server.url())
        .build()
        .expect("valid configuration");
    // A slow heartbeat, so that the subscriber does nothing while this thread counts.
    let backend = TieredBackend::builder(l2)
        .heartbeat(std::time::Duration::from_secs(600))
        .build();
    configure()
        .tiered("tiered", backend.clone())
        .install()
        .expect("configured once");
    use futures::executor::block_on;

    let memory = per_hit(|id| assert_eq!(block_on(number(id)), id * 2));
    println!("allocations per memory hit, recorder installed: u64 {memory}");
    assert!(exactly(memory, 0.0), "nothing: {memory}");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tiered(0).await;
        backend.l1_ready().await;
    });
    runtime.block_on(async {
        for id in 0..KEYS {
            tiered(id).await; // L1 fills once the bus is up
        }
    });
    let warm = per_hit(|id| assert_eq!(block_on(tiered(id)), id * 2));
    println!("allocations per warm tiered hit, recorder installed: u64 {warm}");
    assert!(exactly(warm, 0.0), "nothing: {warm}");

    // The recorder saw every hit (its handles were live, not the facade's no-ops), and shows
    // what `stats()` counts, call for call.
    cachette::publish_metrics();
    let stats = stats();
    for function in ["number", "tiered"] {
        let counted = stats.site(function).expect("ran").hits;
        assert!(counted >= HITS, "{function}: {counted} hits");
        assert_eq!(exported_hits(&handle, function), counted, "{function}");
    }
}
