#[allow(unused_imports)]
use cachette::{cached, invalidates};

#[cached(ttl = "60s", key = "user:<usr>")]
async fn get_user(user: String, id: u64) -> Result<String, String> {
    Ok(format!("{user} {id}"))
}

fn main() {}
