#[allow(unused_imports)]
use cachette::{cached, invalidates};

#[cached(ttl = "60s")]
async fn get<T: std::fmt::Display + Send>(x: T) -> String {
    x.to_string()
}

fn main() {}
