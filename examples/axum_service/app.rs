//! The users service's router, and what it says about its cache: `/metrics` (Prometheus text
//! format), `/health` and `/stats`. `main.rs` serves it; `tests/example_metrics.rs` serves the
//! same router and scrapes it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use cachette::http::{CacheLayer, CachePolicy};
use cachette::{invalidates, BackendHealth, BreakerState, SiteStats};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};

/// How often the exporter folds recent histogram samples into what it renders. Without an HTTP
/// listener of its own the exporter does not do it by itself.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder as the process's `metrics` recorder and returns the handle
/// that renders `/metrics`.
///
/// Call it first: cachette registers its metric handles once (a backend's in
/// `configure().install()`, a cached function's or route's on its first call) and keeps them,
/// so whatever is registered before a recorder is installed reports to nothing, for good.
/// Must run inside a Tokio runtime (it starts the exporter's upkeep task).
pub fn install_metrics() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        // Load and wait times as Prometheus histograms (aggregatable across instances, for
        // `histogram_quantile`), not the exporter's default per-process summaries.
        .set_buckets(&[0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0])?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

#[derive(Default)]
pub struct Db {
    names: Mutex<HashMap<u64, String>>,
}

#[derive(serde::Serialize)]
struct User {
    id: u64,
    name: String,
}

async fn get_user(State(db): State<Arc<Db>>, Path(id): Path<u64>) -> Json<User> {
    println!("    handler: loading user {id}");
    let name = db.names.lock().expect("lock").get(&id).cloned();
    Json(User {
        id,
        name: name.unwrap_or_else(|| format!("user {id}")),
    })
}

/// The write; when it succeeds, every cached `GET /users/{id}` response goes (all query strings
/// and `Vary` variants).
#[invalidates("http:GET:/users/<id>")]
async fn rename(db: &Db, id: u64, name: String) -> Result<(), Infallible> {
    db.names.lock().expect("lock").insert(id, name);
    Ok(())
}

async fn put_user(State(db): State<Arc<Db>>, Path(id): Path<u64>, name: String) -> StatusCode {
    match rename(&db, id, name).await {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(never) => match never {},
    }
}

/// The service: `GET`/`PUT /users/{id}` (cached in the `tiered` backend), `/metrics`, `/health`
/// and `/stats`. Build it after `configure().install()`.
pub fn router(db: Arc<Db>, metrics: PrometheusHandle) -> Router {
    let policy = CachePolicy::new(Duration::from_secs(60))
        .backend("tiered")
        .stale_while_revalidate(Duration::from_secs(30));
    Router::new()
        .route(
            "/users/{id}",
            get(get_user).layer(CacheLayer::new(policy)).put(put_user),
        )
        .with_state(db)
        .route(
            "/metrics",
            get(move || async move {
                let text_format = [(CONTENT_TYPE, "text/plain; version=0.0.4")];
                // In-process hits are exported from cachette's own counters: bring them up to
                // date, so that the scrape is exact (a thread also does it every second).
                cachette::publish_metrics();
                (text_format, metrics.render())
            }),
        )
        .route("/health", get(health))
        .route("/stats", get(stats))
}

/// Always `200`: a cache in trouble (Redis down, the bus lost) slows the service but does not
/// break it, as calls then run uncached, so this is for dashboards and alerts, not for taking
/// an instance out of rotation. A tiered backend's bus starts with its first call: until then
/// it reports the bus down.
async fn health() -> impl IntoResponse {
    let backends: Vec<Value> = cachette::health().iter().map(backend_health).collect();
    let healthy = cachette::health().iter().all(BackendHealth::is_healthy);
    Json(json!({ "healthy": healthy, "backends": backends }))
}

fn backend_health(backend: &BackendHealth) -> Value {
    let breaker = backend.breaker.map(|breaker| match breaker {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half-open",
    });
    let last_error = backend.last_error.as_ref().map(|(error, at)| {
        let ago = SystemTime::now().duration_since(*at).unwrap_or_default();
        json!({ "error": error, "seconds_ago": ago.as_secs() })
    });
    json!({
        "name": backend.name,
        "kind": backend.kind,
        "healthy": backend.is_healthy(),
        "breaker": breaker,
        "last_error": last_error,
        "pending_invalidations": backend.pending_invalidations,
        "bus_connected": backend.bus_connected,
        "l1_in_use": backend.l1_in_use,
    })
}

/// Each cached function's (here: each cached route's) counts since start-up.
async fn stats() -> Json<Vec<Value>> {
    Json(cachette::stats().sites.iter().map(site_stats).collect())
}

fn site_stats(site: &SiteStats) -> Value {
    json!({
        "function": site.function,
        "backend": site.backend,
        "hits": site.hits,
        "l1_hits": site.l1_hits,
        "misses": site.misses,
        "stale": site.stale,
        "errors": site.errors,
        "bypasses": site.bypasses,
        "loads": site.loads,
        "load_failures": site.load_failures,
        "load_seconds": site.load_time.as_secs_f64(),
        "coalesced": site.coalesced,
        "hit_ratio": site.hit_ratio(),
    })
}
