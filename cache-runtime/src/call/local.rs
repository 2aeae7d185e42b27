//! The in-process call path (memory backends): read the store, and on a miss lead or follow
//! the key's flight; the leader runs the body and stores what the shape says is cacheable.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::follow::{downcast, follow, Next};
use super::report::{Counting, Report, Served};
use crate::backend::{Backend, MemoryBackend, Stored};
use crate::flight::{Flight, LeaderGuard, Outcome, Role};
use crate::key::canonical::AsHitKey;
use crate::key::CacheKey;
use crate::observe::{Answer, Tier};
use crate::registry;
use crate::shape::{Produced, ReturnShape};
use crate::site::{Resolved, Site};

/// What a caller does next after looking at the cache.
enum Step<'a, V> {
    Hit(V),
    Lead(LeaderGuard<'a>),
    Follow(Arc<Flight>),
}

/// Runs an async `#[cached]` function: a hit returns the cached value; a miss runs `body` once
/// per key across concurrent callers and stores what `shape` says is cacheable.
pub(crate) async fn cached<R, S, F>(site: &'static Site, shape: S, key: CacheKey, body: F) -> R
where
    S: ReturnShape<R>,
    F: Future<Output = R>,
{
    cached_served(site, shape, key, body, Counting::Here)
        .await
        .0
}

/// [`cached`], saying how the call was served, with its hit counted as `counting` says.
pub(crate) async fn cached_served<R, S, F>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    body: F,
    counting: Counting,
) -> (R, Served)
where
    S: ReturnShape<R>,
    F: Future<Output = R>,
{
    let resolved = registry::resolve(site);
    let mut report = Report::start_counting(site, &resolved.meters, counting);
    let Some((backend, memory)) = memory_of(resolved, &key) else {
        report.answer(Answer::Bypass, Tier::None);
        let ret = load(&report, shape, body).await;
        return (ret, report.served());
    };
    // `None`: run uncached. The load is awaited outside the `match` on `follow`'s answer, whose
    // `Next<R>` would otherwise be held across it and make the call's future `!Send` for a
    // non-`Send` `R` (`Result<V, Box<dyn Error>>`) that the function itself returns fine.
    let guard = loop {
        match step::<S::Value>(backend, memory, site, &key) {
            Step::Hit(value) => {
                report.answer(Answer::Hit, Tier::Memory);
                return (shape.rebuild(value), report.served());
            }
            Step::Lead(guard) => break Some(guard),
            Step::Follow(flight) => {
                let since = Instant::now();
                let outcome = flight.wait().await;
                let missed = (Answer::Miss, Tier::Memory);
                let call = (site, shape, key.as_str());
                match follow(&mut report, since, missed, call, outcome) {
                    Next::Return(ret) => return (ret, report.served()),
                    Next::RunUncached => break None,
                    Next::Retry => {}
                }
            }
        }
    };
    let Some(guard) = guard else {
        let ret = load(&report, shape, body).await;
        return (ret, report.served());
    };
    report.answer(Answer::Miss, Tier::Memory);
    let ret = load(&report, shape, body).await;
    complete(memory, site, shape, key, guard, &ret);
    (ret, report.served())
}

/// Runs a synchronous `#[cached]` function; followers block their thread while they wait.
pub(crate) fn cached_sync<R, S, F>(site: &'static Site, shape: S, key: CacheKey, body: F) -> R
where
    S: ReturnShape<R>,
    F: FnOnce() -> R,
{
    // A synchronous site that follows a remote default is given `memory`.
    let resolved = registry::resolve_in_process(site);
    if let Some(value) = memory_hit::<R, S>(site, resolved, &key) {
        return shape.rebuild(value);
    }
    let mut report = Report::start(site, &resolved.meters);
    let Some((backend, memory)) = memory_of(resolved, &key) else {
        report.answer(Answer::Bypass, Tier::None);
        return load_sync(&report, shape, body);
    };
    let guard = loop {
        match step::<S::Value>(backend, memory, site, &key) {
            Step::Hit(value) => {
                report.answer(Answer::Hit, Tier::Memory);
                return shape.rebuild(value);
            }
            Step::Lead(guard) => break guard,
            Step::Follow(flight) => {
                let since = Instant::now();
                let outcome = flight.wait_blocking();
                let missed = (Answer::Miss, Tier::Memory);
                let call = (site, shape, key.as_str());
                match follow(&mut report, since, missed, call, outcome) {
                    Next::Return(ret) => return ret,
                    Next::RunUncached => return load_sync(&report, shape, body),
                    Next::Retry => {}
                }
            }
        }
    };
    report.answer(Answer::Miss, Tier::Memory);
    let ret = load_sync(&report, shape, body);
    complete(memory, site, shape, key, guard, &ret);
    ret
}

/// Runs the body in the call's span, timed and counted however it ends.
pub(super) async fn load<R, S: ReturnShape<R>>(
    report: &Report,
    shape: S,
    body: impl Future<Output = R>,
) -> R {
    let timer = report.load();
    let ret = body.instrument(report.span().clone()).await;
    timer.end(matches!(shape.produced(&ret), Produced::Failed));
    ret
}

fn load_sync<R, S: ReturnShape<R>>(report: &Report, shape: S, body: impl FnOnce() -> R) -> R {
    let timer = report.load();
    let ret = report.span().in_scope(body);
    timer.end(matches!(shape.produced(&ret), Produced::Failed));
    ret
}

/// The value of a hit in the site's memory store, reported, or `None` for anything else (a
/// miss, no memory store, an unusable key), which the full path then handles from the start.
/// The async entry points ask it before they build the miss path's future (`call::hit_first`).
#[inline]
pub(super) fn memory_hit<R, S: ReturnShape<R>>(
    site: &'static Site,
    resolved: &'static Resolved,
    key: &CacheKey,
) -> Option<S::Value> {
    memory_hit_due::<R, S>(site, resolved, key).map(|(value, _)| value)
}

/// [`memory_hit`], and whether the entry is due for a refresh-ahead.
#[inline]
pub(super) fn memory_hit_due<R, S: ReturnShape<R>>(
    site: &'static Site,
    resolved: &'static Resolved,
    key: &CacheKey,
) -> Option<(S::Value, bool)> {
    let (_, memory) = memory_of(resolved, key)?;
    // Downcast and clone under the store's read lock: a hit moves no reference count.
    let found = memory.read_due(key, 0, |any| downcast::<S::Value>(site, key.as_str(), any))?;
    Report::hit(site, &resolved.meters, Tier::Memory);
    Some(found)
}

/// [`memory_hit`] by a hit key (`key::canonical`): the text is never rendered. `None` for one
/// whose form did not fit, which the caller then asks by its text; and, unless `serve_due`,
/// for an entry due for a refresh-ahead, which the caller asks by its text to start one.
#[inline(always)]
pub(super) fn memory_hit_by_form<R, S: ReturnShape<R>>(
    site: &'static Site,
    resolved: &'static Resolved,
    key: &(impl AsHitKey + ?Sized),
    serve_due: bool,
) -> Option<S::Value> {
    let memory = resolved.backend.as_ref()?.memory()?;
    // Downcast and clone under the store's read lock: a hit moves no reference count.
    let (found, due) = memory.read_hit_due(key, 0, |any| downcast::<S::Value>(site, key, any))?;
    if due && !serve_due {
        return None;
    }
    Report::hit(site, &resolved.meters, Tier::Memory);
    Some(found)
}

/// The site's backend and its memory store, unless the call runs uncached (no such backend, an
/// unusable key). A remote backend here is a macro bug; the call then runs uncached too.
#[inline]
pub(super) fn memory_of<'s>(
    resolved: &'s Resolved,
    key: &CacheKey,
) -> Option<(&'s Backend, &'s MemoryBackend)> {
    let backend = resolved.backend.as_ref().filter(|_| key.is_usable())?;
    Some((backend, backend.memory()?))
}

/// Reads the key; on a miss, joins or leads its flight.
fn step<'b, V: 'static + Clone>(
    backend: &'b Backend,
    memory: &MemoryBackend,
    site: &Site,
    key: &CacheKey,
) -> Step<'b, V> {
    // Downcast and clone under the store's read lock: a hit moves no reference count.
    let lookup = || memory.read(key, |any| downcast::<V>(site, key.as_str(), any));
    if let Some(value) = lookup() {
        return Step::Hit(value);
    }
    match backend.flights().join(key) {
        Role::Leader(guard) => {
            // Another leader may have filled the key between our read and our join.
            if let Some(value) = lookup() {
                guard.complete(Outcome::Abandoned, || {});
                return Step::Hit(value);
            }
            Step::Lead(guard)
        }
        Role::Follower(flight) => Step::Follow(flight),
    }
}

/// Classifies the leader's return value, and stores it unless the flight went stale.
pub(super) fn complete<R, S: ReturnShape<R>>(
    memory: &MemoryBackend,
    site: &Site,
    shape: S,
    key: CacheKey,
    guard: LeaderGuard<'_>,
    ret: &R,
) {
    match shape.produced(ret) {
        Produced::Value(value) => {
            let value = Arc::new(value.clone());
            // Typed, so that the store holds an `Arc` value itself, not a holder of it.
            let stored = Stored::of(&value);
            let ttl = site.fill_ttl();
            guard.complete(Outcome::Value(value), || {
                memory.insert_refreshing(key, stored, (ttl, site.refresh_in(ttl)), 0);
            });
        }
        Produced::Absent => guard.complete(Outcome::Absent, || {}),
        Produced::Failed => guard.complete(Outcome::Failed, || {}),
    }
}
