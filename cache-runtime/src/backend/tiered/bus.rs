//! The invalidation bus of a tiered backend: Redis pub/sub on one channel per application
//! prefix, and the state that says whether this process's L1 may be used.
//!
//! L1 is trusted only while the subscription is known to be alive: a process that may have
//! missed a message must not serve from L1. So the state is "up" only between a confirmed
//! `SUBSCRIBE` and the first sign of trouble (the stream ends, or a heartbeat `PING` on the
//! subscriber connection fails or times out). Going down advances the L1 epoch, which turns every
//! L1 entry stored before into a miss at once, with no scan and no race against a concurrent fill
//! (a fill carries the epoch it started in). The heartbeat is what makes detection independent of
//! traffic: a silent, half-open connection is noticed within one heartbeat plus one timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backon::BackoffBuilder;

use super::super::redis::{resubscribe_backoff, Subscription, Target, FLUSH_MESSAGE};
use crate::log_gate::LogGate;
use crate::observe::meters::BackendMeters;
use crate::observe::Invalidation;

/// The bus state of one tiered backend.
pub(crate) struct Bus {
    /// Identifies this backend instance's messages, so that it does not act on its own.
    origin: String,
    channel: String,
    /// Bit 0: subscribed (L1 usable). Bits 1..: the L1 epoch.
    state: AtomicU64,
    flushes: AtomicU64,
    received: AtomicU64,
    started: AtomicBool,
    /// Woken whenever the bus comes up.
    up: tokio::sync::Notify,
    /// The backend's metric handles, once it is configured under a name.
    meters: OnceLock<Arc<BackendMeters>>,
}

/// Timing of the subscriber.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BusTiming {
    /// How often the subscriber connection is pinged.
    pub(crate) heartbeat: Duration,
    /// How long a ping or a (re)subscription may take before the bus counts as down.
    pub(crate) timeout: Duration,
}

impl Bus {
    pub(crate) fn new(channel: String) -> Self {
        Bus {
            origin: format!("{:032x}", fastrand::u128(..)),
            channel,
            state: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            received: AtomicU64::new(0),
            started: AtomicBool::new(false),
            up: tokio::sync::Notify::new(),
            meters: OnceLock::new(),
        }
    }

    /// Gives the bus its backend's handles (the first configuration that names it keeps them).
    pub(crate) fn attach_meters(&self, meters: Arc<BackendMeters>) {
        meters.bus_connected(self.l1_epoch().is_some());
        let _ = self.meters.set(meters);
    }

    fn meters(&self) -> Option<&BackendMeters> {
        self.meters.get().map(|meters| &**meters)
    }

    /// True for the one caller that is to start the subscriber.
    pub(crate) fn claim_start(&self) -> bool {
        // A load first: every hit asks, and a swap would write the shared cache line each time.
        !self.started.load(Ordering::Acquire) && !self.started.swap(true, Ordering::AcqRel)
    }

    /// The epoch L1 entries must carry to be served, or `None` while L1 must not be used.
    #[inline]
    pub(crate) fn l1_epoch(&self) -> Option<u64> {
        let state = self.state.load(Ordering::Acquire);
        (state & 1 == 1).then_some(state >> 1)
    }

    /// The channel and message announcing an invalidation of `key` from this instance.
    pub(crate) fn announcement(&self, key: &str) -> (String, String) {
        (self.channel.clone(), format!("{} {key}", self.origin))
    }

    /// How many times L1 was dropped because the bus went down.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// How many invalidations from other instances arrived.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn go_up(&self) {
        self.state.fetch_or(1, Ordering::AcqRel);
        self.up.notify_waiters();
        tracing::info!(channel = %self.channel, "invalidation bus subscribed; L1 in use");
        if let Some(meters) = self.meters() {
            meters.bus_connected(true);
        }
    }

    /// Returns once the bus is up (now, or when it next comes up).
    pub(crate) async fn wait_up(&self) {
        loop {
            let notified = self.up.notified();
            if self.l1_epoch().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Marks the bus down and advances the epoch; true if it was up (L1 was in use).
    fn go_down(&self) -> bool {
        let previous = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                Some(((state >> 1) + 1) << 1)
            })
            .unwrap_or_else(|state| state);
        let was_up = previous & 1 == 1;
        if was_up {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            if let Some(meters) = self.meters() {
                meters.bus_connected(false);
                meters.l1_flushed();
            }
        }
        was_up
    }

    /// Turns every L1 entry stored so far into a miss, the bus staying up.
    fn flush_epoch(&self) {
        self.state.fetch_add(2, Ordering::AcqRel);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if let Some(meters) = self.meters() {
            meters.l1_flushed();
        }
    }

    /// The key a message invalidates, unless the message is this instance's own.
    fn key_of<'a>(&self, message: &'a str) -> Option<&'a str> {
        let (origin, key) = message.split_once(' ')?;
        (origin != self.origin).then_some(key)
    }

    /// Keeps a subscription alive for as long as `alive` says the backend exists: on each
    /// message, `invalidate(key)`; when the subscription is lost, `flush()` and resubscribe with
    /// jittered exponential backoff.
    pub(crate) async fn run(
        &self,
        target: &Target,
        timing: BusTiming,
        invalidate: impl Fn(&str) -> bool,
        flush: impl Fn(),
    ) {
        let backoff = resubscribe_backoff();
        let mut delays = backoff.build();
        loop {
            // On a cluster: one connection to every master, so that the loss of any is seen.
            if let Some(subscription) =
                Subscription::open(target, &self.channel, timing.timeout).await
            {
                self.go_up();
                delays = backoff.build();
                if !self.serve(subscription, timing, &invalidate).await {
                    // The backend is gone: nothing left to keep consistent.
                    return;
                }
            }
            if self.go_down() {
                flush();
                static GATE: LogGate = LogGate::new();
                if let Some(suppressed) = GATE.admit() {
                    tracing::warn!(
                        channel = %self.channel,
                        suppressed,
                        "invalidation bus lost; L1 dropped, serving from redis until resubscribed"
                    );
                }
            }
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
        }
    }

    /// Handles messages until the subscription fails; false if `invalidate` says the backend
    /// is gone.
    async fn serve(
        &self,
        mut subscription: Subscription,
        timing: BusTiming,
        invalidate: &impl Fn(&str) -> bool,
    ) -> bool {
        let mut heartbeat = tokio::time::interval(timing.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                payload = subscription.next_payload() => {
                    let Some(payload) = payload else { return true };
                    let Ok(payload) = String::from_utf8(payload) else { continue };
                    if payload == FLUSH_MESSAGE {
                        self.flush_epoch();
                    } else if let Some(key) = self.key_of(&payload) {
                        self.received.fetch_add(1, Ordering::Relaxed);
                        if let Some(meters) = self.meters() {
                            meters.invalidated(Invalidation::Received, 1);
                        }
                        if !invalidate(key) {
                            return false;
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if !subscription.ping(timing.timeout).await {
                        return true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bus_starts_down_and_going_down_advances_the_epoch() {
        let bus = Bus::new("c".to_owned());
        assert_eq!(bus.l1_epoch(), None, "no L1 before the first subscription");
        bus.go_up();
        assert_eq!(bus.l1_epoch(), Some(0));
        assert!(bus.go_down());
        assert_eq!(bus.l1_epoch(), None);
        assert!(!bus.go_down(), "already down: not another flush");
        bus.go_up();
        assert_eq!(
            bus.l1_epoch(),
            Some(2),
            "entries of epochs 0 and 1 are misses"
        );
        assert_eq!(bus.flushes(), 1);
    }

    #[test]
    fn own_messages_are_ignored() {
        let mine = Bus::new("c".to_owned());
        let theirs = Bus::new("c".to_owned());
        let (_, message) = theirs.announcement("user:<1>");
        assert_eq!(mine.key_of(&message), Some("user:<1>"));
        let (_, own) = mine.announcement("user:<1>");
        assert_eq!(mine.key_of(&own), None);
        assert_eq!(mine.key_of("garbage"), None);
    }
}
