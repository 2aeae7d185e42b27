//! Fail-safe on the Redis and tiered path (`#[cached(stale = "10m")]`): a leader whose claim
//! found the entry past its ttl but within its window keeps that value, and when the load fails
//! (`Err`), panics, or (with `hard_timeout`) runs too long, serves it instead of the failure.
//!
//! Serving it is a fenced write-back: the stale value is stored again, fresh for the site's
//! `throttle`, under the fence the claim read, so that
//! - an invalidation since the claim (the fence moved) refuses it, and the caller gets the
//!   failure: an invalidated value is wrong, not old, and is never served;
//! - every process then hits it for the throttle interval, so a failing loader is called at
//!   most once per interval across all of them (the lock already makes it one at a time);
//! - it replaces only the bytes the claim read: a newer value filled meanwhile under the same
//!   fence (by a process that gave up waiting for the lock) is kept, and served instead.
//!
//! A load that answers "nothing" (`None`) ends the stale entry the same way: the source says
//! the value is gone, so it is wrong now, not old.
//!
//! With a soft `timeout`, a caller with a stale value at hand waits that long for the load; then
//! it gets the stale value while the load goes on in a task of its own, with the lock and the
//! flight, and stores its result as it would have (or, should it fail, writes the stale value
//! back as above). Its followers, and callers in other processes waiting for its lock, read the
//! stale value themselves after the same time (`remote.rs`).

use std::future::Future;
use std::panic::{resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::time::Duration;

use futures_util::FutureExt;

use super::body::Detached;
use super::local::load;
use super::remote::{fill_with, read, settle, share, L1Slot, LoadPermit, Lookup, Stale};
use super::report::Report;
use crate::backend::RedisBackend;
use crate::envelope::Times;
use crate::flight::{LeaderGuard, Outcome};
use crate::key::CacheKey;
use crate::log_gate::LogGate;
use crate::observe::{Answer, Tier};
use crate::registry;
use crate::shape::{PortableValue, Produced, ReturnShape};
use crate::site::Site;

/// How a fail-safe load ended.
pub(super) enum Ending<R, V> {
    /// The load's own return (a value, or nothing to cache, or a failure that could not be
    /// covered), with the permit if it was not used.
    Returned(R, Option<LoadPermit>),
    /// The stale value, written back fresh for this long.
    Stale(V, Duration),
    /// Not the stale value: another process's fill replaced it during the load; fresh for this
    /// long.
    Filled(V, Duration),
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
    let (cause, first) = match attempt(site, shape, loading.as_mut()).await {
        Attempt::Succeeded(ret) => return Ending::Returned(ret, Some(permit)),
        Attempt::Absent(ret) => {
            end_stale(site, redis, key, &stale, permit).await;
            return Ending::Returned(ret, None);
        }
        Attempt::Failed(cause, first) => (cause, first),
    };
    let written = write_back(site, redis, key, &stale, permit).await;
    if let WriteBack::Stored(fresh) = written {
        log_serving_stale(site, key, cause);
        return Ending::Stale(stale.value, fresh);
    }
    if let WriteBack::Refused = written {
        // Refused by a newer fill (or a refill after an invalidation): that value, read after
        // the refusal, is current.
        if let Lookup::Hit(value, fresh) = read::<S::Value>(site, redis, key).await {
            return Ending::Filled(value, fresh);
        }
    }
    // Invalidated since the claim: the failure, as the function gave it.
    Ending::Returned(give_back(first, loading).await, None)
}

/// What a fail-safe load's first run came to, within the site's `hard_timeout`.
pub(super) enum Attempt<R> {
    /// A value to cache.
    Succeeded(R),
    /// Nothing (`None`): the source says the value is gone, which ends the stale entry.
    Absent(R),
    /// A failure fail-safe covers, with why, and what to give back should the stale value not
    /// be served: the return or the panic, or `None` for a load past its hard timeout, still
    /// under way.
    Failed(&'static str, Option<std::thread::Result<R>>),
}

/// Runs `loading` (a load under `catch_unwind`) until it ends or the site's hard timeout.
pub(super) async fn attempt<R, S, L>(site: &Site, shape: S, loading: Pin<&mut L>) -> Attempt<R>
where
    S: ReturnShape<R>,
    L: Future<Output = std::thread::Result<R>>,
{
    let mut loading = loading;
    let first = match site.hard_timeout() {
        Some(limit) => tokio::select! {
            biased;
            done = loading.as_mut() => Some(done),
            () = tokio::time::sleep(limit) => None,
        },
        None => Some(loading.as_mut().await),
    };
    match first {
        Some(Ok(ret)) => match shape.produced(&ret) {
            Produced::Value(_) => Attempt::Succeeded(ret),
            Produced::Absent => Attempt::Absent(ret),
            Produced::Failed => Attempt::Failed("the loader failed", Some(Ok(ret))),
        },
        Some(Err(panic)) => Attempt::Failed("the loader panicked", Some(Err(panic))),
        None => Attempt::Failed("the loader ran past its hard_timeout", None),
    }
}

/// The failure as the function gave it, once no stale value is served: its return, its panic
/// resumed, or, past the hard timeout, what the load still under way comes to.
pub(super) async fn give_back<R, L>(
    first: Option<std::thread::Result<R>>,
    loading: Pin<&mut L>,
) -> R
where
    L: Future<Output = std::thread::Result<R>>,
{
    let outcome = match first {
        Some(outcome) => outcome,
        None => loading.await,
    };
    outcome.unwrap_or_else(|panic| resume_unwind(panic))
}

/// Logs (rate-limited) that a caller gets the stale value, and why.
pub(super) fn log_serving_stale(site: &Site, key: &CacheKey, cause: &str) {
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
}

/// How a load under a soft timeout ended, in time for its caller.
enum Finished<R, V> {
    Stale(V),
    Filled(V),
    Returned(R),
}

/// A leader's call, as a load that may outlive it takes it over.
pub(super) type Leader = (
    &'static Site,
    &'static RedisBackend,
    CacheKey,
    Option<L1Slot<'static>>,
    LeaderGuard<'static>,
);

/// Runs the load with `stale` at hand in the call; the caller's answer is reported here.
pub(super) async fn serve_stale<R, S, F>(
    leader: Leader,
    report: &mut Report,
    shape: S,
    body: F,
    stale: Stale<S::Value>,
    permit: LoadPermit,
) -> R
where
    S: ReturnShape<R>,
    S::Value: PortableValue,
    F: Future<Output = R>,
{
    let finished = load_and_settle(leader, report, shape, body, stale, permit).await;
    answer(report, shape, finished)
}

/// Runs the load with `stale` at hand for at most `soft`; see the module's description. The
/// caller's answer is reported here.
pub(super) async fn within_soft_timeout<R, S>(
    leader: Leader,
    report: &mut Report,
    shape: S,
    body: Detached<R>,
    stale: Stale<S::Value>,
    permit: LoadPermit,
    soft: Duration,
) -> R
where
    R: Send + 'static,
    S: ReturnShape<R>,
    S::Value: PortableValue,
{
    let at_hand = stale.value.clone();
    let site = leader.0;
    let mut loading = Box::pin(async move {
        // The load's own reporter: it is timed and counted wherever it ends.
        let report = Report::start(site, &registry::resolve(site).meters);
        load_and_settle(leader, &report, shape, body, stale, permit).await
    });
    match tokio::time::timeout(soft, loading.as_mut()).await {
        Ok(finished) => answer(report, shape, finished),
        Err(_) => {
            // A panic in the load from here on is the task's; its guards release the lock and
            // the flight as they would in the call.
            drop(tokio::spawn(loading));
            report.answer(Answer::Stale, Tier::L2);
            shape.rebuild(at_hand)
        }
    }
}

/// Runs the load with `stale` at hand, and ends the leader's flight and lock with what came of
/// it.
async fn load_and_settle<R, S, F>(
    (site, redis, key, l1, guard): Leader,
    report: &Report,
    shape: S,
    body: F,
    stale: Stale<S::Value>,
    permit: LoadPermit,
) -> Finished<R, S::Value>
where
    S: ReturnShape<R>,
    S::Value: PortableValue,
    F: Future<Output = R>,
{
    match load_or_stale(site, redis, &key, report, shape, body, stale, permit).await {
        Ending::Stale(value, fresh) => {
            share(guard, &key, &value, l1.as_ref(), fresh, Outcome::Stale);
            Finished::Stale(value)
        }
        Ending::Filled(value, fresh) => {
            share(guard, &key, &value, l1.as_ref(), fresh, Outcome::Value);
            Finished::Filled(value)
        }
        Ending::Returned(ret, permit) => {
            settle(
                site,
                (redis, &key),
                l1.as_ref(),
                guard,
                shape.produced(&ret),
                permit,
            )
            .await;
            Finished::Returned(ret)
        }
    }
}

/// Reports the caller's answer: the stale value, or a miss (its own load's, or another
/// process's fill).
fn answer<R, S: ReturnShape<R>>(
    report: &mut Report,
    shape: S,
    finished: Finished<R, S::Value>,
) -> R {
    match finished {
        Finished::Stale(value) => {
            report.answer(Answer::Stale, Tier::L2);
            shape.rebuild(value)
        }
        Finished::Filled(value) => {
            report.answer(Answer::Miss, Tier::L2);
            shape.rebuild(value)
        }
        Finished::Returned(ret) => {
            report.answer(Answer::Miss, Tier::L2);
            ret
        }
    }
}

/// What became of a write-back.
enum WriteBack {
    /// Stored, fresh for this long.
    Stored(Duration),
    /// Refused: an invalidation since the claim moved the fence, or the entry no longer holds
    /// the stale value (a newer fill), or the window is over.
    Refused,
    /// Redis did not answer: nothing then says that no invalidation landed.
    Unanswered,
}

/// Stores `stale` again under the claim's fence and over the bytes it read, fresh for the
/// throttle interval (within its window).
async fn write_back<V: PortableValue>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    stale: &Stale<V>,
    permit: LoadPermit,
) -> WriteBack {
    let now = redis.now_ms();
    let until = stale.times.stale_until_ms;
    if until <= now {
        return WriteBack::Refused;
    }
    let throttle = u64::try_from(site.throttle().as_millis()).unwrap_or(u64::MAX);
    let fresh_until_ms = now.saturating_add(throttle.max(1)).min(until);
    let times = Times {
        created_at_ms: stale.times.created_at_ms,
        fresh_until_ms,
        stale_until_ms: until,
    };
    let over = Some(stale.bytes.as_slice());
    match fill_with(
        site,
        redis,
        key,
        &stale.value,
        permit,
        (times, now),
        (over, None),
    )
    .await
    {
        Some(true) => WriteBack::Stored(Duration::from_millis(fresh_until_ms - now)),
        Some(false) => WriteBack::Refused,
        None => WriteBack::Unanswered,
    }
}

/// Ends the stale entry after a load that answered "nothing": written back already past its
/// end (every reader's clock within the ttl of this one sees it so), under the fence and over
/// the bytes the claim read. Releases the lock; a Redis that does not answer leaves the entry,
/// as it leaves any.
async fn end_stale<V: PortableValue>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    stale: &Stale<V>,
    permit: LoadPermit,
) {
    let ended = stale.times.created_at_ms;
    let times = Times {
        created_at_ms: ended,
        fresh_until_ms: ended,
        stale_until_ms: ended,
    };
    let over = Some(stale.bytes.as_slice());
    let now = redis.now_ms();
    let _ = fill_with(
        site,
        redis,
        key,
        &stale.value,
        permit,
        (times, now),
        (over, None),
    )
    .await;
}
