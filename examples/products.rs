//! The seeds' product service: a product's detail, paginated filtered lists, category pages,
//! an update that drops the product and every page it may be on, and a write-through settings
//! update. It prints, for each call, whether the cache answered (`hit`) or the database did
//! (`loaded`), and starts with the audit of its attributes.
//!
//! ```text
//! cargo run --example products                                              # memory, no server
//! CACHETTE_REDIS_URL=redis://127.0.0.1:6379/ cargo run --example products   # tiered over Redis
//! ```
//!
//! The lists are a family: every page of every filter carries the tag `products`, and every
//! category page `category:<id>` too, so one update invalidates them all in O(1), however many
//! pages and filters were cached (no `SCAN`, no index of members).

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cachette::{cache_put, cached, invalidates};
use serde::{Deserialize, Serialize};

/// A product as the database holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: u64,
    pub name: String,
    pub category: u64,
    pub price_cents: u64,
}

/// A list's filters: hashed into the key (`<filters:hash>`), so any filter has its own pages.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Filters {
    pub max_price_cents: Option<u64>,
    pub name_contains: Option<String>,
}

/// A user's settings, written through to the cache by `update_settings`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub currency: String,
    pub page_size: u32,
}

#[derive(Debug)]
pub struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for DbError {}

/// Stands in for the service's database; counts the reads that reach it.
#[derive(Default)]
pub struct Db {
    products: Mutex<BTreeMap<u64, Product>>,
    settings: Mutex<BTreeMap<u64, Settings>>,
    reads: AtomicUsize,
}

impl Db {
    /// Twelve products over three categories, one user's settings.
    pub fn seeded() -> Db {
        let db = Db::default();
        let mut products = db.products.lock().expect("not poisoned");
        for id in 1..=12u64 {
            let product = Product {
                id,
                name: format!("product {id}"),
                category: id % 3,
                price_cents: 500 * id,
            };
            products.insert(id, product);
        }
        drop(products);
        db.settings.lock().expect("not poisoned").insert(
            7,
            Settings {
                currency: "EUR".to_owned(),
                page_size: 5,
            },
        );
        db
    }

    /// How many reads reached the database so far.
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    fn read<T>(&self, f: impl FnOnce(&BTreeMap<u64, Product>) -> T) -> T {
        self.reads.fetch_add(1, Ordering::SeqCst);
        f(&self.products.lock().expect("not poisoned"))
    }
}

#[cached(ttl = "5m", key = "product:<id>")]
pub async fn product(id: u64, db: &Db) -> Option<Product> {
    db.read(|products| products.get(&id).cloned())
}

#[cached(
    ttl = "5m",
    key = "products:list:<page>:<size>:<filters:hash>",
    tags("products")
)]
pub async fn list_products(page: u32, size: u32, filters: &Filters, db: &Db) -> Vec<Product> {
    db.read(|products| {
        products
            .values()
            .filter(|p| {
                filters
                    .max_price_cents
                    .is_none_or(|max| p.price_cents <= max)
            })
            .filter(|p| {
                filters
                    .name_contains
                    .as_deref()
                    .is_none_or(|text| p.name.contains(text))
            })
            .skip(page as usize * size as usize)
            .take(size as usize)
            .cloned()
            .collect()
    })
}

#[cached(
    ttl = "5m",
    key = "category:<category>:page:<page>",
    tags("category:<category>")
)]
pub async fn category_page(category: u64, page: u32, db: &Db) -> Vec<Product> {
    db.read(|products| {
        products
            .values()
            .filter(|p| p.category == category)
            .skip(page as usize * 5)
            .take(5)
            .cloned()
            .collect()
    })
}

/// Drops the product's detail, every page of every list, and every page of its category.
#[invalidates("product:<id>", tags("products", "category:<category>"))]
pub async fn update_price(
    id: u64,
    category: u64,
    price_cents: u64,
    db: &Db,
) -> Result<Product, DbError> {
    let mut products = db.products.lock().expect("not poisoned");
    let product = products
        .get_mut(&id)
        .filter(|p| p.category == category)
        .ok_or_else(|| DbError(format!("no product {id} in category {category}")))?;
    product.price_cents = price_cents;
    Ok(product.clone())
}

#[cached(ttl = "5m", key = "user:settings:<user_id>")]
pub async fn settings(user_id: u64, db: &Db) -> Result<Settings, DbError> {
    db.reads.fetch_add(1, Ordering::SeqCst);
    let settings = db.settings.lock().expect("not poisoned");
    settings
        .get(&user_id)
        .cloned()
        .ok_or_else(|| DbError(format!("no settings for user {user_id}")))
}

/// Write-through: the database, then the cache, so that the next read is a hit with the new
/// settings (in every process, with `tiered`).
#[cache_put(key = "user:settings:<user_id>", ttl = "5m")]
pub async fn update_settings(user_id: u64, data: Settings, db: &Db) -> Result<Settings, DbError> {
    db.settings
        .lock()
        .expect("not poisoned")
        .insert(user_id, data.clone());
    Ok(data)
}

/// Runs `call` and says whether the database answered it.
async fn traced<T, F: std::future::Future<Output = T>>(
    db: &Db,
    transcript: &mut Vec<String>,
    label: &str,
    call: F,
) -> T {
    let before = db.reads();
    let value = call.await;
    let answer = if db.reads() > before { "loaded" } else { "hit" };
    transcript.push(format!("{label}: {answer}"));
    value
}

/// The service's calls, in order; one line per call.
pub async fn tour(db: &Db) -> Result<Vec<String>, DbError> {
    let mut t = Vec::new();
    let cheap = Filters {
        max_price_cents: Some(3_000),
        name_contains: None,
    };
    let all = Filters::default();

    traced(db, &mut t, "product 4", product(4, db)).await;
    traced(db, &mut t, "product 4", product(4, db)).await;
    traced(
        db,
        &mut t,
        "list page 0 (all)",
        list_products(0, 5, &all, db),
    )
    .await;
    traced(
        db,
        &mut t,
        "list page 1 (all)",
        list_products(1, 5, &all, db),
    )
    .await;
    traced(
        db,
        &mut t,
        "list page 0 (cheap)",
        list_products(0, 5, &cheap, db),
    )
    .await;
    traced(
        db,
        &mut t,
        "list page 0 (all)",
        list_products(0, 5, &all, db),
    )
    .await;
    traced(db, &mut t, "category 1 page 0", category_page(1, 0, db)).await;
    traced(db, &mut t, "category 2 page 0", category_page(2, 0, db)).await;
    traced(db, &mut t, "category 1 page 0", category_page(1, 0, db)).await;

    // Product 4 is in category 1: its detail, every list page and category 1's pages go.
    let updated = update_price(4, 1, 1_999, db).await?;
    t.push(format!("update product 4: {} cents", updated.price_cents));
    let detail = traced(db, &mut t, "product 4", product(4, db)).await;
    let page = traced(
        db,
        &mut t,
        "list page 0 (all)",
        list_products(0, 5, &all, db),
    )
    .await;
    traced(
        db,
        &mut t,
        "list page 1 (all)",
        list_products(1, 5, &all, db),
    )
    .await;
    traced(
        db,
        &mut t,
        "list page 0 (cheap)",
        list_products(0, 5, &cheap, db),
    )
    .await;
    traced(db, &mut t, "category 1 page 0", category_page(1, 0, db)).await;
    traced(db, &mut t, "category 2 page 0", category_page(2, 0, db)).await;
    let seen = |p: Option<&Product>| p.map_or(0, |p| p.price_cents);
    t.push(format!(
        "product 4 now: {} cents in detail, {} cents in list",
        seen(detail.as_ref()),
        seen(page.iter().find(|p| p.id == 4))
    ));

    traced(db, &mut t, "settings of 7", settings(7, db)).await?;
    let usd = Settings {
        currency: "USD".to_owned(),
        page_size: 20,
    };
    update_settings(7, usd, db).await?;
    t.push("update settings of 7 (write-through)".to_owned());
    let now = traced(db, &mut t, "settings of 7", settings(7, db)).await?;
    t.push(format!("settings of 7 now: {}", now.currency));
    Ok(t)
}

/// `memory` with nothing set; `tiered` over Redis with `CACHETTE_REDIS_URL` (unless
/// `CACHETTE_DEFAULT_BACKEND` says otherwise).
pub fn configure() -> Result<&'static str, Box<dyn Error>> {
    let mut config = cachette::configure().from_env()?;
    let redis = std::env::var_os("CACHETTE_REDIS_URL").is_some();
    let chosen = std::env::var_os("CACHETTE_DEFAULT_BACKEND").is_some();
    let backend = if redis && !chosen {
        config = config.default_backend("tiered");
        "tiered"
    } else if chosen {
        "as CACHETTE_DEFAULT_BACKEND says"
    } else {
        "memory"
    };
    config.install()?;
    Ok(backend)
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn Error>> {
    let audit = cachette::audit();
    println!("{audit}");
    if !audit.is_clean() {
        return Err("the cache attributes are not wired".into());
    }
    let backend = configure()?;
    println!("backend: {backend}");
    let db = Db::seeded();
    for line in tour(&db).await? {
        println!("{line}");
    }
    Ok(())
}
