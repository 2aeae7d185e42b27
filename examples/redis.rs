//! A cached function shared through Redis: run it twice, and the second process hits what the
//! first one stored.
//!
//! ```text
//! redis-server --port 6379 &          # or any Redis 6+
//! CACHETTE_REDIS_URL=redis://127.0.0.1:6379/ cargo run --example redis
//! CACHETTE_REDIS_URL=redis://127.0.0.1:6379/ cargo run --example redis   # hits from the start
//! ```

use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, RedisBackend};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Price {
    sku: String,
    cents: u64,
}

#[cached(ttl = "5m", key = "price:<sku>", backend = "redis")]
async fn price(sku: &str) -> Result<Price, String> {
    println!("    (computing the price of {sku}: 100 ms)");
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(Price {
        sku: sku.to_owned(),
        cents: 1999,
    })
}

#[invalidates("price:<sku>")]
async fn reprice(sku: &str) -> Result<(), String> {
    println!("    (repricing {sku})");
    Ok(())
}

async fn timed(label: &str, sku: &str) {
    let start = Instant::now();
    match price(sku).await {
        Ok(price) => println!(
            "{label:<32} {} = {} cents in {:?}",
            price.sku,
            price.cents,
            start.elapsed()
        ),
        Err(error) => println!("{label:<32} error: {error}"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis = RedisBackend::builder()
        .url_from_env("CACHETTE_REDIS_URL")
        .prefix("cachette-example")
        .build()?;
    println!("using {redis:?}");
    configure().redis("redis", redis).install()?;

    timed("1. first call (miss, or a hit from an earlier run):", "tea").await;
    timed("2. second call (hit, one Redis round trip):", "tea").await;
    if std::env::args().any(|arg| arg == "--reprice") {
        reprice("tea").await?;
        timed("3. after repricing (miss):", "tea").await;
    }
    Ok(())
}
