//! Instructions and L1 data misses per hit, counted by callgrind: the `arc_hit` rows' hits
//! (BENCHMARKS.md, item 10) run a known number of times inside one function that callgrind is
//! told to count, so that its totals divided by that number are per hit (the loop included).
//!
//!     valgrind --tool=callgrind --cache-sim=yes --toggle-collect='hit_count::measured*' \
//!       target/release/deps/hit_count-<hash> <row> [hits]
//!
//! Rows: `cachette` (async memory hit), `cachette_sync`, `cachette_refresh` (a site with
//! `refresh`), `cachette_long` (a form of 25 bytes),
//! `cachette_default` (the default key), `cachette_str` (a string in the key: its text is built
//! for the hit), `store` (the memory store's own read),
//! `concurrent_cached`, `concurrent_cached_sync`, `concurrent_cached_str` (`cached` 4, the last
//! keyed on an owned `String`, the reference of `cachette_str`), `quick_cache` (by hand, keyed on
//! the id). Every row walks the same 10,000 warm keys in order, as the `arc_hit` group does.
//! Without callgrind it prints the row's wall time per hit, a sanity check only.
//!
//! Callgrind counts instructions and misses but not stalls (a wide load of bytes that narrow
//! stores wrote just before waits for them to reach the cache). `hit_count rounds [R] [hits]`
//! times every row instead, R rounds in a shuffled order, on the thread's CPU clock (time the
//! thread was descheduled is left out), and prints each row's median over the rounds and the
//! median of its per-round ratio to `#[concurrent_cached]`'s same form: on a shared machine,
//! ratios taken within one round are what hold still. `hit_count pairs [R] [hits]` does the same
//! with two threads hitting each row at once, from different keys (each thread's CPU clock):
//! what a hit costs when another core's hits write the lines it reads.
//!
//! Two switches change the layout the rows read, which moves the ratios more than anything the
//! hit does (BENCHMARKS.md, item 10, fifth round): `HIT_COUNT_MIXED_WARM=1` warms the rows key
//! by key, as `arc_hit` does, so that every row's values, and the two cachette sites' entries
//! in their shared store, lie interleaved in memory rather than row by row; and
//! `HIT_COUNT_SCATTERED=1` walks the keys in a scattered order (every key once a pass) rather
//! than in the order they were stored, which hardware prefetching follows.

use std::hint::black_box;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Instant;

use cached::macros::concurrent_cached;
use cachette::{cached, configure, KeyBuilder, MemoryBackend, RedisBackend, TieredBackend};

#[path = "fixtures/account.rs"]
mod account;

use account::{account, Account};

const KEYS: u64 = 10_000;

#[cached(ttl = "600s", key = "acct:<id>")]
async fn cachette_memory(id: u64) -> Arc<Account> {
    account(id)
}

#[cached(ttl = "600s", key = "tacct:<id>", backend = "tiered")]
async fn cachette_tiered(id: u64) -> Arc<Account> {
    account(id)
}

#[cached(ttl = "600s", key = "sacct:<id>")]
fn cachette_sync(id: u64) -> Arc<Account> {
    account(id)
}

// A site with `refresh`: asked by form too, an entry due for a refresh left to the text path.
#[cached(ttl = "600s", key = "racct:<id>", refresh = "500s")]
async fn cachette_refresh(id: u64) -> Arc<Account> {
    account(id)
}

// A key whose form is longer than 16 bytes (`account:balance:`, then the id: 25).
#[cached(ttl = "600s", key = "account:balance:<id>")]
fn cachette_long(id: u64) -> Arc<Account> {
    account(id)
}

// The default key: this function's path, then the id.
#[cached(ttl = "600s")]
fn cachette_default(id: u64) -> Arc<Account> {
    account(id)
}

// A string in the key: the text path (the key's text is built for the hit).
#[cached(ttl = "600s", key = "user:<name>")]
fn cachette_str(name: &str) -> Arc<Account> {
    account(name.len() as u64)
}

/// The names `cachette_str` is called with: one per id, made once.
fn name(id: u64) -> &'static str {
    static NAMES: LazyLock<Vec<String>> = LazyLock::new(|| {
        (0..KEYS)
            .map(|id| format!("user-{id:05}@example.com"))
            .collect()
    });
    &NAMES[id as usize]
}

fn cachette_str_row(id: u64) -> Arc<Account> {
    cachette_str(name(id))
}

static MEMORY: OnceLock<MemoryBackend> = OnceLock::new();

fn store(id: u64) -> Arc<Account> {
    let key = KeyBuilder::new().lit("acct:").arg(&id).finish();
    MEMORY.get().expect("set up").peek(&key).expect("warm")
}

#[concurrent_cached]
async fn concurrent(id: u64) -> Arc<Account> {
    account(id)
}

#[concurrent_cached]
fn concurrent_sync(id: u64) -> Arc<Account> {
    account(id)
}

// `cached`'s way to key on a `&str`: an owned `String`, made for every call.
#[concurrent_cached(key = "String", convert = r#"{ name.to_owned() }"#)]
fn concurrent_str(name: &str) -> Arc<Account> {
    account(name.len() as u64)
}

fn concurrent_str_row(id: u64) -> Arc<Account> {
    concurrent_str(name(id))
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

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// One pass over every key, so that every row's hits are warm.
fn warm(row: &str) {
    for id in 0..KEYS {
        warm_one(row, id);
    }
}

fn warm_one(row: &str, id: u64) {
    let rt = runtime();
    {
        match row {
            "cachette" | "store" => drop(rt.block_on(cachette_memory(id))),
            "cachette_tiered" => drop(rt.block_on(cachette_tiered(id))),
            "cachette_sync" => drop(cachette_sync(id)),
            "cachette_refresh" => drop(rt.block_on(cachette_refresh(id))),
            "cachette_long" => drop(cachette_long(id)),
            "cachette_default" => drop(cachette_default(id)),
            "cachette_str" => drop(cachette_str_row(id)),
            "concurrent_cached" => drop(rt.block_on(concurrent(id))),
            "concurrent_cached_sync" => drop(concurrent_sync(id)),
            "concurrent_cached_str" => drop(concurrent_str_row(id)),
            "quick_cache" => drop(quick(id)),
            other => panic!("unknown row {other}"),
        }
    }
}

/// Every row warm: row by row, or key by key under `HIT_COUNT_MIXED_WARM` (the layout
/// criterion's `arc_hit` leaves).
fn warm_rows(rows: &[&str]) {
    if std::env::var_os("HIT_COUNT_MIXED_WARM").is_some() {
        for id in 0..KEYS {
            for row in rows {
                warm_one(row, id);
            }
        }
    } else {
        for row in rows {
            warm(row);
        }
    }
}

/// `hits` hits of `row`, walking the keys in order from the one after `first`. The only
/// function callgrind counts.
#[inline(never)]
fn measured(row: &str, hits: u64, first: u64) {
    let scattered = std::env::var_os("HIT_COUNT_SCATTERED").is_some();
    // A full-period step through the ids (odd, coprime with 10,000): every key once a pass,
    // neighbours far apart.
    let next = |id: u64| {
        if scattered {
            (id + 6_007) % KEYS
        } else {
            (id + 1) % KEYS
        }
    };
    let mut id = first;
    macro_rules! sync_row {
        ($f:ident) => {
            for _ in 0..hits {
                id = next(id);
                black_box($f(black_box(id)));
            }
        };
    }
    // As criterion's async bencher does: one `block_on` around the whole loop.
    macro_rules! async_row {
        ($f:ident) => {
            runtime().block_on(async {
                for _ in 0..hits {
                    id = next(id);
                    black_box($f(black_box(id)).await);
                }
            })
        };
    }
    match row {
        "cachette" => async_row!(cachette_memory),
        "cachette_tiered" => async_row!(cachette_tiered),
        "cachette_sync" => sync_row!(cachette_sync),
        "cachette_refresh" => async_row!(cachette_refresh),
        "cachette_long" => sync_row!(cachette_long),
        "cachette_default" => sync_row!(cachette_default),
        "cachette_str" => sync_row!(cachette_str_row),
        "store" => sync_row!(store),
        "concurrent_cached" => async_row!(concurrent),
        "concurrent_cached_sync" => sync_row!(concurrent_sync),
        "concurrent_cached_str" => sync_row!(concurrent_str_row),
        "quick_cache" => sync_row!(quick),
        other => panic!("unknown row {other}"),
    }
}

const ROWS: [&str; 12] = [
    "cachette",
    "cachette_tiered",
    "cachette_sync",
    "cachette_refresh",
    "cachette_long",
    "cachette_default",
    "cachette_str",
    "store",
    "concurrent_cached",
    "concurrent_cached_sync",
    "concurrent_cached_str",
    "quick_cache",
];

/// The row each row is a ratio to: `#[concurrent_cached]` in the same form (async or sync, or
/// keyed on a string).
fn reference(row: &str) -> &'static str {
    match row {
        "cachette" | "cachette_tiered" | "cachette_refresh" | "concurrent_cached" => {
            "concurrent_cached"
        }
        "cachette_str" | "concurrent_cached_str" => "concurrent_cached_str",
        _ => "concurrent_cached_sync",
    }
}

fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The CPU time a hit of `row` took, on `threads` threads hitting it at once, each from its own
/// part of the keys (a mean over the threads).
fn cpu_ns_a_hit(row: &str, hits: u64, threads: u64) -> f64 {
    let barrier = std::sync::Barrier::new(threads as usize);
    let total: u64 = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..threads)
            .map(|thread| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = thread_cpu_ns();
                    measured(row, hits, thread * (KEYS / threads));
                    thread_cpu_ns() - start
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().expect("a run")).sum()
    });
    total as f64 / (threads * hits) as f64
}

/// Every row, `rounds` times in a shuffled order (a fixed xorshift seed), `hits` hits each on
/// each of `threads` threads.
fn interleaved(rows: &[&str], rounds: usize, hits: u64, threads: u64) {
    let mut per_hit = vec![Vec::new(); rows.len()];
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..rounds {
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &row in &order {
            let ns = if threads == 1 {
                let start = thread_cpu_ns();
                measured(rows[row], hits, 0);
                (thread_cpu_ns() - start) as f64 / hits as f64
            } else {
                cpu_ns_a_hit(rows[row], hits, threads)
            };
            per_hit[row].push(ns);
        }
    }
    println!("| row | CPU ns a hit on {threads} thread(s) (median of {rounds} rounds) | ratio to `#[concurrent_cached]` (median) |");
    println!("|---|---|---|");
    for (row, name) in rows.iter().enumerate() {
        let against = rows
            .iter()
            .position(|r| *r == reference(name))
            .expect("a row");
        let mut ratios: Vec<f64> = per_hit[row]
            .iter()
            .zip(&per_hit[against])
            .map(|(this, that)| this / that)
            .collect();
        let ns = median(&mut per_hit[row].clone());
        println!("| {name} | {ns:.1} | {:.2}x |", median(&mut ratios));
    }
    let at = |name: &str| rows.iter().position(|row| *row == name);
    if let (Some(tiered), Some(memory)) = (at("cachette_tiered"), at("cachette")) {
        let mut ratios: Vec<f64> = per_hit[tiered]
            .iter()
            .zip(&per_hit[memory])
            .map(|(tiered, memory)| tiered / memory)
            .collect();
        println!("tiered warm hit / memory hit: {:.2}x", median(&mut ratios));
    }
    // Against the integer-keyed store too, as earlier rounds reported it.
    if let (Some(text), Some(integer)) = (at("cachette_str"), at("concurrent_cached_sync")) {
        let mut ratios: Vec<f64> = per_hit[text]
            .iter()
            .zip(&per_hit[integer])
            .map(|(text, integer)| text / integer)
            .collect();
        println!(
            "cachette_str / concurrent_cached_sync (a u64 key): {:.2}x",
            median(&mut ratios)
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
    let Some(row) = args.next() else {
        eprintln!(
            "usage: hit_count <row> [hits] | hit_count rounds [rounds] [hits] | \
             hit_count pairs [rounds] [hits]"
        );
        return;
    };
    let memory = MEMORY.get_or_init(|| MemoryBackend::builder().max_entries(200_000).build());
    let mut config = configure().memory("memory", memory.clone());
    // The tiered row, with a Redis to hold its L2 (scripts/hit_count starts one).
    let tiered = std::env::var("CACHETTE_BENCH_REDIS_URL").ok().map(|url| {
        let l2 = RedisBackend::builder()
            .url(url)
            .build()
            .expect("a Redis URL");
        // As `arc_hit` builds it: an L1 that holds every key, entries that outlive the run.
        TieredBackend::builder(l2)
            .l1(MemoryBackend::builder().max_entries(200_000).build())
            .l1_max_ttl(std::time::Duration::from_secs(600))
            .heartbeat(std::time::Duration::from_secs(600))
            .build()
    });
    if let Some(tiered) = &tiered {
        config = config.tiered("tiered", tiered.clone());
    }
    config.install().expect("configured once");
    if let Some(tiered) = &tiered {
        runtime().block_on(async {
            cachette_tiered(0).await;
            tiered.l1_ready().await;
        });
    }
    let rows: Vec<&str> = ROWS
        .into_iter()
        .filter(|row| *row != "cachette_tiered" || tiered.is_some())
        .collect();
    if row == "rounds" || row == "pairs" {
        let rounds = args.next().map_or(40, |n| n.parse().expect("a count"));
        let hits = args.next().map_or(200_000, |n| n.parse().expect("a count"));
        warm_rows(&rows);
        interleaved(&rows, rounds, hits, if row == "pairs" { 2 } else { 1 });
        return;
    }
    let hits = args.next().map_or(100_000, |n| n.parse().expect("a count"));
    if std::env::var_os("HIT_COUNT_MIXED_WARM").is_some() {
        warm_rows(&rows);
    } else {
        warm(&row);
    }
    let start = Instant::now();
    measured(&row, hits, 0);
    let per_hit = start.elapsed().as_nanos() as f64 / hits as f64;
    println!("{row}: {hits} hits, {per_hit:.1} ns a hit (wall, uncontrolled)");
}
