//! The README's two-process example (`examples/fleet.rs`), run with real processes against a
//! real redis-server: after one worker changes a price, the other still serves the old one with
//! `memory` (and with `tiered` when no Redis is configured: it runs in memory), and the new one
//! with `tiered` over Redis. Then workers refuse a malformed `CACHETTE_*` variable at start-up,
//! naming it.
//!
//! The binary is the example itself (`harness = false`): its workers are this binary,
//! re-executed with `worker <dir>`, exactly as the example re-executes itself.

#[allow(dead_code)] // the example's own printing `main` runs only in the example
#[path = "../examples/fleet.rs"]
mod fleet;
mod support;

use std::process::Command;

use support::redis_server::RedisServer;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("worker") {
        fleet::main().expect("the worker runs");
        return;
    }
    let server = RedisServer::start();
    let url = server.url();
    let exe = std::env::current_exe().expect("own path");

    let memory = fleet::two_workers(&exe, "memory", Some(&url)).expect("memory run");
    println!("{memory}");
    assert_stale(&memory);

    let in_memory = fleet::two_workers(&exe, "tiered", None).expect("tiered run without redis");
    println!("{in_memory} (no Redis)");
    assert_stale(&in_memory);

    let tiered = fleet::two_workers(&exe, "tiered", Some(&url)).expect("tiered run");
    println!("{tiered}");
    assert_eq!(tiered.before, ["100 loaded", "100 cached"], "{tiered}");
    let fresh_after = tiered
        .fresh_after
        .unwrap_or_else(|| panic!("stale: {tiered}"));
    assert_eq!(tiered.after.last().map(String::as_str), Some("120 loaded"));
    assert!(fresh_after < fleet::WATCH, "{tiered}");

    malformed_variables_stop_a_worker_at_start_up_naming_them(&url);
    println!("fleet_example: ok");
}

/// Worker 1 cached the price, and went on serving the old one for the whole watch.
fn assert_stale(run: &fleet::Run) {
    assert_eq!(run.before, ["100 loaded", "100 cached"], "{run}");
    assert!(run.fresh_after.is_none(), "fresh: {run}");
    assert!(run.after.len() > 10, "{run}");
    assert!(run.after.iter().all(|read| read == "100 cached"), "{run}");
}

fn malformed_variables_stop_a_worker_at_start_up_naming_them(url: &str) {
    let exe = std::env::current_exe().expect("own path");
    let cases = [
        ("CACHETTE_OP_TIMEOUT", "fast"),
        ("CACHETTE_DEFAULT_BACKEND", "fastest"),
        ("CACHETTE_KEY_PREFIX", "my shop"),
        ("CACHETTE_REDIS_URL", "localhost:6379"),
    ];
    for (variable, value) in cases {
        let output = Command::new(&exe)
            .args(["worker", "/nonexistent"])
            .env("CACHETTE_REDIS_URL", url)
            .env(variable, value)
            .output()
            .expect("start a worker");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}={value} was accepted");
        assert!(
            stderr.contains(&format!("environment variable `{variable}`")),
            "{variable}={value}: {stderr}"
        );
    }
}
