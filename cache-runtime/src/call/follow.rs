//! What a follower of an in-process flight does with its leader's outcome, on every path.

use std::time::Instant;

use super::report::Report;
use crate::flight::Outcome;
use crate::observe::{Answer, Scope, Tier};
use crate::shape::{Downcast, ReturnShape};
use crate::site::Site;

/// What a follower does next with its leader's outcome.
pub(super) enum Next<R> {
    /// Return this.
    Return(R),
    /// Run the body itself, uncached (the leader failed, or stored another type).
    RunUncached,
    /// Look again; one of the followers leads the next flight.
    Retry,
}

/// Interprets a leader's outcome for one follower that began waiting at `since`; unless it
/// looks again, reports its `answer` (what it missed, and where) and, if the leader's load
/// answered it, the wait. A follower that
/// looks again (its leader was abandoned) is reported where its call ends: once, as a leader or
/// as the follower of a later flight, so that one call is never coalesced twice.
pub(super) fn follow<R, S: ReturnShape<R>>(
    report: &mut Report,
    since: Instant,
    answer: (Answer, Tier),
    (site, shape, key): (&Site, S, &str),
    outcome: Outcome,
) -> Next<R> {
    let found = matches!(outcome, Outcome::Found(_));
    let stale = matches!(outcome, Outcome::Stale(_));
    let next = decide(site, shape, key, outcome);
    match next {
        Next::Retry => {}
        // The leader read the value from L2: nobody loaded, so this caller had a hit.
        Next::Return(_) if found => report.answer(Answer::Hit, Tier::L2),
        // The leader's load failed or ran long, and it served the stale value: so did this
        // caller, after waiting for it, from where its leader kept it (a remote site's stale
        // value is its L2 entry, whichever tier the follower looked in first).
        Next::Return(_) if stale => {
            report.coalesced(Scope::Process, since);
            let kept_in = if answer.1 == Tier::Memory {
                Tier::Memory
            } else {
                Tier::L2
            };
            report.answer(Answer::Stale, kept_in);
        }
        Next::Return(_) => {
            report.coalesced(Scope::Process, since);
            report.answer(answer.0, answer.1);
        }
        // It loads for itself: a miss, not coalesced (as a cross-process waiter that loads).
        Next::RunUncached => report.answer(answer.0, answer.1),
    }
    next
}

fn decide<R, S: ReturnShape<R>>(site: &Site, shape: S, key: &str, outcome: Outcome) -> Next<R> {
    match outcome {
        Outcome::Value(any) | Outcome::Found(any) | Outcome::Stale(any) => {
            match downcast::<S::Value>(site, key, &*any) {
                Some(value) => Next::Return(shape.rebuild(value)),
                None => Next::RunUncached,
            }
        }
        Outcome::Absent => shape.absent().map_or(Next::Retry, Next::Return),
        Outcome::Failed => Next::RunUncached,
        Outcome::Abandoned => Next::Retry,
    }
}

/// The value as the site's type; another type under the key (two sites' templates making one
/// key) is a miss, logged once per site.
///
/// Give it the value (`&*any` of an `AnyValue`): a `&AnyValue` coerces to `&dyn Any` as the
/// `Arc` itself, which is never the site's type (checked in debug builds).
#[inline(always)]
pub(super) fn downcast<V: 'static + Clone>(
    site: &Site,
    key: &(impl std::fmt::Display + ?Sized),
    any: &(impl Downcast + ?Sized),
) -> Option<V> {
    debug_assert!(
        not_a_holder::<V>(any.as_any()),
        "an `AnyValue` given as the value"
    );
    match any.downcast_ref::<V>() {
        Some(value) => Some(value.clone()),
        None => {
            site.warn_type_mismatch(key, std::any::type_name::<V>());
            None
        }
    }
}

/// Whether `any` is a value, not the `AnyValue` holding it (unless `V` is itself one).
pub(super) fn not_a_holder<V: 'static>(any: &(dyn std::any::Any + Send + Sync)) -> bool {
    std::any::TypeId::of::<V>() == std::any::TypeId::of::<crate::shape::AnyValue>()
        || !any.is::<crate::shape::AnyValue>()
}
