//! `#[cached(backend = "redis")]` against a real redis-server: sharing through Redis, bad bytes,
//! fail-open and recovery, the fence race, and single-flight.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cachette::{cached, configure, RedisBackend};
use redis::AsyncCommands;
use support::redis_server::{OnExit, RedisServer};
use tokio::sync::{Barrier, Mutex};

/// One server for this binary. The scenarios run in one test, on one runtime, since a backend's
/// connection lives on the runtime that first used it (as in an application, which has one).
fn server() -> &'static Mutex<RedisServer> {
    static SERVER: OnceLock<Mutex<RedisServer>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = RedisServer::start();
        let backend = RedisBackend::builder()
            .url(server.url())
            .prefix("t")
            .op_timeout(OP_TIMEOUT)
            .build()
            .expect("valid configuration");
        // A second application on the same Redis, under its own prefix.
        let other_app = RedisBackend::builder()
            .url(server.url())
            .prefix("other-app")
            .op_timeout(OP_TIMEOUT)
            .build()
            .expect("valid configuration");
        configure()
            .redis("redis", backend)
            .redis("redis.other", other_app)
            .install()
            .expect("configured once");
        Mutex::new(server)
    })
}

static PRODUCT_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "product:<id>", backend = "redis")]
async fn product(id: u64) -> Result<String, String> {
    let n = PRODUCT_LOADS.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(format!("product {id} load {n}"))
}

async fn values_are_stored_in_redis_with_a_ttl_and_read_back() {
    let server = server().lock().await;
    let first = product(1).await.expect("ok");
    assert_eq!(product(1).await.expect("ok"), first);
    let mut raw = server.connection().await;
    let ttl: i64 = raw.pttl("t:1:{product:<1>}:v").await.expect("pttl");
    assert!(ttl > 0 && ttl <= 60_000, "ttl {ttl}");
    // Another reader of the same Redis (another process) sees the value: delete nothing, read raw.
    let bytes: Vec<u8> = raw.get("t:1:{product:<1>}:v").await.expect("get");
    assert_eq!(&bytes[..4], b"CCHT");
}

static PLANTED_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "planted:<case>", backend = "redis")]
async fn planted(case: u8) -> u64 {
    PLANTED_LOADS.fetch_add(1, Ordering::SeqCst);
    u64::from(case) * 1000
}

#[cached(ttl = "60s", key = "planted:<case>", backend = "redis")]
async fn planted_as_text(case: u8) -> String {
    format!("text {case}")
}

async fn bad_bytes_are_a_miss_and_are_overwritten() {
    let server = server().lock().await;
    let mut raw = server.connection().await;
    let cases: [(u8, Vec<u8>); 3] = [
        (1, b"not an envelope".to_vec()),
        (2, Vec::new()),
        (3, b"CCHT\x02garbage".to_vec()),
    ];
    for (case, bytes) in &cases {
        let key = format!("t:1:{{planted:<{case}>}}:v");
        let () = raw.set(&key, bytes).await.expect("plant");
        assert_eq!(planted(*case).await, u64::from(*case) * 1000);
        let now: Vec<u8> = raw.get(&key).await.expect("get");
        assert_eq!(
            &now[..4],
            b"CCHT",
            "case {case} was overwritten by the fill"
        );
        assert_eq!(
            planted(*case).await,
            u64::from(*case) * 1000,
            "and now hits"
        );
    }
    assert_eq!(PLANTED_LOADS.load(Ordering::SeqCst), 3);
    // Another type's value under the same key: a miss for each, never a wrong value.
    assert_eq!(planted_as_text(1).await, "text 1");
    assert_eq!(planted(1).await, 1000);
}

#[cached(ttl = "60s", key = "owner:<id>", backend = "redis")]
async fn owner(id: u64) -> String {
    format!("owner {id}")
}

#[cached(ttl = "60s", key = "owner:<id>", backend = "redis.other")]
async fn other_app_owner(id: u64) -> String {
    format!("other app's owner {id}")
}

async fn an_entry_copied_under_another_key_is_a_miss() {
    let server = server().lock().await;
    let mut raw = server.connection().await;
    assert_eq!(owner(1).await, "owner 1");
    // A valid envelope for the right type, under the wrong key: what COPY, RENAME, a restore
    // into the wrong place or a bug elsewhere leave behind.
    let copied: bool = redis::cmd("COPY")
        .arg("t:1:{owner:<1>}:v")
        .arg("t:1:{owner:<2>}:v")
        .arg("REPLACE")
        .query_async(&mut raw)
        .await
        .expect("copy");
    assert!(copied);
    assert_eq!(owner(2).await, "owner 2", "key 2 loads its own value");
    assert_eq!(owner(2).await, "owner 2", "and its fill replaced the copy");
    // The same cache key under another application's prefix: not that application's value.
    let copied: bool = redis::cmd("COPY")
        .arg("t:1:{owner:<1>}:v")
        .arg("other-app:1:{owner:<1>}:v")
        .arg("REPLACE")
        .query_async(&mut raw)
        .await
        .expect("copy");
    assert!(copied);
    assert_eq!(other_app_owner(1).await, "other app's owner 1");
    assert_eq!(owner(1).await, "owner 1", "the original still hits");
}

static FAILOPEN_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "failopen:<id>", backend = "redis")]
async fn failopen(id: u64) -> u64 {
    FAILOPEN_LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

async fn a_dead_redis_fails_open_and_caching_resumes_after_restart() {
    let mut server = server().lock().await;
    assert_eq!(failopen(1).await, 1);
    server.kill();
    let started = Instant::now();
    for _ in 0..200 {
        assert_eq!(
            failopen(2).await,
            2,
            "every call succeeds while redis is down"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the breaker keeps a dead redis cheap: {:?}",
        started.elapsed()
    );
    server.restart();
    // Hits resume by themselves once the breaker's probe succeeds; bounded wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        failopen(3).await;
        let before = FAILOPEN_LOADS.load(Ordering::SeqCst);
        failopen(3).await;
        if FAILOPEN_LOADS.load(Ordering::SeqCst) == before {
            break;
        }
        assert!(Instant::now() < deadline, "caching did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

static PAUSED_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "paused:<id>", backend = "redis")]
async fn paused(id: u64) -> u64 {
    PAUSED_LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

/// The op timeout configured in `server()`; a call may spend it once on Redis, never more.
const OP_TIMEOUT: Duration = Duration::from_millis(200);

async fn a_paused_redis_costs_each_call_at_most_one_timeout() {
    let server = server().lock().await;
    assert_eq!(paused(0).await, 0, "warm the connection");
    server.pause();
    let tasks: Vec<_> = (0..50u64)
        .map(|i| {
            tokio::spawn(async move {
                let started = Instant::now();
                let value = paused(i % 5).await;
                (i % 5, value, started.elapsed())
            })
        })
        .collect();
    for task in tasks {
        let (id, value, took) = task.await.expect("completes");
        assert_eq!(value, id, "the call succeeded");
        // One timeout plus scheduling slack on a loaded 2-core machine; without the
        // fail-open path a call would wait for read + lock + fill, three timeouts.
        assert!(
            took < OP_TIMEOUT * 2 + Duration::from_millis(150),
            "a call took {took:?} against a paused redis"
        );
    }
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        paused(9).await;
        let before = PAUSED_LOADS.load(Ordering::SeqCst);
        paused(9).await;
        if PAUSED_LOADS.load(Ordering::SeqCst) == before {
            break;
        }
        assert!(Instant::now() < deadline, "caching did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fence_race!("redis");

async fn a_slow_loader_cannot_store_old_data_after_an_invalidation() {
    let _server = server().lock().await;
    a_slow_loader_cannot_store_old_data().await;
}

static FLIGHT_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "flight", backend = "redis")]
async fn flight() -> u64 {
    FLIGHT_LOADS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    7
}

async fn many_tasks_on_a_cold_redis_key_load_once() {
    let _server = server().lock().await;
    let barrier = Arc::new(Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                flight().await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("completes"), 7);
    }
    assert_eq!(FLIGHT_LOADS.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_backend_scenarios() {
    let _stop = OnExit(|| {
        if let Ok(mut server) = server().try_lock() {
            server.kill();
        }
    });
    values_are_stored_in_redis_with_a_ttl_and_read_back().await;
    bad_bytes_are_a_miss_and_are_overwritten().await;
    an_entry_copied_under_another_key_is_a_miss().await;
    a_slow_loader_cannot_store_old_data_after_an_invalidation().await;
    many_tasks_on_a_cold_redis_key_load_once().await;
    a_paused_redis_costs_each_call_at_most_one_timeout().await;
    a_dead_redis_fails_open_and_caching_resumes_after_restart().await;
}
