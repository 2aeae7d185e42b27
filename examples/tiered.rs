//! The tiered backend across two processes: one watches a price (served from its in-process
//! L1), the other changes it; the invalidation crosses over the bus and the watcher's next read
//! loads the new price.
//!
//! ```text
//! redis-server --port 6379 &          # or any Redis 6+
//! export CACHETTE_REDIS_URL=redis://127.0.0.1:6379/
//! cargo run --example tiered -- watch          # terminal 1: reads every 500 ms for 30 s
//! cargo run --example tiered -- set tea 2500   # terminal 2: changes the price
//! ```
//!
//! The "database" is a Redis hash (`cachette-example:db`), so that both processes see one source.

use std::time::{Duration, Instant};

use cachette::{cached, configure, invalidates, RedisBackend, TieredBackend};
use redis::AsyncCommands;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Price {
    sku: String,
    cents: u64,
}

static DB: std::sync::OnceLock<redis::aio::MultiplexedConnection> = std::sync::OnceLock::new();

fn db() -> redis::aio::MultiplexedConnection {
    DB.get().expect("connected in main").clone()
}

#[cached(ttl = "5m", key = "price:<sku>", backend = "tiered")]
async fn price(sku: &str) -> Result<Price, redis::RedisError> {
    println!("    (loading the price of {sku} from the database: 50 ms)");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cents: Option<u64> = db().hget("cachette-example:db", sku).await?;
    Ok(Price {
        sku: sku.to_owned(),
        cents: cents.unwrap_or(1999),
    })
}

#[invalidates("price:<sku>")]
async fn set_price(sku: &str, cents: u64) -> Result<(), redis::RedisError> {
    db().hset("cachette-example:db", sku, cents).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let l2 = RedisBackend::builder()
        .url_from_env("CACHETTE_REDIS_URL")
        .prefix("cachette-example")
        .build()?;
    let tiered = TieredBackend::builder(l2).build();
    configure().tiered("tiered", tiered.clone()).install()?;
    let url = std::env::var("CACHETTE_REDIS_URL")?;
    let connection = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    DB.set(connection).expect("set once");

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["set", sku, cents] => {
            set_price(sku, cents.parse()?).await?;
            println!("set {sku} to {cents} cents; every process's L1 drops it now");
        }
        ["watch"] | [] => {
            for _ in 0..60 {
                let start = Instant::now();
                let price = price("tea").await?;
                println!(
                    "{} = {:>5} cents in {:>9.3?} (L1 {}, invalidations heard: {})",
                    price.sku,
                    price.cents,
                    start.elapsed(),
                    if tiered.l1_active() { "on" } else { "off" },
                    tiered.invalidations_received(),
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        _ => eprintln!("usage: tiered [watch | set <sku> <cents>]"),
    }
    Ok(())
}
