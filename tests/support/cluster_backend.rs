//! The Redis backend the cluster fault tests share: named `redis`, over a test cluster, with
//! the test's timeouts, installed as the process's configuration; and its health.

use std::time::Duration;

use cachette::{configure, BackendHealth, RedisBackend};

use super::redis_cluster::RedisCluster;

/// Installs a backend named `redis` on `cluster`, its keys under `prefix`.
pub fn install(
    cluster: &RedisCluster,
    prefix: &str,
    op_timeout: Duration,
    connect_timeout: Duration,
) {
    let backend = RedisBackend::builder()
        .cluster(cluster.seeds())
        .prefix(prefix)
        .op_timeout(op_timeout)
        .connect_timeout(connect_timeout)
        .build()
        .expect("valid");
    configure()
        .redis("redis", backend)
        .install()
        .expect("configured once");
}

/// The `redis` backend's health.
pub fn health() -> BackendHealth {
    cachette::health()
        .into_iter()
        .find(|backend| backend.name == "redis")
        .expect("configured")
}
