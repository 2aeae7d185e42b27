//! The runtime of cachette's own background tasks: the ones that outlive the call that starts
//! them and that nothing else restarts while they are marked running (the Redis replayer, a
//! cluster connection's replacement attempt, the invalidation bus and the wake-up subscriber,
//! a lock's release after its holder went away, the diagnosis of a refused connection).
//!
//! Spawned on the caller's runtime, such a task runs only while that runtime is driven: a sync
//! bridge's current_thread runtime, kept for its next `block_on`, leaves it parked forever with
//! its "running" flag set, and a runtime that ends (each `#[tokio::test]`) drops it. So they
//! run here instead: one current_thread runtime, started on first use on a detached thread
//! (`cachette-background`) that parks in `block_on` for the life of the process. Nothing joins
//! the thread, so it does not hold up exit; the tasks are Redis round trips and timers, and
//! none blocks the thread. Tasks that run a user's loader or handler (a refresh-ahead, a
//! fail-safe load, an HTTP revalidation) stay on the caller's runtime, whose resources the
//! user's code may rely on.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle};
use tokio::task::JoinHandle;

/// The thread's name, as seen in a debugger or `top -H`.
const THREAD_NAME: &str = "cachette-background";

/// The background runtime's handle, started on first use; `None` if the thread or runtime
/// could not be made (then the caller's runtime, if any, is used).
fn handle() -> Option<&'static Handle> {
    static HANDLE: OnceLock<Option<Handle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match start() {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::error!(
                    %error,
                    "cachette could not start its background thread; background tasks run on \
                     the caller's runtime"
                );
                None
            }
        })
        .as_ref()
}

fn start() -> std::io::Result<Handle> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    // The runtime is made on its own thread: one made here could end up dropped on an async
    // thread (if the spawn failed), which panics.
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            let runtime = match Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = sender.send(Err(error));
                    return;
                }
            };
            let _ = sender.send(Ok(runtime.handle().clone()));
            runtime.block_on(std::future::pending::<()>());
        })?;
    receiver
        .recv()
        .map_err(|_| std::io::Error::other("the background thread ended before its runtime"))?
}

/// Spawns `task` on the background runtime (the caller's, if that one could not be started;
/// `None` if neither exists). Safe to call from sync code and from any runtime.
pub(crate) fn spawn<F>(task: F) -> Option<JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match handle() {
        Some(handle) => Some(handle.spawn(task)),
        None => Handle::try_current().ok().map(|handle| handle.spawn(task)),
    }
}

/// Runs `make` inside the background runtime's context, so that what it spawns (a connection's
/// tasks) lands there; in the caller's context if there is no background runtime.
pub(crate) fn enter<T>(make: impl FnOnce() -> T) -> T {
    match handle() {
        Some(handle) => {
            let _entered = handle.enter();
            make()
        }
        None => make(),
    }
}

/// Polls `operation` inside the background runtime's context, wherever it is awaited: a Redis
/// command's poll may connect or reconnect, and redis-rs spawns the new connection's driver on
/// the current runtime. Spawned on the caller's, the driver, and with it every later command
/// of every caller, would stall once that runtime sits idle (a sync bridge's between two
/// `block_on`s) and end with it. What the poll registers (sockets, timers) is driven by the
/// background thread too; the caller's task is woken from there.
pub(crate) async fn in_context<F: Future>(operation: F) -> F::Output {
    let Some(handle) = handle() else {
        return operation.await;
    };
    let mut operation = std::pin::pin!(operation);
    std::future::poll_fn(|context| {
        let _entered = handle.enter();
        operation.as_mut().poll(context)
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_task_spawned_from_an_idle_runtime_runs_to_the_end() {
        let idle = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (sender, receiver) = std::sync::mpsc::channel();
        // Spawned inside the caller's block_on, which returns before the task's timer fires.
        idle.block_on(async move {
            super::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = sender.send(std::thread::current().name().map(str::to_owned));
            })
            .expect("a runtime to spawn on");
        });
        let ran_on = receiver
            .recv_timeout(Duration::from_secs(5))
            .expect("the task ran while the caller's runtime sat idle");
        assert_eq!(ran_on.as_deref(), Some(super::THREAD_NAME));
        drop(idle);
    }

    #[test]
    fn a_task_outlives_the_runtime_that_spawned_it_and_works_without_one() {
        let ending = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (sender, receiver) = std::sync::mpsc::channel();
        let first = sender.clone();
        ending.block_on(async move {
            super::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = first.send("spawned in a runtime");
            });
        });
        drop(ending);
        // From a thread with no runtime at all.
        super::spawn(async move {
            let _ = sender.send("spawned without one");
        });
        let mut got = [
            receiver.recv_timeout(Duration::from_secs(5)).expect("ran"),
            receiver.recv_timeout(Duration::from_secs(5)).expect("ran"),
        ];
        got.sort_unstable();
        assert_eq!(got, ["spawned in a runtime", "spawned without one"]);
    }
}
