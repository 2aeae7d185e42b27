//! Review 19: every HTTP answer counted once as its `Cache-Status` says, bypasses included: a
//! request the layer forwards with `fwd=bypass` (`no-store`, credentials without an identity,
//! `Range`) is one `bypass` in `stats()`, as the no-backend bypass is. In process (tower's
//! `oneshot`) over the memory backend.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use axum::routing::get;
use axum::Router;
use cachette::http::{CacheLayer, CachePolicy};
use cachette::{configure, stats, MemoryBackend};
use tower::ServiceExt;

const RESPONSES: &str = "cachette::http response";

fn bypasses() -> u64 {
    stats()
        .sites
        .iter()
        .filter(|site| site.function == RESPONSES)
        .map(|site| site.bypasses + site.hits + site.misses + site.stale + site.errors)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bypassed_http_answer_is_counted() {
    configure()
        .memory("memory", MemoryBackend::builder().build())
        .install()
        .expect("configured once");
    let policy = CachePolicy::new(Duration::from_secs(60)).backend("memory");
    let app = Router::new().route(
        "/r/{id}",
        get(|| async { "body" }).layer(CacheLayer::new(policy)),
    );
    // One request counted first, so the layer's site is in stats().
    let first = Request::builder().uri("/r/1").body(Body::empty()).unwrap();
    app.clone().oneshot(first).await.expect("infallible");
    let mut missing = Vec::new();
    for (name, value) in [
        ("cache-control", "no-store"),
        ("authorization", "Bearer x"),
        ("range", "bytes=0-1"),
    ] {
        let before = bypasses();
        let request = Request::builder()
            .uri("/r/1")
            .header(name, HeaderValue::from_static(value))
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(status.contains("fwd=bypass"), "{name}: {status}");
        let counted = bypasses() - before;
        if counted != 1 {
            missing.push(format!(
                "{name}: {value} -> `{status}` counted {counted} times"
            ));
        }
    }
    assert!(missing.is_empty(), "answers not counted once: {missing:#?}");
}
