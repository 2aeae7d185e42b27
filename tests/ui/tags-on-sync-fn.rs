use cachette::{cached, invalidates};

#[cached(ttl = "60s", key = "list:<page>", tags("products"))]
fn list(page: u32) -> u32 {
    page
}

#[invalidates(tags("products"))]
fn update() {}

fn main() {}
