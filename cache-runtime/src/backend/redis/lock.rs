//! The cross-process load lock as its holder keeps it: renewed while the load runs, released
//! when the load ends however it ends.
//!
//! The lease is short ([`LEASE`]) and renewed every third of it, so a holder whose process dies
//! frees the key within about one lease, while a live holder keeps it however long it loads. A
//! holder that is dropped (its caller cancelled, its loader panicked) releases at once, from a
//! task on the current runtime, since `Drop` cannot await; the release wakes the key's waiters.

use std::sync::Arc;

use super::store::{RedisStore, LEASE};

/// A held lock: its owner token, and the task that renews it.
pub(crate) struct HeldLock {
    store: Arc<RedisStore>,
    key: String,
    token: String,
    renewal: Option<tokio::task::AbortHandle>,
    /// Whether a script has released it (a fill, or [`HeldLock::release`]).
    released: bool,
}

impl HeldLock {
    pub(crate) fn new(store: &Arc<RedisStore>, key: &str, token: String) -> Self {
        let renewal = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let store = Arc::downgrade(store);
            let (key, token) = (key.to_owned(), token.clone());
            runtime
                .spawn(async move {
                    let mut tick = tokio::time::interval(LEASE / 3);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let Some(store) = store.upgrade() else { return };
                        // Lost (expired, or the server restarted): nothing left to keep.
                        if let Ok(false) = store.renew(&key, &token, LEASE).await {
                            return;
                        }
                    }
                })
                .abort_handle()
        });
        HeldLock {
            store: Arc::clone(store),
            key: key.to_owned(),
            token,
            renewal,
            released: false,
        }
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Records that a fill script released the lock.
    pub(crate) fn released_by_fill(mut self) {
        self.released = true;
    }

    /// Releases the lock (the load stored nothing) and wakes the key's waiters.
    pub(crate) async fn release(mut self) {
        if self.store.release(&self.key, &self.token).await.is_ok() {
            self.released = true;
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        if self.released {
            return;
        }
        // Cancelled or panicked mid-load, or the release failed: free the key now rather than
        // at the end of the lease, on cachette's runtime (the holder's may be ending, or idle
        // once its `block_on` returns). With no runtime to be had, the lease ends it.
        let store = Arc::clone(&self.store);
        let (key, token) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        crate::background::spawn(async move {
            // Retried while Redis is unreachable (a pause, an open breaker), within the
            // lease: afterwards the lock has expired anyway.
            let deadline = tokio::time::Instant::now() + LEASE;
            while let Err(error) = store.release(&key, &token).await {
                if !error.is_transport() || tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(super::SAFETY_POLL).await;
            }
        });
    }
}
