//! A small users service: `GET /users/{id}` is cached with an ETag (and answers `304` without
//! running the handler), `PUT /users/{id}` renames the user and invalidates every cached
//! variant of that route.
//!
//! ```text
//! redis-server --port 6379 --daemonize yes
//! CACHETTE_REDIS_URL=redis://127.0.0.1:6379/ cargo run --features axum --example axum_service
//! curl -i localhost:3000/users/1                                   # fwd=miss; stored
//! curl -i localhost:3000/users/1                                   # hit, same ETag
//! curl -i localhost:3000/users/1 -H 'If-None-Match: "<etag>"'      # 304, no body
//! curl -i -X PUT localhost:3000/users/1 -d Ada && curl -i localhost:3000/users/1   # miss, new ETag
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use cachette::http::{CacheLayer, CachePolicy};
use cachette::{configure, invalidates, RedisBackend, TieredBackend};

#[derive(Default)]
struct Db {
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis = RedisBackend::builder()
        .url_from_env("CACHETTE_REDIS_URL")
        .prefix("cachette-example")
        .build()?;
    configure()
        .tiered("tiered", TieredBackend::builder(redis).build())
        .install()?;

    let policy = CachePolicy::new(Duration::from_secs(60))
        .backend("tiered")
        .stale_while_revalidate(Duration::from_secs(30));
    let app = Router::new()
        .route(
            "/users/{id}",
            get(get_user).layer(CacheLayer::new(policy)).put(put_user),
        )
        .with_state(Arc::new(Db::default()));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
