use cachette::{cached, invalidates};

#[cached(ttl = "60s", key = "list:<page>", tags())]
async fn list(page: u32) -> u32 {
    page
}

#[invalidates(tags("products:{x}"))]
async fn update() {}

fn main() {}
