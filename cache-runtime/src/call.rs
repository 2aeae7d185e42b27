//! The entry points that `#[cached]` and `#[invalidates]` expansions call.

use std::future::Future;

use crate::backend::{follow, Next, Step};
use crate::key::CacheKey;
use crate::registry;
use crate::shape::{ReturnShape, Success};
use crate::site::Site;

/// Runs an async `#[cached]` function: a hit returns the cached value; a miss runs `body` once
/// per key across concurrent callers and stores what `shape` says is cacheable.
pub async fn cached<R, S, F>(site: &'static Site, shape: S, key: CacheKey, body: F) -> R
where
    S: ReturnShape<R>,
    F: Future<Output = R>,
{
    let Some(backend) = site.backend().filter(|_| key.is_usable()) else {
        return body.await;
    };
    let guard = loop {
        match backend.step::<S::Value>(site, &key) {
            Step::Hit(value) => return shape.rebuild(value),
            Step::Lead(guard) => break guard,
            Step::Follow(flight) => match follow(site, shape, key.as_str(), flight.wait().await) {
                Next::Return(ret) => return ret,
                Next::RunUncached => return body.await,
                Next::Retry => {}
            },
        }
    };
    let ret = body.await;
    backend.complete(site, shape, key, guard, &ret);
    ret
}

/// Runs a synchronous `#[cached]` function; followers block their thread while they wait.
pub fn cached_sync<R, S, F>(site: &'static Site, shape: S, key: CacheKey, body: F) -> R
where
    S: ReturnShape<R>,
    F: FnOnce() -> R,
{
    let Some(backend) = site.backend().filter(|_| key.is_usable()) else {
        return body();
    };
    let guard = loop {
        match backend.step::<S::Value>(site, &key) {
            Step::Hit(value) => return shape.rebuild(value),
            Step::Lead(guard) => break guard,
            Step::Follow(flight) => {
                match follow(site, shape, key.as_str(), flight.wait_blocking()) {
                    Next::Return(ret) => return ret,
                    Next::RunUncached => return body(),
                    Next::Retry => {}
                }
            }
        }
    };
    let ret = body();
    backend.complete(site, shape, key, guard, &ret);
    ret
}

/// Runs an async `#[invalidates]` function, then removes `keys` from every backend if `success`
/// says the call succeeded. The keys are built before the body runs, since it takes the
/// arguments.
pub async fn invalidating<R, C, F, const N: usize>(success: C, keys: [CacheKey; N], body: F) -> R
where
    C: Success<R>,
    F: Future<Output = R>,
{
    let ret = body.await;
    if success.succeeded(&ret) {
        invalidate_all(&keys).await;
    }
    ret
}

/// Runs a synchronous `#[invalidates]` function; see [`invalidating`]. Remote backends are
/// reached over a blocking connection, bounded by their timeouts.
pub fn invalidating_sync<R, C, F, const N: usize>(success: C, keys: [CacheKey; N], body: F) -> R
where
    C: Success<R>,
    F: FnOnce() -> R,
{
    let ret = body();
    if success.succeeded(&ret) {
        let backends = registry::global().backends();
        // Each remote backend on a thread of its own, so that a call costs one operation
        // timeout however many backends a frozen Redis holds up.
        std::thread::scope(|scope| {
            for backend in backends.iter().filter(|backend| backend.is_remote()) {
                scope.spawn(|| backend.invalidate_blocking(&keys));
            }
            for backend in backends.iter().filter(|backend| !backend.is_remote()) {
                backend.invalidate_blocking(&keys);
            }
        });
    }
    ret
}

async fn invalidate_all(keys: &[CacheKey]) {
    for backend in registry::global().backends() {
        backend.invalidate(keys).await;
    }
}

/// Removes `key` from every configured backend, as a successful `#[invalidates]` call does.
/// A load of that key already under way will not store its result.
pub async fn invalidate(key: &CacheKey) {
    invalidate_all(std::slice::from_ref(key)).await;
}
