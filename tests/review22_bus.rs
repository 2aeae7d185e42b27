//! Review 22: a tiered site whose key's form is longer than 16 bytes (hit in pieces) loses its
//! L1 entry to an invalidation another process publishes on the bus, which names it by text.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, configure, MemoryBackend, RedisBackend, TieredBackend};
use support::redis_server::RedisServer;

static LOADS: AtomicUsize = AtomicUsize::new(0);

fn loads() -> usize {
    LOADS.load(Ordering::SeqCst)
}

#[cached(
    ttl = "60s",
    key = "r22-tenant:<tenant>:account:<id>",
    backend = "tiered.r22"
)]
async fn account(tenant: u32, id: i64) -> String {
    LOADS.fetch_add(1, Ordering::SeqCst);
    format!("{tenant}/{id}")
}

#[cached(ttl = "60s", backend = "tiered.r22")]
async fn by_default_key(a: u64, b: i8) -> String {
    LOADS.fetch_add(1, Ordering::SeqCst);
    format!("{a}/{b}")
}

/// Waits, bounded, for a condition moved by another task (the bus's subscriber).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_invalidation_by_text_drops_an_entry_hit_in_pieces() {
    let server = RedisServer::start();
    let l2 = RedisBackend::builder()
        .url(server.url())
        .prefix("r22")
        .op_timeout(Duration::from_millis(500))
        .build()
        .expect("valid configuration");
    let l1 = MemoryBackend::default();
    let tiered = TieredBackend::builder(l2)
        .l1(l1.clone())
        .heartbeat(Duration::from_millis(100))
        .build();
    configure()
        .tiered("tiered.r22", tiered.clone())
        .install()
        .expect("configured once");

    let cases: [(&str, String); 2] = [
        (
            "long template",
            "r22-tenant:<7>:account:<-9223372036854775808>".to_owned(),
        ),
        (
            "default key",
            format!("review22_bus::by_default_key(<{}>,<-128>)", u64::MAX),
        ),
    ];
    for (round, (what, text)) in cases.iter().enumerate() {
        let call = || async {
            match round {
                0 => account(7, i64::MIN).await,
                _ => by_default_key(u64::MAX, i8::MIN).await,
            }
        };
        let expected = match round {
            0 => format!("7/{}", i64::MIN),
            _ => format!("{}/-128", u64::MAX),
        };
        // Filled in L2, and in L1 once the bus is up.
        assert_eq!(call().await, expected, "{what}");
        eventually("the bus to come up", || tiered.l1_active()).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while l1.entry_count() == 0 {
            assert!(Instant::now() < deadline, "L1 never held {what}");
            // An L2 hit fills L1 once the bus is up.
            assert_eq!(call().await, expected, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = loads();
        assert_eq!(call().await, expected, "{what}");
        assert_eq!(loads(), before, "an L1 hit, {what}");

        // Another process invalidates by text.
        let received = tiered.invalidations_received();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("r22:1:bus")
            .arg(format!("another-process {text}"))
            .query_async(&mut server.connection().await)
            .await
            .expect("published");
        eventually("the bus message", || {
            tiered.invalidations_received() > received
        })
        .await;
        assert_eq!(
            l1.entry_count(),
            0,
            "the bus dropped {what} ({text}) from L1"
        );
    }
}
