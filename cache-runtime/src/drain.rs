//! `drain_invalidations()`: a shutdown's wait until every configured backend's queued
//! invalidations have reached Redis, and the invalidating calls still under way have ended.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::backend::{self, Backend};
use crate::error::DrainError;
use crate::registry;

/// Waits until the invalidations that every configured backend queued while Redis was
/// unreachable have reached Redis, for at most `timeout`: the last step of a graceful shutdown.
///
/// An invalidation that fails during an outage is kept in the process and replayed once Redis
/// answers (`health()` counts it in `pending_invalidations`). A process that exits before that
/// takes it along: Redis keeps the old value, and other instances serve it (a tiered peer from
/// its L1) until its ttl. Call this once the work that invalidates has stopped (after the
/// server's graceful shutdown): it returns `Ok` as soon as every queue is empty (at once if
/// nothing is queued, as with only in-process backends), and a [`DrainError`] saying how many
/// remain if `timeout` passes first. It also waits for the invalidating calls still under
/// way (an `#[invalidates]` body running, or its invalidation waiting for its operation
/// timeout, in a task of its own if the caller gave up), whose failures would queue more.
///
/// It only watches: the backends' own replayers deliver the invalidations (one probe per
/// breaker interval, 1 s, while Redis is down), and each confirmation wakes it. So it holds
/// nothing, never polls, and returns by `timeout` whatever Redis does (a frozen server
/// included); dropping it at any point leaves the queues as they were. Outside a Tokio runtime
/// nothing can replay: it returns [`DrainError::NoRuntime`] if anything is queued.
///
/// ```
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() {
/// let (shutdown, on_shutdown) = tokio::sync::oneshot::channel::<()>();
/// // The service; in an axum one: `axum::serve(listener, app).with_graceful_shutdown(signal)`.
/// let server = tokio::spawn(async move {
///     let _ = on_shutdown.await; // serves requests until the signal
/// });
/// shutdown.send(()).expect("the server listens"); // SIGTERM, ctrl-c
/// server.await.expect("every request has finished");
/// // Nothing invalidates any more: deliver what an outage left queued, then exit.
/// if let Err(error) = cache_runtime::drain_invalidations(Duration::from_secs(5)).await {
///     eprintln!("{error}: other instances may serve those entries until their ttl");
/// }
/// # }
/// ```
pub async fn drain_invalidations(timeout: Duration) -> Result<(), DrainError> {
    let backends = registry::global().all_backends();
    let remote: Vec<_> = backends.iter().filter_map(Backend::redis).collect();
    let started = tokio::time::Instant::now();
    let ended = under_way_ended(&remote, timeout).await;
    let left = timeout.saturating_sub(started.elapsed());
    match backend::drain(&remote, left).await {
        // The calls under way, then the queues, share the one timeout.
        Err(DrainError::TimedOut {
            remaining,
            overflowed,
            ..
        }) => Err(DrainError::TimedOut {
            remaining: remaining + UNDER_WAY.load(Ordering::Acquire),
            overflowed,
            waited: timeout,
        }),
        Ok(()) if !ended => Err(DrainError::TimedOut {
            remaining: UNDER_WAY.load(Ordering::Acquire),
            overflowed: false,
            waited: timeout,
        }),
        other => other,
    }
}

/// Invalidating calls under way in this process (see [`UnderWay`]).
static UNDER_WAY: AtomicUsize = AtomicUsize::new(0);
/// Woken when the last call under way ends.
static NONE_UNDER_WAY: Notify = Notify::const_new();

/// Counts an invalidating call as under way, from before its body runs until its
/// invalidations were confirmed by Redis or queued for replay: dropped on return, on panic, or
/// with the task that carries it, so that a call that ends by any way is no longer waited for.
pub(crate) struct UnderWay(());

impl UnderWay {
    pub(crate) fn begin() -> UnderWay {
        UNDER_WAY.fetch_add(1, Ordering::AcqRel);
        UnderWay(())
    }
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        if UNDER_WAY.fetch_sub(1, Ordering::AcqRel) == 1 {
            NONE_UNDER_WAY.notify_waiters();
        }
    }
}

/// Waits, for at most `timeout`, until no invalidating call is under way; `false` if one still
/// was. Only with a remote backend, which is all a call under way could still queue for, and
/// inside a Tokio runtime (outside one, the drain says what is queued at once).
async fn under_way_ended(remote: &[&crate::backend::RedisBackend], timeout: Duration) -> bool {
    if remote.is_empty() || tokio::runtime::Handle::try_current().is_err() {
        return true;
    }
    let ended = async {
        loop {
            // Registered before the check, so that the last call ending between the two still
            // wakes it.
            let mut ended = std::pin::pin!(NONE_UNDER_WAY.notified());
            ended.as_mut().enable();
            if UNDER_WAY.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    };
    tokio::time::timeout(timeout, ended).await.is_ok()
}
