//! The public face of the Redis backend: its configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::redis_keys::{entry_hash, entry_hash_seed, valid_prefix};
use super::redis_store::{RedisSettings, RedisStore};
use crate::error::ConfigError;

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
    pub(crate) store: Arc<RedisStore>,
    redacted_url: String,
    prefix: String,
    /// [`entry_hash_seed`] of the prefix, so that hashing a key costs one pass over the key.
    entry_hash_seed: u64,
}

/// Configures a [`RedisBackend`].
#[derive(Default)]
#[must_use = "a builder does nothing until `build()`"]
pub struct RedisBackendBuilder {
    url: Option<Result<String, ConfigError>>,
    settings: RedisSettings,
}

impl RedisBackend {
    /// A builder. The URL is required; everything else has a default.
    pub fn builder() -> RedisBackendBuilder {
        RedisBackendBuilder::default()
    }

    pub(crate) fn store(&self) -> &Arc<RedisStore> {
        &self.store
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
        self.url = Some(Ok(url.into()));
        self
    }

    /// Reads the URL from an environment variable, such as `CACHET_REDIS_URL`.
    pub fn url_from_env(mut self, variable: &str) -> Self {
        self.url = Some(
            std::env::var(variable).map_err(|_| ConfigError::MissingUrl {
                variable: variable.to_owned(),
            }),
        );
        self
    }

    /// The application prefix every key starts with (default `cachet`); processes of one
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

    /// Checks the configuration and creates the backend. Nothing connects yet: a backend whose
    /// server is down still serves calls (uncached) and connects when the server is back.
    pub fn build(self) -> Result<RedisBackend, ConfigError> {
        let url = self.url.unwrap_or(Err(ConfigError::MissingUrl {
            variable: String::new(),
        }))?;
        let redacted_url = redact(&url);
        if !valid_prefix(&self.settings.prefix) {
            return Err(ConfigError::BadPrefix(self.settings.prefix));
        }
        let prefix = self.settings.prefix.clone();
        let store = RedisStore::new(&url, self.settings).map_err(|error| ConfigError::BadUrl {
            url: redacted_url.clone(),
            reason: redact_in(&error.to_string(), &url),
        })?;
        Ok(RedisBackend {
            store,
            redacted_url,
            entry_hash_seed: entry_hash_seed(&prefix),
            prefix,
        })
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
        let url = match &self.url {
            Some(Ok(url)) => redact(url),
            Some(Err(_)) => "(missing)".to_owned(),
            None => "(unset)".to_owned(),
        };
        f.debug_struct("RedisBackendBuilder")
            .field("url", &url)
            .field("prefix", &self.settings.prefix)
            .finish()
    }
}

/// The URL with its password replaced by `***`, for logs and `Debug`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "(not a URL)".to_owned();
    };
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| i + scheme_end);
    let authority = &url[scheme_end..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let user = authority[..at].split(':').next().unwrap_or_default();
            format!(
                "{}{user}:***@{}",
                &url[..scheme_end],
                &url[scheme_end + at + 1..]
            )
        }
        None => url.to_owned(),
    }
}

/// `text` with any appearance of the URL's password replaced, for error messages that quote it.
fn redact_in(text: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(credentials, _)| credentials.split_once(':'))
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

    #[test]
    fn bad_configurations_are_errors() {
        assert!(matches!(
            RedisBackend::builder().build(),
            Err(ConfigError::MissingUrl { .. })
        ));
        assert!(matches!(
            RedisBackend::builder()
                .url_from_env("CACHET_TEST_SURELY_UNSET_VARIABLE")
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
}
