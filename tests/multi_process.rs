//! Cross-process single-flight against one real redis-server: 4 OS processes x 50 tasks call
//! one cold key at the same moment, and the loader runs once in all. The loads are counted in
//! Redis, outside every process.
//!
//! The binary is its own worker: the test (this file's `main`, `harness = false`) re-executes
//! itself with `CACHET_MP_ROLE=worker` for each process.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::redis_server::RedisServer;
use support::start_line;

const PROCESSES: usize = 4;
const TASKS_PER_PROCESS: usize = 50;
const ROLE: &str = "CACHET_MP_ROLE";
const URL: &str = "CACHET_MP_URL";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("worker") => worker::run(&std::env::var(URL).expect("the parent passes the url")),
        _ => four_processes_on_one_cold_key_load_once(),
    }
}

fn four_processes_on_one_cold_key_load_once() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).expect("valid url");
    let mut redis = client.get_connection().expect("connect");

    let exe = std::env::current_exe().expect("own path");
    let workers: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .env(ROLE, "worker")
                .env(URL, server.url())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a worker process")
        })
        .collect();
    // Each worker announces itself once connected; then all are released at once.
    start_line::release(&mut redis, "mp", PROCESSES);

    let mut values = Vec::new();
    for worker in workers {
        let output = worker.wait_with_output().expect("worker exits");
        assert!(
            output.status.success(),
            "a worker failed: {}",
            output.status
        );
        let stdout = String::from_utf8(output.stdout).expect("utf-8");
        values.extend(stdout.lines().map(str::to_owned));
    }
    let loads: i64 = redis::cmd("GET")
        .arg("mp:loads")
        .query(&mut redis)
        .expect("get");

    assert_eq!(values.len(), PROCESSES * TASKS_PER_PROCESS);
    assert!(
        values.iter().all(|value| value == &values[0]),
        "every caller in every process got the one loaded value: {:?}",
        values.iter().collect::<std::collections::BTreeSet<_>>()
    );
    assert_eq!(
        loads, 1,
        "{PROCESSES} processes x {TASKS_PER_PROCESS} tasks ran the loader {loads} times"
    );
    println!(
        "multi_process: {} calls in {PROCESSES} processes, {loads} load, value {:?}: ok",
        values.len(),
        values[0]
    );
}

mod worker {
    use std::sync::{Arc, OnceLock};

    use cachet::{cached, configure, RedisBackend};
    use tokio::sync::Barrier;

    use super::{start_line, Duration, TASKS_PER_PROCESS};

    static URL: OnceLock<String> = OnceLock::new();

    /// The loader: counts itself in Redis, then takes long enough that every process's tasks
    /// arrive while it runs.
    #[cached(ttl = "60s", key = "mp:product:<id>", backend = "redis")]
    async fn product(id: u64) -> Result<String, String> {
        let client =
            redis::Client::open(URL.get().expect("set").as_str()).map_err(|e| e.to_string())?;
        let mut redis = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let load: i64 = redis::cmd("INCR")
            .arg("mp:loads")
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(format!(
            "product {id} from process {} (load {load})",
            std::process::id()
        ))
    }

    pub(super) fn run(url: &str) {
        URL.set(url.to_owned()).expect("once");
        configure()
            .redis(
                "redis",
                RedisBackend::builder()
                    .url(url)
                    .prefix("mp")
                    .build()
                    .expect("valid configuration"),
            )
            .install()
            .expect("configured once");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let client = redis::Client::open(url).expect("valid url");
            let redis = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            start_line::arrive(&redis, "mp").await;

            let barrier = Arc::new(Barrier::new(TASKS_PER_PROCESS));
            let tasks: Vec<_> = (0..TASKS_PER_PROCESS)
                .map(|_| {
                    let barrier = Arc::clone(&barrier);
                    tokio::spawn(async move {
                        barrier.wait().await;
                        product(1).await
                    })
                })
                .collect();
            for task in tasks {
                let value = task.await.expect("no panic").expect("loaded");
                println!("{value}");
            }
        });
    }
}
