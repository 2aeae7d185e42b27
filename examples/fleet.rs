//! Choosing a backend: two worker processes of one service, the same attribute, two
//! configurations.
//!
//! Worker 1 reads a price (and caches it), worker 2 changes it and invalidates it, then worker 1
//! reads it again. With `memory` every process has a cache of its own, and worker 2's
//! invalidation never reaches worker 1's: worker 1 goes on serving the old price until the ttl
//! ends. With `tiered`, the invalidation reaches every process through Redis.
//!
//! ```text
//! cargo run --example fleet                                              # no Redis
//! CACHETTE_REDIS_URL=redis://127.0.0.1:6379/ cargo run --example fleet   # with Redis
//! ```
//!
//! The site names no backend: each run of the workers chooses it with `CACHETTE_DEFAULT_BACKEND`
//! (`Config::from_env`). Without Redis, `tiered` runs in memory, so it goes stale too, and the
//! start-up line on stderr says so.

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachette::{cached, invalidates};

/// How long worker 1 is watched after the change: an in-process cache would stay stale far
/// longer (the ttl is 60 s), the tiered bus delivers in milliseconds.
pub const WATCH: Duration = Duration::from_secs(1);

/// The service's database, shared by its workers: a file per item, in cents.
struct Db(PathBuf);

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "price:<item>")]
async fn price(item: &str, db: &Db) -> Result<u64, String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    let text = std::fs::read_to_string(db.0.join(item)).map_err(|e| e.to_string())?;
    text.trim()
        .parse()
        .map_err(|_| format!("not a price: {text:?}"))
}

#[invalidates("price:<item>")]
async fn set_price(item: &str, cents: u64, db: &Db) -> Result<(), String> {
    std::fs::write(db.0.join(item), cents.to_string()).map_err(|e| e.to_string())
}

/// `fleet` runs both configurations; `fleet worker <dir>` is one worker process.
pub fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("worker") {
        let db = args
            .next()
            .ok_or("usage: fleet worker <database directory>")?;
        if let Err(error) = worker(PathBuf::from(db)) {
            // A configuration error names its variable: say it plainly, and stop.
            eprintln!("fleet worker: {error}");
            std::process::exit(1);
        }
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let redis_url = std::env::var("CACHETTE_REDIS_URL").ok();
    for backend in ["memory", "tiered"] {
        let run = two_workers(&exe, backend, redis_url.as_deref())?;
        println!("{run}");
    }
    if redis_url.is_none() {
        println!(
            "(no CACHETTE_REDIS_URL: `tiered` ran in memory; set it to see tiered stay fresh)"
        );
    }
    Ok(())
}

/// A worker process: configured from the environment, it answers `get <item>` with the price
/// and whether its body ran (`loaded`) or the cache answered (`cached`), and `set <item>
/// <cents>` with `ok`, one line each.
fn worker(db: PathBuf) -> Result<(), Box<dyn Error>> {
    // The start-up line saying where each backend keeps its entries goes to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    cachette::configure().from_env()?.install()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let db = Db(db);
    for line in std::io::stdin().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply: Result<String, String> = runtime.block_on(async {
            match words.as_slice() {
                ["get", item] => {
                    let loads = LOADS.load(Ordering::SeqCst);
                    let cents = price(item, &db).await?;
                    let ran = LOADS.load(Ordering::SeqCst) != loads;
                    Ok(format!("{cents} {}", if ran { "loaded" } else { "cached" }))
                }
                ["set", item, cents] => {
                    let cents = cents.parse().map_err(|_| format!("not a price: {cents}"))?;
                    set_price(item, cents, &db).await.map(|()| "ok".to_owned())
                }
                _ => Err(format!("unknown command {line:?}")),
            }
        });
        println!("{}", reply.unwrap_or_else(|error| format!("error {error}")));
    }
    Ok(())
}

/// One worker process, driven through its stdin and stdout.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn start(
        exe: &Path,
        db: &Path,
        env: &[(&str, &str)],
        redis_url: Option<&str>,
    ) -> std::io::Result<Worker> {
        let mut command = Command::new(exe);
        command
            .arg("worker")
            .arg(db)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        match redis_url {
            Some(url) => command.env("CACHETTE_REDIS_URL", url),
            None => command.env_remove("CACHETTE_REDIS_URL"),
        };
        let mut child = command.spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Worker {
            child,
            stdin,
            stdout,
        })
    }

    fn ask(&mut self, command: &str) -> Result<String, Box<dyn Error>> {
        writeln!(self.stdin, "{command}")?;
        let mut reply = String::new();
        if self.stdout.read_line(&mut reply)? == 0 {
            return Err(format!("the worker exited ({})", self.child.wait()?).into());
        }
        Ok(reply.trim().to_owned())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What worker 1 saw.
pub struct Run {
    /// The default backend the workers were configured with.
    pub backend: String,
    /// Worker 1's two reads before the change (`100 loaded`, `100 cached`).
    pub before: [String; 2],
    /// Worker 1's reads after worker 2's change, until one was fresh or [`WATCH`] passed.
    pub after: Vec<String>,
    /// How long after the change worker 1 first read the new price, if it did.
    pub fresh_after: Option<Duration>,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [first, second] = &self.before;
        write!(
            f,
            "{:>6}: worker 1 read {first}, then {second}; worker 2 set 120; worker 1 read ",
            self.backend
        )?;
        match self.fresh_after {
            Some(after) => write!(f, "120 {after:.1?} later: fresh"),
            None => write!(
                f,
                "{} for {WATCH:?} ({} reads): stale",
                self.after.last().map_or("nothing", String::as_str),
                self.after.len()
            ),
        }
    }
}

/// Two workers on `backend` over one database: worker 1 reads the price twice, worker 2 sets
/// it, and worker 1 is watched for [`WATCH`].
pub fn two_workers(
    exe: &Path,
    backend: &str,
    redis_url: Option<&str>,
) -> Result<Run, Box<dyn Error>> {
    // A database and a key prefix of this run's own, so that earlier runs change nothing.
    let run = format!("{}-{backend}-{}", std::process::id(), now_nanos());
    let db = std::env::temp_dir().join(format!("cachette-fleet-{run}"));
    std::fs::create_dir_all(&db)?;
    std::fs::write(db.join("tea"), "100")?;
    let prefix = format!("fleet-{run}");
    let env = [
        ("CACHETTE_DEFAULT_BACKEND", backend),
        ("CACHETTE_KEY_PREFIX", prefix.as_str()),
    ];
    let mut one = Worker::start(exe, &db, &env, redis_url)?;
    let mut two = Worker::start(exe, &db, &env, redis_url)?;
    let before = [one.ask("get tea")?, one.ask("get tea")?];
    let changed = two.ask("set tea 120")?;
    if changed != "ok" {
        return Err(format!("worker 2 could not set the price: {changed}").into());
    }
    let start = Instant::now();
    let mut after = Vec::new();
    let mut fresh_after = None;
    while start.elapsed() < WATCH {
        let read = one.ask("get tea")?;
        let fresh = read.starts_with("120 ");
        after.push(read);
        if fresh {
            fresh_after = Some(start.elapsed());
            break;
        }
        // Pacing the reads, not waiting for anything.
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_dir_all(&db);
    Ok(Run {
        backend: backend.to_owned(),
        before,
        after,
        fresh_after,
    })
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}
