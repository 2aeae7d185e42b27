//! The first thing to run: a miss, a hit, an invalidation, and a miss again.
//!
//! `cargo run --example quickstart` (no configuration, no server).

use std::time::{Duration, Instant};

use cachette::{cached, invalidates};

/// Serialisable, because a site without `backend` follows the configured default backend,
/// which may keep it in Redis (`memory` here: nothing is configured).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[derive(Debug)]
struct DbError;

/// Stands in for a database: every read takes 50 ms.
struct Db;

impl Db {
    async fn load(&self, id: u64) -> Result<User, DbError> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(User {
            id,
            name: format!("user-{id}"),
        })
    }
}

#[cached(ttl = "60s", key = "user:<id>")]
async fn get_user(id: u64, db: &Db) -> Result<User, DbError> {
    println!("    (loading user {id} from the database)");
    db.load(id).await
}

#[invalidates("user:<id>")]
async fn rename_user(id: u64, name: String, _db: &Db) -> Result<(), DbError> {
    println!("    (renaming user {id} to {name})");
    Ok(())
}

async fn timed(label: &str, db: &Db) {
    let start = Instant::now();
    let user = get_user(42, db)
        .await
        .expect("the stand-in database never fails");
    println!(
        "{label:<30} user {} \"{}\" in {:?}",
        user.id,
        user.name,
        start.elapsed()
    );
}

#[tokio::main]
async fn main() {
    let db = Db;
    timed("1. first call (miss):", &db).await;
    timed("2. second call (hit):", &db).await;
    rename_user(42, "Ada".into(), &db)
        .await
        .expect("rename succeeds");
    println!("3. rename_user invalidated user:<42>");
    timed("4. after invalidation (miss):", &db).await;
    timed("5. again (hit):", &db).await;
}
