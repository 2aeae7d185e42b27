//! The static description of one annotated function, built by the macro at compile time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::backend::Backend;
use crate::observe::counters::{Count, SiteCounters};
use crate::observe::meters::SiteMeters;

/// One `#[cached]` function: constants the macro writes, and what the runtime learns about
/// them. Built with [`Site::new`] in a `static`.
///
/// Not a stable API: the macro and the runtime are released together and pinned exactly.
#[derive(Debug)]
pub struct Site {
    /// The function's path, `module::name`.
    function: &'static str,
    /// The key template as written, or the default key's description.
    template: &'static str,
    /// The backend's name, such as `"memory"` or `"memory.sessions"`.
    backend: &'static str,
    /// How long an entry lives.
    ttl: Duration,
    /// The value's schema version, part of the type fingerprint of serialised values.
    version: u32,
    state: SiteState,
}

/// What a [`Site`] learns at run time: its backend, what it counted, and which warnings it has
/// already logged.
#[derive(Debug)]
struct SiteState {
    resolved: OnceLock<Resolved>,
    counters: SiteCounters,
    warned_type_mismatch: AtomicBool,
}

/// What the registry resolves for a site on its first call: its backend (`None`: not
/// configured, the site runs uncached) and its metric handles, read together on every call.
pub(crate) struct Resolved {
    pub(crate) backend: Option<Backend>,
    pub(crate) meters: SiteMeters,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl SiteState {
    /// Empty state, for a site in a `static`.
    #[allow(clippy::new_without_default)] // used in `static` initialisers, which need a const fn
    const fn new() -> Self {
        SiteState {
            resolved: OnceLock::new(),
            counters: SiteCounters::new(),
            warned_type_mismatch: AtomicBool::new(false),
        }
    }
}

impl Site {
    /// The site of the function at `function` (`module::name`), keyed by `template` (or the
    /// default key, described), storing in the backend named `backend` for `ttl_millis`, with
    /// values of schema `version`.
    pub const fn new(
        function: &'static str,
        template: &'static str,
        backend: &'static str,
        ttl_millis: u64,
        version: u32,
    ) -> Site {
        Site {
            function,
            template,
            backend,
            ttl: Duration::from_millis(ttl_millis),
            version,
            state: SiteState::new(),
        }
    }

    /// The function's path, `module::name`: the default key starts with it.
    pub const fn function(&self) -> &'static str {
        self.function
    }

    /// The name of the backend this site stores in.
    pub(crate) fn backend_name(&self) -> &'static str {
        self.backend
    }

    /// How long an entry lives.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The value's schema version, part of the type fingerprint of serialised values.
    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    /// Where the registry keeps what it resolved for this site (`registry::resolve`).
    pub(crate) fn resolved(&self) -> &OnceLock<Resolved> {
        &self.state.resolved
    }

    /// Counts `by` of `count` in this site's own counters (what `stats()` reads).
    #[inline]
    pub(crate) fn count(&self, count: Count, by: u64) {
        self.state.counters.add(count, by);
    }

    /// This site's own counters.
    pub(crate) fn counters(&self) -> &SiteCounters {
        &self.state.counters
    }

    /// Logs, once per site, that a key held a value of another type.
    pub(crate) fn warn_type_mismatch(&self, key: &str, expected: &'static str) {
        if !self
            .state
            .warned_type_mismatch
            .swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                function = self.function,
                template = self.template,
                key,
                expected,
                "a cache entry under this key holds another type (two functions' templates \
                 produce the same key); treating it as a miss. Further mismatches at this \
                 site are not logged"
            );
        }
    }
}
