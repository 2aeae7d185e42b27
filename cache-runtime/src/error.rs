//! Errors of the runtime's public API.

use std::time::Duration;

/// Why [`Config::install`](crate::Config::install) or [`Config::from_env`](crate::Config::from_env)
/// refused a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration is installed once, before the first cached call.
    #[error("cachette is already configured (configure it once, before the first cached call)")]
    AlreadyInstalled,
    /// A backend name does not fit its kind.
    #[error(
        "backend name `{name}` must be `{kind}` or `{kind}.<name>` (letters, digits, `_`, `-`)"
    )]
    BadName {
        /// The name given.
        name: String,
        /// The kind of backend it was given for.
        kind: &'static str,
    },
    /// No Redis URL was given, or its environment variable is not set.
    #[error("no Redis URL: {}", if variable.is_empty() { "call `.url(...)` or `.url_from_env(...)`".to_owned() } else { format!("the environment variable `{variable}` is not set") })]
    MissingUrl {
        /// The environment variable that was read, if any.
        variable: String,
    },
    /// The Redis URL could not be used (shown with its password redacted).
    #[error("invalid Redis URL `{url}`: {reason}")]
    BadUrl {
        /// The URL, password redacted.
        url: String,
        /// Why (password redacted).
        reason: String,
    },
    /// The key prefix is empty or holds a structural character (`{}*?[]`, whitespace).
    #[error("invalid key prefix {0:?}: use a non-empty name without braces, glob characters or whitespace")]
    BadPrefix(String),
    /// Two backends were given the same name.
    #[error("backend `{0}` is configured twice")]
    Duplicate(String),
    /// The default backend names no configured backend.
    #[error("the default backend `{name}`{} is not configured: configure it, or choose `memory` or `tiered` (which runs in memory without Redis)", variable.map(|v| format!(" (from `{v}`)")).unwrap_or_default())]
    UnknownDefault {
        /// The name given.
        name: String,
        /// The environment variable it was read from, if any.
        variable: Option<&'static str>,
    },
    /// The TLS material given for `rediss://` cannot be used: no certificate in a PEM, or one
    /// malformed, or no private key (feature `tls`).
    #[error("invalid TLS {part}: {reason}")]
    BadTls {
        /// Which: `CA certificates (tls_ca_pem)`, `client certificate (tls_client_cert_pem)`
        /// or `client private key (tls_client_cert_pem)`.
        part: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An environment variable read by [`Config::from_env`](crate::Config::from_env) holds a
    /// value that cannot be used.
    #[error("environment variable `{variable}`: {reason}")]
    BadVariable {
        /// The variable, such as `CACHETTE_OP_TIMEOUT`.
        variable: &'static str,
        /// What is wrong with its value, and what it takes (a password is redacted).
        reason: String,
    },
}

/// Why [`drain_invalidations`](crate::drain_invalidations) (or a backend's own
/// `drain_invalidations`) returned before every queued invalidation had reached Redis. What is
/// still queued stays queued: it is replayed if the process lives on, and lost if it exits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DrainError {
    /// The timeout passed first: Redis was unreachable, or came back too late.
    #[error("{remaining} invalidation(s){} had not reached redis after {waited:?}", overflow_note(*overflowed))]
    TimedOut {
        /// Invalidations still queued, summed over the backends' queues, plus (for
        /// `drain_invalidations`) the invalidating calls still under way.
        remaining: usize,
        /// A queue overflowed, so its keys past the bound are not counted, and the purge of
        /// the prefix that stands in for them has not run.
        overflowed: bool,
        /// The timeout given.
        waited: Duration,
    },
    /// Called outside a Tokio runtime, which nothing can be replayed or waited on without.
    #[error("{remaining} invalidation(s){} wait for redis, and there is no Tokio runtime to replay them on", overflow_note(*overflowed))]
    NoRuntime {
        /// Invalidations queued, summed over the backends' queues.
        remaining: usize,
        /// A queue overflowed (see [`DrainError::TimedOut`]).
        overflowed: bool,
    },
}

impl DrainError {
    /// How many invalidations were still queued when the drain gave up.
    pub fn remaining(&self) -> usize {
        match self {
            DrainError::TimedOut { remaining, .. } | DrainError::NoRuntime { remaining, .. } => {
                *remaining
            }
        }
    }
}

fn overflow_note(overflowed: bool) -> &'static str {
    if overflowed {
        " and the purge after a queue overflow"
    } else {
        ""
    }
}
