//! What the cache tells about itself: the vocabulary of its events, a site's own counters
//! (`counters.rs`, what [`stats`](crate::stats()) reads) and the `metrics` facade's handles
//! (`meters.rs`, what an exporter reads; no-ops without the `metrics` feature).
//!
//! Handles are registered once (a site's when it first runs, a backend's when it is
//! configured) and kept, as the `metrics` crate recommends for hot paths: a recorder must be
//! installed before `configure().install()` and the first cached call.

pub(crate) mod counters;
pub(crate) mod meters;

/// The metric names, as exported.
pub mod names {
    /// Counter: cached calls, by `site`, `backend`, `result` (`hit`, `miss`, `stale`, `bypass`,
    /// `error`) and `tier` (`memory`, `l1`, `l2`, or `none` for a bypass).
    pub const REQUESTS: &str = "cachette_requests_total";
    /// Counter: runs of a cached function's body, by `site`, `backend` and `outcome` (`ok`,
    /// `err`, `panic`, `cancelled`).
    pub const LOADS: &str = "cachette_loads_total";
    /// Histogram, seconds: how long a load took, by `site` and `backend`.
    pub const LOAD_DURATION: &str = "cachette_load_duration_seconds";
    /// Counter: callers that waited for another caller's load instead of loading, by `site`,
    /// `backend` and `scope` (`process`: single-flight; `cluster`: another process's Redis
    /// lock).
    pub const COALESCED: &str = "cachette_coalesced_total";
    /// Histogram, seconds: how long those callers waited, by `site`, `backend` and `scope`.
    pub const COALESCED_WAIT: &str = "cachette_coalesced_wait_seconds";
    /// Counter: refreshes started in the background, by `site` and `backend`: refreshes-ahead
    /// (`refresh`) and the HTTP layer's stale-while-revalidate runs. Each is also a load; none
    /// is a request.
    pub const REFRESHES: &str = "cachette_refreshes_total";
    /// Counter: invalidated keys, by `backend` and `event`: `sent` (by this process),
    /// `received` (from a peer, over the bus), `queued` (Redis did not confirm: the key is
    /// kept for replay, counted once while it waits), `replayed` (a queued key confirmed).
    pub const INVALIDATIONS: &str = "cachette_invalidations_total";
    /// Counter: whole-L1 flushes of a tiered backend (its bus was lost), by `backend`.
    pub const L1_FLUSHES: &str = "cachette_l1_flushes_total";
    /// Counter: entries leaving an in-process store, by `backend`, `tier` (`memory`, `l1`) and
    /// `cause` (`size`, `expired`, `explicit`, `replaced`).
    pub const EVICTIONS: &str = "cachette_evictions_total";
    /// Gauge: entries in an in-process store, by `backend` and `tier`.
    pub const ENTRIES: &str = "cachette_entries";
    /// Gauge: the summed weight of those entries (bytes, as the backend weighs them), by
    /// `backend` and `tier`.
    pub const WEIGHTED_BYTES: &str = "cachette_weighted_bytes";
    /// Gauge: 1 while a Redis backend's circuit breaker is open (calls skip Redis; on a
    /// cluster, any master's), else 0.
    pub const BREAKER_OPEN: &str = "cachette_breaker_open";
    /// Gauge: 1 while a tiered backend's invalidation bus is subscribed, else 0.
    pub const BUS_CONNECTED: &str = "cachette_bus_connected";
    /// Gauge: invalidations waiting for Redis to confirm them, by `backend`.
    pub const PENDING_INVALIDATIONS: &str = "cachette_pending_invalidations";
}

/// Where a call's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    Memory,
    L1,
    L2,
    /// No store was asked (a bypass).
    None,
}

impl Tier {
    pub(crate) const ALL: [Tier; 4] = [Tier::Memory, Tier::L1, Tier::L2, Tier::None];

    pub(crate) const fn label(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::L1 => "l1",
            Tier::L2 => "l2",
            Tier::None => "none",
        }
    }
}

/// What a cached call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Hit,
    /// Not in the cache: this caller loaded, or waited for another caller's load.
    Miss,
    /// An expired entry served in place of a load.
    Stale,
    /// The cache was not used (no such backend, an unusable key).
    Bypass,
    /// The store failed (Redis down, slow, or behind its breaker): the call loaded uncached.
    Error,
}

impl Answer {
    pub(crate) const ALL: [Answer; 5] = [
        Answer::Hit,
        Answer::Miss,
        Answer::Stale,
        Answer::Bypass,
        Answer::Error,
    ];

    pub(crate) const fn label(self) -> &'static str {
        match self {
            Answer::Hit => "hit",
            Answer::Miss => "miss",
            Answer::Stale => "stale",
            Answer::Bypass => "bypass",
            Answer::Error => "error",
        }
    }
}

/// How a run of a cached function's body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadOutcome {
    Ok,
    Err,
    Panic,
    Cancelled,
}

impl LoadOutcome {
    pub(crate) const ALL: [LoadOutcome; 4] = [
        LoadOutcome::Ok,
        LoadOutcome::Err,
        LoadOutcome::Panic,
        LoadOutcome::Cancelled,
    ];

    pub(crate) const fn label(self) -> &'static str {
        match self {
            LoadOutcome::Ok => "ok",
            LoadOutcome::Err => "err",
            LoadOutcome::Panic => "panic",
            LoadOutcome::Cancelled => "cancelled",
        }
    }
}

/// Whose load a caller waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Another caller in this process (single-flight).
    Process,
    /// Another process, holding the Redis lock.
    Cluster,
}

impl Scope {
    pub(crate) const ALL: [Scope; 2] = [Scope::Process, Scope::Cluster];

    pub(crate) const fn label(self) -> &'static str {
        match self {
            Scope::Process => "process",
            Scope::Cluster => "cluster",
        }
    }
}

/// What happened to an invalidated key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalidation {
    Sent,
    Received,
    Queued,
    Replayed,
}

impl Invalidation {
    pub(crate) const ALL: [Invalidation; 4] = [
        Invalidation::Sent,
        Invalidation::Received,
        Invalidation::Queued,
        Invalidation::Replayed,
    ];

    pub(crate) const fn label(self) -> &'static str {
        match self {
            Invalidation::Sent => "sent",
            Invalidation::Received => "received",
            Invalidation::Queued => "queued",
            Invalidation::Replayed => "replayed",
        }
    }
}

/// Why an entry left an in-process store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    Size,
    Expired,
    Explicit,
    Replaced,
}

impl Eviction {
    pub(crate) const ALL: [Eviction; 4] = [
        Eviction::Size,
        Eviction::Expired,
        Eviction::Explicit,
        Eviction::Replaced,
    ];

    pub(crate) const fn label(self) -> &'static str {
        match self {
            Eviction::Size => "size",
            Eviction::Expired => "expired",
            Eviction::Explicit => "explicit",
            Eviction::Replaced => "replaced",
        }
    }
}
