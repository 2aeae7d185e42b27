//! Cross-process single-flight against one real redis-server: 4 OS processes x 1,000 tasks call
//! one cold key at the same moment, the loader runs once in all, and the last caller is done
//! within 1.5x the loader's time (waiters are woken by the fill, not polled to a deadline). The
//! loads are counted in Redis, outside every process. Then a lock holder's process is killed
//! mid-load: another process's caller loads within about one lease.
//!
//! The binary is its own worker: the test (this file's `main`, `harness = false`) re-executes
//! itself with `CACHETTE_MP_ROLE=worker` for each process.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::redis_server::{self, RedisServer};
use support::start_line;

const PROCESSES: usize = 4;
const TASKS_PER_PROCESS: usize = 1_000;
/// Long against what 4,000 cold reads cost before the load starts (a debug build, 2 cores:
/// about 200 ms), so that the bound below is about waking the waiters, not the machine.
const LOAD: Duration = Duration::from_secs(1);
/// The lock's lease (`cache-runtime`'s `LEASE`): how long a dead holder keeps the key.
const LEASE: Duration = Duration::from_secs(3);
const ROLE: &str = "CACHETTE_MP_ROLE";
const URL: &str = "CACHETTE_MP_URL";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("worker") => worker::run(&std::env::var(URL).expect("the parent passes the url")),
        Ok("holder") => worker::hold(&std::env::var(URL).expect("the parent passes the url")),
        _ => {
            four_processes_on_one_cold_key_load_once();
            a_dead_holders_lock_is_taken_over_within_a_lease();
        }
    }
}

fn four_processes_on_one_cold_key_load_once() {
    let server = RedisServer::start();
    let mut redis = server.blocking_connection();

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
    start_line::release(&server.url(), "mp", PROCESSES);

    let mut values = Vec::new();
    let mut slowest = Duration::ZERO;
    for worker in workers {
        let output = worker.wait_with_output().expect("worker exits");
        assert!(
            output.status.success(),
            "a worker failed: {}",
            output.status
        );
        let stdout = String::from_utf8(output.stdout).expect("utf-8");
        for line in stdout.lines() {
            match line.strip_prefix("took_ms ") {
                Some(ms) => slowest = slowest.max(Duration::from_millis(ms.parse().expect("ms"))),
                None => values.push(line.to_owned()),
            }
        }
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
    assert!(
        slowest <= LOAD * 3 / 2,
        "the last caller of a process was done {slowest:?} after its release (loader: {LOAD:?})"
    );
    println!(
        "multi_process: {} calls in {PROCESSES} processes, {loads} load, last done after \
         {slowest:?} (loader {LOAD:?}), value {:?}: ok",
        values.len(),
        values[0]
    );
}

fn a_dead_holders_lock_is_taken_over_within_a_lease() {
    let server = RedisServer::start();
    let mut redis = server.blocking_connection();
    let exe = std::env::current_exe().expect("own path");
    let mut holder = Command::new(&exe)
        .env(ROLE, "holder")
        .env(URL, server.url())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the holder");
    // The holder says when its loader runs, that is, when it holds the lock.
    let loading: Option<(String, String)> = redis::cmd("BLPOP")
        .arg("mp:holding")
        .arg(30)
        .query(&mut redis)
        .expect("blpop");
    assert!(loading.is_some(), "the holder never started loading");
    holder.kill().expect("kill the holder");
    holder.wait().expect("reaped");
    let killed = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let value = runtime.block_on(worker::after_the_holder(&server.url()));
    let took = killed.elapsed();
    assert_eq!(value, "loaded after the holder died");
    assert!(
        took < LEASE + Duration::from_millis(800),
        "a caller waited {took:?} for a dead holder's lock (lease {LEASE:?})"
    );
    println!("multi_process: a dead holder's lock was taken over {took:?} after the kill: ok");
}

mod worker {
    use std::sync::{Arc, OnceLock};

    use cachette::{cached, configure, RedisBackend};
    use tokio::sync::Barrier;

    use super::{redis_server, start_line, LOAD, TASKS_PER_PROCESS};

    static URL: OnceLock<String> = OnceLock::new();

    /// The loader: counts itself in Redis, then takes long enough that every process's tasks
    /// arrive while it runs.
    #[cached(ttl = "60s", key = "mp:product:<id>", backend = "redis")]
    async fn product(id: u64) -> Result<String, String> {
        let mut redis = redis_server::connect(URL.get().expect("set")).await;
        let load: i64 = redis::cmd("INCR")
            .arg("mp:loads")
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(LOAD).await;
        Ok(format!(
            "product {id} from process {} (load {load})",
            std::process::id()
        ))
    }

    pub(super) fn run(url: &str) {
        URL.set(url.to_owned()).expect("once");
        configure_redis(url);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            start_line::arrive(url, "mp").await;

            let barrier = Arc::new(Barrier::new(TASKS_PER_PROCESS));
            let tasks: Vec<_> = (0..TASKS_PER_PROCESS)
                .map(|_| {
                    let barrier = Arc::clone(&barrier);
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let started = std::time::Instant::now();
                        let value = product(1).await;
                        (started, std::time::Instant::now(), value)
                    })
                })
                .collect();
            let mut first_start = None::<std::time::Instant>;
            let mut last_end = None::<std::time::Instant>;
            for task in tasks {
                let (started, ended, value) = task.await.expect("no panic");
                first_start = Some(first_start.map_or(started, |t| t.min(started)));
                last_end = Some(last_end.map_or(ended, |t| t.max(ended)));
                println!("{}", value.expect("loaded"));
            }
            if let (Some(start), Some(end)) = (first_start, last_end) {
                println!("took_ms {}", (end - start).as_millis());
            }
        });
    }

    fn configure_redis(url: &str) {
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
    }

    /// Takes the lock of `held` by loading it, says so, and loads forever (until killed).
    #[cached(ttl = "60s", key = "mp:held", backend = "redis")]
    async fn held() -> String {
        let mut redis = redis_server::connect(URL.get().expect("set")).await;
        let _: i64 = redis::cmd("RPUSH")
            .arg("mp:holding")
            .arg(1)
            .query_async(&mut redis)
            .await
            .expect("rpush");
        std::future::pending::<()>().await;
        unreachable!()
    }

    pub(super) fn hold(url: &str) {
        URL.set(url.to_owned()).expect("once");
        configure_redis(url);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(held());
    }

    #[cached(ttl = "60s", key = "mp:held", backend = "redis")]
    async fn held_elsewhere() -> String {
        "loaded after the holder died".to_owned()
    }

    /// The parent's own call of the key whose holder it killed.
    pub(super) async fn after_the_holder(url: &str) -> String {
        configure_redis(url);
        held_elsewhere().await
    }
}
