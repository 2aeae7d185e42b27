//! Review of issue 14: the audit compares families in which a hashed placeholder (`<f:hash>`,
//! rendered `<#32 hex>`) and a plain one (`<f>`, whose value escapes `#`) look alike, although
//! no plain value can ever render as a hash: an invalidation written with `<f>` for a key
//! cached with `<f:hash>` removes nothing, and the audit must say so.

use std::sync::atomic::{AtomicUsize, Ordering};

use cachette::{audit, cached, invalidates, Finding};

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[derive(serde::Serialize)]
struct Filter {
    name: String,
}

#[cached(ttl = "60s", key = "search:<filter:hash>")]
async fn search(filter: &Filter) -> usize {
    let _ = &filter.name;
    LOADS.fetch_add(1, Ordering::SeqCst)
}

/// Meant to drop the search above, but keyed by the plain value.
#[invalidates("search:<filter>")]
async fn refresh(filter: String) {
    let _ = filter;
}

#[tokio::test]
async fn an_invalidation_of_a_hashed_key_by_its_plain_value_is_reported() {
    let filter = Filter { name: "a".into() };
    let first = search(&filter).await;
    refresh("a".to_owned()).await;
    assert_eq!(
        search(&filter).await,
        first,
        "the invalidation reaches nothing at run time"
    );
    let audit = audit();
    assert!(
        audit.findings().contains(&Finding::UnreachableInvalidation {
            function: "review14_audit::refresh",
            template: "search:<filter>",
        }),
        "{audit}"
    );
}
