use cachette::cached;

struct Db;

// A refresh (or a load past the soft timeout) runs after the caller has its answer, so the
// body may not borrow: each borrowed parameter is pointed at.
#[cached(ttl = "60s", key = "a:<id>", backend = "tiered", refresh = "50s")]
async fn borrows_the_database(id: u64, db: &Db, name: &str) -> u64 {
    let _ = (db, name);
    id
}

// `&'static` borrows nothing that ends.
#[cached(ttl = "60s", key = "b:<id>", backend = "tiered", refresh = "50s")]
async fn static_text(id: u64, label: &'static str) -> u64 {
    let _ = label;
    id
}

struct Service;

impl Service {
    #[cached(ttl = "60s", key = "c:<id>", backend = "memory", refresh = "50s")]
    async fn by_ref(&self, id: u64) -> u64 {
        id
    }
}

// `refresh` is an age below the ttl.
#[cached(ttl = "60s", key = "d:<id>", backend = "redis", refresh = "60s")]
async fn refresh_at_the_ttl(id: u64) -> u64 {
    id
}

// A refresh runs in a task: a synchronous function has none.
#[cached(ttl = "60s", key = "e:<id>", backend = "memory", refresh = "50s")]
fn synchronous(id: u64) -> u64 {
    id
}

// The soft timeout serves a stale value, which only fail-safe keeps; and it comes before the
// hard one.
#[cached(ttl = "60s", key = "f:<id>", backend = "redis", timeout = "300ms")]
async fn soft_without_stale(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(
    ttl = "60s",
    key = "g:<id>",
    backend = "redis",
    stale = "10m",
    timeout = "2s",
    hard_timeout = "1s"
)]
async fn soft_after_hard(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(ttl = "60s", key = "h:<id>", backend = "tiered", refresh = "50s", tags("h"))]
async fn with_tags(id: u64) -> u64 {
    id
}

// An `impl Trait` or a type parameter may hold a borrow unless bounded by `'static`.
#[cached(ttl = "60s", key = "i:<id>", backend = "memory", refresh = "50s")]
async fn takes_impl(id: u64, source: impl Fn() -> u64 + Send) -> u64 {
    let _ = source;
    id
}

#[cached(ttl = "60s", key = "j:<id>", backend = "memory", refresh = "50s")]
async fn generic<T: Send>(id: u64, source: T) -> u64 {
    let _ = source;
    id
}

#[cached(ttl = "60s", key = "k:<id>", backend = "memory", refresh = "50s")]
async fn generic_static<T>(id: u64, source: T) -> u64
where
    T: Send + 'static,
{
    let _ = source;
    id
}

fn main() {}
