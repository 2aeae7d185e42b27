//! The Redis backend: its configuration (here), and the store it builds (`store.rs`) with the
//! pieces the store is made of: key layout (`keys.rs`), scripts (`scripts.rs`), circuit
//! breaker (`breaker.rs`; one per master of a cluster, `breakers.rs`), pending invalidations (`pending.rs`), the load lock as its holder
//! keeps it (`lock.rs`), waking waiters (`wake.rs`) and the blocking connections of
//! synchronous invalidations (`blocking.rs`); where connections go, one server or a cluster,
//! over TLS or not (`connection.rs`), and pub/sub on every node that publishes
//! (`subscription.rs`); a shutdown's wait for the pending queue (`drain.rs`).

mod blocking;
mod breaker;
mod breakers;
mod connection;
mod drain;
mod keys;
mod lock;
mod pending;
mod replacement;
mod scripts;
mod store;
mod subscription;
mod wake;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use breaker::BreakerState;
pub(crate) use connection::Target;
pub(crate) use drain::drain;
pub(crate) use keys::TAG_MESSAGE_MARK;
pub(crate) use keys::{bus_channel, FLUSH_MESSAGE};
pub(crate) use lock::HeldLock;
pub(crate) use store::{Announce, Claim, RedisHealth, RedisStore, StoreError, LEASE};
pub(crate) use subscription::Subscription;
pub(crate) use wake::{resubscribe_backoff, Waiting, SAFETY_POLL};

#[cfg(feature = "tls")]
pub(crate) use connection::{check_certificates, check_private_key};
pub(crate) use keys::valid_prefix;

use connection::TlsMaterial;
use keys::{entry_hash, entry_hash_seed};
use store::RedisSettings;

use crate::clock::{Clock, TestClock};
use crate::error::{ConfigError, DrainError};
use crate::key::CacheKey;
use crate::log_gate::LogGate;
use crate::observe::meters::BackendMeters;

/// A backend shared by every process of a service, in Redis.
///
/// ```
/// use std::time::Duration;
/// use cache_runtime::RedisBackend;
///
/// let redis = RedisBackend::builder()
///     .url("redis://:secret@127.0.0.1:6379/0")
///     .prefix("shop")
///     .op_timeout(Duration::from_millis(100))
///     .build()
///     .expect("a valid configuration; nothing connects yet");
/// assert!(!format!("{redis:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    store: Arc<RedisStore>,
    redacted_url: String,
    prefix: String,
    /// [`entry_hash_seed`] of the prefix, so that hashing a key costs one pass over the key.
    entry_hash_seed: u64,
}

/// Configures a [`RedisBackend`].
#[derive(Default)]
#[must_use = "a builder does nothing until `build()`"]
pub struct RedisBackendBuilder {
    endpoint: Option<Result<Endpoint, ConfigError>>,
    tls: TlsMaterial,
    settings: RedisSettings,
}

/// What the backend connects to.
#[derive(Clone)]
enum Endpoint {
    Server(String),
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
}

impl Endpoint {
    /// For `Debug`, logs and errors: every password replaced by `***`.
    fn redacted(&self) -> String {
        match self {
            Endpoint::Server(url) => redact(url),
            #[cfg(feature = "cluster")]
            Endpoint::Cluster(seeds) => {
                let seeds: Vec<String> = seeds.iter().map(|seed| redact(seed)).collect();
                format!("cluster [{}]", seeds.join(", "))
            }
        }
    }

    fn urls(&self) -> &[String] {
        match self {
            Endpoint::Server(url) => std::slice::from_ref(url),
            #[cfg(feature = "cluster")]
            Endpoint::Cluster(seeds) => seeds,
        }
    }
}

impl RedisBackend {
    /// A builder. The URL is required; everything else has a default.
    pub fn builder() -> RedisBackendBuilder {
        RedisBackendBuilder::default()
    }

    /// The server (password redacted) and the prefix, for logs.
    pub(crate) fn location(&self) -> String {
        format!("{}, prefix `{}`", self.redacted_url, self.prefix)
    }

    pub(crate) fn store(&self) -> &Arc<RedisStore> {
        &self.store
    }

    /// Now, in Unix milliseconds, on this backend's clock: the times its entries carry.
    pub(crate) fn now_ms(&self) -> u64 {
        self.store.settings().clock.unix_ms()
    }

    /// The clock this backend runs on.
    pub(crate) fn clock(&self) -> &Clock {
        &self.store.settings().clock
    }

    /// Gives the backend its metric handles, once configured under a name.
    pub(crate) fn attach_meters(&self, meters: Arc<BackendMeters>) {
        self.store.attach_meters(meters);
    }

    /// Deletes `keys` and advances their fences. Once one fails (Redis unreachable), the rest
    /// are queued without being tried, so a call costs at most one operation timeout; every
    /// failed one is replayed once Redis answers (`pending.rs`).
    pub(crate) async fn invalidate(&self, backend: &str, keys: &[CacheKey]) {
        self.invalidate_announced(backend, keys, |_| None::<(String, String)>)
            .await;
    }

    /// [`invalidate`](Self::invalidate), publishing `announce(key)` on the bus with each
    /// deletion, in the same script.
    pub(crate) async fn invalidate_announced<A: Announcement>(
        &self,
        backend: &str,
        keys: &[CacheKey],
        announce: impl Fn(&str) -> A,
    ) {
        let mut call = OneTimeoutPerCall::new(&self.store, backend);
        for key in keys {
            let (key, announcement) = (key.as_str(), announce(key.as_str()));
            if call.reachable(key, announcement.as_announce()) {
                let result = self.store.invalidate(key, announcement.as_announce()).await;
                call.record(key, result);
            }
        }
    }

    /// Deletes the generations of `tags` (publishing `announce(tag)` with each), so that every
    /// entry carrying one becomes a miss: O(1) per tag. As with keys, once one fails the rest
    /// are queued without being tried, and every failed one is replayed; the tag is pending
    /// until then, and tagged reads of it do not trust Redis.
    pub(crate) async fn invalidate_tags_announced<A: Announcement>(
        &self,
        backend: &str,
        tags: &[CacheKey],
        announce: impl Fn(&str) -> A,
    ) {
        let mut call = OneTimeoutPerCall::new(&self.store, backend);
        for tag in tags {
            let target = pending::tag_target(tag.as_str());
            let announcement = announce(tag.as_str());
            if call.reachable(&target, announcement.as_announce()) {
                let result = self
                    .store
                    .invalidate_tag(tag.as_str(), announcement.as_announce())
                    .await;
                call.record(&target, result);
            }
        }
    }

    /// [`invalidate`](Self::invalidate) over a blocking connection.
    pub(crate) fn invalidate_blocking(&self, backend: &str, keys: &[CacheKey]) {
        self.invalidate_announced_blocking(backend, keys, |_| None::<(String, String)>);
    }

    /// [`invalidate_announced`](Self::invalidate_announced) over a blocking connection.
    pub(crate) fn invalidate_announced_blocking<A: Announcement>(
        &self,
        backend: &str,
        keys: &[CacheKey],
        announce: impl Fn(&str) -> A,
    ) {
        let mut call = OneTimeoutPerCall::new(&self.store, backend);
        for key in keys {
            let (key, announcement) = (key.as_str(), announce(key.as_str()));
            if call.reachable(key, announcement.as_announce()) {
                let result = self
                    .store
                    .invalidate_blocking(key, announcement.as_announce());
                call.record(key, result);
            }
        }
    }

    /// Waits until the invalidations this backend queued while Redis was unreachable have
    /// reached it, for at most `timeout`: [`drain_invalidations`](crate::drain_invalidations)
    /// for this backend alone (and any configured over the same `RedisBackend`).
    pub async fn drain_invalidations(&self, timeout: Duration) -> Result<(), DrainError> {
        drain(&[self], timeout).await
    }

    /// The hash an envelope of this backend carries for `cache_key`: prefix and key, so that a
    /// value copied to another key, or to another application's prefix, is a miss there.
    pub(crate) fn entry_hash(&self, cache_key: &str) -> u64 {
        entry_hash(self.entry_hash_seed, cache_key)
    }
}

impl RedisBackendBuilder {
    /// The server: `redis://[user][:password@]host[:port][/db]` or `rediss://` for TLS.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(Ok(Endpoint::Server(url.into())));
        self
    }

    /// A Redis Cluster (feature `cluster`), reached through these seed nodes, each a URL as for
    /// [`url`](Self::url) (`redis://user:password@host:port`, `rediss://` for TLS; the same
    /// credentials and scheme on every one). The client learns the other nodes from them and
    /// follows `MOVED`/`ASK` redirections, resharding and failover. Replaces a `url`.
    #[cfg(feature = "cluster")]
    pub fn cluster<S: Into<String>>(mut self, seeds: impl IntoIterator<Item = S>) -> Self {
        self.endpoint = Some(Ok(Endpoint::Cluster(
            seeds.into_iter().map(Into::into).collect(),
        )));
        self
    }

    /// Trusts these PEM certificates for `rediss://` instead of the system's roots (feature
    /// `tls`): a private CA, or a managed service's.
    #[cfg(feature = "tls")]
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca = Some(pem.into());
        self
    }

    /// Presents this client certificate (PEM chain and PEM private key) on `rediss://`
    /// connections, for servers that require one (`tls-auth-clients yes`; feature `tls`).
    #[cfg(feature = "tls")]
    pub fn tls_client_cert_pem(
        mut self,
        certificate_chain: impl Into<Vec<u8>>,
        private_key: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.identity = Some((certificate_chain.into(), private_key.into()));
        self
    }

    /// Reads the URL from an environment variable, such as `CACHETTE_REDIS_URL`.
    pub fn url_from_env(mut self, variable: &str) -> Self {
        self.endpoint = Some(std::env::var(variable).map(Endpoint::Server).map_err(|_| {
            ConfigError::MissingUrl {
                variable: variable.to_owned(),
            }
        }));
        self
    }

    /// The application prefix every key starts with (default `cachette`); processes of one
    /// service share it, services sharing one Redis should not.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = prefix.into();
        self
    }

    /// The bound on every Redis operation (default 250 ms); past it the call is a miss.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.settings.op_timeout = timeout;
        self
    }

    /// The bound on establishing a connection (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Runs on a test's clock: the times written into entries, their expiry as reads check it,
    /// and the circuit breaker's probe interval then move only when the test advances it.
    /// Redis still expires keys on its own clock, so an entry's time runs out no later than
    /// its TTL in real time either.
    pub fn clock(mut self, clock: &TestClock) -> Self {
        self.settings.clock = clock.clock();
        self
    }

    /// Checks the configuration and creates the backend. Nothing connects yet: a backend whose
    /// server is down still serves calls (uncached) and connects when the server is back.
    pub fn build(self) -> Result<RedisBackend, ConfigError> {
        let endpoint = self.endpoint.unwrap_or(Err(ConfigError::MissingUrl {
            variable: String::new(),
        }))?;
        let redacted_url = endpoint.redacted();
        if !valid_prefix(&self.settings.prefix) {
            return Err(ConfigError::BadPrefix(self.settings.prefix));
        }
        let prefix = self.settings.prefix.clone();
        #[cfg(feature = "tls")]
        self.tls.check()?;
        let target = match &endpoint {
            Endpoint::Server(url) => Target::server(url, &self.tls),
            #[cfg(feature = "cluster")]
            Endpoint::Cluster(seeds) => {
                Target::cluster(seeds, &self.tls, self.settings.connect_timeout)
            }
        };
        let target = target.map_err(|error| ConfigError::BadUrl {
            url: redacted_url.clone(),
            reason: endpoint
                .urls()
                .iter()
                .fold(error.to_string(), |text, url| redact_in(&text, url)),
        })?;
        let store = RedisStore::new(target, self.settings);
        Ok(RedisBackend {
            store,
            redacted_url,
            entry_hash_seed: entry_hash_seed(&prefix),
            prefix,
        })
    }
}

/// The invalidations of one call: once one fails (Redis unreachable), the rest are queued for
/// replay without being tried, so that the call costs at most one operation timeout.
struct OneTimeoutPerCall<'a> {
    store: &'a RedisStore,
    backend: &'a str,
    reachable: bool,
}

impl<'a> OneTimeoutPerCall<'a> {
    fn new(store: &'a RedisStore, backend: &'a str) -> Self {
        OneTimeoutPerCall {
            store,
            backend,
            reachable: true,
        }
    }

    /// Whether to try `key` now; if not, it is queued.
    fn reachable(&self, key: &str, announce: Announce<'_>) -> bool {
        if !self.reachable {
            self.store.keep_for_replay(key, announce);
        }
        self.reachable
    }

    fn record(&mut self, key: &str, result: Result<(), StoreError>) {
        if let Err(error) = result {
            log_failed_invalidation(self.backend, key, &error);
            self.reachable = false;
        }
    }
}

/// A bus message to publish with an invalidation: none, or a (channel, message) pair.
pub(crate) trait Announcement {
    fn as_announce(&self) -> Announce<'_>;
}

impl Announcement for Option<(String, String)> {
    fn as_announce(&self) -> Announce<'_> {
        self.as_ref()
            .map(|(channel, message)| (channel.as_str(), message.as_str()))
    }
}

impl Announcement for (String, String) {
    fn as_announce(&self) -> Announce<'_> {
        Some((self.0.as_str(), self.1.as_str()))
    }
}

pub(crate) fn log_failed_put(backend: &str, key: &str, error: &StoreError) {
    static GATE: LogGate = LogGate::new();
    if let Some(suppressed) = GATE.admit() {
        tracing::error!(
            backend,
            key,
            %error,
            suppressed,
            "write-through did not reach redis; the key's invalidation is replayed once redis \
             answers"
        );
    }
}

fn log_failed_invalidation(backend: &str, key: &str, error: &StoreError) {
    static GATE: LogGate = LogGate::new();
    if let Some(suppressed) = GATE.admit() {
        tracing::error!(
            backend,
            key,
            %error,
            suppressed,
            "invalidation did not reach redis; it is replayed once redis answers"
        );
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.redacted_url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match &self.endpoint {
            Some(Ok(endpoint)) => endpoint.redacted(),
            Some(Err(_)) => "(missing)".to_owned(),
            None => "(unset)".to_owned(),
        };
        f.debug_struct("RedisBackendBuilder")
            .field("url", &url)
            .field("prefix", &self.settings.prefix)
            .finish()
    }
}

/// The URL with its password replaced by `***`, for logs and `Debug`. The credentials end at
/// the last `@`, not at the first `/`: a generated password may hold an unencoded `/`, and the
/// URL that does not parse then is the one quoted in an error.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "(not a URL)".to_owned();
    };
    match credentials(url) {
        Some(credentials) => {
            let user = credentials.split(':').next().unwrap_or_default();
            let host = &url[scheme_end + credentials.len() + 1..];
            format!("{}{user}:***@{host}", &url[..scheme_end])
        }
        None => url.to_owned(),
    }
}

/// What precedes the last `@` after the scheme: `user:password`, `:password` or `user`.
fn credentials(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    rest.rsplit_once('@').map(|(credentials, _)| credentials)
}

/// `text` with any appearance of the URL's password replaced, for error messages that quote it.
fn redact_in(text: &str, url: &str) -> String {
    let password = credentials(url)
        .and_then(|credentials| credentials.split_once(':'))
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty());
    match password {
        Some(password) => text.replace(password, "***"),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_debug_output() {
        assert_eq!(
            redact("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redact("rediss://app:p%40ss@cache/1"),
            "rediss://app:***@cache/1"
        );
        assert_eq!(redact("redis://cache:6379"), "redis://cache:6379");
        let backend = RedisBackend::builder()
            .url("redis://app:hunter2@127.0.0.1:1/")
            .build()
            .expect("valid");
        let shown = format!(
            "{backend:?} {:?}",
            RedisBackend::builder().url("redis://:hunter2@h/")
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn cluster_seed_passwords_never_reach_debug_output_or_errors() {
        let seeds = [
            "redis://app:hunter2@127.0.0.1:1/",
            "redis://app:hunter2@127.0.0.1:2/",
        ];
        let backend = RedisBackend::builder()
            .cluster(seeds)
            .build()
            .expect("valid");
        let shown = format!("{backend:?} {:?}", RedisBackend::builder().cluster(seeds));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("cluster [redis://app:***@127.0.0.1:1/"),
            "{shown}"
        );
        let error = RedisBackend::builder()
            .cluster(["redis://app:hunter2@h:1/", "redis://other:hunter3@h:2/"])
            .build()
            .expect_err("different users on two seeds");
        let error = error.to_string();
        assert!(
            !error.contains("hunter2") && !error.contains("hunter3"),
            "{error}"
        );
    }

    /// A PEM holding no certificate (a key file given as the CA, an empty file) was accepted;
    /// every handshake then failed as untrusted, far from the mistake.
    #[cfg(feature = "tls")]
    #[test]
    fn tls_material_without_a_certificate_or_key_is_an_error() {
        let url = "rediss://127.0.0.1:1/";
        let not_pem =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        let cases = [
            RedisBackend::builder().url(url).tls_ca_pem(""),
            RedisBackend::builder().url(url).tls_ca_pem(not_pem),
            RedisBackend::builder()
                .url(url)
                .tls_client_cert_pem("no certificate here", not_pem),
        ];
        for builder in cases {
            let shown = format!("{builder:?}");
            match builder.build() {
                Err(ConfigError::BadTls { .. }) => {}
                other => panic!("{shown}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_configurations_are_errors() {
        assert!(matches!(
            RedisBackend::builder().build(),
            Err(ConfigError::MissingUrl { .. })
        ));
        assert!(matches!(
            RedisBackend::builder()
                .url_from_env("CACHETTE_TEST_SURELY_UNSET_VARIABLE")
                .build(),
            Err(ConfigError::MissingUrl { .. })
        ));
        assert!(matches!(
            RedisBackend::builder()
                .url("redis://h/")
                .prefix("a{b")
                .build(),
            Err(ConfigError::BadPrefix(_))
        ));
        let error = RedisBackend::builder()
            .url("http://:hunter2@h/")
            .build()
            .expect_err("not a redis url");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    /// review18: `CACHETTE_OP_TIMEOUT` makes any duration reachable from configuration; a
    /// synchronous invalidation must not panic on one the clock cannot add.
    #[test]
    fn review18_a_sync_invalidation_survives_a_huge_op_timeout() {
        let backend = RedisBackend::builder()
            .url("redis://127.0.0.1:1/")
            .op_timeout(Duration::from_secs(u64::MAX / 2))
            .connect_timeout(Duration::from_millis(50))
            .build()
            .expect("valid; nothing connects");
        let key = crate::key::KeyBuilder::new().lit("k").finish();
        backend.invalidate_blocking("redis", &[key]);
    }
}
