//! A Redis Cluster that speaks only TLS and knows one ACL user (as in `cluster_tls_acl.rs`),
//! reached with a wrong password and with a CA that does not sign its certificates. As on a
//! single server the connections are lazy, so neither is an error at start-up: calls fail open,
//! each within a bound, and one log line names each cause; no password reaches `Debug`, a log
//! line, an error or `health()`.
//!
//! A binary of its own: a backend that never connects keeps retrying (its reconnections, the
//! replay of its invalidations, a diagnosis every log interval), and in a debug build these TLS
//! handshakes took enough of the 2 cores to push the working backends past their timeouts.

mod support;

use std::time::{Duration, Instant};

use cachette::{cached, configure, RedisBackend, RedisBackendBuilder};
use support::log_capture::{capture_logs, captured};
use support::redis_cluster::RedisCluster;

const USER: &str = "cacheapp";
const PASSWORD: &str = "cl-s3cret-pa55";
const WRONG_PASSWORD: &str = "cl-not-the-pa55word";

fn app_rules() -> String {
    "~ct*:* &ct*:* +@all".to_owned()
}

#[cached(ttl = "60s", key = "wrong:<id>", backend = "redis.wrong_password")]
async fn with_wrong_password(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(ttl = "60s", key = "untrusted:<id>", backend = "redis.untrusted")]
async fn with_untrusted_certificate(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn built(builder: RedisBackendBuilder) -> RedisBackend {
    let shown = format!("{builder:?}");
    let backend = builder.build().expect("valid: nothing connects yet");
    let shown = format!("{shown} {backend:?}");
    assert!(
        !shown.contains(PASSWORD) && !shown.contains(WRONG_PASSWORD),
        "a password in Debug: {shown}"
    );
    assert!(shown.contains(&format!("{USER}:***@")), "{shown}");
    backend
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_untrusted_certificate_fail_open_and_are_named() {
    let logs = capture_logs();
    let secured = RedisCluster::start_tls_acl(USER, PASSWORD, &app_rules());
    let seeds = secured.app_seeds();
    let wrong_seeds: Vec<String> = seeds
        .iter()
        .map(|seed| seed.replace(PASSWORD, WRONG_PASSWORD))
        .collect();
    // The right CA and client certificate, the wrong password.
    let wrong_password = built(
        RedisBackend::builder()
            .cluster(wrong_seeds)
            .prefix("ctwrong")
            .op_timeout(Duration::from_millis(200))
            .tls_ca_pem(secured.pki.ca.clone())
            .tls_client_cert_pem(secured.pki.client.0.clone(), secured.pki.client.1.clone()),
    );
    // The right password; the system's roots, which do not include the test CA.
    let untrusted = built(
        RedisBackend::builder()
            .cluster(seeds.iter().cloned())
            .prefix("ctuntrusted")
            .op_timeout(Duration::from_millis(200)),
    );
    configure()
        .redis("redis.wrong_password", wrong_password)
        .redis("redis.untrusted", untrusted)
        .install()
        .expect("configured once");

    for id in 0..20 {
        let started = Instant::now();
        assert_eq!(with_wrong_password(id).await.expect("uncached"), id);
        assert_eq!(with_untrusted_certificate(id).await.expect("uncached"), id);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    // The cause is found by a connection attempt of its own, in a task: wait for its line. If
    // that attempt finds nothing to name (it timed out on a loaded machine), the next failed
    // probe a log interval later tries again.
    let causes = [
        ("redis rejected the credentials", "prefix=ctwrong"),
        ("the TLS handshake with redis failed", "prefix=ctuntrusted"),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = captured(logs);
        if causes.iter().all(|(cause, _)| text.contains(cause)) || Instant::now() > deadline {
            break text;
        }
        // Calls keep the breakers probing, as a service's traffic would.
        let _ = with_wrong_password(0).await;
        let _ = with_untrusted_certificate(0).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (cause, prefix) in causes {
        let lines: Vec<&str> = text.lines().filter(|line| line.contains(cause)).collect();
        // One per log interval (10 s), and the wait is at most 15 s.
        assert!(
            (1..=2).contains(&lines.len()),
            "one line naming `{cause}` per 10 s:\n{text}"
        );
        assert!(lines.iter().all(|line| line.contains(prefix)), "{lines:?}");
    }

    // No password anywhere: the logs, `health()`, a configuration error of the cluster path.
    assert!(
        !text.contains(PASSWORD) && !text.contains(WRONG_PASSWORD),
        "a password in the logs:\n{text}"
    );
    let health = format!("{:?}", cachette::health());
    assert!(health.contains("redis.wrong_password"), "{health}");
    assert!(
        !health.contains(PASSWORD) && !health.contains(WRONG_PASSWORD),
        "a password in health(): {health}"
    );
    let mixed = [seeds[0].clone(), seeds[1].replace(PASSWORD, WRONG_PASSWORD)];
    let error = RedisBackend::builder()
        .cluster(mixed)
        .build()
        .expect_err("two passwords on the seeds");
    let error = format!("{error} {error:?}");
    assert!(
        !error.contains(PASSWORD) && !error.contains(WRONG_PASSWORD),
        "a password in an error: {error}"
    );
}
