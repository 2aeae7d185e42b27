//! `drain_invalidations` against a real redis-server, frozen (SIGSTOP) while invalidations are
//! queued: delivered once Redis is back (read raw, and heard on the bus as a peer hears it); a
//! drain dropped mid-wait leaves the queue to deliver them; while Redis stays frozen it returns
//! the count by its timeout; and it waits for an invalidation still under way, in a task of its
//! own after its caller gave up, that fails and is queued.
//!
//! Two backends on their own stores (`redis`, and `tiered` over another `RedisBackend`): every
//! invalidation reaches both, so both queue it, and the drain waits for both. The scenarios run
//! in one test on one runtime, since a backend's connections live on the runtime that first used
//! them.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cachette::{
    cached, configure, drain_invalidations, health, invalidates, DrainError, RedisBackend,
    TieredBackend,
};
use futures::StreamExt;
use support::redis_server::{OnExit, RedisServer};
use tokio::sync::Mutex;

const OP_TIMEOUT: Duration = Duration::from_millis(200);
/// Longer than any delivery needs here (the breaker's probe interval is 1 s).
const PATIENCE: Duration = Duration::from_secs(10);

struct Fixture {
    server: RedisServer,
    redis: RedisBackend,
    tiered: TieredBackend,
}

fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = RedisServer::start();
        let l2 = |prefix: &str| {
            RedisBackend::builder()
                .url(server.url())
                .prefix(prefix)
                .op_timeout(OP_TIMEOUT)
                .build()
                .expect("valid configuration")
        };
        let redis = l2("dr");
        let tiered = TieredBackend::builder(l2("dt")).build();
        configure()
            .redis("redis", redis.clone())
            .tiered("tiered", tiered.clone())
            .install()
            .expect("configured once");
        Mutex::new(Fixture {
            server,
            redis,
            tiered,
        })
    })
}

/// The source of truth both backends cache.
static PRICE: AtomicU64 = AtomicU64::new(100);

#[cached(ttl = "60s", key = "price:<id>", backend = "redis")]
async fn price_redis(id: u64) -> u64 {
    PRICE.load(Ordering::SeqCst) + id
}

#[cached(ttl = "60s", key = "price:<id>", backend = "tiered")]
async fn price_tiered(id: u64) -> u64 {
    PRICE.load(Ordering::SeqCst) + id
}

#[invalidates("price:<id>")]
async fn change_price(id: u64) {
    let _ = id;
}

/// Keys nothing reads: their invalidations open the breakers of a frozen Redis.
#[invalidates("frozen:<n>")]
async fn change_frozen(n: u64) {
    let _ = n;
}

/// Told each time `change_price_told`'s body has run.
static BODY_RAN: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[invalidates("price:<id>")]
async fn change_price_told(id: u64) {
    let _ = id;
    BODY_RAN.notify_one();
}

#[invalidates("price:<id>")]
async fn change_price_panics(id: u64) {
    let _ = id;
    panic!("the mutation failed");
}

#[invalidates("price:<id>")]
async fn change_price_never_ends(id: u64) {
    let _ = id;
    BODY_RAN.notify_one();
    std::future::pending::<()>().await;
}

/// Invalidations pending over every configured backend.
fn pending() -> usize {
    health()
        .iter()
        .map(|backend| backend.pending_invalidations)
        .sum()
}

async fn raw_value(server: &RedisServer, prefix: &str, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(format!("{prefix}:1:{{{key}}}:v"))
        .query_async(&mut server.connection().await)
        .await
        .expect("raw get")
}

/// Both backends hold `price:<id>` in Redis.
async fn warm(server: &RedisServer, id: u64) {
    price_redis(id).await;
    price_tiered(id).await;
    let key = format!("price:<{id}>");
    assert!(raw_value(server, "dr", &key).await.is_some(), "stored");
    assert!(raw_value(server, "dt", &key).await.is_some(), "stored");
}

/// Freezes Redis and opens every backend's breaker (3 failures each), so that what is
/// invalidated next is refused and queued, never sent (a sent one would wait in the socket and
/// run when Redis thaws, delivered without any replay). `round` keeps each call's keys apart.
async fn freeze(server: &RedisServer, round: u64) {
    server.pause();
    for n in 0..3 {
        change_frozen(round * 10 + n).await;
    }
}

// ---- 1. Queued while Redis is frozen, delivered once it is back. ----

async fn a_drain_returns_once_the_queued_invalidations_reached_redis() {
    let fixture = fixture().lock().await;
    let server = &fixture.server;
    assert_eq!(drain_invalidations(PATIENCE).await, Ok(()), "nothing left");
    warm(server, 1).await;
    // A peer's view: the bus channel of `tiered`, on a connection of its own.
    let mut peer = redis::Client::open(server.url())
        .expect("valid url")
        .get_async_pubsub()
        .await
        .expect("pubsub");
    peer.subscribe("dt:1:bus").await.expect("subscribe");
    let mut heard = peer.into_on_message();

    freeze(server, 1).await;
    PRICE.store(200, Ordering::SeqCst);
    change_price(1).await;
    // Per backend: the 3 keys that opened its breaker, and `price:<1>`.
    assert_eq!(pending(), 8);
    server.resume();
    let started = Instant::now();
    assert_eq!(drain_invalidations(PATIENCE).await, Ok(()));
    println!("drain: delivered {:?} after the thaw", started.elapsed());
    assert_eq!(pending(), 0);
    assert_eq!(raw_value(server, "dr", "price:<1>").await, None, "deleted");
    assert_eq!(raw_value(server, "dt", "price:<1>").await, None, "deleted");
    // Announced with the deletion, before the drain returned.
    let announced = tokio::time::timeout(PATIENCE, async {
        while let Some(message) = heard.next().await {
            let text: String = message.get_payload().expect("text");
            if text.ends_with(" price:<1>") {
                return;
            }
        }
    })
    .await;
    assert!(announced.is_ok(), "a peer never heard the invalidation");
    assert_eq!(price_redis(1).await, 201, "loaded anew");
    assert_eq!(price_tiered(1).await, 201, "loaded anew");
}

// ---- 2. A drain dropped mid-wait leaves the queue to deliver. ----

async fn a_drain_dropped_mid_wait_leaves_the_queue_to_deliver() {
    let fixture = fixture().lock().await;
    let server = &fixture.server;
    assert_eq!(drain_invalidations(PATIENCE).await, Ok(()), "nothing left");
    warm(server, 2).await;
    freeze(server, 2).await;
    PRICE.store(300, Ordering::SeqCst);
    change_price(2).await;
    let queued = pending();
    assert_eq!(queued, 8, "both backends queued it");
    // Dropped while it waits: by a timeout, and by aborting its task.
    let dropped = tokio::time::timeout(Duration::from_millis(100), drain_invalidations(PATIENCE));
    assert!(dropped.await.is_err(), "still waiting when dropped");
    let task = tokio::spawn(drain_invalidations(PATIENCE));
    tokio::time::sleep(Duration::from_millis(50)).await;
    task.abort();
    assert!(task.await.is_err_and(|error| error.is_cancelled()));
    assert_eq!(pending(), queued, "the queue is as it was");

    server.resume();
    // Delivered by the backends' replayers, with no drain waiting.
    let deadline = Instant::now() + PATIENCE;
    for prefix in ["dr", "dt"] {
        while raw_value(server, prefix, "price:<2>").await.is_some() {
            assert!(Instant::now() < deadline, "{prefix}: never delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(price_redis(2).await, 302, "loaded anew");
    assert_eq!(price_tiered(2).await, 302, "loaded anew");
}

// ---- 3. Redis stays frozen: the drain gives up by its timeout, with the count. ----

async fn a_drain_gives_up_by_its_timeout_with_what_remains() {
    let fixture = fixture().lock().await;
    let server = &fixture.server;
    assert_eq!(drain_invalidations(PATIENCE).await, Ok(()), "nothing left");
    freeze(server, 3).await;
    for id in 10..15 {
        change_price(id).await;
    }
    // Per backend: the 3 keys that opened its breaker and the 5 refused after.
    assert_eq!(pending(), 16);

    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let error = drain_invalidations(timeout)
        .await
        .expect_err("redis is frozen");
    let took = started.elapsed();
    assert_eq!(
        error,
        DrainError::TimedOut {
            remaining: 16,
            overflowed: false,
            waited: timeout
        }
    );
    assert_eq!(error.remaining(), 16);
    assert!(
        error.to_string().starts_with("16 invalidation(s) had not"),
        "{error}"
    );
    assert!(
        took >= timeout && took < timeout * 2,
        "a drain against a frozen redis took {took:?}, its timeout {timeout:?}"
    );
    println!("drain: gave up after {took:?} (timeout {timeout:?}) with {error}");

    // One backend's own drain counts its own queue.
    let own = fixture.redis.drain_invalidations(timeout).await;
    assert_eq!(own.map_err(|error| error.remaining()), Err(8));
    let own = fixture.tiered.drain_invalidations(timeout).await;
    assert_eq!(own.map_err(|error| error.remaining()), Err(8));
    // Outside a runtime nothing can replay nor wait: it says so, at once.
    let outside = std::thread::spawn(|| futures::executor::block_on(drain_invalidations(PATIENCE)))
        .join()
        .expect("no panic");
    assert_eq!(
        outside,
        Err(DrainError::NoRuntime {
            remaining: 16,
            overflowed: false
        })
    );

    server.resume();
    assert_eq!(
        drain_invalidations(PATIENCE).await,
        Ok(()),
        "delivered after all"
    );
}

// ---- 4. An invalidation under way when the drain starts is waited for. ----

async fn a_drain_waits_for_an_invalidation_under_way() {
    let fixture = fixture().lock().await;
    let server = &fixture.server;
    assert_eq!(drain_invalidations(PATIENCE).await, Ok(()), "nothing left");
    warm(server, 4).await;
    // Frozen with the breakers closed: the invalidation is sent, and waits for its timeout.
    server.pause();
    PRICE.store(400, Ordering::SeqCst);
    let call = tokio::spawn(change_price_told(4));
    BODY_RAN.notified().await;
    // The client gives up; the invalidation goes on in a task of its own.
    call.abort();
    // A drain that gives up first counts it.
    let short = drain_invalidations(Duration::from_millis(50)).await;
    assert!(
        matches!(short, Err(DrainError::TimedOut { remaining, .. }) if remaining >= 1),
        "a drain during an invalidation under way returned {short:?}"
    );
    let drain = tokio::spawn(drain_invalidations(PATIENCE));
    // The invalidation times out and is queued (in both backends); the drain still waits.
    let deadline = Instant::now() + PATIENCE;
    while pending() < 2 {
        assert!(Instant::now() < deadline, "never queued: {}", pending());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !drain.is_finished(),
        "the drain returned while an invalidation was under way: {:?}",
        drain.await
    );
    server.resume();
    assert_eq!(drain.await.expect("no panic"), Ok(()));
    assert_eq!(pending(), 0);
    assert_eq!(raw_value(server, "dr", "price:<4>").await, None, "deleted");
    assert_eq!(raw_value(server, "dt", "price:<4>").await, None, "deleted");
    assert_eq!(price_redis(4).await, 404, "loaded anew");

    // A call that panics in its body, or is dropped in it, is no longer under way.
    let panicked = tokio::spawn(change_price_panics(5)).await;
    assert!(panicked.is_err_and(|error| error.is_panic()));
    let stuck = tokio::spawn(change_price_never_ends(5));
    BODY_RAN.notified().await;
    assert_eq!(
        drain_invalidations(Duration::from_millis(50))
            .await
            .map_err(|e| e.remaining()),
        Err(1),
        "a body still running is under way"
    );
    stuck.abort();
    assert!(stuck.await.is_err_and(|error| error.is_cancelled()));
    assert_eq!(
        drain_invalidations(Duration::from_millis(500)).await,
        Ok(()),
        "nothing is under way after a panic or a drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_scenarios() {
    let _stop = OnExit(|| {
        if let Ok(mut fixture) = fixture().try_lock() {
            fixture.server.kill();
        }
    });
    let _ = fixture();
    // Every scenario runs, whichever fails, so that one run reports them all.
    let mut failed = Vec::new();
    macro_rules! run {
        ($($scenario:ident),* $(,)?) => {$(
            if tokio::spawn($scenario()).await.is_err() {
                failed.push(stringify!($scenario));
                // A failed scenario may have left the server frozen.
                fixture().lock().await.server.resume();
            }
        )*};
    }
    run!(
        a_drain_returns_once_the_queued_invalidations_reached_redis,
        a_drain_dropped_mid_wait_leaves_the_queue_to_deliver,
        a_drain_gives_up_by_its_timeout_with_what_remains,
        a_drain_waits_for_an_invalidation_under_way,
    );
    assert!(failed.is_empty(), "failed: {failed:?}");
}
