#[allow(unused_imports)]
use cachette::{cached, invalidates};

/// Cloneable, but not serialisable: fine in memory, not in Redis. (It does derive `Deserialize`,
/// so that one error is reported: the list of other types implementing `Deserialize` that
/// rustc prints depends on which crates a build links.)
#[derive(Clone, serde::Deserialize)]
struct Session {
    user: u64,
}

// No `backend`: the site follows the configured default, which may be `tiered`.
#[cached(ttl = "60s", key = "session:<id>")]
async fn session(id: u64) -> Option<Session> {
    Some(Session { user: id })
}

// Pinned to this process, the same value is fine.
#[cached(ttl = "60s", key = "pinned:<id>", backend = "memory")]
async fn pinned(id: u64) -> Option<Session> {
    Some(Session { user: id })
}

// A synchronous site never leaves the process, so it needs no serde either.
#[cached(ttl = "60s", key = "sync:<id>")]
fn sync_session(id: u64) -> Option<Session> {
    Some(Session { user: id })
}

fn main() {}
