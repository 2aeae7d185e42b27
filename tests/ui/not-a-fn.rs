#[allow(unused_imports)]
use cachet::{cached, invalidates};

#[cached(ttl = 60)]
struct S;

fn main() {}
