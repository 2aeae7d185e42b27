//! The Redis store: raw envelope bytes under the entry's keys, a load lock with an owner token,
//! and a fence that stops a fill which began before an invalidation.
//!
//! Every operation is one round trip (a read that misses, two), bounded by a timeout, and gated
//! by a circuit breaker: an error, a timeout or an open breaker is reported as [`StoreError`],
//! which callers treat as a miss (fail open).
//!
//! Fence protocol: a reader fetches the value, and on a miss the fence generation (`read`). A
//! loader carries the generation it saw; the fill script stores only if the fence still holds
//! that generation, then releases the lock if the token is its own. An invalidation deletes the
//! value and increments the fence (with a TTL longer than any load lease), so a fill that read
//! the old generation is refused. If the fence expires during an over-long load, the generation
//! read (`n`) no longer matches (`nil`), so the error is on the safe side; only a loader that
//! saw *no* fence and outlives a whole fence TTL could store late, which the lease bounds.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::breaker::{Breaker, BreakerPolicy, Permit};
use super::pending::PendingInvalidations;
use super::redis_keys::{EntryKeys, KeyArg, Role};
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

pub(crate) struct RedisStore {
    client: Client,
    /// Made on first use, inside the caller's Tokio runtime: creating a `ConnectionManager`
    /// spawns its driver, which needs a runtime that configuration time may not have.
    connection: tokio::sync::OnceCell<ConnectionManager>,
    /// A plain connection for synchronous `#[invalidates]` functions, which cannot await; made
    /// on first use and dropped after an error, so the next use reconnects.
    blocking: std::sync::Mutex<Option<redis::Connection>>,
    pending: PendingInvalidations,
    settings: RedisSettings,
    breaker: Breaker,
    fill_script: Script,
    invalidate_script: Script,
    release_script: Script,
    claim_script: Script,
}

/// KEYS: value, fence, lock. ARGV: fence generation seen ("" for none), bytes, ttl ms, token.
/// Returns 1 if stored, 0 if fenced off.
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
return stored
";

/// KEYS: value, fence. ARGV: fence ttl ms, bus channel ("" for none), bus message.
/// Publishing in the same script makes "deleted" and "announced" one atomic step: no process can
/// see the deletion without the message being on its way.
const INVALIDATE: &str = r"
redis.call('DEL', KEYS[1])
local generation = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return generation
";

/// An invalidation message to publish with the deletion: (channel, message).
pub(crate) type Announce<'a> = Option<(&'a str, &'a str)>;

/// KEYS: value, fence, lock. ARGV: token, lease ms. The value if there is one (`{value}`);
/// otherwise the fence generation and whether the lock was taken (`{false, fence, 0|1}`). One
/// atomic step, so a leader that arrives just after another's fill takes that value instead of
/// loading again.
const CLAIM: &str = r"
local value = redis.call('GET', KEYS[1])
if value then
  return {value}
end
local fence = redis.call('GET', KEYS[2])
local taken = redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2])
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

/// KEYS: lock. ARGV: token. Compare-and-delete, so only the owner releases.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

impl RedisStore {
    /// Creates the store without connecting: a store whose server is down still serves
    /// (uncached) and connects when the server comes back.
    pub(crate) fn new(url: &str, settings: RedisSettings) -> Result<Self, redis::RedisError> {
        let client = Client::open(url)?;
        Ok(RedisStore {
            client,
            connection: tokio::sync::OnceCell::new(),
            blocking: std::sync::Mutex::new(None),
            pending: PendingInvalidations::default(),
            breaker: Breaker::new(settings.breaker),
            settings,
            fill_script: Script::new(FILL),
            invalidate_script: Script::new(INVALIDATE),
            release_script: Script::new(RELEASE),
            claim_script: Script::new(CLAIM),
        })
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
        if self.pending.any() {
            self.replay_pending().await?;
        }
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

    /// A loading leader's one round trip: the value if another fill landed since its read,
    /// else the fence generation and the lock ([`CLAIM`]).
    pub(crate) async fn claim(
        &self,
        cache_key: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let token = format!("{:032x}", fastrand::u128(..));
        let keys = self.keys(cache_key);
        let mut connection = self.connection().await?;
        let mut invocation = self.claim_script.prepare_invoke();
        invocation
            .key(keys.key(Role::Value))
            .key(keys.key(Role::Fence))
            .key(keys.key(Role::Lock))
            .arg(&token)
            .arg(millis(lease));
        let reply: redis::Value = self
            .guarded(invocation.invoke_async(&mut connection))
            .await?;
        parse_claim(reply, token).map_err(StoreError::Redis)
    }

    /// A loader's one round trip before it loads: the fence generation its fill must carry,
    /// and the load lock for `lease` if nobody holds it (the owner token if taken).
    pub(crate) async fn fence_and_lock(
        &self,
        cache_key: &str,
        lease: Duration,
    ) -> Result<(Option<i64>, Option<String>), StoreError> {
        let token = format!("{:032x}", fastrand::u128(..));
        let mut connection = self.connection().await?;
        let (fence, taken): (Option<i64>, Option<String>) = self
            .guarded(
                redis::pipe()
                    .cmd("GET")
                    .arg(self.key_arg(cache_key, Role::Fence))
                    .cmd("SET")
                    .arg(self.key_arg(cache_key, Role::Lock))
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(lease))
                    .query_async(&mut connection),
            )
            .await?;
        Ok((fence, taken.map(|_| token)))
    }

    /// The entry's fence generation, which a fill must carry.
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

    /// Stores `bytes` unless an invalidation moved the fence past `read_fence`, and releases
    /// the lock held by `token`: one script, one round trip. Returns whether it stored.
    pub(crate) async fn fill(
        &self,
        cache_key: &str,
        read_fence: Option<i64>,
        bytes: &[u8],
        ttl: Duration,
        token: Option<&str>,
    ) -> Result<bool, StoreError> {
        let keys = self.keys(cache_key);
        let mut connection = self.connection().await?;
        let fence = read_fence.map(|g| g.to_string()).unwrap_or_default();
        let mut invocation = self.fill_script.prepare_invoke();
        invocation
            .key(keys.key(Role::Value))
            .key(keys.key(Role::Fence))
            .key(keys.key(Role::Lock))
            .arg(fence)
            .arg(bytes)
            .arg(millis(ttl).max(1))
            .arg(token.unwrap_or(""));
        let stored: i64 = self
            .guarded(invocation.invoke_async(&mut connection))
            .await?;
        Ok(stored == 1)
    }

    /// Deletes the value and advances the fence (and publishes `announce`, if any).
    pub(crate) async fn invalidate(
        &self,
        cache_key: &str,
        announce: Announce<'_>,
    ) -> Result<(), StoreError> {
        let result = async {
            let mut connection = self.connection().await?;
            let invocation = self.invalidation(cache_key, announce);
            let _generation: i64 = self
                .guarded(invocation.invoke_async(&mut connection))
                .await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            self.keep_for_replay(cache_key, announce);
        }
        result
    }

    fn keep_for_replay(&self, cache_key: &str, announce: Announce<'_>) {
        let announce = announce.map(|(channel, message)| (channel.to_owned(), message.to_owned()));
        self.pending.push((cache_key.to_owned(), announce));
    }

    /// Replays invalidations that failed earlier, before anything is read that they should
    /// have removed. Stops at the first failure (the rest stay queued).
    async fn replay_pending(&self) -> Result<(), StoreError> {
        let mut items = self.pending.take().into_iter();
        while let Some((key, announce)) = items.next() {
            let announce = announce.as_ref().map(|(c, m)| (c.as_str(), m.as_str()));
            if let Err(error) = self.invalidate(&key, announce).await {
                for (key, announce) in items {
                    self.pending.push((key, announce));
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// [`invalidate`](Self::invalidate) for a caller that cannot await: the same script over a
    /// plain connection whose connect, read and write are bounded by the store's timeouts.
    pub(crate) fn invalidate_blocking(
        &self,
        cache_key: &str,
        announce: Announce<'_>,
    ) -> Result<(), StoreError> {
        if self.breaker.permit(Instant::now()) == Permit::Refused {
            return Err(StoreError::Refused);
        }
        let result = self.invalidate_on_blocking_connection(cache_key, announce);
        let result = result.map_err(|error| {
            if error.is_timeout() {
                StoreError::Timeout(self.settings.op_timeout)
            } else {
                StoreError::Redis(error)
            }
        });
        self.record(&result);
        if result.is_err() {
            self.keep_for_replay(cache_key, announce);
        }
        result
    }

    fn invalidate_on_blocking_connection(
        &self,
        cache_key: &str,
        announce: Announce<'_>,
    ) -> redis::RedisResult<()> {
        let mut slot = self
            .blocking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let connection = match slot.as_mut() {
            Some(connection) => connection,
            None => {
                let connection = self
                    .client
                    .get_connection_with_timeout(self.settings.connect_timeout)?;
                connection.set_read_timeout(Some(self.settings.op_timeout))?;
                connection.set_write_timeout(Some(self.settings.op_timeout))?;
                slot.insert(connection)
            }
        };
        let result = self
            .invalidation(cache_key, announce)
            .invoke::<i64>(connection)
            .map(|_| ());
        if result.is_err() {
            *slot = None;
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
            .arg(message);
        invocation
    }

    /// The client, for connections of another kind (the tiered backend's subscriber).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Releases the lock if `token` still owns it.
    pub(crate) async fn release(&self, cache_key: &str, token: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.release_script.prepare_invoke();
        invocation
            .key(self.keys(cache_key).key(Role::Lock))
            .arg(token);
        let released: i64 = self
            .guarded(invocation.invoke_async(&mut connection))
            .await?;
        Ok(released == 1)
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

    fn store(server: &RedisServer) -> RedisStore {
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
            fence: None,
            token: Some(token),
        } = store.claim("k", lease).await.expect("up")
        else {
            panic!("a cold key is ours to load");
        };
        assert_eq!(
            store.claim("k", lease).await.expect("up"),
            Claim::Load {
                fence: None,
                token: None
            },
            "the lock is held"
        );
        store.invalidate("k", None).await.expect("up");
        assert!(matches!(
            store.claim("k", lease).await.expect("up"),
            Claim::Load {
                fence: Some(1),
                token: None
            }
        ));
        assert!(store
            .fill("k", Some(1), b"v", TTL, Some(&token))
            .await
            .expect("up"));
        assert_eq!(
            store.claim("k", lease).await.expect("up"),
            Claim::Filled(b"v".to_vec()),
            "a leader arriving after the fill takes it"
        );
    }

    #[tokio::test]
    async fn only_the_owner_releases_the_lock() {
        let server = RedisServer::start();
        let store = store(&server);
        let lease = Duration::from_secs(10);
        let token = store
            .fence_and_lock("k", lease)
            .await
            .expect("up")
            .1
            .expect("free");
        assert_eq!(
            store.fence_and_lock("k", lease).await.expect("up").1,
            None,
            "held"
        );
        assert!(!store.release("k", "someone-else").await.expect("up"));
        assert_eq!(
            store.fence_and_lock("k", lease).await.expect("up").1,
            None,
            "still held"
        );
        // The fill releases the lock of its own token in the same round trip.
        assert!(store
            .fill("k", None, b"v", TTL, Some(&token))
            .await
            .expect("up"));
        assert!(store
            .fence_and_lock("k", lease)
            .await
            .expect("up")
            .1
            .is_some());
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
