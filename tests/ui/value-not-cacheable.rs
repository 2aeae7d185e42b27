#[allow(unused_imports)]
use cachette::{cached, invalidates};

struct User {
    name: String,
}

#[cached(ttl = "60s", key = "user:<id>", backend = "memory")]
async fn get_user(id: u64) -> Result<User, String> {
    Ok(User { name: format!("user {id}") })
}

fn main() {}
