//! The Redis and tiered call path of a site with tags: `remote.rs`'s, with the tags'
//! generations (`backend/tags.rs`) captured by the leader before it loads and stored in the
//! payload, `(generations, value)` inside the usual envelope.
//!
//! - Redis alone: a hit is one round trip, the value's `GET` pipelined with the tags'.
//! - Tiered: an L1 entry carries its generations, served while they are the ones this process
//!   learned from L2 in the bus's current epoch; a warm hit costs no round trip. A tag
//!   invalidation travels the bus and makes every process forget the tag's generation.
//! - The leader captures (creating if need be) the generations before its claim, one round
//!   trip; a fill by another process under other generations is loaded over.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::local::load;
use super::remote::{claim, decode, fill, Claimed, L1Slot, LoadPermit, Lookup};
use super::report::Report;
use super::tagged::{downcast_tagged, follow_tagged, Tagged, TaggedNext};
use crate::backend::{tag_invalidations, RedisBackend, Stored};
use crate::flight::{LeaderGuard, Outcome, Role};
use crate::key::CacheKey;
use crate::observe::{Answer, Scope, Tier};
use crate::registry;
use crate::shape::{AnyValue, Produced, ReturnShape};
use crate::site::Site;

/// What a tagged entry's payload is in Redis: its tags' generations, then the value.
type Payload<V> = (Vec<u64>, V);

/// How long a tag's generation key lives in Redis after a capture: twice the site's ttl, at
/// least a minute (each capture extends it, so it outlives the entry its leader stores). One
/// that expires only turns entries into misses.
fn generation_ttl(site: &Site) -> Duration {
    (site.ttl() * 2).max(Duration::from_secs(60))
}

/// Runs an async `#[cached(tags(...))]` function whose backend is remote.
pub(crate) async fn cached_remote_tagged<R, S, F>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    tags: &[CacheKey],
    body: F,
) -> R
where
    S: ReturnShape<R>,
    S::Value: Serialize + DeserializeOwned,
    F: Future<Output = R>,
{
    let resolved = registry::resolve(site);
    let usable = key.is_usable() && tags.iter().all(CacheKey::is_usable);
    let backend = resolved.backend.as_ref().filter(|_| usable);
    let remote = backend.map(|backend| (backend, backend.remote()));
    let Some((backend, Some((redis, tiered)))) = remote else {
        if remote.is_some() {
            return super::tagged::cached_tagged(site, shape, key, tags, body).await;
        }
        let mut report = Report::start(site, &resolved.meters);
        report.answer(Answer::Bypass, Tier::None);
        let ret = load(&report, shape, body).await;
        return ret;
    };
    let mut report = Report::start(site, &resolved.meters);
    let l1 = tiered.and_then(|tiered| Some(L1Slot::new(tiered, tiered.l1_epoch()?, site)));
    if let Some(l1) = &l1 {
        if let Some(value) = l1_read::<S::Value>(l1, site, &key, tags) {
            report.answer(Answer::Hit, Tier::L1);
            return shape.rebuild(value);
        }
    }
    let mut available = true;
    if tiered.is_none() {
        match read::<S::Value>(site, redis, &key, tags).await {
            Lookup::Hit(value, _) => {
                report.answer(Answer::Hit, Tier::L2);
                return shape.rebuild(value);
            }
            Lookup::Miss | Lookup::Stale(_) => {}
            Lookup::Unavailable => available = false,
        }
    }
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
                // The leader read the value from L2: nobody loaded, so this caller had a hit.
                let found = matches!(outcome, Outcome::Found(_));
                let next = match follow_tagged::<S::Value>(site, key.as_str(), outcome) {
                    TaggedNext::Value(value) => Some(shape.rebuild(value)),
                    TaggedNext::Absent => shape.absent(),
                    TaggedNext::RunUncached => {
                        report.answer(missed, first_tier);
                        let ret = load(&report, shape, body).await;
                        return ret;
                    }
                    TaggedNext::Retry => None,
                };
                if let Some(ret) = next {
                    if found {
                        report.answer(Answer::Hit, Tier::L2);
                    } else {
                        report.coalesced(Scope::Process, since);
                        report.answer(missed, first_tier);
                    }
                    return ret;
                }
            }
        }
    };
    // Before the load: a tag invalidation from here on leaves these generations behind, and
    // what this process learns of them is dropped if one arrives while they are read.
    let seen = tag_invalidations();
    let forgotten = l1.as_ref().map(|l1| l1.tiered().tags().forgotten());
    let generations = if available {
        // Redis failed: load uncached, nothing stored (nothing could tell it went stale).
        redis
            .store()
            .capture_tags(tags, generation_ttl(site))
            .await
            .ok()
    } else {
        None
    };
    if let (Some(l1), Some(generations), Some(forgotten)) = (&l1, &generations, forgotten) {
        for (tag, &generation) in tags.iter().zip(generations) {
            l1.tiered()
                .tags()
                .learn(tag.as_str(), generation, l1.epoch(), forgotten);
        }
    }
    let permit = match &generations {
        Some(generations) => {
            let claimed =
                // A tagged site keeps no stale entries (`stale` is refused with `tags`).
                claim::<Payload<S::Value>>(
                    site,
                    redis,
                    &key,
                    |(stored, _)| stored == generations,
                    &mut None,
                )
                .await;
            match claimed {
                Claimed::Hit((_, value), remaining, waited) => {
                    // Coalesced only when the wait ended in the other process's fill.
                    if let Some(since) = waited {
                        report.coalesced(Scope::Cluster, since);
                    }
                    let answer = if waited.is_some() {
                        Answer::Miss
                    } else {
                        Answer::Hit
                    };
                    report.answer(answer, Tier::L2);
                    let shared = Tagged {
                        generations: generations.clone().into_boxed_slice(),
                        seen,
                        value: value.clone(),
                    };
                    let found = waited.is_none();
                    share(guard, &key, shared, l1.as_ref(), remaining, found);
                    return shape.rebuild(value);
                }
                // `Stale` needs a stale value, which a tagged site never keeps.
                Claimed::Load(permit) | Claimed::Stale(permit) => {
                    report.answer(Answer::Miss, Tier::L2);
                    Some(permit)
                }
                Claimed::Unavailable => {
                    report.answer(Answer::Error, Tier::L2);
                    None
                }
            }
        }
        None => {
            report.answer(Answer::Error, Tier::L2);
            None
        }
    };
    let ret = load(&report, shape, body).await;
    match shape.produced(&ret) {
        Produced::Value(value) => {
            let fresh = site.fill_ttl();
            let current = match (permit, &generations) {
                (Some(permit), Some(generations)) => {
                    let payload = (generations.clone(), value.clone());
                    fill(site, redis, &key, &payload, permit, fresh).await
                }
                _ => true,
            };
            // Without generations (Redis failed) nothing goes into L1: nothing could tell
            // whether it went stale.
            let l1 = l1.as_ref().filter(|_| current && generations.is_some());
            let shared = Tagged {
                generations: generations.unwrap_or_default().into_boxed_slice(),
                seen,
                value: value.clone(),
            };
            share(guard, &key, shared, l1, fresh, false);
        }
        produced => {
            let outcome = match produced {
                Produced::Absent => Outcome::Absent,
                _ => Outcome::Failed,
            };
            guard.complete(outcome, || {});
            if let Some(LoadPermit {
                lock: Some(lock), ..
            }) = permit
            {
                lock.release().await;
            }
        }
    }
    ret
}

/// The L1 value under `key` if its generations are the ones this process knows, in the
/// call's epoch.
fn l1_read<V: 'static + Clone>(
    l1: &L1Slot<'_>,
    site: &Site,
    key: &CacheKey,
    tags: &[CacheKey],
) -> Option<V> {
    l1.read(key, |any| {
        let tagged = downcast_tagged::<V>(site, key.as_str(), any)?;
        l1.tiered()
            .tags()
            .all_current(tags, &tagged.generations, l1.epoch())
            .then(|| tagged.value.clone())
    })
}

/// Redis alone: the value and the tags' generations in one round trip; a hit if the entry's
/// generations are all current.
async fn read<V: DeserializeOwned>(
    site: &Site,
    redis: &RedisBackend,
    key: &CacheKey,
    tags: &[CacheKey],
) -> Lookup<V> {
    match redis.store().get_tagged(key.as_str(), tags).await {
        Ok((Some(bytes), current)) => match decode::<Payload<V>>(site, redis, key, &bytes) {
            Lookup::Hit((stored, value), remaining)
                if stored.len() == current.len()
                    && stored
                        .iter()
                        .zip(&current)
                        .all(|(stored, current)| Some(*stored) == *current) =>
            {
                Lookup::Hit(value, remaining)
            }
            _ => Lookup::Miss,
        },
        Ok((None, _)) => Lookup::Miss,
        Err(_) => Lookup::Unavailable,
    }
}

/// Completes the flight with `tagged` and, unless the flight went stale, puts it in L1.
/// `found`: read from L2 without anyone loading (followers count a hit).
fn share<V: 'static + Send + Sync>(
    guard: LeaderGuard<'_>,
    key: &CacheKey,
    tagged: Tagged<V>,
    l1: Option<&L1Slot<'_>>,
    l2_remaining: Duration,
    found: bool,
) {
    let typed = Arc::new(tagged);
    let stored = Stored::shared(Arc::clone(&typed));
    let shared: AnyValue = typed.clone();
    let outcome = if found {
        Outcome::Found(shared)
    } else {
        Outcome::Value(shared)
    };
    guard.complete(outcome, || {
        if let Some(l1) = l1 {
            // The weigher is promised the cached type, not the generations around it.
            l1.insert_weighing(key, stored, &typed.value, l2_remaining);
        }
    });
}
