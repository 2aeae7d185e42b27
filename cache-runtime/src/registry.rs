//! The process-wide set of named backends, configured once at start-up.

use std::sync::OnceLock;

use crate::backend::{Backend, MemoryBackend, RedisBackend, Store};
use crate::error::ConfigError;

static GLOBAL: OnceLock<Registry> = OnceLock::new();

pub(crate) struct Registry {
    backends: Vec<Backend>,
}

impl Registry {
    pub(crate) fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|backend| backend.name() == name)
    }

    pub(crate) fn backends(&self) -> &[Backend] {
        &self.backends
    }
}

/// The installed registry, or the default one (a `memory` backend of 10,000 entries) if the
/// application configured nothing before the first call.
pub(crate) fn global() -> &'static Registry {
    GLOBAL.get_or_init(|| Config::default().into_registry())
}

/// Starts a configuration of the process's backends.
///
/// ```
/// use cache_runtime::{configure, MemoryBackend};
///
/// configure()
///     .memory("memory.sessions", MemoryBackend::builder().max_entries(500).build())
///     .install()
///     .expect("configured once, before the first cached call");
/// ```
pub fn configure() -> Config {
    Config::default()
}

/// The backends an application uses, by name. `memory` is always present.
#[derive(Default)]
#[must_use = "a configuration does nothing until `install()`"]
pub struct Config {
    memory: Vec<(String, MemoryBackend)>,
    redis: Vec<(String, RedisBackend)>,
}

impl Config {
    /// Adds an in-process backend named `memory` (replacing the default) or `memory.<name>`.
    pub fn memory(mut self, name: &str, backend: MemoryBackend) -> Self {
        self.memory.push((name.to_owned(), backend));
        self
    }

    /// Adds a Redis backend named `redis` or `redis.<name>`.
    pub fn redis(mut self, name: &str, backend: RedisBackend) -> Self {
        self.redis.push((name.to_owned(), backend));
        self
    }

    /// Makes this configuration the process's. Fails if it is invalid, or if a configuration is
    /// already installed (or a cached call already ran with the default one).
    pub fn install(self) -> Result<(), ConfigError> {
        for (index, (name, _)) in self.memory.iter().enumerate() {
            check_name(name, "memory")?;
            if self.memory[..index]
                .iter()
                .any(|(earlier, _)| earlier == name)
            {
                return Err(ConfigError::Duplicate(name.clone()));
            }
        }
        GLOBAL
            .set(self.into_registry())
            .map_err(|_| ConfigError::AlreadyInstalled)
    }

    fn into_registry(self) -> Registry {
        let mut backends: Vec<Backend> = self
            .memory
            .into_iter()
            .map(|(name, memory)| Backend::new(name, Store::Memory(memory)))
            .chain(
                self.redis
                    .into_iter()
                    .map(|(name, redis)| Backend::new(name, Store::Redis(redis))),
            )
            .collect();
        if !backends.iter().any(|backend| backend.name() == "memory") {
            backends.push(Backend::new(
                "memory".to_owned(),
                Store::Memory(MemoryBackend::default()),
            ));
        }
        Registry { backends }
    }
}

fn check_name(name: &str, kind: &'static str) -> Result<(), ConfigError> {
    let valid = match name.strip_prefix(kind) {
        Some("") => true,
        Some(rest) => rest.strip_prefix('.').is_some_and(|suffix| {
            !suffix.is_empty()
                && suffix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }),
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(ConfigError::BadName {
            name: name.to_owned(),
            kind,
        })
    }
}
