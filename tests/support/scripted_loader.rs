//! A loader whose next behaviour the test chooses, counted: for the refresh and fail-safe
//! scenarios, where what matters is how often, and when, a cached function's body ran.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What the loader does next.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Loader {
    /// Returns the next version.
    Counts,
    Fails,
    Panics,
    /// Waits for [`release`], then returns the next version.
    Waits,
    /// Waits for [`release`], then fails.
    WaitsThenFails,
    /// Waits for [`release`], then panics.
    WaitsThenPanics,
}

static LOADER: Mutex<Loader> = Mutex::new(Loader::Counts);
static LOADS: AtomicUsize = AtomicUsize::new(0);
static VERSION: AtomicU64 = AtomicU64::new(0);
static RELEASE: Notify = Notify::const_new();

pub fn set(loader: Loader) {
    *LOADER.lock().expect("not poisoned") = loader;
}

/// How many times the loader was entered.
pub fn loads() -> usize {
    LOADS.load(Ordering::SeqCst)
}

/// The last version a load returned.
pub fn version() -> u64 {
    VERSION.load(Ordering::SeqCst)
}

/// Lets one waiting load go on.
pub fn release() {
    RELEASE.notify_one();
}

/// The body of every cached function in the scenarios.
pub async fn run_loader() -> Result<u64, String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    let loader = *LOADER.lock().expect("not poisoned");
    let next = || Ok(VERSION.fetch_add(1, Ordering::SeqCst) + 1);
    match loader {
        Loader::Counts => next(),
        Loader::Fails => Err("the database is down".to_owned()),
        Loader::Panics => panic!("the loader panicked"),
        Loader::Waits => {
            RELEASE.notified().await;
            next()
        }
        Loader::WaitsThenFails => {
            RELEASE.notified().await;
            Err("the database timed out".to_owned())
        }
        Loader::WaitsThenPanics => {
            RELEASE.notified().await;
            panic!("the background load panicked")
        }
    }
}

/// Waits (at most five seconds) until the loader has been entered `count` times.
pub async fn until_loads(count: usize) {
    let started = Instant::now();
    while loads() < count {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the load never ran"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Calls `call` until it answers `wanted` (a load in the background lands), for at most five
/// seconds.
pub async fn until_answers<F, Fut>(wanted: u64, call: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64, String>>,
{
    let started = Instant::now();
    loop {
        if call().await == Ok(wanted) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still not {wanted} after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The stale answers of the sites whose function path ends with `function` (`"::price"`).
pub fn stale_answers(function: &str) -> u64 {
    cachette::stats()
        .sites
        .iter()
        .filter(|site| site.function.ends_with(function))
        .map(|site| site.stale)
        .sum()
}
