//! Review of issue 14: a service crate that forbids unsafe code (a common crate-level lint)
//! compiled with every attribute before the audit's registrations; each expansion must still
//! compile under `#![forbid(unsafe_code)]`.
#![forbid(unsafe_code)]

use cachette::{cache_put, cached, invalidates};

#[cached(ttl = "60s", key = "fu:<id>", tags("fu"))]
async fn tagged(id: u64) -> u64 {
    id + 1
}

#[cached(ttl = "60s")]
fn plain(id: u64) -> u64 {
    id + 2
}

#[invalidates("fu:<id>", tags("fu"))]
async fn update(id: u64) {
    let _ = id;
}

#[cache_put(key = "fu:<id>", ttl = "60s", backend = "memory")]
async fn put(id: u64) -> u64 {
    id + 1
}

#[tokio::test]
async fn every_attribute_compiles_in_a_crate_that_forbids_unsafe_code() {
    assert_eq!(tagged(1).await, 2);
    assert_eq!(plain(1), 3);
    update(1).await;
    assert_eq!(put(1).await, 2);
    assert_eq!(tagged(1).await, 2);
}
