//! Single-flight under real concurrency: many tasks on a multi-thread runtime, counted loads.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cachette::{cached, invalidate, KeyBuilder};
use tokio::sync::{Barrier, Notify};

static COLD_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "cold:<id>")]
async fn cold(id: u64) -> Result<u64, String> {
    COLD_LOADS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(id * 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_callers_of_a_cold_key_run_the_body_once() {
    let barrier = Arc::new(Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                cold(7).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task completes"), Ok(14));
    }
    assert_eq!(COLD_LOADS.load(Ordering::SeqCst), 1);
}

/// Polls a future once, so that a follower has joined the flight before the test goes on.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    Pin::new(future).poll(&mut Context::from_waker(&waker))
}

static STALLED_LOADS: AtomicUsize = AtomicUsize::new(0);
static STALLED_LEADER_STARTED: Notify = Notify::const_new();

#[cached(ttl = "60s", key = "stalled")]
async fn stalled() -> u64 {
    if STALLED_LOADS.fetch_add(1, Ordering::SeqCst) == 0 {
        STALLED_LEADER_STARTED.notify_one();
        std::future::pending::<()>().await;
    }
    42
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_leader_hands_over_to_one_waiter() {
    let leader = tokio::spawn(stalled());
    STALLED_LEADER_STARTED.notified().await;
    let mut followers: Vec<_> = (0..100).map(|_| Box::pin(stalled())).collect();
    for follower in &mut followers {
        assert!(
            poll_once(follower).is_pending(),
            "followers wait for the leader"
        );
    }
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    for follower in followers {
        assert_eq!(follower.await, 42);
    }
    assert_eq!(
        STALLED_LOADS.load(Ordering::SeqCst),
        2,
        "the leader and one taker"
    );
}

static PANIC_LOADS: AtomicUsize = AtomicUsize::new(0);
static PANIC_LEADER_STARTED: Notify = Notify::const_new();
static PANIC_LEADER_GO: Notify = Notify::const_new();

#[cached(ttl = "60s", key = "panicky")]
async fn panicky() -> u64 {
    if PANIC_LOADS.fetch_add(1, Ordering::SeqCst) == 0 {
        PANIC_LEADER_STARTED.notify_one();
        PANIC_LEADER_GO.notified().await;
        panic!("the loader failed badly");
    }
    7
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_leader_hands_over_to_one_waiter() {
    let leader = tokio::spawn(panicky());
    PANIC_LEADER_STARTED.notified().await;
    let mut followers: Vec<_> = (0..100).map(|_| Box::pin(panicky())).collect();
    for follower in &mut followers {
        assert!(
            poll_once(follower).is_pending(),
            "followers wait for the leader"
        );
    }
    PANIC_LEADER_GO.notify_one();
    assert!(leader.await.expect_err("panicked").is_panic());
    for follower in followers {
        assert_eq!(follower.await, 7);
    }
    assert_eq!(
        PANIC_LOADS.load(Ordering::SeqCst),
        2,
        "the leader and one taker"
    );
}

static FENCE_LOADS: AtomicUsize = AtomicUsize::new(0);
static FENCE_LOADER_READ: Notify = Notify::const_new();
static FENCE_LOADER_GO: Notify = Notify::const_new();

/// The source of truth for `fenced`.
static SOURCE: AtomicUsize = AtomicUsize::new(1);

#[cached(ttl = "60s", key = "fenced")]
async fn fenced() -> usize {
    let value = SOURCE.load(Ordering::SeqCst);
    if FENCE_LOADS.fetch_add(1, Ordering::SeqCst) == 0 {
        // Read the old value, then stall until the invalidation has landed.
        FENCE_LOADER_READ.notify_one();
        FENCE_LOADER_GO.notified().await;
    }
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_loader_cannot_store_its_old_value_after_an_invalidation() {
    let slow = tokio::spawn(fenced());
    FENCE_LOADER_READ.notified().await;
    SOURCE.store(2, Ordering::SeqCst);
    invalidate(&KeyBuilder::new().lit("fenced").finish()).await;
    // A caller after the invalidation must not join the slow loader's flight.
    assert_eq!(fenced().await, 2);
    FENCE_LOADER_GO.notify_one();
    assert_eq!(
        slow.await.expect("completes"),
        1,
        "its own caller gets what it read"
    );
    assert_eq!(fenced().await, 2, "the old value was not stored");
    assert_eq!(FENCE_LOADS.load(Ordering::SeqCst), 2);
}

static SYNC_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "sync:<id>")]
fn sync_square(id: u64) -> u64 {
    SYNC_LOADS.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    id * id
}

#[test]
fn sync_callers_of_a_cold_key_run_the_body_once() {
    let barrier = Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                sync_square(9)
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().expect("thread completes"), 81);
    }
    assert_eq!(SYNC_LOADS.load(Ordering::SeqCst), 1);
}

#[test]
fn cached_futures_are_send() {
    fn is_send<T: Send>(_: T) {}
    is_send(cold(1));
    is_send(fenced());
}
