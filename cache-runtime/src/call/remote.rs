//! The call path of a remote (Redis) backend: read the envelope, and on a miss load once per
//! key in this process (single-flight) and once across processes (the Redis lock), then fill
//! with the fence generation read before the load.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::body::{Body, Detachable, Inline};

use super::follow::{downcast, follow, Next};
use super::local::load;
use super::report::{Counting, Report, Served};
use crate::backend::{Claim, HeldLock, RedisBackend, Stored, TieredBackend, LEASE, SAFETY_POLL};
use crate::envelope::{self, Bincode, Times};
use crate::flight::{Outcome, Role};
use crate::key::canonical::AsHitKey;
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
    serve(site, shape, key, Inline(body), Counting::Here)
        .await
        .0
}

/// [`cached_remote`], saying how the call was served, for the HTTP layer: a hit is left for
/// it to count ([`Served::uncounted_hit`]), since it judges the entry's age after the read.
#[cfg(feature = "axum")]
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
    serve(site, shape, key, Inline(body), Counting::HitByCaller).await
}

/// [`cached_remote`] for a site with `refresh` or `timeout`, whose body may outlive the call.
pub(crate) async fn cached_remote_detached<R, S, F>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    body: F,
) -> R
where
    R: Send + 'static,
    S: ReturnShape<R>,
    S::Value: PortableValue,
    F: Future<Output = R> + Send + 'static,
{
    serve(site, shape, key, Detachable(body), Counting::Here)
        .await
        .0
}

/// The remote call path, for a body that may or may not outlive the call.
async fn serve<R, S, B>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    body: B,
    counting: Counting,
) -> (R, Served)
where
    S: ReturnShape<R>,
    S::Value: PortableValue,
    B: Body<R>,
{
    let resolved = registry::resolve(site);
    let backend = resolved.backend.as_ref().filter(|_| key.is_usable());
    let remote = backend.map(|backend| (backend, backend.remote()));
    let Some((backend, Some((redis, tiered)))) = remote else {
        if remote.is_some() {
            return super::local::cached_served(site, shape, key, body.run(), counting).await;
        }
        let mut report = Report::start(site, &resolved.meters);
        report.answer(Answer::Bypass, Tier::None);
        let ret = load(&report, shape, body.run()).await;
        return (ret, report.served());
    };
    let mut report = Report::start_counting(site, &resolved.meters, counting);
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
            Lookup::Hit(value, remaining) => {
                report.answer(Answer::Hit, Tier::L2);
                refresh_if_due(site, shape, &key, remaining, body);
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
                // The flight may be a refresh-ahead's, over an entry still fresh in L2: a
                // caller whose L1 copy ended meanwhile (`l1_ttl`) reads that entry, a hit,
                // rather than wait for the refresh's load.
                if tiered.is_some() && available && site.refreshes_ahead() {
                    match read::<S::Value>(site, redis, &key).await {
                        Lookup::Hit(value, _) => {
                            report.answer(Answer::Hit, Tier::L2);
                            return (shape.rebuild(value), report.served());
                        }
                        Lookup::Unavailable => available = false,
                        Lookup::Miss | Lookup::Stale(_) => {}
                    }
                }
                let since = Instant::now();
                let outcome = match site.soft_timeout().filter(|_| available) {
                    Some(soft) => match tokio::time::timeout(soft, flight.wait()).await {
                        Ok(outcome) => outcome,
                        // The leader's load runs long: a stale value in Redis is this caller's
                        // answer, as it is the leader's (an invalidated entry is gone, and so
                        // never read here).
                        Err(_) => match read::<S::Value>(site, redis, &key).await {
                            Lookup::Stale(found) => {
                                report.answer(Answer::Stale, Tier::L2);
                                return (shape.rebuild(found.value), report.served());
                            }
                            Lookup::Hit(value, _) => {
                                report.answer(Answer::Miss, Tier::L2);
                                return (shape.rebuild(value), report.served());
                            }
                            Lookup::Miss | Lookup::Unavailable => flight.wait().await,
                        },
                    },
                    None => flight.wait().await,
                };
                let call = (site, shape, key.as_str());
                match follow(&mut report, since, (missed, first_tier), call, outcome) {
                    Next::Return(ret) => return (ret, report.served()),
                    Next::RunUncached => {
                        let ret = load(&report, shape, body.run()).await;
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
                let outcome = if waited.is_none() {
                    Outcome::Found
                } else {
                    Outcome::Value
                };
                share(guard, &key, &value, l1.as_ref(), remaining, outcome);
                if waited.is_none() {
                    refresh_if_due(site, shape, &key, remaining, body);
                }
                return (shape.rebuild(value), report.served());
            }
            Claimed::Stale(_) => {
                // Another process's load ran past the soft timeout: the stale value the claim
                // read with the fence, to this caller and its followers, kept nowhere.
                if let Some(found) = stale.take() {
                    report.answer(Answer::Stale, Tier::L2);
                    let shared: AnyValue = Arc::new(found.value.clone());
                    guard.complete(Outcome::Stale(shared), || {});
                    return (shape.rebuild(found.value), report.served());
                }
                report.answer(Answer::Miss, Tier::L2);
                None
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
            let leader = (site, redis, key, l1, guard);
            let ret = body
                .load_with_stale(leader, &mut report, shape, stale, permit)
                .await;
            return (ret, report.served());
        }
        (_, permit) => (load(&report, shape, body.run()).await, permit),
    };
    let filled = settle(
        site,
        (redis, &key),
        l1.as_ref(),
        guard,
        shape.produced(&ret),
        permit,
    )
    .await;
    if filled == Filled::Failed {
        report.store_failed();
    }
    (ret, report.served())
}

/// What became of a leader's load in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Filled {
    /// Filled, refused by the fence, or nothing to fill (not for Redis to say).
    Done,
    /// Redis failed the fill: the value was served (and may be in L1), but is not stored.
    Failed,
}

/// Ends a leader's load: a value is filled under the permit, given to the followers and, unless
/// the fence refused it (it was loaded across an invalidation: callers get it, since they asked
/// before the invalidation returned, but L1 does not), kept in L1; nothing to cache ends the
/// flight and frees the key at once, waking other processes' waiters.
/// (`produced`: what the shape says of the load's return; not the return itself, which a task
/// holding it across the fill would need to be `Sync`.)
pub(super) async fn settle<V: PortableValue>(
    site: &Site,
    (redis, key): (&RedisBackend, &CacheKey),
    l1: Option<&L1Slot<'_>>,
    guard: crate::flight::LeaderGuard<'_>,
    produced: Produced<'_, V>,
    permit: Option<LoadPermit>,
) -> Filled {
    match produced {
        Produced::Value(value) => {
            let fresh = site.fill_ttl();
            let filled = match permit {
                Some(permit) => fill_checked(site, redis, key, value, permit, fresh, None).await,
                None => Some(true),
            };
            // Redis failing is no refusal: the value is served and may go into L1.
            let current = filled.unwrap_or(true);
            share(
                guard,
                key,
                value,
                l1.filter(|_| current),
                fresh,
                Outcome::Value,
            );
            if filled.is_some() {
                Filled::Done
            } else {
                Filled::Failed
            }
        }
        produced => {
            let outcome = match produced {
                Produced::Absent => Outcome::Absent,
                _ => Outcome::Failed,
            };
            // This process's followers first; then free the key at once.
            guard.complete(outcome, || {});
            if let Some(permit) = permit {
                permit.release().await;
            }
            Filled::Done
        }
    }
}

/// After a hit on an entry still fresh for `remaining`: if it is due, a refresh-ahead with
/// `body` (which the site's expansion lets outlive the call; otherwise nothing happens).
fn refresh_if_due<R, S, B>(
    site: &'static Site,
    shape: S,
    key: &CacheKey,
    remaining: Duration,
    body: B,
) where
    S: ReturnShape<R>,
    S::Value: PortableValue,
    B: Body<R>,
{
    if site.refresh_due(remaining) {
        body.refresh(site, shape, key);
    }
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
    l1_hit_due::<R, S>(site, resolved, key).map(|(value, _)| value)
}

/// [`l1_hit`], and whether the entry is due for a refresh-ahead.
#[inline]
pub(super) fn l1_hit_due<R, S: ReturnShape<R>>(
    site: &'static Site,
    resolved: &'static Resolved,
    key: &CacheKey,
) -> Option<(S::Value, bool)> {
    let backend = resolved.backend.as_ref().filter(|_| key.is_usable())?;
    // Not `remote()`, which also starts the bus: a hit needs it started already (below).
    let tiered = backend.tiered()?;
    // L1 is usable only in an epoch of a live bus subscription; see `backend::tiered::bus`.
    let epoch = tiered.l1_epoch()?;
    let found = tiered.l1_get_due(key, epoch, |any| {
        downcast::<S::Value>(site, key.as_str(), any)
    })?;
    Report::hit(site, &resolved.meters, Tier::L1);
    Some(found)
}

/// [`l1_hit`] by a hit key (`key::canonical`): the text is never rendered. Unless
/// `serve_due`, `None` for an entry due for a refresh-ahead (see `memory_hit_by_form`).
#[inline(always)]
pub(super) fn l1_hit_by_form<R, S: ReturnShape<R>>(
    site: &'static Site,
    resolved: &'static Resolved,
    key: &(impl AsHitKey + ?Sized),
    serve_due: bool,
) -> Option<S::Value> {
    let tiered = resolved.backend.as_ref()?.tiered()?;
    let epoch = tiered.l1_epoch()?;
    let (found, due) =
        tiered.l1_get_hit_due(key, epoch, |any| downcast::<S::Value>(site, key, any))?;
    if due && !serve_due {
        return None;
    }
    Report::hit(site, &resolved.meters, Tier::L1);
    Some(found)
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

impl LoadPermit {
    /// A permit with the lock held.
    pub(super) fn new(fence: Option<i64>, lock: HeldLock) -> Self {
        LoadPermit {
            fence,
            lock: Some(lock),
        }
    }

    /// Frees the key for other loaders at once (waking their waiters), after a load that left
    /// nothing to fill.
    pub(super) async fn release(self) {
        if let Some(lock) = self.lock {
            lock.release().await;
        }
    }
}

pub(super) enum Claimed<V> {
    /// A fill, with the time its entry has left, and when the leader began waiting for it if it
    /// waited for another process's load.
    Hit(V, Duration, Option<Instant>),
    Load(LoadPermit),
    /// Another process's load ran past the site's soft timeout, and the claim read a stale
    /// value with the fence: serve it (with the fence, if the caller loads after all).
    Stale(LoadPermit),
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
        // A stale value at hand, read with this fence: past the soft timeout it is the answer.
        let soft = site.soft_timeout().filter(|_| stale.is_some());
        if soft.is_some_and(|soft| started.elapsed() >= soft) {
            return Claimed::Stale(LoadPermit { fence, lock: None });
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
                // Awake at the soft timeout, not after it.
                let wait = soft.map_or(wait, |soft| {
                    wait.min(soft.saturating_sub(started.elapsed()))
                });
                let _ = tokio::time::timeout(wait, wake).await;
            }
        }
    }
}

/// A tiered backend's L1 as one call sees it: the epoch it started in.
pub(super) struct L1Slot<'a> {
    tiered: &'a TieredBackend,
    epoch: u64,
    /// The site: its ttl, its `l1_ttl` (how long this process may serve a copy it cannot
    /// re-check) and its refresh-ahead.
    site: &'a Site,
}

impl<'a> L1Slot<'a> {
    pub(super) fn new(tiered: &'a TieredBackend, epoch: u64, site: &'a Site) -> Self {
        L1Slot {
            tiered,
            epoch,
            site,
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
        read: impl FnOnce(&Stored) -> Option<T>,
    ) -> Option<T> {
        self.tiered.l1_get(key, self.epoch, read)
    }

    pub(super) fn tiered(&self) -> &'a TieredBackend {
        self.tiered
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Puts `value` in L1 for what its L2 entry has left at most, due for a refresh-ahead
    /// when the L2 entry is.
    pub(super) fn insert(&self, key: &CacheKey, value: impl Into<Stored>, l2_remaining: Duration) {
        let refresh_in = self.site.refresh_in(l2_remaining);
        self.tiered.l1_insert(
            key,
            (value, None),
            l2_remaining,
            (self.l1_entry_ttl(), refresh_in),
            self.epoch,
        );
    }

    /// [`insert`](Self::insert), weighed as `weighed` (the cached value `value` wraps).
    pub(super) fn insert_weighing(
        &self,
        key: &CacheKey,
        value: impl Into<Stored>,
        weighed: &(dyn std::any::Any + Send + Sync),
        l2_remaining: Duration,
    ) {
        self.tiered.l1_insert(
            key,
            (value, Some(weighed)),
            l2_remaining,
            (self.l1_entry_ttl(), None),
            self.epoch,
        );
    }

    /// The site's ttl, or its `l1_ttl` if shorter.
    fn l1_entry_ttl(&self) -> Duration {
        let ttl = self.site.ttl();
        self.site.l1_ttl().map_or(ttl, |l1| l1.min(ttl))
    }
}

/// Completes the flight with `value` as `outcome` (`Found` in L2 without any load, `Value`
/// loaded, `Stale` served by fail-safe) and, unless the flight went stale, puts it in L1.
pub(super) fn share<V: 'static + Clone + Send + Sync>(
    guard: crate::flight::LeaderGuard<'_>,
    key: &CacheKey,
    value: &V,
    l1: Option<&L1Slot<'_>>,
    l2_remaining: Duration,
    outcome: fn(AnyValue) -> Outcome,
) {
    let shared = Arc::new(value.clone());
    // Typed, so that L1 holds an `Arc` value itself, not a holder of it.
    let stored = Stored::of(&shared);
    guard.complete(outcome(shared), || {
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
    fill_announcing(site, redis, key, value, permit, fresh, None).await
}

/// [`fill`], and if it is stored, `announce` (a tiered bus's channel and message) published
/// with it, so that other processes drop the copies they hold of the entry it replaced.
pub(super) async fn fill_announcing<V: Serialize>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    value: &V,
    permit: LoadPermit,
    fresh: Duration,
    announce: Option<&(String, String)>,
) -> bool {
    // Redis failing is no refusal: the value is served and may go into L1.
    fill_checked(site, redis, key, value, permit, fresh, announce)
        .await
        .unwrap_or(true)
}

/// [`fill_announcing`], telling Redis failing (`None`) from the fence refusing (`Some(false)`).
pub(super) async fn fill_checked<V: Serialize>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    value: &V,
    permit: LoadPermit,
    fresh: Duration,
    announce: Option<&(String, String)>,
) -> Option<bool> {
    let now = redis.now_ms();
    let fresh_until_ms = now.saturating_add(millis(fresh));
    let times = Times {
        created_at_ms: now,
        fresh_until_ms,
        stale_until_ms: fresh_until_ms.saturating_add(millis(site.stale())),
    };
    fill_with(
        site,
        redis,
        key,
        value,
        permit,
        (times, now),
        (None, announce),
    )
    .await
}

/// Milliseconds of `duration`, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// [`fill`] with the entry's `times` given, read at `now_ms`: Redis keeps it until its stale
/// time; with `over`, only if the entry still holds those bytes; with `announce`, published
/// if stored. `Some(false)`: the fence (or
/// `over`) refused it; `None`: Redis failed; a value that cannot be encoded is not stored, and
/// counts as stored (it is returned, and L1 may keep it), or with `over` as refused.
pub(super) async fn fill_with<V: Serialize>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    value: &V,
    permit: LoadPermit,
    (times, now_ms): (Times, u64),
    (over, announce): (Option<&[u8]>, Option<&(String, String)>),
) -> Option<bool> {
    let kept = Duration::from_millis(times.stale_until_ms.saturating_sub(now_ms).max(1));
    let key_hash = redis.entry_hash(key.as_str());
    let LoadPermit { fence, lock, .. } = permit;
    match envelope::encode::<V, Bincode>(value, site.version(), key_hash, times) {
        Ok(bytes) => {
            let token = lock.as_ref().map(HeldLock::token);
            let announce = announce.map(|(channel, message)| (channel.as_str(), message.as_str()));
            let filled = redis
                .store()
                .fill(key.as_str(), fence, &bytes, kept, token, (over, announce))
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
            async move { store.fill("k", None, &bytes, ttl, None, (None, None)).await }
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
