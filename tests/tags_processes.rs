//! Tags (issue 14) on `tiered` across real OS processes, checked from the outside: 3 worker
//! processes, 4 tasks each, make random reads of tagged entries (list pages carrying
//! `products` and `category:<c>`, category summaries carrying `category:<c>` only, catalog
//! shards carrying `products` only) and random tag invalidations (through
//! `#[invalidates(tags(...))]` and through `cachette::invalidate_tag`). The source of truth
//! is a counter per tag in Redis, bumped (`INCR`) before the tag is invalidated. Every read and
//! invalidation is logged with its start and end (wall clock, shared by the processes), and the
//! checker asserts: once an invalidation of tag T has returned in any process, no read of an
//! entry carrying T that began later (plus the bus delivery bound; with no bound at all in the
//! process that invalidated) returns a version of T's counter older than the one bumped before
//! that invalidation. The run is in rounds (see [`ROUNDS`]), so that a lost invalidation shows.
//!
//! The busy parts' choices are seeded: the seed is printed and `CACHETTE_TP_SEED` replays them
//! (the interleaving is the machine's); `CACHETTE_TP_LOG=<file>` keeps the history. The binary
//! is its own worker (`harness = false`).

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::redis_server::{self, RedisServer};
use support::start_line;

const WORKERS: usize = 3;
const TASKS: usize = 4;
/// The run is rounds of a busy part (each task makes `BUSY_OPS` random reads and
/// invalidations) and a quiet one (reads only, for `QUIET`), which every process begins once
/// all have ended their busy part (a start line). While busy, a process's misses make it learn
/// tags anew within milliseconds, which would hide a lost invalidation: a miss on any entry of
/// a tag captures the tag's current generation, and a list page's miss captures both of its
/// tags, so that a change of `products` makes every page's category learned again. In the quiet
/// part nothing is invalidated and only entries of one tag are read (summaries, the catalog),
/// as in a lull: an L1 entry left stale stays stale, and the reads past the bound see it.
const ROUNDS: usize = 6;
const BUSY_OPS: usize = 170;
const QUIET: Duration = Duration::from_millis(800);
const CATEGORIES: u64 = 6;
const PAGES: u32 = 3;
const CATALOG_SHARDS: u32 = 2;
/// How long after an invalidation returns a read in another process may still see the old
/// value: delivery of one pub/sub message on loopback, a few milliseconds, and up to 130 ms
/// seen on this 2-core machine under a load average of 12-15 (other builds).
const BUS_BOUND: Duration = Duration::from_millis(300);
const ROLE: &str = "CACHETTE_TP_ROLE";
const URL: &str = "CACHETTE_TP_URL";
const SEED: &str = "CACHETTE_TP_SEED";
const WORKER: &str = "CACHETTE_TP_WORKER";
/// A file to keep the history in (one line per event, prefixed by the worker's index).
const LOG: &str = "CACHETTE_TP_LOG";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("worker") => worker::run(
            &std::env::var(URL).expect("the parent passes the url"),
            env_number(SEED).expect("the parent passes the seed"),
            env_number(WORKER).expect("the parent passes the index"),
        ),
        _ => no_process_reads_a_tag_older_than_an_invalidation_that_returned(),
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

fn now_us() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_micros()).expect("fits")
}

fn no_process_reads_a_tag_older_than_an_invalidation_that_returned() {
    let seed = env_number(SEED).unwrap_or_else(|| fastrand::u64(..));
    println!("tags_processes: seed {seed} ({SEED}={seed} replays the choices)");
    let server = RedisServer::start();
    let exe = std::env::current_exe().expect("own path");
    let workers: Vec<_> = (0..WORKERS)
        .map(|index| {
            Command::new(&exe)
                .env(ROLE, "worker")
                .env(URL, server.url())
                .env(SEED, seed.to_string())
                .env(WORKER, index.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a worker process")
        })
        .collect();
    start_line::release(&server.url(), "tp", WORKERS);
    for round in 0..ROUNDS {
        start_line::release(&server.url(), &format!("tp-quiet-{round}"), WORKERS);
        start_line::release(&server.url(), &format!("tp-busy-{round}"), WORKERS);
    }
    let logs: Vec<String> = workers
        .into_iter()
        .map(|worker| {
            let output = worker.wait_with_output().expect("worker exits");
            assert!(
                output.status.success(),
                "seed {seed}: a worker failed: {}",
                output.status
            );
            String::from_utf8(output.stdout).expect("utf-8")
        })
        .collect();
    if let Ok(path) = std::env::var(LOG) {
        let history: String = logs
            .iter()
            .enumerate()
            .flat_map(|(worker, log)| log.lines().map(move |line| format!("{worker} {line}\n")))
            .collect();
        std::fs::write(&path, history).expect("write the history");
        println!("tags_processes: history kept in {path}");
    }
    let report = check(&logs);
    println!("tags_processes: {report}");
    assert_eq!(
        report.stale_after_bound, 0,
        "seed {seed}: reads that began more than {BUS_BOUND:?} after a tag invalidation returned \
         saw a version older than it, e.g. {:?}",
        report.examples
    );
    assert_eq!(
        report.stale_own, 0,
        "seed {seed}: reads saw a version older than an invalidation their own process had \
         returned from"
    );
    assert!(report.reads > 3_000, "too few reads to mean anything");
    assert!(
        report.by_macro > 30 && report.by_function > 30,
        "too few invalidations of each way to mean anything"
    );
    assert!(
        report.l1_hits * 2 > report.reads as u64,
        "most reads are L1 hits, so that it is L1 that the invalidations must reach"
    );
    assert!(
        report.received.iter().all(|&received| received > 0),
        "every worker heard the others' tag invalidations: {:?}",
        report.received
    );
    println!("test result: ok. 1 passed; 0 failed");
}

#[derive(Debug, Default)]
struct Report {
    reads: usize,
    /// Reads whose call ran no load (the task's own loader did not run).
    cached: usize,
    l1_hits: u64,
    loads: u64,
    by_macro: usize,
    by_function: usize,
    /// Reads begun after an invalidation of one of their tags returned that saw an older
    /// version, at any delay, and past the bus bound.
    stale_after_return: usize,
    stale_after_bound: usize,
    /// Reads that saw a version older than an invalidation of their own process had made
    /// before they began: the process forgets the generation before the invalidation returns.
    stale_own: usize,
    max_stale_lag_us: u64,
    received: Vec<u64>,
    /// A few stale reads past the bound: (reading worker, tag, version read, version due).
    examples: Vec<(usize, String, u64, u64)>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} reads in {WORKERS} processes x {TASKS} tasks, {} served without a load of their \
             own, {} L1 hits ({:.1}%), {} loads; {} tag invalidations ({} by #[invalidates], {} \
             by invalidate_tag), messages received per worker {:?}; stale reads begun after \
             the invalidation returned: {} (any delay, at most {} us after), {} (past the \
             {BUS_BOUND:?} bound), {} (after one of their own process)",
            self.reads,
            self.cached,
            self.l1_hits,
            100.0 * self.l1_hits as f64 / self.reads.max(1) as f64,
            self.loads,
            self.by_macro + self.by_function,
            self.by_macro,
            self.by_function,
            self.received,
            self.stale_after_return,
            self.max_stale_lag_us,
            self.stale_after_bound,
            self.stale_own,
        )
    }
}

/// A read: its worker, its start, and the version of each of its tags' counters it got.
type Read = (usize, u64, Vec<(String, u64)>);

/// Parses the workers' logs and counts stale reads.
///
/// Lines: `I <tag> <version> <start> <end> <m|f>` (an invalidation of `tag` returned at `end`,
/// its counter bumped to `version` before it; `m` through the attribute, `f` the function),
/// `R <start> <end> <loaded> <entry> <tag>=<version>...` (a read, and the version of each of
/// its tags' counters the value it got was loaded from), `S <l1 hits> <loads> <received>` (a worker's
/// totals).
fn check(logs: &[String]) -> Report {
    let mut report = Report::default();
    // Per tag: (end, version, worker) of each invalidation.
    let mut invalidations: HashMap<String, Vec<(u64, u64, usize)>> = HashMap::new();
    let mut reads: Vec<Read> = Vec::new();
    for (worker, log) in logs.iter().enumerate() {
        for line in log.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let number = |i: usize| -> u64 { fields[i].parse().expect("a number") };
            match fields[0] {
                "I" => {
                    invalidations
                        .entry(fields[1].to_owned())
                        .or_default()
                        .push((number(4), number(2), worker));
                    match fields[5] {
                        "m" => report.by_macro += 1,
                        _ => report.by_function += 1,
                    }
                }
                "R" => {
                    report.cached += usize::from(number(3) == 0);
                    let versions = fields[5..]
                        .iter()
                        .map(|pair| {
                            let (tag, version) = pair.split_once('=').expect("tag=version");
                            (tag.to_owned(), version.parse().expect("a version"))
                        })
                        .collect();
                    reads.push((worker, number(1), versions));
                }
                "S" => {
                    report.l1_hits += number(1);
                    report.loads += number(2);
                    report.received.push(number(3));
                }
                _ => panic!("unexpected line {line:?}"),
            }
        }
    }
    report.reads = reads.len();
    let bound = u64::try_from(BUS_BOUND.as_micros()).expect("fits");
    for (worker, start, versions) in &reads {
        // The newest version due to this read at `delay` after the invalidations (of `only`
        // this read's worker, or of any) returned.
        let due = |tag: &str, delay: u64, only: Option<usize>| {
            invalidations.get(tag).and_then(|list| {
                list.iter()
                    .filter(|&&(end, _, by)| end + delay < *start && only.is_none_or(|w| w == by))
                    .map(|&(end, version, _)| (version, end))
                    .max()
            })
        };
        let (mut stale, mut stale_own, mut stale_past_bound) = (false, false, false);
        for (tag, version) in versions {
            if let Some((due_version, _)) = due(tag, 0, Some(*worker)) {
                stale_own |= due_version > *version;
            }
            if let Some((due_version, end)) = due(tag, 0, None) {
                if due_version > *version {
                    stale = true;
                    report.max_stale_lag_us = report.max_stale_lag_us.max(start - end);
                }
            }
            if let Some((due_version, _)) = due(tag, bound, None) {
                if due_version > *version {
                    stale_past_bound = true;
                    if report.examples.len() < 5 {
                        report
                            .examples
                            .push((*worker, tag.clone(), *version, due_version));
                    }
                }
            }
        }
        report.stale_after_return += usize::from(stale);
        report.stale_own += usize::from(stale_own);
        report.stale_after_bound += usize::from(stale_past_bound);
    }
    report
}

mod worker {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    use cachette::{cached, configure, invalidates, KeyBuilder, RedisBackend, TieredBackend};
    use redis::aio::MultiplexedConnection;

    use super::{now_us, BUSY_OPS, CATALOG_SHARDS, CATEGORIES, PAGES, QUIET, ROUNDS, TASKS};

    static SOURCE: OnceLock<MultiplexedConnection> = OnceLock::new();

    tokio::task_local! {
        static LOADED: AtomicBool;
    }

    fn source() -> MultiplexedConnection {
        SOURCE.get().expect("connected").clone()
    }

    /// The source's counter of a tag: `src:c<category>` or `src:all`.
    fn counter(tag: &str) -> String {
        format!("src:{tag}")
    }

    /// A load: marks the call as having loaded, reads the counters, then sometimes takes a
    /// moment (`hold` yields), so that loads cross invalidations.
    async fn load(tags: &[&str], hold: u32) -> Result<Vec<u64>, String> {
        let _ = LOADED.try_with(|loaded| loaded.store(true, Ordering::Relaxed));
        let mut source = source();
        let mut get = redis::cmd("MGET");
        for tag in tags {
            get.arg(counter(tag));
        }
        let versions: Vec<Option<u64>> = get
            .query_async(&mut source)
            .await
            .map_err(|e| e.to_string())?;
        for _ in 0..hold {
            tokio::task::yield_now().await;
        }
        Ok(versions
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    /// A list page: both tags; its value is the two counters it was loaded from.
    #[cached(
        ttl = "60s",
        key = "tp:list:<page>:<category>",
        backend = "tiered",
        tags("products", "category:<category>")
    )]
    async fn list(page: u32, category: u64, hold: u32) -> Result<Vec<u64>, String> {
        let _ = page;
        load(&["all", &format!("c{category}")], hold).await
    }

    /// A category's summary: its category's tag only.
    #[cached(
        ttl = "60s",
        key = "tp:summary:<category>",
        backend = "tiered",
        tags("category:<category>")
    )]
    async fn summary(category: u64, hold: u32) -> Result<Vec<u64>, String> {
        load(&[&format!("c{category}")], hold).await
    }

    /// A shard of the catalog: `products` only.
    #[cached(
        ttl = "60s",
        key = "tp:catalog:<shard>",
        backend = "tiered",
        tags("products")
    )]
    async fn catalog(shard: u32, hold: u32) -> Result<Vec<u64>, String> {
        let _ = shard;
        load(&["all"], hold).await
    }

    async fn bump(tag: &str) -> Result<u64, String> {
        redis::cmd("INCR")
            .arg(counter(tag))
            .query_async(&mut source())
            .await
            .map_err(|e| e.to_string())
    }

    /// A product of `category` changed: its counter, then its category's tag.
    #[invalidates(tags("category:<category>"))]
    async fn update_category(category: u64) -> Result<u64, String> {
        bump(&format!("c{category}")).await
    }

    /// Something every page shows changed: its counter, then `products`.
    #[invalidates(tags("products"))]
    async fn update_catalog() -> Result<u64, String> {
        bump("all").await
    }

    /// The event handler's way: the counter, then `invalidate_tag` with the tag built at run
    /// time.
    async fn on_event(category: Option<u64>) -> u64 {
        let (counter, tag) = match category {
            Some(category) => (
                format!("c{category}"),
                KeyBuilder::new().lit("category:").arg(&category).finish(),
            ),
            None => ("all".to_owned(), KeyBuilder::new().lit("products").finish()),
        };
        let version = bump(&counter).await.expect("bumped");
        cachette::invalidate_tag(&tag).await;
        version
    }

    /// One random read: its log line's entry and tag fields.
    async fn read(rng: &mut fastrand::Rng, quiet: bool) -> String {
        let category = rng.u64(0..CATEGORIES);
        let hold = if rng.u32(0..4) == 0 {
            rng.u32(1..20)
        } else {
            0
        };
        // While quiet, entries of one tag only (see `ROUNDS`).
        let kind = if quiet { rng.u32(2..5) } else { rng.u32(0..5) };
        match kind {
            0 | 1 => {
                let page = rng.u32(0..PAGES);
                let versions = list(page, category, hold).await.expect("reads");
                format!(
                    "list:{page}:{category} all={} c{category}={}",
                    versions[0], versions[1]
                )
            }
            2 | 3 => {
                let versions = summary(category, hold).await.expect("reads");
                format!("summary:{category} c{category}={}", versions[0])
            }
            _ => {
                let shard = rng.u32(0..CATALOG_SHARDS);
                let versions = catalog(shard, hold).await.expect("reads");
                format!("catalog:{shard} all={}", versions[0])
            }
        }
    }

    /// One random invalidation: its log line's fields after `I`, but for the times.
    async fn invalidate(rng: &mut fastrand::Rng) -> (String, u64, &'static str) {
        // `products` one time in four: it drops most entries.
        let category = (rng.u32(0..4) != 0).then(|| rng.u64(0..CATEGORIES));
        let tag = category.map_or_else(|| "all".to_owned(), |category| format!("c{category}"));
        if rng.bool() {
            let version = match category {
                Some(category) => update_category(category).await,
                None => update_catalog().await,
            }
            .expect("bumped");
            (tag, version, "m")
        } else {
            (tag, on_event(category).await, "f")
        }
    }

    /// One read, logged.
    async fn logged_read(rng: &mut fastrand::Rng, quiet: bool, lines: &mut Vec<String>) {
        let start = now_us();
        let (tags, loaded) = LOADED
            .scope(AtomicBool::new(false), async {
                let tags = read(rng, quiet).await;
                (tags, LOADED.with(|loaded| loaded.load(Ordering::Relaxed)))
            })
            .await;
        lines.push(format!(
            "R {start} {} {} {tags}",
            now_us(),
            u8::from(loaded)
        ));
    }

    /// A task's busy part of a round: random reads and invalidations, a fixed number.
    async fn busy(mut rng: fastrand::Rng) -> (fastrand::Rng, Vec<String>) {
        let mut lines = Vec::new();
        for op in 0..BUSY_OPS {
            if op % 20 == 0 {
                // Leave the other processes and the bus some CPU on a 2-core machine.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if rng.u32(0..30) == 0 {
                let start = now_us();
                let (tag, version, how) = invalidate(&mut rng).await;
                lines.push(format!("I {tag} {version} {start} {} {how}", now_us()));
            } else {
                logged_read(&mut rng, false, &mut lines).await;
            }
        }
        (rng, lines)
    }

    /// A task's quiet part: random reads only, for [`QUIET`].
    async fn quiet(mut rng: fastrand::Rng) -> (fastrand::Rng, Vec<String>) {
        let mut lines = Vec::new();
        let end = std::time::Instant::now() + QUIET;
        while std::time::Instant::now() < end {
            if lines.len() % 5 == 0 {
                // Enough reads to see a stale entry, not so many that checking them is slow.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            logged_read(&mut rng, true, &mut lines).await;
        }
        (rng, lines)
    }

    /// Runs `part` on every task's generator at once; gives the generators back, and keeps the
    /// lines (printed at the end: the parent reads them once every round is done).
    async fn all_tasks<F>(
        rngs: Vec<fastrand::Rng>,
        part: fn(fastrand::Rng) -> F,
        log: &mut Vec<String>,
    ) -> Vec<fastrand::Rng>
    where
        F: std::future::Future<Output = (fastrand::Rng, Vec<String>)> + Send + 'static,
    {
        let tasks: Vec<_> = rngs
            .into_iter()
            .map(|rng| tokio::spawn(part(rng)))
            .collect();
        let mut rngs = Vec::new();
        for task in tasks {
            let (rng, lines) = task.await.expect("a task panicked");
            log.extend(lines);
            rngs.push(rng);
        }
        rngs
    }

    pub(super) fn run(url: &str, seed: u64, index: u64) {
        let l2 = RedisBackend::builder()
            .url(url)
            .prefix("tp")
            .build()
            .expect("valid configuration");
        let tiered = TieredBackend::builder(l2)
            .heartbeat(Duration::from_millis(200))
            .build();
        configure()
            .tiered("tiered", tiered.clone())
            .install()
            .expect("configured once");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            SOURCE
                .set(super::redis_server::connect(url).await)
                .expect("once");
            // The first call starts the bus; wait for it before the start line.
            catalog(u32::MAX, 0).await.expect("loads");
            tiered.l1_ready().await;
            super::start_line::arrive(url, "tp").await;
            // One generator per task for the busy parts, whose choices the seed replays, and
            // one for the quiet parts, whose number of reads the clock decides.
            let stream = |task: u64, part: u64| {
                let stream = (index * TASKS as u64 + task) * 2 + part + 1;
                fastrand::Rng::with_seed(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            };
            let mut busy_rngs: Vec<_> = (0..TASKS as u64).map(|task| stream(task, 0)).collect();
            let mut quiet_rngs: Vec<_> = (0..TASKS as u64).map(|task| stream(task, 1)).collect();
            let mut log = Vec::new();
            for round in 0..ROUNDS {
                busy_rngs = all_tasks(busy_rngs, busy, &mut log).await;
                // Every process's invalidations of the round have returned.
                super::start_line::arrive(url, &format!("tp-quiet-{round}")).await;
                quiet_rngs = all_tasks(quiet_rngs, quiet, &mut log).await;
                super::start_line::arrive(url, &format!("tp-busy-{round}")).await;
            }
            for line in log {
                println!("{line}");
            }
            let (l1_hits, loads) = cachette::stats()
                .sites
                .iter()
                .fold((0, 0), |(hits, loads), site| {
                    (hits + site.l1_hits, loads + site.loads)
                });
            println!("S {l1_hits} {loads} {}", tiered.invalidations_received());
        });
    }
}
