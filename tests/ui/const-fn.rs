#[allow(unused_imports)]
use cachette::{cached, invalidates};

#[cached(ttl = "60s", key = "square:<x>")]
const fn square(x: u64) -> u64 {
    x * x
}

fn main() {}
