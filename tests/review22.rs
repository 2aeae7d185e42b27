//! Review 22: sites whose key is literal text and integer parameters with a form longer than 16
//! bytes (long templates, default keys) ask their hit in pieces; every other way of naming the
//! same text (`#[invalidates]` with strings, `invalidate` by hand, another site's template, a
//! default key's text written out) must reach the same entry.

use cachette::{cached, invalidates, KeyBuilder};

mod support;
use support::load_count::{filled_then_hit, load};

#[cached(
    ttl = "60s",
    key = "r22-tenant:<tenant>:account:<id>",
    backend = "memory"
)]
async fn account(tenant: u32, id: i64) -> String {
    load(format!("{tenant}/{id}"))
}

/// The same template over strings: the same texts, so the same entries.
#[cached(
    ttl = "60s",
    key = "r22-tenant:<tenant>:account:<id>",
    backend = "memory"
)]
async fn account_by_text(tenant: String, id: String) -> String {
    load(format!("{tenant}/{id}"))
}

#[invalidates("r22-tenant:<tenant>:account:<id>")]
async fn drop_account(tenant: &str, id: String) {
    let _ = (tenant, id);
}

#[cached(
    ttl = "60s",
    key = "r22-tenant:<tenant>:account:<id>",
    backend = "tiered"
)]
async fn tiered_account(tenant: u64, id: &u64) -> String {
    load(format!("{tenant}/{id}"))
}

/// 17 bytes of form: one past a `HitKey`'s.
#[cached(ttl = "60s", key = "r22-17b:<id>", backend = "memory")]
fn seventeen(id: u8) -> u8 {
    load(id)
}

/// 16 bytes of form: a `HitKey`.
#[cached(ttl = "60s", key = "r22-16:<id>", backend = "memory")]
fn sixteen(id: u8) -> u8 {
    load(id)
}

/// A crate-root default key with no parameters: `review22::zero()`, 15 bytes, short at run
/// time.
#[cached(ttl = "60s", backend = "memory")]
fn zero() -> u64 {
    load(77)
}

/// Literal text only, longer than 16 bytes: pieces with no integer.
#[cached(ttl = "60s", key = "r22-only-literal-text-here", backend = "memory")]
async fn literal_only() -> u64 {
    load(5)
}

/// Placeholders first, side by side and twice: empty runs.
#[cached(ttl = "60s", key = "<a><b>:<a>-r22-runs", backend = "memory")]
fn empty_runs(a: i64, b: &u16) -> i64 {
    load(a + i64::from(*b))
}

/// A parameter bound by reference (`ref`): a `&u64` in the body.
#[cached(ttl = "60s", backend = "memory")]
#[allow(clippy::toplevel_ref_arg)]
fn by_ref_binding(ref id: u64, ref small: u8) -> u64 {
    load(*id + u64::from(*small))
}

/// The same in a long template.
#[cached(ttl = "60s", key = "r22-ref-binding-long:<id>", backend = "memory")]
#[allow(clippy::toplevel_ref_arg)]
fn by_ref_template(ref id: i32) -> i32 {
    load(*id)
}

/// `ref mut`, and `ref` of a reference (`&&u64` in the body: the text path).
#[cached(
    ttl = "60s",
    key = "r22-ref-mut-long-key:<id>:<other>",
    backend = "memory"
)]
#[allow(clippy::toplevel_ref_arg)]
fn by_ref_mut(ref mut id: u64, ref other: &u64) -> u64 {
    *id += 1;
    load(*id + **other)
}

/// A `u128` in a long template: its text holds an integer value (`<5>`) that the key's
/// builder writes as digits, not as an integer.
#[cached(ttl = "60s", key = "r22-a-long-prefix:<id>", backend = "memory")]
async fn wide(id: u128) -> u128 {
    load(id)
}

/// A raw identifier as an integer parameter of a default key.
#[cached(ttl = "60s", backend = "memory")]
fn raw_param(r#type: u64, r#match: i32) -> u64 {
    load(r#type + r#match as u64)
}

mod inner {
    pub mod deeper {
        use super::super::load;
        use cachette::cached;

        #[cached(ttl = "60s", backend = "memory")]
        pub fn mixed(a: usize, b: isize, c: i8, d: &u32) -> i128 {
            load(a as i128 + b as i128 + i128::from(c) + i128::from(*d))
        }

        pub struct Repo;

        impl Repo {
            /// An associated function (no receiver): the default key has no type.
            #[cached(ttl = "60s", backend = "memory")]
            pub async fn get(id: u64) -> u64 {
                load(id + 1)
            }
        }

        /// A generic function needs an explicit key (the default key is refused).
        #[cached(ttl = "60s", key = "r22-generic-key:<id>", backend = "memory")]
        pub fn generic<T: Default + std::fmt::Debug>(id: i16) -> String {
            load(format!("{id}:{:?}", T::default()))
        }
    }
}

// One test: the scenarios count one counter's loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_keys_in_pieces_name_the_entries_of_their_texts() {
    long_hit_keys_and_every_name_of_their_text_reach_one_entry().await;
    default_keys_by_pieces_are_their_texts().await;
}

async fn long_hit_keys_and_every_name_of_their_text_reach_one_entry() {
    for (tenant, id) in [
        (7u32, 42i64),
        (0, i64::MIN),
        (u32::MAX, i64::MAX),
        (1, -1),
        (2, 0),
    ] {
        let what = format!("account({tenant}, {id})");
        filled_then_hit!(account(tenant, id).await, format!("{tenant}/{id}"), 1, what);
        // Another site, strings holding the integers' text: the same entry, no load.
        filled_then_hit!(
            account_by_text(tenant.to_string(), id.to_string()).await,
            format!("{tenant}/{id}"),
            0,
            format!("the text site's {what}")
        );
        // `#[invalidates]` of strings.
        drop_account(&tenant.to_string(), id.to_string()).await;
        filled_then_hit!(account(tenant, id).await, format!("{tenant}/{id}"), 1, what);
        // By hand: strings and integers mixed.
        cachette::invalidate(
            &KeyBuilder::new()
                .lit("r22-tenant:")
                .arg(&tenant.to_string())
                .lit(":account:")
                .arg(&id)
                .finish(),
        )
        .await;
        filled_then_hit!(account(tenant, id).await, format!("{tenant}/{id}"), 1, what);
        // A text that only looks alike is another entry.
        drop_account(&format!("0{tenant}"), id.to_string()).await;
        filled_then_hit!(account(tenant, id).await, format!("{tenant}/{id}"), 0, what);
    }
    // The string site filled first: the integer site hits it.
    filled_then_hit!(
        account_by_text("9".into(), "-9".into()).await,
        "9/-9".to_owned(),
        1,
        "the text site first"
    );
    filled_then_hit!(
        account(9, -9).await,
        "9/-9".to_owned(),
        0,
        "then the integer site"
    );

    filled_then_hit!(
        tiered_account(3, &u64::MAX).await,
        format!("3/{}", u64::MAX),
        1,
        "tiered"
    );
    cachette::invalidate(
        &KeyBuilder::new()
            .lit("r22-tenant:")
            .arg(&"3")
            .lit(":account:")
            .arg(&u64::MAX.to_string())
            .finish(),
    )
    .await;
    filled_then_hit!(
        tiered_account(3, &u64::MAX).await,
        format!("3/{}", u64::MAX),
        1,
        "tiered"
    );

    for (id, what) in [(0u8, "0"), (255, "255")] {
        filled_then_hit!(seventeen(id), id, 1, what);
        cachette::invalidate(&KeyBuilder::new().lit("r22-17b:").arg(&what).finish()).await;
        filled_then_hit!(seventeen(id), id, 1, what);
        filled_then_hit!(sixteen(id), id, 1, what);
        cachette::invalidate(&KeyBuilder::new().lit("r22-16:").arg(&what).finish()).await;
        filled_then_hit!(sixteen(id), id, 1, what);
    }
}

async fn default_keys_by_pieces_are_their_texts() {
    filled_then_hit!(zero(), 77, 1, "zero");
    cachette::invalidate(&KeyBuilder::new().lit("review22::zero()").finish()).await;
    filled_then_hit!(zero(), 77, 1, "zero, invalidated by its text");

    filled_then_hit!(literal_only().await, 5, 1, "literal only");
    cachette::invalidate(&KeyBuilder::new().lit("r22-only-literal-text-here").finish()).await;
    filled_then_hit!(literal_only().await, 5, 1, "literal only, invalidated");

    filled_then_hit!(empty_runs(-1, &2), 1, 1, "empty runs");
    let text = KeyBuilder::new()
        .arg(&"-1")
        .arg(&2u8)
        .lit(":")
        .arg(&-1i8)
        .lit("-r22-runs")
        .finish();
    cachette::invalidate(&text).await;
    filled_then_hit!(empty_runs(-1, &2), 1, 1, "empty runs, invalidated");
    filled_then_hit!(empty_runs(-1, &3), 2, 1, "another b");

    filled_then_hit!(by_ref_binding(40, 2), 42, 1, "ref bindings");
    cachette::invalidate(
        &KeyBuilder::new()
            .lit("review22::by_ref_binding(")
            .arg(&40u64)
            .lit(",")
            .arg(&2u8)
            .lit(")")
            .finish(),
    )
    .await;
    filled_then_hit!(by_ref_binding(40, 2), 42, 1, "ref bindings, invalidated");
    filled_then_hit!(by_ref_template(-4), -4, 1, "a ref binding in a template");

    filled_then_hit!(by_ref_mut(1, &2), 4, 1, "ref mut and ref of a reference");

    filled_then_hit!(wide(5).await, 5, 1, "a u128 in a long key");
    cachette::invalidate(
        &KeyBuilder::new()
            .lit("r22-a-long-prefix:")
            .arg(&5u64)
            .finish(),
    )
    .await;
    filled_then_hit!(wide(5).await, 5, 1, "a u128 in a long key, invalidated");

    filled_then_hit!(raw_param(40, 2), 42, 1, "raw identifiers");
    cachette::invalidate(
        &KeyBuilder::new()
            .lit("review22::raw_param(")
            .arg(&40u64)
            .lit(",")
            .arg(&2i32)
            .lit(")")
            .finish(),
    )
    .await;
    filled_then_hit!(raw_param(40, 2), 42, 1, "raw identifiers, invalidated");

    use inner::deeper::{generic, mixed, Repo};
    let (a, b, c, d) = (usize::MAX, isize::MIN, i8::MIN, u32::MAX);
    let sum = a as i128 + b as i128 + i128::from(c) + i128::from(d);
    filled_then_hit!(mixed(a, b, c, &d), sum, 1, "mixed");
    let text = KeyBuilder::new()
        .lit("review22::inner::deeper::mixed(")
        .arg(&a.to_string())
        .lit(",")
        .arg(&b)
        .lit(",")
        .arg(&"-128")
        .lit(",")
        .arg(&d)
        .lit(")")
        .finish();
    cachette::invalidate(&text).await;
    filled_then_hit!(mixed(a, b, c, &d), sum, 1, "mixed, invalidated by its text");

    filled_then_hit!(Repo::get(u64::MAX - 1).await, u64::MAX, 1, "Repo::get");
    cachette::invalidate(
        &KeyBuilder::new()
            .lit("review22::inner::deeper::get(")
            .arg(&(u64::MAX - 1))
            .lit(")")
            .finish(),
    )
    .await;
    filled_then_hit!(
        Repo::get(u64::MAX - 1).await,
        u64::MAX,
        1,
        "Repo::get invalidated"
    );

    filled_then_hit!(generic::<u8>(-3), "-3:0".to_owned(), 1, "generic");
    cachette::invalidate(
        &KeyBuilder::new()
            .lit("r22-generic-key:")
            .arg(&"-3")
            .finish(),
    )
    .await;
    filled_then_hit!(
        generic::<u8>(-3),
        "-3:0".to_owned(),
        1,
        "generic invalidated"
    );
}
