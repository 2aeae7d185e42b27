#[allow(unused_imports)]
use cachette::{cached, invalidates};

#[invalidates("user:<id>", "")]
async fn rename_user(id: u64, name: String) -> Result<(), String> {
    let _ = (id, name);
    Ok(())
}

fn main() {}
