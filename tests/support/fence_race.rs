//! The stale-set fence race, for any backend: a loader that read its source before an
//! invalidation is held at a notification while the invalidation lands, then finishes; the
//! cache must not hold what it read. `fence_race!("redis")` defines
//! `async fn a_slow_loader_cannot_store_old_data()` in the calling test file.

/// Defines the scenario for the backend named by the literal.
#[macro_export]
macro_rules! fence_race {
    ($backend:literal) => {
        static FENCE_LOADS: ::std::sync::atomic::AtomicUsize =
            ::std::sync::atomic::AtomicUsize::new(0);
        static FENCE_SOURCE: ::std::sync::atomic::AtomicUsize =
            ::std::sync::atomic::AtomicUsize::new(1);
        static LOADER_READ: ::tokio::sync::Notify = ::tokio::sync::Notify::const_new();
        static LOADER_GO: ::tokio::sync::Notify = ::tokio::sync::Notify::const_new();

        #[::cachette::cached(ttl = "60s", key = "fenced:<id>", backend = $backend)]
        async fn fenced(id: u64) -> usize {
            let _ = id;
            let value = FENCE_SOURCE.load(::std::sync::atomic::Ordering::SeqCst);
            if FENCE_LOADS.fetch_add(1, ::std::sync::atomic::Ordering::SeqCst) == 0 {
                LOADER_READ.notify_one();
                LOADER_GO.notified().await;
            }
            value
        }

        #[::cachette::invalidates("fenced:<id>")]
        async fn change_fenced(id: u64, value: usize) {
            let _ = id;
            FENCE_SOURCE.store(value, ::std::sync::atomic::Ordering::SeqCst);
        }

        async fn a_slow_loader_cannot_store_old_data() {
            let slow = ::tokio::spawn(fenced(1));
            LOADER_READ.notified().await;
            change_fenced(1, 2).await;
            LOADER_GO.notify_one();
            assert_eq!(
                slow.await.expect("completes"),
                1,
                "the caller gets what it loaded"
            );
            assert_eq!(fenced(1).await, 2, "the cache did not keep the old value");
            assert_eq!(fenced(1).await, 2);
            assert_eq!(
                FENCE_LOADS.load(::std::sync::atomic::Ordering::SeqCst),
                2,
                "the new value was stored"
            );
        }
    };
}
