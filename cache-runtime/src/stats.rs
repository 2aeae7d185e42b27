//! `stats()`: each site's own counters as a snapshot, exact and available without any metrics
//! exporter (the exporter's view of the same events is `metric_names`).

use std::time::Duration;

use crate::observe::counters::Count;
use crate::registry;

/// What every cached function that has run so far counted, by function.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// One entry per site, in the order of their first calls.
    pub sites: Vec<SiteStats>,
}

impl Stats {
    /// The counts of the function at `function` (`module::name`, as in
    /// [`SiteStats::function`]; the crate name may be left out).
    pub fn site(&self, function: &str) -> Option<&SiteStats> {
        self.sites.iter().find(|site| {
            site.function == function
                || site
                    .function
                    .split_once("::")
                    .is_some_and(|(_, path)| path == function)
        })
    }
}

/// The counts of one `#[cached]` function since the process started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SiteStats {
    /// The function's path, `module::name`.
    pub function: &'static str,
    /// The backend it is configured to use.
    pub backend: &'static str,
    /// Calls answered from the cache (any tier).
    pub hits: u64,
    /// Of the hits, those a tiered backend answered from its L1.
    pub l1_hits: u64,
    /// Calls that did not find their value: they loaded it, or waited for another caller's
    /// load ([`coalesced`](Self::coalesced)).
    pub misses: u64,
    /// Calls answered with an expired entry kept for the purpose (for the HTTP layer: stale
    /// responses it sent, as their `Cache-Status` says).
    pub stale: u64,
    /// Calls that ran without the cache (no such backend, an unusable key).
    pub bypasses: u64,
    /// Calls whose store failed before they loaded (Redis down or slow, its breaker open):
    /// they ran uncached. A call whose fill alone failed is a miss (see `health()`).
    pub errors: u64,
    /// Runs of the function's body.
    pub loads: u64,
    /// Of the loads, those that returned what is not cached (`Err`), panicked, or were
    /// cancelled.
    pub load_failures: u64,
    /// The time all loads took together.
    pub load_time: Duration,
    /// Calls that waited for another caller's load, in this process or in another one.
    pub coalesced: u64,
    /// Refreshes-ahead this process started (`refresh`), and the HTTP layer's background
    /// revalidations (`stale-while-revalidate`): each is also one of the loads, run in the
    /// background while hits kept the old value. Exported as `cachette_refreshes_total`.
    pub refreshes: u64,
}

impl SiteStats {
    /// Hits over the calls that asked the cache (bypasses are not counted); `None` before any.
    pub fn hit_ratio(&self) -> Option<f64> {
        let asked = self.hits + self.misses + self.stale + self.errors;
        (asked > 0).then(|| self.hits as f64 / asked as f64)
    }

    /// The mean time of a load; `None` before any.
    pub fn mean_load_time(&self) -> Option<Duration> {
        let loads = u32::try_from(self.loads).ok().filter(|&loads| loads > 0)?;
        Some(self.load_time / loads)
    }
}

/// Brings the exported hit counters up to date now. Hits answered in process (memory, a
/// tiered backend's L1) are exported from the sites' own counters, not counted per hit: a
/// background thread publishes them every second, and a `/metrics` handler that calls this
/// before rendering exports them exactly. Every other series moves as its event happens.
///
/// ```
/// cache_runtime::publish_metrics();
/// // ... then render the exporter's text, e.g. `prometheus_handle.render()`.
/// ```
pub fn publish_metrics() {
    registry::publish_hits();
}

/// A snapshot of every site's counts. Exact: every call counted before `stats()` is called is
/// in it.
///
/// ```
/// let stats = cache_runtime::stats();
/// for site in &stats.sites {
///     println!("{}: {} hits, ratio {:?}", site.function, site.hits, site.hit_ratio());
/// }
/// ```
pub fn stats() -> Stats {
    let sites = registry::sites()
        .into_iter()
        .map(|site| {
            let counters = site.counters();
            let get = |count| counters.get(count);
            let (hits, l1_hits) = registry::hits_and_l1_hits(counters);
            SiteStats {
                function: site.function(),
                backend: registry::backend_name_of(site),
                hits,
                l1_hits,
                misses: get(Count::Misses),
                stale: get(Count::Stale),
                bypasses: get(Count::Bypasses),
                errors: get(Count::Errors),
                loads: get(Count::Loads),
                load_failures: get(Count::LoadFailures),
                load_time: Duration::from_nanos(get(Count::LoadNanos)),
                coalesced: get(Count::Coalesced),
                refreshes: get(Count::Refreshes),
            }
        })
        .collect();
    Stats { sites }
}
