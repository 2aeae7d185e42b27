//! Review of issue 13: the HTTP layer's own sites count every request that reaches them, as a
//! `#[cached]` function's site does (a real axum server, a real client).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use cachette::http::{CacheLayer, CachePolicy};
use cachette::{configure, stats, MemoryBackend};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

static RUNS: AtomicUsize = AtomicUsize::new(0);

async fn handler() -> &'static str {
    RUNS.fetch_add(1, Ordering::SeqCst);
    "hello"
}

/// A policy naming a backend that is not configured: the layer serves every request uncached,
/// which for a `#[cached]` function is a `bypass` ("no such backend"). The layer's response
/// site is registered (it appears in `stats()`), yet counts none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_layer_serves_without_its_backend_are_counted_as_bypasses() {
    configure()
        .memory("memory", MemoryBackend::default())
        .install()
        .expect("configured once");
    let policy = CachePolicy::new(Duration::from_secs(60)).backend("memory.unconfigured");
    let app = Router::new().route("/hello", get(handler).layer(CacheLayer::new(policy)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..2 {
        let request = axum::http::Request::get(format!("http://{address}/hello"))
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let response = client.request(request).await.expect("a response");
        let body = response.into_body().collect().await.expect("a body");
        assert_eq!(body.to_bytes(), "hello");
    }
    assert_eq!(RUNS.load(Ordering::SeqCst), 2, "served uncached, twice");

    let stats = stats();
    let site = stats
        .site("cachette::http response")
        .expect("the layer's response site is registered");
    assert_eq!(
        site.bypasses, 2,
        "two requests ran without the cache, none counted: {site:?}"
    );
}
