//! Review of issue 16: a TLS redis-server that requires client certificates, and a backend that
//! trusts its CA but presents none. The calls fail open; the one line must name TLS as the
//! cause (the handshake completes on the client's side in TLS 1.3, and the server's refusal
//! comes with the first reply), and its hint must point at the client certificate.

mod support;

use std::time::{Duration, Instant};

use cachette::{cached, configure, RedisBackend};
use support::log_capture::capture_logs;
use support::redis_server::RedisServer;
use support::tls::Pki;

#[cached(ttl = "60s", key = "nocert:<id>", backend = "redis.no_client_cert")]
async fn without_client_certificate(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_certificate_is_named_as_a_tls_refusal() {
    let logs = capture_logs();
    let pki = Pki::make();
    let dir = std::env::temp_dir().join(format!("cachette-r16-tls-{}", std::process::id()));
    let server = RedisServer::start_with(pki.write_to(&dir).server_args(), true);
    let backend = RedisBackend::builder()
        .url(format!("rediss://127.0.0.1:{}/", server.port()))
        .prefix("nocert")
        .tls_ca_pem(pki.ca.clone())
        .op_timeout(Duration::from_millis(200))
        .build()
        .expect("valid: nothing connects yet");
    configure()
        .redis("redis.no_client_cert", backend)
        .install()
        .expect("configured once");
    for id in 0..20 {
        assert_eq!(without_client_certificate(id).await.expect("uncached"), id);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let cause = "the TLS handshake with redis failed";
    let logs = loop {
        let logs = String::from_utf8_lossy(&logs.lock().expect("lock")).into_owned();
        if logs.contains(cause) || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.stop();
    let _ = std::fs::remove_dir_all(server.dir());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        logs.lines().filter(|line| line.contains(cause)).count(),
        1,
        "one line naming TLS as the cause:\n{logs}"
    );
    // And its hint points at the client certificate, not at the CA (which is trusted).
    let line = logs
        .lines()
        .find(|line| line.contains(cause))
        .expect("the line");
    assert!(
        line.contains("tls_client_cert_pem"),
        "the hint should name the missing client certificate: {line}"
    );
}
