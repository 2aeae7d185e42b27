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
//! (`lock.rs`), and its fill or release, seeing the flag, publishes a wake-up
//! (`wake.rs`).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use redis::Script;

use super::blocking::{BlockingConnections, Unsent};
use super::breaker::{BreakerPolicy, BreakerState, Permit};
use super::breakers::{Breakers, Scope};
use super::connection::{Connection, Refusal, Target};
use super::keys::{wake_channel, EntryKeys, KeyArg, Role};
use super::pending::PendingInvalidations;
use super::replacement::ConnectionSlot;
use super::scripts::{CLAIM, FILL, INVALIDATE, INVALIDATE_TAG, PUT, RELEASE, RENEW};
use super::wake::{Waiting, Wakeups};
use crate::clock::Clock;
use crate::log_gate::LogGate;
use crate::observe::meters::BackendMeters;

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

/// Settings of one Redis store.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub(crate) prefix: String,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) fence_ttl: Duration,
    pub(crate) breaker: BreakerPolicy,
    /// The clock of the breaker's intervals and of the times written into entries.
    pub(crate) clock: Clock,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            prefix: "cachette".to_owned(),
            op_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            fence_ttl: Duration::from_secs(60),
            breaker: BreakerPolicy::default(),
            clock: Clock::Real,
        }
    }
}

pub(crate) struct RedisStore {
    /// This store, for the background tasks it starts (replay), which must not keep it alive.
    this: Weak<RedisStore>,
    target: Arc<Target>,
    /// The async connection in use, made on first use; on a cluster replaced after timeouts by
    /// one that answered (`replacement.rs`).
    connection: Arc<ConnectionSlot>,
    /// Plain connections for synchronous `#[invalidates]` functions, which cannot await.
    blocking: BlockingConnections,
    pending: PendingInvalidations,
    wakeups: Arc<Wakeups>,
    wake_channel: String,
    settings: RedisSettings,
    /// One for a server; on a cluster, one per master (`breakers.rs`).
    breakers: Breakers,
    /// When the slot map the breakers are chosen by was last asked for.
    #[cfg(feature = "cluster")]
    slot_map_asked: Mutex<Option<std::time::Instant>>,
    fill_script: Script,
    invalidate_script: Script,
    release_script: Script,
    claim_script: Script,
    renew_script: Script,
    invalidate_tag_script: Script,
    put_script: Script,
    /// Whether the background replayer runs (`replay_in_background`).
    replayer_running: AtomicBool,
    /// The backend's metric handles, once it is configured under a name.
    meters: OnceLock<Arc<BackendMeters>>,
    /// The last error, and when, for `health()`.
    last_error: Mutex<Option<(String, SystemTime)>>,
    /// Paces the diagnoses made while the breaker stays open: one per log interval.
    rediagnosis: LogGate,
}

/// What a store knows of its Redis's health.
pub(crate) struct RedisHealth {
    pub(crate) breaker: BreakerState,
    /// The last failure's message and time.
    pub(crate) last_error: Option<(String, SystemTime)>,
    pub(crate) pending_invalidations: usize,
    /// The pending queue overflowed: a purge is due.
    pub(crate) overflowed: bool,
}

/// How long a load lock lives without renewal (`lock.rs` renews it every third of this): the
/// longest a holder that died keeps others waiting.
pub(crate) const LEASE: Duration = Duration::from_secs(3);

/// An invalidation message to publish with the deletion: (channel, message).
pub(crate) type Announce<'a> = Option<(&'a str, &'a str)>;

/// What a loading leader found: someone's fill, or its go-ahead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The entry was filled meanwhile: its bytes.
    Filled(Vec<u8>),
    /// Load: the fence generation the fill must carry, and the lock's owner token if this
    /// caller took it (`None`: another process holds it). A claim over an entry also returns
    /// the bytes it holds, read with the fence (fail-safe keeps them should the load fail).
    Load {
        fence: Option<i64>,
        token: Option<String>,
        over: Option<Vec<u8>>,
    },
}

impl RedisStore {
    /// Creates the store without connecting: a store whose server is down still serves
    /// (uncached) and connects when the server comes back.
    pub(crate) fn new(target: Target, settings: RedisSettings) -> Arc<Self> {
        let target = Arc::new(target);
        let wake_channel = wake_channel(&settings.prefix);
        Arc::new_cyclic(|this| RedisStore {
            this: Weak::clone(this),
            blocking: BlockingConnections::new(Arc::clone(&target)),
            target,
            connection: ConnectionSlot::new(),
            pending: PendingInvalidations::default(),
            wakeups: Arc::new(Wakeups::new(wake_channel.clone())),
            wake_channel,
            breakers: Breakers::new(settings.breaker),
            #[cfg(feature = "cluster")]
            slot_map_asked: Mutex::new(None),
            settings,
            fill_script: Script::new(FILL),
            invalidate_script: Script::new(INVALIDATE),
            release_script: Script::new(RELEASE),
            claim_script: Script::new(CLAIM),
            renew_script: Script::new(RENEW),
            invalidate_tag_script: Script::new(INVALIDATE_TAG),
            put_script: Script::new(PUT),
            replayer_running: AtomicBool::new(false),
            meters: OnceLock::new(),
            last_error: Mutex::new(None),
            rediagnosis: LogGate::new(),
        })
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        Ok(self
            .connection
            .get(&self.target, self.settings.connect_timeout)?)
    }

    fn keys(&self, cache_key: &str) -> EntryKeys {
        EntryKeys::new(&self.settings.prefix, cache_key)
    }

    /// Runs one operation on what `scope` touches under its breaker and the timeout.
    async fn guarded<T>(
        &self,
        scope: Scope<'_>,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        if self
            .breakers
            .permit(scope, || self.settings.clock.instant())
            == Permit::Refused
        {
            return Err(StoreError::Refused);
        }
        let budget = self.settings.op_timeout;
        let operation = crate::background::in_context(operation);
        let result = match tokio::time::timeout(budget, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                // A broken way to a node: a fresh connection may route around it, as after a
                // timeout.
                #[cfg(feature = "cluster")]
                if super::replacement::calls_for_a_fresh_connection(&error) {
                    self.connection
                        .renew(&self.target, self.settings.connect_timeout);
                }
                Err(StoreError::Redis(error))
            }
            Err(_) => {
                // A hung master keeps its slots in this connection's map: a fresh one, once it
                // answers, learns the slots anew.
                #[cfg(feature = "cluster")]
                self.connection
                    .renew(&self.target, self.settings.connect_timeout);
                Err(StoreError::Timeout(budget))
            }
        };
        self.record(scope, &result);
        result
    }

    fn record<T>(&self, scope: Scope<'_>, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => self.recovered(scope),
            // Redis answered: the error is about this request (a key of another type, a
            // script error), a miss for this call, and no sign that Redis is unwell. Counting
            // it would let one bad key switch caching off for every key.
            Err(StoreError::Redis(error)) if !is_transport_failure(error) => {
                self.recovered(scope);
                self.remember(result);
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
                self.remember(result);
                let now = self.settings.clock.instant();
                // A master that died or moved: the map the breakers are chosen by may be out
                // of step.
                #[cfg(feature = "cluster")]
                self.ask_slot_map(now);
                if let Some(master) = self
                    .breakers
                    .record_failure(scope, now, |open| self.breaker_gauge(open))
                {
                    tracing::warn!(
                        prefix = %self.settings.prefix,
                        master = master.as_deref().unwrap_or("all"),
                        "redis keeps failing; calls run uncached and redis is probed every {:?}",
                        self.settings.breaker.probe_interval
                    );
                    // The next one no sooner than a log interval later.
                    let _ = self.rediagnosis.admit();
                    self.diagnose();
                } else if self.breakers.position_of(scope) != BreakerState::Closed
                    && self.rediagnosis.admit().is_some()
                {
                    // A failed probe: the cause may have changed since the breaker opened
                    // (Redis was not up yet, then came up refusing the password), and a
                    // breaker that never closes would otherwise never name it.
                    self.diagnose();
                }
            }
        }
    }

    /// Finds out, in a task of its own, why connections fail, and names the cause if it is the
    /// configuration's (a wrong password, an untrusted certificate): the reconnecting
    /// connection retries on its own, so callers see only timeouts. One line per cause per
    /// 10 s.
    fn diagnose(&self) {
        let (target, prefix) = (Arc::clone(&self.target), self.settings.prefix.clone());
        let timeout = self.settings.connect_timeout;
        crate::background::spawn(async move {
            let Some(error) = target.diagnose(timeout).await else {
                return;
            };
            static CREDENTIALS: LogGate = LogGate::new();
            static TLS: LogGate = LogGate::new();
            match Refusal::of(&error) {
                Refusal::Credentials => {
                    if let Some(suppressed) = CREDENTIALS.admit() {
                        tracing::error!(
                            %prefix,
                            %error,
                            suppressed,
                            "redis rejected the credentials (user or password of the URL); \
                             calls run uncached"
                        );
                    }
                }
                Refusal::Tls => {
                    if let Some(suppressed) = TLS.admit() {
                        // The server's alert when it wants a client certificate; the rest
                        // (an unknown issuer, a name, a date) concern the server's.
                        let hint = if error.to_string().contains("CertificateRequired") {
                            "the server requires a client certificate: see \
                             `tls_client_cert_pem`"
                        } else {
                            "is its certificate signed by a CA the backend trusts, for this \
                             host, and valid now? see `tls_ca_pem`"
                        };
                        tracing::error!(
                            %prefix,
                            %error,
                            suppressed,
                            "the TLS handshake with redis failed ({hint}); calls run uncached"
                        );
                    }
                }
                Refusal::Other => {}
            }
        });
    }

    /// A success: closes the scope's breaker if it was open, saying so.
    fn recovered(&self, scope: Scope<'_>) {
        if let Some(master) = self
            .breakers
            .record_success(scope, |open| self.breaker_gauge(open))
        {
            tracing::info!(
                prefix = %self.settings.prefix,
                master = master.as_deref().unwrap_or("all"),
                "redis answers again; caching through redis resumes"
            );
        }
    }

    /// Asks, in a task of its own, which master serves which slot, for the breakers: after a
    /// transport failure, at most once per probe interval (a failing master fails every call on
    /// its slots).
    #[cfg(feature = "cluster")]
    fn ask_slot_map(&self, now: std::time::Instant) {
        if !self.target.is_cluster() {
            return;
        }
        {
            let mut asked = self
                .slot_map_asked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if matches!(*asked, Some(at) if now < at + self.settings.breaker.probe_interval) {
                return;
            }
            *asked = Some(now);
        }
        let (store, target) = (Weak::clone(&self.this), Arc::clone(&self.target));
        let timeout = self.settings.connect_timeout;
        crate::background::spawn(async move {
            let Some(Ok(ranges)) = target.slot_ranges(timeout).await else {
                return;
            };
            if let Some(store) = store.upgrade() {
                store
                    .breakers
                    .install(&ranges, |open| store.breaker_gauge(open));
            }
        });
    }

    fn breaker_gauge(&self, open: bool) {
        if let Some(meters) = self.meters.get() {
            meters.breaker_open(open);
        }
    }

    /// Keeps the error for [`health`](crate::health()).
    fn remember<T>(&self, result: &Result<T, StoreError>) {
        if let Err(error) = result {
            *self
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((error.to_string(), SystemTime::now()));
        }
    }

    /// Gives the store its backend's handles (the first configuration that names it keeps
    /// them).
    pub(crate) fn attach_meters(&self, meters: Arc<BackendMeters>) {
        self.pending.attach_meters(Arc::clone(&meters));
        let _ = self.meters.set(meters);
    }

    /// The breaker's state, the last error and the pending invalidations, for `health()`.
    pub(crate) fn health(&self) -> RedisHealth {
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        RedisHealth {
            breaker: self.breakers.position(),
            last_error,
            pending_invalidations: self.pending.len(),
            overflowed: self.pending.overflowed(),
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
        self.settle_pending(cache_key).await?;
        let mut connection = self.connection().await?;
        self.guarded(
            Scope::Entry(cache_key),
            redis::cmd("GET")
                .arg(self.key_arg(cache_key, Role::Value))
                .query_async(&mut connection),
        )
        .await
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
        self.claim_for(cache_key, lease, over_unreadable, None)
            .await
    }

    /// The claim of a refresh-ahead: the lock and the fence, as a claim over the entry, but only
    /// if no load holds the lock and no refresh of the key started within `interval` (in any
    /// process); then none may start for `interval`. Refused: a `Claim::Load` without a token.
    pub(crate) async fn claim_refresh(
        &self,
        cache_key: &str,
        lease: Duration,
        (interval, now_ms): (Duration, u64),
    ) -> Result<Claim, StoreError> {
        self.claim_for(cache_key, lease, true, Some((interval, now_ms)))
            .await
    }

    async fn claim_for(
        &self,
        cache_key: &str,
        lease: Duration,
        over_unreadable: bool,
        refresh: Option<(Duration, u64)>,
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
        if let Some((interval, now_ms)) = refresh {
            let interval = millis(interval).max(1);
            invocation
                .key(keys.key(Role::Refresh))
                .arg(interval)
                .arg(now_ms)
                .arg(now_ms.saturating_add(interval));
        }
        // Until its reply is in hand, the claim may take the lock for a token nobody will hold
        // (the caller cancelled, or gave up at the timeout while a paused server kept the
        // script to run on resume): the guard then sends a release after it.
        let mut unanswered = UnansweredClaim {
            store: self,
            cache_key,
            token: &token,
            connection: Some(connection.clone()),
        };
        let reply = self
            .guarded(
                Scope::Entry(cache_key),
                invocation.invoke_async(&mut connection),
            )
            .await;
        if matches!(reply, Ok(_) | Err(StoreError::Refused)) {
            unanswered.connection = None;
        }
        drop(unanswered);
        parse_claim(reply?, token).map_err(StoreError::Redis)
    }

    /// Releases `token`'s lock after a claim whose reply never came: sent on the claim's own
    /// connection, it runs after the claim wherever the claim went; it bypasses the breaker for
    /// the same reason.
    fn release_unowned(&self, cache_key: &str, token: &str, mut connection: Connection) {
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
        let bound = LEASE;
        let store = Weak::clone(&self.this);
        let (key, token) = (cache_key.to_owned(), token.to_owned());
        let op_timeout = self.settings.op_timeout;
        // On cachette's runtime: the claim's caller has given up, and its runtime may be idle.
        crate::background::spawn(async move {
            let _ = tokio::time::timeout(bound, command.query_async::<i64>(&mut connection)).await;
            // The claim may still run after that release: the connection it went out on may
            // have been replaced (a reconnect) while the server held it. The token is this
            // claim's alone, so releasing it again is always right; twice more within the lease
            // bounds such an orphan lock to about a third of the lease instead of all of it.
            for pause in [op_timeout, bound / 3] {
                tokio::time::sleep(pause).await;
                let Some(store) = store.upgrade() else { return };
                let _ = store.release(&key, &token).await;
            }
        });
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
    /// whether it stored. Given `expected`, it stores only if the entry still holds exactly
    /// those bytes (a fail-safe write-back over the value its claim read).
    pub(crate) async fn fill(
        &self,
        cache_key: &str,
        read_fence: Option<i64>,
        bytes: &[u8],
        ttl: Duration,
        token: Option<&str>,
        (expected, announce): (Option<&[u8]>, Option<(&str, &str)>),
    ) -> Result<bool, StoreError> {
        self.settle_pending(cache_key).await?;
        let keys = self.keys(cache_key);
        let mut connection = self.connection().await?;
        let fence = read_fence.map(|g| g.to_string()).unwrap_or_default();
        let (channel, message) = announce.unwrap_or_default();
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
            .arg(cache_key)
            .arg(expected.unwrap_or_default())
            .arg(channel)
            .arg(message);
        let stored: i64 = self
            .guarded(
                Scope::Entry(cache_key),
                invocation.invoke_async(&mut connection),
            )
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
        // Before the invalidation is sent: its success confirms what was queued until now.
        let sent = self.pending.mark();
        let result = async {
            if self.pending.any() {
                match self.replay_batch(false).await {
                    Err(error) if self.replay_failure_stops(&error) => return Err(error),
                    _ => {}
                }
            }
            let mut connection = self.connection().await?;
            let invocation = self.invalidation(cache_key, announce);
            let _generation: i64 = self
                .guarded(
                    Scope::Entry(cache_key),
                    invocation.invoke_async(&mut connection),
                )
                .await?;
            Ok(())
        }
        .await;
        match &result {
            Ok(()) => self.pending.confirm([cache_key], sent, false),
            Err(_) => self.keep_for_replay(cache_key, announce),
        }
        result
    }

    /// [`invalidate`](Self::invalidate) for a caller that cannot await: the same script over a
    /// plain connection, the whole call bounded by the operation timeout.
    pub(crate) fn invalidate_blocking(
        &self,
        cache_key: &str,
        announce: Announce<'_>,
    ) -> Result<(), StoreError> {
        let scope = Scope::Entry(cache_key);
        if self
            .breakers
            .permit(scope, || self.settings.clock.instant())
            == Permit::Refused
        {
            self.keep_for_replay(cache_key, announce);
            return Err(StoreError::Refused);
        }
        let sent = self.pending.mark();
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
        self.record(scope, &result);
        match &result {
            Ok(()) => self.pending.confirm([cache_key], sent, false),
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

    /// The server or cluster, for connections of another kind (the tiered backend's
    /// subscriber).
    pub(crate) fn target(&self) -> &Arc<Target> {
        &self.target
    }

    pub(crate) fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Registers the caller as waiting for `cache_key`'s lock holder (`wake.rs`).
    pub(crate) fn wait_for_holder(&self, cache_key: &str) -> Waiting<'_> {
        self.wakeups.register(&self.target, cache_key)
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
            .guarded(
                Scope::Entry(cache_key),
                invocation.invoke_async(&mut connection),
            )
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
            .guarded(
                Scope::Entry(cache_key),
                invocation.invoke_async(&mut connection),
            )
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
    connection: Option<Connection>,
}

impl Drop for UnansweredClaim<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.store
                .release_unowned(self.cache_key, self.token, connection);
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
            let [_, fence, taken, over] =
                <[Value; 4]>::try_from(items).map_err(|_| unexpected())?;
            let fence = Option::<i64>::from_redis_value(fence)?;
            let taken = i64::from_redis_value(taken)? == 1;
            Ok(Claim::Load {
                fence,
                token: taken.then_some(token),
                over: Option::<Vec<u8>>::from_redis_value(over)?,
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
pub(super) fn is_transport_failure(error: &redis::RedisError) -> bool {
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

mod put;
mod replay;
#[cfg(test)]
mod slot_tests;
mod tags;
#[cfg(test)]
mod tests;
