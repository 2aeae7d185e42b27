// A value of the wrong kind is reported with the option it belongs to, and the options and
// templates after it are still checked.
use cachette::{cached, invalidates};

#[cached(key = 5, ttl = "0s", backend = "nope", version = "2")]
async fn get_user(id: u64) -> u64 {
    id
}

#[invalidates("user:<id>", 5, "profile:<idd>")]
async fn rename_user(id: u64) {
    let _ = id;
}

fn main() {}
