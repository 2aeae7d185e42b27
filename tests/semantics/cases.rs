//! What is cached, for how long, under which key, and what invalidation reaches: the cases,
//! run by `tests/semantics.rs` (sites without `backend` on `memory`) and by
//! `tests/tiered_without_redis.rs` (on `tiered`, with no Redis configured).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::Duration;

use cachette::{cached, invalidates, MemoryBackend, TestClock};
use serde::Serialize;

static SMALL: std::sync::OnceLock<MemoryBackend> = std::sync::OnceLock::new();

/// Installs this binary's configuration (`super::configuration()`, a small and a timed backend)
/// once,
/// before any cached call.
pub(super) fn setup() -> &'static MemoryBackend {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let small = MemoryBackend::builder().max_entries(10).build();
        let timed = MemoryBackend::builder().clock(clock()).build();
        super::configuration()
            .memory("memory.small", small.clone())
            .memory("memory.timed", timed)
            .install()
            .expect("first and only configuration");
        SMALL.set(small).expect("set once");
    });
    SMALL.get().expect("installed above")
}

/// The clock of `memory.timed`, which tests advance instead of sleeping.
fn clock() -> &'static TestClock {
    static CLOCK: OnceLock<TestClock> = OnceLock::new();
    CLOCK.get_or_init(TestClock::new)
}

macro_rules! counter {
    ($name:ident) => {
        static $name: AtomicUsize = AtomicUsize::new(0);
    };
}

fn count(counter: &AtomicUsize) -> usize {
    counter.fetch_add(1, Ordering::SeqCst) + 1
}

counter!(RESULT_CALLS);

#[cached(ttl = "60s", key = "result:<id>")]
async fn result_fn(id: u64, fail: bool) -> Result<usize, String> {
    let n = count(&RESULT_CALLS);
    if fail {
        Err(format!("failure {n} for {id}"))
    } else {
        Ok(n)
    }
}

#[tokio::test]
async fn result_caches_ok_and_never_err() {
    setup();
    assert_eq!(result_fn(1, true).await, Err("failure 1 for 1".into()));
    assert_eq!(result_fn(1, true).await, Err("failure 2 for 1".into()));
    assert_eq!(result_fn(1, false).await, Ok(3));
    assert_eq!(result_fn(1, true).await, Ok(3), "the Ok is cached");
}

counter!(OPTION_CALLS);
counter!(OPTION_NONE_CALLS);

#[cached(ttl = "60s", key = "option:<id>")]
async fn option_fn(id: u64) -> Option<usize> {
    let n = count(&OPTION_CALLS);
    (id != 0).then_some(n)
}

#[cached(ttl = "60s", key = "option-none:<id>", cache_none)]
async fn option_cache_none(id: u64) -> Option<usize> {
    let n = count(&OPTION_NONE_CALLS);
    (id != 0).then_some(n)
}

#[tokio::test]
async fn option_caches_some_and_none_only_when_asked() {
    setup();
    assert_eq!(option_fn(0).await, None);
    assert_eq!(option_fn(0).await, None);
    assert_eq!(OPTION_CALLS.load(Ordering::SeqCst), 2, "None is not cached");
    assert_eq!(option_fn(5).await, Some(3));
    assert_eq!(option_fn(5).await, Some(3));

    assert_eq!(option_cache_none(0).await, None);
    assert_eq!(option_cache_none(0).await, None);
    assert_eq!(
        OPTION_NONE_CALLS.load(Ordering::SeqCst),
        1,
        "cache_none caches None"
    );
}

counter!(PLAIN_CALLS);

#[cached(ttl = "60s")]
async fn plain(a: u32, b: String) -> (usize, String) {
    (count(&PLAIN_CALLS), format!("{a}{b}"))
}

#[tokio::test]
async fn plain_values_are_always_cached_under_the_default_key() {
    setup();
    let first = plain(1, "x".into()).await;
    assert_eq!(plain(1, "x".into()).await, first);
    assert_ne!(
        plain(1, "y".into()).await,
        first,
        "every parameter is in the default key"
    );
    assert_ne!(plain(2, "x".into()).await, first);
}

counter!(SKIP_CALLS);

struct Db;

#[cached(ttl = "60s", skip(db))]
fn skips(id: u8, db: &Db) -> usize {
    let _ = db;
    count(&SKIP_CALLS) + usize::from(id)
}

#[test]
fn sync_fns_cache_and_skip_leaves_parameters_out() {
    setup();
    let first = skips(1, &Db);
    assert_eq!(skips(1, &Db), first);
    assert_eq!(SKIP_CALLS.load(Ordering::SeqCst), 1);
}

counter!(METHOD_CALLS);

struct Repo {
    tenant: String,
}

impl Repo {
    /// `self` is not part of the key: two repos share entries.
    #[cached(ttl = "60s", key = "shared:<id>")]
    async fn shared(&self, id: u64) -> (u64, usize) {
        let _ = &self.tenant;
        (id, count(&METHOD_CALLS))
    }

    /// `<self.tenant>` puts the receiver's field in the key.
    #[cached(ttl = "60s", key = "tenant:<self.tenant>:<id>")]
    async fn per_tenant(&self, id: u64) -> String {
        format!("{}/{id}/{}", self.tenant, count(&METHOD_CALLS))
    }
}

#[tokio::test]
async fn methods_key_on_self_only_when_named() {
    setup();
    let (a, b) = (Repo { tenant: "a".into() }, Repo { tenant: "b".into() });
    let shared = a.shared(1).await;
    assert_eq!(b.shared(1).await, shared);
    let from_a = a.per_tenant(1).await;
    assert_eq!(a.per_tenant(1).await, from_a);
    assert!(b.per_tenant(1).await.starts_with("b/1/"));
}

#[derive(Serialize)]
struct Filter {
    name: String,
    limit: u32,
}

counter!(HASH_CALLS);

#[cached(ttl = "60s", key = "search:<filter:hash>:<filter.limit>")]
async fn search(filter: &Filter) -> usize {
    count(&HASH_CALLS)
}

#[tokio::test]
async fn hashed_and_field_placeholders_key_on_the_value() {
    setup();
    let filter = |name: &str| Filter {
        name: name.into(),
        limit: 10,
    };
    let first = search(&filter("a")).await;
    assert_eq!(search(&filter("a")).await, first);
    assert_ne!(search(&filter("b")).await, first);
}

counter!(PROFILE_CALLS);
counter!(SUMMARY_CALLS);

#[cached(ttl = "60s", key = "profile:<id>")]
async fn profile(id: u64) -> Result<String, String> {
    Ok(format!("profile {id} #{}", count(&PROFILE_CALLS)))
}

#[cached(ttl = "60s", key = "summary:<user_id>")]
fn summary(user_id: u64) -> String {
    format!("summary {user_id} #{}", count(&SUMMARY_CALLS))
}

#[invalidates("profile:<id>", "summary:<id>")]
async fn update_profile(id: u64, fail: bool) -> Result<(), String> {
    if fail {
        Err("rejected".into())
    } else {
        Ok(())
    }
}

#[tokio::test]
async fn invalidates_reaches_every_function_that_stored_the_key() {
    setup();
    let p1 = profile(3).await.expect("ok");
    let s1 = summary(3);
    update_profile(3, true).await.expect_err("the update fails");
    assert_eq!(
        profile(3).await.expect("ok"),
        p1,
        "an Err invalidates nothing"
    );
    assert_eq!(summary(3), s1);
    update_profile(3, false).await.expect("the update succeeds");
    assert_ne!(profile(3).await.expect("ok"), p1);
    assert_ne!(summary(3), s1);
}

counter!(TTL_CALLS);

// Expiry on the backend's test clock: the test moves it past the ttl instead of sleeping.
#[cached(ttl = "60s", key = "ttl", backend = "memory.timed")]
async fn short_lived() -> usize {
    count(&TTL_CALLS)
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    setup();
    assert_eq!(short_lived().await, 1);
    clock().advance(Duration::from_millis(59_990));
    assert_eq!(short_lived().await, 1, "inside the ttl");
    clock().advance(Duration::from_millis(20));
    assert_eq!(short_lived().await, 2, "past it");
    assert_eq!(short_lived().await, 2, "refilled");
}

#[cached(ttl = "60s", key = "n:<n>", backend = "memory.small")]
fn small(n: u32) -> u32 {
    n
}

#[test]
fn a_bounded_backend_evicts() {
    let backend = setup();
    for n in 0..200 {
        assert_eq!(small(n), n);
    }
    backend.run_pending_tasks();
    assert!(
        backend.entry_count() <= 10,
        "{} entries",
        backend.entry_count()
    );
}

#[cached(ttl = "60s", key = "shared-key:<id>")]
fn as_number(id: u32) -> u32 {
    id
}

#[cached(ttl = "60s", key = "shared-key:<id>")]
fn as_text(id: u32) -> String {
    id.to_string()
}

#[test]
fn a_type_mismatch_under_one_key_is_a_miss() {
    setup();
    assert_eq!(as_number(5), 5);
    assert_eq!(as_text(5), "5");
    assert_eq!(as_number(5), 5);
}

mod renamed {
    use ::cachette as cachette1;

    #[cachette1::cached(ttl = 60, key = "renamed:<x>", crate = "cachette1")]
    pub fn renamed(x: u8) -> u8 {
        x + 1
    }
}

#[test]
fn the_crate_path_can_be_overridden() {
    setup();
    assert_eq!(renamed::renamed(1), 2);
}

struct Apples;
struct Pears;

impl Apples {
    #[cached(ttl = "60s")]
    fn count(&self, box_id: u8) -> String {
        format!("apples in {box_id}")
    }
}

impl Pears {
    #[cached(ttl = "60s")]
    fn count(&self, box_id: u8) -> String {
        format!("pears in {box_id}")
    }
}

#[test]
fn default_keys_of_same_named_methods_differ_by_type() {
    setup();
    assert_eq!(Apples.count(1), "apples in 1");
    assert_eq!(Pears.count(1), "pears in 1");
}

type Fallible<T> = Result<T, String>;

counter!(ALIAS_CALLS);

#[cached(ttl = "60s", key = "alias:<fail>", returns = "result")]
async fn through_alias(fail: bool) -> Fallible<usize> {
    let n = count(&ALIAS_CALLS);
    if fail {
        Err(format!("failure {n}"))
    } else {
        Ok(n)
    }
}

#[tokio::test]
async fn a_type_alias_takes_its_shape_from_returns() {
    setup();
    assert!(through_alias(true).await.is_err());
    assert!(through_alias(true).await.is_err());
    assert_eq!(
        ALIAS_CALLS.load(Ordering::SeqCst),
        2,
        "Err is not cached through the alias"
    );
}
