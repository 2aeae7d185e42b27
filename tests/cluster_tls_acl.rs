//! The redis and tiered backends on a Redis Cluster that speaks only TLS and knows one ACL user
//! (issue 16): a real local cluster of 3 masters and 3 replicas with `--port 0`, TLS between
//! the nodes and to the replicas too, client certificates required (a CA and certificates made
//! with rcgen), the default user off and replicas authenticating as the user. `redis` and
//! `tiered` come from `Config::from_env` (the seeds, the CA and the client certificate as
//! files), a second tiered backend from code. Hits on every master, the invalidation bus on
//! every master's subscription, fail-open while the cluster is frozen and caching resumed once
//! it thaws, and no password in `Debug`, a log line or `health()`. A wrong password and an
//! untrusted certificate: `cluster_tls_acl_refused.rs`.
//!
//! The scenarios run in turn in one test on one runtime, as a backend's connection lives on the
//! runtime that first used it.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cache_put, cached, configure, invalidates, RedisBackend, TieredBackend};
use support::log_capture::{capture_logs, captured};
use support::redis_cluster::{RedisCluster, TlsAclCluster};

const USER: &str = "cacheapp";
const PASSWORD: &str = "cl-s3cret-pa55";
/// Longer than the 250 ms default: a fresh cluster connection's first operation connects to
/// every node, and in a debug build a TLS handshake with a client certificate costs 30-50 ms of
/// CPU on this 2-core machine (a whole fresh connection measured 165-600 ms), so at 250 ms it
/// timed out, the store renewed the connection, and caching came and went.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// What the application's user may do: exactly what README.md lists (its keys and channels
/// under the prefix, and the commands cachette and its scripts send), so that a command missing
/// from the list fails this test.
fn app_rules() -> String {
    format!(
        "~{PREFIX}:* &{PREFIX}:* +get +set +del +exists +incr +pexpire +pttl +type +eval +evalsha \
         +script +publish +subscribe +ping +scan +cluster|slots"
    )
}

/// The prefix of `redis`, `tiered` (which share their L2 store, as `from_env` configures them)
/// and `tiered.peer`.
const PREFIX: &str = "ct";

static LOADS: AtomicUsize = AtomicUsize::new(0);
static SOURCE: AtomicUsize = AtomicUsize::new(1);

#[cached(ttl = "60s", key = "item:<id>", backend = "redis")]
async fn over_redis(id: u64) -> Result<(u64, usize), String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    Ok((id, SOURCE.load(Ordering::SeqCst)))
}

#[cached(ttl = "60s", key = "item:<id>", backend = "tiered")]
async fn over_tiered(id: u64) -> Result<(u64, usize), String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    Ok((id, SOURCE.load(Ordering::SeqCst)))
}

/// The same entries through a second tiered backend: another process's view.
#[cached(ttl = "60s", key = "item:<id>", backend = "tiered.peer")]
async fn over_tiered_peer(id: u64) -> Result<(u64, usize), String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    Ok((id, SOURCE.load(Ordering::SeqCst)))
}

#[invalidates("item:<id>")]
async fn change_item(id: u64) {
    let _ = id;
    SOURCE.fetch_add(1, Ordering::SeqCst);
}

#[cached(ttl = "60s", key = "tagged:<id>", backend = "redis", tags("family"))]
async fn tagged(id: u64) -> Result<(u64, usize), String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    Ok((id, SOURCE.load(Ordering::SeqCst)))
}

#[invalidates(tags("family"))]
async fn change_family() {
    SOURCE.fetch_add(1, Ordering::SeqCst);
}

/// Write-through: the value stored is the put's, with no load.
#[cache_put(key = "item:<id>", ttl = "60s", backend = "tiered")]
async fn put_item(id: u64) -> Result<(u64, usize), String> {
    Ok((id, 1_000 + SOURCE.fetch_add(1, Ordering::SeqCst)))
}

/// `redis` and `tiered` from the environment, as a deployment gives them; `tiered.peer` built
/// in code (returned, for its bus counters).
fn configure_backends(secured: &TlsAclCluster) -> TieredBackend {
    let seeds = secured.app_seeds();
    assert!(
        seeds
            .iter()
            .all(|seed| seed.starts_with(&format!("rediss://{USER}:{PASSWORD}@"))),
        "{seeds:?}"
    );
    let path = |path: &std::path::Path| path.to_string_lossy().into_owned();
    for (variable, value) in [
        ("CACHETTE_REDIS_CLUSTER_NODES", seeds.join(",")),
        ("CACHETTE_REDIS_CA_FILE", path(&secured.files.ca)),
        (
            "CACHETTE_REDIS_CLIENT_CERT_FILE",
            path(&secured.files.client_cert),
        ),
        (
            "CACHETTE_REDIS_CLIENT_KEY_FILE",
            path(&secured.files.client_key),
        ),
        ("CACHETTE_KEY_PREFIX", PREFIX.to_owned()),
        (
            "CACHETTE_OP_TIMEOUT",
            format!("{}ms", OP_TIMEOUT.as_millis()),
        ),
    ] {
        // The test is this binary's only thread that touches the environment.
        std::env::set_var(variable, value);
    }
    let builder = RedisBackend::builder()
        .cluster(seeds)
        .prefix(PREFIX)
        .op_timeout(OP_TIMEOUT)
        .tls_ca_pem(secured.pki.ca.clone())
        .tls_client_cert_pem(secured.pki.client.0.clone(), secured.pki.client.1.clone());
    let shown = format!("{builder:?}");
    let l2 = builder.build().expect("valid: nothing connects yet");
    let shown = format!("{shown} {l2:?}");
    assert!(!shown.contains(PASSWORD), "a password in Debug: {shown}");
    assert!(shown.contains(&format!("{USER}:***@")), "{shown}");
    let peer = TieredBackend::builder(l2)
        .heartbeat(Duration::from_millis(200))
        .build();
    configure()
        .from_env()
        .expect("the variables are valid")
        .tiered("tiered.peer", peer.clone())
        .install()
        .expect("configured once");
    peer
}

/// Calls `call` on fresh ids of each master until a second call is a hit: a backend's first
/// calls open its connections (TLS handshakes with every node, and the bus's), which may run
/// past the operation timeout and open the breaker. Returns how long that took. The bound is
/// loose: with other builds on the 2 cores (load average 14), a fresh connection's handshakes
/// outlasted the timeout again and again, and one backend took 19 s to cache.
async fn until_caching<F, Fut>(call: F, name: &str, ids_by_master: &[Vec<u64>]) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, usize), String>>,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    for ids in ids_by_master {
        let mut ids = ids.iter();
        loop {
            let id = *ids
                .next()
                .unwrap_or_else(|| panic!("{name}: out of fresh ids, caching did not start"));
            let loads = LOADS.load(Ordering::SeqCst);
            call(id).await.expect("ok");
            call(id).await.expect("ok");
            if LOADS.load(Ordering::SeqCst) == loads + 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: caching did not start in 60 s: {:?}",
                cachette::health()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    started.elapsed()
}

/// The ids of `ids`, grouped by the master their entry lives on.
fn ids_by_master(cluster: &RedisCluster, ids: std::ops::Range<u64>) -> Vec<Vec<u64>> {
    let ids: Vec<u64> = ids.collect();
    let tags: Vec<String> = ids.iter().map(|id| format!("{{item:<{id}>}}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let mut by_master: Vec<(u16, Vec<u64>)> = Vec::new();
    for (id, master) in ids.into_iter().zip(cluster.master_ports_of(&tags)) {
        match by_master.iter_mut().find(|(port, _)| *port == master) {
            Some((_, ids)) => ids.push(id),
            None => by_master.push((master, vec![id])),
        }
    }
    assert_eq!(by_master.len(), 3, "ids on every master");
    by_master.into_iter().map(|(_, ids)| ids).collect()
}

/// Each id is loaded once, then read back from the cluster; and the entries are there, on the
/// master that serves them.
async fn hits_on_every_master(cluster: &RedisCluster, ids: &[u64]) {
    let loads = LOADS.load(Ordering::SeqCst);
    for &id in ids {
        let first = over_redis(id).await.expect("ok");
        assert_eq!(over_redis(id).await.expect("ok"), first, "id {id}");
    }
    assert_eq!(
        LOADS.load(Ordering::SeqCst),
        loads + ids.len(),
        "one load per id, then hits: {:?}",
        cachette::health()
    );
    for &id in ids {
        let key = format!("{PREFIX}:1:{{item:<{id}>}}:v");
        let port = cluster.master_port_of(&key);
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query(&mut cluster.node_connection(port))
            .expect("exists");
        assert!(exists, "{key} is not on its master {port}");
    }
}

/// Two tiered backends over the cluster: the peer reads the first's fill from L2, and each
/// invalidation, published by the master that runs it, reaches the other backend over its
/// subscription on every master (a message arrives once per master). In one process an
/// `#[invalidates]` call also drops the peer's own L1, so the bus is seen in what the peer
/// receives: messages of another origin (its own are ignored).
async fn the_bus_between_two_tiered_backends(peer: &TieredBackend, ids: &[u64]) {
    peer.l1_ready().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cachette::health()
        .iter()
        .any(|backend| backend.name == "tiered" && backend.l1_in_use == Some(true))
    {
        assert!(Instant::now() < deadline, "the bus of `tiered` is not up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for &id in ids {
        let loads = LOADS.load(Ordering::SeqCst);
        let before = over_tiered(id).await.expect("ok");
        assert_eq!(
            over_tiered_peer(id).await.expect("ok"),
            before,
            "id {id}: the peer reads L2"
        );
        assert_eq!(
            over_tiered(id).await.expect("ok"),
            before,
            "id {id}: L1 hit"
        );
        assert_eq!(
            LOADS.load(Ordering::SeqCst),
            loads + 1,
            "id {id}: one load: {:?}",
            cachette::health()
        );
        let received = peer.invalidations_received();
        change_item(id).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while peer.invalidations_received() < received + 3 {
            assert!(
                Instant::now() < deadline,
                "id {id}: {} of the 3 masters' messages reached the peer",
                peer.invalidations_received() - received
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let after = over_tiered_peer(id).await.expect("ok");
        assert_ne!(after, before, "id {id}: the peer kept the old value");
        assert_eq!(over_tiered(id).await.expect("ok"), after, "id {id}");
    }
}

/// A tag's invalidation and a write-through, with their own scripts and keys (a tag's
/// generation key): the ACL user's command list covers them too. Tagged entries of 30 ids
/// (over every master); a put for an id on each master.
async fn tags_and_write_through(put_ids: &[u64]) {
    let ids: Vec<u64> = (0..30).collect();
    let loads = LOADS.load(Ordering::SeqCst);
    let mut before = Vec::new();
    for &id in &ids {
        before.push(tagged(id).await.expect("ok"));
        assert_eq!(
            tagged(id).await.expect("ok"),
            before[before.len() - 1],
            "id {id}: a hit"
        );
    }
    assert_eq!(
        LOADS.load(Ordering::SeqCst),
        loads + ids.len(),
        "one load per id"
    );
    change_family().await;
    for (&id, value) in ids.iter().zip(&before) {
        assert_ne!(
            &tagged(id).await.expect("ok"),
            value,
            "id {id}: the tag's invalidation missed it"
        );
    }
    assert_eq!(LOADS.load(Ordering::SeqCst), loads + 2 * ids.len());
    for &id in put_ids {
        let put = put_item(id).await.expect("ok");
        let loads = LOADS.load(Ordering::SeqCst);
        assert_eq!(
            over_tiered_peer(id).await.expect("ok"),
            put,
            "id {id}: the put's value"
        );
        assert_eq!(
            LOADS.load(Ordering::SeqCst),
            loads,
            "id {id}: read from L2, no load"
        );
    }
}

/// The whole cluster frozen: a call answers (uncached) within the operation timeout; thawed,
/// caching through the TLS connections resumes on every master.
async fn a_frozen_cluster_fails_open(cluster: &RedisCluster) {
    // One call, so that the freeze stays under the node timeout and no node marks another
    // failed once thawed.
    cluster.pause_all();
    let started = Instant::now();
    let answered = over_redis(1_000_000).await;
    let took = started.elapsed();
    cluster.resume_all();
    assert_eq!(answered, Ok((1_000_000, SOURCE.load(Ordering::SeqCst))));
    assert!(
        took < 2 * OP_TIMEOUT + Duration::from_millis(500),
        "a call on a frozen cluster took {took:?}"
    );
    let thawed = Instant::now();
    cluster.wait_until_ok(Duration::from_secs(30));
    until_caching(
        over_redis,
        "redis after the freeze",
        &ids_by_master(cluster, 3_000..3_600),
    )
    .await;
    eprintln!(
        "a call on the frozen cluster answered in {took:?}; caching resumed on every master {:?} \
         after the thaw",
        thawed.elapsed()
    );
}

/// No password in any log line or in `health()`, and no request refused by the cluster (a
/// cross-slot pipeline or script, a command the ACL user may not send).
fn logs_are_clean(logs: &std::sync::Mutex<Vec<u8>>) {
    let text = captured(logs);
    assert!(!text.contains(PASSWORD), "a password in the logs:\n{text}");
    for refusal in [
        "redis refused",
        "CROSSSLOT",
        "CrossSlot",
        "crossed slots",
        "NOPERM",
    ] {
        assert!(!text.contains(refusal), "`{refusal}` in the logs:\n{text}");
    }
    let health = format!("{:?}", cachette::health());
    assert!(health.contains("tiered.peer"), "{health}");
    assert!(
        !health.contains(PASSWORD),
        "a password in health(): {health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_acl_over_a_cluster() {
    let logs = capture_logs();
    let secured = RedisCluster::start_tls_acl(USER, PASSWORD, &app_rules());
    let cluster = &secured.cluster;
    let peer = configure_backends(&secured);
    // `redis` and `tiered` share their entries: each scenario has ids of its own, one whose
    // entry lives on each master, so that every master's TLS connection (redirections carry
    // the certificates and the user) and bus subscription are used.
    let first_of_each = |ids: Vec<Vec<u64>>| ids.iter().map(|ids| ids[0]).collect::<Vec<u64>>();
    let redis_ids = first_of_each(ids_by_master(cluster, 0..30));
    let bus_ids = first_of_each(ids_by_master(cluster, 30..60));
    let connected = [
        until_caching(over_redis, "redis", &ids_by_master(cluster, 100..700)).await,
        until_caching(over_tiered, "tiered", &ids_by_master(cluster, 1_000..1_600)).await,
        until_caching(
            over_tiered_peer,
            "tiered.peer",
            &ids_by_master(cluster, 2_000..2_600),
        )
        .await,
    ];
    eprintln!("caching on every master through fresh cluster connections after {connected:?}");

    hits_on_every_master(cluster, &redis_ids).await;
    eprintln!("ok: redis hits on every master over TLS as an ACL user");
    the_bus_between_two_tiered_backends(&peer, &bus_ids).await;
    eprintln!("ok: the bus between two tiered backends on every master");
    tags_and_write_through(&first_of_each(ids_by_master(cluster, 60..90))).await;
    eprintln!("ok: a tag's invalidation and a write-through on every master");
    a_frozen_cluster_fails_open(cluster).await;
    eprintln!("ok: a frozen cluster fails open, and caching resumes");
    logs_are_clean(logs);
}
