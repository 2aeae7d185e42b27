//! `health()`: what each configured backend knows of its Redis and its bus, without any
//! metrics exporter.

use std::time::SystemTime;

use crate::backend::BreakerState;
use crate::registry;

/// The health of one configured backend, as [`health()`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendHealth {
    /// The backend's configured name (`memory`, `redis.sessions`, ...).
    pub name: String,
    /// `memory`, `redis` or `tiered`.
    pub kind: &'static str,
    /// The circuit breaker in front of Redis; `None` for a memory backend. On a cluster, which
    /// has one per master, the worst of them: `Open` if any is open, else `HalfOpen` if one
    /// is probing.
    pub breaker: Option<BreakerState>,
    /// The last Redis failure (a timeout, a refused connection, a refused request) and when
    /// it happened, if any since start-up.
    pub last_error: Option<(String, SystemTime)>,
    /// Invalidations that did not reach Redis yet, kept for replay (on shutdown,
    /// [`drain_invalidations`](crate::drain_invalidations) waits for them).
    pub pending_invalidations: usize,
    /// More invalidations failed than the queue keeps: once Redis answers, every entry under
    /// the prefix is deleted.
    pub pending_overflowed: bool,
    /// A tiered backend's invalidation bus is subscribed (asking starts it, as the backend's
    /// first call does); `None` for other kinds.
    pub bus_connected: Option<bool>,
    /// A tiered backend serves from its L1 (only while its bus is subscribed: the bus starts
    /// with the first call); `None` for other kinds.
    pub l1_in_use: Option<bool>,
}

impl BackendHealth {
    /// Whether the backend caches as configured: its breaker closed, nothing pending, and
    /// (tiered) its bus subscribed.
    pub fn is_healthy(&self) -> bool {
        !matches!(self.breaker, Some(breaker) if breaker != BreakerState::Closed)
            && self.pending_invalidations == 0
            && !self.pending_overflowed
            && self.bus_connected != Some(false)
    }
}

/// The health of every configured backend, in configuration order.
///
/// ```
/// let health = cache_runtime::health();
/// let memory = health.iter().find(|backend| backend.name == "memory").unwrap();
/// assert!(memory.is_healthy());
/// assert_eq!(memory.breaker, None);
/// ```
pub fn health() -> Vec<BackendHealth> {
    registry::global()
        .all_backends()
        .iter()
        .map(|backend| {
            // A tiered backend's bus starts with its first call; a readiness probe asking
            // before any call starts it too, or it would wait for a call it gates. Only from
            // a Tokio runtime: started without one, the bus would stay off for good.
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = backend.remote();
            }
            let (redis, bus) = match backend.redis_health() {
                Some((redis, bus)) => (Some(redis), bus),
                None => (None, None),
            };
            BackendHealth {
                name: backend.name().to_owned(),
                kind: backend.kind(),
                breaker: redis.as_ref().map(|redis| redis.breaker),
                last_error: redis.as_ref().and_then(|redis| redis.last_error.clone()),
                pending_invalidations: redis
                    .as_ref()
                    .map_or(0, |redis| redis.pending_invalidations),
                pending_overflowed: redis.as_ref().is_some_and(|redis| redis.overflowed),
                bus_connected: bus,
                l1_in_use: bus,
            }
        })
        .collect()
}
