//! The call path of a remote (Redis) backend: read the envelope, and on a miss load once per
//! key in this process (single-flight) and once across processes (the Redis lock), then fill
//! with the fence generation read before the load.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::fail_safe::{self, Ending};
use super::follow::{downcast, follow, Next};
use super::local::load;
use super::report::{Report, Served};
use crate::backend::{Claim, HeldLock, RedisBackend, TieredBackend, LEASE, SAFETY_POLL};
use crate::envelope::{self, Bincode, Times};
use crate::flight::{Outcome, Role};
use crate::key::CacheKey;
use crate::log_gate::LogGate;
use crate::observe::{Answer, Scope, Tier};
use crate::registry;
use crate::shape::{AnyValue, PortableValue, Produced, ReturnShape};
use crate::site::{Resolved, Site};

/// How long a caller waits for another process's load before it loads itself.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Runs an async `#[cached]` function whose backend is remote (Redis, or tiered: an in-process
/// L1 in front of Redis).
pub async fn cached_remote<R, S, F>(site: &'static Site, shape: S, key: CacheKey, body: F) -> R
where
    S: ReturnShape<R>,
    // One bound, not serde's two: rustc then reports a value that cannot go to Redis with
    // `PortableValue`'s message wherever it checks it (a spawned call's `Send` included).
    S::Value: PortableValue,
    F: Future<Output = R>,
{
    cached_remote_served(site, shape, key, body).await.0
}

/// [`cached_remote`], saying how the call was served.
pub(crate) async fn cached_remote_served<R, S, F>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    body: F,
) -> (R, Served)
where
    S: ReturnShape<R>,
    S::Value: PortableValue,
    F: Future<Output = R>,
{
    let resolved = registry::resolve(site);
    let backend = resolved.backend.as_ref().filter(|_| key.is_usable());
    let remote = backend.map(|backend| (backend, backend.remote()));
    let Some((backend, Some((redis, tiered)))) = remote else {
        if remote.is_some() {
            return super::local::cached_served(site, shape, key, body).await;
        }
        let mut report = Report::start(site, &resolved.meters);
        report.answer(Answer::Bypass, Tier::None);
        let ret = load(&report, shape, body).await;
        return (ret, report.served());
    };
    let mut report = Report::start(site, &resolved.meters);
    // L1 is usable only in an epoch of a live bus subscription; see `backend::tiered::bus`.
    let l1 = tiered.and_then(|tiered| Some(L1Slot::new(tiered, tiered.l1_epoch()?, site)));
    if let Some(l1) = &l1 {
        if let Some(value) = l1.get::<S::Value>(site, &key) {
            report.answer(Answer::Hit, Tier::L1);
            return (shape.rebuild(value), report.served());
        }
    }
    // False once Redis failed during this call: the rest of the call then leaves Redis alone,
    // so a slow or dead Redis costs a caller at most one operation timeout.
    let mut available = true;
    if tiered.is_none() {
        // Redis alone: a hit needs no flight.
        match read::<S::Value>(site, redis, &key).await {
            Lookup::Hit(value, _) => {
                report.answer(Answer::Hit, Tier::L2);
                return (shape.rebuild(value), report.served());
            }
            // A stale entry is a miss here; the claim reads it again, with the fence.
            Lookup::Miss | Lookup::Stale(_) => {}
            Lookup::Unavailable => available = false,
        }
    }
    // A follower's answer: it missed the first tier it read (or found Redis failing).
    let (missed, first_tier) = match (available, tiered) {
        (false, _) => (Answer::Error, Tier::L2),
        (true, Some(_)) => (Answer::Miss, Tier::L1),
        (true, None) => (Answer::Miss, Tier::L2),
    };
    let guard = loop {
        match backend.flights().join(&key) {
            Role::Leader(guard) => break guard,
            Role::Follower(flight) => {
                let since = Instant::now();
                let outcome = flight.wait().await;
                let call = (site, shape, key.as_str());
                match follow(&mut report, since, (missed, first_tier), call, outcome) {
                    Next::Return(ret) => return (ret, report.served()),
                    Next::RunUncached => {
                        let ret = load(&report, shape, body).await;
                        return (ret, report.served());
                    }
                    Next::Retry => {}
                }
            }
        }
    };
    // Across processes: one loader per key, the others wait for its fill. One round trip tells
    // the leader whether a fill landed since (for the tiered path, this is its L2 read: done by
    // the leader, so that an invalidation arriving meanwhile marks the flight stale and keeps
    // what it read out of L1), or gives it the fence generation its fill must carry and tries
    // the lock. The fence is read before the load starts, which is all the fence protocol needs.
    // A value past its ttl that this process may serve should its load fail (fail-safe): only
    // one the claim read together with the fence, never what an earlier read saw.
    let mut stale = None;
    let permit = if available {
        let claimed = claim::<S::Value>(site, redis, &key, |_| true, &mut stale).await;
        match claimed {
            Claimed::Hit(value, remaining, waited) => {
                // Coalesced only when the wait ended in the other process's fill; a waiter
                // that then loads itself (nothing filled, or it gave up) did not.
                if let Some(since) = waited {
                    report.coalesced(Scope::Cluster, since);
                }
                // Found at once, an L2 hit; found after waiting for another process's load, a
                // miss that load answered.
                let answer = if waited.is_some() {
                    Answer::Miss
                } else {
                    Answer::Hit
                };
                report.answer(answer, Tier::L2);
                share(
                    guard,
                    &key,
                    &value,
                    l1.as_ref(),
                    remaining,
                    waited.is_none(),
                );
                return (shape.rebuild(value), report.served());
            }
            Claimed::Load(permit) => {
                // With a stale value at hand the answer waits for the load: miss or stale.
                if stale.is_none() {
                    report.answer(Answer::Miss, Tier::L2);
                }
                Some(permit)
            }
            Claimed::Unavailable => {
                report.answer(Answer::Error, Tier::L2);
                None
            }
        }
    } else {
        report.answer(Answer::Error, Tier::L2);
        None
    };
    // From here the lock (if held) is renewed while the body runs, and released by its guard
    // should the body panic or this future be dropped.
    let (ret, permit) = match (stale, permit) {
        (Some(stale), Some(permit)) => {
            match fail_safe::load_or_stale(site, redis, &key, &report, shape, body, stale, permit)
                .await
            {
                Ending::Stale(value, fresh) => {
                    report.answer(Answer::Stale, Tier::L2);
                    share(guard, &key, &value, l1.as_ref(), fresh, false);
                    return (shape.rebuild(value), report.served());
                }
                Ending::Filled(value, fresh) => {
                    // A miss that another process's load answered.
                    report.answer(Answer::Miss, Tier::L2);
                    share(guard, &key, &value, l1.as_ref(), fresh, false);
                    return (shape.rebuild(value), report.served());
                }
                Ending::Returned(ret, permit) => {
                    report.answer(Answer::Miss, Tier::L2);
                    (ret, permit)
                }
            }
        }
        (_, permit) => (load(&report, shape, body).await, permit),
    };
    match shape.produced(&ret) {
        Produced::Value(value) => {
            let fresh = site.fill_ttl();
            let current = match permit {
                Some(permit) => fill(site, redis, &key, value, permit, fresh).await,
                None => true,
            };
            // A fill the fence refused loaded across an invalidation: callers get the value
            // (they asked before the invalidation returned), L1 does not.
            let l1 = l1.as_ref().filter(|_| current);
            share(guard, &key, value, l1, fresh, false);
        }
        produced => {
            let outcome = match produced {
                Produced::Absent => Outcome::Absent,
                _ => Outcome::Failed,
            };
            // This process's followers first; then free the key at once, waking other
            // processes' waiters.
            guard.complete(outcome, || {});
            if let Some(LoadPermit {
                lock: Some(lock), ..
            }) = permit
            {
                lock.release().await;
            }
        }
    }
    (ret, report.served())
}

/// The value of a hit in the L1 of the site's tiered backend, reported, or `None` for anything
/// else (an L1 miss, L1 not in use, another kind of backend), which the full path then handles
/// from the start; see `local::memory_hit`.
#[inline]
pub(super) fn l1_hit<R, S: ReturnShape<R>>(
    site: &'static Site,
    resolved: &'static Resolved,
    key: &CacheKey,
) -> Option<S::Value> {
    let backend = resolved.backend.as_ref().filter(|_| key.is_usable())?;
    let (_, Some(tiered)) = backend.remote()? else {
        return None;
    };
    // L1 is usable only in an epoch of a live bus subscription; see `backend::tiered::bus`.
    let l1 = L1Slot::new(tiered, tiered.l1_epoch()?, site);
    let value = l1.get::<S::Value>(site, key)?;
    Report::start(site, &resolved.meters).answer(Answer::Hit, Tier::L1);
    Some(value)
}

/// A value past its ttl and within its fail-safe window, with the times it was written with
/// and the bytes it was read from (a write-back replaces only those).
pub(super) struct Stale<V> {
    pub(super) value: V,
    pub(super) times: Times,
    pub(super) bytes: Vec<u8>,
}

/// What a leader may do after its claim: load, with the fence generation its fill must carry
/// and, unless it gave up waiting for another process, the lock.
pub(super) struct LoadPermit {
    fence: Option<i64>,
    pub(super) lock: Option<HeldLock>,
}

pub(super) enum Claimed<V> {
    /// A fill, with the time its entry has left, and when the leader began waiting for it if it
    /// waited for another process's load.
    Hit(V, Duration, Option<Instant>),
    Load(LoadPermit),
    /// Redis failed: load without touching it again in this call.
    Unavailable,
}

/// The leader's claim: someone's fill, or the lock. While another process holds the lock, waits
/// to be woken by its fill or release (`backend::redis::wake`), claiming again each time, for at
/// most [`WAIT_LIMIT`]; then loads without the lock. A fill that `accept` refuses (a tagged
/// entry of old generations, the stale entry a refill replaces) is reloaded over, as an
/// unreadable one is.
pub(super) async fn claim<V: DeserializeOwned>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    accept: impl Fn(&V) -> bool,
    stale: &mut Option<Stale<V>>,
) -> Claimed<V> {
    let store = redis.store();
    let started = Instant::now();
    let mut over_unreadable = false;
    let mut waiting = None;
    let mut waited_since = None;
    let mut poll = Duration::from_millis(2);
    loop {
        // Listening before the claim: a wake-up published after it is not missed.
        let wake = waiting.as_ref().map(crate::backend::Waiting::listen);
        let (fence, token) = match store.claim(key.as_str(), LEASE, over_unreadable).await {
            Ok(Claim::Filled(bytes)) => match decode::<V>(site, redis, key, &bytes) {
                Lookup::Hit(value, remaining) if accept(&value) => {
                    return Claimed::Hit(value, remaining, waited_since);
                }
                // Unreadable or past its time: reload over it, under the fence and the lock.
                _ => {
                    over_unreadable = true;
                    continue;
                }
            },
            Ok(Claim::Load { fence, token, over }) => {
                match over.map(|bytes| decode::<V>(site, redis, key, &bytes)) {
                    // Another process's fill, landed while this caller waited over a stale or
                    // unreadable entry: served, as a fill found by a plain claim is.
                    Some(Lookup::Hit(value, remaining)) if accept(&value) => {
                        if let Some(token) = token {
                            HeldLock::new(store, key.as_str(), token).release().await;
                        }
                        return Claimed::Hit(value, remaining, waited_since);
                    }
                    // Only what this claim read with the fence may be served should the load
                    // fail: an entry an earlier claim saw may have been invalidated since.
                    Some(Lookup::Stale(found)) if accept(&found.value) => *stale = Some(found),
                    _ => *stale = None,
                }
                (fence, token)
            }
            Err(_) => return Claimed::Unavailable,
        };
        if let Some(token) = token {
            let lock = Some(HeldLock::new(store, key.as_str(), token));
            return Claimed::Load(LoadPermit { fence, lock });
        }
        if started.elapsed() >= WAIT_LIMIT {
            return Claimed::Load(LoadPermit { fence, lock: None });
        }
        // Another process holds the lock: its fill, read by the next claim, may be what this
        // caller wants (a refill's fresh entry, a readable one over an unreadable one).
        over_unreadable = false;
        match wake {
            // Registered now; claim again at once, listening.
            None => {
                waiting = Some(store.wait_for_holder(key.as_str()));
                waited_since = Some(Instant::now());
            }
            Some(wake) => {
                let wait = if store.wakeups_up() {
                    SAFETY_POLL
                } else {
                    // No subscription to be woken through: poll, backing off.
                    poll = (poll * 2).min(Duration::from_millis(50));
                    poll
                };
                let _ = tokio::time::timeout(wait, wake).await;
            }
        }
    }
}

/// A tiered backend's L1 as one call sees it: the epoch it started in.
pub(super) struct L1Slot<'a> {
    tiered: &'a TieredBackend,
    epoch: u64,
    site_ttl: Duration,
    /// The site's `l1_ttl`: how long this process may serve a copy it cannot re-check.
    l1_ttl: Option<Duration>,
}

impl<'a> L1Slot<'a> {
    pub(super) fn new(tiered: &'a TieredBackend, epoch: u64, site: &Site) -> Self {
        L1Slot {
            tiered,
            epoch,
            site_ttl: site.ttl(),
            l1_ttl: site.l1_ttl(),
        }
    }

    fn get<V: 'static + Clone>(&self, site: &Site, key: &CacheKey) -> Option<V> {
        self.tiered.l1_get(key, self.epoch, |any| {
            downcast::<V>(site, key.as_str(), any)
        })
    }

    /// What `read` makes of the L1 value under `key`, if it was stored in this call's epoch.
    pub(super) fn read<T>(
        &self,
        key: &CacheKey,
        read: impl FnOnce(&AnyValue) -> Option<T>,
    ) -> Option<T> {
        self.tiered.l1_get(key, self.epoch, read)
    }

    pub(super) fn tiered(&self) -> &'a TieredBackend {
        self.tiered
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(super) fn insert(&self, key: &CacheKey, value: AnyValue, l2_remaining: Duration) {
        self.tiered.l1_insert(
            key,
            (value, None),
            l2_remaining,
            self.l1_entry_ttl(),
            self.epoch,
        );
    }

    /// [`insert`](Self::insert), weighed as `weighed` (the cached value `value` wraps).
    pub(super) fn insert_weighing(
        &self,
        key: &CacheKey,
        value: AnyValue,
        weighed: &(dyn std::any::Any + Send + Sync),
        l2_remaining: Duration,
    ) {
        self.tiered.l1_insert(
            key,
            (value, Some(weighed)),
            l2_remaining,
            self.l1_entry_ttl(),
            self.epoch,
        );
    }

    /// The site's ttl, or its `l1_ttl` if shorter.
    fn l1_entry_ttl(&self) -> Duration {
        self.l1_ttl
            .map_or(self.site_ttl, |l1| l1.min(self.site_ttl))
    }
}

/// Completes the flight with `value` (`found` in L2 without any load, or loaded) and, unless
/// the flight went stale, puts it in L1.
pub(super) fn share<V: 'static + Clone + Send + Sync>(
    guard: crate::flight::LeaderGuard<'_>,
    key: &CacheKey,
    value: &V,
    l1: Option<&L1Slot<'_>>,
    l2_remaining: Duration,
    found: bool,
) {
    let shared: AnyValue = Arc::new(value.clone());
    let stored = Arc::clone(&shared);
    let outcome = if found {
        Outcome::Found(shared)
    } else {
        Outcome::Value(shared)
    };
    guard.complete(outcome, || {
        if let Some(l1) = l1 {
            l1.insert(key, stored, l2_remaining);
        }
    });
}

pub(super) enum Lookup<V> {
    /// A hit, with the time its L2 entry is still fresh.
    Hit(V, Duration),
    /// Past its ttl, within its fail-safe window (a site with `stale` only): a miss whose
    /// value may be served if the load fails.
    Stale(Stale<V>),
    /// A miss (or an unreadable entry, which the next fill replaces).
    Miss,
    /// Redis failed, timed out or is behind an open breaker: a miss that should not touch
    /// Redis again in this call (fail open).
    Unavailable,
}

pub(super) async fn read<V: DeserializeOwned>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
) -> Lookup<V> {
    match redis.store().get(key.as_str()).await {
        Ok(Some(bytes)) => decode(site, redis, key, &bytes),
        Ok(None) => Lookup::Miss,
        Err(_) => Lookup::Unavailable,
    }
}

/// An entry's bytes as a hit, or a miss if they are unreadable (logged), written for another
/// key (copied there) or past their time; past their ttl but within the site's fail-safe
/// window, stale.
pub(super) fn decode<V: DeserializeOwned>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    bytes: &[u8],
) -> Lookup<V> {
    let key_hash = redis.entry_hash(key.as_str());
    match envelope::decode::<V, Bincode>(bytes, site.version(), key_hash) {
        // Redis' PX expires entries; the envelope's own bound also catches an entry whose key
        // TTL was lost (a PERSIST, a restore from a dump). One clock reading decides both
        // whether and how long.
        Ok((header, value)) => {
            let now = redis.now_ms();
            match header.fresh_remaining(now) {
                Some(remaining) => Lookup::Hit(value, remaining),
                None if !site.stale().is_zero() && header.remaining(now).is_some() => {
                    Lookup::Stale(Stale {
                        value,
                        times: header.times(),
                        bytes: bytes.to_vec(),
                    })
                }
                None => Lookup::Miss,
            }
        }
        Err(error) => {
            static GATE: LogGate = LogGate::new();
            if let Some(suppressed) = GATE.admit() {
                tracing::warn!(
                    function = site.function(),
                    key = key.as_str(),
                    %error,
                    suppressed,
                    "unreadable cache entry; treating it as a miss (the next fill replaces it)"
                );
            }
            Lookup::Miss
        }
    }
}

/// Stores `value` in Redis under the fence, fresh for `fresh` (the site's
/// [`fill_ttl`](Site::fill_ttl)) and kept for the site's fail-safe window after, releasing the
/// lock; false only if the fence refused it (an invalidation landed during the load).
pub(super) async fn fill<V: Serialize>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    value: &V,
    permit: LoadPermit,
    fresh: Duration,
) -> bool {
    let now = redis.now_ms();
    let fresh_until_ms = now.saturating_add(millis(fresh));
    let times = Times {
        created_at_ms: now,
        fresh_until_ms,
        stale_until_ms: fresh_until_ms.saturating_add(millis(site.stale())),
    };
    // Redis failing is no refusal: the value is served and may go into L1.
    fill_with(site, redis, key, value, permit, (times, now), None)
        .await
        .unwrap_or(true)
}

/// Milliseconds of `duration`, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// [`fill`] with the entry's `times` given, read at `now_ms`: Redis keeps it until its stale
/// time; with `over`, only if the entry still holds those bytes. `Some(false)`: the fence (or
/// `over`) refused it; `None`: Redis failed; a value that cannot be encoded is not stored, and
/// counts as stored (it is returned, and L1 may keep it), or with `over` as refused.
pub(super) async fn fill_with<V: Serialize>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    value: &V,
    permit: LoadPermit,
    (times, now_ms): (Times, u64),
    over: Option<&[u8]>,
) -> Option<bool> {
    let kept = Duration::from_millis(times.stale_until_ms.saturating_sub(now_ms).max(1));
    let key_hash = redis.entry_hash(key.as_str());
    let LoadPermit { fence, lock, .. } = permit;
    match envelope::encode::<V, Bincode>(value, site.version(), key_hash, times) {
        Ok(bytes) => {
            let token = lock.as_ref().map(HeldLock::token);
            let filled = redis
                .store()
                .fill(key.as_str(), fence, &bytes, kept, token, over)
                .await;
            match (filled, lock) {
                (Ok(stored), lock) => {
                    if let Some(lock) = lock {
                        lock.released_by_fill();
                    }
                    Some(stored)
                }
                // The lock's guard releases it.
                (Err(_), _) => None,
            }
        }
        Err(error) => {
            static GATE: LogGate = LogGate::new();
            if let Some(suppressed) = GATE.admit() {
                tracing::warn!(
                    function = site.function(),
                    %error,
                    suppressed,
                    "value could not be encoded; it is returned but not cached"
                );
            }
            if let Some(lock) = lock {
                lock.release().await;
            }
            // A write-back over an entry that cannot be stored cannot show that the fence still
            // holds either: refused.
            Some(over.is_none())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::test_redis_server::RedisServer;
    use crate::key::KeyBuilder;

    static SITE: Site = Site::new("t", "t", "redis", 60_000, 0);

    #[tokio::test]
    async fn an_envelope_past_its_stale_time_is_a_miss_even_without_a_key_ttl() {
        let server = RedisServer::start();
        let redis = RedisBackend::builder()
            .url(server.url())
            .build()
            .expect("valid configuration");
        let key = KeyBuilder::new().lit("k").finish();
        let now = redis.now_ms();
        let envelope = |stale_until_ms| {
            let times = Times {
                created_at_ms: now - 10_000,
                fresh_until_ms: stale_until_ms,
                stale_until_ms,
            };
            let key_hash = redis.entry_hash("k");
            envelope::encode::<u64, Bincode>(&7, 0, key_hash, times).expect("encodes")
        };
        let ttl = Duration::from_secs(60);
        let fill = |bytes: Vec<u8>| {
            let store = Arc::clone(redis.store());
            async move { store.fill("k", None, &bytes, ttl, None, None).await }
        };
        assert!(fill(envelope(now + 60_000)).await.expect("up"));
        assert!(matches!(
            read::<u64>(&SITE, &redis, &key).await,
            Lookup::Hit(7, _)
        ));
        assert!(fill(envelope(now - 1)).await.expect("up"));
        assert!(matches!(
            read::<u64>(&SITE, &redis, &key).await,
            Lookup::Miss
        ));
    }
}
