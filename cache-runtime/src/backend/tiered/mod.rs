//! The tiered backend: an in-process L1 in front of a Redis L2, kept consistent across
//! processes by an invalidation bus (`bus.rs`).

mod bus;

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, BusTiming};

use super::redis::{bus_channel, TAG_MESSAGE_MARK};
use super::tags::{note_tag_invalidation, TagTable};
use super::{MemoryBackend, RedisBackend, Stored};
use crate::key::canonical::AsHitKey;
use crate::key::CacheKey;
use crate::observe::meters::{BackendMeters, StoreMeters};

/// A backend with in-process speed on hits and cross-process correctness: reads go to L1
/// (an in-process memory store), then L2 (Redis), then the function under the Redis backend's cross-process
/// single-flight. An invalidation deletes in L2 and announces it on a pub/sub channel, and every
/// process drops the key from its L1.
///
/// L1 is used only while this process's subscription to that channel is alive; while it is not,
/// calls are served from L2 alone, and L1 is dropped, because invalidations may have been missed.
/// An L1 entry never outlives its L2 entry nor [`l1_max_ttl`](TieredBackendBuilder::l1_max_ttl).
///
/// ```
/// use std::time::Duration;
/// use cache_runtime::{MemoryBackend, RedisBackend, TieredBackend};
///
/// let l2 = RedisBackend::builder().url("redis://127.0.0.1:6379/").prefix("shop").build()?;
/// let tiered = TieredBackend::builder(l2)
///     .l1(MemoryBackend::builder().max_entries(50_000).build())
///     .l1_max_ttl(Duration::from_secs(30))
///     .build();
/// assert_eq!(tiered.l1_flushes(), 0);
/// # Ok::<(), cache_runtime::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct TieredBackend {
    l1: MemoryBackend,
    l2: RedisBackend,
    bus: Arc<Bus>,
    l1_max_ttl: Duration,
    timing: BusTiming,
    /// The tags' generations this process learned from L2, each with the bus epoch it was
    /// learned in: trusted only while that epoch lasts, like L1 entries.
    tags: Arc<TagTable>,
}

/// Configures a [`TieredBackend`].
#[must_use = "a builder does nothing until `build()`"]
pub struct TieredBackendBuilder {
    l1: MemoryBackend,
    l2: RedisBackend,
    l1_max_ttl: Duration,
    heartbeat: Duration,
}

impl TieredBackend {
    /// A builder over `l2`, whose prefix also names the bus channel.
    pub fn builder(l2: RedisBackend) -> TieredBackendBuilder {
        TieredBackendBuilder {
            l1: MemoryBackend::default(),
            l2,
            l1_max_ttl: Duration::from_secs(60),
            heartbeat: Duration::from_secs(1),
        }
    }

    /// How many times this process dropped its L1 because the bus went down (the subscriber
    /// connection closed, or stopped answering its heartbeat).
    pub fn l1_flushes(&self) -> u64 {
        self.bus.flushes()
    }

    /// How many invalidations from other processes arrived on the bus. On a Redis Cluster the
    /// bus listens on every master and each message arrives once per master, so each counts
    /// that many times.
    pub fn invalidations_received(&self) -> u64 {
        self.bus.received()
    }

    /// Whether L1 is in use now (the bus is subscribed).
    pub fn l1_active(&self) -> bool {
        self.bus.l1_epoch().is_some()
    }

    /// Waits until the invalidations this backend queued while Redis was unreachable have
    /// reached it (and, announced on the bus, every peer's L1), for at most `timeout`:
    /// [`drain_invalidations`](crate::drain_invalidations) for this backend alone.
    pub async fn drain_invalidations(&self, timeout: Duration) -> Result<(), crate::DrainError> {
        self.l2.drain_invalidations(timeout).await
    }

    /// Waits until L1 is in use. The bus subscriber starts with the first call through this
    /// backend, so await this after one; it returns at once if the bus is already up.
    pub async fn l1_ready(&self) {
        self.bus.wait_up().await;
    }
}

impl TieredBackend {
    pub(crate) fn l2(&self) -> &RedisBackend {
        &self.l2
    }

    /// Gives the backend its metric handles, once configured under a name.
    pub(crate) fn attach_meters(&self, meters: Arc<BackendMeters>, l1: StoreMeters) {
        self.l1.attach_meters(l1);
        self.bus.attach_meters(Arc::clone(&meters));
        self.l2.attach_meters(meters);
    }

    /// Whether the bus is subscribed, and so L1 in use.
    pub(crate) fn bus_connected(&self) -> bool {
        self.bus.l1_epoch().is_some()
    }

    /// The epoch L1 entries must carry to be served, or `None` while L1 must not be used (the
    /// bus is down); see `bus.rs`.
    #[inline]
    pub(crate) fn l1_epoch(&self) -> Option<u64> {
        self.bus.l1_epoch()
    }

    /// What `read` makes of the L1 value under `key`, if it was stored in `epoch`.
    pub(crate) fn l1_get<T>(
        &self,
        key: &CacheKey,
        epoch: u64,
        read: impl FnOnce(&Stored) -> Option<T>,
    ) -> Option<T> {
        self.l1.read_in_epoch(key, epoch, read)
    }

    /// [`l1_get`](Self::l1_get), and whether the entry is due for a refresh-ahead.
    #[inline]
    pub(crate) fn l1_get_due<T>(
        &self,
        key: &CacheKey,
        epoch: u64,
        read: impl FnOnce(&Stored) -> Option<T>,
    ) -> Option<(T, bool)> {
        self.l1.read_due(key, epoch, read)
    }

    /// [`l1_get_due`](Self::l1_get_due) by a hit key.
    #[inline(always)]
    pub(crate) fn l1_get_hit_due<T>(
        &self,
        key: &(impl AsHitKey + ?Sized),
        epoch: u64,
        read: impl FnOnce(&Stored) -> Option<T>,
    ) -> Option<(T, bool)> {
        self.l1.read_hit_due(key, epoch, read)
    }

    /// Puts `value` in L1 for the least of what its L2 entry has left, the site's `ttl` and
    /// `l1_max_ttl`, so that no L1 entry outlives its L2 entry; weighed as `weighed` if given
    /// (the cached value a tagged entry wraps).
    pub(crate) fn l1_insert(
        &self,
        key: &CacheKey,
        (value, weighed): (impl Into<Stored>, Option<&(dyn Any + Send + Sync)>),
        l2_remaining: Duration,
        (ttl, refresh_in): (Duration, Option<Duration>),
        epoch: u64,
    ) {
        let ttl = l2_remaining.min(self.l1_max_ttl).min(ttl);
        if ttl.is_zero() {
            return;
        }
        match weighed {
            Some(weighed) => self
                .l1
                .insert_weighing(key.clone(), value, weighed, ttl, epoch),
            None => self
                .l1
                .insert_refreshing(key.clone(), value, (ttl, refresh_in), epoch),
        }
    }

    /// Starts the bus subscriber once, at the first call, on cachette's own runtime
    /// (`background.rs`: the first call's may be a sync bridge's, idle after its `block_on`, or
    /// a test's, which ends). Each message runs `detach()(key)` (false once the backend is
    /// gone, which ends the subscriber), then drops the key from L1. With no runtime to be had
    /// there is no subscriber, so L1 stays unused and calls are served from L2.
    pub(crate) fn start_bus<D>(&self, backend: &str, detach: impl FnOnce() -> D)
    where
        D: Fn(&str) -> bool + Send + Sync + 'static,
    {
        // Every call asks: the check reads one flag, and `detach` (which may take a reference
        // count, a shared write) is made only by the one call that starts the subscriber.
        if !self.bus.claim_start() {
            return;
        }
        let detach = detach();
        let bus = Arc::clone(&self.bus);
        let target = Arc::clone(self.l2.store().target());
        let timing = self.timing;
        let l1 = self.l1.clone();
        let tags = Arc::clone(&self.tags);
        let spawned = crate::background::spawn(async move {
            let invalidate = |key: &str| {
                // The flight first: a load under way must not store what it read before.
                let alive = detach(key);
                match key.strip_prefix(TAG_MESSAGE_MARK) {
                    Some(tag) => {
                        tags.forget(tag);
                        note_tag_invalidation();
                    }
                    None => l1.invalidate(key),
                }
                alive
            };
            bus.run(&target, timing, invalidate, || l1.invalidate_all())
                .await;
        });
        if spawned.is_none() {
            tracing::error!(
                backend,
                "a tiered backend needs a Tokio runtime for its invalidation bus; serving from \
                 redis only"
            );
        }
    }

    /// Deletes `keys` in L2 and announces each on the bus (one script), then, key by key,
    /// `detach`es its loads under way and drops it from this process's L1. L2 first: a load
    /// that read L2 before the deletion is caught by its detached flight or removed from L1
    /// here, and one that reads after sees the deletion; cleaning L1 first would let a load
    /// between the two steps refill it with the old value, which this process would never hear
    /// about (it ignores its own messages).
    pub(crate) async fn invalidate(&self, backend: &str, keys: &[CacheKey], detach: impl Fn(&str)) {
        self.l2
            .invalidate_announced(backend, keys, |key| self.bus.announcement(key))
            .await;
        self.invalidate_l1(keys, detach);
    }

    /// [`invalidate`](Self::invalidate) over a blocking connection.
    pub(crate) fn invalidate_blocking(
        &self,
        backend: &str,
        keys: &[CacheKey],
        detach: impl Fn(&str),
    ) {
        self.l2
            .invalidate_announced_blocking(backend, keys, |key| self.bus.announcement(key));
        self.invalidate_l1(keys, detach);
    }

    /// Write-through: `bytes` stored in L2, fenced, and announced on the bus as an
    /// invalidation of the key, so that every peer drops its L1 copy (and its load under way).
    pub(crate) async fn put(
        &self,
        key: &CacheKey,
        bytes: &[u8],
        ttl: Duration,
    ) -> Result<(), super::redis::StoreError> {
        let (channel, message) = self.bus.announcement(key.as_str());
        self.l2
            .store()
            .put(key.as_str(), bytes, ttl, Some((&channel, &message)))
            .await
    }

    /// The channel and message that tell other processes to drop their L1 copy of `key`.
    pub(crate) fn announcement(&self, key: &str) -> (String, String) {
        self.bus.announcement(key)
    }

    /// Detaches the key's load under way and drops its L1 copy in this process, after L2
    /// changed (see [`invalidate`](Self::invalidate) for why after).
    pub(crate) fn drop_local(&self, key: &CacheKey, detach: impl Fn(&str)) {
        self.invalidate_l1(std::slice::from_ref(key), detach);
    }

    /// The generations of tags this process learned from L2.
    pub(crate) fn tags(&self) -> &TagTable {
        &self.tags
    }

    /// Deletes the generations of `tags` in L2 and announces each on the bus (one script per
    /// tag), then forgets them here: every L1 entry carrying one, in every process, becomes a
    /// miss as the message arrives. Forgotten here even if L2 did not answer (the invalidation
    /// is then pending, and replayed with its announcement).
    pub(crate) async fn invalidate_tags(&self, backend: &str, tags: &[CacheKey]) {
        self.l2
            .invalidate_tags_announced(backend, tags, |tag| {
                self.bus.announcement(&format!("{TAG_MESSAGE_MARK}{tag}"))
            })
            .await;
        for tag in tags {
            self.tags.forget(tag.as_str());
        }
    }

    fn invalidate_l1(&self, keys: &[CacheKey], detach: impl Fn(&str)) {
        for key in keys {
            detach(key.as_str());
            self.l1.invalidate(key.as_str());
        }
    }
}

impl TieredBackendBuilder {
    /// The L1 store and its bound (default: [`MemoryBackend::default()`], 10,000 entries). It
    /// runs on the L2's clock: built on another one (see [`RedisBackendBuilder::clock`]), it is
    /// rebuilt alike, empty, on the L2's.
    ///
    /// [`RedisBackendBuilder::clock`]: crate::RedisBackendBuilder::clock
    pub fn l1(mut self, l1: MemoryBackend) -> Self {
        self.l1 = l1;
        self
    }

    /// The longest an entry stays in L1 (default 60 s), whatever the function's ttl: the bound
    /// on staleness should an invalidation message ever be lost without the bus noticing.
    pub fn l1_max_ttl(mut self, ttl: Duration) -> Self {
        self.l1_max_ttl = ttl;
        self
    }

    /// How often the subscriber connection is pinged (default 1 s): a bus that stops answering
    /// is noticed within this plus the L2's operation timeout, even with no traffic.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// The backend. Nothing connects until the first call.
    pub fn build(self) -> TieredBackend {
        let settings = self.l2.store().settings();
        let timing = BusTiming {
            heartbeat: self.heartbeat,
            timeout: settings.op_timeout.max(settings.connect_timeout),
        };
        TieredBackend {
            bus: Arc::new(Bus::new(bus_channel(&settings.prefix))),
            // One clock for both tiers, so that an L1 entry never outlives its L2 entry on it.
            l1: self.l1.on_clock(self.l2.clock()),
            l2: self.l2,
            l1_max_ttl: self.l1_max_ttl,
            timing,
            tags: Arc::new(TagTable::new()),
        }
    }
}

impl fmt::Debug for TieredBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredBackend")
            .field("l1", &self.l1)
            .field("l2", &self.l2)
            .field("l1_max_ttl", &self.l1_max_ttl)
            .field("l1_active", &self.l1_active())
            .finish()
    }
}
