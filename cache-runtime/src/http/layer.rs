//! The tower layer: decides per request whether the cache may answer, and runs the handler
//! through the runtime's call path (read, single-flight, Redis lock, fenced fill) on a miss.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams};
use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, IF_NONE_MATCH, PRAGMA, RANGE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::call::{cached_remote, cached_remote_served};
use crate::clock::unix_ms_now as now_ms;
use crate::http::etag::if_none_match;
use crate::http::key::{route_builder, variant_key, Variant};
use crate::http::policy::CachePolicy;
use crate::http::stored::{store, Refusal, Reply, StoredResponse};
use crate::http::CACHE_STATUS;
use crate::shape::{OkOnly, Whole};
use crate::site::Site;

/// Caches the responses of the routes it wraps, following one [`CachePolicy`].
///
/// Build layers once, at start-up: each one registers its policy for the life of the process.
/// Apply it to a route (`get(handler).layer(...)`) or a router (`Router::layer`, which runs it
/// after routing, so it sees the matched route template).
#[derive(Clone, Debug)]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    policy: CachePolicy,
    /// Stored responses, under variant keys.
    responses: &'static Site,
    /// Route generations, under route keys.
    generations: &'static Site,
}

impl CacheLayer {
    /// A layer caching as `policy` says.
    pub fn new(policy: CachePolicy) -> Self {
        // Sites are `&'static` (the macro makes them `static`); a layer's live as long as the
        // process, so leaking two per layer built is the whole cost.
        let backend: &'static str = Box::leak(policy.backend.clone().into_boxed_str());
        let responses = Box::leak(Box::new(Site::new(
            "cachette::http response",
            "http:<METHOD>:<route>|g<generation>|q<query>|h:<name><value>|u<identity>",
            backend,
            millis(policy.ttl),
            1,
        )));
        // A generation that outlives its variants keeps them reachable until their own TTL;
        // one that ends sooner only costs a miss.
        let generations = Box::leak(Box::new(Site::new(
            "cachette::http route generation",
            "http:<METHOD>:<route>",
            backend,
            millis(policy.ttl.saturating_mul(2)),
            1,
        )));
        CacheLayer {
            shared: Arc::new(Shared {
                policy,
                responses,
                generations,
            }),
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
    S: Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send,
    S::Error: Send,
{
    let policy = &shared.policy;
    let (mut parts, body) = request.into_parts();
    let route = route_of(&mut parts).await;
    let method = parts.method.clone();
    if method != Method::GET && method != Method::HEAD {
        return write_through(policy, inner, parts, body, route).await;
    }
    let Some((template, params)) = route else {
        return bypass(inner, parts, body, "route").await;
    };
    let plan = match plan(policy, &parts) {
        Ok(plan) => plan,
        Err(detail) => return bypass(inner, parts, body, detail).await,
    };
    let Some(backend) = crate::registry::resolve(shared.responses).backend.as_ref() else {
        crate::call::bypassed(shared.responses);
        return bypass(inner, parts, body, "backend").await;
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
        return bypass(inner, parts, body, "route").await;
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

    let conditional: HeaderMap = parts
        .headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .map(|value| (IF_NONE_MATCH, value.clone()))
        .collect();
    let head = method == Method::HEAD;
    let mut ran = false;
    let fill = async {
        ran = true;
        let response = inner
            .call(Request::from_parts(parts, body))
            .await
            .map_err(Forward::Error)?;
        if head {
            // Axum strips the body of a HEAD response: nothing here to store for GET.
            return Err(Forward::Pass(response, "head"));
        }
        store(response, policy, now_ms())
            .await
            .map_err(|(response, refusal)| Forward::Pass(response, refusal))
    };
    let (response, served) = cached_remote_served(shared.responses, OkOnly, key, fill).await;
    // Answered by another request's load: RFC 9211's `collapsed`.
    let collapsed = served.coalesced && !ran;
    match response {
        Ok(stored) => Ok(reply(
            policy,
            &plan,
            &stored,
            (ran, collapsed),
            &conditional,
            head,
        )),
        Err(Forward::Pass(mut response, refusal)) => {
            set_status(
                &mut response,
                &format!("cachette; fwd=miss; detail={refusal}"),
            );
            Ok(response)
        }
        Err(Forward::Error(error)) => Err(error),
    }
}

/// Answers from an entry, with a `304` when the client already holds it.
fn reply(
    policy: &CachePolicy,
    plan: &Plan,
    stored: &StoredResponse,
    (ran, collapsed): (bool, bool),
    conditional: &HeaderMap,
    head: bool,
) -> Response<Body> {
    let age = Duration::from_millis(now_ms().saturating_sub(stored.stored_at_ms));
    let remaining = policy.ttl.saturating_sub(age);
    let status = match (ran, plan.revalidate) {
        (false, _) if collapsed => {
            format!("cachette; fwd=miss; collapsed; ttl={}", remaining.as_secs())
        }
        (false, _) => format!("cachette; hit; ttl={}", remaining.as_secs()),
        (true, false) => format!("cachette; fwd=miss; stored; ttl={}", remaining.as_secs()),
        (true, true) => format!("cachette; fwd=request; stored; ttl={}", remaining.as_secs()),
    };
    // Preconditions apply to what would otherwise be a 2xx (RFC 9110 §13.2.1).
    let not_modified =
        (200..300).contains(&stored.status) && if_none_match(conditional, &stored.etag);
    stored.reply(Reply {
        not_modified,
        head,
        // max-age is the whole TTL and Age the entry's age: a client's freshness, max-age
        // minus Age (RFC 9111 §4.2), is then the entry's remaining TTL. Writing the remaining
        // TTL into max-age too would count the age twice.
        cache_control: policy.cache_control(policy.ttl, plan.identity.is_some()),
        age,
        vary: &policy.vary,
        cache_status: HeaderValue::from_str(&status)
            .unwrap_or(HeaderValue::from_static("cachette")),
    })
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
    mut inner: S,
    parts: Parts,
    body: Body,
    detail: Refusal,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    let mut response = inner.call(Request::from_parts(parts, body)).await?;
    set_status(
        &mut response,
        &format!("cachette; fwd=bypass; detail={detail}"),
    );
    Ok(response)
}

fn set_status(response: &mut Response<Body>, status: &str) {
    if let Ok(value) = HeaderValue::from_str(status) {
        response.headers_mut().insert(CACHE_STATUS, value);
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
