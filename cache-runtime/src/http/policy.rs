//! A route's caching policy: how long responses live, where, which request headers tell them
//! apart, and what `Cache-Control` tells clients.

use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, StatusCode};

/// Derives the identity of a request's user, for routes that cache responses to requests with
/// credentials (`Authorization`, `Cookie`). `None` means "unknown": the request runs uncached.
/// How long a handler that failed to revalidate a stale response is left alone by default:
/// long enough that a failing origin is not hammered by every request, short enough that its
/// recovery shows within seconds.
const DEFAULT_ERROR_THROTTLE: Duration = Duration::from_secs(10);

pub(crate) type IdentityFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// How one route (or every route under a layer) caches its responses.
///
/// ```
/// use std::time::Duration;
/// use cache_runtime::http::CachePolicy;
///
/// let policy = CachePolicy::new(Duration::from_secs(60))
///     .backend("redis")
///     .vary(["accept-language"])
///     .stale_while_revalidate(Duration::from_secs(30))
///     .stale_if_error(Duration::from_secs(600))
///     .shared_max_age(Duration::from_secs(300));
/// ```
#[derive(Clone)]
#[must_use = "a policy does nothing until given to `CacheLayer::new`"]
pub struct CachePolicy {
    pub(crate) ttl: Duration,
    pub(crate) backend: String,
    pub(crate) private: bool,
    pub(crate) no_cache: bool,
    pub(crate) no_store: bool,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) error_throttle: Duration,
    pub(crate) shared_max_age: Option<Duration>,
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) identity: Option<IdentityFn>,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) max_body_bytes: usize,
    pub(crate) invalidate_on_write: bool,
}

impl CachePolicy {
    /// Responses live `ttl` in the `memory` backend, are `public`, vary on nothing but method,
    /// path and query, and are stored only with a success status (200, 203, 204).
    pub fn new(ttl: Duration) -> Self {
        CachePolicy {
            ttl,
            backend: "memory".to_owned(),
            private: false,
            no_cache: false,
            no_store: false,
            stale_while_revalidate: None,
            stale_if_error: None,
            error_throttle: DEFAULT_ERROR_THROTTLE,
            shared_max_age: None,
            vary: Vec::new(),
            identity: None,
            statuses: vec![
                StatusCode::OK,
                StatusCode::NON_AUTHORITATIVE_INFORMATION,
                StatusCode::NO_CONTENT,
            ],
            max_body_bytes: 1024 * 1024,
            invalidate_on_write: true,
        }
    }

    /// The backend's name: `memory`, `memory.<name>`, `redis`, `redis.<name>` (default
    /// `memory`).
    pub fn backend(mut self, name: impl Into<String>) -> Self {
        self.backend = name.into();
        self
    }

    /// `Cache-Control: private`: browsers may keep the response, shared caches may not.
    pub fn private(mut self) -> Self {
        self.private = true;
        self
    }

    /// `Cache-Control: no-cache`: clients revalidate before every reuse (cheap here: a `304`
    /// from this cache).
    pub fn no_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    /// `Cache-Control: no-store`: clients keep nothing; this cache still serves the route.
    pub fn no_store(mut self) -> Self {
        self.no_store = true;
        self
    }

    /// Serves a response for up to `window` after its TTL while revalidating it (RFC 5861): the
    /// first request after the TTL gets the stored response at once (`Cache-Status: cachette;
    /// hit; ttl=-3; detail=stale-while-revalidate`) and starts one background run of the
    /// handler for that response, whose result the next requests get. Also sent to clients
    /// and proxies in front as `Cache-Control: stale-while-revalidate=<secs>`.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// Serves a response for up to `window` after its TTL when the handler fails (RFC 5861):
    /// a request after the TTL runs the handler, and if it answers with a 5xx status, panics
    /// or its service fails, gets the stored response instead (`Cache-Status: cachette;
    /// fwd=stale; fwd-status=500; ttl=-3; detail=stale-if-error`). Also sent as
    /// `Cache-Control: stale-if-error=<secs>`. A response invalidated (its route, or by a
    /// client's `no-cache`) is never served stale.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// After a handler failed to revalidate a stale response, the handler is not run again for
    /// that response for `interval` (default 10 s): meanwhile requests get the stale response
    /// at once. Counted on the backend's clock, in each process.
    pub fn error_throttle(mut self, interval: Duration) -> Self {
        self.error_throttle = interval;
        self
    }

    /// `Cache-Control: s-maxage=<secs>`: how long shared caches in front (a CDN, a proxy) may
    /// keep the response, where it differs from `max-age` (the TTL, for every cache). Not sent
    /// on `private` responses, which shared caches do not store.
    pub fn shared_max_age(mut self, lifetime: Duration) -> Self {
        self.shared_max_age = Some(lifetime);
        self
    }

    /// Request headers whose values select a different response (`Vary`): each is part of the
    /// key, and named in the response's `Vary`. A response whose own `Vary` names a header not
    /// listed here is not stored, since entries could not be told apart.
    ///
    /// # Panics
    /// If a name is not a valid header name: policies are built from constants at start-up.
    pub fn vary<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        for name in names {
            let name = HeaderName::try_from(name.as_ref()).unwrap_or_else(|_| {
                panic!("`{}` is not a valid header name", name.as_ref());
            });
            if !self.vary.contains(&name) {
                self.vary.push(name);
            }
        }
        self.vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        self
    }

    /// Caches responses to requests that carry `Authorization` or `Cookie`, keyed by the user
    /// `identity` returns (and sent `private`). Without it such requests are never cached, so a
    /// shared cache cannot hand one user's response to another.
    ///
    /// Derive the identity from *verified* credentials, for example an extension that an
    /// authentication layer running before this one inserted: a value read from an unverified
    /// header lets anyone who guesses it read that user's cached responses.
    pub fn identity<F>(mut self, identity: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.identity = Some(Arc::new(identity));
        self
    }

    /// Also stores responses with this status (by default only 200, 203 and 204 are stored).
    pub fn cache_status(mut self, status: StatusCode) -> Self {
        if !self.statuses.contains(&status) {
            self.statuses.push(status);
        }
        self
    }

    /// The largest body stored (default 1 MiB); larger responses pass through.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Whether a successful `POST`/`PUT`/`PATCH`/`DELETE` through the layer removes the cached
    /// `GET` responses of the same route and parameters (default `true`, as RFC 9111 §4.4 asks
    /// of caches).
    pub fn invalidate_on_write(mut self, enabled: bool) -> Self {
        self.invalidate_on_write = enabled;
        self
    }

    /// Whether a response may be answered past its TTL.
    pub(crate) fn serves_stale(&self) -> bool {
        self.stale_while_revalidate.is_some() || self.stale_if_error.is_some()
    }

    /// How long a response is kept: its TTL, then the longer of its stale windows.
    pub(crate) fn retention(&self) -> Duration {
        let window = self
            .stale_while_revalidate
            .max(self.stale_if_error)
            .unwrap_or(Duration::ZERO);
        self.ttl.saturating_add(window)
    }

    /// The `Cache-Control` value for a response whose freshness lifetime is `max_age` (sent
    /// with an `Age` header); `personal` forces `private` (the response was keyed by the
    /// user's identity).
    pub(crate) fn cache_control(&self, max_age: Duration, personal: bool) -> String {
        let mut out = String::with_capacity(48);
        let private = self.private || personal;
        out.push_str(if private { "private" } else { "public" });
        let _ = write!(out, ", max-age={}", max_age.as_secs());
        if let Some(shared) = self.shared_max_age.filter(|_| !private) {
            let _ = write!(out, ", s-maxage={}", shared.as_secs());
        }
        if self.no_cache {
            out.push_str(", no-cache");
        }
        if self.no_store {
            out.push_str(", no-store");
        }
        if let Some(window) = self.stale_while_revalidate {
            let _ = write!(out, ", stale-while-revalidate={}", window.as_secs());
        }
        if let Some(window) = self.stale_if_error {
            let _ = write!(out, ", stale-if-error={}", window.as_secs());
        }
        out
    }
}

impl fmt::Debug for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachePolicy")
            .field("ttl", &self.ttl)
            .field("backend", &self.backend)
            .field("private", &self.private)
            .field("no_cache", &self.no_cache)
            .field("no_store", &self.no_store)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("stale_if_error", &self.stale_if_error)
            .field("error_throttle", &self.error_throttle)
            .field("shared_max_age", &self.shared_max_age)
            .field("vary", &self.vary)
            .field("identity", &self.identity.is_some())
            .field("statuses", &self.statuses)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("invalidate_on_write", &self.invalidate_on_write)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_states_the_policy() {
        let policy = CachePolicy::new(Duration::from_secs(60))
            .backend("redis")
            .vary(["accept-language"])
            .stale_while_revalidate(Duration::from_secs(30));
        assert_eq!(
            policy.cache_control(Duration::from_secs(42), false),
            "public, max-age=42, stale-while-revalidate=30"
        );
        let shared = policy
            .stale_if_error(Duration::from_secs(600))
            .shared_max_age(Duration::from_secs(300));
        assert_eq!(
            shared.cache_control(Duration::from_secs(60), false),
            "public, max-age=60, s-maxage=300, stale-while-revalidate=30, stale-if-error=600"
        );
        assert_eq!(
            shared.cache_control(Duration::from_secs(60), true),
            "private, max-age=60, stale-while-revalidate=30, stale-if-error=600",
            "shared caches do not store a private response: no s-maxage"
        );
        assert_eq!(
            shared
                .private()
                .cache_control(Duration::from_secs(60), false),
            "private, max-age=60, stale-while-revalidate=30, stale-if-error=600"
        );
    }

    #[test]
    fn responses_are_kept_for_the_longer_stale_window() {
        let ttl = Duration::from_secs(60);
        assert_eq!(CachePolicy::new(ttl).retention(), ttl);
        let both = CachePolicy::new(ttl)
            .stale_while_revalidate(Duration::from_secs(30))
            .stale_if_error(Duration::from_secs(600));
        assert_eq!(both.retention(), Duration::from_secs(660));
        let revalidating = CachePolicy::new(ttl).stale_while_revalidate(Duration::from_secs(30));
        assert_eq!(revalidating.retention(), Duration::from_secs(90));
    }
}
