//! What macro expansions name. /!\ Not a stable API: it changes with every release, and the
//! macros are pinned to the runtime of the same version. /!\
//!
//! The entry points take the return type and its shape as type arguments
//! (`cached::<Result<User, E>, OkOnly>`): the return type fixes the type of the body, so that
//! `?` in it converts to the declared error, and a shape given as a type lets the bound
//! `Part: CacheValue` fail alone, reported with `CacheValue`'s message at the return type.

use core::future::Future;

pub use crate::__cachette_function_path as function_path;
pub use crate::audit::{Kind, Registration, REGISTRATIONS};
pub use crate::call::{invalidating, invalidating_sync, invalidating_tagged};
pub use crate::key::canonical::{
    hit_int, hit_str, hit_uint, AsHitKey, HitArg, HitPieces, HitValue, OtherHitArg,
};
pub use crate::key::{HitKey, KeyBuilder};
pub use crate::shape::{Always, IfOk, OkOnly, SomeOnly, Whole};
pub use crate::site::{Freshness, Site};
pub use core::any::type_name;
pub use linkme;

use crate::backend::HashedHit;
use crate::key::CacheKey;
use crate::shape::{CacheValue, Holds, PortableValue};

/// Runs an async `#[cached]` function on the memory backend: a hit returns the cached value; a
/// miss runs `body` once per key across concurrent callers and stores what `S` says is cached.
pub async fn cached<R, S>(site: &'static Site, key: CacheKey, body: impl Future<Output = R>) -> R
where
    S: Holds<R>,
    S::Part: CacheValue,
{
    let shape = S::default();
    // A hit returns before the full path's future exists (`call::hit_in_process`).
    if let Some(value) = crate::call::hit_in_process::<R, S>(site, &key) {
        return shape.rebuild(value);
    }
    crate::call::cached(site, shape, key, body).await
}

/// The memory hit of an async `#[cached]` site on the memory backend ([`cached`] asks it too),
/// asked by the expansion with the key where it was built, before the key moves into
/// [`cached`]'s future.
#[inline(always)]
pub fn hit<R, S>(site: &'static Site, key: &CacheKey) -> Option<R>
where
    S: Holds<R>,
    S::Part: CacheValue,
{
    let value = crate::call::hit_in_process::<R, S>(site, key)?;
    Some(S::default().rebuild(value))
}

/// [`hit`] for a site whose backend may be remote ([`cached_remote`], [`cached_default`]): an
/// in-process hit (a memory store, or a tiered backend's L1).
#[inline(always)]
pub fn hit_portable<R, S>(site: &'static Site, key: &CacheKey) -> Option<R>
where
    S: Holds<R>,
    S::Part: PortableValue,
{
    let value = crate::call::hit_in_process::<R, S>(site, key)?;
    Some(S::default().rebuild(value))
}

/// [`hit`] by a hit key: the expansion of a site whose key is literal text and integer
/// parameters asks this before it renders the key's text at all (`key::canonical`); `None`
/// sends the call on to the entry point, which renders it and asks again if the form did not fit.
#[inline(always)]
pub fn hit_by_form<R, S>(site: &'static Site, key: impl AsHitKey + Copy) -> Option<R>
where
    S: Holds<R>,
    S::Part: CacheValue,
{
    let value = crate::call::hit_in_process_by_form::<R, S>(site, &HashedHit::new(key), true)?;
    Some(S::default().rebuild(value))
}

/// [`hit_by_form`] for a site whose backend may be remote (see [`hit_portable`]).
#[inline(always)]
pub fn hit_portable_by_form<R, S>(site: &'static Site, key: impl AsHitKey + Copy) -> Option<R>
where
    S: Holds<R>,
    S::Part: PortableValue,
{
    let value = crate::call::hit_in_process_by_form::<R, S>(site, &HashedHit::new(key), true)?;
    Some(S::default().rebuild(value))
}

/// [`hit_by_form`] for a site with `refresh` or `timeout`: an entry due for a refresh-ahead is
/// left to the entry point, which starts the refresh with the key's text.
#[inline(always)]
pub fn hit_fresh_by_form<R, S>(site: &'static Site, key: impl AsHitKey + Copy) -> Option<R>
where
    S: Holds<R>,
    S::Part: CacheValue,
{
    let value = crate::call::hit_in_process_by_form::<R, S>(site, &HashedHit::new(key), false)?;
    Some(S::default().rebuild(value))
}

/// [`hit_fresh_by_form`] for a site whose backend may be remote (see [`hit_portable`]).
#[inline(always)]
pub fn hit_portable_fresh_by_form<R, S>(site: &'static Site, key: impl AsHitKey + Copy) -> Option<R>
where
    S: Holds<R>,
    S::Part: PortableValue,
{
    let value = crate::call::hit_in_process_by_form::<R, S>(site, &HashedHit::new(key), false)?;
    Some(S::default().rebuild(value))
}

/// [`hit_by_form`] for a synchronous site.
#[inline(always)]
pub fn hit_sync_by_form<R, S>(site: &'static Site, key: impl AsHitKey + Copy) -> Option<R>
where
    S: Holds<R>,
    S::Part: CacheValue,
{
    let value = crate::call::hit_in_process_sync_by_form::<R, S>(site, &HashedHit::new(key))?;
    Some(S::default().rebuild(value))
}

/// Runs a synchronous `#[cached]` function; followers block their thread while they wait.
#[inline(always)]
pub fn cached_sync<R, S>(site: &'static Site, key: CacheKey, body: impl FnOnce() -> R) -> R
where
    S: Holds<R>,
    S::Part: CacheValue,
{
    let shape = S::default();
    // The hit is asked with the key where the caller built it: moved into the full path, the
    // key would be copied first, by loads wider than the stores that just wrote it, which wait
    // for those stores to reach the cache (ARCHITECTURE.md, "The memory hit at the floor").
    if let Some(value) = crate::call::hit_in_process_sync::<R, S>(site, &key) {
        return shape.rebuild(value);
    }
    crate::call::cached_sync(site, shape, key, body)
}

/// Runs an async `#[cached]` function on a remote backend (Redis, or tiered: an in-process L1 in
/// front of Redis).
pub async fn cached_remote<R, S>(
    site: &'static Site,
    key: CacheKey,
    body: impl Future<Output = R>,
) -> R
where
    S: Holds<R>,
    S::Part: PortableValue,
{
    let shape = S::default();
    // A hit returns before the full path's future exists (`call::hit_in_process`).
    if let Some(value) = crate::call::hit_in_process::<R, S>(site, &key) {
        return shape.rebuild(value);
    }
    crate::call::cached_remote(site, shape, key, body).await
}

/// Runs an async `#[cached]` function on the configured default backend (`memory` unless the
/// application chose another), which may be remote: so its value must be [`PortableValue`].
pub async fn cached_default<R, S>(
    site: &'static Site,
    key: CacheKey,
    body: impl Future<Output = R>,
) -> R
where
    S: Holds<R>,
    S::Part: PortableValue,
{
    let shape = S::default();
    // A hit returns before the full path's future exists (`call::hit_in_process`).
    if let Some(value) = crate::call::hit_in_process::<R, S>(site, &key) {
        return shape.rebuild(value);
    }
    crate::call::cached_default(site, shape, key, body).await
}

/// Runs an async `#[cached]` function with `refresh` (or `timeout`) on the memory backend: as
/// [`cached`], and a hit on an entry due for a refresh starts one, in the background, with
/// `body`; so the body owns everything it uses (the macro refuses borrowed parameters).
pub async fn cached_detached<R, S>(
    site: &'static Site,
    key: CacheKey,
    body: impl Future<Output = R> + Send + 'static,
) -> R
where
    R: Send + 'static,
    S: Holds<R>,
    S::Part: CacheValue,
{
    let shape = S::default();
    match hit_refreshing(site, shape, &key, body, crate::call::refresh_local::<R, S>) {
        Ok(ret) => ret,
        Err(body) => crate::call::cached(site, shape, key, body).await,
    }
}

/// [`cached_detached`] on a remote backend: the refresh is one per key across processes, and
/// with fail-safe, a load past the soft `timeout` goes on in the background.
pub async fn cached_remote_detached<R, S>(
    site: &'static Site,
    key: CacheKey,
    body: impl Future<Output = R> + Send + 'static,
) -> R
where
    R: Send + 'static,
    S: Holds<R>,
    S::Part: PortableValue,
{
    let shape = S::default();
    match hit_refreshing(site, shape, &key, body, crate::call::refresh::<R, S>) {
        Ok(ret) => ret,
        Err(body) => crate::call::cached_remote_detached(site, shape, key, body).await,
    }
}

/// [`cached_detached`] on the configured default backend, which may be remote.
pub async fn cached_default_detached<R, S>(
    site: &'static Site,
    key: CacheKey,
    body: impl Future<Output = R> + Send + 'static,
) -> R
where
    R: Send + 'static,
    S: Holds<R>,
    S::Part: PortableValue,
{
    let shape = S::default();
    match hit_refreshing(site, shape, &key, body, crate::call::refresh::<R, S>) {
        Ok(ret) => ret,
        Err(body) => crate::call::cached_default_detached(site, shape, key, body).await,
    }
}

/// A hit in this process, having started a refresh-ahead with `body` (by `refresh`) if the
/// entry is due; the body back on a miss.
fn hit_refreshing<R, S, F>(
    site: &'static Site,
    shape: S,
    key: &CacheKey,
    body: F,
    refresh: fn(&'static Site, S, &CacheKey, crate::call::Detached<R>),
) -> Result<R, F>
where
    R: Send + 'static,
    S: Holds<R>,
    S::Part: CacheValue,
    F: Future<Output = R> + Send + 'static,
{
    match crate::call::hit_in_process_due::<R, S>(site, key) {
        Some((value, due)) => {
            if due {
                refresh(site, shape, key, Box::pin(body));
            }
            Ok(shape.rebuild(value))
        }
        None => Err(body),
    }
}

/// Runs an async `#[cached(stale = ..)]` function on the memory backend: entries are kept
/// past their ttl, and served should the load that replaces one fail (fail-safe in process).
pub async fn cached_kept<R, S>(
    site: &'static Site,
    key: CacheKey,
    body: impl Future<Output = R>,
) -> R
where
    S: Holds<R>,
    S::Part: CacheValue,
{
    crate::call::cached_kept(site, S::default(), key, body).await
}

/// [`cached_kept`] on the configured default backend, which may be remote.
pub async fn cached_default_kept<R, S>(
    site: &'static Site,
    key: CacheKey,
    body: impl Future<Output = R>,
) -> R
where
    S: Holds<R>,
    S::Part: PortableValue,
{
    crate::call::cached_default_kept(site, S::default(), key, body).await
}

/// Runs an async `#[cached(tags(...))]` function on the memory backend: as [`cached`], and the
/// entry is served only while none of `tags` was invalidated since its load began.
pub async fn cached_tagged<R, S>(
    site: &'static Site,
    key: CacheKey,
    tags: impl AsRef<[CacheKey]>,
    body: impl Future<Output = R>,
) -> R
where
    S: Holds<R>,
    S::Part: CacheValue,
{
    crate::call::cached_tagged(site, S::default(), key, tags.as_ref(), body).await
}

/// Runs an async `#[cached(tags(...))]` function on a remote backend.
pub async fn cached_remote_tagged<R, S>(
    site: &'static Site,
    key: CacheKey,
    tags: impl AsRef<[CacheKey]>,
    body: impl Future<Output = R>,
) -> R
where
    S: Holds<R>,
    S::Part: PortableValue,
{
    crate::call::cached_remote_tagged(site, S::default(), key, tags.as_ref(), body).await
}

/// Runs an async `#[cached(tags(...))]` function on the configured default backend.
pub async fn cached_default_tagged<R, S>(
    site: &'static Site,
    key: CacheKey,
    tags: impl AsRef<[CacheKey]>,
    body: impl Future<Output = R>,
) -> R
where
    S: Holds<R>,
    S::Part: PortableValue,
{
    crate::call::cached_default_tagged(site, S::default(), key, tags.as_ref(), body).await
}

/// Runs a `#[cache_put]` function whose backend is in process: its value is stored under `key`.
pub async fn cache_put<R, S>(site: &'static Site, key: CacheKey, body: impl Future<Output = R>) -> R
where
    S: Holds<R>,
    S::Part: CacheValue,
{
    crate::call::cache_put(site, S::default(), key, body).await
}

/// Runs a `#[cache_put]` function whose backend is remote: its value is stored under `key` in
/// Redis, fenced, and announced to peers.
pub async fn cache_put_remote<R, S>(
    site: &'static Site,
    key: CacheKey,
    body: impl Future<Output = R>,
) -> R
where
    S: Holds<R>,
    S::Part: PortableValue,
{
    crate::call::cache_put_remote(site, S::default(), key, body).await
}

/// Runs a `#[cache_put]` function on the configured default backend, in process or remote.
pub async fn cache_put_default<R, S>(
    site: &'static Site,
    key: CacheKey,
    body: impl Future<Output = R>,
) -> R
where
    S: Holds<R>,
    S::Part: PortableValue,
{
    crate::call::cache_put_default(site, S::default(), key, body).await
}

/// `module::name` of the function an attribute is on, at compile time: `module_path!()` in a
/// `macro_rules!` body names the module it is expanded in, the caller's, which keeps the
/// expansion to one short line.
#[doc(hidden)]
#[macro_export]
macro_rules! __cachette_function_path {
    ($name:literal) => {
        ::core::concat!(::core::module_path!(), "::", $name)
    };
}
