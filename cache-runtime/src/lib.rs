//! The runtime of [cachet](https://docs.rs/cachet): keys, backends and single-flight.
//!
//! Applications use it through the `cachet` crate, whose `#[cached]` and `#[invalidates]`
//! attributes expand into calls to [`expansion`]. Everything that behaves lives here, as
//! ordinary Rust, so that the expansions stay thin.

#![warn(missing_docs)]

mod backend;
mod call;
mod envelope;
mod error;
mod flight;
#[cfg(feature = "axum")]
pub mod http;
mod key;
mod log_gate;
mod registry;
mod remote;
mod shape;
mod site;

pub use backend::{
    MemoryBackend, MemoryBackendBuilder, RedisBackend, RedisBackendBuilder, TieredBackend,
    TieredBackendBuilder, Weigher,
};
pub use call::invalidate;
pub use error::ConfigError;
pub use key::{CacheKey, KeyBuilder, KeyPart, KeyWriter};
pub use registry::{configure, Config};
pub use shape::CacheValue;

/// What macro expansions name. /!\ Not a stable API: it changes with every release, and the
/// macros are pinned to the runtime of the same version. /!\
#[doc(hidden)]
pub mod expansion {
    pub use crate::call::{cached, cached_sync, invalidating, invalidating_sync};
    pub use crate::key::KeyBuilder;
    pub use crate::remote::cached_remote;
    pub use crate::shape::{Always, IfOk, OkOnly, SomeOnly, Whole};
    pub use crate::site::{Site, SiteState};
    pub use core::any::type_name;
    pub use core::concat;
    pub use core::module_path;
    pub use core::time::Duration;
}

#[cfg(test)]
mod send_tests {
    use crate::expansion::*;

    fn is_send<T: Send>(_: T) {}

    #[test]
    fn runtime_futures_are_send() {
        static SITE: Site = Site {
            function: "t",
            template: "t",
            backend: "memory",
            ttl: Duration::from_secs(1),
            version: 0,
            state: SiteState::new(),
        };
        let key = || KeyBuilder::new().lit("t").finish();
        is_send(cached(&SITE, Whole, key(), async { 1u8 }));
        is_send(invalidating(Always, [key()], async {}));
    }
}
