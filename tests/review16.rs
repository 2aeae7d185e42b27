//! Review of issue 16 (cluster, TLS, ACL users): repros of what the branch gets wrong.
//! Against real servers: a password-protected redis-server, seeds where nothing listens.

mod support;

use std::time::{Duration, Instant};

use cachette::{cached, configure, RedisBackend};
use support::log_capture::capture_logs;
use support::redis_server::{free_port, RedisServer};

const PASSWORD: &str = "s3cret/pa55";

/// A password with a `/` (left unencoded, as people paste them) must not show in `Debug` or in
/// the configuration error: `redact` took the first `/` for the end of the authority and, not
/// finding the `@` before it, returned the URL whole.
#[test]
fn a_password_with_a_slash_is_redacted_in_debug_and_errors() {
    let url = format!("redis://app:{PASSWORD}@127.0.0.1:6379/0");
    let builder = RedisBackend::builder().url(&url);
    let shown = format!("{builder:?}");
    let outcome = match builder.build() {
        Ok(backend) => format!("{backend:?}"),
        Err(error) => format!("{error} / {error:?}"),
    };
    assert!(
        !shown.contains(PASSWORD) && !outcome.contains(PASSWORD),
        "the password leaked:\n  Debug: {shown}\n  build: {outcome}"
    );
}

#[cached(
    ttl = "60s",
    key = "seeded:<id>",
    backend = "redis.second_seed_refuses"
)]
async fn through_seeds(id: u64) -> Result<u64, String> {
    Ok(id)
}

/// A cluster whose first seed is down (a node replaced, an address out of date) and whose
/// other seed refuses the password: calls fail open, and the line naming the wrong password
/// must come, as it does when the refusing seed is the first. `diagnose` asked only the first
/// seed, got "connection refused" (no configuration cause) and said nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_named_when_the_first_seed_is_down() {
    let logs = capture_logs();
    let server = RedisServer::start_with(vec!["--requirepass".into(), "right-one".into()], false);
    let backend = RedisBackend::builder()
        .cluster([
            format!("redis://:wrong-one@127.0.0.1:{}/", free_port()),
            format!("redis://:wrong-one@127.0.0.1:{}/", server.port()),
        ])
        .prefix("seeded")
        .op_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .expect("valid: nothing connects yet");
    configure()
        .redis("redis.second_seed_refuses", backend)
        .install()
        .expect("configured once");
    for id in 0..20 {
        assert_eq!(through_seeds(id).await.expect("uncached"), id);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let logs = loop {
        let logs = String::from_utf8_lossy(&logs.lock().expect("lock")).into_owned();
        if logs.contains("redis rejected the credentials") || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        logs.contains("redis rejected the credentials"),
        "no line names the wrong password of the second seed:\n{logs}"
    );
    assert!(
        !logs.contains("wrong-one"),
        "a password in the logs:\n{logs}"
    );
    server.stop();
    let _ = std::fs::remove_dir_all(server.dir());
}

/// Seeds must carry the same credentials: redis-rs uses the first seed's for every node, so a
/// password on any other seed only is silently dropped (every node then answers `NOAUTH`, which
/// the store counts as a request refused, not a failure: no breaker, no named cause). Two users
/// are refused at build; a password on one seed alone must be as well.
#[test]
fn seeds_with_and_without_a_password_are_a_configuration_error() {
    let built = RedisBackend::builder()
        .cluster(["redis://127.0.0.1:1/", "redis://:hunter2@127.0.0.1:2/"])
        .build();
    let error = built.expect_err("a password on the second seed only");
    assert!(!error.to_string().contains("hunter2"), "{error}");
}
