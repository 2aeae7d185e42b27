//! Configuration from the environment: [`Config::from_env`] reads the `CACHETTE_*` variables
//! into the same builder calls an application would write, and checks every value at start-up.

use std::ffi::OsString;
use std::time::Duration;

use crate::backend::{valid_prefix, MemoryBackend, TieredBackend};
use crate::error::ConfigError;
use crate::registry::Config;

/// The Redis server; unset, no Redis is configured (and `tiered` sites run in memory).
pub(crate) const REDIS_URL: &str = "CACHETTE_REDIS_URL";
/// A Redis Cluster's seed nodes, comma-separated URLs (feature `cluster`), instead of a URL.
pub(crate) const REDIS_CLUSTER_NODES: &str = "CACHETTE_REDIS_CLUSTER_NODES";
/// A PEM file of the CA certificates that `rediss://` trusts instead of the system's (feature
/// `tls`).
pub(crate) const REDIS_CA_FILE: &str = "CACHETTE_REDIS_CA_FILE";
/// A PEM file of the client certificate chain presented on `rediss://` (feature `tls`).
pub(crate) const REDIS_CLIENT_CERT_FILE: &str = "CACHETTE_REDIS_CLIENT_CERT_FILE";
/// A PEM file of that certificate's private key (feature `tls`).
pub(crate) const REDIS_CLIENT_KEY_FILE: &str = "CACHETTE_REDIS_CLIENT_KEY_FILE";
/// The application prefix of every Redis key.
pub(crate) const KEY_PREFIX: &str = "CACHETTE_KEY_PREFIX";
/// The bound on every Redis operation.
pub(crate) const OP_TIMEOUT: &str = "CACHETTE_OP_TIMEOUT";
/// The bound on establishing a Redis connection.
pub(crate) const CONNECT_TIMEOUT: &str = "CACHETTE_CONNECT_TIMEOUT";
/// The longest an entry stays in a tiered backend's L1.
pub(crate) const L1_MAX_TTL: &str = "CACHETTE_L1_MAX_TTL";
/// The capacity of the `memory` backend, in entries.
pub(crate) const MEMORY_MAX_ENTRIES: &str = "CACHETTE_MEMORY_MAX_ENTRIES";
/// The capacity of the tiered backend's L1 (or of `tiered` itself without Redis), in entries.
pub(crate) const L1_MAX_ENTRIES: &str = "CACHETTE_L1_MAX_ENTRIES";
/// The backend of sites written without `backend = ...`.
pub(crate) const DEFAULT_BACKEND: &str = "CACHETTE_DEFAULT_BACKEND";

/// The longest duration a variable may give: far beyond any sensible timeout or L1 ttl, and far
/// below what a clock can add (`humantime` reads up to ~5 * 10^11 years, which overflows
/// `Instant + duration` in the first bounded Redis call).
const LONGEST: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Every variable [`Config::from_env`] reads (those of features this build lacks included:
/// they are refused by name, not warned about as unknown).
const VARIABLES: [&str; 12] = [
    REDIS_URL,
    REDIS_CLUSTER_NODES,
    REDIS_CA_FILE,
    REDIS_CLIENT_CERT_FILE,
    REDIS_CLIENT_KEY_FILE,
    KEY_PREFIX,
    OP_TIMEOUT,
    CONNECT_TIMEOUT,
    L1_MAX_TTL,
    MEMORY_MAX_ENTRIES,
    L1_MAX_ENTRIES,
    DEFAULT_BACKEND,
];

impl Config {
    /// Adds what the `CACHETTE_*` environment variables configure. Every variable is optional;
    /// one that is set but unusable (empty, malformed, zero, a file that cannot be read, a
    /// variable of a feature this build lacks) is an error naming it. With a Redis URL or a
    /// cluster's seeds it adds backends named `redis` and `tiered` (and `memory` with a
    /// capacity), so configure further ones in code under other names (`redis.<name>`, ...).
    ///
    /// | variable | value | without it |
    /// |---|---|---|
    /// | `CACHETTE_REDIS_URL` | `redis://[user][:password@]host[:port][/db]` (`rediss://` for TLS); configures `redis` and `tiered` over it | no Redis: `tiered` sites cache in memory |
    /// | `CACHETTE_REDIS_CLUSTER_NODES` | feature `cluster`: a Redis Cluster's seed nodes instead, comma-separated URLs of one scheme and one user (`rediss://app:pw@node-1:6379,rediss://app:pw@node-2:6379`) | — |
    /// | `CACHETTE_REDIS_CA_FILE` | feature `tls`: a PEM file of the CA certificates to trust for `rediss://` | the system's roots |
    /// | `CACHETTE_REDIS_CLIENT_CERT_FILE`, `CACHETTE_REDIS_CLIENT_KEY_FILE` | feature `tls`: PEM files of a client certificate chain and its private key, both or neither | no client certificate |
    /// | `CACHETTE_KEY_PREFIX` | the Redis key prefix | `cachette` |
    /// | `CACHETTE_OP_TIMEOUT` | a duration (`250ms`) bounding each Redis operation | 250 ms |
    /// | `CACHETTE_CONNECT_TIMEOUT` | a duration bounding a connection attempt | 1 s |
    /// | `CACHETTE_L1_MAX_TTL` | the longest an entry stays in `tiered`'s L1 | 60 s |
    /// | `CACHETTE_MEMORY_MAX_ENTRIES` | the `memory` backend's capacity | 10,000 |
    /// | `CACHETTE_L1_MAX_ENTRIES` | `tiered`'s L1 capacity (its whole capacity without Redis) | 10,000 |
    /// | `CACHETTE_DEFAULT_BACKEND` | the backend of sites without `backend = ...`: `memory`, `tiered`, `redis` or a configured `<kind>.<name>` | `memory` |
    ///
    /// ```
    /// # fn main() -> Result<(), cache_runtime::ConfigError> {
    /// // CACHETTE_REDIS_URL=redis://cache:6379/ CACHETTE_DEFAULT_BACKEND=tiered in production;
    /// // nothing on a laptop, where `tiered` sites cache in memory.
    /// cache_runtime::configure().from_env()?.install()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_env(self) -> Result<Config, ConfigError> {
        warn_about_unknown_variables();
        self.read_vars(|name| std::env::var_os(name))
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    pub(crate) fn read_vars(
        self,
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let vars = Vars { lookup };
        let target = vars.redis_target()?;
        let prefix = vars.prefix()?;
        let op_timeout = vars.duration(OP_TIMEOUT)?;
        let connect_timeout = vars.duration(CONNECT_TIMEOUT)?;
        let l1_max_ttl = vars.duration(L1_MAX_TTL)?;
        let memory_entries = vars.count(MEMORY_MAX_ENTRIES)?;
        let l1_entries = vars.count(L1_MAX_ENTRIES)?;
        let default = vars.default_backend(|name| target.is_some() || self.configures(name))?;

        // Caught at install as "configured twice", the conflict would name no variable.
        let conflict = |variable: &'static str, name: &str| {
            bad(
                variable,
                format!(
                    "configures `{name}`, which the code configures too (or `from_env` ran \
                     twice): unset it, or name the code's backend `{name}.<name>`"
                ),
            )
        };
        if memory_entries.is_some() && self.configures("memory") {
            return Err(conflict(MEMORY_MAX_ENTRIES, "memory"));
        }
        if let Some(target) = &target {
            if let Some(name) = ["redis", "tiered"].into_iter().find(|n| self.configures(n)) {
                return Err(conflict(target.variable(), name));
            }
        }

        let mut config = self;
        if let Some(entries) = memory_entries {
            let memory = MemoryBackend::builder().max_entries(entries).build();
            config = config.memory("memory", memory);
        }
        let l1 = l1_entries.map(|entries| MemoryBackend::builder().max_entries(entries).build());
        match target {
            Some(target) => {
                let variable = target.variable();
                let mut redis = target.builder();
                if let Some(prefix) = prefix {
                    redis = redis.prefix(prefix);
                }
                if let Some(timeout) = op_timeout {
                    redis = redis.op_timeout(timeout);
                }
                if let Some(timeout) = connect_timeout {
                    redis = redis.connect_timeout(timeout);
                }
                let redis = redis.build().map_err(|error| ConfigError::BadVariable {
                    variable,
                    reason: error.to_string(),
                })?;
                let mut tiered = TieredBackend::builder(redis.clone());
                if let Some(l1) = l1 {
                    tiered = tiered.l1(l1);
                }
                if let Some(ttl) = l1_max_ttl {
                    tiered = tiered.l1_max_ttl(ttl);
                }
                config = config
                    .redis("redis", redis)
                    .tiered("tiered", tiered.build());
            }
            None => {
                if let Some(entries) = l1_entries {
                    config = config.tiered_in_process(entries);
                }
            }
        }
        Ok(match default {
            Some(name) => config.default_backend_from(name, DEFAULT_BACKEND),
            None => config,
        })
    }
}

/// The variables, read through `lookup`.
struct Vars<F> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<OsString>> Vars<F> {
    /// The value, if set; set but empty or not UTF-8 is an error (an empty URL left by a
    /// deployment template would otherwise switch Redis off without a word).
    fn text(&self, variable: &'static str) -> Result<Option<String>, ConfigError> {
        let Some(value) = (self.lookup)(variable) else {
            return Ok(None);
        };
        let value = value
            .into_string()
            .map_err(|_| bad(variable, "not valid UTF-8".to_owned()))?;
        if value.trim().is_empty() {
            return Err(bad(
                variable,
                "set but empty (unset it to use the default)".to_owned(),
            ));
        }
        Ok(Some(value))
    }

    fn duration(&self, variable: &'static str) -> Result<Option<Duration>, ConfigError> {
        let Some(value) = self.text(variable)? else {
            return Ok(None);
        };
        match humantime::parse_duration(value.trim()) {
            Ok(duration) if duration > LONGEST => Err(bad(
                variable,
                format!("{value:?} is longer than a year; give a timeout or a ttl such as \"2s\""),
            )),
            Ok(duration) if !duration.is_zero() => Ok(Some(duration)),
            Ok(_) => Err(bad(
                variable,
                format!("{value:?} is zero; give a positive duration"),
            )),
            Err(error) => Err(bad(
                variable,
                format!(
                    "{value:?} is not a duration ({error}); write one such as \"250ms\" or \"2s\""
                ),
            )),
        }
    }

    fn count(&self, variable: &'static str) -> Result<Option<u64>, ConfigError> {
        let Some(value) = self.text(variable)? else {
            return Ok(None);
        };
        match value.trim().replace('_', "").parse::<u64>() {
            Ok(count) if count > 0 => Ok(Some(count)),
            _ => Err(bad(
                variable,
                format!("{value:?} is not a positive number of entries, such as \"10000\""),
            )),
        }
    }

    /// Checked even without a Redis URL, so that a bad prefix is found on a laptop too.
    fn prefix(&self) -> Result<Option<String>, ConfigError> {
        let prefix = self.text(KEY_PREFIX)?;
        match prefix {
            Some(prefix) if !valid_prefix(&prefix) => {
                Err(bad(KEY_PREFIX, ConfigError::BadPrefix(prefix).to_string()))
            }
            prefix => Ok(prefix),
        }
    }

    /// The default backend's name; one of kind `redis` needs a Redis URL, unless the code
    /// configured it (`has_redis` says, given the name).
    fn default_backend(
        &self,
        has_redis: impl Fn(&str) -> bool,
    ) -> Result<Option<String>, ConfigError> {
        let Some(name) = self.text(DEFAULT_BACKEND)? else {
            return Ok(None);
        };
        let name = name.trim().to_owned();
        let (kind, instance) = name
            .split_once('.')
            .map_or((name.as_str(), None), |(k, i)| (k, Some(i)));
        let instance_ok = instance.is_none_or(|instance| {
            !instance.is_empty()
                && instance
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
        if !["memory", "redis", "tiered"].contains(&kind) || !instance_ok {
            return Err(bad(
                DEFAULT_BACKEND,
                format!("{name:?} is not a backend name: write `memory`, `tiered`, `redis` or `<kind>.<name>`"),
            ));
        }
        if kind == "redis" && !has_redis(&name) {
            return Err(bad(
                REDIS_URL,
                format!(
                    "not set (nor `{REDIS_CLUSTER_NODES}`), but `{DEFAULT_BACKEND}={name}` needs \
                     a Redis server"
                ),
            ));
        }
        Ok(Some(name))
    }
}

fn bad(variable: &'static str, reason: String) -> ConfigError {
    ConfigError::BadVariable { variable, reason }
}

/// A misspelt variable would otherwise be ignored, and the default used without a word.
fn warn_about_unknown_variables() {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CACHETTE_") && !VARIABLES.contains(&name) {
            tracing::warn!(
                variable = name,
                "unknown cachette variable `{name}`, ignored (cachette reads {})",
                VARIABLES.join(", ")
            );
        }
    }
}

mod redis_target;
#[cfg(test)]
mod tests;
