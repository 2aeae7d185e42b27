#![warn(missing_docs)]
//! # cachette
//!
//! Declarative caching for Rust service functions. Annotate a function with [`cached`], and the
//! functions that change its data with [`invalidates`]:
//!
//! ```
//! use cachette::{cached, invalidates};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct User { name: String }
//!
//! #[cached(ttl = "60s", key = "user:<id>")]
//! async fn get_user(id: u64) -> Result<User, std::io::Error> {
//!     Ok(User { name: format!("user {id}") })
//! }
//!
//! #[invalidates("user:<id>")]
//! async fn rename_user(id: u64, name: String) -> Result<(), std::io::Error> {
//!     Ok(())
//! }
//! # futures::executor::block_on(async {
//! assert_eq!(get_user(7).await.unwrap().name, "user 7");
//! rename_user(7, "Ada".into()).await.unwrap();
//! # });
//! ```
//!
//! A `Result` caches only `Ok`, an `Option` only `Some` (unless `cache_none`), any other type
//! always. Concurrent callers of a cold key run the body once (single-flight); a cancelled or
//! panicking caller never leaves the others waiting.
//!
//! ## `#[cached]` options
//! | option | meaning |
//! |---|---|
//! | `ttl = "90s"` or `ttl = 90` | how long an entry lives (required) |
//! | `key = "user:<id>"` | the key template: literal text and `<param>`, `<param.field>`, `<param:hash>` placeholders; default: the function's path and every parameter |
//! | `backend = "memory"` | the backend's name: `memory`, `redis`, `tiered`, or a configured `<kind>.<name>`; default: the configured default backend (`memory` unless set), so the value must be `Serialize + DeserializeOwned` on an async fn |
//! | `cache_none` | cache `None` too (for `Option` returns) |
//! | `version = 2` | the value's schema version |
//! | `skip(db)` | leave parameters out of the default key |
//! | `returns = "result"` | state the return shape (`result`, `option`, `value`) for a type alias |
//! | `crate = "cachette"` | the path of this crate, if renamed |
//!
//! `self` is never part of a key unless the template names `<self.field>`.
//!
//! ## Backends
//! `memory` works with no set-up. The shared ones are configured once at start-up, with
//! [`configure`]: [`RedisBackend`] (every process of a service shares its values) and
//! [`TieredBackend`] (an in-process L1 in front of Redis, kept consistent across processes by an
//! invalidation bus). Values stored in Redis need `serde::Serialize + DeserializeOwned`.
//!
//!
//! A site without `backend` follows the configured default backend (`memory` unless set).
//! `tiered` with no Redis configured runs in memory, so one attribute serves a laptop and a
//! fleet, and the deployment chooses with [`Config::from_env`] (`CACHETTE_REDIS_URL`,
//! `CACHETTE_DEFAULT_BACKEND=tiered`, ...):
//!
//! ```no_run
//! cachette::configure().from_env()?.install()?;
//! # Ok::<(), cachette::ConfigError>(())
//! ```
//!
//! The same in code:
//!
//! ```no_run
//! use cachette::{configure, RedisBackend, TieredBackend};
//!
//! let redis = RedisBackend::builder().url_from_env("CACHETTE_REDIS_URL").build()?;
//! configure()
//!     .redis("redis", redis.clone())
//!     .tiered("tiered", TieredBackend::builder(redis).build())
//!     .default_backend("tiered")
//!     .install()?;
//! # Ok::<(), cachette::ConfigError>(())
//! ```

#[doc(inline)]
pub use cache_macros::{cache_put, cached, invalidates};
pub use cache_runtime::{
    audit, configure, drain_invalidations, health, invalidate, invalidate_tag, metric_names,
    publish_metrics, stats, Audit, BackendHealth, BreakerState, CacheKey, CacheValue, Config,
    ConfigError, DrainError, Finding, KeyBuilder, KeyPart, KeyWriter, MemoryBackend,
    MemoryBackendBuilder, PortableValue, RedisBackend, RedisBackendBuilder, SiteStats, Stats,
    TestClock, TieredBackend, TieredBackendBuilder,
};

/// HTTP response caching for axum: a tower layer with ETags, `304 Not Modified` and
/// invalidation by route (feature `axum`).
#[cfg(feature = "axum")]
pub use cache_runtime::http;

/// What the attributes expand to. /!\ Not a stable API: it may change in any release. /!\
#[doc(hidden)]
pub mod __private {
    pub use cache_runtime::expansion::*;
}
