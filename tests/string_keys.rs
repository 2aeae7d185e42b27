//! Sites whose keys hold string parameters (`&str`, `String`, `&String`) ask their hit in pieces,
//! the string hashed and compared where it lies (issue 17). Every other way to name the same
//! text must reach the same entry: the text path (a string that needs escaping, a miss), an
//! `#[invalidates]`, an `invalidate` by hand, another site whose integer renders to the same
//! text, and a string that reads as an integer.

use cachette::{cached, invalidate, invalidates, KeyBuilder};

mod support;
use support::load_count::{block_on, filled_then_hit, load, serial};

#[cached(ttl = "60s", key = "sk-user:<name>", backend = "memory")]
fn user(name: &str) -> String {
    load(format!("user {name}"))
}

/// The same template over an owned `String`: the same texts, so the same entries.
#[cached(ttl = "60s", key = "sk-user:<name>", backend = "memory")]
async fn user_owned(name: String) -> String {
    load(format!("user {name}"))
}

/// And over an integer: `sk-user:<42>` is the text of both `42` and `"42"`.
#[cached(ttl = "60s", key = "sk-user:<name>", backend = "memory")]
fn user_by_id(name: u64) -> String {
    load(format!("user {name}"))
}

/// Strings and integers mixed, in a long form.
#[cached(
    ttl = "60s",
    key = "sk-tenant:<tenant>:user:<name>:<n>",
    backend = "memory"
)]
fn member(tenant: &String, name: &str, n: i32) -> String {
    load(format!("{tenant}/{name}/{n}"))
}

#[invalidates("sk-user:<name>")]
fn drop_user(name: &str) {
    let _ = name;
}

/// The default key, with a string: `string_keys::greeting(<name>)`.
#[cached(ttl = "60s", backend = "memory")]
fn greeting(name: &str) -> String {
    load(format!("hello {name}"))
}

#[test]
fn a_string_key_hits_and_shares_its_entry_with_every_name_of_its_text() {
    let _serial = serial();
    // Short and long forms, empty, escaped, non-ASCII, integer-like and integer-unlike digits.
    let names = [
        "bob",
        "",
        "a-rather-long.name@example.com",
        "twelve-bytes",
        "with space",
        "per%cent",
        "<angle>",
        "zoë",
        "42",
        "-7",
        "007",
        "-0",
        "18446744073709551616",
    ];
    for name in names {
        let value = format!("user {name}");
        filled_then_hit!(user(name), value, 1, name);
        // The other sites of the same template name the same entries.
        filled_then_hit!(block_on(user_owned(name.to_owned())), value, 0, name);
        // Invalidated through the text path, then filled again by the owned site and hit
        // by the borrowed one.
        drop_user(name);
        filled_then_hit!(block_on(user_owned(name.to_owned())), value, 1, name);
        filled_then_hit!(user(name), value, 0, name);
        block_on(invalidate(
            &KeyBuilder::new().lit("sk-user:").arg(name).finish(),
        ));
        filled_then_hit!(user(name), value, 1, name);
    }
    // A string that reads as an integer is that integer's key.
    filled_then_hit!(user_by_id(42), "user 42".to_owned(), 0, "42 as u64");
    filled_then_hit!(user_by_id(43), "user 43".to_owned(), 1, "43 as u64");
    filled_then_hit!(user("43"), "user 43".to_owned(), 0, "43 as &str");
    // `007` is not the integer 7's text.
    filled_then_hit!(user_by_id(7), "user 7".to_owned(), 1, "7 as u64");
    filled_then_hit!(user("007"), "user 007".to_owned(), 0, "007 as &str");
}

#[test]
fn strings_and_integers_mixed_hit_in_pieces_and_are_invalidated_by_text() {
    let _serial = serial();
    let tenant = "acme-corporation".to_owned();
    for (name, n) in [
        ("ann", 1),
        ("a-much-longer-user-name", -5),
        ("", 0),
        ("x y", 3),
    ] {
        let value = format!("{tenant}/{name}/{n}");
        filled_then_hit!(member(&tenant, name, n), value, 1, name);
        let text = KeyBuilder::new()
            .lit("sk-tenant:")
            .arg(&tenant)
            .lit(":user:")
            .arg(name)
            .lit(":")
            .arg(&n)
            .finish();
        block_on(invalidate(&text));
        filled_then_hit!(member(&tenant, name, n), value, 1, name);
    }
    // Neighbouring values never share an entry.
    filled_then_hit!(
        member(&"acme".to_owned(), "corporation:user:ann", 1),
        "acme/corporation:user:ann/1".to_owned(),
        1,
        "a value holding the literal text"
    );
}

#[test]
fn a_default_key_with_a_string_hits_and_is_invalidated_by_its_text() {
    let _serial = serial();
    for name in [
        "ann",
        "a-name-long-enough-for-a-heap-form-in-the-store",
        "x y",
    ] {
        let value = format!("hello {name}");
        filled_then_hit!(greeting(name), value, 1, name);
        let text = KeyBuilder::new()
            .lit(concat!(module_path!(), "::greeting("))
            .arg(name)
            .lit(")")
            .finish();
        block_on(invalidate(&text));
        filled_then_hit!(greeting(name), value, 1, name);
    }
}
