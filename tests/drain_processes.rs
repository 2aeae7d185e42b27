//! A shutdown's drain across real OS processes: process A invalidates while the cache's
//! redis-server is frozen (SIGSTOP), Redis thaws, A calls `drain_invalidations` and exits at
//! once; process B, which held the old value warm in its L1 throughout, must serve the new one.
//!
//! Without the drain, A exits with the invalidation still queued (its breaker, opened by the
//! outage, lets the replayer's first probe through only 1 s later), Redis still holds the old
//! value and B's L1 keeps serving it until its ttl: `CACHETTE_DP_SKIP_DRAIN=1` runs A so, and
//! the test fails.
//!
//! The processes meet on a second redis-server that is never frozen (start lines, and the
//! "database" the loaders read). B's bus heartbeat is long, so that its bus does not notice the
//! short freeze and its L1 stays in use: the case where a lost invalidation costs the most.
//! The binary is its own worker (`harness = false`): `CACHETTE_DP_ROLE` is `reader` or
//! `writer`.

mod support;

use std::process::{Child, Command, Stdio};

use support::redis_server::{self, RedisServer};
use support::start_line;

const ROLE: &str = "CACHETTE_DP_ROLE";
const CACHE_URL: &str = "CACHETTE_DP_CACHE";
const CONTROL_URL: &str = "CACHETTE_DP_CONTROL";
const SKIP_DRAIN: &str = "CACHETTE_DP_SKIP_DRAIN";
const OLD: &str = "price-100";
const NEW: &str = "price-120";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok(role) => worker::run(
            role,
            &std::env::var(CACHE_URL).expect("the parent passes the cache's url"),
            &std::env::var(CONTROL_URL).expect("the parent passes the control url"),
        ),
        _ => a_drained_invalidation_reaches_a_peers_warm_l1(),
    }
}

fn a_drained_invalidation_reaches_a_peers_warm_l1() {
    let cache = RedisServer::start();
    let control = RedisServer::start();
    let mut control_redis = control.blocking_connection();
    let () = redis::cmd("SET")
        .arg("db:price:1")
        .arg(OLD)
        .query(&mut control_redis)
        .expect("the database's old value");
    let skip = std::env::var(SKIP_DRAIN).unwrap_or_default();
    let exe = std::env::current_exe().expect("own path");
    let spawn = |role: &str| -> Child {
        Command::new(&exe)
            .env(ROLE, role)
            .env(CACHE_URL, cache.url())
            .env(CONTROL_URL, control.url())
            .env(SKIP_DRAIN, &skip)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker process")
    };
    let reader = spawn("reader");
    let writer = spawn("writer");

    // B has the old value in its L1, A its connection up; then the outage.
    start_line::release(&control.url(), "dp-warm", 2);
    cache.pause();
    start_line::release(&control.url(), "dp-frozen", 1);
    // A queues its invalidation; Redis thaws; A drains (or not) and exits.
    let ready: Option<(String, String)> = redis::cmd("BLPOP")
        .arg("dp-queued:ready")
        .arg(30)
        .query(&mut control_redis)
        .expect("blpop");
    assert!(ready.is_some(), "A never queued its invalidation");
    cache.resume();
    let _: i64 = redis::cmd("RPUSH")
        .arg("dp-queued:go")
        .arg("go")
        .query(&mut control_redis)
        .expect("let A go");
    let writer = writer.wait_with_output().expect("A exits");
    print!("{}", String::from_utf8_lossy(&writer.stdout));
    assert!(writer.status.success(), "A failed: {}", writer.status);

    // A is gone: whatever it did not deliver is lost. B reads.
    start_line::release(&control.url(), "dp-check", 1);
    let reader = reader.wait_with_output().expect("B exits");
    print!("{}", String::from_utf8_lossy(&reader.stdout));
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg("dp:1:{price:<1>}:v")
        .query(&mut cache.blocking_connection())
        .expect("raw get");
    let stale_in_redis = raw.is_some_and(|bytes| String::from_utf8_lossy(&bytes).contains(OLD));
    println!("drain_processes: redis holds the old value after B's reads: {stale_in_redis}");
    assert!(reader.status.success(), "B failed: {}", reader.status);
    assert!(!stale_in_redis, "redis still holds the old value");
    println!("drain_processes: B served {NEW:?} after A drained and exited: ok");
    println!("test result: ok. 1 passed; 0 failed");
}

mod worker {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use cachette::{
        cached, configure, drain_invalidations, health, invalidates, BreakerState, RedisBackend,
        TieredBackend,
    };

    use super::{redis_server, start_line, NEW, OLD, SKIP_DRAIN};

    static CONTROL: OnceLock<String> = OnceLock::new();
    static LOADS: AtomicU64 = AtomicU64::new(0);
    /// The bus bound: a read this long after an acknowledged invalidation is fresh.
    const BUS_BOUND: Duration = Duration::from_millis(200);

    async fn database() -> redis::aio::MultiplexedConnection {
        redis_server::connect(CONTROL.get().expect("set")).await
    }

    #[cached(ttl = "60s", key = "price:<id>", backend = "tiered")]
    async fn price(id: u64) -> Result<String, String> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("db:price:{id}"))
            .query_async(&mut database().await)
            .await
            .map_err(|e| e.to_string())?;
        Ok(value.unwrap_or_default())
    }

    #[invalidates("price:<id>")]
    async fn change_price(id: u64, value: &str) -> Result<(), String> {
        redis::cmd("SET")
            .arg(format!("db:price:{id}"))
            .arg(value)
            .query_async::<()>(&mut database().await)
            .await
            .map_err(|e| e.to_string())
    }

    fn l1_hits() -> u64 {
        cachette::stats()
            .site("worker::price")
            .map_or(0, |site| site.l1_hits)
    }

    async fn reader(control: &str, tiered: &TieredBackend) {
        assert_eq!(price(1).await.unwrap(), OLD);
        // Loaded while the bus was starting, so into L2 only; then into L1; then an L1 hit.
        tiered.l1_ready().await;
        assert_eq!(price(1).await.unwrap(), OLD);
        assert_eq!(price(1).await.unwrap(), OLD);
        assert!(l1_hits() >= 1, "B's L1 holds the old value");
        start_line::arrive(control, "dp-warm").await;
        start_line::arrive(control, "dp-check").await;
        // A drained and exited: its invalidation was announced before it did.
        let (released, mut stale) = (Instant::now(), 0);
        let value = loop {
            let value = price(1).await.unwrap();
            if value != OLD || released.elapsed() > BUS_BOUND {
                break value;
            }
            stale += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        println!(
            "drain_processes: B: read {value:?} {:?} after A exited ({stale} stale reads before; \
             L1 in use throughout: {}, {} messages heard, {} loads)",
            released.elapsed(),
            tiered.l1_flushes() == 0,
            tiered.invalidations_received(),
            LOADS.load(Ordering::SeqCst),
        );
        assert_eq!(
            value, NEW,
            "B served the value A's invalidation replaced, {BUS_BOUND:?} after A exited"
        );
    }

    fn tiered_health() -> cachette::BackendHealth {
        health()
            .into_iter()
            .find(|backend| backend.name == "tiered")
            .expect("configured")
    }

    async fn writer(control: &str) {
        // The connection up, through an invalidation Redis confirms.
        change_price(0, "unused").await.unwrap();
        assert_eq!(tiered_health().pending_invalidations, 0);
        start_line::arrive(control, "dp-warm").await;
        start_line::arrive(control, "dp-frozen").await;
        // Redis is frozen. Three reads of cold keys time out and open the breaker, so that the
        // invalidation below is refused, never sent: a sent one would wait in the socket and
        // run when Redis thaws, delivered without any replay.
        for id in 1_000..1_003 {
            price(id).await.unwrap();
        }
        assert_eq!(tiered_health().breaker, Some(BreakerState::Open));
        change_price(1, NEW).await.unwrap();
        assert_eq!(tiered_health().pending_invalidations, 1, "queued");
        // The parent thaws Redis, then lets A go.
        start_line::arrive(control, "dp-queued").await;
        if std::env::var(SKIP_DRAIN).is_ok_and(|skip| !skip.is_empty()) {
            println!("drain_processes: A: exits without draining");
            return;
        }
        let started = Instant::now();
        drain_invalidations(Duration::from_secs(10))
            .await
            .expect("delivered once redis is back");
        println!(
            "drain_processes: A: drained in {:?} after the thaw, exits",
            started.elapsed()
        );
    }

    pub(super) fn run(role: &str, cache: &str, control: &str) {
        CONTROL.set(control.to_owned()).expect("once");
        let l2 = RedisBackend::builder()
            .url(cache)
            .prefix("dp")
            .op_timeout(Duration::from_millis(200))
            .build()
            .expect("valid configuration");
        let mut tiered = TieredBackend::builder(l2);
        if role == "reader" {
            // Longer than the freeze: B's bus does not notice it, and its L1 stays in use.
            tiered = tiered.heartbeat(Duration::from_secs(30));
        }
        let tiered = tiered.build();
        configure()
            .tiered("tiered", tiered.clone())
            .install()
            .expect("configured once");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            match role {
                "reader" => reader(control, &tiered).await,
                "writer" => writer(control).await,
                other => panic!("unknown role {other}"),
            }
        });
    }
}
