//! The tiered backend's consistency across processes, checked from the outside: 3 reader
//! processes read one set of keys in loops while a writer process changes the source and
//! invalidates; meanwhile the test kills every cachette bus subscriber twice. Every operation is
//! logged with its start and end (wall clock, shared by the processes), and a checker counts
//! reads that began after an invalidation had returned (plus the bus delivery bound) and still
//! saw the old value. That count must be 0. Also reported: the bus propagation latency, the L1
//! hit rate, and each reader's L1 flush count.
//!
//! The binary is its own worker (`harness = false`): it re-executes itself with a role.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::redis_server::{self, RedisServer};
use support::start_line;

const READERS: usize = 3;
const KEYS: u32 = 20;
const RUN: Duration = Duration::from_secs(3);
/// How long after an invalidation returns a read may still see the old value: delivery of one
/// pub/sub message on loopback, with a wide margin for a loaded 2-core machine.
const BUS_BOUND: Duration = Duration::from_millis(200);
const ROLE: &str = "CACHETTE_TC_ROLE";
const URL: &str = "CACHETTE_TC_URL";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("reader") => worker::reader(&url()),
        Ok("writer") => worker::writer(&url()),
        _ => reads_after_an_invalidation_never_see_the_old_value(),
    }
}

fn url() -> String {
    std::env::var(URL).expect("the parent passes the url")
}

fn now_us() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_micros()).expect("fits")
}

fn reads_after_an_invalidation_never_see_the_old_value() {
    let server = RedisServer::start();
    let mut redis = server.blocking_connection();
    let exe = std::env::current_exe().expect("own path");
    let spawn = |role: &str| -> Child {
        Command::new(&exe)
            .env(ROLE, role)
            .env(URL, server.url())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker process")
    };
    let mut children: Vec<Child> = (0..READERS).map(|_| spawn("reader")).collect();
    children.push(spawn("writer"));
    start_line::release(&server.url(), "tc", children.len());

    // Bus loss while the writer writes: kill cachette's subscriber connections (SUBSCRIBE; the
    // workers' latency probes use PSUBSCRIBE and are left alone).
    let mut kills = 0;
    for _ in 0..2 {
        std::thread::sleep(RUN / 3);
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut redis)
            .expect("client list");
        for line in clients.lines().filter(|line| line.contains(" sub=1 ")) {
            let id = line
                .split(' ')
                .find_map(|field| field.strip_prefix("id="))
                .expect("an id field");
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query(&mut redis)
                .expect("client kill");
            kills += 1;
        }
    }

    let logs: Vec<String> = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("worker exits");
            assert!(
                output.status.success(),
                "a worker failed: {}",
                output.status
            );
            String::from_utf8(output.stdout).expect("utf-8")
        })
        .collect();
    let report = check(&logs);
    println!("{report}");
    assert!(kills >= 2 * READERS, "killed {kills} subscribers");
    assert!(report.writes > 100, "too few writes to mean anything");
    assert!(report.reads > 1_000, "too few reads to mean anything");
    assert_eq!(
        report.stale_after_bound, 0,
        "reads that began more than {BUS_BOUND:?} after an invalidation returned saw the old value"
    );
    assert!(
        report.flushes.iter().all(|&flushes| flushes >= 1),
        "every reader dropped its L1 when its subscriber was killed: {:?}",
        report.flushes
    );
    assert!(report.deliveries > 0, "latency probes heard the bus");
}

#[derive(Debug, Default)]
struct Report {
    reads: usize,
    writes: usize,
    l1_hits: usize,
    stale_after_return: usize,
    stale_after_bound: usize,
    /// The longest a stale read began after the invalidation it missed had returned.
    max_stale_lag_us: u64,
    flushes: Vec<u64>,
    deliveries: usize,
    latency_us: Vec<u64>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let percentile = |p: f64| {
            let index = ((self.latency_us.len() as f64 - 1.0) * p).round() as usize;
            self.latency_us.get(index).copied().unwrap_or(0)
        };
        write!(
            f,
            "tiered_consistency: {} reads in {READERS} processes ({:.1}% served from cache), {} writes; \
             stale reads begun after the invalidation returned: {} (any delay, at most {} us \
             after), {} (past the {BUS_BOUND:?} bound); L1 flushes per reader {:?}; bus propagation from \
             invalidation start over {} deliveries: p50 {} us, p99 {} us, max {} us",
            self.reads,
            100.0 * self.l1_hits as f64 / self.reads.max(1) as f64,
            self.writes,
            self.stale_after_return,
            self.max_stale_lag_us,
            self.stale_after_bound,
            self.flushes,
            self.deliveries,
            percentile(0.5),
            percentile(0.99),
            percentile(1.0),
        )
    }
}

/// Parses the workers' logs and counts stale reads.
///
/// Lines: `W key version start end` (writer: the source now holds `version`, and the
/// invalidation returned at `end`), `R key version start end hit` (reader), `B key at` (a
/// reader's probe heard the invalidation of `key`), `F flushes` (a reader's L1 flush count).
fn check(logs: &[String]) -> Report {
    let mut report = Report::default();
    // Per key: (invalidation start, end, version), in the writer's order.
    let mut writes: HashMap<u32, Vec<(u64, u64, u64)>> = HashMap::new();
    let mut reads = Vec::new();
    let mut heard: Vec<Vec<(u32, u64)>> = Vec::new();
    for log in logs {
        let mut probe = Vec::new();
        for line in log.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let number = |i: usize| -> u64 { fields[i].parse().expect("a number") };
            match fields[0] {
                "W" => writes.entry(number(1) as u32).or_default().push((
                    number(3),
                    number(4),
                    number(2),
                )),
                "R" => reads.push((number(1) as u32, number(2), number(3), number(5) == 1)),
                "B" => probe.push((number(1) as u32, number(2))),
                "F" => report.flushes.push(number(1)),
                _ => panic!("unexpected line {line:?}"),
            }
        }
        if !probe.is_empty() {
            heard.push(probe);
        }
    }
    report.writes = writes.values().map(Vec::len).sum();
    report.reads = reads.len();
    let bound = u64::try_from(BUS_BOUND.as_micros()).expect("fits");
    for &(key, version, start, hit) in &reads {
        report.l1_hits += usize::from(hit);
        let missed = |delay: u64| {
            writes.get(&key).and_then(|list| {
                list.iter()
                    .filter(|&&(_, end, newer)| end + delay < start && newer > version)
                    .map(|&(_, end, _)| start - end)
                    .max()
            })
        };
        if let Some(lag) = missed(0) {
            report.stale_after_return += 1;
            report.max_stale_lag_us = report.max_stale_lag_us.max(lag);
        }
        report.stale_after_bound += usize::from(missed(bound).is_some());
    }
    // The n-th message a probe heard for a key is the writer's n-th invalidation of that key
    // (one publisher, so one order), unless the probe subscribed late; match by order.
    for probe in &heard {
        let mut seen: HashMap<u32, usize> = HashMap::new();
        for &(key, at) in probe {
            let n = seen.entry(key).or_default();
            if let Some(&(start, _, _)) = writes.get(&key).and_then(|list| list.get(*n)) {
                report.latency_us.push(at.saturating_sub(start));
                report.deliveries += 1;
            }
            *n += 1;
        }
    }
    report.latency_us.sort_unstable();
    report
}

mod worker {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;

    use cachette::{cached, configure, invalidates, RedisBackend, TieredBackend};
    use futures::StreamExt;
    use redis::aio::MultiplexedConnection;

    use super::{now_us, Duration, KEYS, RUN};

    static SOURCE: OnceLock<MultiplexedConnection> = OnceLock::new();

    tokio::task_local! {
        static LOADED: AtomicBool;
    }

    /// The source of truth (a "database"): `src:<key>` holds the key's current version.
    #[cached(ttl = "60s", key = "obj:<key>", backend = "tiered")]
    async fn object(key: u32) -> Result<u64, String> {
        let _ = LOADED.try_with(|loaded| loaded.store(true, Ordering::Relaxed));
        let mut source = SOURCE.get().expect("connected").clone();
        redis::cmd("GET")
            .arg(format!("src:{key}"))
            .query_async::<Option<u64>>(&mut source)
            .await
            .map(Option::unwrap_or_default)
            .map_err(|e| e.to_string())
    }

    #[invalidates("obj:<key>")]
    async fn bump(key: u32) -> Result<u64, String> {
        let mut source = SOURCE.get().expect("connected").clone();
        redis::cmd("INCR")
            .arg(format!("src:{key}"))
            .query_async(&mut source)
            .await
            .map_err(|e| e.to_string())
    }

    fn setup(url: &str) -> (tokio::runtime::Runtime, TieredBackend) {
        let l2 = RedisBackend::builder()
            .url(url)
            .prefix("tc")
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
        (runtime, tiered)
    }

    async fn connect(url: &str) {
        SOURCE
            .set(super::redis_server::connect(url).await)
            .expect("once");
    }

    pub(super) fn reader(url: &str) {
        let (runtime, tiered) = setup(url);
        runtime.block_on(async {
            connect(url).await;
            // Start the bus and wait for it before the clock starts.
            object(0).await.expect("loads");
            tiered.l1_ready().await;
            // A latency probe: hears the bus on a connection of its own (PSUBSCRIBE, so that
            // the parent's subscriber kills spare it).
            let mut probe = redis::Client::open(url)
                .expect("valid url")
                .get_async_pubsub()
                .await
                .expect("pubsub");
            probe.psubscribe("tc:1:bus").await.expect("psubscribe");
            let mut messages = probe.into_on_message();
            let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(message) = messages.next().await {
                    let at = now_us();
                    let payload: String = message.get_payload().expect("text");
                    if heard_tx.send((payload, at)).is_err() {
                        break;
                    }
                }
            });
            super::start_line::arrive(url, "tc").await;
            let mut lines = Vec::new();
            let end = std::time::Instant::now() + RUN;
            while std::time::Instant::now() < end {
                if lines.len() % 10 == 0 {
                    // Leave the writer and the bus some CPU on a 2-core machine.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let key = fastrand_key();
                let start = now_us();
                let (version, loaded) = LOADED
                    .scope(AtomicBool::new(false), async {
                        let version = object(key).await.expect("reads");
                        (version, LOADED.with(|l| l.load(Ordering::Relaxed)))
                    })
                    .await;
                let finish = now_us();
                lines.push(format!(
                    "R {key} {version} {start} {finish} {}",
                    u8::from(!loaded)
                ));
            }
            // Messages still in flight at the end are not needed: latency comes from those
            // heard during the run.
            for line in &lines {
                println!("{line}");
            }
            while let Ok((payload, at)) = heard.try_recv() {
                // `<origin> obj:<key>`
                let key = payload
                    .rsplit_once("obj:<")
                    .and_then(|(_, rest)| rest.strip_suffix('>'))
                    .expect("an obj key");
                println!("B {key} {at}");
            }
            println!("F {}", tiered.l1_flushes());
        });
    }

    pub(super) fn writer(url: &str) {
        let (runtime, _) = setup(url);
        runtime.block_on(async {
            connect(url).await;
            super::start_line::arrive(url, "tc").await;
            let end = std::time::Instant::now() + RUN;
            let mut lines = Vec::new();
            while std::time::Instant::now() < end {
                let key = fastrand_key();
                let start = now_us();
                let version = bump(key).await.expect("writes");
                let finish = now_us();
                lines.push(format!("W {key} {version} {start} {finish}"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for line in lines {
                println!("{line}");
            }
        });
    }

    fn fastrand_key() -> u32 {
        use std::hash::{BuildHasher, RandomState};
        thread_local! { static STATE: RandomState = RandomState::new(); }
        let n = STATE.with(|state| state.hash_one(now_us()));
        u32::try_from(n % u64::from(KEYS)).expect("small")
    }
}
