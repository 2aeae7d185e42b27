/// A key whose form is longer than the 16 bytes a `HitKey` holds: its hit is asked with the
/// template's literal runs and the integers (`HitPieces`), without rendering its text.
#[cached(ttl = "60s", key = "tenant:<tenant>:account:<id>")]
async fn account(tenant: u32, id: u64) -> Account {
    load(tenant, id).await
}

/// The default key (this function's path, then its arguments) of integer parameters: its
/// hit too is asked in pieces, the path's length known only where it expands.
#[cached(ttl = "60s")]
fn balance(id: &i64) -> i64 {
    *id * 100
}

/// A string argument (a `&str`, `String` or `&String`): its hit too is asked in pieces, the
/// string hashed and compared where it lies; one that needs escaping is asked by text.
#[cached(ttl = "60s", key = "user:<name>:<id>")]
fn user(name: &str, id: u64) -> User {
    find(name, id)
}
