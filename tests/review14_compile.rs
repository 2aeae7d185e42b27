//! Review of issue 14: shapes of annotated functions that compiled before the audit's
//! registrations and the tags' expansion, and must still compile and cache: methods of generic
//! impls, `Self` in return types, trait impls, sync functions, attributes inside a
//! `macro_rules!` expanded twice in one module, a renamed facade.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use cachette::{cache_put, cached, invalidates};

static LOADS: AtomicUsize = AtomicUsize::new(0);

fn load() -> usize {
    LOADS.fetch_add(1, Ordering::SeqCst)
}

struct Repo<T> {
    tenant: u64,
    _t: PhantomData<T>,
}

impl<T: Send + Sync + 'static> Repo<T> {
    #[cached(ttl = "60s", key = "gr:<self.tenant>:<id>", tags("gr:<self.tenant>"))]
    async fn get(&self, id: u64) -> usize {
        let _ = id;
        load()
    }

    #[cached(ttl = "60s", key = "grs:<id>")]
    fn get_sync(&self, id: u64) -> usize {
        let _ = id;
        load()
    }

    #[invalidates("gr:<self.tenant>:<id>", tags("gr:<self.tenant>"))]
    async fn touch(&self, id: u64) {
        let _ = id;
    }

    #[cache_put(key = "gr:<self.tenant>:<id>", ttl = "60s", backend = "memory")]
    async fn put(&self, id: u64, value: usize) -> usize {
        let _ = id;
        value
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Point {
    x: u64,
}

impl Point {
    #[cached(ttl = "60s", key = "pt:<x>", tags("pts"))]
    async fn at(x: u64) -> Self {
        let _ = load();
        Self { x }
    }

    #[cached(ttl = "60s")]
    fn sync_at(x: u64) -> Self {
        Self { x }
    }

    #[cached(ttl = "60s")]
    async fn shifted(&self, by: u64) -> Option<Self> {
        Some(Self { x: self.x + by })
    }
}

trait Source {
    fn fetch(&self, id: u64) -> usize;
}

struct Db;

impl Source for Db {
    #[cached(ttl = "60s", key = "src:<id>")]
    fn fetch(&self, id: u64) -> usize {
        let _ = id;
        load()
    }
}

macro_rules! cached_pair {
    ($name:ident) => {
        #[cached(ttl = "60s", key = "pair:<id>", tags("pair"))]
        async fn $name(id: u64) -> u64 {
            id
        }
    };
}

cached_pair!(pair_a);
cached_pair!(pair_b);

/// A tag by value and a tag by hash of one argument are two families (a hash never renders
/// as a plain value), so listing both is not listing one twice.
#[derive(serde::Serialize)]
struct Query {
    name: String,
}

#[cached(ttl = "60s", key = "q:<q.name>", tags("q:<q.name>", "q:<q:hash>"))]
async fn query(q: &Query) -> usize {
    let _ = q;
    load()
}

mod renamed {
    use ::cachette as facade;

    #[facade::cached(ttl = "60s", key = "rn:<x>", crate = "facade", tags("rn"))]
    pub async fn tagged(x: u8) -> u8 {
        x + 1
    }

    #[facade::invalidates("rn:<x>", tags("rn"), crate = "facade")]
    pub async fn drop_it(x: u8) {
        let _ = x;
    }

    #[facade::cache_put(key = "rn:<x>", ttl = "60s", crate = "facade")]
    pub async fn put(x: u8) -> u8 {
        x + 2
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_compiles_and_caches() {
    let repo = Repo::<String> {
        tenant: 3,
        _t: PhantomData,
    };
    let first = repo.get(1).await;
    assert_eq!(repo.get(1).await, first, "a hit");
    repo.touch(1).await;
    assert_ne!(repo.get(1).await, first, "invalidated");
    assert_eq!(repo.put(1, 999).await, 999);
    let sync = repo.get_sync(1);
    assert_eq!(repo.get_sync(1), sync);
    assert_eq!(Point::at(4).await, Point { x: 4 });
    assert_eq!(Point::sync_at(5), Point { x: 5 });
    assert_eq!(Point { x: 1 }.shifted(2).await, Some(Point { x: 3 }));
    let fetched = Db.fetch(9);
    assert_eq!(Db.fetch(9), fetched);
    assert_eq!(pair_a(1).await + pair_b(1).await, 2);
    assert_eq!(renamed::tagged(1).await, 2);
    renamed::drop_it(1).await;
    assert_eq!(renamed::put(1).await, 3);
    let q = Query { name: "n".into() };
    let first = query(&q).await;
    assert_eq!(query(&q).await, first);
    let audit = cachette::audit();
    assert_eq!(audit.functions(), 14, "{audit}");
}
