use cachette::cached;

#[cached(ttl = "60s", key = "user:<id>", backend = "redis")]
fn get_user(id: u64) -> Result<String, String> {
    Ok(format!("user {id}"))
}

fn main() {}
