/// A synchronous site without `backend`: it follows the configured default while that is
/// in-process, and caches in `memory` when it is remote.
#[cached(ttl = "10m", key = "rate:<currency>")]
fn exchange_rate(currency: &str) -> f64 {
    1.0
}
