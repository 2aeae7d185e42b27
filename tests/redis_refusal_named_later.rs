//! A service that starts before its Redis (a deployment where both come up together): the
//! first connections are refused, the breaker opens, and the one diagnosis made then finds
//! nothing to name. When Redis comes up with a certificate the backend does not trust, or a
//! password other than the URL's, the calls keep failing open, and the cause must still be
//! named, once, while it lasts: the breaker never closes, so a diagnosis made only when it
//! opens never runs again.

mod support;

use std::time::{Duration, Instant};

use cachette::{cached, configure, RedisBackend};
use support::log_capture::{capture_logs, captured};
use support::redis_server::RedisServer;
use support::tls::Pki;

const PASSWORD: &str = "later-s3cret";
const WRONG_PASSWORD: &str = "later-wrong";
const CAUSES: [(&str, &str); 2] = [
    (
        "the TLS handshake with redis failed",
        "prefix=later_untrusted",
    ),
    ("redis rejected the credentials", "prefix=later_wrong"),
];

#[cached(ttl = "60s", key = "u:<id>", backend = "redis.untrusted")]
async fn untrusted(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(ttl = "60s", key = "w:<id>", backend = "redis.wrong_password")]
async fn wrong_password(id: u64) -> Result<u64, String> {
    Ok(id)
}

async fn call_both(id: u64) {
    assert_eq!(untrusted(id).await.expect("uncached"), id);
    assert_eq!(wrong_password(id).await.expect("uncached"), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cause_that_appears_while_the_breaker_is_open_is_named() {
    let logs = capture_logs();
    let pki = Pki::make();
    let dir = std::env::temp_dir().join(format!("cachette-later-{}", std::process::id()));
    let mut tls = RedisServer::start_with(pki.write_to(&dir).server_args(), true);
    let mut acl = RedisServer::start_with(
        format!("--user default off --user app on >{PASSWORD} ~* &* +@all")
            .split(' ')
            .map(str::to_owned)
            .collect(),
        false,
    );
    let backend = |url: String, prefix: &str| {
        RedisBackend::builder()
            .url(url)
            .prefix(prefix)
            .op_timeout(Duration::from_millis(200))
            .connect_timeout(Duration::from_millis(200))
            .build()
            .expect("valid: nothing connects yet")
    };
    configure()
        .redis(
            "redis.untrusted",
            backend(
                format!("rediss://127.0.0.1:{}/", tls.port()),
                "later_untrusted",
            ),
        )
        .redis(
            "redis.wrong_password",
            backend(
                format!("redis://app:{WRONG_PASSWORD}@127.0.0.1:{}/", acl.port()),
                "later_wrong",
            ),
        )
        .install()
        .expect("configured once");
    // Not up yet: every connection is refused, and the breakers open.
    tls.kill();
    acl.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 0;
    while captured(logs)
        .lines()
        .filter(|line| line.contains("redis keeps failing"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the breakers did not open");
        call_both(id).await;
        id += 1;
    }
    // The diagnosis of a refused connection ends at once, naming nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = captured(logs);
    for (cause, _) in CAUSES {
        assert!(
            !text.contains(cause),
            "named before the server is up:\n{text}"
        );
    }

    tls.restart();
    acl.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        call_both(id).await;
        id += 1;
        let text = captured(logs);
        if CAUSES.iter().all(|(cause, _)| text.contains(cause)) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the causes were not named within 20 s of the servers coming up:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (cause, prefix) in CAUSES {
        let lines: Vec<&str> = text.lines().filter(|line| line.contains(cause)).collect();
        assert_eq!(lines.len(), 1, "one line naming `{cause}`:\n{text}");
        assert!(lines[0].contains(prefix), "{}", lines[0]);
    }
    assert!(
        !text.contains(PASSWORD) && !text.contains(WRONG_PASSWORD),
        "a password in the logs:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
