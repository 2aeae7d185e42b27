use cachette::cached;

// Fail-safe loads with the stale value at hand, which a synchronous function cannot wait
// beside; in process it keeps no entry for a soft timeout, nor for a refresh.
#[cached(ttl = "60s", key = "a:<id>", backend = "memory", stale = "10m")]
fn synchronous(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(ttl = "60s", key = "b:<id>", backend = "memory", stale = "10m", timeout = "100ms")]
async fn soft_in_memory(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(ttl = "60s", key = "b2:<id>", stale = "10m", refresh = "50s")]
async fn refresh_and_stale_on_the_default(id: u64) -> Result<u64, String> {
    Ok(id)
}

// `throttle` and `hard_timeout` belong to fail-safe.
#[cached(ttl = "60s", key = "c:<id>", backend = "redis", throttle = "5s", hard_timeout = "1s")]
async fn without_stale(id: u64) -> Result<u64, String> {
    Ok(id)
}

// An L1 bound where there is no L1, and one not below the ttl.
#[cached(ttl = "60s", key = "d:<id>", backend = "redis", l1_ttl = "5s")]
async fn no_l1(id: u64) -> u64 {
    id
}

#[cached(ttl = "60s", key = "e:<id>", backend = "tiered", l1_ttl = "60s")]
async fn l1_as_long(id: u64) -> u64 {
    id
}

// Windows are never zero; jitter is a share below 1.
#[cached(ttl = "60s", key = "f:<id>", backend = "redis", stale = "0s", jitter = 1.5)]
async fn bad_values(id: u64) -> u64 {
    id
}

#[cached(ttl = "60s", key = "g:<id>", backend = "tiered", stale = "1m", tags("g"))]
async fn with_tags(id: u64) -> u64 {
    id
}

// A throttle past the window it throttles.
#[cached(ttl = "60s", key = "t:<id>", backend = "redis", stale = "1m", throttle = "5m")]
async fn throttle_past_stale(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn main() {}
