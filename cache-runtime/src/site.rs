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
    /// What happens around an entry's end: fail-safe, jitter, the L1 bound.
    freshness: Freshness,
    state: SiteState,
}

/// A site's options for the end of an entry's life, all off by default. Built by the macro.
///
/// Not a stable API, as [`Site`].
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// `stale`: how long past its ttl an entry is kept, to be served when a load fails.
    pub stale_millis: u64,
    /// `throttle`: how long a stale value served after a failed load counts as fresh, so that
    /// a failing loader is retried at most once per this interval.
    pub throttle_millis: u64,
    /// `hard_timeout`: with a stale value at hand, how long a load may run before the caller
    /// gets the stale value instead (0: no bound).
    pub hard_timeout_millis: u64,
    /// `jitter`, in thousandths: each fill's ttl is shortened by up to this share, at random.
    pub jitter_permille: u16,
    /// `l1_ttl`: how long a tiered process may serve its L1 copy (0: the entry's own time).
    pub l1_ttl_millis: u64,
    /// `refresh`: an entry this old is refreshed in the background by the hit that finds it,
    /// once per key and interval across processes (0: no refresh-ahead).
    pub refresh_millis: u64,
    /// `timeout` (soft): with a stale value at hand, how long a caller waits for a load before
    /// it gets the stale value; the load goes on and stores its result (0: no bound).
    pub soft_timeout_millis: u64,
}

impl Freshness {
    /// Every option off.
    pub const OFF: Freshness = Freshness {
        stale_millis: 0,
        throttle_millis: 0,
        hard_timeout_millis: 0,
        jitter_permille: 0,
        l1_ttl_millis: 0,
        refresh_millis: 0,
        soft_timeout_millis: 0,
    };
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
            freshness: Freshness::OFF,
            state: SiteState::new(),
        }
    }

    /// This site with `freshness` (written by the macro only when an option is set).
    pub const fn with_freshness(mut self, freshness: Freshness) -> Site {
        self.freshness = freshness;
        self
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

    /// How long past its ttl an entry is kept for fail-safe (zero: not kept).
    pub(crate) fn stale(&self) -> Duration {
        Duration::from_millis(self.freshness.stale_millis)
    }

    /// How long a stale value served after a failed load is served as fresh.
    pub(crate) fn throttle(&self) -> Duration {
        Duration::from_millis(self.freshness.throttle_millis)
    }

    /// With a stale value at hand, how long a load may run before the stale value is served.
    pub(crate) fn hard_timeout(&self) -> Option<Duration> {
        let millis = self.freshness.hard_timeout_millis;
        (millis > 0).then(|| Duration::from_millis(millis))
    }

    /// The ttl of one fill: [`ttl`](Self::ttl) shortened by up to the jitter share, at random,
    /// so that entries filled together do not end together. Never longer than the ttl.
    pub(crate) fn fill_ttl(&self) -> Duration {
        let permille = u32::from(self.freshness.jitter_permille);
        if permille == 0 {
            return self.ttl;
        }
        let cut = self
            .ttl
            .mul_f64(f64::from(fastrand::u32(0..=permille)) / 1000.0);
        self.ttl.saturating_sub(cut).max(Duration::from_millis(1))
    }

    /// How long a tiered process may serve its L1 copy, at most.
    pub(crate) fn l1_ttl(&self) -> Option<Duration> {
        let millis = self.freshness.l1_ttl_millis;
        (millis > 0).then(|| Duration::from_millis(millis))
    }

    /// How long before its ttl ends an entry is due for a refresh-ahead (`ttl - refresh`), if
    /// the site refreshes ahead.
    fn refresh_lead(&self) -> Option<Duration> {
        let millis = self.freshness.refresh_millis;
        (millis > 0).then(|| self.ttl.saturating_sub(Duration::from_millis(millis)))
    }

    /// Whether the site refreshes ahead (`refresh`).
    pub(crate) fn refreshes_ahead(&self) -> bool {
        self.freshness.refresh_millis > 0
    }

    /// Whether an entry still fresh for `fresh_remaining` is due for a refresh-ahead.
    pub(crate) fn refresh_due(&self, fresh_remaining: Duration) -> bool {
        self.refresh_lead()
            .is_some_and(|lead| fresh_remaining <= lead)
    }

    /// From how far ahead an entry fresh for `fresh_remaining` is due for a refresh-ahead,
    /// if the site refreshes ahead (what the memory store keeps with the entry).
    pub(crate) fn refresh_in(&self, fresh_remaining: Duration) -> Option<Duration> {
        self.refresh_lead()
            .map(|lead| fresh_remaining.saturating_sub(lead))
    }

    /// How often a key may start a refresh-ahead, in a process and across processes: the
    /// shorter of the window and `refresh`, so that a refresh that failed is retried within a
    /// long window and a successful one never delays the next; but with fail-safe, not more
    /// often than its `throttle` (up to `refresh`), which bounds how often a failing loader runs.
    pub(crate) fn refresh_interval(&self) -> Duration {
        let refresh = Duration::from_millis(self.freshness.refresh_millis);
        let window = self
            .refresh_lead()
            .map_or(refresh, |lead| lead.min(refresh));
        window
            .max(self.throttle())
            .min(refresh)
            .max(Duration::from_millis(1))
    }

    /// The soft timeout: with a stale value at hand, how long a caller waits for a load.
    pub(crate) fn soft_timeout(&self) -> Option<Duration> {
        let millis = self.freshness.soft_timeout_millis;
        (millis > 0).then(|| Duration::from_millis(millis))
    }

    /// Where the registry keeps what it resolved for this site (`registry::resolve`).
    #[inline]
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
    pub(crate) fn warn_type_mismatch(
        &self,
        key: &(impl std::fmt::Display + ?Sized),
        expected: &'static str,
    ) {
        if !self
            .state
            .warned_type_mismatch
            .swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                function = self.function,
                template = self.template,
                %key,
                expected,
                "a cache entry under this key holds another type (two functions' templates \
                 produce the same key); treating it as a miss. Further mismatches at this \
                 site are not logged"
            );
        }
    }
}
