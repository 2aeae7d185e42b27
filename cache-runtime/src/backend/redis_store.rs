//! The Redis store: raw envelope bytes under the entry's keys, a load lock with an owner token,
//! and a fence that stops a fill which began before an invalidation.
//!
//! Every operation is one round trip, bounded by a timeout, and gated by a circuit breaker: an
//! error, a timeout or an open breaker is reported as [`StoreError`], which callers treat as a
//! miss (fail open).
//!
//! Fence protocol: a loading leader's claim reads the entry's fence, creating it with a random
//! generation if it is missing; the fill script stores only if the fence still holds that
//! generation. An invalidation deletes the value and increments the fence (with a TTL longer
//! than any load), so a fill that saw the old generation is refused. A fence that expired during
//! an over-long load, or that a restarted, empty Redis lost, no longer matches either: every
//! error is on the safe side.
//!
//! Lock protocol: the claim takes the lock (`SET NX PX`, a random owner token) or, if another
//! process holds it, flags the entry as waited on; the holder renews it while loading
//! (`redis_lock`), and its fill or release, seeing the flag, publishes a wake-up
//! (`redis_wake`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::breaker::{Breaker, BreakerPolicy, Permit};
use super::pending::PendingInvalidations;
use super::redis_blocking::{BlockingConnections, Unsent};
use super::redis_keys::{wake_channel, EntryKeys, KeyArg, Role};
use super::redis_wake::{Waiting, Wakeups};
use crate::log_gate::LogGate;

/// Why a Redis operation did not happen; every case is a miss to the caller.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("redis is unavailable (circuit breaker open)")]
    Refused,
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("an invalidation of this key has not reached redis yet")]
    Pending,
}

impl StoreError {
    /// Whether Redis (or the way to it) failed, as opposed to answering about this request.
    pub(crate) fn is_transport(&self) -> bool {
        match self {
            StoreError::Refused | StoreError::Timeout(_) => true,
            StoreError::Redis(error) => is_transport_failure(error),
            StoreError::Pending => false,
        }
    }
}

/// What a read found: the envelope bytes, if any, and the fence generation to carry into a fill.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) fence: Option<i64>,
}

/// Settings of one Redis store.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub(crate) prefix: String,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) fence_ttl: Duration,
    pub(crate) breaker: BreakerPolicy,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            prefix: "cachet".to_owned(),
            op_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            fence_ttl: Duration::from_secs(60),
            breaker: BreakerPolicy::default(),
        }
    }
}

/// Pending invalidations replayed per round trip: a pipeline of this many script calls.
const REPLAY_BATCH: usize = 200;

pub(crate) struct RedisStore {
    /// This store, for the background tasks it starts (replay), which must not keep it alive.
    this: Weak<RedisStore>,
    client: Client,
    /// Made on first use, inside the caller's Tokio runtime: creating a `ConnectionManager`
    /// spawns its driver, which needs a runtime that configuration time may not have.
    connection: tokio::sync::OnceCell<ConnectionManager>,
    /// Plain connections for synchronous `#[invalidates]` functions, which cannot await.
    blocking: BlockingConnections,
    pending: PendingInvalidations,
    wakeups: Arc<Wakeups>,
    wake_channel: String,
    settings: RedisSettings,
    breaker: Breaker,
    fill_script: Script,
    invalidate_script: Script,
    release_script: Script,
    claim_script: Script,
    renew_script: Script,
    /// Whether the background replayer runs (`replay_in_background`).
    replayer_running: AtomicBool,
}

/// KEYS: value, fence, lock, waiters. ARGV: fence generation seen, bytes, ttl ms, token, wake
/// channel, cache key. Returns 1 if stored, 0 if fenced off. Releases the lock if `token` owns
/// it, and wakes the key's waiters in other processes.
const FILL: &str = r"
local fence = redis.call('GET', KEYS[2])
local stored = 0
if (fence or '') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  stored = 1
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
end
if redis.call('DEL', KEYS[4]) == 1 then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return stored
";

/// KEYS: value, fence. ARGV: fence ttl ms, bus channel ("" for none), bus message, a random
/// generation. Publishing in the same script makes "deleted" and "announced" one atomic step: no
/// process can see the deletion without the message being on its way. A fence that is not a
/// number (written by something else) is replaced by the random generation: the script cannot
/// fail on what the keys hold, so a replayed batch cannot be stuck on one bad key.
const INVALIDATE: &str = r"
redis.call('DEL', KEYS[1])
local generation = redis.pcall('INCR', KEYS[2])
if type(generation) == 'table' then
  redis.call('SET', KEYS[2], ARGV[4])
  generation = tonumber(ARGV[4])
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return generation
";

/// An invalidation message to publish with the deletion: (channel, message).
pub(crate) type Announce<'a> = Option<(&'a str, &'a str)>;

/// KEYS: value, fence, lock, waiters. ARGV: token, lease ms, a random fence generation, fence
/// ttl ms, waiters ttl ms, "1" to ignore the value (it was unreadable).
/// The value if there is one (`{value}`); otherwise the fence generation and whether the lock
/// was taken (`{false, fence, 0|1}`). One atomic step, so a leader that arrives just after
/// another's fill takes that value instead of loading again. A missing fence is created with a
/// random generation, so that a fill after the server lost its keys (a restart) is refused. A
/// lock key no holder of ours could have written (another type, no expiry, a lease longer than
/// ours) is foreign bytes: deleted, so that it cannot stall every miss.
const CLAIM: &str = r"
if ARGV[6] ~= '1' then
  local value = redis.call('GET', KEYS[1])
  if value then
    return {value}
  end
end
local fence = redis.call('GET', KEYS[2])
if not fence then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  fence = ARGV[3]
end
local kind = redis.call('TYPE', KEYS[3])['ok']
if kind ~= 'none' then
  local pttl = redis.call('PTTL', KEYS[3])
  if kind ~= 'string' or pttl < 0 or pttl > tonumber(ARGV[2]) then
    redis.call('DEL', KEYS[3])
  end
end
local taken = redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2])
if not taken then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[5])
end
return {false, fence, taken and 1 or 0}
";

/// What a loading leader found: someone's fill, or its go-ahead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The entry was filled meanwhile: its bytes.
    Filled(Vec<u8>),
    /// Load: the fence generation the fill must carry, and the lock's owner token if this
    /// caller took it (`None`: another process holds it).
    Load {
        fence: Option<i64>,
        token: Option<String>,
    },
}

/// KEYS: lock, waiters. ARGV: token, wake channel, cache key. Compare-and-delete, so only the
/// owner releases; a release wakes the key's waiters.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if redis.call('DEL', KEYS[2]) == 1 then
    redis.call('PUBLISH', ARGV[2], ARGV[3])
  end
  return 1
end
return 0
";

/// KEYS: lock. ARGV: token, lease ms. Extends the lease if `token` still owns the lock.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

impl RedisStore {
    /// Creates the store without connecting: a store whose server is down still serves
    /// (uncached) and connects when the server comes back.
    pub(crate) fn new(url: &str, settings: RedisSettings) -> Result<Arc<Self>, redis::RedisError> {
        let client = Client::open(url)?;
        let wake_channel = wake_channel(&settings.prefix);
        Ok(Arc::new_cyclic(|this| RedisStore {
            this: Weak::clone(this),
            blocking: BlockingConnections::new(client.clone()),
            client,
            connection: tokio::sync::OnceCell::new(),
            pending: PendingInvalidations::default(),
            wakeups: Arc::new(Wakeups::new(wake_channel.clone())),
            wake_channel,
            breaker: Breaker::new(settings.breaker),
            settings,
            fill_script: Script::new(FILL),
            invalidate_script: Script::new(INVALIDATE),
            release_script: Script::new(RELEASE),
            claim_script: Script::new(CLAIM),
            renew_script: Script::new(RENEW),
            replayer_running: AtomicBool::new(false),
        }))
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let manager = self
            .connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.settings.connect_timeout))
                    // `guarded` bounds every operation, reconnection waits included; a second
                    // timer per request inside the connection would only double the cost.
                    .set_response_timeout(None);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(manager.clone())
    }

    fn keys(&self, cache_key: &str) -> EntryKeys {
        EntryKeys::new(&self.settings.prefix, cache_key)
    }

    /// Runs one operation under the breaker and the timeout.
    async fn guarded<T>(
        &self,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        if self.breaker.permit_at(Instant::now) == Permit::Refused {
            return Err(StoreError::Refused);
        }
        let budget = self.settings.op_timeout;
        let result = match tokio::time::timeout(budget, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StoreError::Redis(error)),
            Err(_) => Err(StoreError::Timeout(budget)),
        };
        self.record(&result);
        result
    }

    fn record<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => self.breaker.record_success(),
            // Redis answered: the error is about this request (a key of another type, a
            // script error), a miss for this call, and no sign that Redis is unwell. Counting
            // it would let one bad key switch caching off for every key.
            Err(StoreError::Redis(error)) if !is_transport_failure(error) => {
                self.breaker.record_success();
                static GATE: LogGate = LogGate::new();
                if let Some(suppressed) = GATE.admit() {
                    tracing::warn!(
                        prefix = %self.settings.prefix,
                        %error,
                        suppressed,
                        "redis refused a request; treating it as a miss"
                    );
                }
            }
            Err(StoreError::Pending) => {}
            Err(_) => {
                if self.breaker.record_failure(Instant::now()) {
                    tracing::warn!(
                        prefix = %self.settings.prefix,
                        "redis keeps failing; calls run uncached and redis is probed every {:?}",
                        self.settings.breaker.probe_interval
                    );
                }
            }
        }
    }

    /// What every operation on `cache_key` does first while invalidations are pending: replay
    /// one batch (one round trip, so a call pays a bounded time for it), then refuse the key
    /// if its own invalidation is still unconfirmed, so nothing stale is read or stored.
    async fn settle_pending(&self, cache_key: &str) -> Result<(), StoreError> {
        if !self.pending.any() {
            return Ok(());
        }
        match self.replay_batch(false).await {
            // Redis is unwell: so would this operation be; one timeout per call.
            Err(error) if error.is_transport() => return Err(error),
            _ => {}
        }
        if self.pending.overflowed() {
            // The purge is the background replayer's, never a caller's: it walks the keyspace.
            self.replay_in_background();
        }
        if self.pending.holds(cache_key) {
            return Err(StoreError::Pending);
        }
        Ok(())
    }

    /// Reads the value: one `GET`, the hit path's only round trip.
    ///
    /// The fence generation a fill must carry is not read here but by the loading leader, with
    /// its lock attempt ([`claim`](Self::claim)): a hit never needs it, and
    /// an `MGET` of both costs the client about twice a `GET`'s parsing (ARCHITECTURE.md, "Hit
    /// path performance"). Reading the fence after the value is as safe as reading both at
    /// once: either is read before the load starts, so an invalidation after the fence read
    /// still fences the fill off, and one before it happened before the load, whose value is
    /// then fresh.
    pub(crate) async fn get(&self, cache_key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.settle_pending(cache_key).await?;
        let mut connection = self.connection().await?;
        self.guarded(
            redis::cmd("GET")
                .arg(self.key_arg(cache_key, Role::Value))
                .query_async(&mut connection),
        )
        .await
    }

    /// The value and, on a miss, the fence generation: what a loader needs, in the tests.
    #[cfg(test)]
    pub(crate) async fn read(&self, cache_key: &str) -> Result<Read, StoreError> {
        let value = self.get(cache_key).await?;
        let fence = match value {
            Some(_) => None,
            None => self.fence(cache_key).await?,
        };
        Ok(Read { value, fence })
    }

    /// A loading leader's one round trip: the value if another fill landed since its read
    /// (unless `over_unreadable`: the value it found could not be decoded), else the fence
    /// generation and the lock ([`CLAIM`]).
    pub(crate) async fn claim(
        &self,
        cache_key: &str,
        lease: Duration,
        over_unreadable: bool,
    ) -> Result<Claim, StoreError> {
        self.settle_pending(cache_key).await?;
        let token = format!("{:032x}", fastrand::u128(..));
        let keys = self.keys(cache_key);
        let mut connection = self.connection().await?;
        let mut invocation = self.claim_script.prepare_invoke();
        invocation
            .key(keys.key(Role::Value))
            .key(keys.key(Role::Fence))
            .key(keys.key(Role::Lock))
            .key(keys.key(Role::Waiters))
            .arg(&token)
            .arg(millis(lease))
            .arg(random_generation())
            .arg(millis(self.settings.fence_ttl))
            .arg(millis(lease * 2))
            .arg(if over_unreadable { "1" } else { "" });
        // Until its reply is in hand, the claim may take the lock for a token nobody will hold
        // (the caller cancelled, or gave up at the timeout while a paused server kept the
        // script to run on resume): the guard then sends a release after it.
        let mut unanswered = UnansweredClaim {
            store: self,
            cache_key,
            token: &token,
            connection: Some(connection.clone()),
        };
        let reply = self.guarded(invocation.invoke_async(&mut connection)).await;
        if matches!(reply, Ok(_) | Err(StoreError::Refused)) {
            unanswered.connection = None;
        }
        drop(unanswered);
        parse_claim(reply?, token).map_err(StoreError::Redis)
    }

    /// Releases `token`'s lock after a claim whose reply never came: sent on the claim's own
    /// connection, it runs after the claim wherever the claim went; it bypasses the breaker for
    /// the same reason.
    fn release_unowned(&self, cache_key: &str, token: &str, mut connection: ConnectionManager) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let keys = self.keys(cache_key);
        // EVAL with the text: it cannot fail for a script cache the restart emptied.
        let mut command = redis::cmd("EVAL");
        command
            .arg(RELEASE)
            .arg(2)
            .arg(keys.key(Role::Lock))
            .arg(keys.key(Role::Waiters))
            .arg(token)
            .arg(&self.wake_channel)
            .arg(cache_key);
        let bound = super::redis_lock::LEASE;
        runtime.spawn(async move {
            let _ = tokio::time::timeout(bound, command.query_async::<i64>(&mut connection)).await;
        });
    }

    /// The entry's fence generation, which a fill must carry.
    #[cfg(test)]
    pub(crate) async fn fence(&self, cache_key: &str) -> Result<Option<i64>, StoreError> {
        let mut connection = self.connection().await?;
        self.guarded(
            redis::cmd("GET")
                .arg(self.key_arg(cache_key, Role::Fence))
                .query_async(&mut connection),
        )
        .await
    }

    fn key_arg<'a>(&'a self, cache_key: &'a str, role: Role) -> KeyArg<'a> {
        KeyArg {
            prefix: &self.settings.prefix,
            cache_key,
            role,
        }
    }

    /// Stores `bytes` unless an invalidation moved the fence past `read_fence`, releases the
    /// lock held by `token` and wakes the key's waiters: one script, one round trip. Returns
    /// whether it stored.
    pub(crate) async fn fill(
        &self,
        cache_key: &str,
        read_fence: Option<i64>,
        bytes: &[u8],
        ttl: Duration,
        token: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.settle_pending(cache_key).await?;
        let keys = self.keys(cache_key);
        let mut connection = self.connection().await?;
        let fence = read_fence.map(|g| g.to_string()).unwrap_or_default();
        let mut invocation = self.fill_script.prepare_invoke();
        invocation
            .key(keys.key(Role::Value))
            .key(keys.key(Role::Fence))
            .key(keys.key(Role::Lock))
            .key(keys.key(Role::Waiters))
            .arg(fence)
            .arg(bytes)
            .arg(millis(ttl).max(1))
            .arg(token.unwrap_or(""))
            .arg(&self.wake_channel)
            .arg(cache_key);
        let stored: i64 = self
            .guarded(invocation.invoke_async(&mut connection))
            .await?;
        Ok(stored == 1)
    }

    /// Deletes the value and advances the fence (and publishes `announce`, if any). If it does
    /// not reach Redis, it is kept and replayed until it does.
    pub(crate) async fn invalidate(
        &self,
        cache_key: &str,
        announce: Announce<'_>,
    ) -> Result<(), StoreError> {
        let result = async {
            if self.pending.any() {
                match self.replay_batch(false).await {
                    Err(error) if error.is_transport() => return Err(error),
                    _ => {}
                }
            }
            let mut connection = self.connection().await?;
            let invocation = self.invalidation(cache_key, announce);
            let _generation: i64 = self
                .guarded(invocation.invoke_async(&mut connection))
                .await?;
            Ok(())
        }
        .await;
        match &result {
            Ok(()) => self.pending.confirm([cache_key], false),
            Err(_) => self.keep_for_replay(cache_key, announce),
        }
        result
    }

    /// Queues an invalidation for replay without trying it now: for the further keys of a call
    /// whose first invalidation found Redis unreachable (one timeout per call).
    pub(crate) fn keep_for_replay(&self, cache_key: &str, announce: Announce<'_>) {
        let announce = announce.map(|(channel, message)| (channel.to_owned(), message.to_owned()));
        self.pending.push(cache_key, announce);
        self.replay_in_background();
    }

    /// Replays one batch of pending invalidations in one round trip, unless another caller is
    /// replaying (then `false`); after an overflow, once the queue is empty, `may_purge` lets it
    /// run the purge. Each invalidation stays pending until Redis confirms it; one that Redis
    /// refuses for itself (a reply error about its keys) is dropped, logged, so that it cannot
    /// hold up the others forever.
    async fn replay_batch(&self, may_purge: bool) -> Result<bool, StoreError> {
        let Some(_replaying) = self.pending.start_replay() else {
            return Ok(false);
        };
        let batch = self.pending.batch(REPLAY_BATCH);
        if !batch.is_empty() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            pipe.load_script(&self.invalidate_script).ignore();
            for (key, announce) in &batch {
                let announce = announce.as_ref().map(|(c, m)| (c.as_str(), m.as_str()));
                pipe.invoke_script(&self.invalidation(key, announce));
            }
            let mut connection = self.connection().await?;
            let results: Vec<redis::RedisResult<redis::Value>> =
                self.guarded(pipe.query_async(&mut connection)).await?;
            let mut confirmed = Vec::with_capacity(batch.len());
            let mut transport = None;
            for ((key, _), result) in batch.iter().zip(&results) {
                match result {
                    Ok(_) => confirmed.push(key.as_str()),
                    Err(error) if is_transport_failure(error) => transport = Some(error.clone()),
                    Err(error) => {
                        static GATE: LogGate = LogGate::new();
                        if let Some(suppressed) = GATE.admit() {
                            tracing::error!(
                                prefix = %self.settings.prefix,
                                key = key.as_str(),
                                %error,
                                suppressed,
                                "redis refused a replayed invalidation; dropping it"
                            );
                        }
                        confirmed.push(key.as_str());
                    }
                }
            }
            self.pending.confirm(confirmed.iter().copied(), false);
            tracing::info!(
                prefix = %self.settings.prefix,
                replayed = confirmed.len(),
                "replayed invalidations that had not reached redis"
            );
            if let Some(error) = transport {
                return Err(StoreError::Redis(error));
            }
        }
        if may_purge && self.pending.overflowed() && self.pending.batch(1).is_empty() {
            self.purge().await?;
            self.pending.confirm([], true);
        }
        Ok(true)
    }

    /// Keeps replaying until nothing is pending, in a task of its own, so that a process that
    /// only writes (and never reads again) still delivers its invalidations once Redis answers.
    fn replay_in_background(&self) {
        if self.replayer_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to replay on: the next operation that reaches Redis replays.
            self.replayer_running.store(false, Ordering::Release);
            return;
        };
        let mut replayer = Replayer(Some(Weak::clone(&self.this)));
        runtime.spawn(async move {
            loop {
                let Some(store) = replayer.0.as_ref().and_then(Weak::upgrade) else {
                    return;
                };
                let replayed = matches!(store.replay_batch(true).await, Ok(true));
                if !store.pending.any() {
                    store.replayer_running.store(false, Ordering::Release);
                    // Something queued between the check and the flag found the flag still
                    // set and left it to this task: carry on, unless another task took over.
                    if !store.pending.any() || store.replayer_running.swap(true, Ordering::AcqRel) {
                        replayer.disarm();
                        return;
                    }
                }
                if replayed {
                    // Redis answers: the next batch at once.
                    continue;
                }
                let pause = store.settings.breaker.probe_interval / 4;
                drop(store);
                tokio::time::sleep(pause).await;
            }
        });
    }

    /// Deletes every entry and every fence under the prefix (so loads under way store nothing), and tells tiered peers to drop their L1: what a replay ends with after the
    /// queue overflowed, since the lost keys are no longer known. O(keys under the prefix), for
    /// a rare disaster, one `SCAN` page per round trip.
    async fn purge(&self) -> Result<(), StoreError> {
        let pattern = format!(
            "{}:{}:*",
            self.settings.prefix,
            super::redis_keys::KEY_FORMAT
        );
        let mut connection = self.connection().await?;
        let mut cursor = 0u64;
        let mut purged = 0usize;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .guarded(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1_000)
                        .query_async(&mut connection),
                )
                .await?;
            let mut pipe = redis::pipe();
            for key in &keys {
                match key.last() {
                    Some(b'v') => {
                        pipe.cmd("DEL").arg(key).ignore();
                        purged += 1;
                    }
                    // Deleted, not advanced: a fence may hold foreign bytes, and a fill needs
                    // the fence it saw, while a claim after this makes a new one.
                    Some(b'f') => {
                        pipe.cmd("DEL").arg(key).ignore();
                    }
                    _ => {}
                }
            }
            if !pipe.is_empty() {
                self.guarded(pipe.query_async::<()>(&mut connection))
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: Result<(), _> = self
            .guarded(
                redis::cmd("PUBLISH")
                    .arg(super::redis_keys::bus_channel(&self.settings.prefix))
                    .arg(super::bus::FLUSH_MESSAGE)
                    .query_async(&mut connection),
            )
            .await;
        tracing::warn!(
            prefix = %self.settings.prefix,
            purged,
            "the invalidation queue had overflowed: every entry under the prefix was deleted"
        );
        Ok(())
    }

    /// [`invalidate`](Self::invalidate) for a caller that cannot await: the same script over a
    /// plain connection, the whole call bounded by the operation timeout.
    pub(crate) fn invalidate_blocking(
        &self,
        cache_key: &str,
        announce: Announce<'_>,
    ) -> Result<(), StoreError> {
        if self.breaker.permit(Instant::now()) == Permit::Refused {
            self.keep_for_replay(cache_key, announce);
            return Err(StoreError::Refused);
        }
        let invocation = self.invalidation(cache_key, announce);
        let budget = self.settings.op_timeout;
        let result = match self
            .blocking
            .run(budget, self.settings.connect_timeout, |connection| {
                invocation.invoke::<i64>(connection)
            }) {
            Ok(Ok(_generation)) => Ok(()),
            Ok(Err(error)) if error.is_timeout() => Err(StoreError::Timeout(budget)),
            Ok(Err(error)) | Err(Unsent::Connect(error)) => Err(StoreError::Redis(error)),
            Err(Unsent::Deadline) => Err(StoreError::Timeout(budget)),
        };
        self.record(&result);
        match &result {
            Ok(()) => self.pending.confirm([cache_key], false),
            Err(_) => self.keep_for_replay(cache_key, announce),
        }
        result
    }

    fn invalidation(&self, cache_key: &str, announce: Announce<'_>) -> redis::ScriptInvocation<'_> {
        let keys = self.keys(cache_key);
        let (channel, message) = announce.unwrap_or(("", ""));
        let mut invocation = self.invalidate_script.prepare_invoke();
        invocation
            .key(keys.key(Role::Value))
            .key(keys.key(Role::Fence))
            .arg(millis(self.settings.fence_ttl))
            .arg(channel)
            .arg(message)
            .arg(random_generation());
        invocation
    }

    /// The client, for connections of another kind (the tiered backend's subscriber).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Registers the caller as waiting for `cache_key`'s lock holder (`redis_wake`).
    pub(crate) fn wait_for_holder(&self, cache_key: &str) -> Waiting<'_> {
        self.wakeups.register(&self.client, cache_key)
    }

    /// Whether a wake-up published now is sure to reach this process.
    pub(crate) fn wakeups_up(&self) -> bool {
        self.wakeups.is_up()
    }

    /// Releases the lock if `token` still owns it, waking the key's waiters.
    pub(crate) async fn release(&self, cache_key: &str, token: &str) -> Result<bool, StoreError> {
        let keys = self.keys(cache_key);
        let mut connection = self.connection().await?;
        let mut invocation = self.release_script.prepare_invoke();
        invocation
            .key(keys.key(Role::Lock))
            .key(keys.key(Role::Waiters))
            .arg(token)
            .arg(&self.wake_channel)
            .arg(cache_key);
        let released: i64 = self
            .guarded(invocation.invoke_async(&mut connection))
            .await?;
        Ok(released == 1)
    }

    /// Extends the lock's lease if `token` still owns it; false if it does not.
    pub(crate) async fn renew(
        &self,
        cache_key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.renew_script.prepare_invoke();
        invocation
            .key(self.keys(cache_key).key(Role::Lock))
            .arg(token)
            .arg(millis(lease));
        let renewed: i64 = self
            .guarded(invocation.invoke_async(&mut connection))
            .await?;
        Ok(renewed == 1)
    }
}

/// A claim under way: dropped before its reply (cancelled, timed out, failed in transit), it
/// releases the lock the claim may take.
struct UnansweredClaim<'a> {
    store: &'a RedisStore,
    cache_key: &'a str,
    token: &'a str,
    /// `None` once the reply is in hand.
    connection: Option<ConnectionManager>,
}

impl Drop for UnansweredClaim<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.store
                .release_unowned(self.cache_key, self.token, connection);
        }
    }
}

/// The background replayer's claim on [`RedisStore::replayer_running`]: cleared when its task
/// ends other than by finding nothing pending (dropped with its runtime, say), so that a later
/// failure starts another.
struct Replayer(Option<Weak<RedisStore>>);

impl Replayer {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Replayer {
    fn drop(&mut self) {
        if let Some(store) = self.0.as_ref().and_then(Weak::upgrade) {
            store.replayer_running.store(false, Ordering::Release);
        }
    }
}

fn parse_claim(reply: redis::Value, token: String) -> redis::RedisResult<Claim> {
    use redis::{FromRedisValue, Value};
    let unexpected = || {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected reply to the claim script",
        ))
    };
    let Value::Array(items) = reply else {
        return Err(unexpected());
    };
    match <[Value; 1]>::try_from(items) {
        Ok([value]) => Ok(Claim::Filled(Vec::<u8>::from_redis_value(value)?)),
        Err(items) => {
            let [_, fence, taken] = <[Value; 3]>::try_from(items).map_err(|_| unexpected())?;
            let fence = Option::<i64>::from_redis_value(fence)?;
            let taken = i64::from_redis_value(taken)? == 1;
            Ok(Claim::Load {
                fence,
                token: taken.then_some(token),
            })
        }
    }
}

/// A fence generation for a fence that is missing or unusable: far from the small numbers `INCR`
/// counts from a missing key, and positive, so `INCR` keeps working on it.
fn random_generation() -> i64 {
    fastrand::i64(1 << 40..i64::MAX / 2)
}

/// Whether `error` says Redis (or the way to it) is unwell, as opposed to an answer about one
/// request: what the circuit breaker counts.
fn is_transport_failure(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Io
            | ErrorKind::AuthenticationFailed
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
    ) || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::test_redis_server::RedisServer;
    use futures_util::StreamExt;

    fn store(server: &RedisServer) -> Arc<RedisStore> {
        let settings = RedisSettings {
            prefix: "test".to_owned(),
            op_timeout: Duration::from_millis(200),
            breaker: BreakerPolicy {
                failures_to_open: 2,
                probe_interval: Duration::from_millis(300),
            },
            ..RedisSettings::default()
        };
        RedisStore::new(&server.url(), settings).expect("valid url")
    }

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_fill_is_read_back_in_one_round_trip() {
        let server = RedisServer::start();
        let store = store(&server);
        let miss = store.read("k").await.expect("redis is up");
        assert_eq!(
            miss,
            Read {
                value: None,
                fence: None
            }
        );
        assert!(store
            .fill("k", miss.fence, b"bytes", TTL, None)
            .await
            .expect("up"));
        assert_eq!(
            store.read("k").await.expect("up").value.as_deref(),
            Some(&b"bytes"[..])
        );
    }

    #[tokio::test]
    async fn a_fill_that_read_before_an_invalidation_is_refused() {
        let server = RedisServer::start();
        let store = store(&server);
        let before = store.read("k").await.expect("up");
        store.invalidate("k", None).await.expect("up");
        assert!(!store
            .fill("k", before.fence, b"old", TTL, None)
            .await
            .expect("up"));
        assert_eq!(store.read("k").await.expect("up").value, None);

        let after = store.read("k").await.expect("up");
        assert_eq!(after.fence, Some(1));
        assert!(store
            .fill("k", after.fence, b"new", TTL, None)
            .await
            .expect("up"));
        store.invalidate("k", None).await.expect("up");
        assert!(!store
            .fill("k", after.fence, b"stale", TTL, None)
            .await
            .expect("up"));
    }

    #[tokio::test]
    async fn a_claim_returns_a_fill_or_the_fence_and_the_lock() {
        let server = RedisServer::start();
        let store = store(&server);
        let lease = Duration::from_secs(10);
        let Claim::Load {
            fence: Some(seeded),
            token: Some(token),
        } = store.claim("k", lease, false).await.expect("up")
        else {
            panic!("a cold key is ours to load, under a fence of its own making");
        };
        assert_eq!(
            store.claim("k", lease, false).await.expect("up"),
            Claim::Load {
                fence: Some(seeded),
                token: None
            },
            "the lock is held"
        );
        store.invalidate("k", None).await.expect("up");
        assert_eq!(
            store.claim("k", lease, false).await.expect("up"),
            Claim::Load {
                fence: Some(seeded + 1),
                token: None
            }
        );
        assert!(
            !store
                .fill("k", Some(seeded), b"old", TTL, None)
                .await
                .expect("up"),
            "a load that claimed before the invalidation is fenced off"
        );
        assert!(store
            .fill("k", Some(seeded + 1), b"v", TTL, Some(&token))
            .await
            .expect("up"));
        assert_eq!(
            store.claim("k", lease, false).await.expect("up"),
            Claim::Filled(b"v".to_vec()),
            "a leader arriving after the fill takes it"
        );
        assert!(
            matches!(
                store.claim("k", lease, true).await.expect("up"),
                Claim::Load { token: Some(_), .. }
            ),
            "over an unreadable value, the claim takes the lock"
        );
    }

    #[tokio::test]
    async fn a_fill_after_the_server_lost_its_keys_is_refused() {
        let mut server = RedisServer::start();
        let store = store(&server);
        let lease = Duration::from_secs(10);
        let Claim::Load { fence, .. } = store.claim("k", lease, false).await.expect("up") else {
            panic!("cold");
        };
        // Restarted empty: the fence (and any invalidation it recorded) is gone.
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(10);
        let stored = loop {
            match store.fill("k", fence, b"old", TTL, None).await {
                Ok(stored) => break stored,
                Err(_) => assert!(Instant::now() < deadline, "redis did not come back"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            !stored,
            "a fill whose fence the server lost must be refused"
        );
    }

    #[tokio::test]
    async fn only_the_owner_releases_or_renews_the_lock() {
        let server = RedisServer::start();
        let store = store(&server);
        let lease = Duration::from_secs(10);
        let take = |store: Arc<RedisStore>| async move {
            match store.claim("k", lease, true).await.expect("up") {
                Claim::Load { token, .. } => token,
                Claim::Filled(_) => panic!("the value is ignored"),
            }
        };
        let token = take(Arc::clone(&store)).await.expect("free");
        assert_eq!(take(Arc::clone(&store)).await, None, "held");
        assert!(!store.release("k", "someone-else").await.expect("up"));
        assert!(!store.renew("k", "someone-else", lease).await.expect("up"));
        assert!(store.renew("k", &token, lease).await.expect("up"));
        assert_eq!(take(Arc::clone(&store)).await, None, "still held");
        // The fill releases the lock of its own token in the same round trip.
        let fence = store.fence("k").await.expect("up");
        assert!(store
            .fill("k", fence, b"v", TTL, Some(&token))
            .await
            .expect("up"));
        assert!(take(Arc::clone(&store)).await.is_some());
    }

    #[test]
    fn a_blocking_invalidation_fences_like_the_async_one() {
        let server = RedisServer::start();
        let store = store(&server);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let before = runtime.block_on(store.read("k")).expect("up");
        store.invalidate_blocking("k", None).expect("up");
        store
            .invalidate_blocking("k", None)
            .expect("the connection is reused");
        let refused = runtime.block_on(store.fill("k", before.fence, b"old", TTL, None));
        assert!(!refused.expect("up"), "the fence moved");
        let after = runtime.block_on(store.read("k")).expect("up");
        assert_eq!(after.fence, Some(2));
    }

    #[tokio::test]
    async fn a_dead_redis_opens_the_breaker_and_a_restarted_one_closes_it() {
        let mut server = RedisServer::start();
        let store = store(&server);
        store.read("k").await.expect("up");
        server.kill();
        assert!(store.read("k").await.is_err());
        assert!(store.read("k").await.is_err());
        let refused = Instant::now();
        assert!(matches!(store.read("k").await, Err(StoreError::Refused)));
        assert!(
            refused.elapsed() < Duration::from_millis(50),
            "no network wait"
        );
        server.restart();
        // The breaker lets a probe through after its interval; retry until then, bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match store.read("k").await {
                Ok(read) => {
                    assert_eq!(read.value, None);
                    break;
                }
                Err(_) => assert!(Instant::now() < deadline, "redis did not come back"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(store.breaker.is_closed());
    }

    #[tokio::test]
    async fn an_invalidation_lost_to_a_paused_redis_is_replayed_before_the_next_read() {
        let server = RedisServer::start();
        let store = store(&server);
        assert!(store.fill("k", None, b"old", TTL, None).await.expect("up"));
        server.pause();
        assert!(store.invalidate("k", None).await.is_err(), "lost");
        server.resume();
        // The breaker may refuse until its probe interval has passed; bounded retry.
        let deadline = Instant::now() + Duration::from_secs(10);
        let read = loop {
            match store.read("k").await {
                Ok(read) => break read,
                Err(_) => assert!(Instant::now() < deadline, "redis did not come back"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            read.value, None,
            "the old value was removed before this read"
        );
        assert_eq!(read.fence, Some(1), "and the fence advanced");
    }

    #[tokio::test]
    async fn an_overflowed_queue_ends_in_a_purge_of_the_prefix() {
        use crate::backend::pending::MAX_PENDING;
        let mut server = RedisServer::start();
        let store = store(&server);
        let Claim::Load { fence, .. } = store.claim("loading", TTL, false).await.expect("up")
        else {
            panic!("cold");
        };
        for key in ["a", "b"] {
            assert!(store.fill(key, None, b"old", TTL, None).await.expect("up"));
        }
        server.kill();
        // More lost invalidations than are kept, none of them of `a`, `b` or `loading`.
        for n in 0..=MAX_PENDING {
            store.keep_for_replay(&format!("lost {n}"), None);
        }
        assert!(store.pending.overflowed());
        assert!(
            store.pending.holds("a"),
            "after an overflow no key is read from redis"
        );
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.pending.any() {
            assert!(Instant::now() < deadline, "the replay did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Restarted empty, so re-plant what the purge must remove, then overflow again.
        let mut raw = redis::Client::open(server.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let mut bus = redis::Client::open(server.url())
            .expect("url")
            .get_async_pubsub()
            .await
            .expect("subscribe");
        bus.subscribe(super::super::redis_keys::bus_channel("test"))
            .await
            .expect("subscribe");
        let _: () = redis::cmd("SET")
            .arg("test:1:{a}:v")
            .arg("old")
            .query_async(&mut raw)
            .await
            .expect("set");
        let _: () = redis::cmd("SET")
            .arg("test:1:{loading}:f")
            .arg(fence.expect("seeded"))
            .query_async(&mut raw)
            .await
            .expect("set");
        store.pending.push("x", None);
        for n in 0..MAX_PENDING {
            store.pending.push(&format!("lost {n}"), None);
        }
        assert!(store.pending.overflowed());
        while store.pending.any() {
            store.replay_batch(true).await.expect("up");
        }
        let held: Option<Vec<u8>> = redis::cmd("GET")
            .arg("test:1:{a}:v")
            .query_async(&mut raw)
            .await
            .expect("get");
        assert_eq!(held, None, "the purge deleted the entry");
        assert!(
            !store
                .fill("loading", fence, b"old", TTL, None)
                .await
                .expect("up"),
            "and removed the fence of a load under way"
        );
        let message = tokio::time::timeout(Duration::from_secs(5), bus.on_message().next())
            .await
            .expect("a bus message")
            .expect("open");
        assert_eq!(
            message.get_payload::<String>().expect("text"),
            crate::backend::bus::FLUSH_MESSAGE,
            "tiered peers are told to drop their L1"
        );
        assert_eq!(store.get("a").await.expect("usable again"), None);
    }

    #[tokio::test]
    async fn a_paused_redis_costs_at_most_the_timeout() {
        let server = RedisServer::start();
        let store = store(&server);
        store.read("k").await.expect("up");
        server.pause();
        let started = Instant::now();
        assert!(store.read("k").await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        server.resume();
    }
}
