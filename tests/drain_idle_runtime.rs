//! `drain_invalidations` against a real redis-server when the background replayer was started
//! from a runtime that is alive but no longer driven: a sync code path's current_thread runtime
//! kept for `block_on` (a common bridge from sync code). The drain runs on the main runtime,
//! Redis answers again, and nothing else replays. (Review 19.)

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cachette::{cached, configure, drain_invalidations, health, invalidates, RedisBackend};
use support::redis_server::{OnExit, RedisServer};

const OP_TIMEOUT: Duration = Duration::from_millis(200);
const PATIENCE: Duration = Duration::from_secs(8);

fn server() -> &'static std::sync::Mutex<RedisServer> {
    static SERVER: OnceLock<std::sync::Mutex<RedisServer>> = OnceLock::new();
    SERVER.get_or_init(|| std::sync::Mutex::new(RedisServer::start()))
}

#[cached(ttl = "60s", key = "item:<id>", backend = "redis")]
async fn item(id: u64) -> u64 {
    id
}

#[invalidates("item:<id>")]
async fn change_item(id: u64) {
    let _ = id;
}

fn pending() -> usize {
    health().iter().map(|b| b.pending_invalidations).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_delivers_when_the_replayer_sits_on_an_idle_runtime() {
    let _stop = OnExit(|| {
        if let Ok(mut server) = server().lock() {
            server.kill();
        }
    });
    let url = server().lock().unwrap().url();
    let backend = RedisBackend::builder()
        .url(url)
        .prefix("drain-idle")
        .op_timeout(OP_TIMEOUT)
        .build()
        .expect("valid configuration");
    configure()
        .redis("redis", backend)
        .install()
        .expect("configured once");
    // The connection is made (and driven) on this, the main, runtime.
    item(1).await;

    server().lock().unwrap().pause();
    // Sync code bridges to async through a runtime of its own, kept for later calls.
    let bridge = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let sync_side = std::thread::spawn(move || {
        bridge.block_on(change_item(1));
        bridge
    });
    let bridge = tokio::task::spawn_blocking(move || sync_side.join().expect("no panic"))
        .await
        .expect("joined");
    assert_eq!(pending(), 1, "queued while redis is frozen");
    server().lock().unwrap().resume();

    let started = Instant::now();
    let drained = drain_invalidations(PATIENCE).await;
    println!("drain returned {drained:?} after {:?}", started.elapsed());
    // Dropped off the async threads (a runtime may not be dropped inside one).
    std::thread::spawn(move || drop(bridge))
        .join()
        .expect("no panic");
    assert_eq!(
        drained,
        Ok(()),
        "redis answers, yet the drain gave up: the replayer waits on an idle runtime"
    );
}
