//! The process-wide set of named backends, configured once at start-up.

use std::sync::{Mutex, OnceLock, PoisonError};

use crate::backend::{Backend, MemoryBackend, RedisBackend, Store, TieredBackend};
use crate::error::ConfigError;
use crate::observe::meters::SiteMeters;
use crate::site::{Resolved, Site};

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

/// What `site` uses, resolved once per site: its backend, and its metric handles. The backend
/// is `None` when no backend of that name is configured: the function then runs uncached, and
/// the error is logged once per site.
pub(crate) fn resolve(site: &'static Site) -> &'static Resolved {
    site.resolved().get_or_init(|| {
        let backend = global().backend(site.backend_name()).cloned();
        if backend.is_none() {
            tracing::error!(
                function = site.function(),
                backend = site.backend_name(),
                "cache backend `{}` is not configured; `{}` runs uncached (configure it \
                 with `cachette::configure()` before the first call)",
                site.backend_name(),
                site.function(),
            );
        }
        let tiers = backend.as_ref().map_or(&[][..], Backend::tiers);
        let meters = SiteMeters::new(site.function(), site.backend_name(), tiers);
        SITES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(site);
        Resolved { backend, meters }
    })
}

/// Every site that has run, in the order of their first calls.
static SITES: Mutex<Vec<&'static Site>> = Mutex::new(Vec::new());

/// The sites that have run so far.
pub(crate) fn sites() -> Vec<&'static Site> {
    SITES.lock().unwrap_or_else(PoisonError::into_inner).clone()
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
    backends: Vec<(String, &'static str, Store)>,
}

impl Config {
    /// Adds an in-process backend named `memory` (replacing the default) or `memory.<name>`.
    pub fn memory(self, name: &str, backend: MemoryBackend) -> Self {
        self.with(name, "memory", Store::Memory(backend))
    }

    /// Adds a Redis backend named `redis` or `redis.<name>`.
    pub fn redis(self, name: &str, backend: RedisBackend) -> Self {
        self.with(name, "redis", Store::Redis(backend))
    }

    /// Adds a tiered backend (L1 in process, L2 in Redis) named `tiered` or `tiered.<name>`.
    pub fn tiered(self, name: &str, backend: TieredBackend) -> Self {
        self.with(name, "tiered", Store::Tiered(backend))
    }

    fn with(mut self, name: &str, kind: &'static str, store: Store) -> Self {
        self.backends.push((name.to_owned(), kind, store));
        self
    }

    /// Makes this configuration the process's. Fails if it is invalid, or if a configuration is
    /// already installed (or a cached call already ran with the default one).
    pub fn install(self) -> Result<(), ConfigError> {
        for (index, (name, kind, _)) in self.backends.iter().enumerate() {
            check_name(name, kind)?;
            if self.backends[..index]
                .iter()
                .any(|(earlier, _, _)| earlier == name)
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
            .backends
            .into_iter()
            .map(|(name, _, store)| Backend::new(name, store))
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
