//! The HTTP layer counts each answer once, as its `Cache-Status` says: a stale response served
//! (stale-while-revalidate, stale-if-error, throttled, collapsed onto a failed revalidation) is
//! `stale` in `stats()` and in `cachette_requests_total`, not the `hit` its store read was; a
//! revalidated one (`fwd=stale; ...; stored`, `fwd=stale; collapsed`) is a `miss`; 304s count
//! as the answer they stand for; a background revalidation is a refresh and a load, never a
//! second answer (`cachette_refreshes_total` exports it). The layer is driven in process
//! (tower's `oneshot`) over the memory backend and, against a real redis-server, the redis and
//! tiered backends, all on one `TestClock`.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cachette::http::{CacheLayer, CachePolicy};
use cachette::{
    configure, metric_names as names, stats, MemoryBackend, RedisBackend, TestClock, TieredBackend,
};
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use support::redis_server::RedisServer;
use tokio::sync::Notify;
use tower::ServiceExt;

const TTL: Duration = Duration::from_secs(60);
const SWR: Duration = Duration::from_secs(30);
const SIE: Duration = Duration::from_secs(600);
const THROTTLE: Duration = Duration::from_secs(10);
/// Within the stale-while-revalidate window.
const PAST_TTL: Duration = Duration::from_secs(61);
/// Past it, within stale-if-error.
const PAST_SWR: Duration = Duration::from_secs(91);
const RESPONSES: &str = "cachette::http response";

/// The handlers' switches and their run count.
#[derive(Default)]
struct Service {
    runs: AtomicUsize,
    version: AtomicUsize,
    failing: AtomicBool,
    /// Handlers say they started, then wait to be let go.
    hold: AtomicBool,
    started: Notify,
    go: Notify,
}

async fn handler(State(service): State<Arc<Service>>, Path(id): Path<u64>) -> Response {
    service.runs.fetch_add(1, Ordering::SeqCst);
    if service.hold.load(Ordering::SeqCst) {
        service.started.notify_one();
        service.go.notified().await;
    }
    if service.failing.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "failed").into_response();
    }
    let version = service.version.load(Ordering::SeqCst);
    format!("{id} v{version}").into_response()
}

/// Two layers on each backend, so two response sites with the same labels: the exporter's
/// series are their sums.
fn app(backend: &str, service: Arc<Service>) -> Router {
    let plain = CachePolicy::new(TTL).backend(backend);
    let stale = plain
        .clone()
        .stale_while_revalidate(SWR)
        .stale_if_error(SIE)
        .error_throttle(THROTTLE);
    Router::new()
        .route("/r/{id}", get(handler).layer(CacheLayer::new(stale)))
        .route("/p/{id}", get(handler).layer(CacheLayer::new(plain)))
        .with_state(service)
}

/// What the answers' `Cache-Status` values say the counters must hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Expected {
    hits: u64,
    misses: u64,
    stale: u64,
    coalesced: u64,
}

impl Expected {
    /// Counts one answer as its `Cache-Status` reports it (RFC 9211): a `detail=stale-*` is a
    /// stale entry served; forwarded (`fwd=`) and not served stale, the answer was loaded (a
    /// miss), whether the entry was missing or stale; otherwise a hit. `collapsed`: it waited
    /// for another request's run.
    fn count(&mut self, status: &str) {
        assert!(status.starts_with("cachette; "), "a cache status: {status}");
        if status.contains("detail=stale-while-revalidate")
            || status.contains("detail=stale-if-error")
        {
            self.stale += 1;
        } else if status.contains("fwd=") {
            self.misses += 1;
        } else {
            assert!(status.starts_with("cachette; hit; "), "{status}");
            self.hits += 1;
        }
        if status.contains("collapsed") {
            self.coalesced += 1;
        }
    }
}

struct Answer {
    status: StatusCode,
    cache_status: String,
    etag: String,
    body: String,
}

struct Run<'a> {
    backend: &'a str,
    app: Router,
    service: Arc<Service>,
    clock: &'a TestClock,
    expected: std::sync::Mutex<Expected>,
}

impl Run<'_> {
    /// One request through the router, in process; its answer counted in `expected`.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let answer = request(self.app.clone(), path, headers).await;
        self.expected
            .lock()
            .expect("lock")
            .count(&answer.cache_status);
        answer
    }

    /// `count` requests at once, each on its own task.
    async fn many(&self, path: &str, count: usize) -> Vec<Answer> {
        let requests: Vec<_> = (0..count)
            .map(|_| tokio::spawn(request(self.app.clone(), path.to_owned(), &[])))
            .collect();
        let mut answers = Vec::with_capacity(count);
        for request in requests {
            let answer = request.await.expect("a request");
            self.expected
                .lock()
                .expect("lock")
                .count(&answer.cache_status);
            answers.push(answer);
        }
        answers
    }

    fn expect_status(&self, answer: &Answer, prefix: &str) {
        assert!(
            answer.cache_status.starts_with(prefix),
            "{}: `{}`, not `{prefix}...`",
            self.backend,
            answer.cache_status
        );
    }

    /// A layer without stale windows: its entries are hits until the store drops them.
    async fn plain_hits(&self) {
        let stored = self.get("/p/1", &[]).await;
        self.expect_status(&stored, "cachette; fwd=miss; stored; ttl=60");
        for _ in 0..3 {
            let hit = self.get("/p/1", &[]).await;
            self.expect_status(&hit, "cachette; hit; ttl=60");
        }
    }

    /// Fresh hits and 304s, then stale-while-revalidate: the stale answers while the one
    /// background revalidation is held in its handler (a 304 among them), then the fresh one.
    async fn stale_while_revalidate(&self) {
        let backend = self.backend;
        let runs = self.runs();
        let stored = self.get("/r/1", &[]).await;
        self.expect_status(&stored, "cachette; fwd=miss; stored; ttl=60");
        let hit = self.get("/r/1", &[]).await;
        self.expect_status(&hit, "cachette; hit; ttl=60");
        let not_modified = self.get("/r/1", &[("if-none-match", &stored.etag)]).await;
        assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED, "{backend}");
        self.expect_status(&not_modified, "cachette; hit; ttl=60");

        self.service.version.fetch_add(1, Ordering::SeqCst);
        self.clock.advance(PAST_TTL);
        self.service.hold.store(true, Ordering::SeqCst);
        let stale = self.get("/r/1", &[]).await;
        self.expect_status(
            &stale,
            "cachette; hit; ttl=-1; detail=stale-while-revalidate",
        );
        assert_eq!(stale.body, stored.body, "{backend}: the stale response");
        // The background revalidation is now held in the handler.
        self.service.started.notified().await;
        for answer in self.many("/r/1", 5).await {
            self.expect_status(
                &answer,
                "cachette; hit; ttl=-1; detail=stale-while-revalidate",
            );
        }
        let stale_304 = self.get("/r/1", &[("if-none-match", &stored.etag)]).await;
        assert_eq!(stale_304.status, StatusCode::NOT_MODIFIED, "{backend}");
        self.expect_status(
            &stale_304,
            "cachette; hit; ttl=-1; detail=stale-while-revalidate",
        );
        assert_eq!(
            self.runs(),
            runs + 2,
            "{backend}: the fill and one revalidation"
        );
        self.service.hold.store(false, Ordering::SeqCst);
        self.service.go.notify_one();
        let started = Instant::now();
        loop {
            let answer = self.get("/r/1", &[]).await;
            if answer.body != stored.body {
                self.expect_status(&answer, "cachette; hit; ttl=60");
                break;
            }
            self.expect_status(
                &answer,
                "cachette; hit; ttl=-1; detail=stale-while-revalidate",
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{backend}: not revalidated within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            self.runs(),
            runs + 2,
            "{backend}: still the one revalidation"
        );
    }

    /// Stale-if-error: a 500 answered stale, a throttled stale answer, a failed revalidation
    /// many requests waited for, a revalidation answered with a 304, and one that many
    /// requests waited for and that stored.
    async fn stale_if_error(&self) {
        let backend = self.backend;
        let runs = self.runs();
        let stored = self.get("/r/2", &[]).await;
        self.expect_status(&stored, "cachette; fwd=miss; stored; ttl=60");
        self.clock.advance(PAST_SWR);
        self.service.failing.store(true, Ordering::SeqCst);
        let failed = self.get("/r/2", &[]).await;
        self.expect_status(
            &failed,
            "cachette; fwd=stale; fwd-status=500; ttl=-31; detail=stale-if-error",
        );
        assert_eq!(failed.body, stored.body, "{backend}");
        let throttled = self.get("/r/2", &[]).await;
        self.expect_status(&throttled, "cachette; hit; ttl=-31; detail=stale-if-error");

        // One failing run that several requests wait for.
        self.clock.advance(THROTTLE);
        self.service.hold.store(true, Ordering::SeqCst);
        let waiting = tokio::spawn({
            let app = self.app.clone();
            async move {
                let requests: Vec<_> = (0..5)
                    .map(|_| tokio::spawn(request(app.clone(), "/r/2".to_owned(), &[])))
                    .collect();
                let mut answers = Vec::new();
                for request in requests {
                    answers.push(request.await.expect("a request"));
                }
                answers
            }
        });
        self.service.started.notified().await;
        self.service.hold.store(false, Ordering::SeqCst);
        self.service.go.notify_one();
        for answer in waiting.await.expect("the requests") {
            self.expected
                .lock()
                .expect("lock")
                .count(&answer.cache_status);
            assert!(
                answer.cache_status.ends_with("detail=stale-if-error"),
                "{backend}: {}",
                answer.cache_status
            );
        }
        assert_eq!(self.runs(), runs + 3, "{backend}: one run per interval");

        // Recovered: the revalidated response is the one the client holds, so a 304.
        self.service.failing.store(false, Ordering::SeqCst);
        self.clock.advance(THROTTLE);
        let revalidated = self.get("/r/2", &[("if-none-match", &stored.etag)]).await;
        assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED, "{backend}");
        self.expect_status(
            &revalidated,
            "cachette; fwd=stale; fwd-status=200; stored; ttl=60",
        );
        let hit = self.get("/r/2", &[]).await;
        self.expect_status(&hit, "cachette; hit; ttl=60");

        // A successful revalidation that several requests wait for.
        self.service.version.fetch_add(1, Ordering::SeqCst);
        self.clock.advance(PAST_SWR);
        self.service.hold.store(true, Ordering::SeqCst);
        let waiting = tokio::spawn({
            let app = self.app.clone();
            async move {
                let requests: Vec<_> = (0..5)
                    .map(|_| tokio::spawn(request(app.clone(), "/r/2".to_owned(), &[])))
                    .collect();
                let mut answers = Vec::new();
                for request in requests {
                    answers.push(request.await.expect("a request"));
                }
                answers
            }
        });
        self.service.started.notified().await;
        self.service.hold.store(false, Ordering::SeqCst);
        self.service.go.notify_one();
        let answers = waiting.await.expect("the requests");
        let mut stored_by = 0;
        for answer in &answers {
            self.expected
                .lock()
                .expect("lock")
                .count(&answer.cache_status);
            assert_ne!(answer.body, stored.body, "{backend}: the fresh response");
            stored_by += usize::from(answer.cache_status.contains("stored"));
        }
        assert_eq!(stored_by, 1, "{backend}: one revalidation stored");
        assert_eq!(self.runs(), runs + 5, "{backend}");
    }

    /// A request dropped (its client gone) while it waits for its revalidation has no
    /// `Cache-Status`; it is counted once all the same, as the miss it was (it was forwarded),
    /// and the revalidation it started still stores.
    async fn a_dropped_revalidation_counts_once(&self) {
        let backend = self.backend;
        let runs = self.runs();
        let stored = self.get("/r/3", &[]).await;
        self.expect_status(&stored, "cachette; fwd=miss; stored; ttl=60");
        self.service.version.fetch_add(1, Ordering::SeqCst);
        self.clock.advance(PAST_SWR);
        self.service.hold.store(true, Ordering::SeqCst);
        let dropped = tokio::spawn(request(self.app.clone(), "/r/3", &[]));
        self.service.started.notified().await;
        dropped.abort();
        let Err(cancelled) = dropped.await else {
            panic!("{backend}: answered while its handler was held");
        };
        assert!(cancelled.is_cancelled(), "{backend}");
        self.expected.lock().expect("lock").misses += 1;
        self.service.hold.store(false, Ordering::SeqCst);
        self.service.go.notify_one();
        // The revalidation's own task goes on: a request waits for it, or finds its entry.
        let after = self.get("/r/3", &[]).await;
        assert_ne!(
            after.body, stored.body,
            "{backend}: the revalidated response"
        );
        assert_eq!(
            self.runs(),
            runs + 2,
            "{backend}: the fill and the one revalidation"
        );
    }

    fn runs(&self) -> usize {
        self.service.runs.load(Ordering::SeqCst)
    }

    /// `stats()` of this backend's response sites, against the answers.
    fn stats_match(&self, refreshes: u64) {
        let backend = self.backend;
        let expected = self.expected.lock().expect("lock").clone();
        let sites: Vec<_> = stats()
            .sites
            .into_iter()
            .filter(|site| site.function == RESPONSES && site.backend == backend)
            .collect();
        assert_eq!(sites.len(), 2, "{backend}: one response site per layer");
        let sum = |field: fn(&cachette::SiteStats) -> u64| sites.iter().map(field).sum::<u64>();
        let counted = Expected {
            hits: sum(|site| site.hits),
            misses: sum(|site| site.misses),
            stale: sum(|site| site.stale),
            coalesced: sum(|site| site.coalesced),
        };
        assert_eq!(
            counted, expected,
            "{backend}: stats() against the answers' Cache-Status"
        );
        assert_eq!(
            sum(|site| site.loads),
            self.runs() as u64,
            "{backend}: every handler run is one load"
        );
        assert_eq!(
            sum(|site| site.refreshes),
            refreshes,
            "{backend}: background revalidations are refreshes"
        );
        assert_eq!(sum(|site| site.errors + site.bypasses), 0, "{backend}");
    }
}

/// One request through `app`, in process.
async fn request(app: Router, path: impl AsRef<str>, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::builder().uri(path.as_ref());
    for (name, value) in headers {
        request = request.header(*name, HeaderValue::from_str(value).expect("valid"));
    }
    let request = request.body(Body::empty()).expect("valid request");
    let response = app.oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|value| value.to_str().expect("text").to_owned())
            .unwrap_or_default()
    };
    let (status, cache_status, etag) = (parts.status, header("cache-status"), header("etag"));
    let body = body.collect().await.expect("a body");
    Answer {
        status,
        cache_status,
        etag,
        body: String::from_utf8(body.to_bytes().to_vec()).expect("utf-8"),
    }
}

/// The recorder's counters for `backend`'s response sites, summed by name and `result` label
/// (empty for a series without one): one snapshot, which resets them.
fn exported(snapshotter: &Snapshotter, backend: &str) -> BTreeMap<(String, String), u64> {
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
            || label("site").as_deref() != Some(RESPONSES)
            || label("backend").as_deref() != Some(backend)
        {
            continue;
        }
        let DebugValue::Counter(value) = value else {
            unreachable!("a counter")
        };
        let by = (key.name().to_owned(), label("result").unwrap_or_default());
        *sums.entry(by).or_default() += value;
    }
    sums
}

async fn counts_follow_cache_status(backend: &str, clock: &TestClock, snapshotter: &Snapshotter) {
    let service = Arc::new(Service::default());
    let run = Run {
        backend,
        app: app(backend, Arc::clone(&service)),
        service,
        clock,
        expected: Default::default(),
    };
    run.plain_hits().await;
    run.stale_while_revalidate().await;
    run.stats_match(1);
    run.stale_if_error().await;
    run.stats_match(1);
    run.a_dropped_revalidation_counts_once().await;
    run.stats_match(1);

    // The exporter's view of the same answers. Taking a snapshot resets the recorder's counters,
    // so it is taken once per backend, each backend on sites of its own.
    let expected = run.expected.lock().expect("lock").clone();
    let exported = exported(snapshotter, backend);
    let series = |name: &str, result: &str| {
        let key = (name.to_owned(), result.to_owned());
        exported.get(&key).copied().unwrap_or(0)
    };
    let result = |result: &str| series(names::REQUESTS, result);
    assert_eq!(
        Expected {
            hits: result("hit"),
            misses: result("miss"),
            stale: result("stale"),
            coalesced: expected.coalesced,
        },
        expected,
        "{backend}: {} against the answers' Cache-Status: {exported:?}",
        names::REQUESTS
    );
    assert_eq!(result("error") + result("bypass"), 0, "{backend}");
    assert_eq!(
        series(names::REFRESHES, ""),
        1,
        "{backend}: {}, the one background revalidation: {exported:?}",
        names::REFRESHES
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_are_counted_as_their_cache_status_says() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder");
    // One test, so one runtime: a redis backend's connection lives on the runtime that first
    // used it.
    let server = RedisServer::start();
    let clock = TestClock::new();
    let redis = |prefix: &str| {
        RedisBackend::builder()
            .url(server.url())
            .prefix(prefix)
            .clock(&clock)
            .build()
            .expect("valid configuration")
    };
    configure()
        .memory("memory", MemoryBackend::builder().clock(&clock).build())
        .redis("redis", redis("hc"))
        .tiered("tiered", TieredBackend::builder(redis("hct")).build())
        .install()
        .expect("configured once");

    counts_follow_cache_status("memory", &clock, &snapshotter).await;
    counts_follow_cache_status("redis", &clock, &snapshotter).await;
    counts_follow_cache_status("tiered", &clock, &snapshotter).await;
}
