//! The axum example's `/metrics`, `/stats` and `/health`: the example's own router (its
//! `app.rs`, included below) on a real server over a real redis-server, scraped by a real HTTP
//! client, and the request counters checked against what the requests did. One test: the
//! recorder is process-wide, and it is installed the way the example installs it.

mod support;

#[path = "../examples/axum_service/app.rs"]
mod app;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use cachette::{configure, metric_names as names, RedisBackend, TieredBackend};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::redis_server::RedisServer;

/// The site label of every cached response (the HTTP layer's one site per layer).
const RESPONSES: &str = "cachette::http response";

// ---------------------------------------------------------------------------------------------
// The Prometheus text format, read simply: one sample per line that is not a comment.

/// One scrape of `/metrics`: every sample, as (name, labels, value).
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(sample)
            .collect();
        Scrape(samples)
    }

    /// The sum of the samples named `name` whose labels include `labels`; 0 when there is none.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, value)| value).sum()
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.0
            .iter()
            .filter(move |(sample, have, _)| {
                sample == name
                    && labels
                        .iter()
                        .all(|(key, value)| have.get(*key).map(String::as_str) == Some(*value))
            })
            .map(|(_, labels, value)| (labels, *value))
    }

    /// `cachette_requests_total` of the cached responses with this `result`, over every tier.
    fn responses(&self, result: &str) -> f64 {
        self.sum(names::REQUESTS, &[("site", RESPONSES), ("result", result)])
    }
}

/// `name{key="value",...} value [timestamp]`, or `name value [timestamp]`.
fn sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let name_end = line
        .find(['{', ' '])
        .expect("a name, then labels or a value");
    let (name, rest) = line.split_at(name_end);
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(rest) => labels(rest),
        None => (BTreeMap::new(), rest),
    };
    let value = rest.split_whitespace().next().expect("a value");
    let value = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
    (name.to_owned(), labels, value)
}

/// The labels after `{`, up to and including `}`; values are quoted, with `\\`, `\"` and `\n`.
fn labels(mut rest: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let (key, quoted) = rest.split_once("=\"").expect("key=\"value\"");
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next().expect("a closing quote") {
                (at, '"') => break at,
                (_, '\\') => match chars.next().expect("an escaped character").1 {
                    'n' => value.push('\n'),
                    escaped => value.push(escaped),
                },
                (_, plain) => value.push(plain),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = &quoted[end + 1..];
    }
}

#[test]
fn the_parser_reads_labels_with_escapes_and_bare_samples() {
    let scrape = Scrape::parse(
        "# HELP x y\n# TYPE a counter\n\
         a{site=\"m::f\",path=\"q\\\"\\\\\\n\",result=\"hit\"} 3\n\
         a{site=\"m::f\",result=\"miss\"} 2 1700000000\n\
         b 1.5\n",
    );
    assert_eq!(scrape.sum("a", &[("site", "m::f")]), 5.0);
    assert_eq!(scrape.sum("a", &[("path", "q\"\\\n")]), 3.0);
    assert_eq!(scrape.sum("a", &[("result", "stale")]), 0.0);
    assert_eq!(scrape.sum("b", &[]), 1.5);
}

// ---------------------------------------------------------------------------------------------
// A real HTTP/1.1 client.

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

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

impl Http {
    async fn start(app: axum::Router) -> Http {
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

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
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

    /// A GET whose `Cache-Status` starts with `status`.
    async fn get_expecting(&self, path: &str, headers: &[(&str, &str)], status: &str) -> Reply {
        let reply = self.get(path, headers).await;
        assert!(
            reply.header("cache-status").starts_with(status),
            "GET {path}: {status} expected, got {:?}",
            reply.header("cache-status")
        );
        reply
    }

    async fn scrape(&self) -> Scrape {
        let reply = self.get("/metrics", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.header("content-type").starts_with("text/plain"));
        Scrape::parse(reply.text())
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_what_the_requests_did() {
    // As the example's main does: the recorder first, then the backends, then the router.
    let metrics = app::install_metrics().expect("the only recorder");
    let server = RedisServer::start();
    let redis = RedisBackend::builder()
        .url(server.url())
        .prefix("example")
        .build()
        .expect("valid configuration");
    let tiered = TieredBackend::builder(redis).build();
    configure()
        .tiered("tiered", tiered.clone())
        .install()
        .expect("configured once");
    let http = Http::start(app::router(Arc::default(), metrics)).await;

    let before = http.scrape().await;
    assert!(
        before.has(names::BUS_CONNECTED, &[("backend", "tiered")]),
        "the backend's series are registered by configure(), after the recorder"
    );
    assert_eq!(before.responses("hit") + before.responses("miss"), 0.0);

    // 2 misses (each runs the handler), 3 hits (a 304 is one).
    let first = http
        .get_expecting("/users/1", &[], "cachette; fwd=miss; stored")
        .await;
    http.get_expecting("/users/1", &[], "cachette; hit").await;
    http.get_expecting("/users/2", &[], "cachette; fwd=miss; stored")
        .await;
    http.get_expecting("/users/2", &[], "cachette; hit").await;
    let etag = first.header("etag");
    let not_modified = http
        .get_expecting("/users/1", &[("if-none-match", etag)], "cachette; hit")
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);

    let after = http.scrape().await;
    assert_eq!(
        after.responses("hit") - before.responses("hit"),
        3.0,
        "hits moved by"
    );
    assert_eq!(
        after.responses("miss") - before.responses("miss"),
        2.0,
        "misses moved by"
    );
    for quiet in ["stale", "bypass", "error"] {
        assert_eq!(after.responses(quiet), 0.0, "{quiet}");
    }
    let loads = |scrape: &Scrape, outcome| {
        scrape.sum(names::LOADS, &[("site", RESPONSES), ("outcome", outcome)])
    };
    assert_eq!(loads(&after, "ok") - loads(&before, "ok"), 2.0);
    assert!(
        after.has(names::REQUESTS, &[("site", RESPONSES), ("result", "hit")]),
        "the route's series are there"
    );

    // A rename invalidates /users/1: the next GET is a miss, the one after it a hit.
    let sent = |scrape: &Scrape| {
        scrape.sum(
            names::INVALIDATIONS,
            &[("backend", "tiered"), ("event", "sent")],
        )
    };
    let put = http.send("PUT", "/users/1", &[], "Ada").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let renamed = http
        .get_expecting("/users/1", &[], "cachette; fwd=miss; stored")
        .await;
    assert_eq!(renamed.text(), "{\"id\":1,\"name\":\"Ada\"}");
    http.get_expecting("/users/1", &[], "cachette; hit").await;
    eprintln!("{}", http.get("/metrics", &[]).await.text());
    eprintln!("{}", http.get("/stats", &[]).await.text());
    let last = http.scrape().await;
    assert_eq!(last.responses("hit") - after.responses("hit"), 1.0, "hits");
    assert_eq!(
        last.responses("miss") - after.responses("miss"),
        1.0,
        "misses"
    );
    assert_eq!(sent(&last) - sent(&after), 1.0, "one key invalidated");
    for (_, labels, _) in &last.0 {
        assert!(
            labels.values().all(|value| !value.contains("/users/")),
            "a label holds a key: {labels:?}"
        );
    }

    // `/stats` counts the same calls, without any exporter.
    let stats = http.get("/stats", &[]).await.json();
    let responses = stats
        .as_array()
        .expect("a list of sites")
        .iter()
        .find(|site| site["function"] == RESPONSES)
        .expect("the cached route's site");
    assert_eq!(responses["hits"], 4);
    assert_eq!(responses["misses"], 3);
    assert_eq!(responses["loads"], 3);
    assert_eq!(responses["hit_ratio"], 4.0 / 7.0);

    // `/health`: the bus started with the first call.
    tiered.l1_ready().await;
    let health = http.get("/health", &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    let health = health.json();
    assert_eq!(health["healthy"], true, "{health}");
    let backend = &health["backends"][0];
    assert_eq!(backend["name"], "tiered");
    assert_eq!(backend["breaker"], "closed");
    assert_eq!(backend["bus_connected"], true);
    assert_eq!(backend["pending_invalidations"], 0);
}
