// On an item that is not a function, the attribute's own errors are reported too.
use cachette::cached;

#[cached(ttl = "bad", backend = "nope")]
struct User;

fn main() {}
