//! Write-through (`#[cache_put]`, issue 14) on the memory, redis and tiered backends against a
//! real redis-server: after the put, the next read, through another backend instance on the
//! same Redis (another process's stand-in), is a hit with the new value; a load that began
//! before the put and finishes after it cannot overwrite the new value.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cachette::{cache_put, cached, configure, RedisBackend, TieredBackend};
use serde::{Deserialize, Serialize};
use support::redis_server::{OnExit, RedisServer};
use tokio::sync::{Mutex, Notify};

struct Fixture {
    server: RedisServer,
    tiered: TieredBackend,
    peer: TieredBackend,
}

fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = RedisServer::start();
        let redis_on = |prefix: &str| {
            RedisBackend::builder()
                .url(server.url())
                .prefix(prefix)
                .op_timeout(Duration::from_millis(200))
                .build()
                .expect("valid configuration")
        };
        let tiered_on = |prefix: &str| {
            TieredBackend::builder(redis_on(prefix))
                .heartbeat(Duration::from_millis(100))
                .build()
        };
        let (tiered, peer) = (tiered_on("wtt"), tiered_on("wtt"));
        configure()
            .redis("redis", redis_on("wt"))
            .redis("redis.other", redis_on("wt"))
            // A prefix of its own: no other instance's invalidation advances its fences, so
            // the fence race on it shows the put's own.
            .redis("redis.solo", redis_on("wts"))
            .tiered("tiered", tiered.clone())
            .tiered("tiered.peer", peer.clone())
            .install()
            .expect("configured once");
        Mutex::new(Fixture {
            server,
            tiered,
            peer,
        })
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Settings {
    user: u64,
    theme: String,
}

#[derive(Debug)]
struct DbError;

/// The database: each user's theme.
static THEMES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static LOADS: AtomicUsize = AtomicUsize::new(0);

fn theme_of(user: u64) -> String {
    let themes = THEMES.lock().expect("not poisoned");
    themes
        .get(user as usize)
        .cloned()
        .unwrap_or_else(|| "light".to_owned())
}

fn set_theme(user: u64, theme: &str) {
    let mut themes = THEMES.lock().expect("not poisoned");
    if themes.len() <= user as usize {
        themes.resize(user as usize + 1, "light".to_owned());
    }
    themes[user as usize] = theme.to_owned();
}

/// Loads the settings; the first load whose `HOLD` is armed waits at the barrier after reading.
async fn load(user: u64) -> Result<Settings, DbError> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    let theme = theme_of(user);
    if HOLD.swap(u64::MAX, Ordering::SeqCst) == user {
        LOADER_READ.notify_one();
        LOADER_GO.notified().await;
    }
    Ok(Settings { user, theme })
}

static HOLD: AtomicU64 = AtomicU64::new(u64::MAX);
static LOADER_READ: Notify = Notify::const_new();
static LOADER_GO: Notify = Notify::const_new();

macro_rules! settings_on {
    ($get:ident, $put:ident, $backend:literal) => {
        #[cached(ttl = "60s", key = "user:settings:<user>", backend = $backend)]
        async fn $get(user: u64) -> Result<Settings, DbError> {
            load(user).await
        }

        #[cache_put(key = "user:settings:<user>", ttl = "60s", backend = $backend)]
        async fn $put(user: u64, theme: &str) -> Result<Settings, DbError> {
            set_theme(user, theme);
            Ok(Settings {
                user,
                theme: theme.to_owned(),
            })
        }
    };
}

settings_on!(get_memory, put_memory, "memory");
settings_on!(get_redis, put_redis, "redis");
settings_on!(get_tiered, put_tiered, "tiered");
settings_on!(get_solo, put_solo, "redis.solo");

#[cached(ttl = "60s", key = "user:settings:<user>", backend = "redis.other")]
async fn get_redis_other(user: u64) -> Result<Settings, DbError> {
    load(user).await
}

#[cached(ttl = "60s", key = "user:settings:<user>", backend = "tiered.peer")]
async fn get_peer(user: u64) -> Result<Settings, DbError> {
    load(user).await
}

fn loads() -> usize {
    LOADS.load(Ordering::SeqCst)
}

fn settings(user: u64, theme: &str) -> Settings {
    Settings {
        user,
        theme: theme.to_owned(),
    }
}

async fn the_next_read_is_a_hit_with_the_new_value() {
    let fixture = fixture().lock().await;
    // Memory: the same process.
    assert_eq!(get_memory(1).await.unwrap(), settings(1, "light"));
    put_memory(1, "dark").await.unwrap();
    let before = loads();
    assert_eq!(get_memory(1).await.unwrap(), settings(1, "dark"));
    assert_eq!(loads(), before, "memory: a hit");

    // Redis: read through another instance, as another process would.
    assert_eq!(get_redis_other(2).await.unwrap(), settings(2, "light"));
    put_redis(2, "dark").await.unwrap();
    let before = loads();
    assert_eq!(get_redis_other(2).await.unwrap(), settings(2, "dark"));
    assert_eq!(get_redis(2).await.unwrap(), settings(2, "dark"));
    assert_eq!(loads(), before, "redis: hits, in both instances");

    // Tiered: the peer's warm L1 copy is dropped by the put's announcement, and its next read
    // is an L2 hit with the new value.
    // The first call through each instance starts its bus subscriber.
    get_peer(3).await.unwrap();
    get_tiered(3).await.unwrap();
    fixture.peer.l1_ready().await;
    fixture.tiered.l1_ready().await;
    assert_eq!(get_peer(3).await.unwrap(), settings(3, "light"));
    let received = fixture.peer.invalidations_received();
    put_tiered(3, "dark").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fixture.peer.invalidations_received() <= received {
        assert!(Instant::now() < deadline, "the peer heard the put");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = loads();
    assert_eq!(get_peer(3).await.unwrap(), settings(3, "dark"));
    assert_eq!(get_tiered(3).await.unwrap(), settings(3, "dark"));
    assert_eq!(loads(), before, "tiered: hits, in both instances");
}

async fn an_older_load_cannot_overwrite_a_put() {
    let _fixture = fixture().lock().await;
    for (user, backend) in [
        (11u64, "memory"),
        (12, "redis"),
        (14, "solo"),
        (13, "tiered"),
    ] {
        set_theme(user, "old");
        HOLD.store(user, Ordering::SeqCst);
        let slow = tokio::spawn(async move {
            match backend {
                "memory" => get_memory(user).await,
                "redis" => get_redis(user).await,
                "solo" => get_solo(user).await,
                _ => get_tiered(user).await,
            }
        });
        LOADER_READ.notified().await;
        match backend {
            "memory" => put_memory(user, "new").await,
            "redis" => put_redis(user, "new").await,
            "solo" => put_solo(user, "new").await,
            _ => put_tiered(user, "new").await,
        }
        .unwrap();
        LOADER_GO.notify_one();
        assert_eq!(
            slow.await.expect("completes").unwrap(),
            settings(user, "old"),
            "{backend}: the slow caller gets what it loaded"
        );
        let before = loads();
        let now = match backend {
            "memory" => get_memory(user).await,
            "redis" => get_redis(user).await,
            "solo" => get_solo(user).await,
            _ => get_tiered(user).await,
        };
        assert_eq!(
            now.unwrap(),
            settings(user, "new"),
            "{backend}: the put stands"
        );
        assert_eq!(loads(), before, "{backend}: and is a hit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_through_scenarios() {
    let _stop = OnExit(|| {
        if let Ok(mut fixture) = fixture().try_lock() {
            fixture.server.kill();
        }
    });
    the_next_read_is_a_hit_with_the_new_value().await;
    an_older_load_cannot_overwrite_a_put().await;
}
