//! `#[invalidates]` and `cachette::invalidate` reach a configured Redis backend: the value is
//! deleted and the fence advanced, against a real redis-server.

mod support;

use cachette::{configure, invalidate, invalidates, KeyBuilder, RedisBackend};
use redis::AsyncCommands;
use support::redis_server::RedisServer;

#[invalidates("user:<id>")]
async fn rename_user(id: u64, fail: bool) -> Result<(), String> {
    if fail {
        Err(format!("cannot rename {id}"))
    } else {
        Ok(())
    }
}

/// A synchronous mutation (say, behind a blocking database driver) reaches Redis too.
#[invalidates("user:<id>")]
fn rename_user_blocking(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reaches_redis_and_leaves_a_fence() {
    let server = RedisServer::start();
    let backend = RedisBackend::builder()
        .url(server.url())
        .prefix("inv")
        .build()
        .expect("valid configuration");
    configure()
        .redis("redis", backend)
        .install()
        .expect("configured once");
    let mut raw = server.connection().await;

    let () = raw.set("inv:1:{user:<7>}:v", "old").await.expect("plant");
    rename_user(7, true).await.expect_err("fails");
    let kept: Option<String> = raw.get("inv:1:{user:<7>}:v").await.expect("get");
    assert_eq!(kept.as_deref(), Some("old"), "an Err invalidates nothing");

    rename_user(7, false).await.expect("succeeds");
    let gone: Option<String> = raw.get("inv:1:{user:<7>}:v").await.expect("get");
    assert_eq!(gone, None);
    let fence: i64 = raw.get("inv:1:{user:<7>}:f").await.expect("get");
    // Made of nothing: random, never the 1 an `INCR` would make again after a restart.
    assert!(fence >= 1 << 40, "{fence}");
    let fence_ttl: i64 = raw.pttl("inv:1:{user:<7>}:f").await.expect("pttl");
    assert!(fence_ttl > 0, "the fence expires");

    let () = raw.set("inv:1:{user:<9>}:v", "old").await.expect("plant");
    tokio::task::spawn_blocking(|| rename_user_blocking(9))
        .await
        .expect("no panic")
        .expect("succeeds");
    let gone: Option<String> = raw.get("inv:1:{user:<9>}:v").await.expect("get");
    assert_eq!(gone, None, "a sync #[invalidates] reached redis");
    let fence: i64 = raw.get("inv:1:{user:<9>}:f").await.expect("get");
    assert!(fence >= 1 << 40, "{fence}");

    let () = raw.set("inv:1:{user:<8>}:v", "old").await.expect("plant");
    invalidate(&KeyBuilder::new().lit("user:").arg(&8u64).finish()).await;
    let gone: Option<String> = raw.get("inv:1:{user:<8>}:v").await.expect("get");
    assert_eq!(gone, None);
}
