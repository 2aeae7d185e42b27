//! The process-wide set of named backends, configured once at start-up, and the default backend
//! of sites written without `backend = ...`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::backend::{Backend, MemoryBackend, RedisBackend, Store, TieredBackend};
use crate::error::ConfigError;
use crate::observe::counters::{Count, SiteCounters};
use crate::observe::meters::SiteMeters;
use crate::site::{Resolved, Site};

static GLOBAL: OnceLock<Registry> = OnceLock::new();

/// The backend name the macro writes for a site without `backend = ...`: it follows the
/// configured default. Never a configured name (those start with their kind).
pub(crate) const DEFAULT_NAME: &str = "default";

pub(crate) struct Registry {
    backends: Vec<Backend>,
    /// Index into `backends` of the default backend.
    default: usize,
    /// No Redis is configured: `tiered` sites run in memory, in the `tiered` backend.
    tiered_in_process: bool,
    /// Without Redis, one in-process backend per `tiered.<name>` a site names, made at its first
    /// call: with Redis those are distinct backends, so `tiered.eu` must not answer a
    /// `tiered.us` site with its entry for the same key.
    named_in_process: Mutex<Vec<Backend>>,
    /// The capacity of each in-process `tiered` backend (`CACHETTE_L1_MAX_ENTRIES`).
    in_process_entries: Option<u64>,
}

/// What a call path can use: any backend, or only one in this process (a synchronous call
/// cannot await a network read).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    Any,
    InProcess,
}

impl Registry {
    pub(crate) fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|backend| backend.name() == name)
    }

    #[cfg(test)]
    pub(crate) fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The configured backends, then the in-process `tiered.<name>` ones made so far: what an
    /// invalidation must reach and `health()` reports.
    pub(crate) fn all_backends(&self) -> Vec<Backend> {
        let named = self
            .named_in_process
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.backends.iter().chain(named.iter()).cloned().collect()
    }

    /// The in-process backend of `tiered.<name>` sites without Redis, made on first use.
    fn named_in_process(&self, name: &str) -> Backend {
        let mut named = self
            .named_in_process
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(backend) = named.iter().find(|backend| backend.name() == name) {
            return backend.clone();
        }
        let backend = Backend::new(name.to_owned(), in_process_store(self.in_process_entries));
        named.push(backend.clone());
        backend
    }

    /// The backend of sites without `backend = ...`.
    pub(crate) fn default_backend(&self) -> &Backend {
        &self.backends[self.default]
    }

    /// The backend a site naming `name` uses. Without Redis, every `tiered[.<name>]` site
    /// shares the in-process `tiered` backend, so one attribute works with and without Redis.
    fn resolve(&self, name: &str, reach: Reach, site: &Site) -> Option<Backend> {
        if name == DEFAULT_NAME {
            let default = self.default_backend();
            if reach == Reach::InProcess && default.is_remote() {
                tracing::warn!(
                    function = site.function(),
                    default = default.name(),
                    "`{}` is synchronous, so it caches in this process (`memory`), not in the \
                     default backend `{}`: its entries are not shared with, nor invalidated by, \
                     other processes (make it `async` to follow the default, or write \
                     `backend = \"memory\"` to say so)",
                    site.function(),
                    default.name(),
                );
                return self.backend("memory").cloned();
            }
            return Some(default.clone());
        }
        if let Some(backend) = self.backend(name) {
            return Some(backend.clone());
        }
        (self.tiered_in_process && kind_of(name) == Some("tiered"))
            .then(|| self.named_in_process(name))
    }
}

/// The installed registry, or the default one (a `memory` backend of 10,000 entries, `tiered`
/// in memory) if the application configured nothing before the first call.
pub(crate) fn global() -> &'static Registry {
    GLOBAL.get_or_init(|| {
        Config::default()
            .into_registry()
            .expect("the empty configuration is valid")
    })
}

/// What `site` uses, resolved once per site: its backend, and its metric handles. The backend
/// is `None` when no backend of that name is configured: the function then runs uncached, and
/// the error is logged once per site.
#[inline]
pub(crate) fn resolve(site: &'static Site) -> &'static Resolved {
    // Every call asks; all but a site's first find it resolved, without a call.
    match site.resolved().get() {
        Some(resolved) => resolved,
        None => resolve_once(site, Reach::Any),
    }
}

/// [`resolve`] for a synchronous site: one that follows a remote default uses `memory` instead
/// (logged once).
#[inline]
pub(crate) fn resolve_in_process(site: &'static Site) -> &'static Resolved {
    match site.resolved().get() {
        Some(resolved) => resolved,
        None => resolve_once(site, Reach::InProcess),
    }
}

#[cold]
fn resolve_once(site: &'static Site, reach: Reach) -> &'static Resolved {
    site.resolved().get_or_init(|| {
        let backend = global().resolve(site.backend_name(), reach, site);
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
        // A site on the default is reported under the backend it resolved to.
        let backend_name = backend.as_ref().map_or(site.backend_name(), Backend::name);
        let meters = SiteMeters::new(site.function(), backend_name, tiers, site.refreshes_ahead());
        SITES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(site);
        start_publisher();
        Resolved { backend, meters }
    })
}

/// The backend a `#[cache_put]` site writes to, resolved on each put without registering the
/// site: it makes no calls of its own, so [`stats`](crate::stats()) does not list it.
pub(crate) fn put_backend(site: &Site) -> Option<Backend> {
    global().resolve(site.backend_name(), Reach::Any, site)
}

/// The name of the backend `site` resolved to (a site on the default names the one it follows),
/// or the name it was written with before its first call or when that is not configured.
pub(crate) fn backend_name_of(site: &'static Site) -> &'static str {
    let resolved = site
        .resolved()
        .get()
        .and_then(|resolved| resolved.backend.as_ref());
    resolved.map_or(site.backend_name(), Backend::name)
}

/// Publishes every site's in-process hit counts to its exported counters (they are not counted
/// per hit; see `SiteMeters::request`). Sites with the same labels (every HTTP layer on one
/// backend is `cachette::http response`) share the exporter's series, so it is given their
/// sum: each site's own count, set with `absolute`, would leave it at the largest.
pub(crate) fn publish_hits() {
    let mut series: HashMap<(&str, &str), (&SiteMeters, u64, u64)> = HashMap::new();
    for site in sites() {
        let Some(resolved) = site.resolved().get() else {
            continue;
        };
        let (hits, l1_hits) = hits_and_l1_hits(site.counters());
        let memory_hits = hits - l1_hits;
        let labels = (site.function(), backend_name_of(site));
        let (_, memory, l1) = series.entry(labels).or_insert((&resolved.meters, 0, 0));
        *memory += memory_hits;
        *l1 += l1_hits;
    }
    for (meters, memory_hits, l1_hits) in series.into_values() {
        meters.publish(memory_hits, l1_hits);
    }
}

/// A site's hits and, of those, its L1 hits, as one consistent pair. An L1 hit is counted by two
/// increments (hits, then L1 hits) that a reader can fall between, so the L1 hits are read
/// first, and held to at most the hits read after them, which no interleaving of relaxed
/// increments can then break: `hits - l1_hits` (memory hits) never goes below zero.
pub(crate) fn hits_and_l1_hits(counters: &SiteCounters) -> (u64, u64) {
    let l1_hits = counters.get(Count::L1Hits);
    let hits = counters.get(Count::Hits);
    (hits, l1_hits.min(hits))
}

/// How often the publisher thread publishes: a scrape lags at most this far behind, unless its
/// handler calls `publish_metrics()` first.
#[cfg(feature = "metrics")]
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the publisher thread once, with the first site (a thread rather than a task: sync
/// sites run without a Tokio runtime).
fn start_publisher() {
    #[cfg(feature = "metrics")]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let publisher = std::thread::Builder::new()
                .name("cachette-metrics".to_owned())
                .spawn(|| loop {
                    std::thread::sleep(PUBLISH_EVERY);
                    publish_hits();
                });
            if let Err(error) = publisher {
                tracing::warn!(%error, "no thread to publish in-process hit counts; they are \
                    exported when `publish_metrics()` is called");
            }
        });
    }
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

/// The backends an application uses, by name, and the default backend. `memory` is always
/// present; with no Redis configured, `tiered` sites run in memory. Built in code, or from the
/// environment with [`from_env`](Config::from_env).
#[derive(Default)]
#[must_use = "a configuration does nothing until `install()`"]
pub struct Config {
    backends: Vec<(String, &'static str, Store)>,
    default: Option<DefaultBackend>,
    /// The capacity of the in-process stores of `tiered` sites when no Redis is configured.
    in_process_entries: Option<u64>,
}

/// The default backend's name, and the environment variable it was read from, if any.
struct DefaultBackend {
    name: String,
    variable: Option<&'static str>,
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
    ///
    /// With no Redis backend configured at all, `tiered` sites still cache, in memory (one
    /// in-process backend named `tiered`), so the same attribute serves a laptop and a fleet.
    pub fn tiered(self, name: &str, backend: TieredBackend) -> Self {
        self.with(name, "tiered", Store::Tiered(backend))
    }

    /// The backend of every `#[cached]` site written without `backend = ...` (default
    /// `memory`): `tiered` in production, say, with the attributes unchanged. Synchronous
    /// sites use it only if it is in this process (`memory`, or `tiered` without Redis), and
    /// `memory` otherwise. [`install`](Self::install) checks that it exists.
    pub fn default_backend(mut self, name: &str) -> Self {
        self.default = Some(DefaultBackend {
            name: name.to_owned(),
            variable: None,
        });
        self
    }

    /// [`default_backend`](Self::default_backend), read from `variable`.
    pub(crate) fn default_backend_from(mut self, name: String, variable: &'static str) -> Self {
        self.default = Some(DefaultBackend {
            name,
            variable: Some(variable),
        });
        self
    }

    /// The capacity of each in-process store of `tiered` sites when no Redis is configured
    /// (default that of [`MemoryBackend::default()`]).
    pub(crate) fn tiered_in_process(mut self, entries: u64) -> Self {
        self.in_process_entries = Some(entries);
        self
    }

    /// Whether a backend named `name` is configured so far.
    pub(crate) fn configures(&self, name: &str) -> bool {
        self.backends
            .iter()
            .any(|(configured, _, _)| configured == name)
    }

    fn with(mut self, name: &str, kind: &'static str, store: Store) -> Self {
        self.backends.push((name.to_owned(), kind, store));
        self
    }

    /// Makes this configuration the process's, and logs one line saying where each backend
    /// keeps its entries. Fails if it is invalid, or if a configuration is already installed
    /// (or a cached call already ran with the default one).
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
            .set(self.into_registry()?)
            .map_err(|_| ConfigError::AlreadyInstalled)
    }

    pub(crate) fn into_registry(self) -> Result<Registry, ConfigError> {
        let tiered_in_process = !self
            .backends
            .iter()
            .any(|(_, _, store)| matches!(store, Store::Redis(_) | Store::Tiered(_)));
        let mut backends: Vec<Backend> = self
            .backends
            .into_iter()
            .map(|(name, _, store)| Backend::new(name, store))
            .collect();
        let mut add_in_process = |name: &str, entries: Option<u64>| {
            if !backends.iter().any(|backend| backend.name() == name) {
                backends.push(Backend::new(name.to_owned(), in_process_store(entries)));
            }
        };
        add_in_process("memory", None);
        let default_name = self.default.as_ref().map_or("memory", |d| d.name.as_str());
        if tiered_in_process {
            add_in_process("tiered", self.in_process_entries);
            // A `tiered.<name>` default is that backend, as with Redis, which sites naming it
            // share.
            if kind_of(default_name) == Some("tiered") {
                add_in_process(default_name, self.in_process_entries);
            }
        }
        let default = backends
            .iter()
            .position(|backend| backend.name() == default_name)
            .ok_or_else(|| {
                let default = self.default.as_ref().expect("`memory` is always present");
                ConfigError::UnknownDefault {
                    name: default.name.clone(),
                    variable: default.variable,
                }
            })?;
        let registry = Registry {
            backends,
            default,
            tiered_in_process,
            named_in_process: Mutex::new(Vec::new()),
            in_process_entries: self.in_process_entries,
        };
        tracing::info!("{}", registry.describe());
        Ok(registry)
    }
}

impl Registry {
    /// The start-up line: each backend and where it keeps entries, and the default.
    fn describe(&self) -> String {
        let mut line = String::from("cachette backends:");
        for (index, backend) in self.backends.iter().enumerate() {
            let separator = if index == 0 { " " } else { "; " };
            let _ = write!(line, "{separator}{} ({})", backend.name(), backend.mode());
            if self.tiered_in_process && kind_of(backend.name()) == Some("tiered") {
                line.push_str(
                    " [no Redis configured: `tiered` sites cache per process, and their \
                     invalidations do not reach other processes]",
                );
            }
        }
        let _ = write!(
            line,
            "; sites without `backend` use `{}`",
            self.default_backend().name()
        );
        line
    }
}

/// An in-process store for a backend of `entries` (default [`MemoryBackend::default()`]).
fn in_process_store(entries: Option<u64>) -> Store {
    Store::Memory(entries.map_or_else(MemoryBackend::default, |entries| {
        MemoryBackend::builder().max_entries(entries).build()
    }))
}

/// The kind a backend name starts with: `memory`, `redis` or `tiered`.
fn kind_of(name: &str) -> Option<&str> {
    let kind = name.split_once('.').map_or(name, |(kind, _)| kind);
    ["memory", "redis", "tiered"]
        .into_iter()
        .find(|k| *k == kind)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn site(backend: &'static str) -> &'static Site {
        Box::leak(Box::new(Site::new("t::f", "t", backend, 1000, 0)))
    }

    fn redis() -> RedisBackend {
        RedisBackend::builder()
            .url("redis://127.0.0.1:1/")
            .build()
            .expect("valid; nothing connects")
    }

    fn resolved(registry: &Registry, backend: &'static str, reach: Reach) -> Option<String> {
        registry
            .resolve(backend, reach, site(backend))
            .map(|backend| backend.name().to_owned())
    }

    #[test]
    fn without_redis_every_tiered_site_caches_in_process() {
        let registry = Config::default().into_registry().expect("valid");
        for name in ["tiered", "tiered.sessions"] {
            assert_eq!(resolved(&registry, name, Reach::Any).as_deref(), Some(name));
        }
        assert!(!registry.backend("tiered").expect("present").is_remote());
        assert_eq!(
            resolved(&registry, "redis", Reach::Any).as_deref(),
            None,
            "redis does not degrade"
        );
    }

    #[test]
    fn with_redis_a_tiered_site_is_the_tiered_backend_or_none() {
        let registry = Config::default()
            .redis("redis", redis())
            .into_registry()
            .expect("valid");
        assert_eq!(resolved(&registry, "tiered", Reach::Any).as_deref(), None);
        let registry = Config::default()
            .tiered("tiered", TieredBackend::builder(redis()).build())
            .into_registry()
            .expect("valid");
        assert!(registry.backend("tiered").expect("present").is_remote());
        assert_eq!(
            resolved(&registry, "tiered.other", Reach::Any).as_deref(),
            None
        );
    }

    #[test]
    fn the_default_follows_the_configuration_and_sync_sites_stay_in_process() {
        let registry = Config::default().into_registry().expect("valid");
        assert_eq!(
            resolved(&registry, DEFAULT_NAME, Reach::Any).as_deref(),
            Some("memory")
        );
        let registry = Config::default()
            .tiered("tiered", TieredBackend::builder(redis()).build())
            .default_backend("tiered")
            .into_registry()
            .expect("valid");
        assert_eq!(
            resolved(&registry, DEFAULT_NAME, Reach::Any).as_deref(),
            Some("tiered")
        );
        assert_eq!(
            resolved(&registry, DEFAULT_NAME, Reach::InProcess).as_deref(),
            Some("memory")
        );
        let in_process = Config::default()
            .default_backend("tiered")
            .into_registry()
            .expect("valid");
        assert_eq!(
            resolved(&in_process, DEFAULT_NAME, Reach::InProcess).as_deref(),
            Some("tiered")
        );
        assert!(matches!(
            Config::default().default_backend("redis").into_registry(),
            Err(ConfigError::UnknownDefault { variable: None, .. })
        ));
    }

    #[test]
    fn the_start_up_line_says_where_each_backend_keeps_entries() {
        let line = Config::default()
            .default_backend("tiered")
            .into_registry()
            .expect("valid")
            .describe();
        assert_eq!(
            line,
            "cachette backends: memory (in process); tiered (in process) [no Redis configured: \
             `tiered` sites cache per process, and their invalidations do not reach other \
             processes]; sites without `backend` use `tiered`"
        );
    }
}
