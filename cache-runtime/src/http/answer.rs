//! How a request is answered from an entry: the `Cache-Status` that says what the cache did
//! (RFC 9211), its freshness as `Age` and `ttl`, and a `304` when the client's copy is current.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Response};

use crate::http::conditional::Preconditions;
use crate::http::policy::CachePolicy;
use crate::http::stored::{Reply, StoredResponse};
use crate::http::CACHE_STATUS;

/// What the cache did for one response answered from an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// A fresh entry; the handler did not run.
    Hit,
    /// Another request's load of the missing entry answered this one.
    Collapsed,
    /// This request's handler filled the missing entry.
    Stored,
    /// The client's `no-cache` made this request's handler replace the entry.
    Requested,
    /// A stale entry, sent at once while a background revalidation runs (or, after a failed
    /// one, while its handler is left alone).
    StaleWhileRevalidate,
    /// A stale entry, sent because the handler failed to revalidate it.
    StaleIfError(Failure),
    /// A stale entry revalidated: by this request's handler, whose status this is, or
    /// (`None`) by another request's or process's.
    Revalidated(Option<u16>),
    /// Loaded (by this request, unless `collapsed`) while Redis failed, so not stored;
    /// `requested`: on the client's `no-cache`.
    Unstored {
        requested: bool,
        collapsed: bool,
        why: StoreFailure,
    },
    /// A stale entry revalidated by this request's handler, whose status this is, while Redis
    /// failed: not stored.
    RevalidatedUnstored(u16, StoreFailure),
}

/// How Redis failed a response that was loaded, so that it is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreFailure {
    /// Before the load (the read or the claim; an open breaker): counted as an `error`, as a
    /// `#[cached]` call whose store failed (`detail=store-error`).
    Unavailable,
    /// Redis answered the read and the claim, then failed the fill: still the `miss` it was
    /// (`detail=not-stored`); the failure is the backend's last error in `health()`.
    FillFailed,
}

impl StoreFailure {
    /// What the request is counted as.
    pub(crate) fn answer(self) -> crate::observe::Answer {
        match self {
            StoreFailure::Unavailable => crate::observe::Answer::Error,
            StoreFailure::FillFailed => crate::observe::Answer::Miss,
        }
    }

    fn detail(self) -> &'static str {
        match self {
            StoreFailure::Unavailable => "store-error",
            StoreFailure::FillFailed => "not-stored",
        }
    }
}

/// How the handler's failure behind a stale-if-error answer was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// This request ran the handler: its 5xx status, or `None` if it panicked or its service
    /// failed.
    Forwarded(Option<u16>),
    /// It failed within the throttle interval; the handler did not run for this request.
    Throttled,
    /// Another request's revalidation, which this one waited for, failed.
    Collapsed,
}

impl Answered {
    /// The `Cache-Status` value, with the entry's remaining freshness `ttl` in seconds
    /// (negative once stale, as RFC 9211 allows).
    pub(crate) fn cache_status(self, ttl: i64) -> HeaderValue {
        let status = match self {
            Answered::Hit => format!("cachette; hit; ttl={ttl}"),
            Answered::Collapsed => format!("cachette; fwd=miss; collapsed; ttl={ttl}"),
            Answered::Stored => format!("cachette; fwd=miss; stored; ttl={ttl}"),
            Answered::Requested => format!("cachette; fwd=request; stored; ttl={ttl}"),
            Answered::StaleWhileRevalidate => {
                format!("cachette; hit; ttl={ttl}; detail=stale-while-revalidate")
            }
            Answered::StaleIfError(failure) => {
                let how = match failure {
                    Failure::Forwarded(Some(status)) => format!("fwd=stale; fwd-status={status}"),
                    Failure::Forwarded(None) => "fwd=stale".to_owned(),
                    Failure::Throttled => "hit".to_owned(),
                    Failure::Collapsed => "fwd=stale; collapsed".to_owned(),
                };
                format!("cachette; {how}; ttl={ttl}; detail=stale-if-error")
            }
            Answered::Revalidated(Some(status)) => {
                format!("cachette; fwd=stale; fwd-status={status}; stored; ttl={ttl}")
            }
            Answered::Revalidated(None) => format!("cachette; fwd=stale; collapsed; ttl={ttl}"),
            // No ttl: there is no entry whose freshness it could state.
            Answered::Unstored {
                requested,
                collapsed,
                why,
            } => {
                let fwd = if requested { "request" } else { "miss" };
                let collapsed = if collapsed { "; collapsed" } else { "" };
                let detail = why.detail();
                format!("cachette; fwd={fwd}{collapsed}; detail={detail}")
            }
            Answered::RevalidatedUnstored(status, why) => {
                let detail = why.detail();
                format!("cachette; fwd=stale; fwd-status={status}; detail={detail}")
            }
        };
        HeaderValue::from_str(&status).unwrap_or(HeaderValue::from_static("cachette"))
    }
}

/// What the request asked for, as its answer needs it.
pub(crate) struct Asked {
    /// The response was keyed by the user's identity: it is sent `private`.
    pub(crate) personal: bool,
    pub(crate) preconditions: Preconditions,
    pub(crate) head: bool,
}

/// How old an entry is at `now_ms` (on the backend's clock, which stored it).
pub(crate) fn age(stored: &StoredResponse, now_ms: u64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(stored.stored_at_ms))
}

/// Whole seconds of freshness left: rounded down while fresh, and up (so never `0`) once stale.
pub(crate) fn ttl_secs(ttl: Duration, age: Duration) -> i64 {
    match ttl.checked_sub(age) {
        Some(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        None => {
            let over = (age - ttl).as_millis().div_ceil(1000);
            -i64::try_from(over).unwrap_or(i64::MAX)
        }
    }
}

/// Answers from an entry, with a `304` when the client already holds it.
pub(crate) fn reply(
    policy: &CachePolicy,
    asked: &Asked,
    stored: &StoredResponse,
    answered: Answered,
    now_ms: u64,
) -> Response<Body> {
    let age = age(stored, now_ms);
    // Preconditions apply to what would otherwise be a 2xx (RFC 9110 §13.2.1).
    let not_modified = (200..300).contains(&stored.status)
        && asked.preconditions.not_modified(
            &stored.etag,
            stored.header(http::header::LAST_MODIFIED.as_str()),
        );
    stored.reply(Reply {
        not_modified,
        head: asked.head,
        // max-age is the whole TTL and Age the entry's age: a client's freshness, max-age
        // minus Age (RFC 9111 §4.2), is then the entry's remaining TTL. Writing the remaining
        // TTL into max-age too would count the age twice.
        cache_control: policy.cache_control(policy.ttl, asked.personal),
        age,
        vary: &policy.vary,
        cache_status: answered.cache_status(ttl_secs(policy.ttl, age)),
    })
}

/// Sets `Cache-Status` on a response that was not answered from an entry.
pub(crate) fn set_cache_status(response: &mut Response<Body>, status: &str) {
    if let Ok(value) = HeaderValue::from_str(status) {
        response.headers_mut().insert(CACHE_STATUS, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_counts_down_then_goes_negative() {
        let ttl = Duration::from_secs(60);
        let at = |ms| ttl_secs(ttl, Duration::from_millis(ms));
        assert_eq!(at(0), 60);
        assert_eq!(at(2_500), 57);
        assert_eq!(at(60_000), 0);
        assert_eq!(at(60_001), -1);
        assert_eq!(at(61_000), -1);
        assert_eq!(at(61_001), -2);
    }

    #[test]
    fn stale_answers_say_how() {
        let text = |answered: Answered, ttl| {
            answered
                .cache_status(ttl)
                .to_str()
                .expect("text")
                .to_owned()
        };
        assert_eq!(text(Answered::Hit, 5), "cachette; hit; ttl=5");
        assert_eq!(
            text(Answered::StaleWhileRevalidate, -3),
            "cachette; hit; ttl=-3; detail=stale-while-revalidate"
        );
        assert_eq!(
            text(Answered::StaleIfError(Failure::Forwarded(Some(503))), -3),
            "cachette; fwd=stale; fwd-status=503; ttl=-3; detail=stale-if-error"
        );
        assert_eq!(
            text(Answered::StaleIfError(Failure::Throttled), -3),
            "cachette; hit; ttl=-3; detail=stale-if-error"
        );
        assert_eq!(
            text(Answered::Revalidated(Some(200)), 60),
            "cachette; fwd=stale; fwd-status=200; stored; ttl=60"
        );
    }

    #[test]
    fn answers_redis_failed_to_store_never_say_stored() {
        let text = |answered: Answered| {
            let value = answered.cache_status(60);
            value.to_str().expect("text").to_owned()
        };
        let unstored = |requested, collapsed, why| Answered::Unstored {
            requested,
            collapsed,
            why,
        };
        assert_eq!(
            text(unstored(false, false, StoreFailure::Unavailable)),
            "cachette; fwd=miss; detail=store-error"
        );
        assert_eq!(
            text(unstored(true, false, StoreFailure::FillFailed)),
            "cachette; fwd=request; detail=not-stored"
        );
        assert_eq!(
            text(unstored(false, true, StoreFailure::Unavailable)),
            "cachette; fwd=miss; collapsed; detail=store-error"
        );
        assert_eq!(
            text(Answered::RevalidatedUnstored(200, StoreFailure::FillFailed)),
            "cachette; fwd=stale; fwd-status=200; detail=not-stored"
        );
    }
}
