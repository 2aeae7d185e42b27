use cachette::invalidates;

// The same family twice: placeholders are matched by position, so `<id>` and `<user_id>`
// render the same keys.
#[invalidates("user:<id>", "user:<user_id>", tags("team:<id>", "team:<user_id>"))]
async fn update_user(id: u64, user_id: u64) {
    let _ = (id, user_id);
}

fn main() {}
