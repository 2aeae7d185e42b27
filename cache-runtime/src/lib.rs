//! The runtime of [cachette](https://docs.rs/cachette): keys, backends and single-flight.
//!
//! Applications use it through the `cachette` crate, whose `#[cached]` and `#[invalidates]`
//! attributes expand into calls to [`expansion`]. Everything that behaves lives here, as
//! ordinary Rust, so that the expansions stay thin.

#![warn(missing_docs)]

mod audit;
mod backend;
mod background;
mod call;
mod clock;
mod drain;
mod env;
mod envelope;
mod error;
mod flight;
mod health;
#[cfg(feature = "axum")]
pub mod http;
mod key;
mod log_gate;
mod observe;
mod registry;
mod shape;
mod site;
mod stats;

pub use audit::{audit, Audit, Finding};
pub use backend::{
    BreakerState, MemoryBackend, MemoryBackendBuilder, RedisBackend, RedisBackendBuilder,
    TieredBackend, TieredBackendBuilder,
};
pub use call::{invalidate, invalidate_tag};
pub use clock::TestClock;
pub use drain::drain_invalidations;
pub use error::{ConfigError, DrainError};
pub use health::{health, BackendHealth};
pub use key::{CacheKey, KeyBuilder, KeyPart, KeyWriter};
pub use observe::names as metric_names;
pub use registry::{configure, Config};
pub use shape::{CacheValue, PortableValue};
pub use stats::{publish_metrics, stats, SiteStats, Stats};

#[doc(hidden)]
pub mod expansion;

#[cfg(test)]
mod send_tests {
    use crate::expansion::*;

    fn is_send<T: Send>(_: T) {}

    #[test]
    fn runtime_futures_are_send() {
        static SITE: Site = Site::new("t", "t", "memory", 1000, 0);
        let key = || KeyBuilder::new().lit("t").finish();
        is_send(cached::<u8, Whole>(&SITE, key(), async { 1u8 }));
        is_send(cached_default::<u8, Whole>(&SITE, key(), async { 1u8 }));
        is_send(invalidating(Always, [key()], async {}));
    }
}
