//! The in-process call path of a site with tags: the untagged path (`local.rs`), but every
//! stored value carries its tags' generations as the leader captured them before its load, and
//! is served only while they are current (`backend/tags.rs`). A separate path, so that untagged
//! sites keep their hit path exactly as it was.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use super::local::{load, memory_of};
use super::report::Report;
use crate::backend::{tag_invalidations, MemoryBackend, Stored};
use crate::flight::{Outcome, Role};
use crate::key::CacheKey;
use crate::observe::{Answer, Scope, Tier};
use crate::registry;
use crate::shape::{Downcast, Produced, ReturnShape};
use crate::site::Site;

/// A value with the generations of its entry's tags (in the order of the site's tags), as a
/// memory backend or a tiered backend's L1 holds it, and as a leader shares it.
pub(crate) struct Tagged<V> {
    pub(crate) generations: Box<[u64]>,
    /// [`tag_invalidations`] before the generations were captured: a follower takes the value
    /// only if no tag invalidation happened since.
    pub(crate) seen: u64,
    pub(crate) value: V,
}

impl<V> Tagged<V> {
    /// Whether a follower may take this value from its leader: no tag was invalidated since the
    /// leader captured its generations. (A tag invalidation cannot detach the flights carrying
    /// the tag, since nothing lists them; this asks instead.)
    pub(crate) fn shareable(&self) -> bool {
        tag_invalidations() == self.seen
    }
}

/// What a follower of a tagged flight does with the leader's outcome.
pub(super) enum TaggedNext<V> {
    Value(V),
    Absent,
    RunUncached,
    Retry,
}

/// A tagged leader's outcome, for one follower.
pub(super) fn follow_tagged<V: 'static + Clone>(
    site: &Site,
    key: &str,
    outcome: Outcome,
) -> TaggedNext<V> {
    match outcome {
        Outcome::Value(any) | Outcome::Found(any) | Outcome::Stale(any) => {
            match downcast_tagged::<V>(site, key, &*any) {
                Some(tagged) if tagged.shareable() => TaggedNext::Value(tagged.value.clone()),
                // Loaded across a tag invalidation: look again, and lead if need be.
                Some(_) => TaggedNext::Retry,
                None => TaggedNext::RunUncached,
            }
        }
        Outcome::Absent => TaggedNext::Absent,
        Outcome::Failed => TaggedNext::RunUncached,
        Outcome::Abandoned => TaggedNext::Retry,
    }
}

/// The tagged value under `any` (the value: `&*any` of an `AnyValue`, as for `downcast`);
/// another type is a miss, logged once per site.
pub(super) fn downcast_tagged<'a, V: 'static>(
    site: &Site,
    key: &str,
    any: &'a (impl Downcast + ?Sized),
) -> Option<&'a Tagged<V>> {
    debug_assert!(
        super::follow::not_a_holder::<Tagged<V>>(any.as_any()),
        "an `AnyValue` given as the value"
    );
    let tagged = any.downcast_ref::<Tagged<V>>();
    if tagged.is_none() {
        site.warn_type_mismatch(key, std::any::type_name::<Tagged<V>>());
    }
    tagged
}

/// Runs an async `#[cached(tags(...))]` function on a memory backend.
pub(crate) async fn cached_tagged<R, S, F>(
    site: &'static Site,
    shape: S,
    key: CacheKey,
    tags: &[CacheKey],
    body: F,
) -> R
where
    S: ReturnShape<R>,
    F: Future<Output = R>,
{
    let resolved = registry::resolve(site);
    let mut report = Report::start(site, &resolved.meters);
    let usable = tags.iter().all(CacheKey::is_usable);
    let Some((backend, memory)) = memory_of(resolved, &key).filter(|_| usable) else {
        report.answer(Answer::Bypass, Tier::None);
        let ret = load(&report, shape, body).await;
        return ret;
    };
    let guard = loop {
        if let Some(value) = read::<S::Value>(memory, site, &key, tags) {
            report.answer(Answer::Hit, Tier::Memory);
            return shape.rebuild(value);
        }
        match backend.flights().join(&key) {
            Role::Leader(guard) => {
                if let Some(value) = read::<S::Value>(memory, site, &key, tags) {
                    guard.complete(Outcome::Abandoned, || {});
                    report.answer(Answer::Hit, Tier::Memory);
                    return shape.rebuild(value);
                }
                break guard;
            }
            Role::Follower(flight) => {
                let since = Instant::now();
                let outcome = flight.wait().await;
                let next = match follow_tagged::<S::Value>(site, key.as_str(), outcome) {
                    TaggedNext::Value(value) => Some(shape.rebuild(value)),
                    TaggedNext::Absent => shape.absent(),
                    TaggedNext::RunUncached => {
                        report.answer(Answer::Miss, Tier::Memory);
                        let ret = load(&report, shape, body).await;
                        return ret;
                    }
                    TaggedNext::Retry => None,
                };
                if let Some(ret) = next {
                    report.coalesced(Scope::Process, since);
                    report.answer(Answer::Miss, Tier::Memory);
                    return ret;
                }
            }
        }
    };
    // Before the body: a tag invalidation from here on leaves these generations behind.
    let seen = tag_invalidations();
    let generations: Box<[u64]> = tags
        .iter()
        .map(|tag| memory.tags().current_or_create(tag.as_str()))
        .collect();
    report.answer(Answer::Miss, Tier::Memory);
    let ret = load(&report, shape, body).await;
    match shape.produced(&ret) {
        Produced::Value(value) => {
            let tagged = Arc::new(Tagged {
                generations,
                seen,
                value: value.clone(),
            });
            let stored = Stored::shared(Arc::clone(&tagged));
            guard.complete(Outcome::Value(tagged), || {
                // The weigher is promised the cached type, not the generations around it.
                memory.insert_weighing(key, stored, value, site.fill_ttl(), 0);
            });
        }
        Produced::Absent => guard.complete(Outcome::Absent, || {}),
        Produced::Failed => guard.complete(Outcome::Failed, || {}),
    }
    ret
}

/// The value under `key` if its tags' generations are all current.
fn read<V: 'static + Clone>(
    memory: &MemoryBackend,
    site: &Site,
    key: &CacheKey,
    tags: &[CacheKey],
) -> Option<V> {
    memory.read(key, |any| {
        let tagged = downcast_tagged::<V>(site, key.as_str(), any)?;
        memory
            .tags()
            .all_current(tags, &tagged.generations, 0)
            .then(|| tagged.value.clone())
    })
}
