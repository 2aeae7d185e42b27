//! Stale responses (RFC 5861). A response is kept past its TTL for the longer of the policy's
//! stale windows (the response site's TTL is [`CachePolicy::retention`]); a hit on it past the
//! TTL is stale, and then:
//! - within `stale-while-revalidate`, it is answered at once, and one background run of the
//!   handler per key (the key's flight, and on Redis its lock) stores the fresh response;
//! - past that, within `stale-if-error`, it is revalidated before answering; should the
//!   handler answer a 5xx, panic or its service fail, the stale response is answered instead.
//!
//! Either way a handler that failed is left alone for the throttle interval (`throttle.rs`).
//! Only reachable entries can be served stale, and invalidation makes them unreachable (a new
//! route generation) or deletes them (a client's `no-cache`), so an invalidated response is
//! never served stale.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::FutureExt;
use http::header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE};
use http::{Method, Request, Response};
use tower_service::Service;

use crate::backend::Backend;
use crate::call::refill::{self, Joined, Kept, Refilled, Refiller};
use crate::call::Tally;
use crate::clock::Clock;
use crate::http::answer::{age, reply, set_cache_status, Answered, Asked, Failure, StoreFailure};
use crate::http::policy::CachePolicy;
use crate::http::shared::Shared;
use crate::http::stored::{store, Refusal, StoredResponse};
use crate::http::throttle::Attempt;
use crate::key::CacheKey;
use crate::log_gate::LogGate;
use crate::observe::{Answer, Scope};
use crate::shape::OkOnly;

/// What a hit may do with its entry, by the entry's age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    Fresh,
    /// Answer it, and revalidate it in the background.
    WhileRevalidate,
    /// Revalidate it first; answer it only if that fails.
    IfError,
}

impl Freshness {
    pub(crate) fn of(policy: &CachePolicy, age: Duration) -> Freshness {
        let (swr, sie) = (policy.stale_while_revalidate, policy.stale_if_error);
        // Without stale windows an entry ends at its TTL; one read a few milliseconds past it
        // (stored after its `stored_at` was taken) is still the hit it was.
        if age <= policy.ttl || (swr.is_none() && sie.is_none()) {
            return Freshness::Fresh;
        }
        let revalidating = swr.is_some_and(|window| age <= policy.ttl.saturating_add(window));
        if revalidating || sie.is_none() {
            Freshness::WhileRevalidate
        } else {
            Freshness::IfError
        }
    }
}

/// What one layer's stale handling works with: its shared state and its backend.
pub(crate) struct Revalidation {
    pub(crate) shared: Arc<Shared>,
    pub(crate) backend: &'static Backend,
    pub(crate) key: CacheKey,
    pub(crate) clock: Clock,
}

/// Starts the entry's background revalidation, unless one is under way (here or, on Redis, in
/// another process) or its handler failed within the throttle interval. It answers no request,
/// so it counts as a refresh (and its run as a load), never as an answer.
pub(crate) fn revalidate_in_background<S>(
    revalidation: Revalidation,
    inner: S,
    request: Request<Body>,
) where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
{
    let Revalidation {
        shared,
        backend,
        key,
        clock,
    } = &revalidation;
    if shared.throttle.active(key, clock.unix_ms()) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if let Joined::Lead(refiller) = refill::join(shared.responses, backend, key) {
        // Detached: the refiller's guard frees the key however the task ends.
        drop(runtime.spawn(async move {
            revalidate(revalidation, inner, request, refiller, Run::Background).await
        }));
    }
}

/// Revalidates the stale entry `stale` before answering, and answers it should the handler
/// fail. One run per key: a request that finds another's revalidation under way waits for it.
/// `tally` counts the answer as its `Cache-Status` says: `stale` when the stale entry is sent,
/// else a `miss` (the request was forwarded), and `coalesced` when it is `collapsed`.
pub(crate) async fn revalidate_now<S>(
    revalidation: Revalidation,
    inner: S,
    request: Request<Body>,
    (stale, asked): (&StoredResponse, &Asked),
    mut tally: Tally,
) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
{
    let shared = Arc::clone(&revalidation.shared);
    let clock = revalidation.clock.clone();
    let policy = &shared.policy;
    let answer =
        |stored: &StoredResponse, answered| reply(policy, asked, stored, answered, clock.unix_ms());
    let stale_because = |tally: Tally, failure| {
        tally.settle(Answer::Stale);
        answer(stale, Answered::StaleIfError(failure))
    };
    let fresh_because = |tally: Tally, fresh, answered| {
        tally.settle(Answer::Miss);
        answer(fresh, answered)
    };
    if shared.throttle.active(&revalidation.key, clock.unix_ms()) {
        return stale_because(tally, Failure::Throttled);
    }
    // Forwarded from here on: a request that ends before its answer is the miss it was.
    tally.expect(Answer::Miss);
    let since = Instant::now();
    let joined = refill::join(shared.responses, revalidation.backend, &revalidation.key);
    let refiller = match joined {
        Joined::Lead(refiller) => refiller,
        Joined::Busy(flight) => {
            let fresh = refill::shared::<StoredResponse>(&flight).await;
            tally.coalesced(Scope::Process, since);
            return match fresh {
                Some(fresh) => fresh_because(tally, &fresh, Answered::Revalidated(None)),
                None => stale_because(tally, Failure::Collapsed),
            };
        }
    };
    // A refill that finds a fresh entry took another's: on Redis, another process's fill.
    let found_scope = match revalidation.backend.remote() {
        Some(_) => Scope::Cluster,
        None => Scope::Process,
    };
    // In a task of its own, so that this client going away does not cancel the run the
    // requests waiting for it depend on.
    let task = revalidate(revalidation, inner, request, refiller, Run::Answering);
    let revalidated = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime.spawn(task).await.ok(),
        Err(_) => Some(task.await),
    };
    match revalidated {
        Some(Revalidated::Stored(fresh, None)) => {
            let status = fresh.status;
            fresh_because(tally, &fresh, Answered::Revalidated(Some(status)))
        }
        // Redis failed: the fresh response is sent, said and counted as not stored.
        Some(Revalidated::Stored(fresh, Some(failure))) => {
            tally.settle(failure.answer());
            answer(&fresh, Answered::RevalidatedUnstored(fresh.status, failure))
        }
        Some(Revalidated::Found(fresh)) => {
            tally.coalesced(found_scope, since);
            fresh_because(tally, &fresh, Answered::Revalidated(None))
        }
        Some(Revalidated::Failed(status)) => stale_because(tally, Failure::Forwarded(status)),
        Some(Revalidated::Passed(mut response, refusal)) => {
            tally.settle(Answer::Miss);
            let status = response.status().as_u16();
            set_cache_status(
                &mut response,
                &format!("cachette; fwd=stale; fwd-status={status}; detail={refusal}"),
            );
            response
        }
        // The task panicked outside the handler (in the store), or the runtime is going away.
        None => stale_because(tally, Failure::Forwarded(None)),
    }
}

/// How a revalidation ended.
/// Whether a revalidation answers a request or runs in the background (a refresh).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    Answering,
    Background,
}

enum Revalidated {
    /// The handler's fresh response, stored unless Redis failed (how, if it did).
    Stored(StoredResponse, Option<StoreFailure>),
    /// Another request's or process's revalidation, which landed first: its fresh response.
    Found(StoredResponse),
    /// The handler failed: its 5xx status, or `None` if it panicked or its service failed.
    Failed(Option<u16>),
    /// The handler answered what must not be stored; the stale entry is gone too.
    Passed(Response<Body>, Refusal),
}

/// Why a revalidation stored nothing.
enum Unstored {
    Failed(Option<u16>),
    Passed(Response<Body>, Refusal),
}

/// Runs the handler for a stale entry and stores what it answers over the entry.
async fn revalidate<S>(
    revalidation: Revalidation,
    mut inner: S,
    mut request: Request<Body>,
    refiller: Refiller,
    run: Run,
) -> Revalidated
where
    S: Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send,
{
    let Revalidation {
        shared,
        backend,
        key,
        clock,
    } = revalidation;
    let policy = &shared.policy;
    // The entry is GET's (a HEAD reads it too), and the client's preconditions are not the
    // cache's: a handler's own 304 could not be stored.
    *request.method_mut() = Method::GET;
    for precondition in [
        IF_MATCH,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
    ] {
        request.headers_mut().remove(precondition);
    }
    let fresh = |stored: &StoredResponse| age(stored, clock.unix_ms()) <= policy.ttl;
    let body = async {
        // A background run is a refresh, counted as its handler starts (before anything it
        // stores can be read): a lead that finds another's fill already stored (its request
        // read the stale entry just before) runs no handler and revalidates nothing.
        if run == Run::Background {
            crate::call::refreshed(shared.responses);
        }
        // Throttles the entry unless the handler answers: a panic, a failure status or a
        // dropped run all count, before the key's flight is freed for the next request.
        let attempt = Attempt::start(&shared.throttle, &key, &clock, policy.error_throttle);
        let answered = AssertUnwindSafe(async {
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            inner.call(request).await
        })
        .catch_unwind()
        .await;
        let response = match answered {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => return Err(Unstored::Failed(None)),
            Err(_) => {
                static GATE: LogGate = LogGate::new();
                if let Some(suppressed) = GATE.admit() {
                    tracing::warn!(
                        key = key.as_str(),
                        suppressed,
                        "a handler panicked revalidating a stale response; it stays stale"
                    );
                }
                return Err(Unstored::Failed(None));
            }
        };
        if response.status().is_server_error() {
            return Err(Unstored::Failed(Some(response.status().as_u16())));
        }
        attempt.succeeded();
        store(response, policy, clock.unix_ms())
            .await
            .map_err(|(response, refusal)| Unstored::Passed(response, refusal))
    };
    match refiller.run(OkOnly, fresh, body).await {
        Refilled::Ran(Ok(stored), kept) => {
            let failure = match kept {
                Kept::Yes => None,
                Kept::Unavailable => Some(StoreFailure::Unavailable),
                Kept::FillFailed => Some(StoreFailure::FillFailed),
            };
            Revalidated::Stored(stored, failure)
        }
        Refilled::Ran(Err(Unstored::Failed(status)), _) => Revalidated::Failed(status),
        Refilled::Ran(Err(Unstored::Passed(response, refusal)), _) => {
            // What the handler answers now must not be stored, so the old entry no longer
            // stands for it.
            backend.invalidate(std::slice::from_ref(&key)).await;
            Revalidated::Passed(response, refusal)
        }
        Refilled::Found(stored) => Revalidated::Found(stored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_the_windows() {
        let ttl = Duration::from_secs(60);
        let secs = Duration::from_secs;
        let plain = CachePolicy::new(ttl);
        assert_eq!(Freshness::of(&plain, secs(60)), Freshness::Fresh);
        assert_eq!(
            Freshness::of(&plain, secs(61)),
            Freshness::Fresh,
            "no windows: the store's own expiry decides"
        );
        let both = CachePolicy::new(ttl)
            .stale_while_revalidate(secs(30))
            .stale_if_error(secs(600));
        assert_eq!(Freshness::of(&both, secs(60)), Freshness::Fresh);
        assert_eq!(Freshness::of(&both, secs(61)), Freshness::WhileRevalidate);
        assert_eq!(Freshness::of(&both, secs(90)), Freshness::WhileRevalidate);
        assert_eq!(Freshness::of(&both, secs(91)), Freshness::IfError);
        let on_error = CachePolicy::new(ttl).stale_if_error(secs(600));
        assert_eq!(Freshness::of(&on_error, secs(61)), Freshness::IfError);
        let revalidating = CachePolicy::new(ttl).stale_while_revalidate(secs(30));
        assert_eq!(
            Freshness::of(&revalidating, secs(91)),
            Freshness::WhileRevalidate,
            "read just past its window, before the store dropped it"
        );
    }
}
