//! The product service example (`examples/products.rs`), run as the README says: on `memory`
//! with nothing configured, and on `tiered` over a real redis-server with `CACHETTE_REDIS_URL`
//! set. Both print the same transcript: an update drops the product and every page of the
//! lists and of its category (tags), leaves other categories' pages cached, and a
//! write-through settings update makes the next read a hit with the new value. The example's
//! attributes audit clean.
//!
//! `harness = false`: the configuration is process-wide, so each backend runs in a process of
//! its own, this binary re-executed with `CACHETTE_PRODUCTS_RUN=1`.

#[allow(dead_code)] // the example's printing `main` runs only in the example
#[path = "../examples/products.rs"]
mod products;
mod support;

use std::process::Command;

use support::redis_server::RedisServer;

const RUN: &str = "CACHETTE_PRODUCTS_RUN";

const TRANSCRIPT: &[&str] = &[
    "product 4: loaded",
    "product 4: hit",
    "list page 0 (all): loaded",
    "list page 1 (all): loaded",
    "list page 0 (cheap): loaded",
    "list page 0 (all): hit",
    "category 1 page 0: loaded",
    "category 2 page 0: loaded",
    "category 1 page 0: hit",
    "update product 4: 1999 cents",
    "product 4: loaded",
    "list page 0 (all): loaded",
    "list page 1 (all): loaded",
    "list page 0 (cheap): loaded",
    "category 1 page 0: loaded",
    "category 2 page 0: hit",
    "product 4 now: 1999 cents in detail, 1999 cents in list",
    "settings of 7: loaded",
    "update settings of 7 (write-through)",
    "settings of 7: hit",
    "settings of 7 now: USD",
];

fn main() {
    if std::env::var_os(RUN).is_some() {
        let backend = products::configure().expect("configured");
        println!("backend: {backend}");
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let db = products::Db::seeded();
        for line in runtime
            .block_on(products::tour(&db))
            .expect("the tour runs")
        {
            println!("{line}");
        }
        return;
    }
    let audit = cachette::audit();
    assert!(audit.is_clean(), "{audit}");
    assert_eq!(audit.functions(), 6, "{audit}");

    let memory = run(None);
    assert_eq!(memory[0], "backend: memory");
    assert_eq!(&memory[1..], TRANSCRIPT, "memory:\n{}", memory.join("\n"));

    let server = RedisServer::start();
    let tiered = run(Some(&server.url()));
    assert_eq!(tiered[0], "backend: tiered");
    assert_eq!(&tiered[1..], TRANSCRIPT, "tiered:\n{}", tiered.join("\n"));
    println!("products_example: ok (memory and tiered, audit clean)");
}

fn run(redis_url: Option<&str>) -> Vec<String> {
    let exe = std::env::current_exe().expect("own path");
    let mut command = Command::new(exe);
    command.env(RUN, "1").env_remove("CACHETTE_DEFAULT_BACKEND");
    match redis_url {
        Some(url) => command.env("CACHETTE_REDIS_URL", url),
        None => command.env_remove("CACHETTE_REDIS_URL"),
    };
    let output = command.output().expect("the run starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the run failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}
