//! A store's circuit breakers: one for a server; on a cluster, one per master, so that a dead
//! master (no replica to take over, `cluster-require-full-coverage no`) opens its own and the
//! live masters' keys stay cached.
//!
//! A cluster operation's breaker is its master's, found by the slot of the entry (or tag) it
//! touches in a slot map of the store's own (`CLUSTER SLOTS`, refreshed after transport
//! failures, at most once per probe interval: redis-rs does not show the map it routes by).
//! A map out of step only misattributes results: the slots of a master that left are counted
//! against its breaker until the next refresh, and a success of one of them closes it, so
//! every error of the map is on the side of trying Redis. Operations of no one slot (a
//! tagged read, the purge), keys of slots the map does not name, and everything before the
//! first map, use the store-wide breaker, a server's only one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(feature = "cluster")]
use std::sync::{PoisonError, RwLock};
use std::time::Instant;

use super::breaker::{Breaker, BreakerPolicy, BreakerState, Permit};

/// What an operation touches, which chooses its breaker.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) enum Scope<'a> {
    /// Several slots, or none: the store-wide breaker.
    Whole,
    /// One entry's keys, or one tag's (the cache key, or the tag, in their hash tag).
    Entry(&'a str),
}

pub(crate) struct Breakers {
    /// The policy of the masters' breakers, made as the map names them.
    #[cfg(feature = "cluster")]
    policy: BreakerPolicy,
    /// How many of the breakers are not healthy: while none is, no operation looks its own up.
    unhealthy: Arc<AtomicUsize>,
    /// A server's breaker; on a cluster, for what no master's breaker covers.
    whole: Breaker,
    #[cfg(feature = "cluster")]
    masters: RwLock<Masters>,
    /// How many breakers are open (or probing): the gauge is 1 while any is. Changed under
    /// the breaker's lock, then this one, so that the gauge moves in the order they did.
    open: Mutex<usize>,
}

/// The masters' breakers and which serves which slot.
#[cfg(feature = "cluster")]
#[derive(Default)]
struct Masters {
    /// Per slot, the index of its master in `breakers`; empty until the first map.
    owner: Vec<u16>,
    /// Each master's address and breaker: one per master of the last map, so bounded by it.
    breakers: Vec<(String, Arc<Breaker>)>,
}

#[cfg(feature = "cluster")]
const NO_MASTER: u16 = u16::MAX;

impl Breakers {
    pub(crate) fn new(policy: BreakerPolicy) -> Self {
        let unhealthy = Arc::new(AtomicUsize::new(0));
        Breakers {
            #[cfg(feature = "cluster")]
            policy,
            whole: Breaker::counted(policy, Arc::clone(&unhealthy)),
            unhealthy,
            #[cfg(feature = "cluster")]
            masters: RwLock::new(Masters::default()),
            open: Mutex::new(0),
        }
    }

    fn all_healthy(&self) -> bool {
        self.unhealthy.load(Ordering::Acquire) == 0
    }

    /// Runs `act` on `scope`'s breaker (and its master's address, `None` for the store-wide
    /// one) with the map read-locked: a new map cannot drop the breaker while `act` changes
    /// it, which would leave a dropped breaker counted unhealthy (or open) for good.
    fn with_chosen<R>(&self, scope: Scope<'_>, act: impl FnOnce(&Breaker, Option<&str>) -> R) -> R {
        #[cfg(feature = "cluster")]
        if let Scope::Entry(key) = scope {
            let masters = self.masters.read().unwrap_or_else(PoisonError::into_inner);
            let owner = super::keys::entry_slot(key)
                .and_then(|slot| masters.owner.get(usize::from(slot)))
                .and_then(|&index| masters.breakers.get(usize::from(index)));
            if let Some((address, breaker)) = owner {
                return act(breaker, Some(address));
            }
        }
        #[cfg(not(feature = "cluster"))]
        let _ = scope;
        act(&self.whole, None)
    }

    /// Whether `scope` may use Redis now (reading the clock only if a breaker is unhealthy).
    pub(crate) fn permit(&self, scope: Scope<'_>, now: impl FnOnce() -> Instant) -> Permit {
        if self.all_healthy() {
            return Permit::Allowed;
        }
        self.with_chosen(scope, |breaker, _| breaker.permit_at(now))
    }

    /// Whether `scope`'s breaker would refuse now, taking no probe.
    pub(crate) fn would_refuse(&self, scope: Scope<'_>, now: impl FnOnce() -> Instant) -> bool {
        !self.all_healthy() && self.with_chosen(scope, |breaker, _| breaker.would_refuse(now()))
    }

    /// Whether every master's breaker would refuse now (a frozen cluster), or, before the
    /// first map (and on a server), the store-wide one: then a replay need not look up its
    /// keys' (the keys of a slot the map names no master for wait for a master's probe).
    pub(crate) fn refuse_everything(&self, now: Instant) -> bool {
        if self.all_healthy() {
            return false;
        }
        #[cfg(feature = "cluster")]
        {
            let masters = self.masters.read().unwrap_or_else(PoisonError::into_inner);
            if !masters.breakers.is_empty() {
                return masters
                    .breakers
                    .iter()
                    .all(|(_, breaker)| breaker.would_refuse(now));
            }
        }
        self.whole.would_refuse(now)
    }

    /// Records a success of `scope`; `Some(what)` when it closed a breaker (worth a log: the
    /// master's address, or `None` for the store-wide one), after `gauge(false)` if it was the
    /// last one open.
    pub(crate) fn record_success(
        &self,
        scope: Scope<'_>,
        gauge: impl Fn(bool),
    ) -> Option<Option<String>> {
        if self.all_healthy() {
            return None;
        }
        self.with_chosen(scope, |breaker, master| {
            breaker
                .record_success(|| self.closed(&gauge))
                .then(|| master.map(str::to_owned))
        })
    }

    /// Records a failure of `scope`; `Some(what)` when it opened a breaker, after
    /// `gauge(true)` if it was the first one open.
    pub(crate) fn record_failure(
        &self,
        scope: Scope<'_>,
        now: Instant,
        gauge: impl Fn(bool),
    ) -> Option<Option<String>> {
        self.with_chosen(scope, |breaker, master| {
            breaker
                .record_failure(now, || self.opened(&gauge))
                .then(|| master.map(str::to_owned))
        })
    }

    /// Where `scope`'s breaker stands.
    pub(crate) fn position_of(&self, scope: Scope<'_>) -> BreakerState {
        if self.all_healthy() {
            return BreakerState::Closed;
        }
        self.with_chosen(scope, |breaker, _| breaker.position())
    }

    /// What `health()` reports: `Open` if any breaker is open (some calls skip Redis), else
    /// `HalfOpen` if one is probing, else `Closed`.
    pub(crate) fn position(&self) -> BreakerState {
        if self.all_healthy() {
            return BreakerState::Closed;
        }
        #[cfg_attr(not(feature = "cluster"), allow(unused_mut))]
        let mut worst = self.whole.position();
        #[cfg(feature = "cluster")]
        for (_, breaker) in &self
            .masters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .breakers
        {
            worst = match (worst, breaker.position()) {
                (BreakerState::Open, _) | (_, BreakerState::Open) => BreakerState::Open,
                (BreakerState::HalfOpen, _) | (_, BreakerState::HalfOpen) => BreakerState::HalfOpen,
                _ => BreakerState::Closed,
            };
        }
        worst
    }

    /// Takes a new slot map: a master still in it keeps its breaker, a new one gets a closed
    /// one, and one no longer in it is closed and dropped (with the gauge); the store-wide
    /// breaker's failures from before the first map, when it stood for every key, are
    /// forgotten.
    #[cfg(feature = "cluster")]
    pub(crate) fn install(&self, ranges: &super::connection::SlotRanges, gauge: impl Fn(bool)) {
        let mut masters = self.masters.write().unwrap_or_else(PoisonError::into_inner);
        let first = masters.owner.is_empty();
        let mut owner = vec![NO_MASTER; 16_384];
        let mut breakers: Vec<(String, Arc<Breaker>)> = Vec::new();
        for ((from, to), (host, port)) in ranges {
            let address = format!("{host}:{port}");
            let index = match breakers.iter().position(|(known, _)| *known == address) {
                Some(index) => index,
                None => {
                    let kept = masters
                        .breakers
                        .iter()
                        .find(|(known, _)| *known == address)
                        .map(|(_, breaker)| Arc::clone(breaker));
                    let breaker = kept.unwrap_or_else(|| {
                        Arc::new(Breaker::counted(self.policy, Arc::clone(&self.unhealthy)))
                    });
                    breakers.push((address, breaker));
                    breakers.len() - 1
                }
            };
            let Ok(index) = u16::try_from(index) else {
                continue;
            };
            if let Some(slots) = owner.get_mut(usize::from(*from)..=usize::from(*to)) {
                slots.fill(index);
            }
        }
        for (address, breaker) in &masters.breakers {
            if !breakers.iter().any(|(kept, _)| kept == address) {
                breaker.record_success(|| self.closed(&gauge));
            }
        }
        if first {
            self.whole.record_success(|| self.closed(&gauge));
        }
        *masters = Masters { owner, breakers };
    }

    fn opened(&self, gauge: &impl Fn(bool)) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *open += 1;
        if *open == 1 {
            gauge(true);
        }
    }

    fn closed(&self, gauge: &impl Fn(bool)) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *open = open.saturating_sub(1);
        if *open == 0 {
            gauge(false);
        }
    }
}

#[cfg(all(test, feature = "cluster"))]
mod tests {
    use std::cell::RefCell;
    use std::time::Duration;

    use super::super::keys::entry_slot;
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failures_to_open: 3,
            probe_interval: Duration::from_secs(1),
        }
    }

    /// Two masters: slots 0-8191 and 8192-16383.
    fn halves() -> super::super::connection::SlotRanges {
        vec![
            ((0, 8191), ("10.0.0.1".to_owned(), 7000)),
            ((8192, 16383), ("10.0.0.2".to_owned(), 7000)),
        ]
    }

    /// A key in each half.
    fn keys() -> (String, String) {
        let find = |low: bool| {
            (0..)
                .map(|i| format!("k:<{i}>"))
                .find(|key| (entry_slot(key).expect("a slot") < 8192) == low)
                .expect("a key")
        };
        (find(true), find(false))
    }

    #[test]
    fn a_failing_master_opens_its_breaker_only() {
        let breakers = Breakers::new(policy());
        let gauge = RefCell::new(Vec::new());
        let set = |open| gauge.borrow_mut().push(open);
        breakers.install(&halves(), set);
        let (low, high) = keys();
        let t0 = Instant::now();
        let opened: Vec<_> = (0..3)
            .map(|_| breakers.record_failure(Scope::Entry(&low), t0, set))
            .collect();
        assert_eq!(opened, [None, None, Some(Some("10.0.0.1:7000".to_owned()))]);
        assert_eq!(breakers.permit(Scope::Entry(&low), || t0), Permit::Refused);
        assert_eq!(breakers.permit(Scope::Entry(&high), || t0), Permit::Allowed);
        assert_eq!(breakers.permit(Scope::Whole, || t0), Permit::Allowed);
        assert_eq!(breakers.position(), BreakerState::Open);
        assert_eq!(
            breakers.position_of(Scope::Entry(&high)),
            BreakerState::Closed
        );
        // A success elsewhere leaves it open; its probe's closes it.
        assert_eq!(breakers.record_success(Scope::Entry(&high), set), None);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(breakers.permit(Scope::Entry(&low), || later), Permit::Probe);
        assert_eq!(breakers.position(), BreakerState::HalfOpen);
        assert_eq!(
            breakers.record_success(Scope::Entry(&low), set),
            Some(Some("10.0.0.1:7000".to_owned()))
        );
        assert_eq!(breakers.position(), BreakerState::Closed);
        assert_eq!(*gauge.borrow(), [true, false]);
        assert!(breakers.all_healthy(), "the fast path again");
    }

    #[test]
    fn the_gauge_is_up_while_any_breaker_is_open() {
        let breakers = Breakers::new(policy());
        let gauge = RefCell::new(Vec::new());
        let set = |open| gauge.borrow_mut().push(open);
        breakers.install(&halves(), set);
        let (low, high) = keys();
        let t0 = Instant::now();
        for key in [&low, &high] {
            for _ in 0..3 {
                breakers.record_failure(Scope::Entry(key), t0, set);
            }
        }
        breakers.record_success(Scope::Entry(&low), set);
        assert_eq!(*gauge.borrow(), [true], "one still open");
        breakers.record_success(Scope::Entry(&high), set);
        assert_eq!(*gauge.borrow(), [true, false]);
    }

    #[test]
    fn before_a_map_every_key_shares_the_store_wide_breaker_and_the_map_resets_it() {
        let breakers = Breakers::new(policy());
        let gauge = RefCell::new(Vec::new());
        let set = |open| gauge.borrow_mut().push(open);
        let (low, high) = keys();
        let t0 = Instant::now();
        for _ in 0..3 {
            breakers.record_failure(Scope::Entry(&low), t0, set);
        }
        assert_eq!(breakers.permit(Scope::Entry(&high), || t0), Permit::Refused);
        breakers.install(&halves(), set);
        assert_eq!(breakers.permit(Scope::Entry(&high), || t0), Permit::Allowed);
        assert_eq!(breakers.permit(Scope::Whole, || t0), Permit::Allowed);
        assert_eq!(*gauge.borrow(), [true, false]);
    }

    #[test]
    fn a_master_that_left_the_map_takes_its_breaker_along_and_its_slots_move() {
        let breakers = Breakers::new(policy());
        let gauge = RefCell::new(Vec::new());
        let set = |open| gauge.borrow_mut().push(open);
        breakers.install(&halves(), set);
        let (low, high) = keys();
        let t0 = Instant::now();
        for _ in 0..3 {
            breakers.record_failure(Scope::Entry(&low), t0, set);
        }
        // The first master's slots went to the second.
        breakers.install(&vec![((0, 16383), ("10.0.0.2".to_owned(), 7000))], set);
        assert_eq!(breakers.permit(Scope::Entry(&low), || t0), Permit::Allowed);
        assert_eq!(breakers.position(), BreakerState::Closed);
        assert_eq!(*gauge.borrow(), [true, false]);
        // Both keys now share the second master's breaker.
        for _ in 0..3 {
            breakers.record_failure(Scope::Entry(&high), t0, set);
        }
        assert_eq!(breakers.permit(Scope::Entry(&low), || t0), Permit::Refused);
        let masters = breakers.masters.read().expect("unpoisoned");
        assert_eq!(masters.breakers.len(), 1, "bounded by the map");
    }

    /// A failure recorded while a new map drops its master: the dropped breaker must not stay
    /// counted (unhealthy, or open for the gauge), which would leave every operation on the
    /// slow path, and the gauge up, for good.
    #[test]
    fn a_failure_racing_the_map_that_drops_its_master_leaves_nothing_counted() {
        use std::sync::atomic::AtomicBool;
        let breakers = Breakers::new(policy());
        let gauge_up = AtomicBool::new(false);
        let set = |open: bool| gauge_up.store(open, Ordering::SeqCst);
        let (low, high) = keys();
        let t0 = Instant::now();
        let moved = vec![((0, 16383), ("10.0.0.2".to_owned(), 7000))];
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    breakers.record_failure(Scope::Entry(&low), t0, set);
                }
            });
            for round in 0..20_000 {
                breakers.install(&halves(), set);
                breakers.install(&moved, set);
                if round % 64 == 0 {
                    // Resets the survivor, so that the leak (if any) is the dropped one's.
                    breakers.record_success(Scope::Entry(&high), set);
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        // Every breaker of the map, and the store-wide one, closed by a success.
        breakers.install(&moved, set);
        breakers.record_success(Scope::Entry(&low), set);
        breakers.record_success(Scope::Whole, set);
        assert!(breakers.masters.read().expect("unpoisoned").breakers.len() == 1);
        assert_eq!(breakers.position(), BreakerState::Closed);
        assert_eq!(
            breakers.unhealthy.load(Ordering::SeqCst),
            0,
            "a dropped breaker still counted unhealthy: the slow path for good"
        );
        assert_eq!(*breakers.open.lock().expect("unpoisoned"), 0, "still open");
        assert!(!gauge_up.load(Ordering::SeqCst), "the gauge stuck up");
    }
}
