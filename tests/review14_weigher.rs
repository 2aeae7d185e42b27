//! Review of issue 14: a memory backend bounded by bytes weighs each entry with the user's
//! weigher, which "can downcast the value to the cached type". A tagged site's entries are
//! stored with their tags' generations around the value: the weigher must still see the value,
//! or a bound in bytes does not bound the tagged entries (paginated lists, the big ones).

mod support;

use std::any::Any;
use std::time::Duration;

use cachette::{cached, configure, MemoryBackend, RedisBackend, TieredBackend};
use support::redis_server::RedisServer;

const PAGE: usize = 4_000;

/// The cached type's real size.
fn weigh(_: &str, value: &(dyn Any + Send + Sync)) -> u32 {
    value
        .downcast_ref::<Vec<u8>>()
        .map_or(1, |bytes| u32::try_from(bytes.len()).unwrap_or(u32::MAX))
}

fn bounded() -> MemoryBackend {
    MemoryBackend::builder()
        .max_bytes(10_000)
        .weigher(weigh)
        .build()
}

#[cached(ttl = "60s", key = "plain:<page>", backend = "memory.sized")]
async fn plain(page: u32) -> Vec<u8> {
    vec![page as u8; PAGE]
}

#[cached(
    ttl = "60s",
    key = "tagged:<page>",
    backend = "memory.sized",
    tags("pages")
)]
async fn tagged(page: u32) -> Vec<u8> {
    vec![page as u8; PAGE]
}

#[cached(ttl = "60s", key = "tiered:<page>", backend = "tiered", tags("pages"))]
async fn tiered_page(page: u32) -> Vec<u8> {
    vec![page as u8; PAGE]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_bound_holds_for_tagged_entries() {
    let server = RedisServer::start();
    let sized = bounded();
    let l1 = bounded();
    let tiered = TieredBackend::builder(
        RedisBackend::builder()
            .url(server.url())
            .prefix("r14w")
            .build()
            .expect("valid"),
    )
    .l1(l1.clone())
    .heartbeat(Duration::from_millis(100))
    .build();
    configure()
        .memory("memory.sized", sized.clone())
        .tiered("tiered", tiered.clone())
        .install()
        .expect("configured once");
    tiered_page(0).await;
    tiered.l1_ready().await;
    for page in 0..20 {
        plain(page).await;
    }
    sized.run_pending_tasks();
    let untagged = sized.entry_count();
    assert!(
        untagged <= 2,
        "untagged: {untagged} pages of {PAGE} bytes held"
    );
    for page in 0..20 {
        tagged(page).await;
    }
    sized.run_pending_tasks();
    assert!(
        sized.entry_count() <= 2,
        "tagged: {} pages of {PAGE} bytes held under a 10,000-byte bound",
        sized.entry_count()
    );
    for page in 1..20 {
        tiered_page(page).await;
    }
    l1.run_pending_tasks();
    assert!(
        l1.entry_count() <= 2,
        "tiered L1: {} tagged pages of {PAGE} bytes held under a 10,000-byte bound",
        l1.entry_count()
    );
}
