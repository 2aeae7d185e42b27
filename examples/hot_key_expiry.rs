//! A hot key across its expiry, with refresh-ahead and without (issue 15): 64 callers call one
//! key for 5 s, each once every 20 ms (3,200 calls a second), on `ttl = "1s"`, with a loader
//! that takes 50 ms. Without `refresh`, each expiry makes every caller that arrives during the
//! load wait for it (about 5 % of the time, so about one call in fifty): the spike shows at
//! p99. With `refresh = "700ms"`, the hit that finds the entry due starts the load in the
//! background and every caller is served a hit. Prints p50/p99/p99.9/max of the callers'
//! latencies and the loads.
//!
//! ```text
//! cargo run --release --example hot_key_expiry                  # memory backend
//! redis-server --port 6379 &
//! CACHETTE_REDIS_URL=redis://127.0.0.1:6379/ cargo run --release --example hot_key_expiry
//! ```
//!
//! With `CACHETTE_REDIS_URL` set, both sites run on the tiered backend (L1 + that Redis).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, configure, RedisBackend, TieredBackend};

const CALLERS: usize = 64;
const RUN: Duration = Duration::from_secs(5);
/// Between one caller's calls.
const PACE: Duration = Duration::from_millis(20);
const LOAD: Duration = Duration::from_millis(50);

static LOADS: AtomicU64 = AtomicU64::new(0);

async fn load() -> Result<u64, String> {
    tokio::time::sleep(LOAD).await;
    Ok(LOADS.fetch_add(1, Ordering::SeqCst) + 1)
}

#[cached(ttl = "1s", key = "plain:<id>")]
async fn without_refresh(id: u64) -> Result<u64, String> {
    let _ = id;
    load().await
}

#[cached(ttl = "1s", refresh = "700ms", key = "ahead:<id>")]
async fn with_refresh(id: u64) -> Result<u64, String> {
    let _ = id;
    load().await
}

/// Every caller's latency over `RUN`, sorted, and the loads it cost (after a first call that
/// fills the key).
async fn hammer(refresh: bool) -> (Vec<Duration>, u64) {
    let call = move || async move {
        if refresh {
            with_refresh(1).await
        } else {
            without_refresh(1).await
        }
    };
    call().await.expect("the first load");
    let loads_before = LOADS.load(Ordering::SeqCst);
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|n| {
            tokio::spawn(async move {
                // Spread over one pace, as independent clients would be.
                tokio::time::sleep(PACE * u32::try_from(n).expect("few") / CALLERS as u32).await;
                let mut took = Vec::new();
                while started.elapsed() < RUN {
                    let call_started = Instant::now();
                    call().await.expect("a value");
                    took.push(call_started.elapsed());
                    tokio::time::sleep(PACE).await;
                }
                took
            })
        })
        .collect();
    let mut took = Vec::new();
    for caller in callers {
        took.extend(caller.await.expect("no panic"));
    }
    took.sort_unstable();
    (took, LOADS.load(Ordering::SeqCst) - loads_before)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn row(name: &str, (took, loads): &(Vec<Duration>, u64)) {
    let waited = took.iter().filter(|t| **t >= LOAD / 5).count();
    println!(
        "{name:<16} {:>7} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1?} {:>8} {:>6}",
        took.len(),
        quantile(took, 0.50),
        quantile(took, 0.99),
        quantile(took, 0.999),
        took.last().copied().unwrap_or_default(),
        waited,
        loads,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let backend = match std::env::var("CACHETTE_REDIS_URL") {
        Ok(url) => {
            let l2 = RedisBackend::builder()
                .url(&url)
                .prefix("hot-key-expiry")
                .build()
                .expect("a valid CACHETTE_REDIS_URL");
            configure()
                .tiered("tiered", TieredBackend::builder(l2).build())
                .default_backend("tiered")
                .install()
                .expect("configured once");
            "tiered"
        }
        Err(_) => "memory",
    };
    println!(
        "hot key across its expiry on {backend}: {CALLERS} callers x 1 call / {PACE:?} for \
         {RUN:?}, ttl 1s, loader {LOAD:?}"
    );
    let plain = hammer(false).await;
    let ahead = hammer(true).await;
    println!(
        "{:<16} {:>7} {:>10} {:>10} {:>10} {:>10} {:>8} {:>6}",
        "", "calls", "p50", "p99", "p99.9", "max", ">=10ms", "loads"
    );
    row("without refresh", &plain);
    row("refresh 700ms", &ahead);
}
