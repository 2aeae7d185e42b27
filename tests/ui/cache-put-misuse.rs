use cachette::cache_put;

#[cache_put(ttl = "60s")]
async fn no_key(id: u64) -> u64 {
    id
}

#[cache_put(key = "user:<id>", ttl = "60s", tags("users"))]
fn sync_with_tags(id: u64) -> u64 {
    id
}

#[cache_put(key = "user:<user_id>")]
async fn no_ttl_unknown_placeholder(id: u64) -> u64 {
    id
}

fn main() {}
