//! Write-through (`#[cache_put]`): after the function succeeds, its value is stored under the
//! key in the site's backend, so that the next read, in any process, is a hit with the new
//! value; every other backend drops the key. Fenced: a load that began before the put (and so
//! may have read the old data) cannot overwrite it, in process (its flight is detached) and in
//! Redis (the put advances the fence in the same script that stores).
//!
//! The value is the function's, classified by its return shape (`Ok`, `Some`, or the whole
//! value). A reader whose type differs (another function under the same key) finds a value of
//! another type: in process a failed downcast, in Redis another type fingerprint; both are a
//! logged miss, and its next fill replaces the entry.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;

use crate::backend::{Backend, Stored};
use crate::drain::UnderWay;
use crate::envelope::{self, Bincode, Times};
use crate::key::CacheKey;
use crate::log_gate::LogGate;
use crate::registry;
use crate::shape::{Produced, ReturnShape};
use crate::site::Site;

/// Runs a `#[cache_put]` function whose backend is in process.
pub(crate) async fn cache_put<R, S, F>(site: &'static Site, shape: S, key: CacheKey, body: F) -> R
where
    S: ReturnShape<R>,
    F: Future<Output = R>,
{
    let ret = body.await;
    if let Produced::Value(value) = shape.produced(&ret) {
        put_to_the_end(site, key, Arc::new(value.clone()), None).await;
    }
    ret
}

/// Runs a `#[cache_put]` function on the configured default backend: the remote path serves
/// an in-process backend too (it then encodes nothing).
pub(crate) async fn cache_put_default<R, S, F>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    body: F,
) -> R
where
    S: ReturnShape<R>,
    S::Value: Serialize,
    F: Future<Output = R>,
{
    cache_put_remote(site, shape, key, body).await
}

/// Runs a `#[cache_put]` function whose backend is remote (Redis, tiered).
pub(crate) async fn cache_put_remote<R, S, F>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    body: F,
) -> R
where
    S: ReturnShape<R>,
    S::Value: Serialize,
    F: Future<Output = R>,
{
    let ret = body.await;
    if let Produced::Value(value) = shape.produced(&ret) {
        let bytes = registry::put_backend(site)
            .as_ref()
            .and_then(Backend::remote_entry_hash)
            .and_then(|(key_hash, now_ms)| {
                encode(site, &key, value, key_hash(key.as_str()), now_ms)
            });
        put_to_the_end(site, key, Arc::new(value.clone()), bytes).await;
    }
    ret
}

/// The envelope of a put value, or `None` (logged) if it cannot be encoded: the key is then
/// only invalidated.
fn encode<V: Serialize>(
    site: &Site,
    key: &CacheKey,
    value: &V,
    key_hash: u64,
    now_ms: u64,
) -> Option<Vec<u8>> {
    let ttl = u64::try_from(site.ttl().as_millis()).unwrap_or(u64::MAX);
    let times = Times {
        created_at_ms: now_ms,
        fresh_until_ms: now_ms.saturating_add(ttl),
        stale_until_ms: now_ms.saturating_add(ttl),
    };
    match envelope::encode::<V, Bincode>(value, site.version(), key_hash, times) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            static GATE: LogGate = LogGate::new();
            if let Some(suppressed) = GATE.admit() {
                tracing::warn!(
                    function = site.function(),
                    key = key.as_str(),
                    %error,
                    suppressed,
                    "write-through value could not be encoded; the key is invalidated instead"
                );
            }
            None
        }
    }
}

/// Drops the key in every other backend, then stores the value in the site's, in a task of its
/// own when a Tokio runtime is there: the mutation has happened, so a caller that gives up
/// must not leave a backend holding the old value.
async fn put_to_the_end<V: Any + Clone + Send + Sync>(
    site: &'static Site,
    key: CacheKey,
    in_process: Arc<V>,
    bytes: Option<Vec<u8>>,
) {
    if !key.is_usable() {
        return;
    }
    // Its invalidations of the other backends are what a drain waits for.
    let under_way = UnderWay::begin();
    let put = async move {
        let _under_way = under_way;
        let target = registry::put_backend(site);
        let backends = registry::global().all_backends();
        let (named, others): (Vec<&Backend>, Vec<&Backend>) =
            backends.iter().partition(|backend| {
                target
                    .as_ref()
                    .is_some_and(|target| backend.name() == target.name())
            });
        // The others first: two backends may be one Redis under one prefix (two instances
        // standing for two processes), where dropping the key after the put would delete it.
        for backend in others {
            backend.invalidate(std::slice::from_ref(&key)).await;
        }
        for backend in named {
            // Typed, so that a small value or an `Arc` is stored without a holder.
            if backend.put_in_process(key.clone(), Stored::of(&in_process), site.ttl()) {
                continue;
            }
            match &bytes {
                Some(bytes) => backend.put_remote(&key, bytes, site.ttl()).await,
                None => backend.invalidate(std::slice::from_ref(&key)).await,
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let _ = runtime.spawn(put).await;
        }
        Err(_) => put.await,
    }
}
