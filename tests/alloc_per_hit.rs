//! Heap allocations per memory hit, counted by a global allocator (BENCHMARKS.md, item 8).
//!
//! A hit allocates nothing for itself: its key's text, which every call renders, is held inline
//! up to 46 bytes (a longer key allocates once). What a hit does allocate is the caller's own
//! value being cloned out of the cache, which is what returning an owned value costs: nothing
//! for a `u64`, one allocation per `String` field of a struct.

use cachette::{cached, configure, RedisBackend, TieredBackend};

mod support;
use support::alloc_count::{about, per_hit, Counting, KEYS};
use support::redis_server::RedisServer;

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

#[test]
fn a_memory_or_tiered_hit_allocates_only_the_returned_value() {
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
    // The fraction above a whole number is moka's housekeeping (`about`).
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
