//! Review of issue 15's fail-safe (`stale`, `throttle`, `hard_timeout`): repros against a real
//! redis-server, on a test clock. One configuration per test binary, so the scenarios share
//! one server, one clock and one runtime (`fail_safe_review`).

mod support;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, RedisBackend, TestClock};
use support::redis_server::RedisServer;
use tokio::sync::{mpsc, Notify};

/// What the loader does next.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Loader {
    Returns(u64),
    /// `None` for an `Option` site (the item is gone at the source).
    Absent,
    Fails,
    Panics,
    /// Waits for `RELEASE`, then fails.
    HangsThenFails,
}

static LOADER: Mutex<Loader> = Mutex::new(Loader::Returns(1));
static LOADS: AtomicUsize = AtomicUsize::new(0);
static STARTED: Mutex<Option<mpsc::UnboundedSender<()>>> = Mutex::new(None);
static RELEASE: Notify = Notify::const_new();

fn next_start() -> mpsc::UnboundedReceiver<()> {
    let (sender, receiver) = mpsc::unbounded_channel();
    *STARTED.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
    receiver
}

fn set(loader: Loader) {
    *LOADER.lock().unwrap_or_else(PoisonError::into_inner) = loader;
}

fn loads() -> usize {
    LOADS.load(Ordering::SeqCst)
}

async fn run_loader() -> Option<Result<u64, String>> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    let loader = *LOADER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(started) = STARTED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        let _ = started.send(());
    }
    match loader {
        Loader::Returns(value) => Some(Ok(value)),
        Loader::Absent => None,
        Loader::Fails => Some(Err("the database is down".to_owned())),
        Loader::Panics => panic!("the loader panicked"),
        Loader::HangsThenFails => {
            RELEASE.notified().await;
            Some(Err("the database timed out".to_owned()))
        }
    }
}

async fn result_loader() -> Result<u64, String> {
    run_loader().await.unwrap_or(Err("no such item".to_owned()))
}

#[cached(
    ttl = "60s",
    key = "rv:<id>",
    backend = "redis",
    stale = "10m",
    throttle = "5s"
)]
async fn price(id: u64) -> Result<u64, String> {
    let _ = id;
    result_loader().await
}

#[cached(
    ttl = "60s",
    key = "rv:<id>",
    backend = "redis.peer",
    stale = "10m",
    throttle = "5s"
)]
async fn price_in_peer(id: u64) -> Result<u64, String> {
    let _ = id;
    result_loader().await
}

/// The same key as `price`, without fail-safe (another service, or the previous release).
#[cached(ttl = "60s", key = "rv:<id>", backend = "redis")]
async fn price_plain(id: u64) -> Result<u64, String> {
    let _ = id;
    result_loader().await
}

/// An `Option` site: `None` says the item is gone.
#[cached(
    ttl = "60s",
    key = "member:<id>",
    backend = "redis",
    stale = "10m",
    hard_timeout = "200ms"
)]
async fn member(id: u64) -> Option<u64> {
    let _ = id;
    match run_loader().await {
        Some(Ok(value)) => Some(value),
        Some(Err(_)) | None => None,
    }
}

#[invalidates("rv:<id>")]
async fn reprice(id: u64) {
    let _ = id;
}

const TTL: Duration = Duration::from_secs(60);

struct Env {
    server: RedisServer,
    clock: TestClock,
    runtime: tokio::runtime::Runtime,
}

impl Env {
    fn start() -> Env {
        let server = RedisServer::start();
        let clock = TestClock::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("a runtime");
        let redis = |prefix: &str| {
            RedisBackend::builder()
                .url(server.url())
                .prefix(prefix)
                .op_timeout(Duration::from_millis(300))
                .clock(&clock)
                .build()
                .expect("valid configuration")
        };
        runtime.block_on(async {
            configure()
                .redis("redis", redis("rv"))
                .redis("redis.peer", redis("rv"))
                .install()
                .expect("configured once");
        });
        Env {
            server,
            clock,
            runtime,
        }
    }
}

/// One configuration per test binary: the scenarios run one after the other on one server,
/// clock and runtime; each failure is reported (its panic message above) and the rest still
/// run, and the server is stopped whatever happened.
#[test]
fn fail_safe_review() {
    let env = Env::start();
    let mut failed = Vec::new();
    macro_rules! scenario {
        ($name:ident) => {
            let ran =
                std::panic::catch_unwind(AssertUnwindSafe(|| env.runtime.block_on($name(&env))));
            if ran.is_err() {
                failed.push(stringify!($name));
            }
        };
    }
    scenario!(a_none_answer_ends_the_stale_entry);
    scenario!(a_stale_write_back_does_not_overwrite_a_newer_fill);
    scenario!(the_throttle_holds_across_instances_and_concurrent_callers);
    scenario!(followers_of_a_panicking_load_get_the_stale_value);
    scenario!(corrupt_or_foreign_entries_are_not_served_stale);
    drop(env);
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// `Option` site: the loader answered `None` after the ttl (the item was deleted at the
/// source). The old `Some` is still kept for fail-safe, so a later load that panics or hangs
/// serves a value the source already said does not exist.
async fn a_none_answer_ends_the_stale_entry(env: &Env) {
    set(Loader::Returns(10));
    assert_eq!(member(1).await, Some(10));
    env.clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Absent);
    assert_eq!(member(1).await, None, "the item is gone at the source");
    set(Loader::Panics);
    let served = tokio::spawn(member(1)).await;
    assert!(
        served.is_err(),
        "served {served:?} after the loader said the item is gone"
    );
}

/// A fail-safe write-back stores the stale value under the claim's fence only: a newer value
/// that another process filled meanwhile under the same fence (a waiter that gave up after the
/// 10 s wait limit and loaded without the lock) is overwritten by the older one.
async fn a_stale_write_back_does_not_overwrite_a_newer_fill(env: &Env) {
    set(Loader::Returns(100));
    assert_eq!(price(2).await, Ok(100));
    env.clock.advance(TTL + Duration::from_secs(1));
    set(Loader::HangsThenFails);
    let mut started = next_start();
    let leader = tokio::spawn(price(2));
    started.recv().await;
    // The peer waits behind the leader's lock for the wait limit, then loads on its own.
    set(Loader::Returns(200));
    let began = Instant::now();
    assert_eq!(price_in_peer(2).await, Ok(200));
    assert!(began.elapsed() >= Duration::from_secs(9), "it waited first");
    // The leader's load now fails: its caller gets the newer value, not the stale one.
    RELEASE.notify_one();
    assert_eq!(leader.await.expect("no panic"), Ok(200));
    assert_eq!(
        price(2).await,
        Ok(200),
        "the stale write-back replaced the newer value"
    );
}

/// 2 instances x 20 concurrent callers while the loader keeps failing: one load per throttle
/// interval, every caller gets the stale value, over three intervals.
async fn the_throttle_holds_across_instances_and_concurrent_callers(env: &Env) {
    set(Loader::Returns(400));
    assert_eq!(price(4).await, Ok(400));
    env.clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Fails);
    for interval in 0..3 {
        let before = loads();
        let calls: Vec<_> = (0..40)
            .map(|n| {
                if n % 2 == 0 {
                    tokio::spawn(price(4))
                } else {
                    tokio::spawn(price_in_peer(4))
                }
            })
            .collect();
        for call in calls {
            assert_eq!(
                call.await.expect("no panic"),
                Ok(400),
                "interval {interval}"
            );
        }
        assert_eq!(loads() - before, 1, "loads in interval {interval}");
        env.clock.advance(Duration::from_secs(6));
    }
}

/// A panicking loader with followers waiting: all of them get the stale value.
async fn followers_of_a_panicking_load_get_the_stale_value(env: &Env) {
    set(Loader::Returns(500));
    assert_eq!(price(5).await, Ok(500));
    env.clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Panics);
    let before = loads();
    let calls: Vec<_> = (0..20).map(|_| tokio::spawn(price(5))).collect();
    for call in calls {
        assert_eq!(call.await.expect("no panic reaches a caller"), Ok(500));
    }
    assert_eq!(loads() - before, 1);
}

/// Corrupt bytes, and an entry a site without fail-safe wrote, are never served stale.
async fn corrupt_or_foreign_entries_are_not_served_stale(env: &Env) {
    let mut raw = env.server.connection().await;
    // Corrupt bytes over an entry past its ttl.
    set(Loader::Returns(600));
    assert_eq!(price(6).await, Ok(600));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("rv:*{rv:<6>}:v")
        .query_async(&mut raw)
        .await
        .expect("redis up");
    let [value_key] = <[String; 1]>::try_from(keys).expect("one value key");
    let mut bytes: Vec<u8> = redis::cmd("GET")
        .arg(&value_key)
        .query_async(&mut raw)
        .await
        .expect("redis up");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let () = redis::cmd("SET")
        .arg(&value_key)
        .arg(bytes)
        .query_async(&mut raw)
        .await
        .expect("redis up");
    env.clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Fails);
    assert_eq!(price(6).await, Err("the database is down".to_owned()));

    // Written without fail-safe: no stale window.
    set(Loader::Returns(610));
    assert_eq!(price_plain(7).await, Ok(610));
    env.clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Fails);
    assert_eq!(price(7).await, Err("the database is down".to_owned()));

    // Written with fail-safe, read without: a miss past the ttl.
    set(Loader::Returns(620));
    assert_eq!(price(8).await, Ok(620));
    env.clock.advance(TTL + Duration::from_secs(1));
    set(Loader::Fails);
    assert_eq!(price_plain(8).await, Err("the database is down".to_owned()));
    // And the fail-safe site still has it.
    assert_eq!(price(8).await, Ok(620));
    reprice(8).await;
    assert_eq!(price(8).await, Err("the database is down".to_owned()));
}
