//! Loads counted in one process-wide counter, for the tests that check which calls hit: the
//! counting tests of a binary run one at a time (`serial`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Every counted load of the binary.
pub static LOADS: AtomicUsize = AtomicUsize::new(0);

static SERIAL: Mutex<()> = Mutex::new(());

/// Held by a test that counts loads, so that no other test's loads land in its count.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The loads so far.
pub fn loads() -> usize {
    LOADS.load(Ordering::SeqCst)
}

/// `value`, counted as one load.
pub fn load<T>(value: T) -> T {
    LOADS.fetch_add(1, Ordering::SeqCst);
    value
}

/// Runs `future` to completion on a runtime of its own.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// Calls `$call` twice: the first loads `$first` times (0 or 1), the second not at all.
#[allow(unused_macros)]
macro_rules! filled_then_hit {
    ($call:expr, $value:expr, $first:expr, $what:expr) => {{
        let before = $crate::support::load_count::loads();
        assert_eq!($call, $value, "{}", $what);
        assert_eq!(
            $crate::support::load_count::loads(),
            before + $first,
            "first call of {}",
            $what
        );
        assert_eq!($call, $value, "{}", $what);
        assert_eq!(
            $crate::support::load_count::loads(),
            before + $first,
            "a hit on {}",
            $what
        );
    }};
}
pub(crate) use filled_then_hit;
