#[allow(unused_imports)]
use cachette::{cached, invalidates};

#[cached(ttl = "60s", key = "")]
async fn get_user(id: u64) -> Result<String, String> {
    Ok(format!("user {id}"))
}

fn main() {}
