//! Heap allocations per memory hit, counted by a global allocator (BENCHMARKS.md, item 8).
//!
//! A hit allocates nothing for itself: its key's text, which every call renders, is held inline
//! up to 46 bytes (a longer key allocates once). What a hit does allocate is the caller's own
//! value being cloned out of the cache, which is what returning an owned value costs: nothing
//! for a `u64`, one allocation per `String` field of a struct.

use cachette::{cached, configure, RedisBackend, TieredBackend};

mod support;
use support::alloc_count::{exactly, per_hit, Counting, KEYS};
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

/// The issue-17 case: a row behind `Arc`, which a hit clones as a pointer.
#[cached(ttl = "600s", key = "shared:<id>")]
async fn shared(id: u64) -> std::sync::Arc<Profile> {
    std::sync::Arc::new(Profile {
        id,
        name: format!("user {id}"),
        bio: "x".repeat(160),
    })
}

#[cached(ttl = "600s", key = "tshared:<id>", backend = "tiered")]
async fn tiered_shared(id: u64) -> std::sync::Arc<Profile> {
    shared(id).await
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

// Named in pieces too: no text is built for a hit.
#[cached(ttl = "600s")]
async fn default_key(id: u64) -> u64 {
    id * 2
}

// A string in a long key: asked in pieces too, the string where it lies; a string that needs
// escaping is asked by the key's text, which is built (and allocated, past 46 bytes).
#[cached(
    ttl = "600s",
    key = "a-key-template-well-over-forty-six-bytes-long:<name>"
)]
async fn long_text_key(name: &str) -> usize {
    name.len()
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
    let default = per_hit(|id| assert_eq!(block_on(default_key(id)), id * 2));
    let names: Vec<String> = (0..KEYS).map(|id| format!("name-{id}")).collect();
    let long_text = per_hit(|id| {
        let name = &names[id as usize];
        assert_eq!(block_on(long_text_key(name)), name.len());
    });
    let spaced: Vec<String> = (0..KEYS).map(|id| format!("name {id}")).collect();
    let escaped = per_hit(|id| {
        let name = &spaced[id as usize];
        assert_eq!(block_on(long_text_key(name)), name.len());
    });
    let arc = per_hit(|id| assert_eq!(block_on(shared(id)).id, id));
    println!(
        "allocations per hit: u64 {number}, u64 (sync fn) {sync}, Profile {profile}, \
         u64 under a long key {long}, under the default key {default}, under a long key \
         with a string {long_text}, with a string that needs escaping {escaped}, \
         Arc<Profile> {arc}"
    );
    assert!(exactly(number, 0.0), "nothing: {number}");
    assert!(exactly(sync, 0.0), "nothing: {sync}");
    assert!(exactly(profile, 2.0), "the clone of two Strings: {profile}");
    assert!(
        exactly(long, 0.0),
        "a long key of integers is asked in pieces: {long}"
    );
    assert!(
        exactly(default, 0.0),
        "so is a default key of integers: {default}"
    );
    assert!(
        exactly(long_text, 0.0),
        "a string is asked in pieces: {long_text}"
    );
    assert!(exactly(escaped, 1.0), "the key's text: {escaped}");
    assert!(exactly(arc, 0.0), "an `Arc` clone allocates nothing: {arc}");

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
            tiered_shared(id).await;
        }
    });
    // Polled here rather than by `Runtime::block_on`, which boxes a future as large as a debug
    // build makes this one; a warm hit needs nothing from the runtime.
    let warm = per_hit(|id| assert_eq!(block_on(tiered(id)), id * 2));
    let warm_arc = per_hit(|id| assert_eq!(block_on(tiered_shared(id)).id, id));
    println!("allocations per warm tiered hit: u64 {warm}, Arc<Profile> {warm_arc}");
    assert!(exactly(warm, 0.0), "nothing: {warm}");
    assert!(exactly(warm_arc, 0.0), "nothing: {warm_arc}");
}
