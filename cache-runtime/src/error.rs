//! Errors of the runtime's public API.

/// Why [`Config::install`](crate::Config::install) refused a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration is installed once, before the first cached call.
    #[error("cachet is already configured (configure it once, before the first cached call)")]
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
    /// Two backends were given the same name.
    #[error("backend `{0}` is configured twice")]
    Duplicate(String),
}
