//! Issue 15, HTTP: the layer serves `stale-while-revalidate` and `stale-if-error` itself,
//! answers `If-Modified-Since` with a 304, and sends `s-maxage`. A real axum server on a
//! loopback port and a real HTTP client, over the memory backend and, against a real
//! redis-server, the redis and tiered backends; every backend on one `TestClock`, so that a
//! response goes stale when the test advances it, not by sleeping.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use cachette::http::{invalidate_route, CacheLayer, CachePolicy};
use cachette::{configure, stats, MemoryBackend, RedisBackend, TestClock, TieredBackend};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::redis_server::RedisServer;
use tokio::sync::Notify;

const TTL: Duration = Duration::from_secs(60);
const SWR: Duration = Duration::from_secs(30);
const SIE: Duration = Duration::from_secs(600);
const THROTTLE: Duration = Duration::from_secs(10);
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

/// What the handlers count and do; one per app (one app per backend).
#[derive(Default)]
struct Service {
    runs: Mutex<HashMap<&'static str, usize>>,
    /// Which version of its data a handler serves: bumped to tell a fresh response from the
    /// stale one.
    version: AtomicUsize,
    /// Handlers answer 500.
    failing: AtomicBool,
    /// Handlers panic.
    panicking: AtomicBool,
    /// Handlers say they started, then wait to be let go.
    hold: AtomicBool,
    started: Notify,
    go: Notify,
}

type Shared = Arc<Service>;

impl Service {
    fn runs(&self, handler: &'static str) -> usize {
        self.runs
            .lock()
            .expect("lock")
            .get(handler)
            .copied()
            .unwrap_or(0)
    }

    async fn answer(&self, handler: &'static str, id: u64) -> Response {
        *self.runs.lock().expect("lock").entry(handler).or_default() += 1;
        if self.hold.load(Ordering::SeqCst) {
            self.started.notify_one();
            self.go.notified().await;
        }
        if self.panicking.load(Ordering::SeqCst) {
            panic!("the {handler} handler panics");
        }
        if self.failing.load(Ordering::SeqCst) {
            return (StatusCode::INTERNAL_SERVER_ERROR, "failed").into_response();
        }
        let version = self.version.load(Ordering::SeqCst);
        format!("{handler} {id} v{version}").into_response()
    }

    fn set(&self, flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::SeqCst);
    }
}

async fn revalidating(State(service): State<Shared>, Path(id): Path<u64>) -> Response {
    service.answer("swr", id).await
}

async fn on_error(State(service): State<Shared>, Path(id): Path<u64>) -> Response {
    service.answer("sie", id).await
}

async fn both(State(service): State<Shared>, Path(id): Path<u64>) -> Response {
    service.answer("both", id).await
}

async fn dated(State(service): State<Shared>) -> impl IntoResponse {
    *service
        .runs
        .lock()
        .expect("lock")
        .entry("dated")
        .or_default() += 1;
    ([("last-modified", LAST_MODIFIED)], "dated")
}

fn app(backend: &str, service: Shared) -> Router {
    let policy = CachePolicy::new(TTL).backend(backend);
    let layer = |policy: CachePolicy| CacheLayer::new(policy);
    Router::new()
        .route(
            "/swr/{id}",
            get(revalidating).layer(layer(policy.clone().stale_while_revalidate(SWR))),
        )
        .route(
            "/sie/{id}",
            get(on_error).layer(layer(
                policy.clone().stale_if_error(SIE).error_throttle(THROTTLE),
            )),
        )
        .route(
            "/both/{id}",
            get(both).layer(layer(
                policy
                    .clone()
                    .stale_while_revalidate(SWR)
                    .stale_if_error(SIE)
                    .error_throttle(THROTTLE),
            )),
        )
        .route("/dated", get(dated).layer(layer(policy.clone())))
        .route(
            "/shared/{id}",
            get(revalidating).layer(layer(policy.shared_max_age(Duration::from_secs(300)))),
        )
        .with_state(service)
}

/// A real HTTP/1.1 client against a server on a loopback port.
#[derive(Clone)]
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("text header"))
            .unwrap_or("")
    }

    fn status_line(&self) -> &str {
        self.header("cache-status")
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

impl Http {
    async fn start(app: Router) -> Http {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{address}"),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = axum::http::Request::builder()
            .method("GET")
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, HeaderValue::from_str(value).expect("valid"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let response = self.client.request(request).await.expect("a response");
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("a body").to_bytes(),
        }
    }

    /// `count` requests for `path` at once, each on its own task.
    async fn many(&self, path: &str, count: usize) -> Vec<Reply> {
        let requests: Vec<_> = (0..count)
            .map(|_| {
                let (http, path) = (self.clone(), path.to_owned());
                tokio::spawn(async move { http.get(&path, &[]).await })
            })
            .collect();
        let mut replies = Vec::with_capacity(count);
        for request in requests {
            replies.push(request.await.expect("a request"));
        }
        replies
    }
}

/// Everything one backend's app is tested for, in order, each scenario on keys of its own.
async fn scenarios(backend: &str, clock: &TestClock) {
    let service = Shared::default();
    let http = Http::start(app(backend, Arc::clone(&service))).await;
    let run = Run {
        backend,
        http: &http,
        service: &service,
        clock,
    };
    run.stale_while_revalidate_answers_stale_then_fresh().await;
    run.stale_if_error_answers_stale_on_a_500().await;
    run.if_modified_since_gets_a_304_without_the_handler().await;
    run.s_maxage_is_sent().await;
    run.an_invalidated_response_is_never_served_stale().await;
    run.a_panicking_background_revalidation_does_not_wedge_the_key()
        .await;
    run.a_panicking_revalidation_answers_stale_and_is_throttled()
        .await;
}

struct Run<'a> {
    backend: &'a str,
    http: &'a Http,
    service: &'a Service,
    clock: &'a TestClock,
}

impl Run<'_> {
    /// Stores `path`'s response, then moves past its TTL and bumps the data's version, so that
    /// a revalidation shows.
    async fn stored_then_stale(&self, path: &str, by: Duration) -> Reply {
        let first = self.http.get(path, &[]).await;
        assert!(
            first
                .status_line()
                .starts_with("cachette; fwd=miss; stored"),
            "{}: {path}: {}",
            self.backend,
            first.status_line()
        );
        self.service.version.fetch_add(1, Ordering::SeqCst);
        self.clock.advance(by);
        first
    }

    /// Past its TTL, a response within its stale-while-revalidate window is answered at once,
    /// stale, while exactly one background run of the handler revalidates it however many
    /// requests come meanwhile; once that run is done, requests get the fresh response.
    async fn stale_while_revalidate_answers_stale_then_fresh(&self) {
        let backend = self.backend;
        let first = self
            .stored_then_stale("/swr/1", TTL + Duration::from_secs(1))
            .await;
        let runs = self.service.runs("swr");
        // The revalidation is held in its handler: every request must be answered without it.
        self.service.set(&self.service.hold, true);
        let replies = tokio::time::timeout(Duration::from_secs(10), self.http.many("/swr/1", 50))
            .await
            .unwrap_or_else(|_| panic!("{backend}: stale requests waited for the revalidation"));
        for reply in &replies {
            assert_eq!(reply.status, StatusCode::OK, "{backend}");
            assert_eq!(reply.text(), first.text(), "{backend}: the stale response");
            assert_eq!(
                reply.status_line(),
                "cachette; hit; ttl=-1; detail=stale-while-revalidate",
                "{backend}"
            );
            assert_eq!(reply.header("age"), "61", "{backend}");
            assert_eq!(reply.header("etag"), first.header("etag"), "{backend}");
        }
        self.service.started.notified().await;
        assert_eq!(
            self.service.runs("swr"),
            runs + 1,
            "{backend}: one revalidation for 50 stale requests"
        );
        self.service.set(&self.service.hold, false);
        self.service.go.notify_one();
        let fresh = format!("swr 1 v{}", self.version());
        let fresh = self.eventually_fresh("/swr/1", first.text(), &fresh).await;
        assert_eq!(fresh.status_line(), "cachette; hit; ttl=60", "{backend}");
        assert_eq!(fresh.header("age"), "0", "{backend}");
        assert_ne!(fresh.header("etag"), first.header("etag"), "{backend}");
        assert_eq!(
            self.service.runs("swr"),
            runs + 1,
            "{backend}: still the one revalidation"
        );
    }

    /// Requests `path` until it answers `fresh`; until then it must answer the `stale` body.
    async fn eventually_fresh(&self, path: &str, stale: &str, fresh: &str) -> Reply {
        let started = Instant::now();
        loop {
            let reply = self.http.get(path, &[]).await;
            if reply.text() == fresh {
                return reply;
            }
            assert_eq!(reply.text(), stale, "{}: {path}", self.backend);
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{}: {path} not revalidated within 10 s: {}",
                self.backend,
                reply.status_line()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Past its TTL, within its stale-if-error window, a response is revalidated before it is
    /// answered; when the handler answers 500, the stale response is answered instead, and the
    /// handler is not run again for that response within the throttle interval, however many
    /// requests come. Once the handler recovers, the fresh response is stored and answered.
    async fn stale_if_error_answers_stale_on_a_500(&self) {
        let backend = self.backend;
        let first = self
            .stored_then_stale("/sie/1", TTL + Duration::from_secs(1))
            .await;
        let runs = self.service.runs("sie");
        self.service.set(&self.service.failing, true);
        let failed = self.http.get("/sie/1", &[]).await;
        assert_eq!(failed.status, StatusCode::OK, "{backend}");
        assert_eq!(failed.text(), first.text(), "{backend}: the stale response");
        assert_eq!(
            failed.status_line(),
            "cachette; fwd=stale; fwd-status=500; ttl=-1; detail=stale-if-error",
            "{backend}"
        );
        assert_eq!(self.service.runs("sie"), runs + 1, "{backend}");
        let throttled = self.http.get("/sie/1", &[]).await;
        assert_eq!(throttled.text(), first.text(), "{backend}");
        assert_eq!(
            throttled.status_line(),
            "cachette; hit; ttl=-1; detail=stale-if-error",
            "{backend}"
        );
        assert_eq!(
            self.service.runs("sie"),
            runs + 1,
            "{backend}: the failing handler is left alone within the throttle interval"
        );

        // After the interval, one run for many requests: they wait for it, and get the stale
        // response when it fails.
        self.clock.advance(THROTTLE);
        self.service.set(&self.service.hold, true);
        let requests = tokio::spawn({
            let http = self.http.clone();
            async move { http.many("/sie/1", 20).await }
        });
        self.service.started.notified().await;
        self.service.set(&self.service.hold, false);
        self.service.go.notify_one();
        for reply in requests.await.expect("the requests") {
            assert_eq!(reply.text(), first.text(), "{backend}");
            assert!(
                reply.status_line().ends_with("detail=stale-if-error"),
                "{backend}: {}",
                reply.status_line()
            );
        }
        assert_eq!(
            self.service.runs("sie"),
            runs + 2,
            "{backend}: one run per interval"
        );

        self.service.set(&self.service.failing, false);
        self.clock.advance(THROTTLE);
        let recovered = self.http.get("/sie/1", &[]).await;
        let fresh = format!("sie 1 v{}", self.version());
        assert_eq!(recovered.text(), fresh, "{backend}");
        assert_eq!(
            recovered.status_line(),
            "cachette; fwd=stale; fwd-status=200; stored; ttl=60",
            "{backend}"
        );
        let hit = self.http.get("/sie/1", &[]).await;
        assert_eq!(hit.text(), fresh, "{backend}");
        assert_eq!(hit.status_line(), "cachette; hit; ttl=60", "{backend}");
        assert_eq!(self.service.runs("sie"), runs + 3, "{backend}");

        // Without a stored response there is nothing to answer instead of the 500.
        self.service.set(&self.service.failing, true);
        let missing = self.http.get("/sie/2", &[]).await;
        assert_eq!(
            missing.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{backend}"
        );
        assert_eq!(
            missing.status_line(),
            "cachette; fwd=miss; detail=status",
            "{backend}"
        );
        self.service.set(&self.service.failing, false);
    }

    /// A stored response with `Last-Modified` answers an `If-Modified-Since` at or after it
    /// with a 304, without running the handler; an earlier or unreadable date gets the
    /// response, and `If-None-Match`, when present, decides instead (RFC 9110 §13.2.2).
    async fn if_modified_since_gets_a_304_without_the_handler(&self) {
        let backend = self.backend;
        let first = self.http.get("/dated", &[]).await;
        assert_eq!(first.header("last-modified"), LAST_MODIFIED, "{backend}");
        let etag = first.header("etag").to_owned();
        for since in [LAST_MODIFIED, "Thu, 22 Oct 2015 07:28:00 GMT"] {
            let reply = self
                .http
                .get("/dated", &[("if-modified-since", since)])
                .await;
            assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{backend}: {since}");
            assert!(reply.body.is_empty(), "{backend}");
            assert_eq!(reply.header("last-modified"), LAST_MODIFIED, "{backend}");
            assert_eq!(reply.header("etag"), etag, "{backend}");
            assert!(
                reply.status_line().starts_with("cachette; hit"),
                "{backend}"
            );
        }
        for since in ["Tue, 20 Oct 2015 07:28:00 GMT", "not a date"] {
            let reply = self
                .http
                .get("/dated", &[("if-modified-since", since)])
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{backend}: {since}");
            assert_eq!(reply.text(), "dated", "{backend}");
        }
        let other_tag = self
            .http
            .get(
                "/dated",
                &[
                    ("if-none-match", "\"other\""),
                    ("if-modified-since", LAST_MODIFIED),
                ],
            )
            .await;
        assert_eq!(
            other_tag.status,
            StatusCode::OK,
            "{backend}: If-None-Match decides"
        );
        let same_tag = self
            .http
            .get(
                "/dated",
                &[
                    ("if-none-match", &etag),
                    ("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT"),
                ],
            )
            .await;
        assert_eq!(same_tag.status, StatusCode::NOT_MODIFIED, "{backend}");
        // A response without Last-Modified never matches a date.
        self.http.get("/swr/9", &[]).await;
        let undated = self
            .http
            .get("/swr/9", &[("if-modified-since", LAST_MODIFIED)])
            .await;
        assert_eq!(undated.status, StatusCode::OK, "{backend}");
        assert_eq!(
            self.service.runs("dated"),
            1,
            "{backend}: only the first request ran the handler"
        );
    }

    /// A policy's shared-cache lifetime goes out as `s-maxage`, on misses and hits alike.
    async fn s_maxage_is_sent(&self) {
        for _ in 0..2 {
            let reply = self.http.get("/shared/1", &[]).await;
            assert_eq!(
                reply.header("cache-control"),
                "public, max-age=60, s-maxage=300",
                "{}",
                self.backend
            );
        }
    }

    /// Invalidation means wrong, not old: after a route's invalidation (or a client's
    /// `no-cache`), a stale response is not answered, within either window, and a failing
    /// handler's 500 goes to the client.
    async fn an_invalidated_response_is_never_served_stale(&self) {
        let backend = self.backend;
        let while_revalidating = TTL + Duration::from_secs(1);
        let if_error = TTL + SWR + Duration::from_secs(1);
        for (id, by) in [(5u64, while_revalidating), (6, if_error)] {
            let path = format!("/both/{id}");
            self.stored_then_stale(&path, by).await;
            invalidate_route(&Method::GET, "/both/{id}", &[("id", &id.to_string())])
                .await
                .expect("a valid route");
            self.service.set(&self.service.failing, true);
            let reply = self.http.get(&path, &[]).await;
            assert_eq!(
                reply.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{backend}: {path}: {}",
                reply.status_line()
            );
            assert_eq!(
                reply.status_line(),
                "cachette; fwd=miss; detail=status",
                "{backend}"
            );
            self.service.set(&self.service.failing, false);
        }
        // A client's no-cache deletes the entry before its handler runs.
        self.stored_then_stale("/both/7", while_revalidating).await;
        self.service.set(&self.service.failing, true);
        let forced = self
            .http
            .get("/both/7", &[("cache-control", "no-cache")])
            .await;
        assert_eq!(
            forced.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{backend}"
        );
        let after = self.http.get("/both/7", &[]).await;
        assert_eq!(
            after.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{backend}: {}",
            after.status_line()
        );
        self.service.set(&self.service.failing, false);
    }

    /// A background revalidation whose handler panics leaves the response stale and throttled,
    /// not stuck "revalidating": after the interval the next request revalidates it.
    async fn a_panicking_background_revalidation_does_not_wedge_the_key(&self) {
        let backend = self.backend;
        let first = self
            .stored_then_stale("/both/8", TTL + Duration::from_secs(1))
            .await;
        let runs = self.service.runs("both");
        let failures = load_failures();
        self.service.set(&self.service.panicking, true);
        let stale = self.http.get("/both/8", &[]).await;
        assert_eq!(stale.text(), first.text(), "{backend}");
        assert_eq!(
            stale.status_line(),
            "cachette; hit; ttl=-1; detail=stale-while-revalidate",
            "{backend}"
        );
        // The failed run is counted once its handler has returned (here: panicked).
        eventually("the panicking revalidation", || load_failures() > failures).await;
        self.service.set(&self.service.panicking, false);
        let throttled = self.http.get("/both/8", &[]).await;
        assert_eq!(throttled.text(), first.text(), "{backend}");
        self.clock.advance(THROTTLE);
        self.eventually_fresh(
            "/both/8",
            first.text(),
            &format!("both 8 v{}", self.version()),
        )
        .await;
        assert_eq!(
            self.service.runs("both"),
            runs + 2,
            "{backend}: the panicking run, then one that stored"
        );
    }

    /// A revalidation before answering whose handler panics answers the stale response, and
    /// the handler is left alone within the throttle interval; after it, the key revalidates.
    async fn a_panicking_revalidation_answers_stale_and_is_throttled(&self) {
        let backend = self.backend;
        let first = self
            .stored_then_stale("/both/9", TTL + SWR + Duration::from_secs(1))
            .await;
        let runs = self.service.runs("both");
        self.service.set(&self.service.panicking, true);
        let stale = self.http.get("/both/9", &[]).await;
        assert_eq!(stale.status, StatusCode::OK, "{backend}");
        assert_eq!(stale.text(), first.text(), "{backend}");
        assert_eq!(
            stale.status_line(),
            "cachette; fwd=stale; ttl=-31; detail=stale-if-error",
            "{backend}"
        );
        let throttled = self.http.get("/both/9", &[]).await;
        assert_eq!(
            throttled.status_line(),
            "cachette; hit; ttl=-31; detail=stale-if-error",
            "{backend}"
        );
        assert_eq!(self.service.runs("both"), runs + 1, "{backend}");
        self.service.set(&self.service.panicking, false);
        self.clock.advance(THROTTLE);
        let fresh = self.http.get("/both/9", &[]).await;
        assert_eq!(
            fresh.text(),
            format!("both 9 v{}", self.version()),
            "{backend}"
        );
        assert_eq!(
            fresh.status_line(),
            "cachette; fwd=stale; fwd-status=200; stored; ttl=60",
            "{backend}"
        );
        assert_eq!(self.service.runs("both"), runs + 2, "{backend}");
    }

    fn version(&self) -> usize {
        self.service.version.load(Ordering::SeqCst)
    }
}

/// Failed handler runs so far, over every layer's response site.
fn load_failures() -> u64 {
    stats()
        .sites
        .iter()
        .filter(|site| site.function == "cachette::http response")
        .map(|site| site.load_failures)
        .sum()
}

/// Waits until `done` holds, for at most 10 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_responses_over_memory_redis_and_tiered() {
    // One test, so one runtime, for all three backends: a redis backend's connection lives on
    // the runtime that first used it.
    let server = RedisServer::start();
    let clock = TestClock::new();
    let redis = RedisBackend::builder()
        .url(server.url())
        .prefix("hs")
        .clock(&clock)
        .build()
        .expect("valid configuration");
    let l2 = RedisBackend::builder()
        .url(server.url())
        .prefix("hst")
        .clock(&clock)
        .build()
        .expect("valid configuration");
    configure()
        .memory("memory", MemoryBackend::builder().clock(&clock).build())
        .redis("redis", redis)
        .tiered("tiered", TieredBackend::builder(l2).build())
        .install()
        .expect("configured once");

    scenarios("memory", &clock).await;
    scenarios("redis", &clock).await;
    scenarios("tiered", &clock).await;
}
