//! Refilling an entry that is still held but no longer current: the HTTP layer's revalidation
//! of a stale response. Unlike a miss, other callers go on reading the held entry meanwhile;
//! the refill is single-flight all the same (the key's in-process flight, and on Redis the
//! key's lock, whose holder's fill it takes instead of loading again), and fenced like any
//! load, so that an invalidation during it keeps its value out of the store.

use std::future::Future;
use std::sync::Arc;

use super::follow::downcast;
use super::local::{complete, load};
use super::remote::{claim, fill_checked, share, Claimed, L1Slot, LoadPermit};
use super::report::Report;
use crate::backend::Backend;
use crate::flight::{Flight, LeaderGuard, Outcome, Role};
use crate::key::CacheKey;
use crate::registry;
use crate::shape::{PortableValue, Produced, ReturnShape};
use crate::site::Site;

/// The caller's part in a key's refill.
pub(crate) enum Joined {
    /// This caller refills the key.
    Lead(Refiller),
    /// A load or refill of the key is under way in this process.
    Busy(Arc<Flight>),
}

/// The right to refill one key, held from [`join`] to the end of [`Refiller::run`]. Its flight
/// guard frees the key however it ends: dropped unrun, cancelled or panicking, the key's next
/// caller leads a new refill.
pub(crate) struct Refiller {
    site: &'static Site,
    backend: &'static Backend,
    key: CacheKey,
    guard: LeaderGuard<'static>,
}

/// How a refill ended.
pub(crate) enum Refilled<R, V> {
    /// The body ran: its return value, stored if the shape says so, no invalidation came
    /// during the load and Redis did not fail ([`Kept`]).
    Ran(R, Kept),
    /// Another caller had refilled the key meanwhile (here, or in another process): its value,
    /// which the refill's `current` accepted, now in this process's L1 too.
    Found(V),
}

/// Whether Redis took part in a refill whose body ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kept {
    /// It did (stored, refused by the fence, or nothing to store), or the store is in process.
    Yes,
    /// Redis failed the claim, before the body ran: its value was stored nowhere but L1.
    Unavailable,
    /// Redis failed the fill, after the body ran: the same.
    FillFailed,
}

/// Joins `key`'s flight in `backend`, `site`'s backend, to refill the entry held there.
pub(crate) fn join(site: &'static Site, backend: &'static Backend, key: &CacheKey) -> Joined {
    match backend.flights().join(key) {
        Role::Leader(guard) => Joined::Lead(Refiller {
            site,
            backend,
            key: key.clone(),
            guard,
        }),
        Role::Follower(flight) => Joined::Busy(flight),
    }
}

/// The value another caller's load or refill produced, once it ends; `None` if it produced
/// none (it failed, panicked or was cancelled).
pub(crate) async fn shared<V: Clone + 'static>(flight: &Flight) -> Option<V> {
    match flight.wait().await {
        Outcome::Value(value) | Outcome::Found(value) | Outcome::Stale(value) => {
            value.downcast_ref::<V>().cloned()
        }
        Outcome::Absent | Outcome::Failed | Outcome::Abandoned => None,
    }
}

impl Refiller {
    /// Runs `body` and stores what `shape` says is cacheable over the held entry, unless an
    /// entry that `current` accepts is found first (another caller's refill landed since this
    /// one's caller read the key). On Redis, waits for another process that holds the key's
    /// lock, as a miss does, and takes its fill if `current` accepts it.
    pub(crate) async fn run<R, S, F>(
        self,
        shape: S,
        current: impl Fn(&S::Value) -> bool,
        body: F,
    ) -> Refilled<R, S::Value>
    where
        S: ReturnShape<R>,
        S::Value: PortableValue,
        F: Future<Output = R>,
    {
        let Refiller {
            site,
            backend,
            key,
            guard,
        } = self;
        let report = Report::start(site, &registry::resolve(site).meters);
        let Some((redis, tiered)) = backend.remote() else {
            let Some(memory) = backend.memory() else {
                // Neither in process nor remote: not a store this refill knows; run uncached.
                drop(guard);
                return Refilled::Ran(load(&report, shape, body).await, Kept::Yes);
            };
            let held = memory.read(&key, |any| downcast::<S::Value>(site, key.as_str(), any));
            if let Some(value) = held.filter(|value| current(value)) {
                guard.complete(Outcome::Found(Arc::new(value.clone())), || {});
                return Refilled::Found(value);
            }
            let ret = load(&report, shape, body).await;
            complete(memory, site, shape, key, guard, &ret);
            return Refilled::Ran(ret, Kept::Yes);
        };
        let l1 = tiered.and_then(|tiered| Some(L1Slot::new(tiered, tiered.l1_epoch()?, site)));
        let permit = match claim::<S::Value>(site, redis, &key, &current, &mut None).await {
            Claimed::Hit(value, remaining, _) => {
                share(guard, &key, &value, l1.as_ref(), remaining, Outcome::Found);
                return Refilled::Found(value);
            }
            // `Stale` needs a stale value, which a refill never keeps.
            Claimed::Load(permit) | Claimed::Stale(permit) => Some(permit),
            // Redis failed: the value reaches this caller (and L1) only.
            Claimed::Unavailable => None,
        };
        let ret = load(&report, shape, body).await;
        let mut kept = if permit.is_some() {
            Kept::Yes
        } else {
            Kept::Unavailable
        };
        match shape.produced(&ret) {
            Produced::Value(value) => {
                let stored = match permit {
                    Some(permit) => {
                        let filled =
                            fill_checked(site, redis, &key, value, permit, site.ttl(), None).await;
                        if filled.is_none() {
                            kept = Kept::FillFailed;
                        }
                        // Redis failing is no refusal: the value may go into L1.
                        filled.unwrap_or(true)
                    }
                    None => true,
                };
                let l1 = l1.as_ref().filter(|_| stored);
                share(guard, &key, value, l1, site.ttl(), Outcome::Value);
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
        Refilled::Ran(ret, kept)
    }
}
