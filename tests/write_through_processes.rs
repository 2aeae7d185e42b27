//! Write-through (`#[cache_put]`, issue 14) on `tiered` across real OS processes: a putting
//! process A and a reading process B on one real redis-server, released through Redis lists.
//!
//! 1. B has the old value warm in its L1; A puts a new one; B's next read is a hit with the
//!    new value, and B's loader never runs again (counted in B).
//! 2. The stale-load race: B's load of a cold key reads the old data and is held at a barrier
//!    (a Redis list) while A puts the new value; then B's load finishes. Redis (read raw, and
//!    through A) and both processes' L1s hold the put value, not what B loaded.
//!
//! The binary is its own worker (`harness = false`): `CACHETTE_WP_ROLE` is `reader` or `putter`.

mod support;

use std::process::{Child, Command, Stdio};

use support::redis_server::{self, RedisServer};
use support::start_line;

const ROLE: &str = "CACHETTE_WP_ROLE";
const URL: &str = "CACHETTE_WP_URL";
/// Distinct bytes, so that a raw read of the entry tells which value it holds.
const OLD: &str = "theme-old-5c1e";
const NEW: &str = "theme-new-9a7d";
/// The users of the two scenarios.
const WARM: u64 = 1;
const RACED: u64 = 2;

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok(role) => worker::run(
            role,
            &std::env::var(URL).expect("the parent passes the url"),
        ),
        _ => a_put_reaches_another_process_and_outlives_its_older_load(),
    }
}

/// One value of the list `name` (the parent's side of a barrier), waiting at most 30 s.
fn take(redis: &mut redis::Connection, name: &str) {
    let got: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(name)
        .arg(30)
        .query(redis)
        .expect("blpop");
    assert!(got.is_some(), "nothing came on {name} within 30 s");
}

fn give(redis: &mut redis::Connection, name: &str) {
    let _: i64 = redis::cmd("RPUSH")
        .arg(name)
        .arg(1)
        .query(redis)
        .expect("rpush");
}

fn a_put_reaches_another_process_and_outlives_its_older_load() {
    let server = RedisServer::start();
    let mut redis = server.blocking_connection();
    for user in [WARM, RACED] {
        let () = redis::cmd("SET")
            .arg(format!("db:theme:{user}"))
            .arg(OLD)
            .query(&mut redis)
            .expect("the database's old value");
    }
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
    let workers = [spawn("reader"), spawn("putter")];

    // 1. B warms its L1; A puts; B reads.
    start_line::release(&server.url(), "wp-warm", 2);
    start_line::release(&server.url(), "wp-put", 2);

    // 2. B's load is held across A's put.
    take(&mut redis, "wp:b-loaded");
    give(&mut redis, "wp:a-go");
    take(&mut redis, "wp:a-done");
    give(&mut redis, "wp:b-go");
    start_line::release(&server.url(), "wp-race-done", 2);
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(format!("wp:1:{{user:settings:<{RACED}>}}:v"))
        .query(&mut redis)
        .expect("the entry");
    let holds = |text: &str| raw.windows(text.len()).any(|w| w == text.as_bytes());
    assert!(
        holds(NEW) && !holds(OLD),
        "the entry in Redis holds the put value, not the older load's"
    );
    start_line::release(&server.url(), "wp-checked", 2);

    for worker in workers {
        let output = worker.wait_with_output().expect("worker exits");
        let stdout = String::from_utf8_lossy(&output.stdout);
        print!("{stdout}");
        assert!(
            output.status.success(),
            "a worker failed: {}",
            output.status
        );
    }
    println!("write_through_processes: the entry in Redis holds {NEW:?} (read raw): ok");
    println!("test result: ok. 2 passed; 0 failed");
}

mod worker {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use cachette::{cache_put, cached, configure, RedisBackend, TieredBackend};
    use serde::{Deserialize, Serialize};

    use super::{redis_server, start_line, NEW, OLD, RACED, WARM};

    static URL: OnceLock<String> = OnceLock::new();
    /// This process's loader runs.
    static LOADS: AtomicU64 = AtomicU64::new(0);

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub(super) struct Settings {
        user: u64,
        theme: String,
    }

    fn settings_of(user: u64, theme: &str) -> Settings {
        Settings {
            user,
            theme: theme.to_owned(),
        }
    }

    async fn database() -> redis::aio::MultiplexedConnection {
        redis_server::connect(URL.get().expect("set")).await
    }

    /// Reads the database; the raced user's load then says so and waits to be let go.
    #[cached(ttl = "60s", key = "user:settings:<user>", backend = "tiered")]
    async fn settings(user: u64) -> Result<Settings, String> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        let mut db = database().await;
        let theme: Option<String> = redis::cmd("GET")
            .arg(format!("db:theme:{user}"))
            .query_async(&mut db)
            .await
            .map_err(|e| e.to_string())?;
        let theme = theme.unwrap_or_default();
        if user == RACED {
            let _: i64 = redis::cmd("RPUSH")
                .arg("wp:b-loaded")
                .arg(1)
                .query_async(&mut db)
                .await
                .map_err(|e| e.to_string())?;
            let go: Option<(String, String)> = redis::cmd("BLPOP")
                .arg("wp:b-go")
                .arg(30)
                .query_async(&mut db)
                .await
                .map_err(|e| e.to_string())?;
            assert!(go.is_some(), "the held load was never let go");
        }
        Ok(settings_of(user, &theme))
    }

    /// Writes the database, and its value through to the cache.
    #[cache_put(key = "user:settings:<user>", ttl = "60s", backend = "tiered")]
    async fn update_settings(user: u64, theme: &str) -> Result<Settings, String> {
        let mut db = database().await;
        let () = redis::cmd("SET")
            .arg(format!("db:theme:{user}"))
            .arg(theme)
            .query_async(&mut db)
            .await
            .map_err(|e| e.to_string())?;
        Ok(settings_of(user, theme))
    }

    /// (l1 hits, hits) of `settings` so far.
    fn hits() -> (u64, u64) {
        let stats = cachette::stats();
        stats
            .site("worker::settings")
            .map_or((0, 0), |site| (site.l1_hits, site.hits))
    }

    /// Reads `user` twice: both the put value, no load, the second from L1.
    async fn reads_the_put_value_from_l1(who: &str, user: u64) {
        let loads = LOADS.load(Ordering::SeqCst);
        let (l1_before, hits_before) = hits();
        assert_eq!(
            settings(user).await.unwrap(),
            settings_of(user, NEW),
            "{who}"
        );
        assert_eq!(
            settings(user).await.unwrap(),
            settings_of(user, NEW),
            "{who}"
        );
        let (l1_after, hits_after) = hits();
        assert_eq!(LOADS.load(Ordering::SeqCst), loads, "{who}: no load");
        assert_eq!(hits_after, hits_before + 2, "{who}: two hits");
        assert!(l1_after > l1_before, "{who}: the second from L1");
        println!("write_through_processes: {who}: user {user} read {NEW:?} twice, 2 hits ({} from L1), 0 loads: ok", l1_after - l1_before);
    }

    /// Waits (bounded) until a message from another process arrived after `received` had.
    async fn heard(tiered: &TieredBackend, received: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tiered.invalidations_received() <= received {
            assert!(Instant::now() < deadline, "B never heard the put");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn reader(url: &str, tiered: &TieredBackend) {
        // 1. The old value warm in L1.
        assert_eq!(settings(WARM).await.unwrap(), settings_of(WARM, OLD));
        // Loaded while the bus was starting, so into L2 only; then from L2 into L1; then an L1
        // hit.
        tiered.l1_ready().await;
        assert_eq!(settings(WARM).await.unwrap(), settings_of(WARM, OLD));
        assert_eq!(settings(WARM).await.unwrap(), settings_of(WARM, OLD));
        let (l1_hits, _) = hits();
        assert!(l1_hits >= 1, "warm in L1");
        assert_eq!(LOADS.load(Ordering::SeqCst), 1);
        let received = tiered.invalidations_received();
        start_line::arrive(url, "wp-warm").await;
        start_line::arrive(url, "wp-put").await;
        // The put has returned in A; its announcement is on its way.
        heard(tiered, received).await;
        reads_the_put_value_from_l1("B after A's put", WARM).await;
        assert_eq!(LOADS.load(Ordering::SeqCst), 1, "B loaded user {WARM} once");

        // 2. A load that read the old data, held across A's put.
        let loads = LOADS.load(Ordering::SeqCst);
        let received = tiered.invalidations_received();
        let held = settings(RACED).await.unwrap();
        assert_eq!(
            held,
            settings_of(RACED, OLD),
            "the held caller gets its load"
        );
        assert_eq!(LOADS.load(Ordering::SeqCst), loads + 1);
        // Its fill was refused whenever the put's message arrives; waiting for it keeps the
        // reads below from seeing it drop what they put into L1.
        heard(tiered, received).await;
        start_line::arrive(url, "wp-race-done").await;
        start_line::arrive(url, "wp-checked").await;
        reads_the_put_value_from_l1("B after its older load", RACED).await;
    }

    async fn putter(url: &str, tiered: &TieredBackend) {
        // The bus up before B warms: A's put announces either way (in its script), but A's
        // own reads below use L1 only once it is.
        let _ = settings(u64::MAX).await;
        tiered.l1_ready().await;
        start_line::arrive(url, "wp-warm").await;
        update_settings(WARM, NEW).await.unwrap();
        start_line::arrive(url, "wp-put").await;
        reads_the_put_value_from_l1("A after its put", WARM).await;

        let mut db = database().await;
        let go: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("wp:a-go")
            .arg(30)
            .query_async(&mut db)
            .await
            .expect("blpop");
        assert!(go.is_some(), "never told to put");
        update_settings(RACED, NEW).await.unwrap();
        // B's message is sent in the put's script; wait for nothing more.
        let _: i64 = redis::cmd("RPUSH")
            .arg("wp:a-done")
            .arg(1)
            .query_async(&mut db)
            .await
            .expect("rpush");
        start_line::arrive(url, "wp-race-done").await;
        start_line::arrive(url, "wp-checked").await;
        reads_the_put_value_from_l1("A after B's older load", RACED).await;
        assert_eq!(
            LOADS.load(Ordering::SeqCst),
            1,
            "A loaded nothing but its bus starter"
        );
    }

    pub(super) fn run(role: &str, url: &str) {
        URL.set(url.to_owned()).expect("once");
        let l2 = RedisBackend::builder()
            .url(url)
            .prefix("wp")
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
            match role {
                "reader" => reader(url, &tiered).await,
                "putter" => putter(url, &tiered).await,
                other => panic!("unknown role {other}"),
            }
        });
    }
}
