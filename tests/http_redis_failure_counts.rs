//! When Redis fails during a request, the HTTP layer's `Cache-Status` and its counts agree.
//! Redis failing before the handler ran (the read or the claim timed out, the breaker is open):
//! `cachette; fwd=miss; detail=store-error`, counted once as `error` (a miss whose store
//! failed, as for `#[cached]`). Redis failing at the write, after it answered the miss:
//! `cachette; fwd=miss; detail=not-stored`, counted once as the `miss` it was, the failure
//! kept as the backend's last error (`health()`). Neither says `stored`; a stale entry
//! revalidated meanwhile says `fwd=stale; fwd-status=200` with the same details, counted the
//! same way. Driven in process against a real redis-server, frozen with SIGSTOP (or its writes
//! held with `CLIENT PAUSE WRITE`), on the redis and tiered backends.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use cachette::http::{CacheLayer, CachePolicy};
use cachette::{
    configure, health, metric_names as names, stats, RedisBackend, TestClock, TieredBackend,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use support::redis_server::RedisServer;
use tokio::sync::Notify;
use tower::ServiceExt;

const RESPONSES: &str = "cachette::http response";
const OP_TIMEOUT: Duration = Duration::from_millis(200);
const TTL: Duration = Duration::from_secs(60);
const SIE: Duration = Duration::from_secs(600);
/// Past the TTL, within stale-if-error.
const PAST_TTL: Duration = Duration::from_secs(61);

/// The handler's run count, and a gate it can be held at.
#[derive(Default)]
struct Service {
    runs: AtomicUsize,
    hold: AtomicBool,
    started: Notify,
    go: Notify,
}

async fn handler(State(service): State<Arc<Service>>, Path(id): Path<u64>) -> String {
    service.runs.fetch_add(1, Ordering::SeqCst);
    if service.hold.load(Ordering::SeqCst) {
        service.started.notify_one();
        service.go.notified().await;
    }
    format!("user {id}")
}

/// The `Cache-Status` of one request through `app`, in process.
async fn cache_status(app: Router, path: &str) -> String {
    let request = Request::builder()
        .uri(path)
        .body(Body::empty())
        .expect("valid request");
    let response = app.oneshot(request).await.expect("infallible");
    assert!(response.status().is_success(), "{path}: {response:?}");
    response
        .headers()
        .get("cache-status")
        .map(|value| value.to_str().expect("text").to_owned())
        .unwrap_or_default()
}

/// The recorder's request counters for `backend`'s response site, by `result`.
fn exported(snapshotter: &Snapshotter, backend: &str) -> BTreeMap<String, u64> {
    cachette::publish_metrics();
    let mut sums = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (kind, key) = key.into_parts();
        let label = |wanted: &str| {
            key.labels()
                .find(|label| label.key() == wanted)
                .map(|label| label.value().to_owned())
        };
        if kind != MetricKind::Counter
            || key.name() != names::REQUESTS
            || label("site").as_deref() != Some(RESPONSES)
            || label("backend").as_deref() != Some(backend)
        {
            continue;
        }
        let DebugValue::Counter(value) = value else {
            unreachable!("a counter")
        };
        *sums.entry(label("result").unwrap_or_default()).or_default() += value;
    }
    sums.retain(|_, count| *count > 0);
    sums
}

async fn failures_are_counted_as_cache_status_says(
    backend: &str,
    server: &RedisServer,
    clock: &TestClock,
    snapshotter: &Snapshotter,
) {
    let service = Arc::new(Service::default());
    let policy = CachePolicy::new(TTL).backend(backend);
    let app = Router::new()
        .route(
            "/users/{id}",
            get(handler).layer(CacheLayer::new(policy.clone())),
        )
        .route(
            "/stale/{id}",
            get(handler).layer(CacheLayer::new(policy.stale_if_error(SIE))),
        )
        .with_state(Arc::clone(&service));

    // Stale entries revalidated while Redis fails: sent fresh, and not said to be stored.
    for id in [1, 2] {
        let stored = cache_status(app.clone(), &format!("/stale/{id}")).await;
        assert_eq!(stored, "cachette; fwd=miss; stored; ttl=60", "{backend}");
    }
    clock.advance(PAST_TTL);
    {
        // Reads answer, writes (the claim's script) wait: the claim times out.
        let _paused = server.pause_writes(10_000);
        let claim_failed = cache_status(app.clone(), "/stale/1").await;
        // On tiered, the stale entry is read by the claim itself unless L1 holds it (once its
        // bus is subscribed): then the read failed, a plain `error` too.
        let read_failed =
            backend == "tiered" && claim_failed == "cachette; fwd=miss; detail=store-error";
        assert!(
            read_failed
                || claim_failed == "cachette; fwd=stale; fwd-status=200; detail=store-error",
            "{backend}: the revalidation's claim failed: {claim_failed}"
        );
    }
    service.hold.store(true, Ordering::SeqCst);
    let request = tokio::spawn(cache_status(app.clone(), "/stale/2"));
    service.started.notified().await;
    server.pause();
    service.hold.store(false, Ordering::SeqCst);
    service.go.notify_one();
    let fill_failed = request.await.expect("the request");
    server.resume();
    assert_eq!(
        fill_failed, "cachette; fwd=stale; fwd-status=200; detail=not-stored",
        "{backend}: the revalidation's fill failed"
    );

    // Redis answers the read and the claim, then freezes while the handler runs: the fill
    // times out.
    service.hold.store(true, Ordering::SeqCst);
    let request = tokio::spawn(cache_status(app.clone(), "/users/1"));
    service.started.notified().await;
    server.pause();
    service.hold.store(false, Ordering::SeqCst);
    service.go.notify_one();
    let write_failed = request.await.expect("the request");
    assert_eq!(
        write_failed, "cachette; fwd=miss; detail=not-stored",
        "{backend}: the fill failed"
    );
    let last_error = health()
        .into_iter()
        .find(|health| health.name == backend)
        .and_then(|health| health.last_error);
    assert!(last_error.is_some(), "{backend}: the failed fill is kept");

    // Still frozen: the read (or the claim) times out, then the breaker opens and refuses.
    for id in 2..6 {
        let read_failed = cache_status(app.clone(), &format!("/users/{id}")).await;
        assert_eq!(
            read_failed, "cachette; fwd=miss; detail=store-error",
            "{backend}: request {id}, Redis unavailable"
        );
    }
    server.resume();
    assert_eq!(service.runs.load(Ordering::SeqCst), 9, "{backend}");

    // One response site per layer, with the same labels: summed, as the exporter sums them.
    let sites: Vec<_> = stats()
        .sites
        .into_iter()
        .filter(|site| site.function == RESPONSES && site.backend == backend)
        .collect();
    assert_eq!(sites.len(), 2, "{backend}: one response site per layer");
    let sum = |field: fn(&cachette::SiteStats) -> u64| sites.iter().map(field).sum::<u64>();
    let counted = [
        sum(|site| site.hits),
        sum(|site| site.misses),
        sum(|site| site.errors),
        sum(|site| site.stale),
        sum(|site| site.bypasses),
    ];
    assert_eq!(
        counted,
        [0, 4, 5, 0, 0],
        "{backend}: stats() [hits, misses, errors, stale, bypasses] against Cache-Status"
    );
    assert_eq!(
        sum(|site| site.loads),
        9,
        "{backend}: every handler run is a load"
    );
    let expected: BTreeMap<String, u64> = [("miss".to_owned(), 4), ("error".to_owned(), 5)].into();
    assert_eq!(
        exported(snapshotter, backend),
        expected,
        "{backend}: {} against Cache-Status",
        names::REQUESTS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failures_are_counted_as_cache_status_says() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder");
    let redis_server = RedisServer::start();
    let tiered_server = RedisServer::start();
    let clock = TestClock::new();
    let redis = |server: &RedisServer| {
        RedisBackend::builder()
            .url(server.url())
            .op_timeout(OP_TIMEOUT)
            .clock(&clock)
            .build()
            .expect("valid configuration")
    };
    configure()
        .redis("redis", redis(&redis_server))
        .tiered(
            "tiered",
            TieredBackend::builder(redis(&tiered_server)).build(),
        )
        .install()
        .expect("configured once");

    failures_are_counted_as_cache_status_says("redis", &redis_server, &clock, &snapshotter).await;
    failures_are_counted_as_cache_status_says("tiered", &tiered_server, &clock, &snapshotter).await;
}
