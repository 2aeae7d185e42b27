//! A small users service: `GET /users/{id}` is cached with an ETag (and answers `304` without
//! running the handler), `PUT /users/{id}` renames the user and invalidates every cached
//! variant of that route. `/metrics` shows what the cache does in the Prometheus text format,
//! `/health` how its Redis and invalidation bus are, `/stats` each route's counts.
//!
//! ```text
//! redis-server --port 6379 --daemonize yes
//! CACHETTE_REDIS_URL=redis://127.0.0.1:6379/ cargo run --features axum --example axum_service
//! curl -i localhost:3000/users/1                                   # fwd=miss; stored
//! curl -i localhost:3000/users/1                                   # hit, same ETag
//! curl -i localhost:3000/users/1 -H 'If-None-Match: "<etag>"'      # 304, no body
//! curl -i -X PUT localhost:3000/users/1 -d Ada && curl -i localhost:3000/users/1   # miss, new ETag
//! curl -s localhost:3000/metrics | grep cachette_requests_total    # 2 misses, 3 hits
//! curl -s localhost:3000/health; curl -s localhost:3000/stats
//! ```

mod app;

use std::sync::Arc;

use cachette::{configure, RedisBackend, TieredBackend};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First: cachette registers its metric handles once, when the backends are configured and
    // when a cached route first runs. Whatever is registered before a recorder exists reports
    // to nothing for the life of the process.
    let metrics = app::install_metrics()?;

    let redis = RedisBackend::builder()
        .url_from_env("CACHETTE_REDIS_URL")
        .prefix("cachette-example")
        .build()?;
    configure()
        .tiered("tiered", TieredBackend::builder(redis).build())
        .install()?;

    let app = app::router(Arc::default(), metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
