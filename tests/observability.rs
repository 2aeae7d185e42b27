//! What the cache says about itself, checked against what the test did: the `metrics` counters
//! (read through metrics-util's debugging recorder), the spans (read through a capturing
//! subscriber), `stats()` and `health()`, on each backend, including a stampede and a Redis
//! outage. One test: the recorder and the subscriber are process-wide, and the backends'
//! connections live on the runtime that first used them.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachette::{
    cached, configure, health, invalidates, metric_names as names, stats, BreakerState,
    MemoryBackend, RedisBackend, TestClock, TieredBackend,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use support::redis_server::RedisServer;
use tokio::sync::Notify;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

// ---------------------------------------------------------------------------------------------
// What the recorder saw.

/// One snapshot of the recorder: (kind, name, labels) -> value. Taking it resets counters and
/// gauges in the debugging recorder, so each scenario reads its own series once, at its end.
struct Seen(BTreeMap<(MetricKind, String, BTreeMap<String, String>), DebugValue>);

impl Seen {
    fn take(snapshotter: &Snapshotter) -> Seen {
        // In-process hits are exported from the sites' own counters: exact once published.
        cachette::publish_metrics();
        let mut seen = BTreeMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let labels = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            seen.insert((kind, key.name().to_owned(), labels), value);
        }
        Seen(seen)
    }

    /// The sum of the counters named `name` whose labels include `labels`.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.matching(MetricKind::Counter, name, labels)
            .map(|value| match value {
                DebugValue::Counter(value) => *value,
                _ => unreachable!("a counter"),
            })
            .sum()
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut values = self.matching(MetricKind::Gauge, name, labels);
        let value = values.next().map(|value| match value {
            DebugValue::Gauge(value) => value.into_inner(),
            _ => unreachable!("a gauge"),
        });
        assert!(values.next().is_none(), "one gauge {name} {labels:?}");
        value
    }

    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.matching(MetricKind::Histogram, name, labels)
            .map(|value| match value {
                DebugValue::Histogram(values) => values.len(),
                _ => unreachable!("a histogram"),
            })
            .sum()
    }

    fn matching<'a>(
        &'a self,
        kind: MetricKind,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a DebugValue> + 'a {
        self.0
            .iter()
            .filter(move |((k, n, l), _)| {
                *k == kind
                    && n == name
                    && labels
                        .iter()
                        .all(|(key, value)| l.get(*key).map(String::as_str) == Some(*value))
            })
            .map(|(_, value)| value)
    }

    /// No label anywhere holds a cache key.
    fn assert_no_key_labels(&self, keys: &[&str]) {
        for (_, name, labels) in self.0.keys() {
            for value in labels.values() {
                assert!(
                    !keys.iter().any(|key| value.contains(key)),
                    "{name} has a label holding a key: {labels:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the subscriber saw: the fields of every closed `cached` span.

type Fields = BTreeMap<String, String>;

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Fields>>>);

impl Spans {
    fn of(&self, site: &str) -> Vec<Fields> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|fields| fields.get("site").map(String::as_str) == Some(site))
            .cloned()
            .collect()
    }
}

struct Visit<'a>(&'a mut Fields);

impl tracing::field::Visit for Visit<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if attrs.metadata().name() != "cached" {
            return;
        }
        let mut fields = Fields::new();
        attrs.record(&mut Visit(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(&mut Visit(fields));
            }
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(fields) = span.extensions_mut().remove::<Fields>() {
                self.0.lock().unwrap().push(fields);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sites.

static MEMORY_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "m:<id>", backend = "memory.obs")]
async fn memory_get(id: u64) -> u64 {
    MEMORY_LOADS.fetch_add(1, Ordering::SeqCst);
    id * 10
}

#[invalidates("m:<id>")]
async fn memory_put(id: u64) {
    let _ = id;
}

static GATE_STARTED: Notify = Notify::const_new();
static GATE_OPEN: Notify = Notify::const_new();

/// A load that waits until the test opens the gate, so that followers pile up behind it.
async fn gated(value: u64) -> u64 {
    GATE_STARTED.notify_one();
    GATE_OPEN.notified().await;
    value
}

#[cached(ttl = 60, key = "stampede", backend = "memory.obs")]
async fn memory_stampede() -> u64 {
    gated(7).await
}

#[cached(ttl = 60, key = "fails:<id>", backend = "memory.obs")]
async fn memory_fails(id: u64) -> Result<u64, String> {
    Err(format!("no {id}"))
}

#[cached(ttl = 60, key = "panics", backend = "memory.obs")]
async fn memory_panics() -> u64 {
    panic!("the loader panics")
}

#[cached(ttl = 60, key = "never", backend = "memory.obs")]
async fn memory_never() -> u64 {
    std::future::pending().await
}

static HOT_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "hot:<id>", backend = "memory.hot")]
async fn hot(id: u64) -> u64 {
    HOT_LOADS.fetch_add(1, Ordering::SeqCst);
    tokio::task::yield_now().await;
    id
}

static REDIS_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "r:<id>", backend = "redis.obs")]
async fn redis_get(id: u64) -> u64 {
    REDIS_LOADS.fetch_add(1, Ordering::SeqCst);
    id + 1
}

/// The same entries through a second backend instance: another process's view.
#[cached(ttl = 60, key = "r:<id>", backend = "redis.obs2")]
async fn redis_get_elsewhere(id: u64) -> u64 {
    REDIS_LOADS.fetch_add(1, Ordering::SeqCst);
    id + 1
}

#[cached(ttl = 60, key = "r:gated", backend = "redis.obs")]
async fn redis_gated() -> u64 {
    gated(99).await
}

#[cached(ttl = 60, key = "r:gated", backend = "redis.obs2")]
async fn redis_gated_elsewhere() -> u64 {
    99
}

#[invalidates("r:<id>")]
async fn redis_put(id: u64) {
    let _ = id;
}

#[cached(ttl = 60, key = "t:<id>", backend = "tiered.obs")]
async fn tiered_get(id: u64) -> u64 {
    id + 2
}

#[cached(ttl = 60, key = "t:<id>", backend = "tiered.obs2")]
async fn tiered_get_elsewhere(id: u64) -> u64 {
    id + 2
}

#[cached(ttl = 60, key = "t:stampede", backend = "tiered.obs")]
async fn tiered_stampede() -> u64 {
    gated(5).await
}

#[invalidates("t:<id>")]
async fn tiered_put(id: u64) {
    let _ = id;
}

const SITE_PREFIX: &str = "observability::";

fn site(name: &str) -> String {
    format!("{SITE_PREFIX}{name}")
}

fn requests(seen: &Seen, site_name: &str, result: &str, tier: &str) -> u64 {
    let site = site(site_name);
    seen.counter(
        names::REQUESTS,
        &[("site", &site), ("result", result), ("tier", tier)],
    )
}

fn loads(seen: &Seen, site_name: &str, outcome: &str) -> u64 {
    let site = site(site_name);
    seen.counter(names::LOADS, &[("site", &site), ("outcome", outcome)])
}

fn coalesced(seen: &Seen, site_name: &str, scope: &str) -> u64 {
    let site = site(site_name);
    seen.counter(names::COALESCED, &[("site", &site), ("scope", scope)])
}

/// Polls a future once, so that a follower has joined the flight before the test goes on.
fn poll_once<F: std::future::Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
    let waker = futures::task::noop_waker();
    std::pin::Pin::new(future).poll(&mut std::task::Context::from_waker(&waker))
}

/// Runs `stampede` as one leader held at the gate and 63 followers joined behind it, then
/// opens the gate; every caller gets `expected`.
async fn stampede<F, Fut>(stampede: F, expected: u64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let leader = tokio::spawn(stampede());
    GATE_STARTED.notified().await;
    let mut followers: Vec<_> = (0..63).map(|_| Box::pin(stampede())).collect();
    for follower in &mut followers {
        assert!(poll_once(follower).is_pending(), "a follower waits");
    }
    GATE_OPEN.notify_one();
    assert_eq!(leader.await.expect("the leader completes"), expected);
    for follower in followers {
        assert_eq!(follower.await, expected);
    }
}

/// Waits until `done` holds, for at most `limit`.
async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_counter_equals_what_the_test_did() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder");
    let spans = Spans::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(
            spans
                .clone()
                .with_filter(tracing::level_filters::LevelFilter::DEBUG),
        ),
    )
    .expect("the only subscriber");

    let server = RedisServer::start();
    let redis = |prefix: &str| {
        RedisBackend::builder()
            .url(server.url())
            .prefix(prefix)
            .op_timeout(Duration::from_millis(200))
            .build()
            .expect("valid configuration")
    };
    let tiered = |prefix: &str| {
        TieredBackend::builder(redis(prefix))
            .heartbeat(Duration::from_millis(100))
            .build()
    };
    let (tiered_obs, tiered_obs2) = (tiered("tobs"), tiered("tobs"));
    let clock = TestClock::new();
    configure()
        .memory(
            "memory.refresh",
            MemoryBackend::builder().clock(&clock).build(),
        )
        .memory(
            "memory.obs",
            MemoryBackend::builder().max_entries(1_000).build(),
        )
        .memory("memory.hot", MemoryBackend::default())
        .redis("redis.obs", redis("robs"))
        .redis("redis.obs2", redis("robs"))
        .tiered("tiered.obs", tiered_obs.clone())
        .tiered("tiered.obs2", tiered_obs2.clone())
        .install()
        .expect("configured once");

    memory_scenario(&snapshotter, &spans).await;
    stats_are_exact_under_64_tasks().await;
    redis_scenario(&snapshotter, &server).await;
    tiered_scenario(&snapshotter, &tiered_obs, &tiered_obs2).await;
    hits_are_published_without_being_asked(&snapshotter).await;
    refreshes_ahead_are_exported(&snapshotter, &clock).await;
}

static REFRESHED_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    ttl = "60s",
    key = "ra:<id>",
    backend = "memory.refresh",
    refresh = "50s"
)]
async fn refreshed_ahead(id: u64) -> u64 {
    id + REFRESHED_LOADS.fetch_add(1, Ordering::SeqCst) as u64
}

/// A hit past `refresh` starts one refresh in the background: `cachette_refreshes_total`
/// says so, as `stats()` does, and it is a load, not a request.
async fn refreshes_ahead_are_exported(snapshotter: &Snapshotter, clock: &TestClock) {
    assert_eq!(refreshed_ahead(1).await, 1);
    let before = Seen::take(snapshotter);
    let labels = [("site", site("refreshed_ahead"))];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(
        before
            .matching(MetricKind::Counter, names::REFRESHES, &labels)
            .next()
            .is_some(),
        "{}: registered (at 0) when a site with `refresh` first runs",
        names::REFRESHES
    );
    assert_eq!(before.counter(names::REFRESHES, &labels), 0);
    clock.advance(Duration::from_secs(51));
    assert_eq!(refreshed_ahead(1).await, 1, "the entry, at once");
    // The refresh runs in the background and may land between these two (no test clock
    // holds it): either value, and still one refresh.
    for _ in 0..2 {
        let value = refreshed_ahead(1).await;
        assert!(
            value == 1 || value == 2,
            "the entry or its refresh: {value}"
        );
    }
    let loads_counted = || {
        stats()
            .site("observability::refreshed_ahead")
            .is_some_and(|site| site.loads == 2)
    };
    eventually("the refresh's load", Duration::from_secs(10), loads_counted).await;
    assert_eq!(REFRESHED_LOADS.load(Ordering::SeqCst), 2);
    let seen = Seen::take(snapshotter);
    assert_eq!(seen.counter(names::REFRESHES, &labels), 1, "one refresh");
    assert_eq!(
        loads(&seen, "refreshed_ahead", "ok"),
        1,
        "the refresh's load"
    );
    assert_eq!(requests(&seen, "refreshed_ahead", "miss", "memory"), 0);
    let stats = stats();
    let counted = stats
        .site("observability::refreshed_ahead")
        .expect("the site");
    assert_eq!((counted.refreshes, counted.loads), (1, 2), "stats() agrees");
}

#[cached(ttl = 60, key = "published", backend = "memory.obs")]
async fn published() -> u64 {
    1
}

/// In-process hits reach the exporter by the publisher thread, with no `publish_metrics()`.
async fn hits_are_published_without_being_asked(snapshotter: &Snapshotter) {
    for _ in 0..4 {
        assert_eq!(published().await, 1);
    }
    let site = site("published");
    let labels = [
        ("site", site.as_str()),
        ("result", "hit"),
        ("tier", "memory"),
    ];
    let started = Instant::now();
    loop {
        let exported =
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .find_map(|(key, _, _, value)| {
                    let key = key.key();
                    let matches = key.name() == names::REQUESTS
                        && labels.iter().all(|(name, wanted)| {
                            key.labels()
                                .any(|label| label.key() == *name && label.value() == *wanted)
                        });
                    match (matches, value) {
                        (true, DebugValue::Counter(count)) => Some(count),
                        _ => None,
                    }
                });
        if exported == Some(3) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the publisher thread exports the 3 hits: {exported:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// N hits, M misses, K invalidations, a stampede, a failing, a panicking and a cancelled load.
async fn memory_scenario(snapshotter: &Snapshotter, spans: &Spans) {
    const M: u64 = 5;
    const N: u64 = 20;
    const K: u64 = 3;
    for id in 0..M {
        assert_eq!(memory_get(id).await, id * 10);
    }
    for round in 0..N {
        assert_eq!(memory_get(round % M).await, (round % M) * 10);
    }
    for id in 0..K {
        memory_put(id).await;
    }
    stampede(memory_stampede, 7).await;
    assert!(memory_fails(1).await.is_err());
    let panicked = tokio::spawn(memory_panics()).await;
    assert!(panicked.expect_err("the load panics").is_panic());
    let mut cancelled = Box::pin(memory_never());
    assert!(poll_once(&mut cancelled).is_pending());
    drop(cancelled);

    let seen = Seen::take(snapshotter);
    let get = "memory_get";
    assert_eq!(requests(&seen, get, "hit", "memory"), N);
    assert_eq!(requests(&seen, get, "miss", "memory"), M);
    assert_eq!(loads(&seen, get, "ok"), M);
    assert_eq!(MEMORY_LOADS.load(Ordering::SeqCst) as u64, M);
    assert_eq!(
        seen.histogram_count(names::LOAD_DURATION, &[("site", &site(get))]),
        M as usize
    );
    assert_eq!(requests(&seen, "memory_stampede", "miss", "memory"), 64);
    assert_eq!(loads(&seen, "memory_stampede", "ok"), 1);
    assert_eq!(coalesced(&seen, "memory_stampede", "process"), 63);
    let stampede_site = site("memory_stampede");
    assert_eq!(
        seen.histogram_count(
            names::COALESCED_WAIT,
            &[("site", &stampede_site), ("scope", "process")]
        ),
        63
    );
    assert_eq!(loads(&seen, "memory_fails", "err"), 1);
    assert_eq!(loads(&seen, "memory_panics", "panic"), 1);
    assert_eq!(loads(&seen, "memory_never", "cancelled"), 1);
    // An `#[invalidates]` reaches every configured backend.
    for backend in [
        "memory",
        "memory.obs",
        "memory.hot",
        "redis.obs",
        "tiered.obs",
    ] {
        assert_eq!(
            seen.counter(
                names::INVALIDATIONS,
                &[("backend", backend), ("event", "sent")]
            ),
            K,
            "{backend}"
        );
    }
    let evicted = |cause| {
        seen.counter(
            names::EVICTIONS,
            &[("backend", "memory.obs"), ("cause", cause)],
        )
    };
    assert_eq!(evicted("explicit"), K);
    assert_eq!(evicted("size"), 0);
    // memory_get's five entries less three, and the stampede's.
    let entries = seen.gauge(
        names::ENTRIES,
        &[("backend", "memory.obs"), ("tier", "memory")],
    );
    assert_eq!(entries, Some((M - K + 1) as f64));
    seen.assert_no_key_labels(&["m:0", "m:1", "fails:1"]);
    // A memory backend has no Redis and no bus: no series says one is down.
    for gauge in [
        names::BREAKER_OPEN,
        names::BUS_CONNECTED,
        names::PENDING_INVALIDATIONS,
    ] {
        assert_eq!(
            seen.gauge(gauge, &[("backend", "memory.obs")]),
            None,
            "{gauge}"
        );
    }
    assert_eq!(
        seen.gauge(names::BUS_CONNECTED, &[("backend", "redis.obs")]),
        None,
        "nor a redis one a bus"
    );

    let stats = stats();
    let get_stats = stats.site(&site(get)).expect("memory_get ran");
    assert_eq!(
        (get_stats.hits, get_stats.misses, get_stats.loads),
        (N, M, M)
    );
    assert_eq!(get_stats.hit_ratio(), Some(N as f64 / (N + M) as f64));
    assert!(get_stats.mean_load_time().is_some());
    let stampede_stats = stats
        .site("memory_stampede")
        .expect("by path without the crate");
    assert_eq!(
        (
            stampede_stats.misses,
            stampede_stats.loads,
            stampede_stats.coalesced
        ),
        (64, 1, 63)
    );
    let failures = |name| stats.site(&site(name)).expect("ran").load_failures;
    assert_eq!(
        (
            failures("memory_fails"),
            failures("memory_panics"),
            failures("memory_never")
        ),
        (1, 1, 1)
    );

    // One span per call, carrying what the call was.
    let get_spans = spans.of(&site(get));
    assert_eq!(get_spans.len() as u64, M + N);
    let count = |spans: &[Fields], result: &str| {
        spans
            .iter()
            .filter(|fields| fields.get("result").map(String::as_str) == Some(result))
            .count() as u64
    };
    assert_eq!(count(&get_spans, "hit"), N);
    assert_eq!(count(&get_spans, "miss"), M);
    assert!(get_spans.iter().all(|fields| {
        fields.get("backend").map(String::as_str) == Some("memory.obs")
            && fields.get("tier").map(String::as_str) == Some("memory")
    }));
    let stampede_spans = spans.of(&stampede_site);
    assert_eq!(stampede_spans.len(), 64);
    let coalesced_spans = stampede_spans
        .iter()
        .filter(|fields| fields.get("coalesced").map(String::as_str) == Some("true"))
        .count();
    assert_eq!(coalesced_spans, 63);
}

/// 64 tasks on a multi-thread runtime, 500 calls each over 8 keys: the snapshot adds up.
async fn stats_are_exact_under_64_tasks() {
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            tokio::spawn(async move {
                for call in 0..500u64 {
                    let id = (task + call) % 8;
                    assert_eq!(hot(id).await, id);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("completes");
    }
    let stats = stats();
    let hot = stats.site(&site("hot")).expect("hot ran");
    assert_eq!(hot.hits + hot.misses, 64 * 500);
    assert_eq!(hot.loads, HOT_LOADS.load(Ordering::SeqCst) as u64);
    assert_eq!(
        hot.misses,
        hot.loads + hot.coalesced,
        "a miss loads or waits"
    );
    assert_eq!(hot.load_failures, 0);
}

/// Hits, misses, an invalidation, a cross-process wait, and an outage with its replay.
async fn redis_scenario(snapshotter: &Snapshotter, server: &RedisServer) {
    let _ = Seen::take(snapshotter);
    for id in 0..3 {
        assert_eq!(redis_get(id).await, id + 1);
    }
    for id in 0..3 {
        assert_eq!(redis_get(id).await, id + 1);
        assert_eq!(redis_get_elsewhere(id).await, id + 1);
    }
    redis_put(0).await;
    assert_eq!(redis_get_elsewhere(0).await, 1);

    // Another process's load: `redis.obs` holds the lock at the gate while `redis.obs2`
    // waits for it, registered as a waiter in Redis.
    let leader = tokio::spawn(redis_gated());
    GATE_STARTED.notified().await;
    let waiter = tokio::spawn(redis_gated_elsewhere());
    let mut connection = server.connection().await;
    let started = Instant::now();
    loop {
        let waiters: Vec<String> = redis::cmd("KEYS")
            .arg("robs:*:w")
            .query_async(&mut connection)
            .await
            .expect("redis answers");
        if !waiters.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the waiter registers"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    GATE_OPEN.notify_one();
    assert_eq!(leader.await.expect("completes"), 99);
    assert_eq!(waiter.await.expect("completes"), 99);

    let seen = Seen::take(snapshotter);
    assert_eq!(requests(&seen, "redis_get", "miss", "l2"), 3);
    assert_eq!(requests(&seen, "redis_get", "hit", "l2"), 3);
    assert_eq!(requests(&seen, "redis_get_elsewhere", "hit", "l2"), 3);
    assert_eq!(requests(&seen, "redis_get_elsewhere", "miss", "l2"), 1);
    assert_eq!(REDIS_LOADS.load(Ordering::SeqCst), 4);
    assert_eq!(
        seen.counter(
            names::INVALIDATIONS,
            &[("backend", "redis.obs"), ("event", "sent")]
        ),
        1
    );
    assert_eq!(coalesced(&seen, "redis_gated_elsewhere", "cluster"), 1);
    assert_eq!(requests(&seen, "redis_gated_elsewhere", "miss", "l2"), 1);
    assert_eq!(loads(&seen, "redis_gated_elsewhere", "ok"), 0);
    assert_eq!(
        seen.gauge(names::BREAKER_OPEN, &[("backend", "redis.obs")]),
        Some(0.0)
    );

    // The outage: three calls fail (and run uncached), opening the breaker; an invalidation
    // is queued.
    server.pause();
    for id in 10..13 {
        assert_eq!(redis_get(id).await, id + 1);
    }
    redis_put(1).await;
    let during = health();
    let obs = during
        .iter()
        .find(|b| b.name == "redis.obs")
        .expect("configured");
    assert_eq!(obs.breaker, Some(BreakerState::Open));
    assert!(obs.last_error.is_some());
    assert_eq!(obs.pending_invalidations, 1);
    assert!(!obs.is_healthy());
    let seen = Seen::take(snapshotter);
    assert_eq!(requests(&seen, "redis_get", "error", "l2"), 3);
    assert_eq!(loads(&seen, "redis_get", "ok"), 3);
    let obs_label = [("backend", "redis.obs")];
    assert_eq!(seen.gauge(names::BREAKER_OPEN, &obs_label), Some(1.0));
    assert_eq!(
        seen.counter(
            names::INVALIDATIONS,
            &[("backend", "redis.obs"), ("event", "queued")]
        ),
        1
    );
    assert_eq!(
        seen.gauge(names::PENDING_INVALIDATIONS, &obs_label),
        Some(1.0)
    );

    // Back: the replayer's probe closes the breaker and delivers the invalidation.
    server.resume();
    eventually("the backend recovers", Duration::from_secs(10), || {
        health()
            .iter()
            .find(|b| b.name == "redis.obs")
            .is_some_and(|b| b.is_healthy())
    })
    .await;
    let seen = Seen::take(snapshotter);
    assert_eq!(
        seen.counter(
            names::INVALIDATIONS,
            &[("backend", "redis.obs"), ("event", "replayed")]
        ),
        1
    );
    assert_eq!(seen.gauge(names::BREAKER_OPEN, &obs_label), Some(0.0));
    assert_eq!(
        seen.gauge(names::PENDING_INVALIDATIONS, &obs_label),
        Some(0.0)
    );
    assert_eq!(redis_get(1).await, 2);
    let stats = stats();
    let get = stats.site(&site("redis_get")).expect("ran");
    assert_eq!((get.hits, get.misses, get.errors), (3, 4, 3));
}

/// L1 and L2 hits, a stampede behind one L2 load, and an invalidation received over the bus.
async fn tiered_scenario(
    snapshotter: &Snapshotter,
    tiered_obs: &TieredBackend,
    tiered_obs2: &TieredBackend,
) {
    assert_eq!(tiered_get(0).await, 2);
    assert_eq!(tiered_get_elsewhere(0).await, 2);
    tiered_obs.l1_ready().await;
    tiered_obs2.l1_ready().await;
    let _ = Seen::take(snapshotter);
    for id in 1..4 {
        assert_eq!(tiered_get(id).await, id + 2); // L2 miss, load
        assert_eq!(tiered_get(id).await, id + 2); // L1 hit
        assert_eq!(tiered_get_elsewhere(id).await, id + 2); // L2 hit (its L1 is cold)
        assert_eq!(tiered_get_elsewhere(id).await, id + 2); // L1 hit
    }
    stampede(tiered_stampede, 5).await;
    let received = tiered_obs2.invalidations_received();
    tiered_put(1).await;
    eventually(
        "the peer hears the invalidation",
        Duration::from_secs(5),
        || tiered_obs2.invalidations_received() > received,
    )
    .await;

    let seen = Seen::take(snapshotter);
    assert_eq!(requests(&seen, "tiered_get", "miss", "l2"), 3);
    assert_eq!(requests(&seen, "tiered_get", "hit", "l1"), 3);
    assert_eq!(requests(&seen, "tiered_get_elsewhere", "hit", "l2"), 3);
    assert_eq!(requests(&seen, "tiered_get_elsewhere", "hit", "l1"), 3);
    assert_eq!(requests(&seen, "tiered_stampede", "miss", "l2"), 1);
    assert_eq!(requests(&seen, "tiered_stampede", "miss", "l1"), 63);
    assert_eq!(coalesced(&seen, "tiered_stampede", "process"), 63);
    assert_eq!(loads(&seen, "tiered_stampede", "ok"), 1);
    assert_eq!(
        seen.counter(
            names::INVALIDATIONS,
            &[("backend", "tiered.obs2"), ("event", "received")]
        ),
        1
    );
    assert_eq!(
        seen.counter(names::L1_FLUSHES, &[("backend", "tiered.obs")]),
        0
    );
    let stats = stats();
    let get = stats.site(&site("tiered_get")).expect("ran");
    assert_eq!((get.hits, get.l1_hits), (3, 3));
    let health = health();
    let obs = health
        .iter()
        .find(|b| b.name == "tiered.obs")
        .expect("configured");
    assert_eq!(
        (obs.kind, obs.bus_connected, obs.l1_in_use),
        ("tiered", Some(true), Some(true))
    );
    assert!(obs.is_healthy());
}
