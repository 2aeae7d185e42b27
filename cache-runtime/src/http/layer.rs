//! The tower layer: decides per request whether the cache may answer, and runs the handler
//! through the runtime's call path (read, single-flight, Redis lock, fenced fill) on a miss.
//! A hit on a stale entry goes on in `stale.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams};
use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, PRAGMA, RANGE};
use http::request::Parts;
use http::{Method, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::call::{cached_remote, cached_remote_served, Tally};
use crate::http::answer::{age, reply, set_cache_status, Answered, Asked, StoreFailure};
use crate::http::conditional::Preconditions;
use crate::http::key::{route_builder, variant_key, Variant};
use crate::http::policy::CachePolicy;
use crate::http::shared::Shared;
use crate::http::stale::{self, Freshness, Revalidation};
use crate::http::stored::{store, Refusal};
use crate::observe::Answer;
use crate::shape::{OkOnly, Whole};

/// Caches the responses of the routes it wraps, following one [`CachePolicy`].
///
/// Build layers once, at start-up: each one registers its policy for the life of the process.
/// Apply it to a route (`get(handler).layer(...)`) or a router (`Router::layer`, which runs it
/// after routing, so it sees the matched route template).
#[derive(Clone, Debug)]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

impl CacheLayer {
    /// A layer caching as `policy` says.
    pub fn new(policy: CachePolicy) -> Self {
        CacheLayer {
            shared: Arc::new(Shared::new(policy)),
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> CacheService<S> {
        CacheService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`CacheLayer`] wraps around a route.
#[derive(Clone, Debug)]
pub struct CacheService<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for CacheService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The service that was polled ready is the one to call; leave a fresh clone behind.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(serve(Arc::clone(&self.shared), inner, request))
    }
}

/// Why a cached call did not produce an entry.
enum Forward<E> {
    /// A response that must not be stored, sent as it is.
    Pass(Response<Body>, Refusal),
    /// The inner service failed.
    Error(E),
}

async fn serve<S>(
    shared: Arc<Shared>,
    mut inner: S,
    request: Request<Body>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
{
    let policy = &shared.policy;
    let (mut parts, body) = request.into_parts();
    let route = route_of(&mut parts).await;
    let method = parts.method.clone();
    if method != Method::GET && method != Method::HEAD {
        return write_through(policy, inner, parts, body, route).await;
    }
    let Some((template, params)) = route else {
        return bypass(&shared, inner, parts, body, "route").await;
    };
    let plan = match plan(policy, &parts) {
        Ok(plan) => plan,
        Err(detail) => return bypass(&shared, inner, parts, body, detail).await,
    };
    let Some(backend) = crate::registry::resolve(shared.responses).backend.as_ref() else {
        return bypass(&shared, inner, parts, body, "backend").await;
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(param, _)| param == name)
            .map(|(_, value)| value.as_str())
    };
    let (Ok(route_key), Ok(route)) = (
        route_builder(&method, &template, param),
        route_builder(&method, &template, param),
    ) else {
        return bypass(&shared, inner, parts, body, "route").await;
    };

    // Every variant of the route lives under its current generation; invalidating the route
    // key draws a new one, which leaves every older variant unreachable.
    let generation: u64 = cached_remote(shared.generations, Whole, route_key.finish(), async {
        fastrand::u64(..)
    })
    .await;
    let key = variant_key(
        route,
        &parts,
        &Variant {
            generation,
            query: parts.uri.query(),
            vary: &policy.vary,
            identity: plan.identity.as_deref(),
        },
    );
    if plan.revalidate {
        backend.invalidate(std::slice::from_ref(&key)).await;
    }

    // Entries are stamped and aged on the backend's clock, the one that expires them.
    let clock = backend.clock().clone();
    let asked = Asked {
        personal: plan.identity.is_some(),
        preconditions: Preconditions::of(&parts.headers),
        head: method == Method::HEAD,
    };
    let mut ran = false;
    // The handler's request, unless the handler ran: a stale entry's revalidation takes it.
    let mut request = Some(Request::from_parts(parts, body));
    let fill = async {
        ran = true;
        let request = request.take().expect("a call's body runs at most once");
        let response = inner.call(request).await.map_err(Forward::Error)?;
        if asked.head {
            // Axum strips the body of a HEAD response: nothing here to store for GET.
            return Err(Forward::Pass(response, "head"));
        }
        store(response, policy, clock.unix_ms())
            .await
            .map_err(|(response, refusal)| Forward::Pass(response, refusal))
    };
    // Kept for a revalidation only where entries can go stale: a plain hit pays nothing.
    let stale_key = policy.serves_stale().then(|| key.clone());
    let (response, served) = cached_remote_served(shared.responses, OkOnly, key, fill).await;
    let stored = match response {
        Ok(stored) => stored,
        Err(Forward::Pass(mut response, refusal)) => {
            set_cache_status(
                &mut response,
                &format!("cachette; fwd=miss; detail={refusal}"),
            );
            return Ok(response);
        }
        Err(Forward::Error(error)) => return Err(error),
    };
    // Redis failing is said as it is counted: an `error` before the load, a `miss` whose fill
    // failed after it; neither is `stored`.
    let unstored = match served.answer {
        Answer::Error => Some(StoreFailure::Unavailable),
        _ if served.store_failed => Some(StoreFailure::FillFailed),
        _ => None,
    };
    let answered = match (ran, plan.revalidate, unstored) {
        (_, requested, Some(why)) => Answered::Unstored {
            requested,
            collapsed: served.coalesced,
            why,
        },
        // Answered by another request's load: RFC 9211's `collapsed`.
        (false, _, None) if served.coalesced => Answered::Collapsed,
        (false, _, None) => Answered::Hit,
        (true, false, None) => Answered::Stored,
        (true, true, None) => Answered::Requested,
    };
    let now_ms = clock.unix_ms();
    // The call path counted every answer but a hit, which is this layer's to count: only the
    // entry's age says whether it answers fresh, stale, or revalidated.
    let Some(tier) = served.uncounted_hit() else {
        return Ok(reply(policy, &asked, &stored, answered, now_ms));
    };
    let tally = Tally::hit(shared.responses, tier);
    if let (Some(request), Some(key)) = (request, stale_key) {
        let revalidation = || Revalidation {
            shared: Arc::clone(&shared),
            backend,
            key,
            clock: clock.clone(),
        };
        match Freshness::of(policy, age(&stored, now_ms)) {
            Freshness::Fresh => {}
            Freshness::WhileRevalidate => {
                stale::revalidate_in_background(revalidation(), inner, request);
                tally.settle(Answer::Stale);
                let answered = Answered::StaleWhileRevalidate;
                return Ok(reply(policy, &asked, &stored, answered, now_ms));
            }
            Freshness::IfError => {
                let stale = (&stored, &asked);
                let answer = stale::revalidate_now(revalidation(), inner, request, stale, tally);
                return Ok(answer.await);
            }
        }
    }
    tally.settle(Answer::Hit);
    Ok(reply(policy, &asked, &stored, answered, now_ms))
}

/// What a cacheable request asks of the cache.
struct Plan {
    /// `Cache-Control: no-cache` (or `max-age=0`, or `Pragma: no-cache`): run the handler and
    /// replace the entry.
    revalidate: bool,
    /// The user the response is keyed by, for requests with credentials.
    identity: Option<String>,
}

fn plan(policy: &CachePolicy, parts: &Parts) -> Result<Plan, Refusal> {
    let headers = &parts.headers;
    if headers.contains_key(RANGE) {
        return Err("range");
    }
    let directives: Vec<&str> = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let has = |wanted: &str| {
        directives
            .iter()
            .any(|directive| directive.eq_ignore_ascii_case(wanted))
    };
    if has("no-store") {
        return Err("no-store");
    }
    let revalidate = has("no-cache")
        || has("max-age=0")
        || (directives.is_empty()
            && headers
                .get(PRAGMA)
                .is_some_and(|pragma| pragma.as_bytes().eq_ignore_ascii_case(b"no-cache")));
    let identity = if headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE) {
        // A shared cache must never hand one user's response to another: without a key that
        // names the user, requests with credentials are not cached at all.
        let identify = policy.identity.as_ref().ok_or("credentials")?;
        Some(identify(parts).ok_or("identity")?)
    } else {
        None
    };
    Ok(Plan {
        revalidate,
        identity,
    })
}

/// The matched route template and its parameters; `None` outside a matched route (a fallback).
async fn route_of(parts: &mut Parts) -> Option<(String, Vec<(String, String)>)> {
    let template = parts.extensions.get::<MatchedPath>()?.as_str().to_owned();
    let params = match RawPathParams::from_request_parts(parts, &()).await {
        Ok(raw) => raw
            .iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
        Err(_) if !template.contains('{') => Vec::new(),
        Err(_) => return None,
    };
    Some((template, params))
}

/// A write to a route: runs it, and on success removes the route's cached `GET` responses.
async fn write_through<S>(
    policy: &CachePolicy,
    mut inner: S,
    parts: Parts,
    body: Body,
    route: Option<(String, Vec<(String, String)>)>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    let key = route
        .filter(|_| policy.invalidate_on_write && !parts.method.is_safe())
        .and_then(|(template, params)| {
            route_builder(&Method::GET, &template, |name| {
                params
                    .iter()
                    .find(|(param, _)| param == name)
                    .map(|(_, value)| value.as_str())
            })
            .ok()
        })
        .map(|builder| builder.finish());
    let response = inner.call(Request::from_parts(parts, body)).await?;
    if let Some(key) = key {
        if response.status().is_success() || response.status().is_redirection() {
            crate::call::invalidate(&key).await;
        }
    }
    Ok(response)
}

/// Runs the handler without the cache, saying why in `Cache-Status`.
async fn bypass<S>(
    shared: &Shared,
    mut inner: S,
    parts: Parts,
    body: Body,
    detail: Refusal,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    // Counted before the handler runs, as its `Cache-Status` will say: once, whether or not
    // the client waits for the answer.
    crate::call::bypassed(shared.responses);
    let mut response = inner.call(Request::from_parts(parts, body)).await?;
    set_cache_status(
        &mut response,
        &format!("cachette; fwd=bypass; detail={detail}"),
    );
    Ok(response)
}
