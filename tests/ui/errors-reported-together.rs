#[allow(unused_imports)]
use cachette::{cached, invalidates};

// An argument error, a signature error and cross-field errors, all in one report.
#[cached(key = "user:<idd>", backend = "memroy")]
const fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
