//! Refresh-ahead across real processes (issue 15): 4 OS processes x 50 callers hammer one hot
//! key for `RUN` against one real redis-server, on `ttl = "3s", refresh = "2s"` (the refresh
//! interval is 1 s). Checked from Redis, outside every process: the loader ran once to fill the
//! key and then once per refresh, never two loads at once, consecutive loads at least an
//! interval apart; and in every process no caller after the warm-up missed, nor took as long
//! as a load. Once on the tiered backend (the refreshed value reaches the other processes' L1
//! through the bus), once on Redis alone.
//!
//! The binary is its own worker (`harness = false`): the test re-executes itself with
//! `CACHETTE_RP_ROLE=worker` for each process.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::redis_server::{self, RedisServer};
use support::start_line;

const PROCESSES: usize = 4;
const CALLERS_PER_PROCESS: usize = 50;
/// How long the callers hammer the key, from their release.
const RUN: Duration = Duration::from_secs(7);
/// The sites' `refresh`: an entry this old is due.
const REFRESH: Duration = Duration::from_secs(2);
/// The refresh interval: the shorter of `refresh` and `ttl - refresh` (3 s - 2 s).
const INTERVAL: Duration = Duration::from_secs(1);
/// The loader's deliberate sleep: a caller that waited for a load took at least this long.
const LOAD: Duration = Duration::from_millis(200);
/// Wall clocks of processes on one machine agree; this covers stamping a time and the Redis
/// round trip that stores it.
const CLOCK_TOLERANCE: Duration = Duration::from_millis(50);
const ROLE: &str = "CACHETTE_RP_ROLE";
const URL: &str = "CACHETTE_RP_URL";
const BACKEND: &str = "CACHETTE_RP_BACKEND";
/// The loader's records, outside the cache's prefix (`rp`).
const LOADS: &str = "proof:loads";
const STARTS: &str = "proof:starts";
const ENDS: &str = "proof:ends";
/// The second phase: a refresh that fails at once leaves the entry due, and the hits of every
/// process keep finding it due; only the refresh claim's marker keeps them to one attempt per
/// interval between them (the lock is held too briefly to refuse them).
const FAILING_RUN: Duration = Duration::from_millis(2_900);
/// The failing site's `refresh` (ttl 3 s): due from 1 s, interval 1 s.
const FAILING_REFRESH: Duration = Duration::from_secs(1);
const FAILED: &str = "proof:failed";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("worker") => worker::run(
            &std::env::var(URL).expect("the parent passes the url"),
            std::env::var(BACKEND).expect("the parent passes the backend") == "tiered",
        ),
        _ => {
            one_refresh_per_interval_across_processes("tiered");
            one_refresh_per_interval_across_processes("redis");
        }
    }
}

fn now_us() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_micros()).expect("fits")
}

/// What one worker process reports on its stdout.
#[derive(Default, Debug)]
struct Report {
    calls: u64,
    /// Misses (and waits for another process's load) counted by `stats()` after the warm-up.
    misses_after_warmup: u64,
    slowest_after_warmup: Duration,
    refreshes: u64,
}

fn parse(stdout: &str) -> Report {
    let mut report = Report::default();
    for line in stdout.lines() {
        let (name, value) = line.split_once(' ').expect("name value");
        let value: u64 = value.parse().expect("a number");
        match name {
            "calls" => report.calls = value,
            "misses_after_warmup" => report.misses_after_warmup = value,
            "slowest_after_warmup_us" => report.slowest_after_warmup = Duration::from_micros(value),
            "refreshes" => report.refreshes = value,
            other => panic!("unknown report line {other}"),
        }
    }
    report
}

fn one_refresh_per_interval_across_processes(backend: &str) {
    let server = RedisServer::start();
    let mut redis = server.blocking_connection();
    let exe = std::env::current_exe().expect("own path");
    let workers: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .env(ROLE, "worker")
                .env(URL, server.url())
                .env(BACKEND, backend)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a worker process")
        })
        .collect();
    start_line::release(&server.url(), "rp", PROCESSES);

    let mut reports = Vec::new();
    for worker in workers {
        let output = worker.wait_with_output().expect("worker exits");
        assert!(
            output.status.success(),
            "a worker failed: {}",
            output.status
        );
        reports.push(parse(&String::from_utf8(output.stdout).expect("utf-8")));
    }

    let loads: u64 = redis::cmd("GET").arg(LOADS).query(&mut redis).expect("get");
    let starts: HashMap<u64, u64> = redis::cmd("HGETALL")
        .arg(STARTS)
        .query(&mut redis)
        .expect("hgetall");
    let ends: HashMap<u64, u64> = redis::cmd("HGETALL")
        .arg(ENDS)
        .query(&mut redis)
        .expect("hgetall");
    // Load n's span; the last may have been cut short by its process's exit.
    let mut spans: Vec<(u64, Option<u64>)> = starts
        .iter()
        .map(|(n, start)| (*start, ends.get(n).copied()))
        .collect();
    spans.sort_unstable();
    let gaps: Vec<_> = spans
        .windows(2)
        .map(|pair| Duration::from_micros(pair[1].0.saturating_sub(pair[0].0)))
        .collect();
    println!(
        "refresh_processes[{backend}]: {loads} loads in {RUN:?}, starts apart {gaps:?}, \
         per process {reports:?}"
    );

    assert_eq!(spans.len() as u64, loads, "every load recorded its start");
    // A refresh starts only on a hit that finds the entry older than `refresh`, and the entry
    // was filled after the previous load started: loads start at least `REFRESH` apart, so
    // within RUN there is the filling load and at most RUN / REFRESH refreshes (7 s / 2 s: 3;
    // in practice each refresh starts `REFRESH + LOAD` after the one before). One process's
    // extra refresh of an entry another has just replaced would start within the interval of
    // that one, and fail both the count and the spacing below.
    let bound = 1 + RUN.as_micros() / REFRESH.as_micros();
    assert!(
        u128::from(loads) <= bound,
        "{loads} loads in {RUN:?}: more than 1 + one per {REFRESH:?} ({bound})"
    );
    // Callers kept the key hot all along: the entry never expired (which would show as misses
    // below), so at least two refreshes ran (due at about 2.2 s and 4.4 s).
    assert!(loads >= 3, "{loads} loads: the key was not refreshed");
    for (pair, gap) in spans.windows(2).zip(&gaps) {
        let (_, end) = pair[0];
        let end = end.expect("only the last load may be cut short by its process's exit");
        assert!(
            pair[1].0 >= end,
            "a load started {} us before the one before it ended: {spans:?}",
            end - pair[1].0
        );
        assert!(
            *gap + CLOCK_TOLERANCE >= INTERVAL,
            "two loads started {gap:?} apart, within the refresh interval {INTERVAL:?}"
        );
    }
    for report in &reports {
        assert!(report.calls > 0, "a worker made no call");
        assert_eq!(
            report.misses_after_warmup, 0,
            "a caller missed after the warm-up: {report:?}"
        );
        assert!(
            report.slowest_after_warmup < LOAD,
            "a caller after the warm-up took {:?}, as long as a load: {report:?}",
            report.slowest_after_warmup
        );
    }
    // Phase 2: attempts at about 1 s and 2 s after the fill, none within an interval of another.
    let failed: u64 = redis::cmd("GET")
        .arg(FAILED)
        .query::<Option<u64>>(&mut redis)
        .expect("get")
        .unwrap_or(0);
    let failed_bound = FAILING_RUN.as_micros() / FAILING_REFRESH.as_micros();
    println!("refresh_processes[{backend}]: {failed} failing refreshes in {FAILING_RUN:?}");
    assert!(
        u128::from(failed) <= failed_bound,
        "{failed} failing refreshes across {PROCESSES} processes in {FAILING_RUN:?}: more than one \
         per interval ({failed_bound})"
    );
    assert!(failed >= 1, "the failing key was never refreshed");
    println!("refresh_processes[{backend}]: ok");
}

mod worker {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    use cachette::{cached, configure, stats, RedisBackend, TieredBackend};

    use super::{
        now_us, redis_server, start_line, CALLERS_PER_PROCESS, ENDS, FAILED, FAILING_RUN, LOAD,
        LOADS, PROCESSES, RUN, STARTS,
    };

    static URL: OnceLock<String> = OnceLock::new();

    /// Counts itself in Redis, records when it started and ended, and takes `LOAD`.
    async fn load() -> Result<u64, String> {
        let mut redis = redis_server::connect(URL.get().expect("set")).await;
        let started = now_us();
        let load: u64 = redis::cmd("INCR")
            .arg(LOADS)
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        let () = redis::cmd("HSET")
            .arg(STARTS)
            .arg(load)
            .arg(started)
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(LOAD).await;
        let () = redis::cmd("HSET")
            .arg(ENDS)
            .arg(load)
            .arg(now_us())
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        Ok(load)
    }

    #[cached(ttl = "3s", refresh = "2s", key = "hot:<id>", backend = "tiered")]
    async fn hot_tiered(id: u64) -> Result<u64, String> {
        let _ = id;
        load().await
    }

    #[cached(ttl = "3s", refresh = "2s", key = "hot:<id>", backend = "redis")]
    async fn hot_redis(id: u64) -> Result<u64, String> {
        let _ = id;
        load().await
    }

    /// Loads once, then every refresh fails at once (counted in Redis).
    async fn fails_after_the_first() -> Result<u64, String> {
        let mut redis = redis_server::connect(URL.get().expect("set")).await;
        let first: bool = redis::cmd("SET")
            .arg("proof:filled")
            .arg(1)
            .arg("NX")
            .query_async::<Option<String>>(&mut redis)
            .await
            .map_err(|e| e.to_string())?
            .is_some();
        if first {
            return Ok(0);
        }
        let _: u64 = redis::cmd("INCR")
            .arg(FAILED)
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        Err("the source is down".to_owned())
    }

    #[cached(ttl = "3s", refresh = "1s", key = "failing:<id>", backend = "tiered")]
    async fn failing_tiered(id: u64) -> Result<u64, String> {
        let _ = id;
        fails_after_the_first().await
    }

    #[cached(ttl = "3s", refresh = "1s", key = "failing:<id>", backend = "redis")]
    async fn failing_redis(id: u64) -> Result<u64, String> {
        let _ = id;
        fails_after_the_first().await
    }

    async fn failing(tiered: bool) -> Result<u64, String> {
        if tiered {
            failing_tiered(1).await
        } else {
            failing_redis(1).await
        }
    }

    async fn hot(tiered: bool) -> Result<u64, String> {
        if tiered {
            hot_tiered(1).await
        } else {
            hot_redis(1).await
        }
    }

    fn misses() -> u64 {
        stats().sites.iter().map(|site| site.misses).sum()
    }

    pub(super) fn run(url: &str, tiered: bool) {
        URL.set(url.to_owned()).expect("once");
        let l2 = || {
            RedisBackend::builder()
                .url(url)
                .prefix("rp")
                .build()
                .expect("valid configuration")
        };
        if tiered {
            configure().tiered("tiered", TieredBackend::builder(l2()).build())
        } else {
            configure().redis("redis", l2())
        }
        .install()
        .expect("configured once");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            start_line::arrive(url, "rp").await;
            let released = Instant::now();
            // The warm-up: every caller's first call, on the cold key (one load in all
            // processes; the others wait for it).
            let warmups: Vec<_> = (0..CALLERS_PER_PROCESS)
                .map(|_| tokio::spawn(async move { hot(tiered).await }))
                .collect();
            for warmup in warmups {
                warmup.await.expect("no panic").expect("loaded");
            }
            let misses_at_warmup = misses();
            let calls = Arc::new(AtomicU64::new(0));
            let callers: Vec<_> = (0..CALLERS_PER_PROCESS)
                .map(|_| {
                    let calls = Arc::clone(&calls);
                    tokio::spawn(async move {
                        let mut slowest = Duration::ZERO;
                        while released.elapsed() < RUN {
                            let started = Instant::now();
                            hot(tiered).await.expect("a value");
                            slowest = slowest.max(started.elapsed());
                            calls.fetch_add(1, Ordering::Relaxed);
                            // A hit may never yield: let the other callers and the
                            // refresh run, at about a thousand calls a second per caller.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        slowest
                    })
                })
                .collect();
            let mut slowest = Duration::ZERO;
            for caller in callers {
                slowest = slowest.max(caller.await.expect("no panic"));
            }
            let refreshes: u64 = stats().sites.iter().map(|site| site.refreshes).sum();
            println!("calls {}", calls.load(Ordering::Relaxed));
            println!("misses_after_warmup {}", misses() - misses_at_warmup);
            println!("slowest_after_warmup_us {}", slowest.as_micros());
            println!("refreshes {refreshes}");

            // Phase 2, all processes together again.
            start_line::meet(url, "rp2", PROCESSES).await;
            let met = Instant::now();
            failing(tiered).await.expect("the first load");
            let callers: Vec<_> = (0..CALLERS_PER_PROCESS)
                .map(|_| {
                    tokio::spawn(async move {
                        while met.elapsed() < FAILING_RUN {
                            assert_eq!(failing(tiered).await, Ok(0), "the entry as it was");
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    })
                })
                .collect();
            for caller in callers {
                caller.await.expect("no panic");
            }
        });
    }
}
