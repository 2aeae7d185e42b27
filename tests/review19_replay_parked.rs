//! Review 19: the background replay started, and parked mid-batch, on a runtime that is alive
//! but no longer driven: a sync code path's
//! current_thread runtime kept for `block_on` (a common bridge from sync code). The main
//! runtime's calls, with Redis answering again, should still replay.

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cachette::{cached, configure, health, invalidates, RedisBackend};
use support::redis_server::{OnExit, RedisServer};

const OP_TIMEOUT: Duration = Duration::from_millis(200);
const PATIENCE: Duration = Duration::from_secs(8);

fn server() -> &'static std::sync::Mutex<RedisServer> {
    static SERVER: OnceLock<std::sync::Mutex<RedisServer>> = OnceLock::new();
    SERVER.get_or_init(|| std::sync::Mutex::new(RedisServer::start()))
}

#[cached(ttl = "60s", key = "item:<id>", backend = "redis")]
async fn item_counted(id: u64) -> u64 {
    LOADS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    id
}

static LOADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[invalidates("item:<id>")]
async fn change_item(id: u64) {
    let _ = id;
}

fn pending() -> usize {
    health().iter().map(|b| b.pending_invalidations).sum()
}

/// The invalidation was queued on the bridge runtime, and a replay is mid-batch (its pipeline
/// sent to the frozen Redis) when the bridge goes idle. (The replayer runs on cachette's own
/// runtime now, `background.rs`; spawned on the bridge's, it held the one-replay-at-a-time
/// right there.) Redis answers again, and the main runtime's calls on the key should see its
/// invalidation replayed and cache it again.
async fn scenario() {
    let _ = item_counted(2).await; // cached in redis
    server().lock().unwrap().pause();
    let bridge = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let sync_side = std::thread::spawn(move || {
        bridge.block_on(async {
            change_item(2).await;
            // Long enough for the replayer spawned here to send its batch and wait.
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        bridge
    });
    let bridge = tokio::task::spawn_blocking(move || sync_side.join().expect("no panic"))
        .await
        .expect("joined");
    assert_eq!(pending(), 1, "queued while redis is frozen");
    server().lock().unwrap().resume();

    let deadline = Instant::now() + PATIENCE;
    while pending() > 0 && Instant::now() < deadline {
        // Every call on the key replays a batch first (settle_pending).
        let _ = item_counted(2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = pending();
    // The first read after the replay may be the one that loads: the background replayer
    // (cachette's own runtime) may have confirmed the invalidation after the loop's last call,
    // which, the key still pending then, stored nothing.
    let _ = item_counted(2).await;
    let loads_before = LOADS.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        let _ = item_counted(2).await;
    }
    let reloads = LOADS.load(std::sync::atomic::Ordering::SeqCst) - loads_before;
    std::thread::spawn(move || drop(bridge))
        .join()
        .expect("no panic");
    assert_eq!(
        (left, reloads),
        (0, 0),
        "(pending after {PATIENCE:?} of calls with redis answering, loads of 3 more calls): \
         the parked replay keeps the key pending and uncached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_the_main_runtime_replay_while_the_replayer_is_parked() {
    let _stop = OnExit(|| {
        if let Ok(mut server) = server().lock() {
            server.kill();
        }
    });
    let url = server().lock().unwrap().url();
    let backend = RedisBackend::builder()
        .url(url)
        .prefix("r19p")
        .op_timeout(OP_TIMEOUT)
        .build()
        .expect("valid configuration");
    configure()
        .redis("redis", backend)
        .install()
        .expect("configured once");
    scenario().await;
}
