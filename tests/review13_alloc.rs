//! Review of issue 13: `tests/alloc_per_hit.rs` with what issue 13's target names installed, a
//! metrics recorder (the facade's debugging one) and a tracing subscriber at INFO.
//!
//! Heap allocations per memory hit, counted by a global allocator (BENCHMARKS.md, item 8).
//!
//! A hit allocates nothing for itself: its key's text, which every call renders, is held inline
//! up to 46 bytes (a longer key allocates once). What a hit does allocate is the caller's own
//! value being cloned out of the cache, which is what returning an owned value costs: nothing
//! for a `u64`, one allocation per `String` field of a struct.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use cachette::{cached, configure, RedisBackend, TieredBackend};

mod support;
use support::redis_server::RedisServer;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Only the measuring thread counts, so nothing else running in this binary interferes.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call forwards to the system allocator unchanged; counting touches no heap.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[cached(ttl = "600s", key = "n:<id>")]
async fn number(id: u64) -> u64 {
    id * 2
}

/// A typical row: two of its fields own heap memory.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Profile {
    id: u64,
    name: String,
    bio: String,
}

#[cached(ttl = "600s", key = "profile:<id>")]
async fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: format!("user {id}"),
        bio: "x".repeat(160),
    }
}

#[cached(ttl = "600s", key = "sync:<id>")]
fn number_sync(id: u64) -> u64 {
    id * 2
}

#[cached(
    ttl = "600s",
    key = "a-key-template-well-over-forty-six-bytes-long:<id>"
)]
async fn long_key(id: u64) -> u64 {
    id * 2
}

#[cached(ttl = "600s", key = "tiered:<id>", backend = "tiered")]
async fn tiered(id: u64) -> u64 {
    id * 2
}

const KEYS: u64 = 256;
/// Several rounds over the keys, so that the sampled reads through moka's policy are included.
const HITS: u64 = 64 * KEYS;

/// Allocations per call of `call` over warm keys, measured on this thread only.
fn per_hit(mut call: impl FnMut(u64)) -> f64 {
    for id in 0..KEYS {
        call(id); // fill
    }
    for id in 0..KEYS {
        call(id); // and let any lazily built per-thread state settle
    }
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.with(|counting| counting.set(true));
    for n in 0..HITS {
        call(n % KEYS);
    }
    COUNTING.with(|counting| counting.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) as f64 / HITS as f64
}

#[test]
fn a_memory_or_tiered_hit_allocates_only_the_returned_value() {
    metrics_util::debugging::DebuggingRecorder::new()
        .install()
        .expect("the only recorder");
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .finish(),
    )
    .expect("the only subscriber");
    // Configured before the first cached call (which would install the default).
    let server = RedisServer::start();
    let l2 = RedisBackend::builder()
        .url(server.url())
        .build()
        .expect("valid configuration");
    // A slow heartbeat, so that the subscriber does nothing while this thread counts.
    let backend = TieredBackend::builder(l2)
        .heartbeat(std::time::Duration::from_secs(600))
        .build();
    configure()
        .tiered("tiered", backend.clone())
        .install()
        .expect("configured once");
    use futures::executor::block_on;
    let number = per_hit(|id| assert_eq!(block_on(number(id)), id * 2));
    let sync = per_hit(|id| assert_eq!(number_sync(id), id * 2));
    let profile = per_hit(|id| {
        let value = block_on(profile(id));
        assert_eq!(
            (value.id, value.name.len() > 5, value.bio.len()),
            (id, true, 160)
        );
    });
    let long = per_hit(|id| assert_eq!(block_on(long_key(id)), id * 2));
    println!(
        "allocations per hit: u64 {number}, u64 (sync fn) {sync}, Profile {profile}, \
         u64 under a long key {long}"
    );
    // The fraction above a whole number is moka's housekeeping, which one of the sampled
    // policy reads (one hit in 32) occasionally runs: about one allocation per 100 hits.
    let about = |count: f64, whole: f64| (whole..whole + 0.05).contains(&count);
    assert!(about(number, 0.0), "nothing: {number}");
    assert!(about(sync, 0.0), "nothing: {sync}");
    assert!(about(profile, 2.0), "the clone of two Strings: {profile}");
    assert!(about(long, 1.0), "the key's text: {long}");

    // A warm tiered hit is an L1 hit: the same as a memory hit, no Redis, nothing allocated.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tiered(0).await;
        backend.l1_ready().await;
    });
    runtime.block_on(async {
        for id in 0..KEYS {
            tiered(id).await; // L1 fills once the bus is up
        }
    });
    // Polled here rather than by `Runtime::block_on`, which boxes a future as large as a debug
    // build makes this one; a warm hit needs nothing from the runtime.
    let warm = per_hit(|id| assert_eq!(block_on(tiered(id)), id * 2));
    println!("allocations per warm tiered hit: u64 {warm}");
    assert!(about(warm, 0.0), "nothing: {warm}");
}
