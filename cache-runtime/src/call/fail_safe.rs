//! Fail-safe on the Redis and tiered path (`#[cached(stale = "10m")]`): a leader whose claim
//! found the entry past its ttl but within its window keeps that value, and when the load fails
//! (`Err`), panics, or (with `hard_timeout`) runs too long, serves it instead of the failure.
//!
//! Serving it is a fenced write-back: the stale value is stored again, fresh for the site's
//! `throttle`, under the fence the claim read, so that
//! - an invalidation since the claim (the fence moved) refuses it, and the caller gets the
//!   failure: an invalidated value is wrong, not old, and is never served;
//! - every process then hits it for the throttle interval, so a failing loader is called at
//!   most once per interval across all of them (the lock already makes it one at a time).

use std::future::Future;
use std::panic::{resume_unwind, AssertUnwindSafe};
use std::time::Duration;

use futures_util::FutureExt;

use super::local::load;
use super::remote::{fill_with, LoadPermit, Stale};
use super::report::Report;
use crate::backend::RedisBackend;
use crate::envelope::Times;
use crate::key::CacheKey;
use crate::log_gate::LogGate;
use crate::shape::{PortableValue, Produced, ReturnShape};
use crate::site::Site;

/// How a fail-safe load ended.
pub(super) enum Ending<R, V> {
    /// The load's own return (a value, or nothing to cache, or a failure that could not be
    /// covered), with the permit if it was not used.
    Returned(R, Option<LoadPermit>),
    /// The stale value, written back fresh for this long.
    Stale(V, Duration),
}

/// Runs the load with `stale` at hand; see the module's description.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
pub(super) async fn load_or_stale<R, S, F>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    report: &Report,
    shape: S,
    body: F,
    stale: Stale<S::Value>,
    permit: LoadPermit,
) -> Ending<R, S::Value>
where
    S: ReturnShape<R>,
    S::Value: PortableValue,
    F: Future<Output = R>,
{
    // The flight's guard and the lock's are the caller's and this frame's: a caught panic
    // still releases both (here, or by resuming it).
    let loading = AssertUnwindSafe(load(report, shape, body)).catch_unwind();
    let mut loading = std::pin::pin!(loading);
    let first = match site.hard_timeout() {
        Some(limit) => tokio::select! {
            biased;
            done = loading.as_mut() => Some(done),
            () = tokio::time::sleep(limit) => None,
        },
        None => Some(loading.as_mut().await),
    };
    let (cause, first) = match first {
        Some(Ok(ret)) if matches!(shape.produced(&ret), Produced::Failed) => {
            ("the loader failed", Some(Ok(ret)))
        }
        Some(Ok(ret)) => return Ending::Returned(ret, Some(permit)),
        Some(Err(panic)) => ("the loader panicked", Some(Err(panic))),
        None => ("the loader ran past its hard_timeout", None),
    };
    if let Some(fresh) = write_back(site, redis, key, &stale, permit).await {
        static GATE: LogGate = LogGate::new();
        if let Some(suppressed) = GATE.admit() {
            tracing::warn!(
                function = site.function(),
                key = key.as_str(),
                cause,
                suppressed,
                "serving the stale value (fail-safe); the loader is retried after the throttle"
            );
        }
        return Ending::Stale(stale.value, fresh);
    }
    // Invalidated since the claim: the failure, as the function gave it.
    let ret = match first {
        Some(Ok(ret)) => ret,
        Some(Err(panic)) => resume_unwind(panic),
        None => match loading.await {
            Ok(ret) => ret,
            Err(panic) => resume_unwind(panic),
        },
    };
    Ending::Returned(ret, None)
}

/// Stores `stale` again under the claim's fence, fresh for the throttle interval (within its
/// window); `None` if the fence refused it (an invalidation since the claim) or its window is
/// over, or if it did not reach Redis (nothing then says that no invalidation landed).
async fn write_back<V: PortableValue>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    stale: &Stale<V>,
    permit: LoadPermit,
) -> Option<Duration> {
    let now = redis.now_ms();
    let until = stale.times.stale_until_ms;
    if until <= now {
        return None;
    }
    let throttle = u64::try_from(site.throttle().as_millis()).unwrap_or(u64::MAX);
    let fresh_until_ms = now.saturating_add(throttle.max(1)).min(until);
    let times = Times {
        created_at_ms: stale.times.created_at_ms,
        fresh_until_ms,
        stale_until_ms: until,
    };
    let stored = fill_with(site, redis, key, &stale.value, permit, times, now).await;
    (stored == Some(true)).then(|| Duration::from_millis(fresh_until_ms - now))
}
