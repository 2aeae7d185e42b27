#[allow(unused_imports)]
use cachette::{cached, invalidates};

#[cached(ttl = "60s", key = "user:<id>", backend = "default")]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
