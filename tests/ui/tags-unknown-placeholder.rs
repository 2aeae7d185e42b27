use cachette::{cached, invalidates};

#[cached(ttl = "60s", key = "list:<page>", tags("products", "category:<cat>"))]
async fn list(page: u32, category: u64) -> Vec<u64> {
    vec![u64::from(page), category]
}

#[invalidates("product:<id>", tags("category:<categry>"))]
async fn update(id: u64, category: u64) {
    let _ = (id, category);
}

fn main() {}
