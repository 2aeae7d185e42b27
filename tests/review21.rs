//! Review of the typed memory hit (the stored value's type checked from its kind's `TypeId`):
//! sites whose templates make one key, each with a type the other's entry must never be read
//! as (an `Arc` and its value, same bits, a fail-safe or tagged wrapper, a `cache_put`), every
//! mismatch a miss and a fresh load, and the warning once per site.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};

use cachette::{cache_put, cached, configure};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// The type-mismatch warnings seen, by the function that logged them.
fn warnings() -> &'static Mutex<HashMap<String, usize>> {
    static WARNINGS: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    WARNINGS.get_or_init(Mutex::default)
}

struct MismatchWarnings;

#[derive(Default)]
struct Fields {
    function: Option<String>,
    mismatch: bool,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "function" {
            self.function = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.mismatch |= format!("{value:?}").contains("holds another type"),
            "function" => self.function = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for MismatchWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let (true, Some(function)) = (fields.mismatch, fields.function) {
            *warnings().lock().unwrap().entry(function).or_default() += 1;
        }
    }
}

fn setup() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(MismatchWarnings),
        )
        .expect("the only subscriber");
        configure().install().expect("configured once");
    });
}

/// How many mismatch warnings a function whose name contains `name` logged.
fn warned(name: &str) -> usize {
    let warnings = warnings().lock().unwrap();
    warnings
        .iter()
        .filter(|(function, _)| function.contains(name))
        .map(|(_, count)| count)
        .sum()
}

static LOADS: AtomicUsize = AtomicUsize::new(0);

fn load() -> usize {
    LOADS.fetch_add(1, Ordering::SeqCst)
}

// An `Arc<String>` (inline) and a `String` (boxed: the fill's `Arc` itself).
#[cached(ttl = "60s", key = "r21-arc:<id>")]
async fn as_arc(id: u64) -> Arc<String> {
    load();
    Arc::new(format!("arc {id}"))
}

#[cached(ttl = "60s", key = "r21-arc:<id>")]
async fn as_string(id: u64) -> String {
    load();
    format!("string {id}")
}

// The same bits, inline both.
#[cached(ttl = "60s", key = "r21-bits:<id>")]
async fn as_unsigned(id: u64) -> u64 {
    load();
    id
}

#[cached(ttl = "60s", key = "r21-bits:<id>")]
async fn as_signed(id: u64) -> i64 {
    load();
    -(id as i64)
}

// `Option<Arc<String>>` cached whole (inline, with its niche) and `Arc<String>` from `Some`.
#[cached(ttl = "60s", key = "r21-option:<id>", cache_none)]
async fn as_option(id: u64) -> Option<Arc<String>> {
    load();
    id.is_multiple_of(2).then(|| Arc::new(format!("some {id}")))
}

#[cached(ttl = "60s", key = "r21-option:<id>")]
async fn as_some(id: u64) -> Option<Arc<String>> {
    load();
    Some(Arc::new(format!("inner {id}")))
}

// A fail-safe site (its entry a `Kept<u64>`) and a plain one, and a tagged one (`Tagged<u64>`).
#[cached(ttl = "60s", key = "r21-wrapped:<id>", stale = "10m")]
async fn kept(id: u64) -> u64 {
    load();
    id + 1000
}

#[cached(ttl = "60s", key = "r21-wrapped:<id>")]
async fn plain(id: u64) -> u64 {
    load();
    id + 2000
}

#[cached(ttl = "60s", key = "r21-wrapped:<id>", tags("r21"))]
async fn tagged(id: u64) -> u64 {
    load();
    id + 3000
}

// A `cache_put` of another type into a site's key.
#[cache_put(ttl = "60s", key = "r21-put:<id>")]
async fn put_text(id: u64) -> String {
    format!("put {id}")
}

/// A zero-sized value (held inline, in no bytes).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Marker;

#[cached(ttl = "60s", key = "r21-put:<id>")]
async fn unit(id: u64) -> Marker {
    let _ = id;
    load();
    Marker
}

/// Calls `first` then `second` (each twice) `rounds` times: every switch of type is a miss
/// (one load), every repeat a hit on the site's own fill.
macro_rules! alternate {
    ($rounds:expr, $first:expr => $first_value:expr, $second:expr => $second_value:expr) => {
        for _ in 0..$rounds {
            let loads = LOADS.load(Ordering::SeqCst);
            assert_eq!($first.await, $first_value);
            assert_eq!($first.await, $first_value, "a hit on its own fill");
            assert_eq!($second.await, $second_value);
            assert_eq!($second.await, $second_value, "a hit on its own fill");
            assert_eq!(
                LOADS.load(Ordering::SeqCst),
                loads + 2,
                "one load per switch"
            );
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sites_type_under_the_key_is_a_miss_never_its_value() {
    setup();
    alternate!(3, as_arc(1) => Arc::new("arc 1".to_owned()), as_string(1) => "string 1");
    alternate!(3, as_unsigned(7) => 7, as_signed(7) => -7);
    alternate!(3, as_option(2) => Some(Arc::new("some 2".to_owned())), as_some(2) => Some(Arc::new("inner 2".to_owned())));
    alternate!(3, as_option(3) => None, as_some(3) => Some(Arc::new("inner 3".to_owned())));
    alternate!(3, kept(4) => 1004, tagged(4) => 3004);
    alternate!(3, plain(5) => 2005, tagged(5) => 3005);

    // A fail-safe site reads a plain site's bare value as fresh (its documented reading); the
    // plain site does not read the fail-safe one's `Kept<u64>` as a `u64`.
    let loads = LOADS.load(Ordering::SeqCst);
    assert_eq!(plain(6).await, 2006);
    assert_eq!(kept(6).await, 2006, "the bare value, fresh");
    assert_eq!(LOADS.load(Ordering::SeqCst), loads + 1);
    let loads = LOADS.load(Ordering::SeqCst);
    cachette::invalidate(
        &cachette::KeyBuilder::new()
            .lit("r21-wrapped:")
            .arg(&6u64)
            .finish(),
    )
    .await;
    assert_eq!(kept(6).await, 1006);
    assert_eq!(plain(6).await, 2006, "not the kept value");
    assert_eq!(LOADS.load(Ordering::SeqCst), loads + 2);

    // A put of a `String` over the unit site's key: a miss for it, then its own marker.
    for id in 0..3 {
        assert_eq!(unit(id).await, Marker);
        let loads = LOADS.load(Ordering::SeqCst);
        assert_eq!(unit(id).await, Marker);
        assert_eq!(LOADS.load(Ordering::SeqCst), loads, "a hit on the marker");
        assert_eq!(put_text(id).await, format!("put {id}"));
        assert_eq!(unit(id).await, Marker);
        assert_eq!(
            LOADS.load(Ordering::SeqCst),
            loads + 1,
            "the put's text is a miss"
        );
    }

    // Each site that met another type logged it once, however many times it met it.
    for site in [
        "as_arc",
        "as_string",
        "as_unsigned",
        "as_signed",
        "as_option",
        "as_some",
        "tagged",
        "plain",
        "unit",
    ] {
        assert_eq!(warned(site), 1, "{site}: {:?}", warnings().lock().unwrap());
    }
    // Its bare-value reading is no mismatch for the fail-safe site; the tagged site's entry is.
    assert_eq!(warned("kept"), 1, "{:?}", warnings().lock().unwrap());
}
