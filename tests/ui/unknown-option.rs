#[allow(unused_imports)]
use cachette::{cached, invalidates};

#[cached(tll = "60s", key = "user:<id>")]
async fn get_user(id: u64) -> Result<String, String> {
    Ok(format!("user {id}"))
}

fn main() {}
