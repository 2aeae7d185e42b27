//! review18 (issue 18): `tiered.<name>` sites without Redis.

use cachette::cached;

/// Two regions, each with its own tiered backend in production (their own Redis or prefix):
/// the same key means a different entry in each.
#[cached(ttl = "60s", key = "user:<id>", backend = "tiered.eu")]
async fn eu_user(id: u32) -> String {
    format!("eu user {id}")
}

#[cached(ttl = "60s", key = "user:<id>", backend = "tiered.us")]
async fn us_user(id: u32) -> String {
    format!("us user {id}")
}

/// With Redis, `tiered.eu` and `tiered.us` are two backends whose entries never mix; without
/// Redis they run in memory, and must still not answer one site with the other's value.
#[tokio::test]
async fn review18_two_named_tiered_backends_without_redis_keep_their_entries_apart() {
    assert_eq!(eu_user(1).await, "eu user 1");
    assert_eq!(
        us_user(1).await,
        "us user 1",
        "the `tiered.us` site got the `tiered.eu` site's value"
    );
}
