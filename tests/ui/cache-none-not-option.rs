#[allow(unused_imports)]
use cachette::{cached, invalidates};

#[cached(ttl = "60s", key = "user:<id>", cache_none)]
async fn get_user(id: u64) -> Result<String, String> {
    Ok(format!("user {id}"))
}

fn main() {}
