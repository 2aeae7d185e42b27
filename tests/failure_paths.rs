//! The failure paths of issue 11, each against a real redis-server: a cancelled or failing lock
//! holder, a panicking store step, invalidations lost to an outage, sync invalidations against a
//! frozen Redis, and a reply error about one key.
//!
//! Two backends of one kind on one Redis and prefix (`redis` and `redis.b`, `tiered` and
//! `tiered.b`) stand in for two processes: each has its own flights, lock tokens, pending queue
//! and breaker, and they meet only in Redis. The scenarios run in one test on one runtime, since
//! a backend's connections live on the runtime that first used them.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, MemoryBackend, RedisBackend, TieredBackend};
use support::redis_server::{OnExit, RedisServer};
use tokio::sync::{Mutex, Notify};

const OP_TIMEOUT: Duration = Duration::from_millis(200);

fn server() -> &'static Mutex<RedisServer> {
    static SERVER: OnceLock<Mutex<RedisServer>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = RedisServer::start();
        let redis = |prefix: &str| {
            RedisBackend::builder()
                .url(server.url())
                .prefix(prefix)
                .op_timeout(OP_TIMEOUT)
                .build()
                .expect("valid configuration")
        };
        let tiered = |prefix: &str| {
            TieredBackend::builder(redis(prefix))
                .heartbeat(Duration::from_millis(100))
                .build()
        };
        let weighed = MemoryBackend::builder()
            .max_bytes(1 << 20)
            .weigher(|_, _| {
                if PANIC_IN_WEIGHER.swap(false, Ordering::SeqCst) {
                    panic!("the weigher panics once");
                }
                1
            })
            .build();
        configure()
            .redis("redis", redis("f"))
            .redis("redis.b", redis("f"))
            .tiered("tiered", tiered("ft"))
            .tiered("tiered.b", tiered("ft"))
            .memory("memory.weighed", weighed)
            .install()
            .expect("configured once");
        Mutex::new(server)
    })
}

/// Calls `probe` until it reports that Redis answers again through the backend (its breaker
/// lets a probe through once per interval), bounded.
async fn until_recovered<F, Fut>(mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe().await {
        assert!(Instant::now() < deadline, "redis did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- 1. A cancelled leader frees the key at once. ----

static HOLDER_STARTED: Notify = Notify::const_new();

#[cached(ttl = "60s", key = "cancelled:<id>", backend = "redis")]
async fn cancelled_in_a(id: u64) -> u64 {
    HOLDER_STARTED.notify_one();
    std::future::pending::<()>().await;
    id
}

#[cached(ttl = "60s", key = "cancelled:<id>", backend = "redis.b")]
async fn cancelled_in_b(id: u64) -> u64 {
    id + 100
}

async fn a_cancelled_leader_frees_the_redis_lock_at_once() {
    let _server = server().lock().await;
    let started = HOLDER_STARTED.notified();
    let holder = tokio::spawn(tokio::time::timeout(
        Duration::from_millis(300),
        cancelled_in_a(1),
    ));
    started.await;
    assert!(holder.await.expect("joins").is_err(), "cancelled mid-load");
    let begun = Instant::now();
    assert_eq!(cancelled_in_b(1).await, 101);
    let waited = begun.elapsed();
    assert!(
        waited < Duration::from_millis(500),
        "the next caller waited {waited:?} for a lock its cancelled holder never released"
    );
}

// ---- 2. Waiters of a holder that stores nothing are woken. ----

const HOLD: Duration = Duration::from_millis(300);
static ERR_HOLDER_STARTED: Notify = Notify::const_new();

#[cached(ttl = "60s", key = "empty:<id>", backend = "redis")]
async fn fails_in_a(id: u64) -> Result<u64, String> {
    ERR_HOLDER_STARTED.notify_one();
    tokio::time::sleep(HOLD).await;
    Err(format!("{id} failed"))
}

#[cached(ttl = "60s", key = "empty:<id>", backend = "redis.b")]
async fn loads_in_b(id: u64) -> Result<u64, String> {
    Ok(id)
}

static NONE_HOLDER_STARTED: Notify = Notify::const_new();

#[cached(ttl = "60s", key = "absent:<id>", backend = "redis")]
async fn absent_in_a(id: u64) -> Option<u64> {
    NONE_HOLDER_STARTED.notify_one();
    tokio::time::sleep(HOLD).await;
    let _ = id;
    None
}

#[cached(ttl = "60s", key = "absent:<id>", backend = "redis.b")]
async fn present_in_b(id: u64) -> Option<u64> {
    Some(id)
}

async fn waiters_of_a_holder_that_stores_nothing_are_woken() {
    let _server = server().lock().await;
    let begun = Instant::now();
    let started = ERR_HOLDER_STARTED.notified();
    let holder = tokio::spawn(fails_in_a(2));
    started.await;
    assert_eq!(loads_in_b(2).await, Ok(2));
    let waited = begun.elapsed();
    assert!(holder.await.expect("joins").is_err());
    assert!(
        waited < HOLD + Duration::from_millis(100),
        "after the holder's Err, the waiter took {waited:?} (its load: {HOLD:?})"
    );

    let begun = Instant::now();
    let started = NONE_HOLDER_STARTED.notified();
    let holder = tokio::spawn(absent_in_a(3));
    started.await;
    assert_eq!(present_in_b(3).await, Some(3));
    let waited = begun.elapsed();
    assert_eq!(holder.await.expect("joins"), None);
    assert!(
        waited < HOLD + Duration::from_millis(100),
        "after the holder's None, the waiter took {waited:?} (its load: {HOLD:?})"
    );
}

static PANIC_HOLDER_STARTED: Notify = Notify::const_new();

#[cached(ttl = "60s", key = "panicked:<id>", backend = "redis")]
async fn panics_in_a(id: u64) -> u64 {
    PANIC_HOLDER_STARTED.notify_one();
    tokio::time::sleep(HOLD).await;
    panic!("the loader of {id} panics");
}

#[cached(ttl = "60s", key = "panicked:<id>", backend = "redis.b")]
async fn after_panic_in_b(id: u64) -> u64 {
    id
}

async fn waiters_of_a_holder_whose_loader_panics_are_woken() {
    let _server = server().lock().await;
    let begun = Instant::now();
    let started = PANIC_HOLDER_STARTED.notified();
    let holder = tokio::spawn(panics_in_a(7));
    started.await;
    assert_eq!(after_panic_in_b(7).await, 7);
    let waited = begun.elapsed();
    assert!(holder.await.expect_err("panicked").is_panic());
    assert!(
        waited < HOLD + Duration::from_millis(100),
        "after the holder's panic, the waiter took {waited:?} (its load: {HOLD:?})"
    );
}

// ---- 3. A panic in the store step wakes the followers; one takes over. ----

static PANIC_IN_WEIGHER: AtomicBool = AtomicBool::new(false);
static WEIGHED_LOADS: AtomicUsize = AtomicUsize::new(0);
static WEIGHED_STARTED: Notify = Notify::const_new();
static WEIGHED_GO: Notify = Notify::const_new();

#[cached(ttl = "60s", key = "weighed:<id>", backend = "memory.weighed")]
async fn weighed(id: u64) -> u64 {
    if WEIGHED_LOADS.fetch_add(1, Ordering::SeqCst) == 0 {
        WEIGHED_STARTED.notify_one();
        WEIGHED_GO.notified().await;
    }
    id
}

async fn a_panicking_store_wakes_the_followers_and_one_takes_over() {
    PANIC_IN_WEIGHER.store(true, Ordering::SeqCst);
    let started = WEIGHED_STARTED.notified();
    let leader = tokio::spawn(weighed(4));
    started.await;
    let mut followers: Vec<_> = (0..50).map(|_| Box::pin(weighed(4))).collect();
    for follower in &mut followers {
        assert!(
            poll_once(follower).is_pending(),
            "followers join the flight"
        );
    }
    WEIGHED_GO.notify_one();
    assert!(
        leader.await.expect_err("the store panicked").is_panic(),
        "the leader's caller sees the panic"
    );
    for follower in followers {
        let value = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("a follower of a leader whose store panicked must not hang");
        assert_eq!(value, 4);
    }
    assert_eq!(
        WEIGHED_LOADS.load(Ordering::SeqCst),
        2,
        "the panicking leader and one taker"
    );
    assert_eq!(weighed(4).await, 4);
    assert_eq!(WEIGHED_LOADS.load(Ordering::SeqCst), 2, "the taker stored");
}

// ---- 4. Invalidations lost to an outage are replayed on the tiered path and by writers. ----

static TIERED_SOURCE: AtomicUsize = AtomicUsize::new(1);

#[cached(ttl = "60s", key = "lost:<id>", backend = "tiered")]
async fn lost_reader(id: u64) -> usize {
    let _ = id;
    TIERED_SOURCE.load(Ordering::SeqCst)
}

#[cached(ttl = "60s", key = "lost:<id>", backend = "tiered.b")]
async fn lost_in_writer(id: u64) -> usize {
    let _ = id;
    TIERED_SOURCE.load(Ordering::SeqCst)
}

async fn lost_tiered_invalidations_are_replayed() {
    let server = server().lock().await;
    let raw = server.connection().await;
    // Until both instances store through Redis again (an earlier pause opened their breakers).
    for backend in ["tiered", "tiered.b"] {
        let attempt = AtomicUsize::new(0);
        until_recovered(|| {
            let (mut raw, n) = (raw.clone(), attempt.fetch_add(1, Ordering::SeqCst));
            async move {
                let key = if backend == "tiered" {
                    tiered_probe(n).await
                } else {
                    tiered_b_probe(n).await
                };
                let held: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(format!("ft:1:{{{key}}}:v"))
                    .query_async(&mut raw)
                    .await
                    .expect("raw get");
                held.is_some()
            }
        })
        .await;
    }
    assert_eq!(lost_reader(5).await, 1);
    assert_eq!(lost_in_writer(5).await, 1);
    server.pause();
    open_every_breaker().await;
    // The mutation succeeds; its invalidation cannot reach Redis (the breakers refuse to send
    // it, so it is not merely delayed in a socket buffer). It reaches every configured backend,
    // so both instances queue it (and drop it from their own L1).
    TIERED_SOURCE.store(2, Ordering::SeqCst);
    change_lost(5).await;
    server.resume();
    // Reads start once the breakers let a probe through (their interval is 1 s), so that the
    // first one reaches Redis while the invalidation is still queued. Every read through the
    // tiered path must miss the old value: the replay comes first, or the key counts as pending.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(
            lost_in_writer(5).await,
            2,
            "a tiered read served an invalidated value"
        );
        assert_eq!(
            lost_reader(5).await,
            2,
            "a tiered read served an invalidated value"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends invalidations of keys no site reads to the paused server until every Redis backend's
/// breaker is open (3 failures each); from then on an invalidation is refused, never sent.
async fn open_every_breaker() {
    for id in 0..3 {
        change_frozen_async(id).await;
    }
}

#[invalidates("frozen:<id>")]
async fn change_frozen_async(id: u64) {
    let _ = id;
}

#[cached(ttl = "60s", key = "tprobe:<n>", backend = "tiered")]
async fn tiered_probe(n: usize) -> String {
    format!("tprobe:<{n}>")
}

#[cached(ttl = "60s", key = "tprobe-b:<n>", backend = "tiered.b")]
async fn tiered_b_probe(n: usize) -> String {
    format!("tprobe-b:<{n}>")
}

#[invalidates("lost:<id>")]
async fn change_lost(id: u64) {
    let _ = id;
}

static WRITE_ONLY_SOURCE: AtomicUsize = AtomicUsize::new(1);

#[cached(ttl = "60s", key = "write-only:<id>", backend = "redis")]
async fn write_only_reader(id: u64) -> usize {
    let _ = id;
    WRITE_ONLY_SOURCE.load(Ordering::SeqCst)
}

async fn a_process_that_only_writes_replays_in_the_background() {
    let server = server().lock().await;
    assert_eq!(write_only_reader(6).await, 1);
    let mut raw = server.connection().await;
    server.pause();
    open_every_breaker().await;
    WRITE_ONLY_SOURCE.store(2, Ordering::SeqCst);
    // Nothing reads through any backend from here on until Redis no longer holds the value.
    change_write_only(6).await;
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let held: Option<Vec<u8>> = redis::cmd("GET")
            .arg("f:1:{write-only:<6>}:v")
            .query_async(&mut raw)
            .await
            .expect("raw get");
        if held.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the writer never replayed its lost invalidation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(write_only_reader(6).await, 2);
}

#[invalidates("write-only:<id>")]
async fn change_write_only(id: u64) {
    let _ = id;
}

// ---- 4b. An invalidation whose caller is cancelled still reaches every backend. ----

static CANCELLED_SOURCE: AtomicUsize = AtomicUsize::new(1);

#[cached(ttl = "60s", key = "cancel-inv:<id>", backend = "tiered")]
async fn cancel_inv_reader(id: u64) -> usize {
    let _ = id;
    CANCELLED_SOURCE.load(Ordering::SeqCst)
}

#[invalidates("cancel-inv:<id>")]
async fn change_cancel_inv(id: u64) {
    let _ = id;
}

async fn a_cancelled_invalidation_still_reaches_every_backend() {
    let server = server().lock().await;
    let mut raw = server.connection().await;
    assert_eq!(cancel_inv_reader(1).await, 1);
    let held = |raw: &mut redis::aio::MultiplexedConnection| {
        let mut raw = raw.clone();
        async move {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg("ft:1:{cancel-inv:<1>}:v")
                .query_async(&mut raw)
                .await
                .expect("raw get");
            value.is_some()
        }
    };
    assert!(held(&mut raw).await, "stored in the tiered backend's L2");
    CANCELLED_SOURCE.store(2, Ordering::SeqCst);
    // Writes wait (reads do not): the first backend's invalidation script stalls, and the
    // caller gives up while it does, as an axum client that disconnects would.
    let unpause = server.pause_writes(1_000);
    let cancelled = tokio::time::timeout(Duration::from_millis(50), change_cancel_inv(1)).await;
    assert!(cancelled.is_err(), "cancelled mid-invalidation");
    drop(unpause);
    let deadline = Instant::now() + Duration::from_secs(3);
    while held(&mut raw).await {
        assert!(
            Instant::now() < deadline,
            "the tiered backend still holds the value its cancelled invalidation was for"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cancel_inv_reader(1).await, 2);
}

// ---- 5. Replay does not race its readers, and is batched. ----

const QUEUED: u64 = 3_000;
static REPLAY_SOURCE: AtomicUsize = AtomicUsize::new(1);

#[cached(ttl = "60s", key = "queued:<id>", backend = "redis")]
async fn queued(id: u64) -> usize {
    let _ = id;
    REPLAY_SOURCE.load(Ordering::SeqCst)
}

#[invalidates("queued:<id>")]
async fn change_queued(id: u64) {
    let _ = id;
}

async fn a_replay_keeps_keys_pending_until_confirmed() {
    let server = server().lock().await;
    for id in 0..QUEUED {
        assert_eq!(queued(id).await, 1);
    }
    server.pause();
    REPLAY_SOURCE.store(2, Ordering::SeqCst);
    for id in 0..QUEUED {
        change_queued(id).await;
    }
    server.resume();
    // Readers arrive once the breaker lets its probe through (its interval is 1 s), so that
    // the replay runs while they read.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let reads: Vec<_> = (0..500u64)
        .map(|id| {
            tokio::spawn(async move {
                let begun = Instant::now();
                (queued(QUEUED - 1 - id).await, begun.elapsed())
            })
        })
        .collect();
    let mut stale = 0;
    let mut slowest = Duration::ZERO;
    for read in reads {
        let (value, took) = read.await.expect("completes");
        stale += usize::from(value != 2);
        slowest = slowest.max(took);
    }
    assert_eq!(stale, 0, "reads got values still waiting to be deleted");
    assert!(
        slowest < Duration::from_secs(1),
        "a read paid {slowest:?} for the replay"
    );
}

static PROBE_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "probe:<id>", backend = "redis")]
async fn probe(id: u64) -> u64 {
    PROBE_LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

/// True once a value stored through the `redis` backend is read back through it.
async fn probe_read(id: u64) -> bool {
    probe(id).await;
    let loads = PROBE_LOADS.load(Ordering::SeqCst);
    probe(id).await;
    PROBE_LOADS.load(Ordering::SeqCst) == loads
}

// ---- 6. Sync invalidations against a frozen Redis cost one timeout each. ----

#[invalidates("frozen:<id>")]
fn change_frozen(id: u64) {
    let _ = id;
}

async fn sync_invalidations_against_a_frozen_redis_cost_one_timeout_each() {
    let server = server().lock().await;
    change_frozen(0);
    server.pause();
    let threads: Vec<_> = (0..8u64)
        .map(|id| {
            std::thread::spawn(move || {
                let begun = Instant::now();
                change_frozen(id);
                begun.elapsed()
            })
        })
        .collect();
    let took: Vec<Duration> = threads
        .into_iter()
        .map(|thread| thread.join().expect("joins"))
        .collect();
    server.resume();
    let slowest = took.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < OP_TIMEOUT + Duration::from_millis(150),
        "sync invalidations took {took:?} with op_timeout {OP_TIMEOUT:?}"
    );
    until_recovered(probe_recovered).await;
}

async fn probe_recovered() -> bool {
    probe_read(u64::MAX - 1).await
}

// ---- 7. A reply error about one key does not switch caching off for the others. ----

static HEALTHY_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "healthy", backend = "redis")]
async fn healthy() -> u64 {
    HEALTHY_LOADS.fetch_add(1, Ordering::SeqCst);
    1
}

#[cached(ttl = "60s", key = "wrong-type", backend = "redis")]
async fn wrong_type() -> u64 {
    2
}

async fn one_bad_key_does_not_open_the_breaker() {
    let server = server().lock().await;
    until_recovered(probe_recovered).await;
    let mut raw = server.connection().await;
    let _: () = redis::cmd("RPUSH")
        .arg("f:1:{wrong-type}:v")
        .arg("not a string")
        .query_async(&mut raw)
        .await
        .expect("raw rpush");
    assert_eq!(healthy().await, 1);
    let loads = HEALTHY_LOADS.load(Ordering::SeqCst);
    for _ in 0..300 {
        // Enough consecutive reply errors to open a breaker that counted them as failures.
        for _ in 0..3 {
            assert_eq!(wrong_type().await, 2, "a reply error is a miss");
        }
        assert_eq!(healthy().await, 1);
    }
    assert_eq!(
        HEALTHY_LOADS.load(Ordering::SeqCst),
        loads,
        "the healthy key must keep hitting while another key's reads fail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_path_scenarios() {
    let _stop = OnExit(|| {
        if let Ok(mut server) = server().try_lock() {
            server.kill();
        }
    });
    let _ = server();
    // Every scenario runs, whichever fails, so that one run reports them all.
    let mut failed = Vec::new();
    macro_rules! run {
        ($($scenario:ident),* $(,)?) => {$(
            if tokio::spawn($scenario()).await.is_err() {
                failed.push(stringify!($scenario));
                // A failed scenario may have left the server paused.
                server().lock().await.resume();
            }
        )*};
    }
    run!(
        a_panicking_store_wakes_the_followers_and_one_takes_over,
        a_cancelled_leader_frees_the_redis_lock_at_once,
        waiters_of_a_holder_that_stores_nothing_are_woken,
        waiters_of_a_holder_whose_loader_panics_are_woken,
        one_bad_key_does_not_open_the_breaker,
        sync_invalidations_against_a_frozen_redis_cost_one_timeout_each,
        lost_tiered_invalidations_are_replayed,
        a_cancelled_invalidation_still_reaches_every_backend,
        a_process_that_only_writes_replays_in_the_background,
        a_replay_keeps_keys_pending_until_confirmed,
    );
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// Polls a future once, so that a follower has joined the flight before the test goes on.
fn poll_once<F: std::future::Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
    let waker = futures::task::noop_waker();
    std::pin::Pin::new(future).poll(&mut std::task::Context::from_waker(&waker))
}
