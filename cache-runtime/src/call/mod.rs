//! The call paths: what a `#[cached]` or `#[invalidates]` call does, above the stores it uses.
//! `local.rs` is the in-process path (memory backends), `remote.rs` the Redis and tiered one,
//! `follow.rs` what a follower of an in-process flight does with its leader's outcome,
//! `refill.rs` the HTTP layer's revalidation of a held entry; here,
//! the entry points the expansions reach (through `crate::expansion`) and invalidation.
//!
//! Calls flow down: call -> registry (which backend) -> backend (which store) -> the store's
//! own modules. Nothing below imports from here.

mod body;
mod fail_safe;
mod follow;
mod kept;
mod local;
mod put;
#[cfg(feature = "axum")]
pub(crate) mod refill;
mod refresh;
mod remote;
mod report;
mod tagged;
mod tagged_remote;

use std::future::Future;

pub(crate) use body::Detached;
pub(crate) use kept::cached_kept;
pub(crate) use local::{cached, cached_sync};
pub(crate) use put::{cache_put, cache_put_default, cache_put_remote};
pub(crate) use refresh::{start as refresh, start_local as refresh_local};
#[cfg(feature = "axum")]
pub(crate) use remote::cached_remote_served;
pub(crate) use remote::{cached_remote, cached_remote_detached};
#[cfg(feature = "axum")]
pub(crate) use report::Tally;
pub(crate) use tagged::cached_tagged;
pub(crate) use tagged_remote::cached_remote_tagged;

use crate::drain::UnderWay;
use crate::key::canonical::AsHitKey;
use crate::key::CacheKey;
use crate::registry;
use crate::shape::{PortableValue, ReturnShape, Success};
use crate::site::Site;

/// The value of a hit in this process (a memory store, or a tiered backend's L1 while its bus
/// is up), reported; `None` sends the call down its full path. The async entry points
/// (`expansion.rs`) ask this first, before the full path's future is built: that future is
/// several hundred bytes (the key, the body, a follower's wait), which a hit would otherwise
/// write and move through every layer of the path.
#[inline]
pub(crate) fn hit_in_process<R, S: ReturnShape<R>>(
    site: &'static Site,
    key: &CacheKey,
) -> Option<S::Value> {
    let resolved = registry::resolve(site);
    // Not `or_else` (see `hit_in_process_by_form`).
    if let Some(value) = local::memory_hit::<R, S>(site, resolved, key) {
        return Some(value);
    }
    remote::l1_hit::<R, S>(site, resolved, key)
}

/// [`hit_in_process`] by a hit key (`key::canonical`), which the expansion builds from the
/// site's literal text and integer arguments without rendering the key's text; `None` also
/// for a key whose form did not fit, which the entry point then asks by its text; and, unless
/// `serve_due`, for an entry due for a refresh-ahead, whose refresh the entry point starts
/// (it needs the key's text).
#[inline(always)]
pub(crate) fn hit_in_process_by_form<R, S: ReturnShape<R>>(
    site: &'static Site,
    key: &(impl AsHitKey + ?Sized),
    serve_due: bool,
) -> Option<S::Value> {
    let resolved = registry::resolve(site);
    // Not `or_else`: left out of line in an async caller, its closure cost a hit 20
    // instructions.
    if let Some(value) = local::memory_hit_by_form::<R, S>(site, resolved, key, serve_due) {
        return Some(value);
    }
    remote::l1_hit_by_form::<R, S>(site, resolved, key, serve_due)
}

/// [`hit_in_process_by_form`] for a synchronous site (in process only).
#[inline(always)]
pub(crate) fn hit_in_process_sync_by_form<R, S: ReturnShape<R>>(
    site: &'static Site,
    key: &(impl AsHitKey + ?Sized),
) -> Option<S::Value> {
    local::memory_hit_by_form::<R, S>(site, registry::resolve_in_process(site), key, true)
}

/// The memory hit of a synchronous site (which [`cached_sync`] asks too), asked by the
/// synchronous entry point with the key where its caller built it.
#[inline]
pub(crate) fn hit_in_process_sync<R, S: ReturnShape<R>>(
    site: &'static Site,
    key: &CacheKey,
) -> Option<S::Value> {
    local::memory_hit::<R, S>(site, registry::resolve_in_process(site), key)
}

/// [`hit_in_process`], and whether the entry is due for a refresh-ahead (a site with
/// `refresh`).
#[inline]
pub(crate) fn hit_in_process_due<R, S: ReturnShape<R>>(
    site: &'static Site,
    key: &CacheKey,
) -> Option<(S::Value, bool)> {
    let resolved = registry::resolve(site);
    if let Some(found) = local::memory_hit_due::<R, S>(site, resolved, key) {
        return Some(found);
    }
    remote::l1_hit_due::<R, S>(site, resolved, key)
}

/// [`cached_default`] for a site with `refresh` or `timeout`, whose body may outlive the call.
pub(crate) async fn cached_default_detached<R, S, F>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    body: F,
) -> R
where
    R: Send + 'static,
    S: ReturnShape<R>,
    S::Value: PortableValue,
    F: Future<Output = R> + Send + 'static,
{
    if default_in_process(site) {
        local::cached(site, shape, key, body).await
    } else {
        Box::pin(remote::cached_remote_detached(site, shape, key, body)).await
    }
}

/// Runs an async `#[cached]` function on the configured default backend: on the in-process
/// path when the default is in this process, else on the remote one, boxed. Boxed because the
/// remote path's future is large: held inline, it made an in-process hit of a site on the
/// default cost ~140 instructions more than a `memory` site's (callgrind).
pub(crate) async fn cached_default<R, S, F>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    body: F,
) -> R
where
    S: ReturnShape<R>,
    S::Value: PortableValue,
    F: Future<Output = R>,
{
    if default_in_process(site) {
        local::cached(site, shape, key, body).await
    } else {
        Box::pin(remote::cached_remote(site, shape, key, body)).await
    }
}

/// [`cached_default`] for a site with fail-safe (`stale`): in process, the memory path that
/// keeps entries past their ttl; remote, the remote path, whose envelope does.
pub(crate) async fn cached_default_kept<R, S, F>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    body: F,
) -> R
where
    S: ReturnShape<R>,
    S::Value: PortableValue,
    F: Future<Output = R>,
{
    if default_in_process(site) {
        kept::cached_kept(site, shape, key, body).await
    } else {
        Box::pin(remote::cached_remote(site, shape, key, body)).await
    }
}

/// [`cached_default`] for a site with tags.
pub(crate) async fn cached_default_tagged<R, S, F>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    tags: &[CacheKey],
    body: F,
) -> R
where
    S: ReturnShape<R>,
    S::Value: PortableValue,
    F: Future<Output = R>,
{
    if default_in_process(site) {
        tagged::cached_tagged(site, shape, key, tags, body).await
    } else {
        Box::pin(tagged_remote::cached_remote_tagged(
            site, shape, key, tags, body,
        ))
        .await
    }
}

/// Whether the configured default backend of `site` is in this process (a site on the
/// default then takes the in-process path).
fn default_in_process(site: &'static Site) -> bool {
    let backend = registry::resolve(site).backend.as_ref();
    backend.is_some_and(|backend| !backend.is_remote())
}

/// Counts a call of `site` that runs without the cache outside the call paths (the HTTP
/// layer, whose backend is not configured), as the call paths count theirs: a bypass.
#[cfg(feature = "axum")]
pub(crate) fn bypassed(site: &'static crate::site::Site) {
    let mut report = report::Report::start(site, &registry::resolve(site).meters);
    report.answer(crate::observe::Answer::Bypass, crate::observe::Tier::None);
}

/// Counts a refresh of `site` starting in the background (a refresh-ahead, the HTTP layer's
/// stale-while-revalidate run): in its counters (`stats()`) and its exported series.
pub(crate) fn refreshed(site: &'static Site) {
    site.count(crate::observe::counters::Count::Refreshes, 1);
    registry::resolve(site).meters.refreshed();
}

/// Runs an async `#[invalidates]` function, then removes `keys` from every backend if `success`
/// says the call succeeded. The keys are built before the body runs, since it takes the
/// arguments.
pub async fn invalidating<R, C, F, const N: usize>(success: C, keys: [CacheKey; N], body: F) -> R
where
    C: Success<R>,
    F: Future<Output = R>,
{
    // From before the body: a drain that starts while it runs waits for what it invalidates.
    let under_way = UnderWay::begin();
    let ret = body.await;
    if success.succeeded(&ret) {
        invalidate_to_the_end(Vec::from(keys), Vec::new(), under_way).await;
    }
    ret
}

/// Runs an async `#[invalidates(..., tags(...))]` function, then, if it succeeded, removes
/// `keys` and invalidates `tags` in every backend.
pub async fn invalidating_tagged<R, C, F, const N: usize, const T: usize>(
    success: C,
    keys: [CacheKey; N],
    tags: [CacheKey; T],
    body: F,
) -> R
where
    C: Success<R>,
    F: Future<Output = R>,
{
    let under_way = UnderWay::begin();
    let ret = body.await;
    if success.succeeded(&ret) {
        invalidate_to_the_end(Vec::from(keys), Vec::from(tags), under_way).await;
    }
    ret
}

/// Invalidates `keys` in every backend, in a task of its own when a Tokio runtime is there: the
/// mutation has happened, so a caller that gives up (a client that disconnects, a timeout) must
/// not leave some backends holding the old values. Without a runtime, the caller's own future
/// does it. The call counts as under way (for a drain) until the task ends.
async fn invalidate_to_the_end(keys: Vec<CacheKey>, tags: Vec<CacheKey>, under_way: UnderWay) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let invalidation = runtime.spawn(async move {
                invalidate_all(&keys, &tags).await;
                drop(under_way);
            });
            // A panic in a backend's invalidation is the task's; the call itself succeeded.
            let _ = invalidation.await;
        }
        Err(_) => {
            invalidate_all(&keys, &tags).await;
            drop(under_way);
        }
    }
}

/// Runs a synchronous `#[invalidates]` function; see [`invalidating`]. Remote backends are
/// reached over a blocking connection, bounded by their timeouts.
pub fn invalidating_sync<R, C, F, const N: usize>(success: C, keys: [CacheKey; N], body: F) -> R
where
    C: Success<R>,
    F: FnOnce() -> R,
{
    let _under_way = UnderWay::begin();
    let ret = body();
    if success.succeeded(&ret) {
        let backends = registry::global().all_backends();
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

async fn invalidate_all(keys: &[CacheKey], tags: &[CacheKey]) {
    for backend in registry::global().all_backends() {
        if !keys.is_empty() {
            backend.invalidate(keys).await;
        }
        if !tags.is_empty() {
            backend.invalidate_tags(tags).await;
        }
    }
}

/// Removes `key` from every configured backend, as a successful `#[invalidates]` call does.
/// A load of that key already under way will not store its result.
pub async fn invalidate(key: &CacheKey) {
    invalidate_to_the_end(vec![key.clone()], Vec::new(), UnderWay::begin()).await;
}

/// Invalidates the tag `tag` in every configured backend, as `#[invalidates(tags(...))]`
/// does: every entry carrying it becomes a miss, at a cost that does not depend on how many
/// there are, and a load carrying it that is already under way stores nothing that is served.
/// For event handlers ("product updated"), with the tag built as keys are:
///
/// ```
/// # futures::executor::block_on(async {
/// let category = 7u64;
/// let tag = cache_runtime::KeyBuilder::new().lit("category:").arg(&category).finish();
/// cache_runtime::invalidate_tag(&tag).await;
/// # });
/// ```
pub async fn invalidate_tag(tag: &CacheKey) {
    invalidate_to_the_end(Vec::new(), vec![tag.clone()], UnderWay::begin()).await;
}
