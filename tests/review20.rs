//! Review of the memory hit by a key's form (issue 17, fourth round): a site whose key is
//! literal text and integer parameters asks its hit with a `HitKey`; every other way of naming
//! the same text (an invalidation by hand, `#[invalidates]` with a string, another site's
//! template) must reach the same entry, and a value of another type under it is a miss.

use std::sync::atomic::{AtomicUsize, Ordering};

use cachette::{cached, invalidates, KeyBuilder};

static LOADS: AtomicUsize = AtomicUsize::new(0);

fn loads() -> usize {
    LOADS.load(Ordering::SeqCst)
}

fn load<T>(value: T) -> T {
    LOADS.fetch_add(1, Ordering::SeqCst);
    value
}

#[cached(ttl = "60s", key = "u:<id>", backend = "memory")]
async fn by_u64(id: u64) -> u64 {
    load(id)
}

#[invalidates("u:<id>")]
async fn drop_u_by_text(id: String) {
    let _ = id;
}

#[cached(ttl = "60s", key = "n:<id>", backend = "memory")]
async fn by_i64(id: i64) -> i64 {
    load(id)
}

#[invalidates("n:<id>")]
async fn drop_n_by_text(id: &str) {
    let _ = id;
}

#[cached(ttl = "60s", key = "s:<id>", backend = "memory")]
fn by_ref_sync(id: &u64) -> u64 {
    let id = *id + 1000; // shadowed in the body: the key is the argument's
    load(id)
}

#[cached(ttl = "60s", key = "m:<id>", backend = "memory")]
#[allow(unused_mut)]
fn mut_u8(mut id: u8) -> u8 {
    id = id.wrapping_add(1);
    load(id)
}

#[cached(ttl = "60s", key = "t:<id>", backend = "tiered")]
async fn tiered_u32(id: u32) -> u32 {
    load(id)
}

#[cached(ttl = "60s", key = "x:<id>", backend = "memory")]
async fn shared_as_u64(id: usize) -> u64 {
    load(id as u64)
}

#[cached(ttl = "60s", key = "x:<id>", backend = "memory")]
async fn shared_as_string(id: String) -> String {
    load(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_name_of_a_text_reaches_its_entry() {
    // #[invalidates] with a string holding the integer's text.
    assert_eq!(by_u64(42).await, 42);
    let before = loads();
    assert_eq!(by_u64(42).await, 42);
    assert_eq!(loads(), before, "hit");
    drop_u_by_text("42".to_owned()).await;
    assert_eq!(by_u64(42).await, 42);
    assert_eq!(loads(), before + 1, "invalidated by a String");
    // By hand, by text built of a string.
    cachette::invalidate(&KeyBuilder::new().lit("u:").arg(&"42").finish()).await;
    assert_eq!(by_u64(42).await, 42);
    assert_eq!(loads(), before + 2, "invalidated by hand");
    // `042` is another text: it does not reach `<42>`.
    drop_u_by_text("042".to_owned()).await;
    assert_eq!(by_u64(42).await, 42);
    assert_eq!(loads(), before + 2, "`042` is not `42`");

    for id in [i64::MIN, -1, 0, i64::MAX] {
        assert_eq!(by_i64(id).await, id);
        let before = loads();
        assert_eq!(by_i64(id).await, id);
        assert_eq!(loads(), before, "hit {id}");
        drop_n_by_text(&id.to_string()).await;
        assert_eq!(by_i64(id).await, id);
        assert_eq!(loads(), before + 1, "invalidated {id}");
    }
    // `-0` is not `0`.
    let before = loads();
    drop_n_by_text("-0").await;
    assert_eq!(by_i64(0).await, 0);
    assert_eq!(loads(), before);

    assert_eq!(by_ref_sync(&7), 1007);
    let before = loads();
    assert_eq!(by_ref_sync(&7), 1007);
    assert_eq!(loads(), before, "sync hit by a `&u64`");
    cachette::invalidate(&KeyBuilder::new().lit("s:").arg(&7u64).finish()).await;
    assert_eq!(by_ref_sync(&7), 1007);
    assert_eq!(loads(), before + 1);

    assert_eq!(mut_u8(255), 0);
    let before = loads();
    assert_eq!(mut_u8(255), 0);
    assert_eq!(loads(), before, "hit by a `mut` parameter's argument");

    assert_eq!(tiered_u32(9).await, 9);
    let before = loads();
    assert_eq!(tiered_u32(9).await, 9);
    assert_eq!(loads(), before, "tiered (in memory without Redis) hit");
    cachette::invalidate(&KeyBuilder::new().lit("t:").arg(&"9").finish()).await;
    assert_eq!(tiered_u32(9).await, 9);
    assert_eq!(loads(), before + 1);

    // Two sites sharing a key with values of two types: a miss each time, never a panic.
    assert_eq!(shared_as_u64(5).await, 5);
    let before = loads();
    assert_eq!(shared_as_string("5".to_owned()).await, "5");
    assert_eq!(loads(), before + 1, "another type is a miss");
    assert_eq!(shared_as_u64(5).await, 5);
    assert_eq!(loads(), before + 2, "and back");
}
