//! Refresh-ahead (`#[cached(refresh = "50s")]`): a hit on an entry in the last part of its life
//! (older than `refresh`) returns at once and starts one load of the key in the background,
//! whose value replaces the entry before it expires, so that a hot key never costs a caller a
//! load, nor a latency spike at each ttl.
//!
//! - One per key per interval ([`Site::refresh_interval`]): in this process the backend's
//!   refresh ledger admits the first due hit, and the refresh leads the key's flight (a caller
//!   that misses meanwhile waits for it, as for any load); across processes the refresh claim
//!   (`claim.lua`) takes the lock only while no load holds it and no refresh started within the
//!   interval, so the refresh is the key's only load and other processes' misses wait for its
//!   fill.
//! - Fenced like any load: an invalidation during it refuses its value, and the flight it leads
//!   is detached, so its value is not kept in process either.
//! - Its fill is announced on a tiered backend's bus: other processes drop their L1 copies of
//!   the entry it replaced and read the new one from L2.
//! - A refresh that fails (`Err`, a panic, Redis refusing or failing) leaves the entry as it
//!   was; so does one that finds nothing (`None`): the entry then ends at its ttl, as it would
//!   without `refresh`. The key may be refreshed again after the interval.

use super::body::Detached;
use super::local::{complete, load, memory_of};
use super::remote::{fill_announcing, share, L1Slot, LoadPermit};
use super::report::Report;
use crate::backend::{Backend, Claim, HeldLock, RedisBackend, TieredBackend, LEASE};
use crate::flight::{LeaderGuard, Outcome, Role};
use crate::key::CacheKey;
use crate::registry;
use crate::shape::{PortableValue, Produced, ReturnShape};
use crate::site::Site;

/// Starts a refresh of `key` on a memory backend with `body`, if this hit is the first due one
/// of its interval and no load of the key is under way; a call without a Tokio runtime has
/// nowhere to run it, and refreshes nothing.
pub(crate) fn start_local<R, S>(site: &'static Site, shape: S, key: &CacheKey, body: Detached<R>)
where
    R: Send + 'static,
    S: ReturnShape<R>,
{
    let resolved = registry::resolve(site);
    let Some((backend, memory)) = memory_of(resolved, key) else {
        return;
    };
    let Some((runtime, guard)) = admit(site, backend, key) else {
        return;
    };
    let key = key.clone();
    runtime.spawn(async move {
        let report = Report::start(site, &resolved.meters);
        let ret = load(&report, shape, body).await;
        if let Produced::Value(_) = shape.produced(&ret) {
            complete(memory, site, shape, key, guard, &ret);
        } else {
            // The entry stays as it was; callers that missed meanwhile load for themselves.
            guard.complete(Outcome::Abandoned, || {});
        }
    });
}

/// [`start_local`] for a site whose backend may be remote (the configured default, or a named
/// remote backend): a Redis backend's refresh takes the refresh claim and fills under its
/// fence; a tiered one's also announces the fill, and keeps the value in this process's L1.
pub(crate) fn start<R, S>(site: &'static Site, shape: S, key: &CacheKey, body: Detached<R>)
where
    R: Send + 'static,
    S: ReturnShape<R>,
    S::Value: PortableValue,
{
    let resolved = registry::resolve(site);
    let Some(backend) = resolved.backend.as_ref().filter(|_| key.is_usable()) else {
        return;
    };
    let Some((redis, tiered)) = backend.remote() else {
        return start_local(site, shape, key, body);
    };
    let Some((runtime, guard)) = admit(site, backend, key) else {
        return;
    };
    let key = key.clone();
    runtime.spawn(async move {
        let report = Report::start(site, &resolved.meters);
        refresh_remote(site, (redis, tiered), &report, shape, key, guard, body).await;
    });
}

/// The ledger's admission, a runtime to run on, and the key's flight, or `None` (and nothing
/// counted) if any is missing.
fn admit<'b>(
    site: &'static Site,
    backend: &'b Backend,
    key: &CacheKey,
) -> Option<(tokio::runtime::Handle, LeaderGuard<'b>)> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let now = backend.clock().instant();
    if !backend.refreshes().admit(key, now, site.refresh_interval()) {
        return None;
    }
    // A load of the key under way (a miss) refreshes it already.
    let Role::Leader(guard) = backend.flights().join(key) else {
        return None;
    };
    super::refreshed(site);
    Some((runtime, guard))
}

/// The refresh on Redis: claimed across processes, loaded, filled under the claim's fence.
async fn refresh_remote<R, S>(
    site: &'static Site,
    (redis, tiered): (&'static RedisBackend, Option<&'static TieredBackend>),
    report: &Report,
    shape: S,
    key: CacheKey,
    guard: LeaderGuard<'static>,
    body: Detached<R>,
) where
    S: ReturnShape<R>,
    S::Value: PortableValue,
{
    // The epoch before the claim: a bus outage from here on keeps the value out of L1.
    let l1 = tiered.and_then(|tiered| Some(L1Slot::new(tiered, tiered.l1_epoch()?, site)));
    let claimed = redis
        .store()
        .claim_refresh(
            key.as_str(),
            LEASE,
            (site.refresh_interval(), redis.now_ms()),
        )
        .await;
    // Refused (another process refreshes, or loads), or Redis failed: the entry stays.
    let Ok(Claim::Load {
        fence,
        token: Some(token),
        ..
    }) = claimed
    else {
        guard.complete(Outcome::Abandoned, || {});
        return;
    };
    let lock = HeldLock::new(redis.store(), key.as_str(), token);
    let permit = LoadPermit::new(fence, lock);
    let ret = load(report, shape, body).await;
    let Produced::Value(value) = shape.produced(&ret) else {
        guard.complete(Outcome::Abandoned, || {});
        permit.release().await;
        return;
    };
    let fresh = site.fill_ttl();
    let announce = tiered.map(|tiered| tiered.announcement(key.as_str()));
    let current = fill_announcing(site, redis, &key, value, permit, fresh, announce.as_ref()).await;
    share(
        guard,
        &key,
        value,
        l1.as_ref().filter(|_| current),
        fresh,
        Outcome::Value,
    );
}
