//! Helpers shared by integration tests. Each test binary uses a different part of them.

#[allow(dead_code)]
pub mod redis_server;

#[allow(dead_code)]
pub mod start_line;

#[allow(dead_code)]
pub mod fence_race;

#[allow(dead_code)]
pub mod redis_cluster;

#[cfg(feature = "cluster")]
#[allow(dead_code)]
pub mod cluster_backend;

#[allow(dead_code)]
pub mod alloc_count;

#[allow(dead_code)]
pub mod tls;

#[allow(dead_code)]
pub mod log_capture;

#[allow(dead_code)]
pub mod scripted_loader;

#[allow(dead_code)]
pub mod delaying_proxy;

#[allow(dead_code, unused_imports)]
pub mod load_count;
