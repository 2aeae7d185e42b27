//! A shutdown's wait for the pending queues (`pending.rs`): until every invalidation an outage
//! left queued has reached Redis, or the timeout passes. A process that exits takes its queue
//! along, and other processes would serve what it invalidated until the entries' TTL.
//!
//! It replays nothing itself: the background replayer (one per store, paced by the breaker)
//! does, and the drain is woken by the queue's confirmations. So it holds nothing, dropping it
//! at any point leaves the queue as it was, and the timeout is its only bound, however Redis
//! behaves.

use std::sync::Arc;
use std::time::Duration;

use super::RedisBackend;
use crate::error::DrainError;

/// Waits until the queues of `backends` (each store once, however many backends share it) are
/// empty, for at most `timeout`.
pub(crate) async fn drain(backends: &[&RedisBackend], timeout: Duration) -> Result<(), DrainError> {
    let mut stores = Vec::with_capacity(backends.len());
    for backend in backends {
        if !stores
            .iter()
            .any(|known| Arc::ptr_eq(known, backend.store()))
        {
            stores.push(Arc::clone(backend.store()));
        }
    }
    let drained = || stores.iter().all(|store| store.drained());
    let left = || {
        stores
            .iter()
            .fold((0, false), |(remaining, overflowed), store| {
                let health = store.health();
                (
                    remaining + health.pending_invalidations,
                    overflowed || health.overflowed,
                )
            })
    };
    if drained() {
        return Ok(());
    }
    if tokio::runtime::Handle::try_current().is_err() {
        let (remaining, overflowed) = left();
        return Err(DrainError::NoRuntime {
            remaining,
            overflowed,
        });
    }
    let every_queue = async {
        loop {
            for store in &stores {
                store.until_drained().await;
            }
            // One may have queued again while another was waited for.
            if drained() {
                return;
            }
        }
    };
    if tokio::time::timeout(timeout, every_queue).await.is_ok() || drained() {
        return Ok(());
    }
    let (remaining, overflowed) = left();
    Err(DrainError::TimedOut {
        remaining,
        overflowed,
        waited: timeout,
    })
}
