//! Review of issue 13 (observability, test clock): counts and clocks against what a test did,
//! on in-process backends. Each test uses its own sites and keys; the registry is configured
//! once for the binary.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use cachette::{cached, configure, stats, MemoryBackend, TestClock};
use tokio::sync::Notify;

/// The backends every test here uses, configured once.
struct Setup {
    clocked: MemoryBackend,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let clock = TestClock::new();
        let clocked = MemoryBackend::builder().clock(&clock).build();
        configure()
            .memory("memory", MemoryBackend::default())
            .memory("memory.clocked", clocked.clone())
            .install()
            .expect("configured once");
        Setup { clocked }
    })
}

// ---------------------------------------------------------------------------------------------
// A follower whose leader is abandoned waits again: one call, counted as coalesced once.

static ABANDON_RUNS: AtomicUsize = AtomicUsize::new(0);
/// Which caller ran the second body (the first one's leader never returns).
static SECOND_LOADER: AtomicU32 = AtomicU32::new(0);
static LET_SECOND_GO: Notify = Notify::const_new();

#[cached(ttl = "60s", key = "abandon:<id>")]
async fn abandoned(id: u64, caller: u32) -> u64 {
    match ABANDON_RUNS.fetch_add(1, Ordering::SeqCst) {
        0 => std::future::pending().await,
        _ => {
            SECOND_LOADER.store(caller, Ordering::SeqCst);
            LET_SECOND_GO.notified().await;
            id
        }
    }
}

async fn yields(n: usize) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// A leads and is cancelled while B waits for it; C arrives then and leads; B, woken by A's
/// abandonment, follows C. B waited for one load (C's), in one call: coalesced once.
#[tokio::test(flavor = "current_thread")]
async fn a_follower_retrying_after_an_abandoned_leader_is_coalesced_once() {
    setup();
    let a = tokio::spawn(abandoned(1, 1));
    yields(3).await;
    assert_eq!(ABANDON_RUNS.load(Ordering::SeqCst), 1, "A runs the body");
    let b = tokio::spawn(abandoned(1, 2));
    yields(3).await;
    a.abort();
    let c = tokio::spawn(abandoned(1, 3));
    yields(6).await;
    assert_eq!(ABANDON_RUNS.load(Ordering::SeqCst), 2, "one more body runs");
    assert_eq!(
        SECOND_LOADER.load(Ordering::SeqCst),
        3,
        "C leads the second flight"
    );
    LET_SECOND_GO.notify_one();
    assert_eq!(c.await.expect("C"), 1);
    assert_eq!(b.await.expect("B"), 1, "B got C's value");

    let stats = stats();
    let site = stats.site("review13::abandoned").expect("the site ran");
    assert_eq!(
        (site.misses, site.loads, site.load_failures),
        (3, 2, 1),
        "three calls missed; A's load was cancelled, C's returned"
    );
    assert_eq!(
        site.coalesced, 1,
        "only B waited for another caller's load, and it is one call: {site:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// On a test clock, an entry lives until the test clock passes its TTL, whatever real time does.

static CLOCKED_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "200ms", key = "clocked:<id>", backend = "memory.clocked")]
async fn clocked(id: u64) -> u64 {
    CLOCKED_LOADS.fetch_add(1, Ordering::SeqCst);
    id
}

/// The test clock does not move; real time passes the TTL (a slow machine, a debugger, a test
/// that simply takes longer than its TTL). The entry is still fresh on the clock the backend
/// was given, so the next call is a hit.
#[tokio::test(flavor = "current_thread")]
async fn a_test_clock_entry_does_not_expire_in_real_time() {
    let setup = setup();
    assert_eq!(clocked(1).await, 1);
    assert_eq!(clocked(1).await, 1);
    assert_eq!(
        CLOCKED_LOADS.load(Ordering::SeqCst),
        1,
        "a hit on the clock"
    );
    // A bounded wait: real time passes the ttl while the test clock stands still.
    std::thread::sleep(Duration::from_millis(1_500));
    // Removes what expired on the store's clock (nothing: the test clock stood still).
    setup.clocked.run_pending_tasks();
    assert_eq!(clocked(1).await, 1);
    assert_eq!(
        CLOCKED_LOADS.load(Ordering::SeqCst),
        1,
        "the test clock has not moved: the entry is fresh, yet it was reloaded"
    );
}

// ---------------------------------------------------------------------------------------------
// A follower whose leader's load fails runs the body itself: it did not coalesce, as a
// cross-process waiter that ends up loading does not.

static FAILING_RUNS: AtomicUsize = AtomicUsize::new(0);
static LET_FAILING_GO: Notify = Notify::const_new();

#[cached(ttl = "60s", key = "failing:<id>")]
async fn failing_first(id: u64) -> Result<u64, String> {
    match FAILING_RUNS.fetch_add(1, Ordering::SeqCst) {
        0 => {
            LET_FAILING_GO.notified().await;
            Err("the leader's load failed".to_owned())
        }
        _ => Ok(id),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_follower_that_runs_the_body_itself_is_not_coalesced() {
    setup();
    let a = tokio::spawn(failing_first(1));
    yields(3).await;
    assert_eq!(FAILING_RUNS.load(Ordering::SeqCst), 1, "A runs the body");
    let b = tokio::spawn(failing_first(1));
    yields(3).await;
    LET_FAILING_GO.notify_one();
    assert!(a.await.expect("A").is_err());
    assert_eq!(b.await.expect("B"), Ok(1));
    assert_eq!(
        FAILING_RUNS.load(Ordering::SeqCst),
        2,
        "B ran the body itself"
    );

    let stats = stats();
    let site = stats.site("review13::failing_first").expect("the site ran");
    assert_eq!((site.misses, site.loads), (2, 2));
    assert_eq!(
        site.coalesced, 0,
        "B loaded for itself (cachette_coalesced_total: \"waited for another caller's load \
         instead of loading\"): {site:?}"
    );
}
