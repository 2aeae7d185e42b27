//! `cachette::audit()` over the attributes linked into this binary: a service whose
//! invalidations are wired, plus one deliberately unwired invalidation, one unreachable tag, a
//! put nobody reads, a put of the wrong type, and a site nothing mutates. Each is reported,
//! by function, and nothing else is.

use cachette::{audit, cache_put, cached, invalidates, Finding};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Settings {
    theme: String,
}

// Wired: a detail and a tagged list, an update reaching both, a write-through settings put.
#[cached(ttl = "1m", key = "product:<id>")]
async fn product(id: u64) -> String {
    format!("product {id}")
}

#[cached(
    ttl = "1m",
    key = "products:list:<page>",
    tags("products", "category:<category>")
)]
async fn list(page: u32, category: u64) -> Vec<u64> {
    vec![u64::from(page), category]
}

#[invalidates("product:<product_id>", tags("category:<category>"))]
async fn update_product(product_id: u64, category: u64) -> Result<(), String> {
    let _ = (product_id, category);
    Ok(())
}

#[invalidates(tags("products"))]
async fn on_catalogue_reloaded() {}

#[cached(ttl = "1m", key = "user:settings:<user_id>")]
async fn settings(user_id: u64) -> Option<Settings> {
    let _ = user_id;
    None
}

#[cache_put(key = "user:settings:<user>", ttl = "1m")]
async fn save_settings(user: u64, settings: Settings) -> Result<Settings, String> {
    let _ = user;
    Ok(settings)
}

// The mistakes.
#[invalidates("products:<id>")]
async fn update_with_a_typo(id: u64) {
    let _ = id;
}

#[invalidates(tags("category:<category>:v2"))]
async fn invalidate_an_unknown_tag(category: u64) {
    let _ = category;
}

#[cache_put(key = "user:setting:<user>", ttl = "1m")]
async fn put_nobody_reads(user: u64) -> String {
    user.to_string()
}

#[cached(ttl = "1m")]
async fn exchange_rate(currency: u32) -> u64 {
    u64::from(currency)
}

fn path(function: &str) -> String {
    format!("audit::{function}")
}

#[test]
fn every_mistake_is_reported_and_nothing_else() {
    // Called, so that nothing here is dead code to the compiler (the audit does not need it).
    let _ = (
        product(1),
        list(1, 2),
        update_product(1, 2),
        on_catalogue_reloaded(),
        settings(1),
        save_settings(
            1,
            Settings {
                theme: String::new(),
            },
        ),
        update_with_a_typo(1),
        invalidate_an_unknown_tag(1),
        put_nobody_reads(1),
        exchange_rate(1),
    );
    let audit = audit();
    assert_eq!(audit.functions(), 12, "{audit}");
    let mut found: Vec<String> = audit.findings().iter().map(ToString::to_string).collect();
    found.sort();
    let mut expected = vec![
        format!(
            "`{}` invalidates `products:<id>`, which no #[cached] key matches",
            path("update_with_a_typo")
        ),
        format!(
            "`{}` invalidates tag `category:<category>:v2`, which no #[cached] site carries",
            path("invalidate_an_unknown_tag")
        ),
        format!(
            "`{}` stores under `user:setting:<user>`, which no #[cached] site reads",
            path("put_nobody_reads")
        ),
        format!(
            "`{}` caches `audit::exchange_rate(<>)`, which no #[invalidates], tag or #[cache_put] \
             reaches: only its ttl ends an entry",
            path("exchange_rate")
        ),
    ];
    expected.sort();
    assert_eq!(found, expected, "{audit}");

    let accepted = audit.expect_ttl_only(&["audit::exchange_rate"]);
    assert_eq!(accepted.findings().len(), 3, "{accepted}");
    assert!(!accepted
        .findings()
        .iter()
        .any(|finding| matches!(finding, Finding::Untouched { .. })));
}

/// A default key can be invalidated by writing its family: the function's path and one
/// placeholder per argument.
mod default_keys {
    use std::sync::atomic::{AtomicU64, Ordering};

    use cachette::{cached, invalidates};

    pub(super) static LOADS: AtomicU64 = AtomicU64::new(0);

    #[cached(ttl = "1m")]
    pub(super) async fn rate(from: u32, to: u32) -> u64 {
        LOADS.fetch_add(1, Ordering::SeqCst) + u64::from(from + to)
    }

    #[invalidates("audit::default_keys::rate(<from>,<to>)")]
    pub(super) async fn rates_changed(from: u32, to: u32) {
        let _ = (from, to);
    }
}

#[tokio::test]
async fn a_default_key_is_reached_by_its_family() {
    use std::sync::atomic::Ordering;
    // What the audit calls one family is one key at run time.
    let first = default_keys::rate(1, 2).await;
    assert_eq!(default_keys::rate(1, 2).await, first);
    default_keys::rates_changed(1, 2).await;
    assert_ne!(default_keys::rate(1, 2).await, first);
    assert_eq!(default_keys::LOADS.load(Ordering::SeqCst), 2);
    let audit = audit();
    assert!(
        !audit
            .findings()
            .iter()
            .any(|finding| finding.to_string().contains("default_keys")),
        "{audit}"
    );
}
