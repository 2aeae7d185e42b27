#[allow(unused_imports)]
use cachette::{cached, invalidates};

#[cached(ttl = "60s", skip(dbb))]
async fn get_user(db: &str, id: u64) -> Result<String, String> {
    Ok(format!("{db} {id}"))
}

fn main() {}
