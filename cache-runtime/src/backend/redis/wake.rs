//! Waking the processes that wait for another process's load, instead of polling to a deadline.
//!
//! A caller that finds a key's Redis lock held registers here and waits. The holder's fill or
//! release script, if the key has waiters (a flag the claim script sets), publishes the cache
//! key on the prefix's wake channel; one subscriber per store hears it and wakes that key's
//! waiters, who claim again: they find the fill, or take the lock themselves. While the
//! subscription is not confirmed, waiters poll instead, and even with it they look again every
//! [`SAFETY_POLL`], which bounds the wait after a lost message or a holder that died (its lock
//! then expires within one lease).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use super::connection::Target;
use super::subscription::Subscription;
use backon::{BackoffBuilder, ExponentialBuilder};
use event_listener::{Event, EventListener};

/// How long a waiter trusts the wake-up to come before it looks again anyway.
pub(crate) const SAFETY_POLL: Duration = Duration::from_millis(250);

/// The waiters of one store, by cache key, and its wake subscription.
pub(crate) struct Wakeups {
    channel: String,
    waiting: Mutex<HashMap<String, Waiters>>,
    started: AtomicBool,
    /// Whether the subscription is confirmed: only then is a wake-up sure to reach us.
    up: AtomicBool,
}

struct Waiters {
    count: usize,
    event: Arc<Event>,
}

/// One caller's registration as a waiter of a key; dropping it (on return, cancellation or
/// panic) unregisters.
pub(crate) struct Waiting<'a> {
    wakeups: &'a Wakeups,
    key: String,
    event: Arc<Event>,
}

impl Wakeups {
    pub(crate) fn new(channel: String) -> Self {
        Wakeups {
            channel,
            waiting: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
            up: AtomicBool::new(false),
        }
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<String, Waiters>> {
        // Every critical section is one insert, update or removal.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a waiter of `key`, starting the subscriber on first use (on the caller's
    /// Tokio runtime).
    pub(crate) fn register<'a>(
        self: &'a Arc<Self>,
        target: &Arc<Target>,
        key: &str,
    ) -> Waiting<'a> {
        self.start(target);
        let event = {
            let mut waiting = self.waiting();
            let waiters = waiting.entry(key.to_owned()).or_insert_with(|| Waiters {
                count: 0,
                event: Arc::new(Event::new()),
            });
            waiters.count += 1;
            Arc::clone(&waiters.event)
        };
        Waiting {
            wakeups: self,
            key: key.to_owned(),
            event,
        }
    }

    /// Whether a wake-up published now is sure to reach this process.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn wake(&self, key: &str) {
        if let Some(waiters) = self.waiting().get(key) {
            waiters.event.notify(usize::MAX);
        }
    }

    fn start(self: &Arc<Self>, target: &Arc<Target>) {
        if self.started.load(Ordering::Acquire) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let wakeups = Arc::downgrade(self);
        // Without any runtime, nothing subscribes: waiters poll.
        crate::background::spawn(subscribe(wakeups, Arc::clone(target)));
    }
}

impl Waiting<'_> {
    /// A listener for the next wake-up; create it before looking at Redis, so that a wake-up
    /// published after the look is not missed.
    pub(crate) fn listen(&self) -> EventListener {
        self.event.listen()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self.wakeups.waiting();
        if let Some(waiters) = waiting.get_mut(&self.key) {
            waiters.count -= 1;
            if waiters.count == 0 {
                waiting.remove(&self.key);
            }
        }
    }
}

/// How a lost pub/sub subscription is retried (wake-ups here, the tiered bus too): jittered,
/// 20 ms to 2 s, for ever.
pub(crate) fn resubscribe_backoff() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
}

/// Keeps the wake subscription alive while the store exists, resubscribing with jittered
/// backoff; waiters poll while it is down.
async fn subscribe(wakeups: Weak<Wakeups>, target: Arc<Target>) {
    const TIMEOUT: Duration = Duration::from_secs(1);
    let backoff = resubscribe_backoff();
    let mut delays = backoff.build();
    loop {
        let Some(channel) = wakeups.upgrade().map(|w| w.channel.clone()) else {
            return;
        };
        if let Some(mut subscription) = Subscription::open(&target, &channel, TIMEOUT).await {
            delays = backoff.build();
            if let Some(w) = wakeups.upgrade() {
                w.up.store(true, Ordering::Release);
            }
            while let Some(payload) = subscription.next_payload().await {
                let Some(w) = wakeups.upgrade() else { return };
                if let Ok(key) = std::str::from_utf8(&payload) {
                    w.wake(key);
                }
            }
            if let Some(w) = wakeups.upgrade() {
                w.up.store(false, Ordering::Release);
            }
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
    }
}
