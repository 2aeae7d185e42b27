//! Review of issue 14: the audit compares families in which a hashed placeholder (`<f:hash>`,
//! rendered `<#32 hex>`) and a plain one (`<f>`, whose value escapes `#`) look alike, although
//! no plain value can ever render as a hash: an invalidation written with `<f>` for a key
//! cached with `<f:hash>` removes nothing, and the audit must say so. And a put under the key
//! of a site with tags is never served (the site's entries carry its tags' generations): a
//! put nobody reads, which the audit can see from the registrations.

use std::sync::atomic::{AtomicUsize, Ordering};

use cachette::{audit, cache_put, cached, invalidates, Finding};

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
        audit
            .findings()
            .contains(&Finding::UnreachableInvalidation {
                function: "review14_audit::refresh",
                template: "search:<filter>",
            }),
        "{audit}"
    );
}

static PAGE_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "60s", key = "page:<n>", tags("pages"))]
async fn page(n: u64) -> usize {
    let _ = n;
    PAGE_LOADS.fetch_add(1, Ordering::SeqCst)
}

#[invalidates(tags("pages"))]
async fn pages_changed() {}

/// Meant to refresh the page in place.
#[cache_put(key = "page:<n>", ttl = "60s", backend = "memory")]
async fn put_page(n: u64) -> usize {
    let _ = n;
    1_000
}

#[tokio::test]
async fn a_put_under_a_tagged_sites_key_is_reported_as_read_by_nobody() {
    page(1).await;
    pages_changed().await;
    assert_eq!(put_page(1).await, 1_000);
    assert_ne!(page(1).await, 1_000, "the put value is not served: a miss");
    let audit = audit();
    assert!(
        audit.findings().contains(&Finding::UnreadPut {
            function: "review14_audit::put_page",
            template: "page:<n>",
        }),
        "{audit}"
    );
}
