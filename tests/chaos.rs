//! The chaos run: the failure paths, proven from the outside (issue 11).
//!
//! A controller (this binary's `main`) starts two real `redis-server`s: the CACHE redis, which
//! it faults, and a DATABASE redis, never faulted, which plays the service's database (each
//! key's current version, incremented by writers). It re-executes itself as `WORKERS` worker
//! processes. Each worker has four cached sites over the cache redis: a `Result` and an `Option`
//! site on `backend = "redis"`, and the same two on `backend = "tiered"`. For `CACHETTE_CHAOS_SECS`
//! (default 20 s) readers call the sites over 16 keys (4 of them hot) while a writer per worker increments
//! a key's version in the database and then calls the `#[invalidates]` function for it. Loaders
//! read the version, take 5-50 ms, and at random panic, return `Err` or `None`; some callers are
//! cancelled mid-load (a short `tokio::time::timeout` drops the future while the body runs).
//! Meanwhile the controller, at random, pauses the cache redis (SIGSTOP, under a second), kills
//! and restarts it on its port, and kills the bus subscribers (`CLIENT KILL TYPE pubsub`).
//!
//! Every operation is logged with its start and end (wall-clock microseconds, shared by the
//! processes), and every loader invocation with the id of the call whose body it is (a task
//! local: the flight's leader runs the body in its own caller's task), so the checker can tell
//! "my own loader failed" from "the cache failed me". The history checker then counts:
//! 1. **failed calls**: a call that returned `Err`, `None` or panicked although its own body did
//!    not produce that outcome, or that hit the 30 s hard deadline. A `None` is also accounted
//!    for when a load of the same key and site in the same process returned `None` while the call
//!    ran: followers of a flight share its `None` by design (ARCHITECTURE, single-flight).
//! 2. **slow calls**: calls that took longer than `2 x op_timeout + loader time` and do not
//!    overlap a pause. *Loader time* is the loader work on that call's key and site that ran while
//!    the call ran: the durations of every load of that key and site, in any process, clipped to
//!    the call's interval, summed. Why not a fixed `2 x max load`: a caller may legitimately sit
//!    through a chain of loads, each by a leader or lock holder that panicked, was cancelled,
//!    returned `Err`/`None`, or saw its fill refused by an invalidation, and then run its own
//!    (with an invalidation every ~400 ms per hot key such chains are common), so a fixed bound
//!    would fail correct code. The sum never flags waiting for real loader work, and it does flag
//!    waiting for nothing: a caller blocked on a lease nobody holds, or a wedged flight, while no
//!    load of its key runs. The fixed reading (`2 x op_timeout + 2 x 50 ms`) is printed too.
//! 3. **stale reads**: a read that began at `s` and returned version `v` is stale when a write of
//!    the same key was acknowledged (its invalidation returned) at `a` with a version `w > v` and
//!    `a + BUS_BOUND < s`. Reads that begin inside a fault window or within its grace after it
//!    ends are excused (counted apart): after a pause or restart, `OUTAGE_GRACE` = the breaker's
//!    probe interval (1 s, fixed in the runtime) + op_timeout (the last failing operation may end
//!    that late) + heartbeat + op_timeout (the bus notices and resubscribes) + BUS_BOUND = 1.8 s;
//!    after a subscriber kill, `BUS_GRACE` = heartbeat + op_timeout + BUS_BOUND = 0.6 s.
//! 4. **keys not fresh**: after the run, with the cache redis healthy and nobody writing, each
//!    worker polls every key on every site until it returns the database's version, for at most
//!    `FRESH_BOUND`; the keys that never did are reported. No worker exits before all have
//!    checked: an invalidation a worker could not deliver in the last outage is replayed from
//!    its process's queue, which exits with it.
//!
//! Any non-zero count fails the run (exit 1, with examples), and so does a run too thin to mean
//! anything (too few calls or writes, a kind of fault or injection that never happened). The seed is printed;
//! `CACHETTE_CHAOS_SEED` replays the same schedule of choices (faults, plans, keys), though not
//! the same interleaving. `CACHETTE_CHAOS_LOG=<file>` writes the merged history there.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::redis_server::{self, RedisServer};
use support::start_line;

const WORKERS: usize = 3;
const READERS_PER_WORKER: usize = 6;
/// Keys `0..HOT_KEYS` get half of all reads and writes, so they are hot and contended; the
/// other half spreads over the warm keys, each written about once a second, so that an
/// invalidation lost in an outage is not soon healed by the next write of its key.
const HOT_KEYS: u32 = 4;
const KEYS: u32 = 16;
const OP_TIMEOUT: Duration = Duration::from_millis(200);
const OP_TIMEOUT_US: u64 = OP_TIMEOUT.as_micros() as u64;
const HEARTBEAT: Duration = Duration::from_millis(200);
/// The circuit breaker's probe interval: the runtime's default, not configurable.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long after an invalidation returns a read may still see the old value: one pub/sub
/// delivery on loopback, with a wide margin for a loaded 2-core machine.
const BUS_BOUND: Duration = Duration::from_millis(200);
/// After a pause or a restart: see the module comment (1.8 s).
const OUTAGE_GRACE: Duration = PROBE_INTERVAL
    .saturating_add(OP_TIMEOUT)
    .saturating_add(BUS_GRACE);
/// After a subscriber kill: see the module comment (0.6 s).
const BUS_GRACE: Duration = HEARTBEAT
    .saturating_add(OP_TIMEOUT)
    .saturating_add(BUS_BOUND);
const MIN_LOAD_MS: u64 = 5;
const MAX_LOAD_MS: u64 = 50;
/// Every call is bounded by this; reaching it counts as a failed call.
const HARD_DEADLINE: Duration = Duration::from_secs(30);
/// After the run, how long a key may take to show its fresh version on every site.
const FRESH_BOUND: Duration = Duration::from_secs(5);
const DEFAULT_SECS: u64 = 20;

const ROLE: &str = "CACHETTE_CHAOS_ROLE";
const CACHE_URL: &str = "CACHETTE_CHAOS_CACHE_URL";
const DB_URL: &str = "CACHETTE_CHAOS_DB_URL";
const WORKER_INDEX: &str = "CACHETTE_CHAOS_WORKER";
const WORKER_SEED: &str = "CACHETTE_CHAOS_WORKER_SEED";
const RUN_SECS: &str = "CACHETTE_CHAOS_SECS";
const SEED: &str = "CACHETTE_CHAOS_SEED";
const LOG: &str = "CACHETTE_CHAOS_LOG";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("worker") => worker::run(),
        _ => {
            // The servers are stopped when `controller` returns, before the exit.
            if let Err(problems) = controller() {
                for problem in &problems {
                    eprintln!("chaos: FAILED: {problem}");
                }
                std::process::exit(1);
            }
        }
    }
}

fn now_us() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_micros()).expect("fits")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).expect("fits")
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|value| {
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}"))
    })
}

fn run_length() -> Duration {
    Duration::from_secs(env_u64(RUN_SECS).unwrap_or(DEFAULT_SECS))
}

/// The kinds of fault the controller injects into the cache redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    Pause,
    Restart,
    SubscriberKill,
}

impl FaultKind {
    const ALL: [FaultKind; 3] = [
        FaultKind::Pause,
        FaultKind::Restart,
        FaultKind::SubscriberKill,
    ];

    fn grace(self) -> Duration {
        match self {
            FaultKind::Pause | FaultKind::Restart => OUTAGE_GRACE,
            FaultKind::SubscriberKill => BUS_GRACE,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    kind: FaultKind,
    start: u64,
    end: u64,
}

/// The whole run; `Err` holds what failed.
fn controller() -> Result<(), Vec<String>> {
    let run = run_length();
    let seed = env_u64(SEED).unwrap_or_else(|| {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(now_us())
    });
    println!(
        "chaos: seed {seed} (replay: {SEED}={seed}), {} s, {WORKERS} workers x \
         {READERS_PER_WORKER} readers + 1 writer, {KEYS} keys, op_timeout {OP_TIMEOUT:?}",
        run.as_secs()
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut cache = RedisServer::start();
    let database = RedisServer::start();

    let exe = std::env::current_exe().expect("own path");
    let mut pids = Vec::new();
    let (done_tx, done) = mpsc::channel();
    for index in 0..WORKERS {
        let child: Child = Command::new(&exe)
            .env(ROLE, "worker")
            .env(CACHE_URL, cache.url())
            .env(DB_URL, database.url())
            .env(WORKER_INDEX, index.to_string())
            .env(WORKER_SEED, rng.u64(..).to_string())
            .env(RUN_SECS, run.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker process");
        pids.push(child.id());
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let _ = done_tx.send((index, child.wait_with_output()));
        });
    }
    drop(done_tx);

    let started = Instant::now();
    start_line::release(&database.url(), "chaos:start", WORKERS);
    let released_at = now_us();
    let faults = inject_faults(&mut cache, run, &mut rng);
    let timeline: Vec<String> = faults
        .iter()
        .map(|fault| {
            format!(
                "{:?} at {:.2} s for {} ms",
                fault.kind,
                (fault.start - released_at) as f64 / 1e6,
                (fault.end - fault.start) / 1_000
            )
        })
        .collect();
    println!("chaos: faults: {}", timeline.join(", "));
    // The cache redis is healthy again (every fault ends with it running); the workers check
    // that every key reaches its fresh version.
    start_line::release(&database.url(), "chaos:settle", WORKERS);

    let deadline = Instant::now() + FRESH_BOUND + HARD_DEADLINE;
    let mut logs = vec![String::new(); WORKERS];
    for _ in 0..WORKERS {
        let left = deadline.saturating_duration_since(Instant::now());
        match done.recv_timeout(left) {
            Ok((index, output)) => {
                let output = output.expect("wait for a worker");
                if !output.status.success() {
                    return Err(vec![format!("worker {index} failed: {}", output.status)]);
                }
                logs[index] = String::from_utf8(output.stdout).expect("utf-8");
            }
            Err(_) => {
                for pid in &pids {
                    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                }
                return Err(vec![
                    "a worker did not finish within its hard deadline (killed)".to_owned(),
                ]);
            }
        }
    }
    let elapsed = started.elapsed();
    if let Ok(path) = std::env::var(LOG) {
        let mut history: String = faults
            .iter()
            .map(|f| format!("fault {:?} {} {}\n", f.kind, f.start, f.end))
            .collect();
        logs.iter().for_each(|log| history.push_str(log));
        std::fs::write(&path, history).expect("write the history");
        println!("chaos: history written to {path}");
    }
    let history = History::parse(&logs, faults);
    let report = history.check();
    println!("{}", report.summary(elapsed));
    let mut problems = report.problems();
    if problems.is_empty() {
        println!("chaos: ok");
        return Ok(());
    }
    problems.push(format!("replay with {SEED}={seed}"));
    Err(problems)
}

/// Injects faults at random times for `run`; each kind at least once in every three, so even a
/// short run has all of them. Gaps of 2-5 s leave time in between where nothing is excused.
fn inject_faults(cache: &mut RedisServer, run: Duration, rng: &mut fastrand::Rng) -> Vec<Fault> {
    let end = Instant::now() + run;
    let mut faults = Vec::new();
    let mut next: Vec<FaultKind> = Vec::new();
    loop {
        let gap = Duration::from_millis(rng.u64(2_000..5_000));
        if Instant::now() + gap >= end {
            // Scheduling the end of the run, not waiting for a condition.
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            break;
        }
        std::thread::sleep(gap);
        if next.is_empty() {
            next = FaultKind::ALL.to_vec();
            rng.shuffle(&mut next);
        }
        let kind = next.pop().expect("refilled");
        let start = now_us();
        match kind {
            FaultKind::Pause => {
                cache.pause();
                // The length of the pause is the fault itself.
                std::thread::sleep(Duration::from_millis(rng.u64(100..900)));
                cache.resume();
            }
            FaultKind::Restart => cache.restart(),
            FaultKind::SubscriberKill => {
                let mut redis = cache.blocking_connection();
                let _: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query(&mut redis)
                    .expect("client kill");
            }
        }
        faults.push(Fault {
            kind,
            start,
            end: now_us(),
        });
    }
    faults
}

/// One cached call, as a worker logged it.
#[derive(Debug, Clone)]
struct Call {
    proc: u32,
    id: u64,
    site: String,
    key: u32,
    start: u64,
    end: u64,
    /// `v<version>`, `err`, `none`, `panic`, `cancelled` or `deadline`.
    result: String,
}

/// One loader invocation: the body of call `id` of process `proc`.
#[derive(Debug, Clone)]
struct Load {
    proc: u32,
    id: u64,
    start: u64,
    end: u64,
    /// `v<version>`, `err`, `none`, `panic` or `cancelled`.
    outcome: String,
}

#[derive(Debug, Clone)]
struct Fresh {
    proc: u32,
    site: String,
    key: u32,
    want: u64,
    got: String,
    elapsed_us: u64,
    /// `ok`, `late` (fresh, but past the bound) or `stale`.
    verdict: String,
}

#[derive(Default)]
struct History {
    calls: Vec<Call>,
    loads_by_call: HashMap<(u32, u64), Load>,
    /// Per (site, key), sorted by start.
    loads_by_key: HashMap<(String, u32), Vec<Load>>,
    /// Per key: (acknowledged at, version), sorted by acknowledgement.
    writes: HashMap<u32, Vec<(u64, u64)>>,
    write_count: usize,
    write_failures: Vec<String>,
    faults: Vec<Fault>,
    fresh: Vec<Fresh>,
    l1_flushes: Vec<u64>,
    longest_load_us: u64,
}

impl History {
    /// Lines: `call <proc> <id> read <site> <key> <start> <end> <result>`,
    /// `call <proc> <id> write all <key> <start> <end> <result>`,
    /// `load <proc> <id> <site> <key> <start> <end> <outcome>`,
    /// `fresh <proc> <site> <key> <want> <got> <elapsed_us> <ok|stale>`, `stats <proc> <flushes>`.
    fn parse(logs: &[String], faults: Vec<Fault>) -> History {
        let mut history = History {
            faults,
            ..History::default()
        };
        for line in logs.iter().flat_map(|log| log.lines()) {
            let f: Vec<&str> = line.split(' ').collect();
            let n = |i: usize| -> u64 {
                f[i].parse()
                    .unwrap_or_else(|_| panic!("field {i} of {line:?} is a number"))
            };
            match f[0] {
                "call" if f[3] == "read" => history.calls.push(Call {
                    proc: n(1) as u32,
                    id: n(2),
                    site: f[4].to_owned(),
                    key: n(5) as u32,
                    start: n(6),
                    end: n(7),
                    result: f[8].to_owned(),
                }),
                "call" if f[3] == "write" => {
                    history.write_count += 1;
                    match f[8].strip_prefix('v') {
                        Some(version) => history
                            .writes
                            .entry(n(5) as u32)
                            .or_default()
                            .push((n(7), version.parse().expect("a version"))),
                        None => history.write_failures.push(line.to_owned()),
                    }
                }
                "load" => {
                    let load = Load {
                        proc: n(1) as u32,
                        id: n(2),
                        start: n(5),
                        end: n(6),
                        outcome: f[7].to_owned(),
                    };
                    history.longest_load_us = history.longest_load_us.max(load.end - load.start);
                    history
                        .loads_by_call
                        .insert((load.proc, load.id), load.clone());
                    history
                        .loads_by_key
                        .entry((f[3].to_owned(), n(4) as u32))
                        .or_default()
                        .push(load);
                }
                "fresh" => history.fresh.push(Fresh {
                    proc: n(1) as u32,
                    site: f[2].to_owned(),
                    key: n(3) as u32,
                    want: n(4),
                    got: f[5].to_owned(),
                    elapsed_us: n(6),
                    verdict: f[7].to_owned(),
                }),
                "stats" => history.l1_flushes.push(n(2)),
                _ => panic!("unexpected line {line:?}"),
            }
        }
        for loads in history.loads_by_key.values_mut() {
            loads.sort_by_key(|load| load.start);
        }
        for writes in history.writes.values_mut() {
            writes.sort_unstable();
        }
        history
    }

    fn check(&self) -> Report {
        let mut report = Report {
            calls: self.calls.len(),
            writes: self.write_count,
            write_failures: self.write_failures.clone(),
            loads: self.loads_by_call.len(),
            l1_flushes: self.l1_flushes.clone(),
            ..Report::default()
        };
        for fault in &self.faults {
            match fault.kind {
                FaultKind::Pause => report.pauses += 1,
                FaultKind::Restart => report.restarts += 1,
                FaultKind::SubscriberKill => report.subscriber_kills += 1,
            }
        }
        for load in self.loads_by_call.values() {
            match load.outcome.as_str() {
                "panic" => report.injected_panics += 1,
                "err" => report.injected_errs += 1,
                "none" => report.injected_nones += 1,
                "cancelled" => report.cancelled_loads += 1,
                _ => {}
            }
        }
        for call in &self.calls {
            let own = self.loads_by_call.get(&(call.proc, call.id));
            report.served_without_own_load += usize::from(own.is_none());
            if call.result == "cancelled" {
                report.cancelled_calls += 1;
            }
            self.check_outcome(call, own, &mut report);
            self.check_latency(call, &mut report);
            self.check_staleness(call, &mut report);
        }
        report.fresh_checked = self.fresh.len();
        report.not_fresh = self
            .fresh
            .iter()
            .filter(|f| f.verdict != "ok")
            .cloned()
            .collect();
        report.slowest_fresh_us = self.fresh.iter().map(|f| f.elapsed_us).max().unwrap_or(0);
        report
    }

    /// Check 1: an `Err`, `None` or panic must be the call's own body's, or (`None` only) a
    /// same-process flight's it followed; a call that never returned failed.
    fn check_outcome(&self, call: &Call, own: Option<&Load>, report: &mut Report) {
        let own_outcome = own.map(|load| load.outcome.as_str());
        let failed = match call.result.as_str() {
            "deadline" => true,
            "err" | "panic" => own_outcome != Some(call.result.as_str()),
            "none" if own_outcome == Some("none") => false,
            "none" => {
                let shared = self
                    .loads_by_key
                    .get(&(call.site.clone(), call.key))
                    .is_some_and(|loads| {
                        loads.iter().any(|load| {
                            // The leader's flight stays joinable after its loader returned
                            // None, while it releases its Redis lock (one operation, bounded
                            // by op_timeout): a caller arriving then shares that None.
                            load.proc == call.proc
                                && load.outcome == "none"
                                && load.end + OP_TIMEOUT_US >= call.start
                                && load.end <= call.end
                        })
                    });
                report.shared_nones += usize::from(shared);
                !shared
            }
            _ => false,
        };
        if failed {
            report.failed.push(
                &call.site,
                format!(
                    "{call:?} (its own loader: {})",
                    own_outcome.unwrap_or("did not run")
                ),
            );
        }
    }

    /// Check 2: outside pauses, a call takes at most 2 x op_timeout + the loader work on its key
    /// that ran meanwhile.
    fn check_latency(&self, call: &Call, report: &mut Report) {
        if call.result == "cancelled" {
            return;
        }
        let paused = self.faults.iter().any(|fault| {
            fault.kind == FaultKind::Pause && call.start < fault.end && call.end > fault.start
        });
        if paused {
            report.calls_in_pauses += 1;
            return;
        }
        let took = call.end - call.start;
        report.slowest_call_us = report.slowest_call_us.max(took);
        let loader_us: u64 = self
            .loads_by_key
            .get(&(call.site.clone(), call.key))
            .map(|loads| {
                // Loads are sorted by start, and none lasts longer than the longest.
                let first =
                    loads.partition_point(|load| load.start + self.longest_load_us < call.start);
                loads[first..]
                    .iter()
                    .take_while(|load| load.start < call.end)
                    .map(|load| {
                        load.end
                            .min(call.end)
                            .saturating_sub(load.start.max(call.start))
                    })
                    .sum()
            })
            .unwrap_or(0);
        if took > 2 * micros(OP_TIMEOUT) + 2 * MAX_LOAD_MS * 1_000 {
            report.slow_fixed_bound += 1;
        }
        if took > 2 * micros(OP_TIMEOUT) + loader_us {
            report.slow.push(
                &call.site,
                format!(
                    "{call:?} took {} ms; loads of its key meanwhile: {} ms",
                    took / 1_000,
                    loader_us / 1_000
                ),
            );
        }
    }

    /// Check 3: a read may not miss an invalidation acknowledged more than BUS_BOUND before it
    /// began, unless it began in a fault window or its grace.
    fn check_staleness(&self, call: &Call, report: &mut Report) {
        let Some(version) = call.result.strip_prefix('v') else {
            return;
        };
        report.reads_with_value += 1;
        let version: u64 = version.parse().expect("a version");
        let Some(writes) = self.writes.get(&call.key) else {
            return;
        };
        let acknowledged = writes.partition_point(|&(at, _)| at + micros(BUS_BOUND) < call.start);
        let Some(&(at, newest)) = writes[..acknowledged].iter().max_by_key(|&&(_, v)| v) else {
            return;
        };
        if newest <= version {
            return;
        }
        let excused = self.faults.iter().any(|fault| {
            call.start >= fault.start && call.start <= fault.end + micros(fault.kind.grace())
        });
        if excused {
            report.stale_excused += 1;
        } else {
            report.stale.push(
                &call.site,
                format!(
                "{call:?} read v{version}, but v{newest} was acknowledged {} ms before it began",
                (call.start - at) / 1_000
            ),
            );
        }
    }
}

/// What one check found: a count per site, and the findings themselves.
#[derive(Debug, Default)]
struct Findings {
    by_site: std::collections::BTreeMap<String, usize>,
    examples: Vec<String>,
}

impl Findings {
    fn push(&mut self, site: &str, finding: String) {
        *self.by_site.entry(site.to_owned()).or_default() += 1;
        self.examples.push(finding);
    }

    fn len(&self) -> usize {
        self.examples.len()
    }

    fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }
}

/// The count, then the count per site: `36 (tiered-option 30, redis-result 6)`.
impl std::fmt::Display for Findings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.len())?;
        if !self.is_empty() {
            let sites: Vec<String> = self
                .by_site
                .iter()
                .map(|(site, count)| format!("{site} {count}"))
                .collect();
            write!(f, " ({})", sites.join(", "))?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Report {
    calls: usize,
    reads_with_value: usize,
    served_without_own_load: usize,
    loads: usize,
    writes: usize,
    write_failures: Vec<String>,
    injected_panics: usize,
    injected_errs: usize,
    injected_nones: usize,
    cancelled_loads: usize,
    cancelled_calls: usize,
    shared_nones: usize,
    pauses: usize,
    restarts: usize,
    subscriber_kills: usize,
    calls_in_pauses: usize,
    slowest_call_us: u64,
    slow_fixed_bound: usize,
    stale_excused: usize,
    fresh_checked: usize,
    slowest_fresh_us: u64,
    l1_flushes: Vec<u64>,
    failed: Findings,
    slow: Findings,
    stale: Findings,
    not_fresh: Vec<Fresh>,
}

impl Report {
    fn summary(&self, elapsed: Duration) -> String {
        format!(
            "chaos: {} calls ({:.1}% served without running their own loader), {} loader calls, \
             {} writes; injected: {} panics, {} errs, {} nones, {} cancelled calls ({} mid-load); \
             faults: {} pauses, {} restarts, {} subscriber kills; L1 flushes per worker {:?}; \
             {} shared nones; slowest call outside pauses {} ms ({} calls overlapped a pause, \
             {} over the fixed 2 x op_timeout + 2 x {MAX_LOAD_MS} ms reading); {} stale reads \
             excused by a fault window; fresh check: {} keys x sites, slowest {} ms; run {:.1} s\n\
             chaos: 1. failed calls: {}\n\
             chaos: 2. slow calls (> 2 x op_timeout + loader time, outside pauses): {}\n\
             chaos: 3. stale reads (past the {BUS_BOUND:?} bus bound, redis reachable): {}\n\
             chaos: 4. keys not fresh {FRESH_BOUND:?} after the run: {} of {}",
            self.calls,
            100.0 * self.served_without_own_load as f64 / self.calls.max(1) as f64,
            self.loads,
            self.writes,
            self.injected_panics,
            self.injected_errs,
            self.injected_nones,
            self.cancelled_calls,
            self.cancelled_loads,
            self.pauses,
            self.restarts,
            self.subscriber_kills,
            self.l1_flushes,
            self.shared_nones,
            self.slowest_call_us / 1_000,
            self.calls_in_pauses,
            self.slow_fixed_bound,
            self.stale_excused,
            self.fresh_checked,
            self.slowest_fresh_us / 1_000,
            elapsed.as_secs_f64(),
            self.failed,
            self.slow,
            self.stale,
            self.not_fresh.len(),
            self.fresh_checked,
        )
    }

    /// What fails the run: the four counts, and a run too thin to mean anything.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let examples = |list: &[String]| -> String {
            list.iter()
                .take(5)
                .map(|line| format!("\n    {line}"))
                .collect()
        };
        if !self.failed.is_empty() {
            problems.push(format!(
                "{} calls failed (fail-open broken):{}",
                self.failed.len(),
                examples(&self.failed.examples)
            ));
        }
        if !self.slow.is_empty() {
            problems.push(format!(
                "{} calls took longer than 2 x op_timeout + loader time outside pauses:{}",
                self.slow.len(),
                examples(&self.slow.examples)
            ));
        }
        if !self.stale.is_empty() {
            problems.push(format!(
                "{} reads returned a version older than an invalidation acknowledged more than \
                 {BUS_BOUND:?} before, with redis reachable:{}",
                self.stale.len(),
                examples(&self.stale.examples)
            ));
        }
        if !self.not_fresh.is_empty() {
            let keys: Vec<String> = self
                .not_fresh
                .iter()
                .map(|f| {
                    format!(
                        "worker {} site {} key {}: wanted v{}, got {} after {} ms ({})",
                        f.proc,
                        f.site,
                        f.key,
                        f.want,
                        f.got,
                        f.elapsed_us / 1_000,
                        f.verdict
                    )
                })
                .collect();
            problems.push(format!(
                "{} keys x sites did not reach their fresh version within {FRESH_BOUND:?}:{}",
                keys.len(),
                examples(&keys)
            ));
        }
        if !self.write_failures.is_empty() {
            problems.push(format!(
                "{} writes failed:{}",
                self.write_failures.len(),
                examples(&self.write_failures)
            ));
        }
        let thin = [
            (self.calls < 1_000, "fewer than 1,000 calls"),
            (self.writes < 50, "fewer than 50 writes"),
            (self.injected_panics == 0, "no loader panicked"),
            (self.injected_errs == 0, "no loader returned Err"),
            (self.injected_nones == 0, "no loader returned None"),
            (
                self.cancelled_loads == 0,
                "no caller was cancelled mid-load",
            ),
            (self.pauses == 0, "no pause"),
            (self.restarts == 0, "no restart"),
            (self.subscriber_kills == 0, "no subscriber kill"),
            (
                self.fresh_checked != WORKERS * 4 * KEYS as usize,
                "the fresh check did not cover every key on every site",
            ),
        ];
        for (_, what) in thin.iter().filter(|(thin, _)| *thin) {
            problems.push(format!("the run was too thin to mean anything: {what}"));
        }
        problems
    }
}

mod worker {
    use std::panic::AssertUnwindSafe;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use cachette::{cached, configure, invalidates, RedisBackend, TieredBackend};
    use futures::FutureExt;
    use redis::aio::MultiplexedConnection;

    use super::{
        env_u64, now_us, redis_server, run_length, start_line, CACHE_URL, DB_URL, FRESH_BOUND,
        HARD_DEADLINE, HEARTBEAT, HOT_KEYS, KEYS, MAX_LOAD_MS, MIN_LOAD_MS, OP_TIMEOUT,
        READERS_PER_WORKER, WORKERS, WORKER_INDEX, WORKER_SEED,
    };

    const INJECTED: &str = "chaos: injected loader panic";

    /// The database: `db:<key>` holds the key's current version.
    static DB: OnceLock<MultiplexedConnection> = OnceLock::new();
    static PROC: OnceLock<u32> = OnceLock::new();
    /// Loader invocations, logged from a guard so that cancelled and panicking ones are too.
    static LOADS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static NEXT_CALL: AtomicU64 = AtomicU64::new(1);

    tokio::task_local! {
        /// The call whose body runs in this task, and what its loader is to do.
        static CALL: Plan;
    }

    #[derive(Debug, Clone, Copy)]
    struct Plan {
        id: u64,
        load: Duration,
        fault: Injected,
        cancel_after: Option<Duration>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Injected {
        Nothing,
        Panic,
        /// `Err` on a `Result` site, `None` on an `Option` site.
        Fail,
    }

    impl Plan {
        fn plain() -> Plan {
            Plan {
                id: NEXT_CALL.fetch_add(1, Ordering::Relaxed),
                load: Duration::from_millis(MIN_LOAD_MS),
                fault: Injected::Nothing,
                cancel_after: None,
            }
        }

        fn random(rng: &mut fastrand::Rng) -> Plan {
            let fault = match rng.u32(0..100) {
                0..=3 => Injected::Panic,
                4..=7 => Injected::Fail,
                _ => Injected::Nothing,
            };
            let mut load = Duration::from_millis(rng.u64(MIN_LOAD_MS..=MAX_LOAD_MS));
            let cancel_after = (rng.u32(0..100) < 4).then(|| {
                let after = Duration::from_millis(rng.u64(1..=20));
                // Longer than the timeout: a body that starts is dropped while it runs.
                load = after + Duration::from_millis(rng.u64(5..=30));
                after
            });
            Plan {
                fault,
                load,
                cancel_after,
                ..Plan::plain()
            }
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum SiteId {
        RedisResult,
        RedisOption,
        TieredResult,
        TieredOption,
    }

    impl SiteId {
        const ALL: [SiteId; 4] = [
            SiteId::RedisResult,
            SiteId::RedisOption,
            SiteId::TieredResult,
            SiteId::TieredOption,
        ];

        fn name(self) -> &'static str {
            match self {
                SiteId::RedisResult => "redis-result",
                SiteId::RedisOption => "redis-option",
                SiteId::TieredResult => "tiered-result",
                SiteId::TieredOption => "tiered-option",
            }
        }

        fn failure(self) -> &'static str {
            match self {
                SiteId::RedisResult | SiteId::TieredResult => "err",
                SiteId::RedisOption | SiteId::TieredOption => "none",
            }
        }
    }

    #[cached(ttl = "60s", key = "rr:<key>", backend = "redis")]
    async fn redis_result(key: u32) -> Result<u64, String> {
        load(SiteId::RedisResult, key)
            .await
            .ok_or_else(|| "injected".to_owned())
    }

    #[cached(ttl = "60s", key = "ro:<key>", backend = "redis")]
    async fn redis_option(key: u32) -> Option<u64> {
        load(SiteId::RedisOption, key).await
    }

    #[cached(ttl = "60s", key = "tr:<key>", backend = "tiered")]
    async fn tiered_result(key: u32) -> Result<u64, String> {
        load(SiteId::TieredResult, key)
            .await
            .ok_or_else(|| "injected".to_owned())
    }

    #[cached(ttl = "60s", key = "to:<key>", backend = "tiered")]
    async fn tiered_option(key: u32) -> Option<u64> {
        load(SiteId::TieredOption, key).await
    }

    /// The service's write: the database first, then the cache.
    #[invalidates("rr:<key>", "ro:<key>", "tr:<key>", "to:<key>")]
    async fn bump(key: u32) -> Result<u64, String> {
        redis::cmd("INCR")
            .arg(format!("db:{key}"))
            .query_async(&mut db())
            .await
            .map_err(|e| e.to_string())
    }

    fn db() -> MultiplexedConnection {
        DB.get().expect("connected").clone()
    }

    async fn db_version(key: u32) -> u64 {
        redis::cmd("GET")
            .arg(format!("db:{key}"))
            .query_async::<Option<u64>>(&mut db())
            .await
            .expect("the database redis is never faulted")
            .unwrap_or_default()
    }

    /// Logs one loader invocation when dropped: completed, panicked or cancelled.
    struct LoadRecord {
        call: u64,
        site: SiteId,
        key: u32,
        start: u64,
        outcome: Option<String>,
    }

    impl Drop for LoadRecord {
        fn drop(&mut self) {
            let outcome = self.outcome.take().unwrap_or_else(|| {
                if std::thread::panicking() {
                    "panic"
                } else {
                    "cancelled"
                }
                .to_owned()
            });
            let line = format!(
                "load {} {} {} {} {} {} {outcome}",
                PROC.get().expect("set"),
                self.call,
                self.site.name(),
                self.key,
                self.start,
                now_us()
            );
            LOADS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    }

    /// The loader of every site: reads the version, takes its load time (after the read, so
    /// that what it returns is as old as it can be), then does what its caller's plan says.
    async fn load(site: SiteId, key: u32) -> Option<u64> {
        let plan = CALL
            .try_with(|plan| *plan)
            .unwrap_or_else(|_| Plan::plain());
        let mut record = LoadRecord {
            call: plan.id,
            site,
            key,
            start: now_us(),
            outcome: None,
        };
        let version = db_version(key).await;
        tokio::time::sleep(plan.load).await;
        match plan.fault {
            Injected::Panic => {
                record.outcome = Some("panic".to_owned());
                panic!("{INJECTED}");
            }
            Injected::Fail => {
                record.outcome = Some(site.failure().to_owned());
                None
            }
            Injected::Nothing => {
                record.outcome = Some(format!("v{version}"));
                Some(version)
            }
        }
    }

    /// One call of `site`, under its plan: its result as the log writes it.
    async fn call(site: SiteId, key: u32, plan: Plan) -> String {
        let body = CALL.scope(plan, async move {
            let value = match site {
                SiteId::RedisResult => redis_result(key).await.ok(),
                SiteId::RedisOption => redis_option(key).await,
                SiteId::TieredResult => tiered_result(key).await.ok(),
                SiteId::TieredOption => tiered_option(key).await,
            };
            value.map_or_else(|| site.failure().to_owned(), |v| format!("v{v}"))
        });
        let limit = plan.cancel_after.unwrap_or(HARD_DEADLINE);
        match tokio::time::timeout(limit, AssertUnwindSafe(body).catch_unwind()).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => "panic".to_owned(),
            Err(_) if plan.cancel_after.is_some() => "cancelled".to_owned(),
            Err(_) => "deadline".to_owned(),
        }
    }

    fn setup(cache_url: &str) -> TieredBackend {
        let backend = |prefix: &str| {
            RedisBackend::builder()
                .url(cache_url)
                .prefix(prefix)
                .op_timeout(OP_TIMEOUT)
                .connect_timeout(OP_TIMEOUT)
                .build()
                .expect("valid configuration")
        };
        // Two stores, so that the tiered one has to replay its own lost invalidations.
        let tiered = TieredBackend::builder(backend("chaos-t"))
            .heartbeat(HEARTBEAT)
            .build();
        configure()
            .redis("redis", backend("chaos-r"))
            .tiered("tiered", tiered.clone())
            .install()
            .expect("configured once");
        tiered
    }

    pub(super) fn run() {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
        let proc: u32 = var(WORKER_INDEX).parse().expect("an index");
        PROC.set(proc).expect("once");
        let seed = env_u64(WORKER_SEED).expect("the controller passes a seed");
        let run = run_length();
        // Injected panics are expected; any other panic is reported as usual.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|message| message == INJECTED);
            if !injected {
                default_hook(info);
            }
        }));
        let tiered = setup(&var(CACHE_URL));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            DB.set(redis_server::connect(&var(DB_URL)).await)
                .expect("once");
            // Connect every site and start the bus before the clock starts.
            for site in SiteId::ALL {
                call(site, 0, Plan::plain()).await;
            }
            tiered.l1_ready().await;
            start_line::arrive(&var(DB_URL), "chaos:start").await;

            let end = Instant::now() + run;
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut tasks: Vec<_> = (0..READERS_PER_WORKER)
                .map(|_| tokio::spawn(reader(end, fastrand::Rng::with_seed(rng.u64(..)))))
                .collect();
            tasks.push(tokio::spawn(writer(
                end,
                fastrand::Rng::with_seed(rng.u64(..)),
            )));
            let mut lines = Vec::new();
            for task in tasks {
                lines.extend(task.await.expect("a worker task"));
            }

            start_line::arrive(&var(DB_URL), "chaos:settle").await;
            lines.extend(fresh_check().await);
            // Up until every worker has checked: what this process could not invalidate in the
            // last outage waits in its queue for the breaker's probe (about a probe interval
            // after redis answers), and its own check, all loads while its breaker is open, is
            // over long before. A process that exits takes its queue along, and the others
            // would read the values it replaced until their TTL.
            start_line::meet(&var(DB_URL), "chaos:checked", WORKERS).await;
            lines.push(format!("stats {proc} {}", tiered.l1_flushes()));
            lines.append(&mut LOADS.lock().unwrap_or_else(|e| e.into_inner()));
            let mut out = String::new();
            for line in lines {
                out.push_str(&line);
                out.push('\n');
            }
            print!("{out}");
        });
    }

    async fn reader(end: Instant, mut rng: fastrand::Rng) -> Vec<String> {
        let proc = PROC.get().expect("set");
        let mut lines = Vec::new();
        while Instant::now() < end {
            let site = SiteId::ALL[rng.usize(..SiteId::ALL.len())];
            let key = pick_key(&mut rng);
            let plan = Plan::random(&mut rng);
            let start = now_us();
            let result = call(site, key, plan).await;
            let finish = now_us();
            lines.push(format!(
                "call {proc} {} read {} {key} {start} {finish} {result}",
                plan.id,
                site.name()
            ));
            // Pacing: leave the other processes and the servers CPU on a 2-core machine.
            tokio::time::sleep(Duration::from_millis(rng.u64(2..8))).await;
        }
        lines
    }

    async fn writer(end: Instant, mut rng: fastrand::Rng) -> Vec<String> {
        let proc = PROC.get().expect("set");
        let mut lines = Vec::new();
        while Instant::now() < end {
            let key = pick_key(&mut rng);
            let id = NEXT_CALL.fetch_add(1, Ordering::Relaxed);
            let start = now_us();
            let result = match tokio::time::timeout(HARD_DEADLINE, bump(key)).await {
                Ok(Ok(version)) => format!("v{version}"),
                Ok(Err(_)) => "err".to_owned(),
                Err(_) => "deadline".to_owned(),
            };
            let finish = now_us();
            lines.push(format!(
                "call {proc} {id} write all {key} {start} {finish} {result}"
            ));
            tokio::time::sleep(Duration::from_millis(rng.u64(100..200))).await;
        }
        lines
    }

    fn pick_key(rng: &mut fastrand::Rng) -> u32 {
        if rng.bool() {
            rng.u32(..HOT_KEYS)
        } else {
            rng.u32(HOT_KEYS..KEYS)
        }
    }

    /// Check 4's data: every key on every site, polled until it returns the database's version
    /// or `FRESH_BOUND` passes. Nobody writes any more, so the version is final.
    async fn fresh_check() -> Vec<String> {
        let proc = *PROC.get().expect("set");
        let deadline = Instant::now() + FRESH_BOUND;
        let polls: Vec<_> = SiteId::ALL
            .iter()
            .flat_map(|&site| (0..KEYS).map(move |key| (site, key)))
            .map(|(site, key)| {
                tokio::spawn(async move {
                    let want = db_version(key).await;
                    let started = Instant::now();
                    loop {
                        let got = call(site, key, Plan::plain()).await;
                        let fresh = got == format!("v{want}");
                        let late = Instant::now() > deadline;
                        if fresh || late {
                            let elapsed =
                                u64::try_from(started.elapsed().as_micros()).expect("fits");
                            // A call that ends past the bound is late, whatever it returned.
                            let verdict = match (fresh, late) {
                                (true, false) => "ok",
                                (true, true) => "late",
                                _ => "stale",
                            };
                            return format!(
                                "fresh {proc} {} {key} {want} {got} {elapsed} {verdict}",
                                site.name()
                            );
                        }
                        // A bounded poll: the check is "within FRESH_BOUND".
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        let mut lines = Vec::new();
        for poll in polls {
            lines.push(poll.await.expect("a poll task"));
        }
        lines
    }
}
