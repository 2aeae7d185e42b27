//! HTTP response caching for axum (feature `axum`): a tower layer that stores whole `GET`
//! responses in any cachette backend, answers `If-None-Match` and `If-Modified-Since` with
//! `304 Not Modified` without running the handler, and serves stale responses while it
//! revalidates them or when the handler fails (RFC 5861), as the policy allows.
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use cache_runtime::http::{CacheLayer, CachePolicy};
//!
//! async fn user() -> &'static str { "{\"name\":\"Ada\"}" }
//!
//! let app: Router = Router::new()
//!     // One route with its own policy...
//!     .route("/users/{id}", get(user).layer(CacheLayer::new(CachePolicy::new(Duration::from_secs(60)))))
//!     // ...or every route of a router.
//!     .merge(Router::new().route("/health", get(|| async { "ok" }))
//!         .layer(CacheLayer::new(CachePolicy::new(Duration::from_secs(5)))));
//! ```
//!
//! - A response is stored with its status, body and `Content-Type`, `Content-Encoding`,
//!   `Content-Language`, `ETag`, `Last-Modified`, `Vary` and `Location`, under a key made of the
//!   method, the route template with its parameters, the query, the request headers the policy
//!   names in [`CachePolicy::vary`] and, where configured, the user's identity.
//! - Its ETag is the handler's, or a strong hash of the body computed when it is stored.
//! - Responses carry `Cache-Control` from the policy, `Age`, and an RFC 9211 `Cache-Status`
//!   (`cachette; hit`, `cachette; fwd=miss; stored`, `cachette; fwd=bypass; detail=credentials`,
//!   `cachette; hit; ttl=-3; detail=stale-while-revalidate`...).
//! - Past its TTL, a response is answered at once while one background run of its handler
//!   revalidates it ([`CachePolicy::stale_while_revalidate`]), or revalidated first and
//!   answered only if the handler fails ([`CachePolicy::stale_if_error`]); a failing handler
//!   runs at most once per [`CachePolicy::error_throttle`] for it. An invalidated response is
//!   never answered stale.
//! - Never stored: responses with `Set-Cookie`, `Cache-Control: no-store`/`private`/`no-cache`,
//!   a status the policy does not list, or a `Vary` it does not key on; requests with
//!   `Authorization` or `Cookie` unless the policy keys on the user's identity; `Range` requests.
//!   A request with `Cache-Control: no-cache` runs the handler and replaces the entry.
//! - [`invalidate_route`], `#[invalidates("http:GET:/users/<id>")]`, and (by default) a
//!   successful write to the same route remove every cached variant of a route.

mod answer;
mod body;
mod conditional;
mod etag;
mod key;
mod layer;
mod policy;
mod shared;
mod stale;
mod stored;
mod throttle;

pub use key::route_key;
pub use layer::{CacheLayer, CacheService};
pub use policy::CachePolicy;

use http::{HeaderName, Method};

/// The RFC 9211 response header saying what the cache did.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a route template cannot name cached responses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The template names a parameter that was not given.
    #[error("route `{template}` has a parameter `{name}` that was not given")]
    MissingParam {
        /// The route template.
        template: String,
        /// The parameter's name.
        name: String,
    },
    /// The template holds `<`, `>`, an escaped brace or an unclosed parameter; such routes are
    /// never cached, since their key could be confused with another's.
    #[error("route `{template}` cannot be part of a cache key (it holds `<`, `>` or a brace that is not a parameter)")]
    UnsupportedTemplate {
        /// The route template.
        template: String,
    },
}

/// Removes every cached response of one route from every backend: all its query strings,
/// `Vary` variants and identities. `#[invalidates("http:GET:/users/<id>")]` does the same for
/// the template `/users/{id}`.
///
/// ```
/// # futures::executor::block_on(async {
/// use cache_runtime::http::invalidate_route;
/// use http::Method;
///
/// invalidate_route(&Method::GET, "/users/{id}", &[("id", "7")]).await?;
/// # Ok::<(), cache_runtime::http::RouteError>(())
/// # }).unwrap();
/// ```
pub async fn invalidate_route(
    method: &Method,
    template: &str,
    params: &[(&str, &str)],
) -> Result<(), RouteError> {
    crate::call::invalidate(&route_key(method, template, params)?).await;
    Ok(())
}
