#[allow(unused_imports)]
use cachette::{cached, invalidates};

struct Db;

#[cached(ttl = "60s")]
async fn get_user(db: &Db, id: u64) -> Result<String, String> {
    let _ = db;
    Ok(format!("user {id}"))
}

fn main() {}
