//! Issue 17, the memory hit at the floor: a value behind `Arc` (a 7-field struct, so a hit clones
//! a pointer, not a row), 10,000 warm keys, one task and 64 tasks on the multi-thread runtime;
//! cachette's memory, sync and tiered warm hits next to `cached` 4's stores and to the engines
//! the memory backend was built on (moka, before issue 17) and is built on (quick_cache), used by
//! hand.
//!
//! Every TTL is 600 s, as in the other groups: a run takes minutes, and a shorter TTL would
//! expire the warm keys under the later rows (the TTL's length does not enter a hit's cost).
//!
//! Rows: `arc_hit/<contender>` (one task, or one thread for the sync forms) and
//! `arc_hit_64/<contender>` (64 tasks over both workers; the time is per hit of all of them).

use std::hint::black_box;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use cached::macros::{cached as peer_cached, concurrent_cached};
use cachette::{cached, KeyBuilder};
use criterion::Criterion;

use super::{multi_thread, next, setup, MEMORY, TIERED};

#[path = "../fixtures/account.rs"]
mod account;

use account::{account, Account};

/// Warm keys, walked in order by the one-task rows and in a stride per task by the 64-task rows.
const KEYS: u64 = 10_000;
const TASKS: u64 = 64;

// cachette.

#[cached(ttl = "600s", key = "acct:<id>")]
async fn cachette_memory(id: u64) -> Arc<Account> {
    account(id)
}

#[cached(ttl = "600s", key = "sacct:<id>")]
fn cachette_sync(id: u64) -> Arc<Account> {
    account(id)
}

#[cached(ttl = "600s", key = "tacct:<id>", backend = "tiered")]
async fn cachette_tiered(id: u64) -> Arc<Account> {
    account(id)
}

/// The memory store read by hand with the same key: the floor of a cachette hit.
fn cachette_store(id: u64) -> Arc<Account> {
    let key = KeyBuilder::new().lit("acct:").arg(&id).finish();
    MEMORY.get().expect("set up").peek(&key).expect("warm")
}

// cached 4: its TTL store (one lock), and `#[concurrent_cached]` (sharded), bare and with a TTL.

#[peer_cached(ttl_secs = 600)]
async fn cached_ttl(id: u64) -> Arc<Account> {
    account(id)
}

#[peer_cached(ttl_secs = 600)]
fn cached_ttl_sync(id: u64) -> Arc<Account> {
    account(id)
}

#[concurrent_cached]
async fn concurrent(id: u64) -> Arc<Account> {
    account(id)
}

#[concurrent_cached]
fn concurrent_sync(id: u64) -> Arc<Account> {
    account(id)
}

#[concurrent_cached(ttl_secs = 600)]
async fn concurrent_ttl(id: u64) -> Arc<Account> {
    account(id)
}

#[concurrent_cached(ttl_secs = 600)]
fn concurrent_ttl_sync(id: u64) -> Arc<Account> {
    account(id)
}

// The engines, by hand, keyed on the id (what `cached` keys on) with the same TTL where they have
// one: moka's `sync::Cache` (the memory backend's engine before issue 17) and quick_cache's sync
// cache (no TTL of its own; the memory backend's engine is its unsynchronised one, in shards).

static MOKA: LazyLock<moka::sync::Cache<u64, Arc<Account>>> = LazyLock::new(|| {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(Duration::from_secs(600))
        .build()
});

fn moka_sync(id: u64) -> Arc<Account> {
    if let Some(value) = MOKA.get(&id) {
        return value;
    }
    let value = account(id);
    MOKA.insert(id, Arc::clone(&value));
    value
}

static QUICK: LazyLock<quick_cache::sync::Cache<u64, Arc<Account>>> =
    LazyLock::new(|| quick_cache::sync::Cache::new(100_000));

fn quick(id: u64) -> Arc<Account> {
    if let Some(value) = QUICK.get(&id) {
        return value;
    }
    let value = account(id);
    QUICK.insert(id, Arc::clone(&value));
    value
}

/// 64 tasks on the multi-thread runtime, each walking the keys in its own order; the time is
/// the wall time per hit of all of them.
async fn contended<F, Fut>(iters: u64, call: F) -> Duration
where
    F: Fn(u64) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Arc<Account>> + Send,
{
    let per_task = iters.div_ceil(TASKS);
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            tokio::spawn(async move {
                // 7919 is prime to KEYS: each task visits every key, from its own start.
                let mut id = task * (KEYS / TASKS);
                for _ in 0..per_task {
                    id = (id + 7_919) % KEYS;
                    black_box(call(black_box(id)).await);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    start.elapsed()
}

/// A sync fn as a contender of the 64-task rows: called from the task, as a service would.
macro_rules! in_task {
    ($f:ident) => {
        |id| async move { $f(id) }
    };
}

pub(super) fn arc_hit(c: &mut Criterion) {
    setup();
    let rt = multi_thread();
    let tiered = TIERED.get();
    rt.block_on(async {
        if let Some(tiered) = tiered {
            cachette_tiered(0).await;
            tiered.l1_ready().await; // L1 serves once the invalidation bus is subscribed
        }
        for id in 0..KEYS {
            cachette_memory(id).await;
            cachette_sync(id);
            if tiered.is_some() {
                cachette_tiered(id).await;
            }
            cached_ttl(id).await;
            cached_ttl_sync(id);
            concurrent(id).await;
            concurrent_sync(id);
            concurrent_ttl(id).await;
            concurrent_ttl_sync(id);
            moka_sync(id);
            quick(id);
        }
    });

    let mut group = c.benchmark_group("arc_hit");
    let mut n = 0;
    macro_rules! one_async {
        ($name:literal, $f:ident) => {
            group.bench_function($name, |b| {
                b.to_async(rt).iter(|| $f(black_box(next(&mut n, KEYS))))
            });
        };
    }
    macro_rules! one_sync {
        ($name:literal, $f:ident) => {
            group.bench_function($name, |b| b.iter(|| $f(black_box(next(&mut n, KEYS)))));
        };
    }
    one_async!("cachette", cachette_memory);
    if tiered.is_some() {
        one_async!("cachette_tiered", cachette_tiered);
    }
    one_async!("cached_ttl", cached_ttl);
    one_async!("concurrent_cached", concurrent);
    one_async!("concurrent_cached_ttl", concurrent_ttl);
    one_sync!("cachette_sync", cachette_sync);
    one_sync!("cached_ttl_sync", cached_ttl_sync);
    one_sync!("concurrent_cached_sync", concurrent_sync);
    one_sync!("concurrent_cached_ttl_sync", concurrent_ttl_sync);
    one_sync!("store_sync", cachette_store);
    one_sync!("moka_sync", moka_sync);
    one_sync!("quick_cache", quick);
    group.finish();

    let mut group = c.benchmark_group("arc_hit_64");
    macro_rules! par {
        ($name:literal, $call:expr) => {
            group.bench_function($name, |b| {
                b.to_async(rt).iter_custom(|iters| contended(iters, $call))
            });
        };
    }
    par!("cachette", cachette_memory);
    if tiered.is_some() {
        par!("cachette_tiered", cachette_tiered);
    }
    par!("cached_ttl", cached_ttl);
    par!("concurrent_cached", concurrent);
    par!("concurrent_cached_ttl", concurrent_ttl);
    par!("cachette_sync", in_task!(cachette_sync));
    par!("cached_ttl_sync", in_task!(cached_ttl_sync));
    par!("concurrent_cached_sync", in_task!(concurrent_sync));
    par!("concurrent_cached_ttl_sync", in_task!(concurrent_ttl_sync));
    par!("store_sync", in_task!(cachette_store));
    par!("moka_sync", in_task!(moka_sync));
    par!("quick_cache", in_task!(quick));
    group.finish();
}

/// The memory store's hash of a key's text: std's SipHash (keyed per process) next to foldhash
/// and aHash (seeded per process too), for a short template key and a default key (the
/// function's path and its arguments).
pub(super) fn key_hash(c: &mut Criterion) {
    use std::hash::{BuildHasher, Hasher};
    fn hash_bytes(state: &impl BuildHasher, bytes: &[u8]) -> u64 {
        let mut hasher = state.build_hasher();
        hasher.write(bytes);
        hasher.finish()
    }
    let short = KeyBuilder::new().lit("acct:").arg(&4_321u64).finish();
    let long = KeyBuilder::new()
        .lit("billing_service::accounts::get_account(")
        .arg(&4_321u64)
        .lit(",")
        .arg(&"eu-west")
        .lit(")")
        .finish();
    let sip = std::hash::RandomState::new();
    let fold = foldhash::fast::RandomState::default();
    let fold_quality = foldhash::quality::RandomState::default();
    let ahash = ahash::RandomState::new();
    let mut group = c.benchmark_group("key_hash");
    for (size, key) in [("short", &short), ("default_key", &long)] {
        let bytes = key.as_str().as_bytes();
        group.bench_function(format!("siphash/{size}"), |b| {
            b.iter(|| hash_bytes(&sip, black_box(bytes)))
        });
        group.bench_function(format!("foldhash/{size}"), |b| {
            b.iter(|| hash_bytes(&fold, black_box(bytes)))
        });
        group.bench_function(format!("foldhash_quality/{size}"), |b| {
            b.iter(|| hash_bytes(&fold_quality, black_box(bytes)))
        });
        group.bench_function(format!("ahash/{size}"), |b| {
            b.iter(|| hash_bytes(&ahash, black_box(bytes)))
        });
    }
    group.finish();
}

/// Entries each engine may hold in the skewed-workload run, and the keys requests are drawn from.
pub(super) const ZIPF_CAPACITY: u64 = 1_000;
const ZIPF_KEYS: u64 = 100_000;
const ZIPF_REQUESTS: u64 = 300_000;

static ZIPF_LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cached(ttl = "600s", key = "zipf:<id>", backend = "memory.zipf")]
fn cachette_zipf(id: u64) -> Arc<Account> {
    ZIPF_LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    account(id)
}

/// Request keys drawn from a Zipf distribution (exponent 1) over `ZIPF_KEYS`, seeded, by the
/// inverse of its cumulative weights.
fn zipf_requests() -> Vec<u64> {
    let mut cumulative = Vec::with_capacity(ZIPF_KEYS as usize);
    let mut total = 0.0;
    for rank in 1..=ZIPF_KEYS {
        total += 1.0 / rank as f64;
        cumulative.push(total);
    }
    let mut rng = fastrand::Rng::with_seed(17);
    (0..ZIPF_REQUESTS)
        .map(|_| {
            let target = rng.f64() * total;
            cumulative.partition_point(|&weight| weight < target) as u64
        })
        .collect()
}

/// Hit ratio on a skewed workload, each engine bounded to `ZIPF_CAPACITY` entries: moka alone
/// (every read recorded), quick_cache's sync cache, and cachette's memory backend (quick_cache's
/// policy in shards of its own, every read recorded). Not a time: written to `criterion/engine_hit_ratio.json` for the table.
pub(super) fn engine_hit_ratio(_: &mut Criterion) {
    // Not a criterion benchmark, so criterion's filter does not skip it: a run filtered to
    // other rows (any positional argument that is not a number, an option's value) skips it.
    let filtered_out = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-') && arg.parse::<f64>().is_err())
        .any(|filter| {
            !filter.split('|').any(|alternative| {
                "engine_hit_ratio".contains(alternative.trim_matches(['^', '$']))
            })
        });
    if filtered_out {
        return;
    }
    setup();
    let requests = zipf_requests();
    let ratio = |misses: u64| 1.0 - misses as f64 / requests.len() as f64;

    let moka = moka::sync::Cache::<u64, Arc<Account>>::new(ZIPF_CAPACITY);
    let mut misses = 0;
    for &id in &requests {
        if moka.get(&id).is_none() {
            misses += 1;
            moka.insert(id, account(id));
        }
    }
    let moka_ratio = ratio(misses);

    let quick = quick_cache::sync::Cache::<u64, Arc<Account>>::new(ZIPF_CAPACITY as usize);
    let mut misses = 0;
    for &id in &requests {
        if quick.get(&id).is_none() {
            misses += 1;
            quick.insert(id, account(id));
        }
    }
    let quick_ratio = ratio(misses);

    let before = ZIPF_LOADS.load(std::sync::atomic::Ordering::Relaxed);
    for &id in &requests {
        black_box(cachette_zipf(id));
    }
    let loads = ZIPF_LOADS.load(std::sync::atomic::Ordering::Relaxed) - before;
    let cachette_ratio = ratio(loads);

    let json = format!(
        "{{\"moka\": {moka_ratio:.4}, \"quick_cache\": {quick_ratio:.4}, \"cachette\": {cachette_ratio:.4}, \
         \"capacity\": {ZIPF_CAPACITY}, \"keys\": {ZIPF_KEYS}, \"requests\": {ZIPF_REQUESTS}}}\n"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    let path = std::path::Path::new(&target).join("criterion/engine_hit_ratio.json");
    let _ = std::fs::create_dir_all(path.parent().expect("has a parent"));
    std::fs::write(&path, &json).expect("write the hit ratios");
    eprintln!("hit ratio, Zipf(1) over {ZIPF_KEYS} keys, {ZIPF_CAPACITY} entries: {json}");
}
