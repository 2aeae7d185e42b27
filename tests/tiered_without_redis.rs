//! `tiered` with no Redis configured caches and invalidates in memory: the memory backend's
//! semantics cases (`semantics/cases.rs`) with `tiered` as the default backend, and explicit
//! `backend = "tiered"` sites, which before ran uncached.

#[path = "semantics/cases.rs"]
mod cases;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use cachette::{cached, invalidates, MemoryBackend};

/// The `memory` backend, kept to show that `tiered` entries are not stored there.
fn memory() -> &'static MemoryBackend {
    static MEMORY: OnceLock<MemoryBackend> = OnceLock::new();
    MEMORY.get_or_init(MemoryBackend::default)
}

/// `tiered` as the default, and no Redis anywhere: the cases run on its in-process store.
fn configuration() -> cachette::Config {
    cachette::configure()
        .memory("memory", memory().clone())
        .default_backend("tiered")
}

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "stock:<item>", backend = "tiered")]
async fn stock(item: u32) -> Result<usize, String> {
    let _ = item;
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(LOADS.fetch_add(1, Ordering::SeqCst) + 1)
}

#[cached(ttl = "60s", key = "stock-eu:<item>", backend = "tiered.eu")]
async fn stock_eu(item: u32) -> Result<usize, String> {
    let _ = item;
    Ok(LOADS.fetch_add(1, Ordering::SeqCst) + 1)
}

#[invalidates("stock:<item>", "stock-eu:<item>")]
async fn restock(item: u32) -> Result<(), String> {
    let _ = item;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tiered_site_without_redis_caches_single_flights_and_invalidates_in_memory() {
    cases::setup();
    let callers: Vec<_> = (0..100).map(|_| tokio::spawn(stock(1))).collect();
    let mut values = Vec::new();
    for caller in callers {
        values.push(caller.await.expect("the call completes").expect("Ok"));
    }
    let first = values[0];
    assert!(
        values.iter().all(|v| *v == first),
        "one load shared: {values:?}"
    );
    assert_eq!(stock(1).await, Ok(first), "cached");
    restock(1).await.expect("ok");
    let reloaded = stock(1).await.expect("ok");
    assert_ne!(reloaded, first, "the invalidation reached it");
    assert_eq!(stock(1).await, Ok(reloaded));
    memory().run_pending_tasks();
    assert_eq!(
        memory().entry_count(),
        0,
        "in the `tiered` store, not `memory`'s"
    );
}

#[tokio::test]
async fn a_named_tiered_site_without_redis_caches_in_memory_too() {
    cases::setup();
    let first = stock_eu(7).await.expect("ok");
    assert_eq!(stock_eu(7).await, Ok(first));
    restock(7).await.expect("ok");
    assert_ne!(stock_eu(7).await, Ok(first));
}
