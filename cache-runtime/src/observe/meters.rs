//! The `metrics` facade's handles, registered once and kept (registering on every event would
//! cost a recorder lookup each time). Without the `metrics` feature the handles are empty and
//! every call on them compiles to nothing.
//!
//! Labels are of bounded cardinality only: a site's function path, a backend's name, a tier,
//! an outcome. Never a key.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{Answer, Eviction, Invalidation, LoadOutcome, Scope, Tier};

#[cfg(feature = "metrics")]
mod handles {
    use metrics::{Key, Label, Level, Metadata};

    pub(crate) use metrics::{Counter, Gauge, Histogram};

    static METADATA: Metadata<'static> =
        Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

    pub(crate) type Labels = Vec<Label>;

    pub(crate) fn label(key: &'static str, value: impl Into<String>) -> Label {
        Label::new(key, value.into())
    }

    pub(crate) fn counter(name: &'static str, labels: Labels) -> Counter {
        super::describe_once();
        let key = Key::from_parts(name, labels);
        metrics::with_recorder(|recorder| recorder.register_counter(&key, &METADATA))
    }

    pub(crate) fn gauge(name: &'static str, labels: Labels) -> Gauge {
        super::describe_once();
        let key = Key::from_parts(name, labels);
        metrics::with_recorder(|recorder| recorder.register_gauge(&key, &METADATA))
    }

    pub(crate) fn histogram(name: &'static str, labels: Labels) -> Histogram {
        super::describe_once();
        let key = Key::from_parts(name, labels);
        metrics::with_recorder(|recorder| recorder.register_histogram(&key, &METADATA))
    }
}

#[cfg(not(feature = "metrics"))]
mod handles {
    #[derive(Clone)]
    pub(crate) struct Counter;
    #[derive(Clone)]
    pub(crate) struct Gauge;
    #[derive(Clone)]
    pub(crate) struct Histogram;

    impl Counter {
        pub(crate) const fn noop() -> Self {
            Counter
        }
        #[inline]
        pub(crate) fn increment(&self, _: u64) {}
        pub(crate) fn absolute(&self, _: u64) {}
    }
    impl Gauge {
        pub(crate) const fn noop() -> Self {
            Gauge
        }
        #[inline]
        pub(crate) fn set(&self, _: f64) {}
        #[inline]
        pub(crate) fn increment(&self, _: f64) {}
    }
    impl Histogram {
        #[inline]
        pub(crate) fn record(&self, _: f64) {}
    }

    /// No labels to keep without the facade.
    pub(crate) struct Labels;

    pub(crate) fn label(_: &'static str, _: impl Into<String>) {}
    pub(crate) fn counter(_: &'static str, _: Labels) -> Counter {
        Counter
    }
    pub(crate) fn gauge(_: &'static str, _: Labels) -> Gauge {
        Gauge
    }
    pub(crate) fn histogram(_: &'static str, _: Labels) -> Histogram {
        Histogram
    }
}

use handles::{counter, gauge, histogram, label, Counter, Gauge, Histogram, Labels};

/// Builds a label list (a `Vec` with the facade, nothing without it).
macro_rules! labels {
    ($($key:literal => $value:expr),* $(,)?) => {{
        #[cfg(feature = "metrics")]
        let labels: Labels = vec![$(label($key, $value)),*];
        #[cfg(not(feature = "metrics"))]
        let labels: Labels = {
            $(label($key, $value);)*
            Labels
        };
        labels
    }};
}

/// Gives every metric its description and unit, for exporters that print them (Prometheus'
/// `# HELP`), once per process.
#[cfg(feature = "metrics")]
fn describe_once() {
    use super::names::*;
    use metrics::Unit;
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        metrics::with_recorder(|recorder| {
            let counter = |name: &'static str, unit, text: &'static str| {
                recorder.describe_counter(name.into(), unit, text.into());
            };
            counter(REQUESTS, None, "Cached calls by result and tier");
            counter(LOADS, None, "Runs of a cached function's body, by outcome");
            counter(
                COALESCED,
                None,
                "Calls that waited for another caller's load",
            );
            counter(
                REFRESHES,
                None,
                "Refreshes started in the background (refresh-ahead, stale-while-revalidate)",
            );
            counter(INVALIDATIONS, None, "Invalidated keys, by event");
            counter(
                L1_FLUSHES,
                None,
                "Whole-L1 flushes after a lost invalidation bus",
            );
            counter(
                EVICTIONS,
                None,
                "Entries leaving an in-process store, by cause",
            );
            let seconds = Some(Unit::Seconds);
            recorder.describe_histogram(
                LOAD_DURATION.into(),
                seconds,
                "Time a cached function's body took".into(),
            );
            recorder.describe_histogram(
                COALESCED_WAIT.into(),
                seconds,
                "Time a coalesced call waited for the load it joined".into(),
            );
            let gauge = |name: &'static str, unit, text: &'static str| {
                recorder.describe_gauge(name.into(), unit, text.into());
            };
            gauge(ENTRIES, None, "Entries in an in-process store");
            gauge(WEIGHTED_BYTES, Some(Unit::Bytes), "Weight of those entries");
            gauge(
                BREAKER_OPEN,
                None,
                "1 while calls skip Redis (breaker open)",
            );
            gauge(
                BUS_CONNECTED,
                None,
                "1 while the invalidation bus is subscribed",
            );
            gauge(PENDING_INVALIDATIONS, None, "Invalidations awaiting Redis");
        });
    });
}

/// A handle registered on first use (`slot`) or ahead of it (`register`): series a site can
/// produce are registered when it starts, so that they are exported as 0 before they move, and
/// any other is registered when it first happens.
struct Lazy<T> {
    slot: OnceLock<T>,
}

impl<T> Lazy<T> {
    const fn new() -> Self {
        Lazy {
            slot: OnceLock::new(),
        }
    }

    #[inline]
    fn get(&self, register: impl FnOnce() -> T) -> &T {
        self.slot.get_or_init(register)
    }
}

/// The handles of one `#[cached]` site.
pub(crate) struct SiteMeters {
    site: &'static str,
    backend: Arc<str>,
    tiers: &'static [Tier],
    requests: [[Lazy<Counter>; Tier::ALL.len()]; Answer::ALL.len()],
    loads: [Lazy<Counter>; LoadOutcome::ALL.len()],
    load_duration: Lazy<Histogram>,
    coalesced: [Lazy<Counter>; Scope::ALL.len()],
    coalesced_wait: [Lazy<Histogram>; Scope::ALL.len()],
    refreshes: Lazy<Counter>,
}

impl SiteMeters {
    /// The handles of `site` storing in `backend`, whose store answers from `tiers`;
    /// `refreshes_ahead`: the site has `refresh` (an HTTP layer's background revalidations
    /// register their series when the first one starts).
    pub(crate) fn new(
        site: &'static str,
        backend: &str,
        tiers: &'static [Tier],
        refreshes_ahead: bool,
    ) -> Self {
        let meters = SiteMeters {
            site,
            backend: Arc::from(backend),
            tiers,
            requests: [const { [const { Lazy::new() }; Tier::ALL.len()] }; Answer::ALL.len()],
            loads: [const { Lazy::new() }; LoadOutcome::ALL.len()],
            load_duration: Lazy::new(),
            coalesced: [const { Lazy::new() }; Scope::ALL.len()],
            coalesced_wait: [const { Lazy::new() }; Scope::ALL.len()],
            refreshes: Lazy::new(),
        };
        meters.requests(Answer::Bypass, Tier::None);
        for &tier in tiers {
            meters.requests(Answer::Hit, tier);
            meters.requests(Answer::Miss, tier);
            if tier == Tier::L2 {
                meters.requests(Answer::Error, tier);
            }
        }
        if !tiers.is_empty() {
            for outcome in LoadOutcome::ALL {
                meters.loads(outcome);
            }
            meters.load_duration();
            meters.coalesced(Scope::Process);
            if tiers.contains(&Tier::L2) {
                meters.coalesced(Scope::Cluster);
            }
            if refreshes_ahead {
                meters.refreshes();
            }
        }
        meters
    }

    fn refreshes(&self) -> &Counter {
        self.refreshes.get(|| {
            let labels = labels!["site" => self.site, "backend" => &*self.backend];
            counter(super::names::REFRESHES, labels)
        })
    }

    fn requests(&self, answer: Answer, tier: Tier) -> &Counter {
        self.requests[answer as usize][tier as usize].get(|| {
            let labels = labels![
                "site" => self.site,
                "backend" => &*self.backend,
                "result" => answer.label(),
                "tier" => tier.label(),
            ];
            counter(super::names::REQUESTS, labels)
        })
    }

    fn loads(&self, outcome: LoadOutcome) -> &Counter {
        self.loads[outcome as usize].get(|| {
            let labels = labels![
                "site" => self.site,
                "backend" => &*self.backend,
                "outcome" => outcome.label(),
            ];
            counter(super::names::LOADS, labels)
        })
    }

    fn load_duration(&self) -> &Histogram {
        self.load_duration.get(|| {
            let labels = labels!["site" => self.site, "backend" => &*self.backend];
            histogram(super::names::LOAD_DURATION, labels)
        })
    }

    fn coalesced(&self, scope: Scope) -> &Counter {
        self.coalesced[scope as usize].get(|| {
            let labels = labels![
                "site" => self.site,
                "backend" => &*self.backend,
                "scope" => scope.label(),
            ];
            counter(super::names::COALESCED, labels)
        })
    }

    fn coalesced_wait(&self, scope: Scope) -> &Histogram {
        self.coalesced_wait[scope as usize].get(|| {
            let labels = labels![
                "site" => self.site,
                "backend" => &*self.backend,
                "scope" => scope.label(),
            ];
            histogram(super::names::COALESCED_WAIT, labels)
        })
    }

    #[inline]
    pub(crate) fn request(&self, answer: Answer, tier: Tier) {
        // In-process hits are published from the site's striped counters instead (see
        // `publish`): the exporter's one counter per series, written by every core's hits,
        // cost a hit at 64 tasks 1.3-1.7x (BENCHMARKS.md, item 9).
        if !(answer == Answer::Hit && matches!(tier, Tier::Memory | Tier::L1)) {
            self.requests(answer, tier).increment(1);
        }
    }

    /// Sets the exported in-process hit counters to the site's own counts (`memory_hits`,
    /// `l1_hits`): monotonic, so `absolute` only ever moves them forward.
    pub(crate) fn publish(&self, memory_hits: u64, l1_hits: u64) {
        if self.tiers.contains(&Tier::Memory) {
            self.requests(Answer::Hit, Tier::Memory)
                .absolute(memory_hits);
        }
        if self.tiers.contains(&Tier::L1) {
            self.requests(Answer::Hit, Tier::L1).absolute(l1_hits);
        }
    }

    pub(crate) fn load(&self, outcome: LoadOutcome, took: Duration) {
        self.loads(outcome).increment(1);
        self.load_duration().record(took.as_secs_f64());
    }

    pub(crate) fn refreshed(&self) {
        self.refreshes().increment(1);
    }

    pub(crate) fn coalesce(&self, scope: Scope, waited: Duration) {
        self.coalesced(scope).increment(1);
        self.coalesced_wait(scope).record(waited.as_secs_f64());
    }
}

/// The handles of one configured backend: its invalidations, and the health of its Redis.
pub(crate) struct BackendMeters {
    invalidations: [Counter; Invalidation::ALL.len()],
    l1_flushes: Counter,
    breaker_open: Gauge,
    bus_connected: Gauge,
    pending: Gauge,
}

impl BackendMeters {
    /// The handles of `backend`, whose store answers from `tiers`: only the series it can
    /// produce are registered (a memory backend has no breaker, and only a tiered one a bus),
    /// so that a dashboard never reads an absent bus as a bus that is down.
    pub(crate) fn new(backend: &str, tiers: &[Tier]) -> Self {
        let labels = || labels!["backend" => backend];
        let (remote, tiered) = (tiers.contains(&Tier::L2), tiers.contains(&Tier::L1));
        let applies = |event: Invalidation| match event {
            Invalidation::Sent => true,
            Invalidation::Received => tiered,
            Invalidation::Queued | Invalidation::Replayed => remote,
        };
        BackendMeters {
            invalidations: Invalidation::ALL.map(|event| {
                if !applies(event) {
                    return Counter::noop();
                }
                let labels = labels!["backend" => backend, "event" => event.label()];
                counter(super::names::INVALIDATIONS, labels)
            }),
            l1_flushes: if tiered {
                counter(super::names::L1_FLUSHES, labels())
            } else {
                Counter::noop()
            },
            breaker_open: if remote {
                gauge(super::names::BREAKER_OPEN, labels())
            } else {
                Gauge::noop()
            },
            bus_connected: if tiered {
                gauge(super::names::BUS_CONNECTED, labels())
            } else {
                Gauge::noop()
            },
            pending: if remote {
                gauge(super::names::PENDING_INVALIDATIONS, labels())
            } else {
                Gauge::noop()
            },
        }
    }

    pub(crate) fn invalidated(&self, event: Invalidation, keys: usize) {
        self.invalidations[event as usize].increment(keys as u64);
    }

    pub(crate) fn l1_flushed(&self) {
        self.l1_flushes.increment(1);
    }

    pub(crate) fn breaker_open(&self, open: bool) {
        self.breaker_open.set(f64::from(u8::from(open)));
    }

    pub(crate) fn bus_connected(&self, connected: bool) {
        self.bus_connected.set(f64::from(u8::from(connected)));
    }

    pub(crate) fn pending(&self, count: usize) {
        self.pending.set(count as f64);
    }
}

/// The handles of an in-process store (a memory backend, or a tiered backend's L1).
pub(crate) struct StoreMeters {
    evictions: [Counter; Eviction::ALL.len()],
    entries: Gauge,
    weighted_bytes: Gauge,
}

impl StoreMeters {
    pub(crate) fn new(backend: &str, tier: Tier) -> Self {
        let labels = || labels!["backend" => backend, "tier" => tier.label()];
        StoreMeters {
            evictions: Eviction::ALL.map(|cause| {
                let labels = labels![
                    "backend" => backend,
                    "tier" => tier.label(),
                    "cause" => cause.label(),
                ];
                counter(super::names::EVICTIONS, labels)
            }),
            entries: gauge(super::names::ENTRIES, labels()),
            weighted_bytes: gauge(super::names::WEIGHTED_BYTES, labels()),
        }
    }

    pub(crate) fn evicted(&self, cause: Eviction) {
        self.evictions[cause as usize].increment(1);
    }

    /// Moves the size gauges by these amounts.
    pub(crate) fn grow(&self, entries: i64, weighted_bytes: i64) {
        self.entries.increment(entries as f64);
        self.weighted_bytes.increment(weighted_bytes as f64);
    }
}
