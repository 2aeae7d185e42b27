//! Fail-safe in process (`#[cached(stale = "10m")]` on a memory backend, or on the default
//! while it is in process): an entry is kept past its ttl for the window, with the times it is
//! fresh and kept until, and a leader that finds it stale loads with it at hand. When the load
//! fails (`Err`), panics, or runs past `hard_timeout`, the caller and the flight's followers get
//! the stale value, stored again fresh for the site's `throttle` (within the window), so that a
//! failing loader runs at most once per interval; an answer of `None` ends the entry.
//!
//! An invalidation removes the entry and detaches the flight: a stale value is served only
//! while the leader's flight is current, decided under the lock invalidation takes
//! (`LeaderGuard::complete_if_current`), so an invalidated value is never served, even when
//! the invalidation lands during the failing load.
//!
//! A path of its own, as tagged sites have: the stored value carries its times, so a fail-safe
//! site's hit reads them, and other sites keep their hit path as it was.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::fail_safe::{attempt, give_back, log_serving_stale, Attempt};
use super::follow::{follow, Next};
use super::local::{load, memory_of};
use super::report::Report;
use crate::backend::{MemoryBackend, Stored};
use crate::clock::Moment;
use crate::flight::{LeaderGuard, Outcome, Role};
use crate::key::CacheKey;
use crate::observe::{Answer, Tier};
use crate::registry;
use crate::shape::{AnyValue, Downcast, Produced, ReturnShape};
use crate::site::Site;

/// A value of a fail-safe site as a memory store holds it: fresh until `fresh_until`, kept
/// until `stale_until` (the store's own expiry) to be served should a load fail.
pub(crate) struct Kept<V> {
    fresh_until: Moment,
    stale_until: Moment,
    value: V,
}

/// What a read found under the key.
enum Found<V> {
    Fresh(V),
    /// Past its fresh time, within its window (until then).
    Stale(V, Moment),
    Missing,
}

/// Runs an async `#[cached(stale = ..)]` function on a memory backend.
pub(crate) async fn cached_kept<R, S, F>(site: &'static Site, shape: S, key: CacheKey, body: F) -> R
where
    S: ReturnShape<R>,
    F: Future<Output = R>,
{
    let resolved = registry::resolve(site);
    let mut report = Report::start(site, &resolved.meters);
    let Some((backend, memory)) = memory_of(resolved, &key) else {
        report.answer(Answer::Bypass, Tier::None);
        return load(&report, shape, body).await;
    };
    let guard = loop {
        if let Found::Fresh(value) = read::<S::Value>(memory, site, &key) {
            report.answer(Answer::Hit, Tier::Memory);
            return shape.rebuild(value);
        }
        match backend.flights().join(&key) {
            Role::Leader(guard) => break guard,
            Role::Follower(flight) => {
                let since = Instant::now();
                let outcome = flight.wait().await;
                let missed = (Answer::Miss, Tier::Memory);
                let call = (site, shape, key.as_str());
                let run_uncached = match follow(&mut report, since, missed, call, outcome) {
                    Next::Return(ret) => return ret,
                    Next::RunUncached => true,
                    Next::Retry => false,
                };
                if run_uncached {
                    return load(&report, shape, body).await;
                }
            }
        }
    };
    // Read again as the leader: an invalidation from here on detaches this flight.
    let (stale, stale_until) = match read::<S::Value>(memory, site, &key) {
        Found::Fresh(value) => {
            guard.complete(Outcome::Abandoned, || {});
            report.answer(Answer::Hit, Tier::Memory);
            return shape.rebuild(value);
        }
        Found::Stale(value, until) => (value, until),
        Found::Missing => {
            report.answer(Answer::Miss, Tier::Memory);
            let ret = load(&report, shape, body).await;
            store(memory, site, shape, key, guard, &ret);
            return ret;
        }
    };
    // The flight's guard is this frame's: a caught panic still ends it (here, or by resuming).
    // Boxed, so that it can be dropped before the call's answer is reported (it borrows the
    // reporter), and awaited after it should the failure be given back.
    let mut loading = Box::pin(AssertUnwindSafe(load(&report, shape, body)).catch_unwind());
    let (cause, first) = match attempt(site, shape, loading.as_mut()).await {
        Attempt::Succeeded(ret) => {
            drop(loading);
            report.answer(Answer::Miss, Tier::Memory);
            store(memory, site, shape, key, guard, &ret);
            return ret;
        }
        Attempt::Absent(ret) => {
            drop(loading);
            // The source says the value is gone: wrong now, not old.
            report.answer(Answer::Miss, Tier::Memory);
            guard.complete(Outcome::Absent, || memory.invalidate(key.as_str()));
            return ret;
        }
        Attempt::Failed(cause, first) => (cause, first),
    };
    if serve_stale(memory, site, &key, guard, &stale, stale_until) {
        drop(loading);
        log_serving_stale(site, &key, cause);
        report.answer(Answer::Stale, Tier::Memory);
        return shape.rebuild(stale);
    }
    // Invalidated during the load, or the window ended: the failure, as the function gave it.
    let ret = give_back(first, loading.as_mut()).await;
    drop(loading);
    report.answer(Answer::Miss, Tier::Memory);
    ret
}

/// Ends the flight with the stale value, stored again fresh for the throttle, if no
/// invalidation detached it and the window is not over; else ends it as failed. Says which.
fn serve_stale<V: 'static + Clone + Send + Sync>(
    memory: &MemoryBackend,
    site: &Site,
    key: &CacheKey,
    guard: LeaderGuard<'_>,
    stale: &V,
    stale_until: Moment,
) -> bool {
    let now = memory.clock().moment();
    if stale_until <= now {
        guard.complete(Outcome::Failed, || {});
        return false;
    }
    let throttle = site.throttle().max(Duration::from_millis(1));
    let kept = Stored::shared(Arc::new(Kept {
        fresh_until: after(now, throttle).min(stale_until),
        stale_until,
        value: stale.clone(),
    }));
    let shared: AnyValue = Arc::new(stale.clone());
    let window = Duration::from(stale_until.duration_since(now));
    guard.complete_if_current(Outcome::Stale(shared), Outcome::Failed, || {
        // The weigher is promised the cached type, not the times around it.
        memory.insert_weighing(key.clone(), kept, stale, window, 0);
    })
}

/// Classifies the leader's return value, and stores a value with its times unless the flight
/// went stale.
fn store<R, S: ReturnShape<R>>(
    memory: &MemoryBackend,
    site: &Site,
    shape: S,
    key: CacheKey,
    guard: LeaderGuard<'_>,
    ret: &R,
) {
    match shape.produced(ret) {
        Produced::Value(value) => {
            let now = memory.clock().moment();
            let fresh = site.fill_ttl();
            let kept = Stored::shared(Arc::new(Kept {
                fresh_until: after(now, fresh),
                stale_until: after(now, fresh.saturating_add(site.stale())),
                value: value.clone(),
            }));
            let shared: AnyValue = Arc::new(value.clone());
            guard.complete(Outcome::Value(shared), || {
                let kept_for = fresh.saturating_add(site.stale());
                memory.insert_weighing(key, kept, value, kept_for, 0);
            });
        }
        Produced::Absent => guard.complete(Outcome::Absent, || {}),
        Produced::Failed => guard.complete(Outcome::Failed, || {}),
    }
}

/// The value under `key` and whether it is fresh; another type under the key is a miss,
/// logged once per site. The value bare, without its times, is fresh: a `#[cache_put]` (or a
/// site without fail-safe under the same key) stores it so, until the store's own expiry,
/// which is then its end, with no window past it.
fn read<V: 'static + Clone>(memory: &MemoryBackend, site: &Site, key: &CacheKey) -> Found<V> {
    let now = memory.clock().moment();
    memory
        .read(key, |any| {
            let Some(kept) = any.downcast_ref::<Kept<V>>() else {
                if let Some(value) = any.downcast_ref::<V>() {
                    return Some(Found::Fresh(value.clone()));
                }
                site.warn_type_mismatch(key.as_str(), std::any::type_name::<V>());
                return None;
            };
            let value = kept.value.clone();
            Some(if kept.fresh_until > now {
                Found::Fresh(value)
            } else {
                Found::Stale(value, kept.stale_until)
            })
        })
        .unwrap_or(Found::Missing)
}

/// `at + duration`, saturating at a bound no entry reaches (as the memory store's own expiry).
fn after(at: Moment, duration: Duration) -> Moment {
    let duration = duration.min(Duration::from_secs(u64::from(u32::MAX) / 2));
    at + coarsetime::Duration::from(duration)
}
