//! The HTTP layer end to end: a real axum server on a loopback port, a real HTTP client, and the
//! same scenarios over the memory backend and, against a real redis-server, the redis and
//! tiered backends.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use cachette::http::{invalidate_route, CacheLayer, CachePolicy};
use cachette::{configure, invalidates, stats, RedisBackend, TieredBackend};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis::AsyncCommands;
use support::redis_server::RedisServer;
use tokio::sync::Notify;

/// What the handlers count and serve; one per app (one app per backend).
#[derive(Default)]
struct Service {
    runs: Mutex<HashMap<&'static str, usize>>,
    names: Mutex<HashMap<u64, String>>,
    /// The slow handler says it has read its data, then waits to be let go.
    slow_read: Notify,
    slow_go: Notify,
}

type Shared = Arc<Service>;

impl Service {
    fn ran(&self, handler: &'static str) {
        *self.runs.lock().expect("lock").entry(handler).or_default() += 1;
    }

    fn runs(&self, handler: &'static str) -> usize {
        self.runs
            .lock()
            .expect("lock")
            .get(handler)
            .copied()
            .unwrap_or(0)
    }

    fn name(&self, id: u64) -> String {
        self.names
            .lock()
            .expect("lock")
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("user {id}"))
    }
}

async fn get_user(State(service): State<Shared>, Path(id): Path<u64>) -> impl IntoResponse {
    service.ran("user");
    (
        [("content-type", "application/json")],
        format!("{{\"id\":{id},\"name\":\"{}\"}}", service.name(id)),
    )
}

/// The write behind `PUT /users/{id}`: on success, every cached `GET /users/{id}` goes.
#[invalidates("http:GET:/users/<id>")]
async fn rename_user(service: &Service, id: u64, name: String) -> Result<(), Infallible> {
    service.names.lock().expect("lock").insert(id, name);
    Ok(())
}

async fn put_user(State(service): State<Shared>, Path(id): Path<u64>, name: String) -> StatusCode {
    rename_user(&service, id, name).await.expect("infallible");
    StatusCode::NO_CONTENT
}

async fn get_item(State(service): State<Shared>, Path(id): Path<u64>) -> String {
    service.ran("item");
    format!("item {id}: {}", service.name(1000 + id))
}

async fn put_item(State(service): State<Shared>, Path(id): Path<u64>, name: String) -> StatusCode {
    service.names.lock().expect("lock").insert(1000 + id, name);
    invalidate_route(
        &axum::http::Method::GET,
        "/items/{id}",
        &[("id", &id.to_string())],
    )
    .await
    .expect("a valid route");
    StatusCode::NO_CONTENT
}

async fn get_note(State(service): State<Shared>, Path(id): Path<u64>) -> String {
    service.ran("note");
    format!("note {id}: {}", service.name(2000 + id))
}

/// Changes the note without invalidating anything itself: the layer does, on success.
async fn put_note(State(service): State<Shared>, Path(id): Path<u64>, name: String) -> StatusCode {
    service.names.lock().expect("lock").insert(2000 + id, name);
    StatusCode::NO_CONTENT
}

/// Reads its data, then waits: lets a test change the data while a load is under way.
async fn get_slow(State(service): State<Shared>, Path(id): Path<u64>) -> String {
    service.ran("slow");
    let name = service.name(3000 + id);
    service.slow_read.notify_one();
    service.slow_go.notified().await;
    name
}

async fn put_slow(State(service): State<Shared>, Path(id): Path<u64>, name: String) -> StatusCode {
    service.names.lock().expect("lock").insert(3000 + id, name);
    StatusCode::NO_CONTENT
}

async fn tagged(State(service): State<Shared>) -> impl IntoResponse {
    service.ran("tagged");
    ([("etag", "W/\"v7\"")], "tagged")
}

async fn cookie(State(service): State<Shared>) -> impl IntoResponse {
    service.ran("cookie");
    ([("set-cookie", "session=abc")], "with a cookie")
}

async fn no_store(State(service): State<Shared>) -> impl IntoResponse {
    service.ran("no-store");
    ([("cache-control", "no-store")], "not for storing")
}

async fn error(State(service): State<Shared>) -> impl IntoResponse {
    service.ran("error");
    (StatusCode::INTERNAL_SERVER_ERROR, "failed")
}

async fn greeting(State(service): State<Shared>, headers: HeaderMap) -> Response {
    service.ran("greeting");
    let text = match headers.get("accept-language").and_then(|v| v.to_str().ok()) {
        Some(lang) if lang.starts_with("fr") => "bonjour",
        _ => "hello",
    };
    ([("vary", "accept-language")], text).into_response()
}

async fn whoami(State(service): State<Shared>, headers: HeaderMap) -> String {
    service.ran("whoami");
    format!("you are {:?}", headers.get("authorization"))
}

async fn profile(State(service): State<Shared>, headers: HeaderMap) -> String {
    service.ran("profile");
    format!("profile of {:?}", headers.get("authorization"))
}

fn bearer(parts: &axum::http::request::Parts) -> Option<String> {
    let value = parts.headers.get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

fn app(backend: &str, service: Shared) -> Router {
    let policy = CachePolicy::new(Duration::from_secs(60)).backend(backend);
    let cached = |policy: CachePolicy| CacheLayer::new(policy);
    Router::new()
        // The layer wraps only GET here, so the PUT's invalidation is the attribute's.
        .route(
            "/users/{id}",
            get(get_user)
                .layer(cached(
                    policy
                        .clone()
                        .stale_while_revalidate(Duration::from_secs(30)),
                ))
                .put(put_user),
        )
        .route(
            "/items/{id}",
            get(get_item).layer(cached(policy.clone())).put(put_item),
        )
        .route(
            "/notes/{id}",
            get(get_note).put(put_note).layer(cached(policy.clone())),
        )
        .route(
            "/slow/{id}",
            get(get_slow).put(put_slow).layer(cached(policy.clone())),
        )
        .route(
            "/greeting",
            get(greeting).layer(cached(policy.clone().vary(["accept-language"]))),
        )
        .route(
            "/profile",
            get(profile).layer(cached(policy.clone().identity(bearer))),
        )
        .merge(
            Router::new()
                .route("/tagged", get(tagged))
                .route("/cookie", get(cookie))
                .route("/no-store", get(no_store))
                .route("/error", get(error))
                // Varies on a header this policy does not key on.
                .route("/unkeyed-vary", get(greeting))
                .route("/whoami", get(whoami))
                .layer(cached(policy)),
        )
        .with_state(service)
}

/// A real HTTP/1.1 client against a server on a loopback port.
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
        Http::with_base(format!("http://{address}"))
    }

    fn with_base(base: String) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base,
        }
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, HeaderValue::from_str(value).expect("valid"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("valid request");
        let response = self.client.request(request).await.expect("a response");
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("a body").to_bytes(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", path, headers, "").await
    }
}

/// Every scenario against one backend's app, in order: each counts handler runs on top of the
/// earlier ones' (and the first response is revalidated by the next three).
async fn scenarios(backend: &str) {
    let service = Shared::default();
    let http = Http::start(app(backend, Arc::clone(&service))).await;
    let first = a_miss_stores_and_a_hit_serves_it(backend, &http, &service).await;
    if_none_match_gets_a_304(backend, &http, &service, &first).await;
    head_is_answered_from_the_get_entry(&http, &service, &first).await;
    a_put_removes_every_variant_of_its_route(backend, &http, &service, &first).await;
    a_write_leaves_other_entries_alone(&http).await;
    invalidate_route_and_a_layer_write_make_a_miss(backend, &http, &service).await;
    a_load_older_than_a_write_stores_nothing(backend, &http, &service).await;
    a_handlers_own_etag_is_kept(&http, &service).await;
    unshareable_responses_are_never_stored(backend, &http, &service).await;
    requests_with_credentials_bypass(&http, &service).await;
    a_route_keyed_by_identity_caches_per_user_privately(&http, &service).await;
    vary_separates_entries(&http, &service).await;
    a_client_no_cache_replaces_the_entry(&http, &service).await;
    a_request_that_joins_a_load_says_collapsed(backend, &http, &service).await;
}

/// A miss stores the response; a hit serves it again with the same ETag, body and headers, and
/// runs no handler. Returns the stored response, which the next scenarios revalidate.
async fn a_miss_stores_and_a_hit_serves_it(backend: &str, http: &Http, service: &Service) -> Reply {
    let first = http.get("/users/1", &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{backend}");
    assert_eq!(first.text(), "{\"id\":1,\"name\":\"user 1\"}");
    assert!(
        first
            .header("cache-status")
            .starts_with("cachette; fwd=miss; stored"),
        "{backend}: {}",
        first.header("cache-status")
    );
    let etag = first.header("etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.len() == 34,
        "a strong etag: {etag}"
    );
    assert_eq!(first.header("content-type"), "application/json");
    let cache_control = first.header("cache-control");
    assert!(
        cache_control.starts_with("public, max-age=")
            && cache_control.ends_with(", stale-while-revalidate=30"),
        "{cache_control}"
    );
    assert_eq!(first.header("age"), "0");
    let second = http.get("/users/1", &[]).await;
    assert_eq!(second.text(), first.text());
    assert_eq!(second.header("etag"), etag);
    assert_eq!(second.header("content-type"), "application/json");
    assert!(
        second.header("cache-status").starts_with("cachette; hit"),
        "{backend}: {}",
        second.header("cache-status")
    );
    assert_eq!(
        service.runs("user"),
        1,
        "{backend}: the hit did not run the handler"
    );
    first
}

/// If-None-Match (the ETag, a list with its weak form, `*`) gets a 304 with the ETag and no body;
/// one that matches nothing gets the entry. Neither runs the handler.
async fn if_none_match_gets_a_304(backend: &str, http: &Http, service: &Service, first: &Reply) {
    let etag = first.header("etag").to_owned();
    for matching in [etag.as_str(), &format!("\"other\", W/{etag}"), "*"] {
        let revalidated = http.get("/users/1", &[("if-none-match", matching)]).await;
        assert_eq!(
            revalidated.status,
            StatusCode::NOT_MODIFIED,
            "{backend}: {matching}"
        );
        assert!(revalidated.body.is_empty());
        assert_eq!(revalidated.header("etag"), etag);
        assert!(revalidated
            .header("cache-control")
            .starts_with("public, max-age="));
    }
    let changed = http
        .get("/users/1", &[("if-none-match", "\"stale\"")])
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.text(), first.text());
    assert_eq!(
        service.runs("user"),
        1,
        "{backend}: 304s and hits ran no handler"
    );
}

/// HEAD is answered from GET's entry, without a body and without running the handler.
async fn head_is_answered_from_the_get_entry(http: &Http, service: &Service, first: &Reply) {
    let etag = first.header("etag").to_owned();
    let head = http.send("HEAD", "/users/1", &[], "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), etag);
    assert_eq!(head.header("content-length"), first.body.len().to_string());
    assert_eq!(service.runs("user"), 1);
}

/// A query string is another variant; a PUT (`#[invalidates]`) removes every variant, and the old
/// ETag no longer matches.
async fn a_put_removes_every_variant_of_its_route(
    backend: &str,
    http: &Http,
    service: &Service,
    first: &Reply,
) {
    let etag = first.header("etag").to_owned();
    let queried = http.get("/users/1?fields=name", &[]).await;
    assert!(queried.header("cache-status").contains("stored"));
    assert_eq!(
        http.get("/users/1?fields=name", &[])
            .await
            .header("cache-status")
            .split(';')
            .nth(1),
        Some(" hit")
    );
    assert_eq!(service.runs("user"), 2);
    let put = http.send("PUT", "/users/1", &[], "Ada").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let after = http.get("/users/1", &[("if-none-match", &etag)]).await;
    assert_eq!(
        after.status,
        StatusCode::OK,
        "{backend}: the old ETag no longer matches"
    );
    assert_eq!(after.text(), "{\"id\":1,\"name\":\"Ada\"}");
    assert!(after
        .header("cache-status")
        .starts_with("cachette; fwd=miss; stored"));
    assert_ne!(after.header("etag"), etag, "a new ETag");
    let after_query = http.get("/users/1?fields=name", &[]).await;
    assert!(
        after_query
            .header("cache-status")
            .starts_with("cachette; fwd=miss"),
        "{backend}: the query variant went too"
    );
    assert!(after_query.text().contains("Ada"));
    assert_eq!(service.runs("user"), 4);
}

/// A write to one user leaves another user's entry cached.
async fn a_write_leaves_other_entries_alone(http: &Http) {
    http.get("/users/2", &[]).await;
    http.send("PUT", "/users/1", &[], "Grace").await;
    assert!(http
        .get("/users/2", &[])
        .await
        .header("cache-status")
        .starts_with("cachette; hit"));
}

/// The programmatic API (`invalidate_route`), and the layer's own invalidation on a successful
/// write: the next GET runs the handler and stores the new response.
async fn invalidate_route_and_a_layer_write_make_a_miss(
    backend: &str,
    http: &Http,
    service: &Service,
) {
    for (path, handler) in [("/items/5", "item"), ("/notes/5", "note")] {
        http.get(path, &[]).await;
        assert!(http
            .get(path, &[])
            .await
            .header("cache-status")
            .starts_with("cachette; hit"));
        assert_eq!(
            http.send("PUT", path, &[], "renamed").await.status,
            StatusCode::NO_CONTENT
        );
        let fresh = http.get(path, &[]).await;
        assert!(
            fresh
                .header("cache-status")
                .starts_with("cachette; fwd=miss; stored"),
            "{backend} {path}"
        );
        assert!(fresh.text().ends_with("renamed"), "{}", fresh.text());
        assert_eq!(service.runs(handler), 2, "{backend} {path}");
    }
}

/// A load that read its data before a write cannot store it for later readers: it fills under the
/// route's old generation, which the write's invalidation made unreachable.
async fn a_load_older_than_a_write_stores_nothing(backend: &str, http: &Http, service: &Service) {
    let slow = tokio::spawn({
        let base = http.base.clone();
        async move { Http::with_base(base).get("/slow/1", &[]).await }
    });
    service.slow_read.notified().await;
    assert_eq!(
        http.send("PUT", "/slow/1", &[], "new").await.status,
        StatusCode::NO_CONTENT
    );
    service.slow_go.notify_one();
    let old = slow.await.expect("the slow request");
    assert_eq!(
        old.text(),
        "user 3001",
        "{backend}: it answers with what it read"
    );
    service.slow_go.notify_one();
    let next = http.get("/slow/1", &[]).await;
    assert_eq!(
        next.text(),
        "new",
        "{backend}: never the old data after the write"
    );
    assert!(next
        .header("cache-status")
        .starts_with("cachette; fwd=miss; stored"));
    assert_eq!(service.runs("slow"), 2);
}

/// A handler's own ETag is kept, and If-None-Match is answered against it.
async fn a_handlers_own_etag_is_kept(http: &Http, service: &Service) {
    let tagged = http.get("/tagged", &[]).await;
    assert_eq!(tagged.header("etag"), "W/\"v7\"");
    let tagged = http.get("/tagged", &[("if-none-match", "\"v7\"")]).await;
    assert_eq!(tagged.status, StatusCode::NOT_MODIFIED);
    assert_eq!(service.runs("tagged"), 1);
}

/// Never stored: Set-Cookie, `no-store`, error statuses, a Vary on a header the policy does not
/// key on; the handler runs every time.
async fn unshareable_responses_are_never_stored(backend: &str, http: &Http, service: &Service) {
    for (path, handler, detail) in [
        ("/cookie", "cookie", "fwd=miss; detail=set-cookie"),
        ("/no-store", "no-store", "fwd=miss; detail=no-store"),
        ("/error", "error", "fwd=miss; detail=status"),
        ("/unkeyed-vary", "greeting", "fwd=miss; detail=vary"),
    ] {
        for _ in 0..2 {
            let reply = http.get(path, &[]).await;
            assert_eq!(
                reply.header("cache-status"),
                format!("cachette; {detail}"),
                "{backend} {path}"
            );
        }
        assert_eq!(service.runs(handler), 2, "{backend} {path} ran every time");
    }
    assert_eq!(
        http.get("/cookie", &[]).await.header("set-cookie"),
        "session=abc"
    );
    assert_eq!(
        http.get("/error", &[]).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

/// Requests with credentials (Authorization, Cookie) bypass the cache; an anonymous request to the
/// same route is cached, and never answers a user.
async fn requests_with_credentials_bypass(http: &Http, service: &Service) {
    for credentials in [
        ("authorization", "Bearer alice"),
        ("cookie", "session=alice"),
    ] {
        for _ in 0..2 {
            let reply = http.get("/whoami", &[credentials]).await;
            assert_eq!(
                reply.header("cache-status"),
                "cachette; fwd=bypass; detail=credentials"
            );
        }
    }
    assert_eq!(service.runs("whoami"), 4);
    // An anonymous request to the same route is cached, and never answers a user.
    http.get("/whoami", &[]).await;
    let user = http
        .get("/whoami", &[("authorization", "Bearer alice")])
        .await;
    assert!(user.text().contains("alice"), "{}", user.text());
    assert_eq!(service.runs("whoami"), 6);
}

/// A route keyed by identity caches per user, privately; a request without a usable identity
/// bypasses.
async fn a_route_keyed_by_identity_caches_per_user_privately(http: &Http, service: &Service) {
    let alice = http
        .get("/profile", &[("authorization", "Bearer alice")])
        .await;
    assert!(alice
        .header("cache-control")
        .starts_with("private, max-age="));
    let alice_again = http
        .get("/profile", &[("authorization", "Bearer alice")])
        .await;
    assert_eq!(alice_again.text(), alice.text());
    assert!(alice_again
        .header("cache-status")
        .starts_with("cachette; hit"));
    let bob = http
        .get("/profile", &[("authorization", "Bearer bob")])
        .await;
    assert!(bob.text().contains("bob"), "{}", bob.text());
    let unknown = http
        .get("/profile", &[("authorization", "Basic eA==")])
        .await;
    assert_eq!(
        unknown.header("cache-status"),
        "cachette; fwd=bypass; detail=identity"
    );
    assert_eq!(service.runs("profile"), 3);
}

/// Vary separates entries. The greeting handler also serves `/unkeyed-vary`, whose two runs the
/// count includes.
async fn vary_separates_entries(http: &Http, service: &Service) {
    let en = http.get("/greeting", &[("accept-language", "en")]).await;
    let fr = http.get("/greeting", &[("accept-language", "fr")]).await;
    assert_eq!((en.text(), fr.text()), ("hello", "bonjour"));
    assert_eq!(en.header("vary"), "accept-language");
    let fr_again = http.get("/greeting", &[("accept-language", "fr")]).await;
    assert_eq!(fr_again.text(), "bonjour");
    assert!(fr_again.header("cache-status").starts_with("cachette; hit"));
    assert_ne!(en.header("etag"), fr.header("etag"));
    assert_eq!(
        service.runs("greeting"),
        4,
        "two more after the unkeyed route's two"
    );
}

/// A client's `no-cache` runs the handler and replaces the entry.
async fn a_client_no_cache_replaces_the_entry(http: &Http, service: &Service) {
    let forced = http
        .get(
            "/greeting",
            &[("accept-language", "fr"), ("cache-control", "no-cache")],
        )
        .await;
    assert!(
        forced
            .header("cache-status")
            .starts_with("cachette; fwd=request; stored"),
        "{}",
        forced.header("cache-status")
    );
    assert_eq!(service.runs("greeting"), 5);
    assert!(http
        .get("/greeting", &[("accept-language", "fr")])
        .await
        .header("cache-status")
        .starts_with("cachette; hit"));
}

/// How many times a follower may miss the leader's load before the scenario gives up.
const JOIN_ATTEMPTS: u64 = 20;

/// A request that joins another request's in-flight load says so, with RFC 9211's `collapsed`;
/// the request that loaded and later hits do not. The leader's handler is held at its gate
/// until the follower's route-generation lookup has been counted. From there the follower joins
/// the flight without waiting on anything on the memory and tiered backends; on the redis
/// backend it reads Redis first, and the leader may store meanwhile, so the follower hits. An
/// attempt whose follower hit is tried again, with another key.
async fn a_request_that_joins_a_load_says_collapsed(backend: &str, http: &Http, service: &Service) {
    for attempt in 0..JOIN_ATTEMPTS {
        let path = format!("/slow/{}", 100 + attempt);
        let runs = service.runs("slow");
        let request = |path: String| {
            let base = http.base.clone();
            tokio::spawn(async move { Http::with_base(base).get(&path, &[]).await })
        };
        let leader = request(path.clone());
        // Its handler runs (a permit left by an earlier scenario's run may wake this first).
        while service.runs("slow") == runs {
            service.slow_read.notified().await;
        }
        let looked_up = generation_lookups();
        let follower = request(path.clone());
        eventually("the follower's generation lookup", || {
            generation_lookups() > looked_up
        })
        .await;
        service.slow_go.notify_one();
        let leader = leader.await.expect("the leader's request");
        let follower = follower.await.expect("the follower's request");
        assert!(
            leader
                .header("cache-status")
                .starts_with("cachette; fwd=miss; stored; ttl="),
            "{backend}: {}",
            leader.header("cache-status")
        );
        assert_eq!(follower.text(), leader.text());
        assert_eq!(
            service.runs("slow"),
            runs + 1,
            "{backend}: one load for both"
        );
        let later = http.get(&path, &[]).await;
        assert!(
            later
                .header("cache-status")
                .starts_with("cachette; hit; ttl="),
            "{backend}: {}",
            later.header("cache-status")
        );
        let joined = follower.header("cache-status");
        if joined.starts_with("cachette; fwd=miss; collapsed; ttl=") {
            return;
        }
        assert!(
            joined.starts_with("cachette; hit; ttl="),
            "{backend}: the follower either joined the load or came after it: {joined}"
        );
    }
    panic!("{backend}: no follower said `collapsed` in {JOIN_ATTEMPTS} attempts");
}

/// Lookups of route generations so far, over every layer (each request makes one).
fn generation_lookups() -> u64 {
    stats()
        .sites
        .iter()
        .filter(|site| site.function == "cachette::http route generation")
        .map(|site| site.hits + site.misses + site.stale + site.errors + site.bypasses)
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
async fn http_layer_over_memory_redis_and_tiered() {
    // One test, so one runtime, for all three backends: a redis backend's connection lives on the
    // runtime that first used it.
    let server = RedisServer::start();
    let redis = RedisBackend::builder()
        .url(server.url())
        .prefix("h")
        .build()
        .expect("valid configuration");
    // The tiered backend under its own prefix, so that it starts cold.
    let l2 = RedisBackend::builder()
        .url(server.url())
        .prefix("ht")
        .build()
        .expect("valid configuration");
    configure()
        .redis("redis", redis)
        .tiered("tiered", TieredBackend::builder(l2).build())
        .install()
        .expect("configured once");

    scenarios("memory").await;
    scenarios("redis").await;
    scenarios("tiered").await;
    the_redis_run_stored_in_redis(&server).await;
}

/// The redis run stored in Redis: the route generation of /users/2 is there, and one response.
async fn the_redis_run_stored_in_redis(server: &RedisServer) {
    let mut raw = server.connection().await;
    let exists: bool = raw
        .exists("h:1:{http:GET:/users/<2>}:v")
        .await
        .expect("exists");
    assert!(exists, "the route generation lives in redis");
    // Value keys only: each loaded entry also has its fence (made by the loader's claim).
    let keys: Vec<String> = raw
        .keys("h:1:{http:GET:/users/<2>|g*}:v")
        .await
        .expect("keys");
    assert_eq!(keys.len(), 1, "one stored response for /users/2: {keys:?}");
}
