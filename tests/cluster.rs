//! The redis and tiered backends on a real local Redis Cluster (3 masters + 3 replicas, issue
//! 16): keys over every master, the fence race, a corrupt entry, fail-open, single-flight across
//! processes, the invalidation bus across processes, tags and write-through across processes,
//! and a master killed while 32 tasks call.
//! Every log line of every process is kept, and any `CROSSSLOT` (or a script's cross-slot
//! refusal) fails the test.
//!
//! One cluster for all scenarios (a start costs seconds), which run in turn on one runtime, as
//! a backend's connection lives on the runtime that first used it. `harness = false`: the
//! binary re-executes itself as the worker processes (`CACHETTE_CL_ROLE`); a plain redis-server
//! beside the cluster holds the start lines and the loads counted across processes.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachette::{cache_put, cached, configure, invalidates, RedisBackend, TieredBackend};
use support::log_capture::capture_logs;
use support::redis_cluster::RedisCluster;
use support::redis_server::{self, free_port, RedisServer};
use support::start_line;

const ROLE: &str = "CACHETTE_CL_ROLE";
const SEEDS: &str = "CACHETTE_CL_SEEDS";
const COORDINATION: &str = "CACHETTE_CL_COORDINATION";
const OP_TIMEOUT: Duration = Duration::from_millis(250);
const WORKERS: usize = 3;
/// What the test fails on: a request that spans slots, refused by the cluster (redis-rs's
/// pipeline check, or a script touching a key of another slot).
/// "redis refused" too: the log gate lets the first refusal of a quiet spell through, so any
/// refusal at all shows as at least one such line.
const CROSS_SLOT: [&str; 4] = [
    "CROSSSLOT",
    "crossed slots",
    "do not hash to the same slot",
    "redis refused",
];

fn main() {
    let logs = capture_logs();
    match std::env::var(ROLE).as_deref() {
        Ok(role) => {
            workers::run(role);
            assert_no_cross_slot(logs);
        }
        Err(_) => {
            let started = Instant::now();
            let mut cluster = RedisCluster::start();
            let coordination = RedisServer::start();
            configure_backends(&cluster.seeds());
            let runtime = runtime();
            runtime.block_on(async {
                keys_over_every_slot_and_every_master(&cluster).await;
                a_slow_loader_cannot_store_old_data().await;
                eprintln!("ok: the fence race on the cluster");
                a_corrupt_entry_is_a_miss(&cluster).await;
                a_dead_cluster_fails_open().await;
                publish_and_spublish_cost(&cluster).await;
            });
            processes_on_one_cold_key_load_once(&cluster, &coordination);
            the_bus_reaches_other_processes(&cluster, &coordination, &runtime);
            tags_and_puts_reach_other_processes(&cluster, &coordination, &runtime);
            runtime.block_on(a_killed_master_is_survived(&mut cluster));
            an_overflow_is_purged_on_every_master(&cluster, &coordination);
            assert_no_cross_slot(logs);
            println!("cluster: 10 scenarios passed in {:?}", started.elapsed());
            println!("test result: ok. 10 passed; 0 failed");
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

fn configure_backends(seeds: &[String]) {
    let redis = RedisBackend::builder()
        .cluster(seeds.iter().cloned())
        .prefix("cl")
        .op_timeout(OP_TIMEOUT)
        .build()
        .expect("valid");
    let l2 = RedisBackend::builder()
        .cluster(seeds.iter().cloned())
        .prefix("clt")
        .op_timeout(OP_TIMEOUT)
        .build()
        .expect("valid");
    let tiered = TieredBackend::builder(l2)
        .heartbeat(Duration::from_millis(200))
        .build();
    // Seeds where nothing listens: a cluster that is down.
    let dead = RedisBackend::builder()
        .cluster([
            format!("redis://127.0.0.1:{}/", free_port()),
            format!("redis://127.0.0.1:{}/", free_port()),
        ])
        .prefix("cldead")
        .op_timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(100))
        .build()
        .expect("valid");
    *TIERED.lock().expect("lock") = Some(tiered.clone());
    configure()
        .redis("redis", redis)
        .tiered("tiered", tiered)
        .redis("redis.dead", dead)
        .install()
        .expect("configured once");
}

static TIERED: Mutex<Option<TieredBackend>> = Mutex::new(None);

fn tiered_backend() -> TieredBackend {
    TIERED.lock().expect("lock").clone().expect("configured")
}

// ---- Keys over every slot ----

static SPREAD_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "spread:<id>", backend = "redis")]
async fn spread(id: String) -> Result<String, String> {
    SPREAD_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("value of {id}"))
}

#[cached(ttl = "60s", key = "spread:<id>", backend = "tiered")]
async fn spread_tiered(id: String) -> Result<String, String> {
    SPREAD_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("tiered value of {id}"))
}

#[invalidates("spread:<id>")]
async fn change_spread(id: String) {
    let _ = id;
}

#[invalidates("spread:<id>")]
fn change_spread_blocking(id: String) {
    let _ = id;
}

/// Every store operation (read, claim, fill, invalidation async and blocking, on redis and
/// tiered) over keys that land on every master, long (hashed) keys and odd bytes included.
async fn keys_over_every_slot_and_every_master(cluster: &RedisCluster) {
    let ids: Vec<String> = (0..600)
        .map(|i| match i % 4 {
            0 => format!("{i}"),
            1 => format!("{i} {{braces}} <brackets> %percent"),
            2 => format!("{i}:{}", "long".repeat(80)),
            _ => format!("ünïcode-{i}-\u{1F600}"),
        })
        .collect();
    for id in &ids {
        assert_eq!(
            spread(id.clone()).await.expect("ok"),
            format!("value of {id}")
        );
        assert_eq!(
            spread_tiered(id.clone()).await.expect("ok"),
            format!("tiered value of {id}")
        );
    }
    let loads = SPREAD_LOADS.load(Ordering::SeqCst);
    assert_eq!(loads, 2 * ids.len(), "each key loaded once per backend");
    for id in &ids {
        spread(id.clone()).await.expect("ok");
    }
    assert_eq!(SPREAD_LOADS.load(Ordering::SeqCst), loads, "all hits");
    let mut per_master = Vec::new();
    for port in cluster.master_ports() {
        let mut redis = redis_server::connect_blocking(&format!("redis://127.0.0.1:{port}/"));
        let keys: i64 = redis::cmd("DBSIZE").query(&mut redis).expect("dbsize");
        per_master.push(keys);
    }
    assert!(
        per_master.len() == 3 && per_master.iter().all(|&keys| keys > 100),
        "entries on every master: {per_master:?}"
    );
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            change_spread(id.clone()).await;
        } else {
            let id = id.clone();
            tokio::task::spawn_blocking(move || change_spread_blocking(id))
                .await
                .expect("ran");
        }
    }
    for id in &ids {
        spread(id.clone()).await.expect("ok");
    }
    assert_eq!(
        SPREAD_LOADS.load(Ordering::SeqCst),
        loads + ids.len(),
        "every invalidation reached its master"
    );
    eprintln!("ok: {} keys over the masters {per_master:?}", ids.len());
}

// ---- The fence race ----

fence_race!("redis");

// ---- A corrupt entry ----

static CORRUPT_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "corrupt:<id>", backend = "redis")]
async fn corrupt(id: u64) -> Result<u64, String> {
    CORRUPT_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(id * 10)
}

async fn a_corrupt_entry_is_a_miss(cluster: &RedisCluster) {
    let mut redis = cluster.connection().await;
    for id in 0..20u64 {
        let key = format!("cl:1:{{corrupt:<{id}>}}:v");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(b"CCHT\x02 not an envelope".as_slice())
            .query_async(&mut redis)
            .await
            .expect("plant");
        assert_eq!(corrupt(id).await.expect("ok"), id * 10);
        assert_eq!(corrupt(id).await.expect("ok"), id * 10);
    }
    assert_eq!(
        CORRUPT_LOADS.load(Ordering::SeqCst),
        20,
        "a miss, then refilled"
    );
    eprintln!("ok: corrupt entries are misses");
}

// ---- Fail-open ----

static DEAD_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "dead:<id>", backend = "redis.dead")]
async fn on_a_dead_cluster(id: u64) -> Result<u64, String> {
    DEAD_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(id)
}

async fn a_dead_cluster_fails_open() {
    let mut slowest = Duration::ZERO;
    for id in 0..30u64 {
        let started = Instant::now();
        assert_eq!(on_a_dead_cluster(id).await.expect("served uncached"), id);
        slowest = slowest.max(started.elapsed());
    }
    assert_eq!(DEAD_LOADS.load(Ordering::SeqCst), 30);
    // The connection attempt and one operation, each bounded by 100 ms.
    assert!(
        slowest < Duration::from_millis(600),
        "a call against a dead cluster took {slowest:?}"
    );
    eprintln!("ok: a dead cluster fails open (slowest call {slowest:?})");
    // Invalidations it cannot take are queued, and the background replayer keeps trying them:
    // those tries must not close the breaker (they did: a batch on a cluster was counted a
    // success though every script in it failed), or every call pays a connection attempt again.
    for id in 0..20u64 {
        change_dead(id).await;
    }
    let breaker = || {
        cachette::health()
            .into_iter()
            .find(|backend| backend.name == "redis.dead")
            .and_then(|backend| backend.breaker)
            .expect("a redis backend has a breaker")
    };
    assert_ne!(
        breaker(),
        cachette::BreakerState::Closed,
        "open after the failures"
    );
    // Longer than the probe interval (1 s): the probes come and fail.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(2_500) {
        assert_ne!(
            breaker(),
            cachette::BreakerState::Closed,
            "the breaker of a dead cluster closed after {:?}",
            watched.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("ok: a dead cluster's breaker stays open while its replays fail");
}

#[invalidates("dead:<id>")]
async fn change_dead(id: u64) {
    let _ = id;
}

// ---- PUBLISH vs SPUBLISH ----

/// The cluster-bus messages all nodes sent, of one kind (`publish` or `publishshard`).
fn bus_messages_sent(cluster: &RedisCluster, kind: &str) -> u64 {
    let field = format!("cluster_stats_messages_{kind}_sent:");
    cluster
        .seeds()
        .iter()
        .map(|url| {
            let mut redis = redis_server::connect_blocking(url);
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut redis)
                .expect("cluster info");
            info.lines()
                .find_map(|line| line.strip_prefix(&field))
                .map_or(0, |n| n.trim().parse().expect("a count"))
        })
        .sum()
}

/// What the bus costs per invalidation with classic `PUBLISH` from the script (what the
/// backends do) and with sharded `SPUBLISH` (its channel must then be in the entry's slot), in
/// cluster-bus messages and time; printed for ARCHITECTURE.md. And the fact that decides it
/// for scripts: `SPUBLISH` to a channel outside the script's slot is refused.
async fn publish_and_spublish_cost(cluster: &RedisCluster) {
    const N: u64 = 1_000;
    let mut redis = cluster.connection().await;
    let script = |publish: &str| {
        redis::Script::new(&format!(
            "redis.call('DEL', KEYS[1]); return redis.call('{publish}', ARGV[1], ARGV[2])"
        ))
    };
    let mut results = Vec::new();
    for (publish, kind) in [("PUBLISH", "publish"), ("SPUBLISH", "publishshard")] {
        let script = script(publish);
        let before = bus_messages_sent(cluster, kind);
        let started = Instant::now();
        for i in 0..N {
            let channel = match publish {
                "PUBLISH" => "cost:1:bus".to_owned(),
                _ => format!("cost:1:{{entry:<{i}>}}:bus"),
            };
            let _: i64 = script
                .key(format!("cost:1:{{entry:<{i}>}}:v"))
                .arg(channel)
                .arg("origin key")
                .invoke_async(&mut redis)
                .await
                .expect("the script runs");
        }
        let took = started.elapsed();
        let messages = bus_messages_sent(cluster, kind) - before;
        results.push((publish, messages as f64 / N as f64, took / N as u32));
    }
    let refused: redis::RedisResult<i64> = script("SPUBLISH")
        .key("cost:1:{entry:<1>}:v")
        .arg("cost:1:bus")
        .arg("origin key")
        .invoke_async(&mut redis)
        .await;
    assert!(
        refused.is_err(),
        "SPUBLISH to a channel of another slot ran in a script: {refused:?}"
    );
    for (publish, messages, each) in &results {
        println!(
            "bus cost: {publish} from the script: {messages:.2} cluster-bus messages and \
             {each:?} per invalidation"
        );
    }
    println!(
        "bus cost: SPUBLISH to another slot's channel in a script is refused: {}",
        refused.expect_err("refused")
    );
}

// ---- Single-flight across processes ----

fn spawn_workers(role: &str, cluster: &RedisCluster, coordination: &RedisServer) -> Vec<Child> {
    let exe = std::env::current_exe().expect("own path");
    (0..WORKERS)
        .map(|_| {
            Command::new(&exe)
                .env(ROLE, role)
                .env(SEEDS, cluster.seeds().join(","))
                .env(COORDINATION, coordination.url())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a worker")
        })
        .collect()
}

fn wait_for(workers: Vec<Child>) -> Vec<String> {
    let mut lines = Vec::new();
    for worker in workers {
        let output = worker.wait_with_output().expect("worker exits");
        assert!(
            output.status.success(),
            "a worker failed: {}",
            output.status
        );
        lines.extend(
            String::from_utf8(output.stdout)
                .expect("utf-8")
                .lines()
                .map(str::to_owned),
        );
    }
    lines
}

fn processes_on_one_cold_key_load_once(cluster: &RedisCluster, coordination: &RedisServer) {
    let workers = spawn_workers("stampede", cluster, coordination);
    start_line::release(&coordination.url(), "stampede", WORKERS);
    let lines = wait_for(workers);
    let mut redis = coordination.blocking_connection();
    let loads: i64 = redis::cmd("GET")
        .arg("stampede:loads:1")
        .query(&mut redis)
        .expect("get");
    let values: std::collections::HashSet<&String> = lines
        .iter()
        .filter(|line| line.starts_with("value "))
        .collect();
    assert_eq!(loads, 1, "one load for {WORKERS} processes x 200 tasks");
    assert_eq!(
        values.len(),
        1,
        "every caller got the one value: {values:?}"
    );
    eprintln!("ok: {WORKERS} processes x 200 tasks on one cold key: 1 load");
}

// ---- The bus across processes ----

const BUS_KEYS: u64 = 12;

#[invalidates("bus:<id>")]
async fn change_bus_key(id: u64) {
    let _ = id;
}

fn the_bus_reaches_other_processes(
    cluster: &RedisCluster,
    coordination: &RedisServer,
    runtime: &tokio::runtime::Runtime,
) {
    let workers = spawn_workers("bus", cluster, coordination);
    // Each worker has every key in its L1 (and read it from there), its bus up.
    start_line::release(&coordination.url(), "bus-filled", WORKERS);
    let mut redis = coordination.blocking_connection();
    runtime.block_on(async {
        // The first tiered call starts this process's bus (its invalidations announce either
        // way: the announcement rides on the script).
        for id in 0..BUS_KEYS {
            let _: i64 = redis::cmd("INCR")
                .arg(format!("bus:version:{id}"))
                .query(&mut redis)
                .expect("bump");
            change_bus_key(id).await;
        }
    });
    start_line::release(&coordination.url(), "bus-changed", WORKERS);
    let lines = wait_for(workers);
    let received: Vec<u64> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("received "))
        .map(|n| n.parse().expect("count"))
        .collect();
    assert_eq!(received.len(), WORKERS);
    assert!(
        received.iter().all(|&n| n >= BUS_KEYS),
        "every worker heard every invalidation: {received:?}"
    );
    let _ = tiered_backend();
    eprintln!("ok: the bus reached {WORKERS} processes (messages received {received:?})");
}

// ---- Tags and write-through across processes ----

const TAG_PAGES: u32 = 4;
const TAG_CATEGORIES: u64 = 3;
const TAG_USERS: u64 = 4;
/// The category whose tag the parent invalidates.
const CHANGED: u64 = 1;

#[invalidates(tags("category:<category>"))]
async fn change_category(category: u64) {
    let _ = category;
}

#[cache_put(key = "tag-settings:<user>", ttl = "60s", backend = "tiered")]
async fn put_tag_settings(user: u64, version: i64) -> Result<i64, String> {
    let _ = user;
    Ok(version)
}

/// Workers hold tagged list pages (on tiered, warm in L1, and on redis) and settings in L1;
/// this process invalidates one category's tag and puts new settings. Each tag's generation is
/// a key of its own slot, each entry another: every script keeps to one slot, and the tagged
/// read and the capture, which touch both, may not be one pipeline.
fn tags_and_puts_reach_other_processes(
    cluster: &RedisCluster,
    coordination: &RedisServer,
    runtime: &tokio::runtime::Runtime,
) {
    let workers = spawn_workers("tags", cluster, coordination);
    start_line::release(&coordination.url(), "tags-filled", WORKERS);
    let mut redis = coordination.blocking_connection();
    runtime.block_on(async {
        let _: i64 = redis::cmd("INCR")
            .arg(format!("tags:version:{CHANGED}"))
            .query(&mut redis)
            .expect("bump");
        change_category(CHANGED).await;
        for user in 0..TAG_USERS {
            let version: i64 = redis::cmd("INCR")
                .arg(format!("settings:version:{user}"))
                .query(&mut redis)
                .expect("bump");
            put_tag_settings(user, version).await.expect("put");
        }
    });
    start_line::release(&coordination.url(), "tags-changed", WORKERS);
    let lines = wait_for(workers);
    let reports: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("tags "))
        .collect();
    assert_eq!(reports.len(), WORKERS, "every worker checked: {lines:?}");
    eprintln!(
        "ok: a tag invalidation and {TAG_USERS} puts reached {WORKERS} processes' L1s over the \
         cluster ({})",
        reports
            .iter()
            .map(|line| line.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
}

// ---- A master killed under load ----

static FAILOVER_LOADS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = "60s", key = "failover:<id>", backend = "redis")]
async fn failover_value(id: u64) -> Result<u64, String> {
    FAILOVER_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(id + 1)
}

static PROBE_LOADS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = "60s", key = "probe:<id>", backend = "redis")]
async fn probe(id: u64) -> Result<u64, String> {
    PROBE_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(id)
}

async fn a_killed_master_is_survived(cluster: &mut RedisCluster) {
    const TASKS: usize = 32;
    const KEYS: u64 = 256;
    for id in 0..KEYS {
        failover_value(id).await.expect("ok");
    }
    // A probe key on the master to be killed.
    let probe_id = (0..)
        .find(|&id| {
            cluster.master_port_of(&format!("cl:1:{{probe:<{id}>}}:v"))
                == cluster.master_port_of("cl:1:{failover:<0>}:v")
        })
        .expect("some key on that master");
    let victim = cluster.master_port_of("cl:1:{failover:<0>}:v");
    probe(probe_id).await.expect("ok");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (stop, calls, failed, slowest) = (
                Arc::clone(&stop),
                Arc::clone(&calls),
                Arc::clone(&failed),
                Arc::clone(&slowest),
            );
            tokio::spawn(async move {
                let mut id = task as u64;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    match failover_value(id % KEYS).await {
                        Ok(value) if value == id % KEYS + 1 => {}
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let took = started.elapsed();
                    {
                        let mut worst = slowest.lock().expect("lock");
                        *worst = (*worst).max(took);
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                    id += TASKS as u64;
                    // A service's callers pause between requests; with the breaker open a call
                    // never awaits, and 32 tasks in a tight loop would starve the runtime.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls_before = calls.load(Ordering::SeqCst);
    let tiered = tiered_backend();
    assert!(tiered.l1_active(), "the bus is up before the kill");
    let flushes_before = tiered.l1_flushes();
    let killed_at = Instant::now();
    cluster.node_by_port(victim).kill();
    // Caching resumes once a call of the probe key on the killed master's slots is a hit again
    // (served by the promoted replica) with no load.
    let resumed = loop {
        if killed_at.elapsed() > Duration::from_secs(30) {
            // What the cluster says, and whether a fresh client of the test's own is served:
            // the cluster's failover or cachette's client.
            let mut raw = cluster.any_connection();
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut raw)
                .unwrap_or_else(|error| error.to_string());
            let mut fresh = cluster.connection().await;
            let read: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("GET")
                .arg(format!("cl:1:{{probe:<{probe_id}>}}:v"))
                .query_async(&mut fresh)
                .await;
            panic!(
                "caching did not resume within 30 s of the kill; a fresh client's GET: {:?}; \
                 CLUSTER NODES:\n{nodes}",
                read.map(|value| value.map(|bytes| bytes.len()))
            );
        }
        let before = PROBE_LOADS.load(Ordering::SeqCst);
        probe(probe_id).await.expect("ok");
        if PROBE_LOADS.load(Ordering::SeqCst) == before {
            let new_master = cluster.master_port_of(&format!("cl:1:{{probe:<{probe_id}>}}:v"));
            if new_master != victim {
                break killed_at.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The bus held a connection to the killed master: its loss dropped L1, and the bus
    // resubscribes on the new masters.
    tokio::time::timeout(Duration::from_secs(30), tiered.l1_ready())
        .await
        .expect("the bus came back within 30 s of the kill");
    let bus_back = killed_at.elapsed();
    assert!(
        tiered.l1_flushes() > flushes_before,
        "the loss of a master's subscription dropped L1"
    );
    // Everything else keeps being served from the cache afterwards, too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loads_then = FAILOVER_LOADS.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loads_later = FAILOVER_LOADS.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("a calling task panicked");
    }
    let calls = calls.load(Ordering::SeqCst);
    let failed = failed.load(Ordering::SeqCst);
    let slowest = *slowest.lock().expect("lock");
    println!(
        "failover: master {victim} killed; caching resumed after {resumed:?}, the bus (L1) \
         after {bus_back:?}; {calls} calls ({calls_before} before the kill), {failed} failed, \
         slowest call {slowest:?}"
    );
    assert_eq!(failed, 0, "calls failed during the failover");
    assert!(calls > calls_before, "calls went on");
    assert_eq!(
        loads_later, loads_then,
        "after the failover every key is served from the cache again"
    );
}

// ---- The purge after an overflow, on every master ----

/// Value keys of `prefix` on the master at `port`.
fn values_on(port: u16, prefix: &str) -> usize {
    let mut redis = redis_server::connect_blocking(&format!("redis://127.0.0.1:{port}/"));
    let mut cursor = 0u64;
    let mut count = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:1:*:v"))
            .arg("COUNT")
            .arg(1_000)
            .query(&mut redis)
            .expect("scan");
        count += keys.len();
        if next == 0 {
            return count;
        }
        cursor = next;
    }
}

/// More invalidations than the queue keeps, while every node is frozen: once the cluster
/// answers again the queue is replayed and every entry under the prefix is deleted, on every
/// master (the keys lost from the queue are not known). It was one `SCAN` of one node. A worker
/// process does the invalidations, with the redis backend alone configured, so that this
/// process's other backends (one of them a dead cluster) are not in the way.
fn an_overflow_is_purged_on_every_master(cluster: &RedisCluster, coordination: &RedisServer) {
    let masters = cluster.master_ports();
    for &port in &masters {
        assert!(values_on(port, "cl") > 0, "entries on master {port} before");
    }
    let exe = std::env::current_exe().expect("own path");
    let worker = Command::new(exe)
        .env(ROLE, "overflow")
        .env(SEEDS, cluster.seeds().join(","))
        .env(COORDINATION, coordination.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a worker");
    // The worker is connected; freeze the cluster, let it invalidate, thaw.
    start_line::release(&coordination.url(), "overflow-connected", 1);
    cluster.pause_all();
    let resume = support::redis_server::OnExit(|| cluster.resume_all());
    start_line::release(&coordination.url(), "overflow-frozen", 1);
    start_line::release(&coordination.url(), "overflow-queued", 1);
    drop(resume);
    let thawed = Instant::now();
    let deadline = thawed + Duration::from_secs(30);
    loop {
        let left: Vec<usize> = cluster
            .master_ports()
            .iter()
            .map(|&port| values_on(port, "cl"))
            .collect();
        if left.iter().all(|&n| n == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "entries left on the masters 30 s after the overflow: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let purged_after = thawed.elapsed();
    start_line::release(&coordination.url(), "overflow-done", 1);
    let lines = wait_for(vec![worker]);
    eprintln!(
        "ok: {} against a frozen cluster; every master purged {purged_after:?} after it thawed",
        lines.join(" ")
    );
}

// ---- Logs ----

fn assert_no_cross_slot(logs: &Mutex<Vec<u8>>) {
    let logs = logs.lock().expect("lock");
    let text = String::from_utf8_lossy(&logs);
    for line in text.lines() {
        assert!(
            !CROSS_SLOT.iter().any(|mark| line.contains(mark)),
            "a request spanned slots: {line}"
        );
    }
}

// ---- Worker processes ----

mod workers {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    use cachette::{cached, configure, invalidates, RedisBackend, TieredBackend};
    use tokio::sync::Barrier;

    use super::{
        redis_server, start_line, CHANGED, COORDINATION, OP_TIMEOUT, SEEDS, TAG_CATEGORIES,
        TAG_PAGES, TAG_USERS,
    };

    static COORDINATION_URL: OnceLock<String> = OnceLock::new();

    fn coordination() -> &'static str {
        COORDINATION_URL.get().expect("set")
    }

    #[cached(ttl = "60s", key = "stampede:<id>", backend = "redis")]
    async fn stampede(id: u64) -> Result<String, String> {
        let mut redis = redis_server::connect(coordination()).await;
        let load: i64 = redis::cmd("INCR")
            .arg(format!("stampede:loads:{id}"))
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        Ok(format!(
            "{id} from process {} load {load}",
            std::process::id()
        ))
    }

    static BUS_LOADS: AtomicU64 = AtomicU64::new(0);

    #[cached(ttl = "60s", key = "bus:<id>", backend = "tiered")]
    async fn bus_value(id: u64) -> Result<i64, String> {
        BUS_LOADS.fetch_add(1, Ordering::SeqCst);
        let mut redis = redis_server::connect(coordination()).await;
        let version: Option<i64> = redis::cmd("GET")
            .arg(format!("bus:version:{id}"))
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        Ok(version.unwrap_or(0))
    }

    #[cached(ttl = "60s", key = "overflow:<id>", backend = "redis")]
    async fn overflow_value(id: u64) -> Result<u64, String> {
        Ok(id)
    }

    #[invalidates("overflow:<id>")]
    async fn change_overflow(id: u64) {
        let _ = id;
    }

    async fn run_overflow() {
        overflow_value(0).await.expect("ok");
        start_line::arrive(coordination(), "overflow-connected").await;
        start_line::arrive(coordination(), "overflow-frozen").await;
        let started = Instant::now();
        for id in 0..10_050 {
            change_overflow(id).await;
        }
        println!("10,050 invalidations queued in {:?}", started.elapsed());
        start_line::arrive(coordination(), "overflow-queued").await;
        // The background replayer runs while this process lives.
        start_line::arrive(coordination(), "overflow-done").await;
    }

    pub(super) fn run(role: &str) {
        COORDINATION_URL
            .set(std::env::var(COORDINATION).expect("coordination url"))
            .expect("once");
        let seeds: Vec<String> = std::env::var(SEEDS)
            .expect("seeds")
            .split(',')
            .map(str::to_owned)
            .collect();
        let redis = RedisBackend::builder()
            .cluster(seeds.iter().cloned())
            .prefix("cl")
            .op_timeout(OP_TIMEOUT)
            .build()
            .expect("valid");
        let l2 = RedisBackend::builder()
            .cluster(seeds)
            .prefix("clt")
            .op_timeout(OP_TIMEOUT)
            .build()
            .expect("valid");
        let tiered = TieredBackend::builder(l2)
            .heartbeat(Duration::from_millis(200))
            .build();
        let config = configure().redis("redis", redis);
        // The overflow worker's invalidations reach the one backend whose purge is checked.
        let config = match role {
            "overflow" => config,
            _ => config.tiered("tiered", tiered.clone()),
        };
        config.install().expect("configured once");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            match role {
                "stampede" => run_stampede().await,
                "bus" => run_bus(&tiered).await,
                "overflow" => run_overflow().await,
                "tags" => run_tags(&tiered).await,
                other => panic!("unknown role {other}"),
            }
        });
    }

    async fn run_stampede() {
        const TASKS: usize = 200;
        // Connected and subscribed before the start: the first call starts the wake subscriber.
        let _ = stampede(u64::MAX).await;
        start_line::arrive(coordination(), "stampede").await;
        let barrier = Arc::new(Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    stampede(1).await.expect("ok")
                })
            })
            .collect();
        for task in tasks {
            println!("value {}", task.await.expect("a task panicked"));
        }
    }

    async fn run_bus(tiered: &TieredBackend) {
        let _ = bus_value(u64::MAX).await;
        tiered.l1_ready().await;
        let read_all = || async {
            let mut values = Vec::new();
            for id in 0..super::BUS_KEYS {
                values.push(bus_value(id).await.expect("ok"));
            }
            values
        };
        let before = read_all().await;
        let loads = BUS_LOADS.load(Ordering::SeqCst);
        assert_eq!(read_all().await, before, "the same values");
        assert_eq!(
            BUS_LOADS.load(Ordering::SeqCst),
            loads,
            "read from L1 or L2"
        );
        start_line::arrive(coordination(), "bus-filled").await;
        start_line::arrive(coordination(), "bus-changed").await;
        // The invalidations were acknowledged before the release: within the bus bound, every
        // value read is the new one. Without the bus, L1 would serve the old one for 60 s.
        let deadline = Instant::now() + Duration::from_millis(200);
        for (id, old) in before.iter().enumerate() {
            loop {
                let now = bus_value(id as u64).await.expect("ok");
                if now > *old {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "key {id} still reads {now} after its invalidation"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        println!("received {}", tiered.invalidations_received());
    }

    static TAG_LOADS: AtomicU64 = AtomicU64::new(0);

    /// The coordination server's counter `name`, 0 if unset.
    async fn version(name: String) -> Result<i64, String> {
        TAG_LOADS.fetch_add(1, Ordering::SeqCst);
        let mut redis = redis_server::connect(coordination()).await;
        let version: Option<i64> = redis::cmd("GET")
            .arg(name)
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        Ok(version.unwrap_or(0))
    }

    #[cached(
        ttl = "60s",
        key = "tag-list:<page>:<category>",
        backend = "tiered",
        tags("products", "category:<category>")
    )]
    async fn tag_list(page: u32, category: u64) -> Result<i64, String> {
        let _ = page;
        version(format!("tags:version:{category}")).await
    }

    /// The same pages on redis alone: its hit is the pipelined tagged read.
    #[cached(
        ttl = "60s",
        key = "tag-list:<page>:<category>",
        backend = "redis",
        tags("products", "category:<category>")
    )]
    async fn tag_list_redis(page: u32, category: u64) -> Result<i64, String> {
        let _ = page;
        version(format!("tags:version:{category}")).await
    }

    #[cached(ttl = "60s", key = "tag-settings:<user>", backend = "tiered")]
    async fn tag_settings(user: u64) -> Result<i64, String> {
        version(format!("settings:version:{user}")).await
    }

    fn l1_hits() -> u64 {
        cachette::stats()
            .sites
            .iter()
            .map(|site| site.l1_hits)
            .sum()
    }

    /// Every page of `categories` and every user's settings: (tiered pages, redis pages,
    /// settings).
    async fn read_tagged(categories: &[u64]) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
        let (mut tiered, mut redis, mut settings) = (Vec::new(), Vec::new(), Vec::new());
        for &category in categories {
            for page in 0..TAG_PAGES {
                tiered.push(tag_list(page, category).await.expect("ok"));
                redis.push(tag_list_redis(page, category).await.expect("ok"));
            }
        }
        for user in 0..TAG_USERS {
            settings.push(tag_settings(user).await.expect("ok"));
        }
        (tiered, redis, settings)
    }

    async fn run_tags(tiered: &TieredBackend) {
        let _ = tag_settings(u64::MAX).await;
        tiered.l1_ready().await;
        let all: Vec<u64> = (0..TAG_CATEGORIES).collect();
        let unchanged: Vec<u64> = all.iter().copied().filter(|&c| c != CHANGED).collect();
        // Loaded (or read from L2) into L1, then read from there.
        let before = read_tagged(&all).await;
        let (loads, l1) = (TAG_LOADS.load(Ordering::SeqCst), l1_hits());
        assert_eq!(read_tagged(&all).await, before, "the same values");
        assert_eq!(TAG_LOADS.load(Ordering::SeqCst), loads, "all hits");
        let from_l1 = u64::from(TAG_PAGES) * TAG_CATEGORIES + TAG_USERS;
        assert_eq!(l1_hits() - l1, from_l1, "the tiered reads from L1");
        let received = tiered.invalidations_received();
        start_line::arrive(coordination(), "tags-filled").await;
        start_line::arrive(coordination(), "tags-changed").await;

        // Redis alone holds the generations: the changed category's pages are misses at once.
        let changed = read_tagged(&[CHANGED]).await;
        let pages = TAG_PAGES as usize;
        let first = CHANGED as usize * pages;
        assert!(
            changed
                .1
                .iter()
                .zip(&before.1[first..first + pages])
                .all(|(now, old)| now > old),
            "redis: the tag's pages reloaded: {:?} after {:?}",
            changed.1,
            &before.1[first..first + pages]
        );
        // Tiered: within the bus bound, the tag's pages in L1 are misses, and each user's
        // settings are the put value.
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            let (pages_now, _, settings_now) = read_tagged(&[CHANGED]).await;
            let pages_new = pages_now
                .iter()
                .zip(&before.0[first..first + pages])
                .all(|(now, old)| now > old);
            let settings_new = settings_now
                .iter()
                .zip(&before.2)
                .all(|(now, old)| now > old);
            if pages_new && settings_new {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tiered still reads {pages_now:?} and settings {settings_now:?} after the \
                 invalidation and the puts"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The other categories are still L1 hits, and the puts' values are hits too.
        let (loads, l1) = (TAG_LOADS.load(Ordering::SeqCst), l1_hits());
        let others = read_tagged(&unchanged).await;
        assert_eq!(TAG_LOADS.load(Ordering::SeqCst), loads, "no load");
        assert_eq!(
            l1_hits() - l1,
            u64::from(TAG_PAGES) * unchanged.len() as u64 + TAG_USERS,
            "the other categories and the settings from L1"
        );
        let kept: Vec<i64> = before
            .0
            .iter()
            .enumerate()
            .filter(|(i, _)| *i / pages != CHANGED as usize)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(others.0, kept, "the other categories kept their values");
        println!(
            "tags received {} messages, {} loads",
            tiered.invalidations_received() - received,
            TAG_LOADS.load(Ordering::SeqCst)
        );
    }
}
