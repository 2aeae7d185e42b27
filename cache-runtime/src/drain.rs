//! `drain_invalidations()`: a shutdown's wait until every configured backend's queued
//! invalidations have reached Redis.

use std::time::Duration;

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
/// remain if `timeout` passes first. Invalidations still under way when it looks (a call
/// waiting for its operation timeout) are not waited for.
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
    backend::drain(&remote, timeout).await
}
