#[allow(unused_imports)]
use cachette::{cached, invalidates};

#[cached(ttl = 60)]
struct S;

fn main() {}
