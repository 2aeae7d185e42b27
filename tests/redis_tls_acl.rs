//! The redis and tiered backends over TLS (`rediss://`, feature `tls`) and as an ACL user,
//! against real servers (issue 16): a TLS redis-server that requires client certificates, its
//! CA and certificates made here with rcgen; a server whose default user is off and whose one
//! user is `app`. A wrong password and an untrusted certificate fail open, with a log line
//! naming the cause, and no password reaches `Debug`, a log line or an error.
//!
//! The scenarios run in turn in one test on one runtime, as a backend's connection lives on the
//! runtime that first used it.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, RedisBackend, TieredBackend};
use support::log_capture::capture_logs;
use support::redis_server::{OnExit, RedisServer};
use support::tls::Pki;

const PASSWORD: &str = "s3cret-pa55";
const WRONG_PASSWORD: &str = "not-the-pa55word";

struct Fixture {
    tls: RedisServer,
    acl: RedisServer,
    /// The PEM files.
    dir: std::path::PathBuf,
    tiered_tls: TieredBackend,
    tiered_acl: TieredBackend,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pki = Pki::make();
        let dir = std::env::temp_dir().join(format!("cachette-tls-{}", std::process::id()));
        let tls = RedisServer::start_with(pki.write_to(&dir).server_args(), true);
        let acl = RedisServer::start_with(
            format!("--user default off --user app on >{PASSWORD} ~* &* +@all")
                .split(' ')
                .map(str::to_owned)
                .collect(),
            false,
        );
        let tls_url = format!("rediss://127.0.0.1:{}/", tls.port());
        let acl_url = format!("redis://app:{PASSWORD}@127.0.0.1:{}/", acl.port());
        let tls_backend = |prefix: &str| {
            RedisBackend::builder()
                .url(&tls_url)
                .prefix(prefix)
                .tls_ca_pem(pki.ca.clone())
                .tls_client_cert_pem(pki.client.0.clone(), pki.client.1.clone())
                // Generous: these scenarios count loads, and a timed-out operation under a
                // loaded machine is a (correct) uncached load, not what they are about.
                .op_timeout(Duration::from_secs(2))
                .build()
                .expect("valid")
        };
        let acl_backend = |prefix: &str| {
            RedisBackend::builder()
                .url(&acl_url)
                .prefix(prefix)
                .op_timeout(Duration::from_secs(2))
                .build()
                .expect("valid")
        };
        let tiered = |l2| {
            TieredBackend::builder(l2)
                .heartbeat(Duration::from_millis(200))
                .build()
        };
        let tiered_tls = tiered(tls_backend("tt"));
        let tiered_acl = tiered(acl_backend("ta"));
        let wrong_password = RedisBackend::builder()
            .url(format!(
                "redis://app:{WRONG_PASSWORD}@127.0.0.1:{}/",
                acl.port()
            ))
            .prefix("wrong")
            .op_timeout(Duration::from_millis(200))
            .build()
            .expect("valid: nothing connects yet");
        // The system's roots do not include the test CA.
        let untrusted = RedisBackend::builder()
            .url(&tls_url)
            .prefix("untrusted")
            .op_timeout(Duration::from_millis(200))
            .build()
            .expect("valid: nothing connects yet");
        let shown = format!("{wrong_password:?} {:?}", acl_backend("x"));
        assert!(
            !shown.contains(PASSWORD) && !shown.contains(WRONG_PASSWORD),
            "{shown}"
        );
        configure()
            .redis("redis.tls", tls_backend("t"))
            .tiered("tiered.tls", tiered_tls.clone())
            .tiered("tiered.tls_peer", tiered(tls_backend("tt")))
            .redis("redis.acl", acl_backend("a"))
            .tiered("tiered.acl", tiered_acl.clone())
            .tiered("tiered.acl_peer", tiered(acl_backend("ta")))
            .redis("redis.wrong", wrong_password)
            .redis("redis.untrusted", untrusted)
            .install()
            .expect("configured once");
        Fixture {
            tls,
            acl,
            dir,
            tiered_tls,
            tiered_acl,
        }
    })
}

static LOADS: AtomicUsize = AtomicUsize::new(0);
static SOURCE: AtomicUsize = AtomicUsize::new(1);

macro_rules! sites {
    ($cached:ident, $peer:ident, $backend:literal, $peer_backend:literal) => {
        #[cached(ttl = "60s", key = "item:<id>", backend = $backend)]
        async fn $cached(id: u64) -> Result<(u64, usize), String> {
            LOADS.fetch_add(1, Ordering::SeqCst);
            Ok((id, SOURCE.load(Ordering::SeqCst)))
        }

        #[cached(ttl = "60s", key = "item:<id>", backend = $peer_backend)]
        async fn $peer(id: u64) -> Result<(u64, usize), String> {
            LOADS.fetch_add(1, Ordering::SeqCst);
            Ok((id, SOURCE.load(Ordering::SeqCst)))
        }
    };
}

sites!(over_tls, over_tls_unused_peer, "redis.tls", "redis.tls");
sites!(tiered_tls, tiered_tls_peer, "tiered.tls", "tiered.tls_peer");
sites!(over_acl, over_acl_unused_peer, "redis.acl", "redis.acl");
sites!(tiered_acl, tiered_acl_peer, "tiered.acl", "tiered.acl_peer");

#[invalidates("item:<id>")]
async fn change_item(id: u64) {
    let _ = id;
    SOURCE.fetch_add(1, Ordering::SeqCst);
}

#[cached(ttl = "60s", key = "wrong:<id>", backend = "redis.wrong")]
async fn with_wrong_password(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(ttl = "60s", key = "untrusted:<id>", backend = "redis.untrusted")]
async fn with_untrusted_certificate(id: u64) -> Result<u64, String> {
    Ok(id)
}

/// A value stored through the backend is read back by a second call without a load.
async fn stored_and_read_back<F, Fut>(call: F, name: &str)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, usize), String>>,
{
    let loads = LOADS.load(Ordering::SeqCst);
    let first = call(7).await.expect("ok");
    assert_eq!(call(7).await.expect("ok"), first);
    assert_eq!(
        LOADS.load(Ordering::SeqCst),
        loads + 1,
        "{name}: one load, then a hit"
    );
}

/// Two tiered instances over one server: the second reads the first's fill from L2, and an
/// invalidation reaches the other's L1 over the bus (on the same TLS or ACL connection kind).
async fn bus_between_peers<A, B, FutA, FutB>(mine: A, peer: B, backend: &TieredBackend, name: &str)
where
    A: Fn(u64) -> FutA,
    B: Fn(u64) -> FutB,
    FutA: std::future::Future<Output = Result<(u64, usize), String>>,
    FutB: std::future::Future<Output = Result<(u64, usize), String>>,
{
    let _ = mine(1).await;
    let _ = peer(1).await;
    backend.l1_ready().await;
    let before = mine(9).await.expect("ok");
    assert_eq!(
        peer(9).await.expect("ok"),
        before,
        "{name}: the peer reads L2"
    );
    change_item(9).await;
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        if mine(9).await.expect("ok") != before {
            break;
        }
        assert!(Instant::now() < deadline, "{name}: L1 kept the old value");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_acl_users() {
    let logs = capture_logs();
    let fixture = fixture();
    // The fixture lives in a static, which is never dropped: stop its servers when the test ends.
    let _stop = OnExit(|| {
        for server in [&fixture.tls, &fixture.acl] {
            server.stop();
            let _ = std::fs::remove_dir_all(server.dir());
        }
        let _ = std::fs::remove_dir_all(&fixture.dir);
    });

    stored_and_read_back(over_tls, "redis over TLS with a client certificate").await;
    stored_and_read_back(tiered_tls, "tiered over TLS").await;
    bus_between_peers(tiered_tls, tiered_tls_peer, &fixture.tiered_tls, "TLS bus").await;
    stored_and_read_back(over_acl, "redis as an ACL user").await;
    stored_and_read_back(tiered_acl, "tiered as an ACL user").await;
    bus_between_peers(tiered_acl, tiered_acl_peer, &fixture.tiered_acl, "ACL bus").await;
    let _ = (over_tls_unused_peer, over_acl_unused_peer);

    // Fail-open, each call within the operation timeout and a connection attempt.
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
    // The cause is found by a connection attempt of its own, in a task: wait for its line.
    let causes = [
        "redis rejected the credentials",
        "the TLS handshake with redis failed",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let logs = String::from_utf8_lossy(&logs.lock().expect("lock")).into_owned();
        if causes.iter().all(|cause| logs.contains(cause)) || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lines = |needle: &str| logs.lines().filter(|line| line.contains(needle)).count();
    assert_eq!(
        lines("redis rejected the credentials"),
        1,
        "one line naming a wrong password:\n{logs}"
    );
    assert_eq!(
        lines("the TLS handshake with redis failed"),
        1,
        "one line naming an untrusted certificate:\n{logs}"
    );
    assert!(
        !logs.contains(PASSWORD) && !logs.contains(WRONG_PASSWORD),
        "a password in the logs:\n{logs}"
    );
}
