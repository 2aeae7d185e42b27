//! cachette next to its floor (the store or client it is built on, used by hand) and its peer (the
//! `cached` crate), in one run, so that ratios compare like with like on the same machine.
//!
//! Run through `scripts/bench`, which starts a redis-server, runs this with short criterion
//! settings and prints one table of medians and ratios. Without `CACHETTE_BENCH_REDIS_URL` the
//! Redis groups are skipped.
//!
//! With the `cluster` feature and `CACHETTE_BENCH_CLUSTER=1` (scripts/bench sets both), the
//! `cluster_hit` group starts a local Redis Cluster of its own (the tests' helper) and compares a
//! cluster hit with redis-rs's cluster client used by hand.
//!
//! Every case returns the same ~200-byte value ([`Profile`]) built the same way, and every
//! cache-aside floor builds the same key text with the same [`KeyBuilder`] the expansion uses.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use cached::macros::cached as peer_cached;
use cachette::{cached, configure, KeyBuilder, MemoryBackend, RedisBackend, TieredBackend};
use criterion::{criterion_group, BenchmarkId, Criterion};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

#[cfg(feature = "cluster")]
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "hit_path/observe.rs"]
mod observe;

#[path = "hit_path/arc_hit.rs"]
mod arc_hit;

/// The cached value: about 200 bytes, two of them on the heap, as a typical row would be.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    bio: String,
}

fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: format!("user number {id:>12}"),
        bio: "x".repeat(160),
    }
}

/// Ids the single-task hit benches cycle through, all warm: one hot key would sit in L1 and
/// flatter every store alike.
const WARM: u64 = 1_024;
/// The hot set of the contention bench.
const HOT: u64 = 10_000;
/// Tasks in the contention and Redis throughput benches.
const TASKS: u64 = 64;

// ---------------------------------------------------------------------------------------------
// The functions under test.

#[cached(ttl = "600s", key = "user:<id>")]
async fn cachette_user(id: u64) -> Profile {
    profile(id)
}

#[cached(ttl = "600s", key = "suser:<id>")]
fn cachette_user_sync(id: u64) -> Profile {
    profile(id)
}

#[peer_cached]
async fn peer_default(id: u64) -> Profile {
    profile(id)
}

#[peer_cached(ttl_secs = 600)]
async fn peer_ttl(id: u64) -> Profile {
    profile(id)
}

#[peer_cached]
fn peer_default_sync(id: u64) -> Profile {
    profile(id)
}

#[peer_cached(ttl_secs = 600)]
fn peer_ttl_sync(id: u64) -> Profile {
    profile(id)
}

fn user_key(id: u64) -> cachette::CacheKey {
    KeyBuilder::new().lit("user:").arg(&id).finish()
}

static MOKA_FUTURE: LazyLock<moka::future::Cache<cachette::CacheKey, Profile>> =
    LazyLock::new(|| {
        moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(600))
            .build()
    });

/// Hand-written cache-aside over moka's `future::Cache`: the floor the issue names.
async fn moka_future_user(id: u64) -> Profile {
    let key = user_key(id);
    if let Some(value) = MOKA_FUTURE.get(key.as_str()).await {
        return value;
    }
    let value = profile(id);
    MOKA_FUTURE.insert(key, value.clone()).await;
    value
}

static MOKA_SYNC: LazyLock<moka::sync::Cache<cachette::CacheKey, Profile>> = LazyLock::new(|| {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(Duration::from_secs(600))
        .build()
});

/// The same over moka's `sync::Cache`, which cachette's memory backend used before its own read
/// path (see ARCHITECTURE.md, "Hit path performance").
fn moka_sync_user(id: u64) -> Profile {
    let key = user_key(id);
    if let Some(value) = MOKA_SYNC.get(key.as_str()) {
        return value;
    }
    let value = profile(id);
    MOKA_SYNC.insert(key, value.clone());
    value
}

/// The lowest a shared map can go: one `RwLock<HashMap>` read and a clone, no expiry, no bound.
static LOCKED_MAP: LazyLock<
    std::sync::RwLock<std::collections::HashMap<cachette::CacheKey, Profile>>,
> = LazyLock::new(Default::default);

fn locked_map_user(id: u64) -> Profile {
    let key = user_key(id);
    if let Some(value) = LOCKED_MAP.read().expect("unpoisoned").get(key.as_str()) {
        return value.clone();
    }
    let value = profile(id);
    LOCKED_MAP
        .write()
        .expect("unpoisoned")
        .insert(key, value.clone());
    value
}

// Redis.

#[cached(ttl = "600s", key = "ruser:<id>", backend = "redis")]
async fn cachette_redis_user(id: u64) -> Profile {
    profile(id)
}

#[cached(ttl = "600s", key = "tuser:<id>", backend = "tiered")]
async fn cachette_tiered_user(id: u64) -> Profile {
    profile(id)
}

/// The tiered backend, when a Redis server was given.
static TIERED: OnceLock<TieredBackend> = OnceLock::new();

fn raw_redis_key(id: u64) -> String {
    format!("raw:user:{id}")
}

/// Raw redis-rs: `GET` and a bincode decode, the least a Redis-backed hit can do.
async fn raw_redis_user(connection: &mut redis::aio::MultiplexedConnection, id: u64) -> Profile {
    let bytes: Vec<u8> = connection.get(raw_redis_key(id)).await.expect("GET");
    bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
        .expect("decodes")
        .0
}

#[cfg(feature = "cluster")]
#[cached(ttl = "600s", key = "cuser:<id>", backend = "redis.cluster")]
async fn cachette_cluster_user(id: u64) -> Profile {
    profile(id)
}

/// The bench's own cluster, when `CACHETTE_BENCH_CLUSTER` asks for one: leaked for the run
/// (the registry holds it for every group), its nodes killed by [`stop_cluster`] at the end.
#[cfg(feature = "cluster")]
static CLUSTER: OnceLock<Option<&'static std::sync::Mutex<support::redis_cluster::RedisCluster>>> =
    OnceLock::new();

#[cfg(feature = "cluster")]
fn cluster() -> Option<Vec<String>> {
    CLUSTER
        .get_or_init(|| {
            // Not in an `observe` child: it measures one row and exits without stopping it.
            let wanted = std::env::var("CACHETTE_BENCH_CLUSTER").is_ok()
                && std::env::var("CACHETTE_BENCH_OBSERVE").is_err();
            wanted.then(|| {
                &*Box::leak(Box::new(std::sync::Mutex::new(
                    support::redis_cluster::RedisCluster::start(),
                )))
            })
        })
        .map(|cluster| cluster.lock().expect("lock").seeds())
}

/// Kills the cluster's nodes: statics are never dropped, and the nodes would outlive the run.
fn stop_cluster() {
    #[cfg(feature = "cluster")]
    if let Some(Some(cluster)) = CLUSTER.get() {
        cluster.lock().expect("lock").stop();
    }
}

/// Raw redis-rs on a cluster: `GET` through the cluster client and a bincode decode.
#[cfg(feature = "cluster")]
async fn raw_cluster_user(
    connection: &mut redis::cluster_async::ClusterConnection,
    id: u64,
) -> Profile {
    let bytes: Vec<u8> = connection.get(raw_redis_key(id)).await.expect("GET");
    bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
        .expect("decodes")
        .0
}

// Miss path: every call a new key, a trivial loader.

#[cached(ttl = "600s", key = "miss:<id>")]
async fn cachette_miss(id: u64) -> Profile {
    profile(id)
}

#[cached(ttl = "600s", key = "rmiss:<id>", backend = "redis")]
async fn cachette_redis_miss(id: u64) -> Profile {
    profile(id)
}

async fn raw_redis_miss(connection: &mut redis::aio::MultiplexedConnection, id: u64) -> Profile {
    let key = format!("raw:miss:{id}");
    let cached: Option<Vec<u8>> = connection.get(&key).await.expect("GET");
    if let Some(bytes) = cached {
        return bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
            .expect("decodes")
            .0;
    }
    let value = profile(id);
    let bytes =
        bincode::serde::encode_to_vec(&value, bincode::config::standard()).expect("encodes");
    let () = connection.set_ex(&key, bytes, 600).await.expect("SET");
    value
}

// Stampede: 1,000 callers of one cold key, a 10 ms loader.

const LOADER: Duration = Duration::from_millis(10);
const CALLERS: usize = 1_000;

static CACHETTE_LOADS: AtomicUsize = AtomicUsize::new(0);
static PEER_LOADS: AtomicUsize = AtomicUsize::new(0);
static PEER_SYNC_WRITES_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "600s", key = "stampede:<id>")]
async fn cachette_stampede(id: u64) -> Profile {
    CACHETTE_LOADS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(LOADER).await;
    profile(id)
}

#[peer_cached]
async fn peer_stampede(id: u64) -> Profile {
    PEER_LOADS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(LOADER).await;
    profile(id)
}

#[peer_cached(sync_writes = "default")]
async fn peer_stampede_sync_writes(id: u64) -> Profile {
    PEER_SYNC_WRITES_LOADS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(LOADER).await;
    profile(id)
}

// ---------------------------------------------------------------------------------------------
// Set-up.

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Every core: the contention, Redis and stampede benches run here. One runtime for the whole
/// run, since the Redis backend's connection lives on the runtime that first used it.
fn multi_thread() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, usize::from))
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// The configured memory backend (a clone shares its entries), for the store-floor bench.
static MEMORY: OnceLock<MemoryBackend> = OnceLock::new();

/// cachette's memory store used by hand, with the same key: the floor of a cachette memory hit.
fn store_user(id: u64) -> Profile {
    let memory = MEMORY.get().expect("set up");
    memory.peek(&user_key(id)).expect("warm")
}

fn redis_url() -> Option<String> {
    std::env::var("CACHETTE_BENCH_REDIS_URL").ok()
}

/// Configures cachette once: a memory backend large enough that no bench evicts its warm set,
/// and the Redis backend when a server was given.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let memory = MEMORY.get_or_init(|| MemoryBackend::builder().max_entries(200_000).build());
        let mut config = configure().memory("memory", memory.clone()).memory(
            "memory.zipf",
            MemoryBackend::builder()
                .max_entries(arc_hit::ZIPF_CAPACITY)
                .build(),
        );
        if let Some(url) = redis_url() {
            let backend = RedisBackend::builder()
                .url(url)
                .prefix("bench")
                .op_timeout(Duration::from_secs(2))
                .build()
                .expect("valid redis configuration");
            // L1 holds the contention bench's whole hot set (observe/tiered_64).
            let l1 = MemoryBackend::builder().max_entries(200_000).build();
            // L1 entries outlive the run (the default cap is 60 s, shorter than a run).
            let tiered = TIERED.get_or_init(|| {
                TieredBackend::builder(backend.clone())
                    .l1(l1)
                    .l1_max_ttl(Duration::from_secs(600))
                    .build()
            });
            config = config
                .redis("redis", backend)
                .tiered("tiered", tiered.clone());
        }
        #[cfg(feature = "cluster")]
        if let Some(seeds) = cluster() {
            let backend = RedisBackend::builder()
                .cluster(seeds)
                .prefix("bench")
                .op_timeout(Duration::from_secs(2))
                .build()
                .expect("valid cluster configuration");
            config = config.redis("redis.cluster", backend);
        }
        config.install().expect("configured once");
    });
}

fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    multi_thread().block_on(async {
        redis::Client::open(url)
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    })
}

fn next(counter: &mut u64, modulo: u64) -> u64 {
    *counter = (*counter + 1) % modulo;
    *counter
}

// ---------------------------------------------------------------------------------------------
// 1. Memory hit, single task.

fn memory_hit(c: &mut Criterion) {
    setup();
    let rt = current_thread();
    rt.block_on(async {
        for id in 0..WARM {
            cachette_user(id).await;
            cachette_user_sync(id);
            moka_future_user(id).await;
            moka_sync_user(id);
            locked_map_user(id);
            peer_default(id).await;
            peer_ttl(id).await;
            peer_default_sync(id);
            peer_ttl_sync(id);
        }
    });
    let mut group = c.benchmark_group("memory_hit");
    let mut n = 0;
    group.bench_function("cachette", |b| {
        b.to_async(&rt)
            .iter(|| cachette_user(black_box(next(&mut n, WARM))))
    });
    group.bench_function("cachette_sync", |b| {
        b.iter(|| cachette_user_sync(black_box(next(&mut n, WARM))))
    });
    // The floors run in the same harness as what they floor: async next to the async fn.
    group.bench_function("store", |b| {
        b.to_async(&rt).iter(|| {
            let id = next(&mut n, WARM);
            async move { store_user(black_box(id)) }
        })
    });
    group.bench_function("store_sync", |b| {
        b.iter(|| store_user(black_box(next(&mut n, WARM))))
    });
    group.bench_function("moka_future", |b| {
        b.to_async(&rt)
            .iter(|| moka_future_user(black_box(next(&mut n, WARM))))
    });
    group.bench_function("moka_sync", |b| {
        b.iter(|| moka_sync_user(black_box(next(&mut n, WARM))))
    });
    group.bench_function("locked_map", |b| {
        b.iter(|| locked_map_user(black_box(next(&mut n, WARM))))
    });
    group.bench_function("cached_default", |b| {
        b.to_async(&rt)
            .iter(|| peer_default(black_box(next(&mut n, WARM))))
    });
    group.bench_function("cached_ttl", |b| {
        b.to_async(&rt)
            .iter(|| peer_ttl(black_box(next(&mut n, WARM))))
    });
    group.bench_function("cached_default_sync", |b| {
        b.iter(|| peer_default_sync(black_box(next(&mut n, WARM))))
    });
    group.bench_function("cached_ttl_sync", |b| {
        b.iter(|| peer_ttl_sync(black_box(next(&mut n, WARM))))
    });
    // 5. Tiered warm hit: an L1 hit, next to "cachette" and "moka_future" above. It makes no Redis
    // round trip (tests/tiered.rs counts commands; here the time would show one: ~90 us).
    if let Some(tiered) = TIERED.get() {
        rt.block_on(async {
            cachette_tiered_user(0).await;
            tiered.l1_ready().await; // L1 is used once the invalidation bus is subscribed
            for id in 0..WARM {
                cachette_tiered_user(id).await;
            }
        });
        group.bench_function("tiered", |b| {
            b.to_async(&rt)
                .iter(|| cachette_tiered_user(black_box(next(&mut n, WARM))))
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. Hits under contention: TASKS tasks on every core over a hot set of HOT keys. Criterion's
// time per iteration is the wall time per hit of all tasks together, so hits/s = 1 / time.

async fn contended<F, Fut>(iters: u64, call: F) -> Duration
where
    F: Fn(u64) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Profile> + Send,
{
    let per_task = iters.div_ceil(TASKS);
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            tokio::spawn(async move {
                // Each task walks the hot set in its own order (7919 is prime to HOT).
                let mut id = task * (HOT / TASKS);
                for _ in 0..per_task {
                    id = (id + 7_919) % HOT;
                    black_box(call(id).await);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    setup();
    let rt = multi_thread();
    rt.block_on(async {
        for id in 0..HOT {
            cachette_user(id).await;
            moka_future_user(id).await;
            peer_default(id).await;
            peer_ttl(id).await;
        }
    });
    let mut group = c.benchmark_group("contention");
    group.bench_function("cachette", |b| {
        b.to_async(rt)
            .iter_custom(|iters| contended(iters, cachette_user))
    });
    group.bench_function("moka_future", |b| {
        b.to_async(rt)
            .iter_custom(|iters| contended(iters, moka_future_user))
    });
    group.bench_function("cached_default", |b| {
        b.to_async(rt)
            .iter_custom(|iters| contended(iters, peer_default))
    });
    group.bench_function("cached_ttl", |b| {
        b.to_async(rt)
            .iter_custom(|iters| contended(iters, peer_ttl))
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. Key building.

fn key_building(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    let mut n = 0;
    group.bench_function("cachette_one", |b| {
        b.iter(|| {
            KeyBuilder::new()
                .lit("user:")
                .arg(&black_box(next(&mut n, WARM)))
                .finish()
        })
    });
    group.bench_function("format_one", |b| {
        b.iter(|| format!("user:<{}>", black_box(next(&mut n, WARM))))
    });
    group.bench_function("cachette_two", |b| {
        b.iter(|| {
            KeyBuilder::new()
                .lit("org:")
                .arg(&black_box("acme-corp"))
                .lit(":user:")
                .arg(&black_box(next(&mut n, WARM)))
                .finish()
        })
    });
    group.bench_function("format_two", |b| {
        b.iter(|| {
            format!(
                "org:<{}>:user:<{}>",
                black_box("acme-corp"),
                black_box(next(&mut n, WARM))
            )
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. Redis hit, sequential (the round-trip floor) and 64 tasks on one connection (throughput).

fn redis_hit(c: &mut Criterion) {
    let Some(url) = redis_url() else {
        eprintln!("redis_hit: skipped (CACHETTE_BENCH_REDIS_URL is not set; use scripts/bench)");
        return;
    };
    setup();
    let rt = multi_thread();
    let raw = raw_connection(&url);
    rt.block_on(async {
        let mut connection = raw.clone();
        for id in 0..WARM {
            cachette_redis_user(id).await;
            let bytes = bincode::serde::encode_to_vec(profile(id), bincode::config::standard())
                .expect("encodes");
            let () = connection
                .set_ex(raw_redis_key(id), bytes, 600)
                .await
                .expect("SET");
        }
    });
    let mut group = c.benchmark_group("redis_hit");
    let mut n = 0;
    group.bench_function("cachette_seq", |b| {
        b.to_async(rt)
            .iter(|| cachette_redis_user(black_box(next(&mut n, WARM))))
    });
    group.bench_function("raw_seq", |b| {
        b.to_async(rt).iter(|| {
            let mut connection = raw.clone();
            let id = next(&mut n, WARM);
            async move { raw_redis_user(&mut connection, black_box(id)).await }
        })
    });
    group.bench_function(BenchmarkId::new("cachette_par", TASKS), |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let per_task = iters.div_ceil(TASKS);
            let start = Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| {
                    tokio::spawn(async move {
                        for i in 0..per_task {
                            black_box(cachette_redis_user((task + i * TASKS) % WARM).await);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
            start.elapsed()
        })
    });
    group.bench_function(BenchmarkId::new("raw_par", TASKS), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let raw = raw.clone();
            async move {
                let per_task = iters.div_ceil(TASKS);
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|task| {
                        let mut connection = raw.clone();
                        tokio::spawn(async move {
                            for i in 0..per_task {
                                let id = (task + i * TASKS) % WARM;
                                black_box(raw_redis_user(&mut connection, id).await);
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("task");
                }
                start.elapsed()
            }
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 4b. Redis Cluster hit, 64 tasks: cachette over the cluster client next to that client by hand.

#[cfg(feature = "cluster")]
fn cluster_hit(c: &mut Criterion) {
    let Some(seeds) = cluster() else {
        eprintln!("cluster_hit: skipped (CACHETTE_BENCH_CLUSTER is not set; use scripts/bench)");
        return;
    };
    setup();
    let rt = multi_thread();
    let raw = rt.block_on(async {
        let mut connection = redis::cluster::ClusterClient::new(seeds)
            .expect("seeds")
            .get_async_connection()
            .await
            .expect("connect");
        for id in 0..WARM {
            cachette_cluster_user(id).await;
            let bytes = bincode::serde::encode_to_vec(profile(id), bincode::config::standard())
                .expect("encodes");
            let () = connection
                .set_ex(raw_redis_key(id), bytes, 600)
                .await
                .expect("SET");
        }
        connection
    });
    let mut group = c.benchmark_group("cluster_hit");
    group.bench_function(BenchmarkId::new("cachette_par", TASKS), |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let per_task = iters.div_ceil(TASKS);
            let start = Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| {
                    tokio::spawn(async move {
                        for i in 0..per_task {
                            black_box(cachette_cluster_user((task + i * TASKS) % WARM).await);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
            start.elapsed()
        })
    });
    group.bench_function(BenchmarkId::new("raw_par", TASKS), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let raw = raw.clone();
            async move {
                let per_task = iters.div_ceil(TASKS);
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|task| {
                        let mut connection = raw.clone();
                        tokio::spawn(async move {
                            for i in 0..per_task {
                                let id = (task + i * TASKS) % WARM;
                                black_box(raw_cluster_user(&mut connection, id).await);
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("task");
                }
                start.elapsed()
            }
        })
    });
    group.finish();
}

#[cfg(not(feature = "cluster"))]
fn cluster_hit(_: &mut Criterion) {
    eprintln!("cluster_hit: skipped (build with --features cluster; use scripts/bench)");
}

// ---------------------------------------------------------------------------------------------
// 6. Miss path: a cold key each call, a trivial loader.

fn miss_path(c: &mut Criterion) {
    setup();
    static IDS: AtomicU64 = AtomicU64::new(0);
    let fresh = || IDS.fetch_add(1, Ordering::Relaxed);
    let rt = multi_thread();
    let mut group = c.benchmark_group("miss");
    group.bench_function("cachette_memory", |b| {
        b.to_async(rt).iter(|| cachette_miss(fresh()))
    });
    group.bench_function("moka_sync", |b| {
        b.iter(|| {
            let id = fresh();
            let key = KeyBuilder::new().lit("miss:").arg(&id).finish();
            if let Some(value) = MOKA_SYNC.get(key.as_str()) {
                return value;
            }
            let value = profile(id);
            MOKA_SYNC.insert(key, value.clone());
            value
        })
    });
    if let Some(url) = redis_url() {
        let raw = raw_connection(&url);
        group.bench_function("cachette_redis", |b| {
            b.to_async(rt).iter(|| cachette_redis_miss(fresh()))
        });
        group.bench_function("raw_redis", |b| {
            b.to_async(rt).iter(|| {
                let mut connection = raw.clone();
                let id = fresh();
                async move { raw_redis_miss(&mut connection, id).await }
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 7. Stampede: CALLERS concurrent callers of one cold key. Time per iteration is the wall time
// until the last caller has its value; loader calls per stampede are written for the table.

/// One caller's future, boxed so that the three contenders share one measuring function.
type Caller = std::pin::Pin<Box<dyn std::future::Future<Output = Profile> + Send>>;

async fn stampede<F, Fut>(iters: u64, call: F) -> Duration
where
    F: Fn(u64) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Profile> + Send + 'static,
{
    static IDS: AtomicU64 = AtomicU64::new(0);
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let callers: Vec<_> = (0..CALLERS).map(|_| tokio::spawn(call(id))).collect();
        for caller in callers {
            caller.await.expect("caller");
        }
        total += start.elapsed();
    }
    total
}

fn stampedes(c: &mut Criterion) {
    setup();
    let rt = multi_thread();
    let mut loads = Vec::new();
    let mut group = c.benchmark_group("stampede");
    let mut measure = |name: &str, counter: &'static AtomicUsize, call: fn(u64) -> Caller| {
        let runs = Arc::new(AtomicU64::new(0));
        let before = counter.load(Ordering::Relaxed);
        let counted = Arc::clone(&runs);
        group.bench_function(name, |b| {
            b.to_async(rt).iter_custom(|iters| {
                counted.fetch_add(iters, Ordering::Relaxed);
                stampede(iters, call)
            })
        });
        let per_run = (counter.load(Ordering::Relaxed) - before) as f64
            / runs.load(Ordering::Relaxed).max(1) as f64;
        loads.push(format!("\"{name}\": {per_run}"));
    };
    measure("cachette", &CACHETTE_LOADS, |id| {
        Box::pin(cachette_stampede(id))
    });
    measure("cached", &PEER_LOADS, |id| Box::pin(peer_stampede(id)));
    measure("cached_sync_writes", &PEER_SYNC_WRITES_LOADS, |id| {
        Box::pin(peer_stampede_sync_writes(id))
    });
    group.finish();
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    let path = std::path::Path::new(&target).join("criterion/stampede/loads.json");
    let _ = std::fs::create_dir_all(path.parent().expect("has a parent"));
    let json = format!("{{{}}}\n", loads.join(", "));
    std::fs::write(&path, &json).expect("write loader counts");
    eprintln!("stampede loader calls per stampede: {json}");
}

// ---------------------------------------------------------------------------------------------
// 8. Tag invalidation: `invalidate_tag` (every configured backend) of a tag carried by 100,000
// entries, next to one carried by 10. The entries are filled once, before measuring: lazy
// generation markers never touch them, stale or fresh, which is what the ratio shows.

#[cached(ttl = "600s", key = "tagged:<family>:<n>", tags("family:<family>"))]
async fn tagged_memory(family: &str, n: u32) -> u32 {
    let _ = family;
    n
}

#[cached(
    ttl = "600s",
    key = "tagged:<family>:<n>",
    backend = "redis",
    tags("family:<family>")
)]
async fn tagged_redis(family: &str, n: u32) -> u32 {
    let _ = family;
    n
}

fn tag_invalidation(c: &mut Criterion) {
    setup();
    let rt = multi_thread();
    let redis = redis_url().is_some();
    for (family, entries) in [("big", 100_000u32), ("small", 10)] {
        rt.block_on(async {
            let fills: Vec<_> = (0..64u32)
                .map(|task| {
                    tokio::spawn(async move {
                        for n in (task..entries).step_by(64) {
                            tagged_memory(family, n).await;
                            if redis {
                                tagged_redis(family, n).await;
                            }
                        }
                    })
                })
                .collect();
            for fill in fills {
                fill.await.expect("filled");
            }
        });
    }
    let mut group = c.benchmark_group("tag_invalidation");
    for (family, entries) in [("big", 100_000u32), ("small", 10)] {
        let tag = KeyBuilder::new().lit("family:").arg(family).finish();
        group.bench_function(BenchmarkId::new("every_backend", entries), |b| {
            b.to_async(rt).iter(|| cachette::invalidate_tag(&tag))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    arc_hit::arc_hit,
    arc_hit::key_hash,
    arc_hit::engine_hit_ratio,
    memory_hit,
    contention,
    observe::observe,
    key_building,
    redis_hit,
    cluster_hit,
    miss_path,
    stampedes,
    tag_invalidation
);
fn main() {
    // A child of `observe` measures its one row and variant, and nothing else.
    if observe::child() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    stop_cluster();
}
