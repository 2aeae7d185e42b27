//! Review 25: string parameters asked in pieces (issue 17), attacked from the macro's side.

use std::sync::atomic::Ordering;

use cachette::{cached, KeyBuilder};

mod support;
use support::load_count::{block_on, loads, serial, LOADS};

/// A user's own type that happens to be named `String`: its key part is not its `str`'s
/// text (here, a namespaced tag), though it dereferences to a `str`.
mod tag {
    use cachette::{KeyPart, KeyWriter};

    pub struct String(pub std::string::String);

    impl std::ops::Deref for String {
        type Target = str;
        fn deref(&self) -> &str {
            &self.0
        }
    }

    impl KeyPart for String {
        fn write_key_part(&self, out: &mut KeyWriter<'_>) {
            out.write_str(&format!("t-{}", self.0));
        }
    }
}

mod sites {
    use super::tag::String;
    use super::LOADS;
    use cachette::cached;
    use std::sync::atomic::Ordering;

    /// The key's text is `rv25-tag:<t-{name}>` (the type's `KeyPart`).
    #[cached(ttl = "60s", key = "rv25-tag:<name>", backend = "memory")]
    pub fn tagged(name: String) -> std::string::String {
        LOADS.fetch_add(1, Ordering::SeqCst);
        format!("loaded for {}", name.0)
    }
}

/// A parameter whose type is a user type named `String` is taken as a `std` string by the
/// hit key: the hit names `rv25-tag:<{deref}>`, a text the type's `KeyPart` never renders
/// for that value, but does render for another value. So a call with `t-a` hits the entry
/// stored for `a` and returns `a`'s value.
#[test]
fn a_user_type_named_string_is_not_hit_as_a_std_string() {
    let _serial = serial();
    let s = |text: &str| tag::String(text.to_owned());
    assert_eq!(sites::tagged(s("a")), "loaded for a");
    assert_eq!(
        KeyBuilder::new()
            .lit("rv25-tag:")
            .arg(&s("a"))
            .finish()
            .as_str(),
        "rv25-tag:<t-a>"
    );
    let before = loads();
    // `t-a`'s key text is `rv25-tag:<t-t-a>`: a miss, which loads its own value.
    assert_eq!(
        sites::tagged(s("t-a")),
        "loaded for t-a",
        "wrong entry returned"
    );
    assert_eq!(loads(), before + 1);
}

/// `ref mut` bindings and `mut` by-value strings: the hit reads the string before the body.
#[cached(ttl = "60s", key = "rv25-mut:<name>", backend = "memory")]
// The binding under test is the `ref` one.
#[allow(clippy::toplevel_ref_arg)]
fn mutated(ref mut name: String) -> String {
    LOADS.fetch_add(1, Ordering::SeqCst);
    name.push('!');
    name.clone()
}

#[cached(ttl = "60s", key = "rv25-mut:<name>", backend = "memory")]
async fn mutated_async(mut name: String) -> String {
    LOADS.fetch_add(1, Ordering::SeqCst);
    name.push('!');
    name
}

#[test]
fn mutable_string_bindings_hit_their_own_text() {
    let _serial = serial();
    assert_eq!(mutated("x".to_owned()), "x!");
    let before = loads();
    assert_eq!(mutated("x".to_owned()), "x!");
    assert_eq!(block_on(mutated_async("x".to_owned())), "x!");
    assert_eq!(loads(), before);
    assert_eq!(block_on(mutated_async("x!".to_owned())), "x!!");
    assert_eq!(loads(), before + 1);
}

/// Several strings at the very start and end of a template, and a method with `&self`.
struct Repo;

impl Repo {
    #[cached(ttl = "60s", key = "<a><b>", backend = "memory")]
    fn pair(&self, a: &str, b: &String) -> String {
        LOADS.fetch_add(1, Ordering::SeqCst);
        format!("{a}|{b}")
    }
}

#[test]
fn adjacent_strings_at_the_edges_never_share_an_entry() {
    let _serial = serial();
    let repo = Repo;
    let cases = [
        ("", ""),
        ("a", ""),
        ("", "a"),
        ("ab", "c"),
        ("a", "bc"),
        ("1", "2"),
        ("12", ""),
        ("0123456789abcde", "f"),
        ("0123456789abcdef", ""),
        ("", "0123456789abcdef"),
        ("0123456789abcdefg", "0123456789abcdefghijklmnopq"),
        ("-0", "007"),
        ("42", "-7"),
    ];
    for (a, b) in cases {
        assert_eq!(repo.pair(a, &b.to_owned()), format!("{a}|{b}"));
    }
    let before = loads();
    for (a, b) in cases {
        assert_eq!(repo.pair(a, &b.to_owned()), format!("{a}|{b}"));
    }
    assert_eq!(loads(), before);
}

/// Parameters whose type is *named* `String` but is not `std`'s (a generic parameter, an alias
/// of `Option<String>`) compiled before string parameters were hit in pieces (the text path
/// takes any `KeyPart`); a bare `hit_str(&name)` refused them. This file compiling is half
/// the test; the other half is that they still cache by their own text.
mod named_string {
    use super::LOADS;
    use cachette::{cached, KeyPart};
    use std::sync::atomic::Ordering;

    #[cached(ttl = "60s", key = "rv25-gen:<name>", backend = "memory")]
    pub fn generic<String: KeyPart + Clone + Send + Sync + 'static>(name: String) -> u8 {
        LOADS.fetch_add(1, Ordering::SeqCst);
        let _ = name;
        1
    }

    pub mod wrap {
        pub type String = Option<std::string::String>;
    }

    #[cached(ttl = "60s", key = "rv25-opt:<name>", backend = "memory")]
    pub fn optional(name: wrap::String) -> usize {
        LOADS.fetch_add(1, Ordering::SeqCst);
        name.map_or(0, |name| name.len())
    }

    type String = Option<std::string::String>;

    #[cached(ttl = "60s", key = "rv25-opt2:<name>", backend = "memory")]
    pub async fn optional_async(name: &String) -> usize {
        LOADS.fetch_add(1, Ordering::SeqCst);
        name.as_ref().map_or(0, |name| name.len())
    }
}

#[test]
fn types_merely_named_string_compile_and_cache_by_their_text() {
    let _serial = serial();
    let before = loads();
    assert_eq!(named_string::generic(7u8), 1);
    assert_eq!(named_string::generic(7u8), 1);
    assert_eq!(named_string::generic("seven"), 1);
    assert_eq!(named_string::optional(Some("abc".to_owned())), 3);
    assert_eq!(named_string::optional(Some("abc".to_owned())), 3);
    assert_eq!(named_string::optional(None), 0);
    let some = Some("abcd".to_owned());
    assert_eq!(block_on(named_string::optional_async(&some)), 4);
    assert_eq!(block_on(named_string::optional_async(&some)), 4);
    assert_eq!(loads(), before + 5, "one load per distinct key");
}

#[cached(ttl = "60s", key = "<name>", backend = "memory")]
fn bare(name: &str) -> String {
    LOADS.fetch_add(1, Ordering::SeqCst);
    format!("bare {name}")
}

#[cached(ttl = "60s", key = "<id>", backend = "memory")]
async fn bare_id(id: i64) -> String {
    LOADS.fetch_add(1, Ordering::SeqCst);
    format!("bare {id}")
}

/// A template that is only a string, every length 0..=40 and integer-like texts: hit by
/// pieces, invalidated by text, shared with the integer site of the same template.
#[test]
fn a_bare_string_template_agrees_with_its_text_at_every_length() {
    let _serial = serial();
    let mut names: Vec<String> = (0..=40)
        .map(|n| "abcdefghij".repeat(5)[..n].to_owned())
        .collect();
    names.extend(
        [
            "42",
            "-42",
            "0",
            "-0",
            "007",
            "9223372036854775807",
            "-9223372036854775808",
        ]
        .map(String::from),
    );
    for name in &names {
        let before = loads();
        assert_eq!(bare(name), format!("bare {name}"));
        assert_eq!(bare(name), format!("bare {name}"));
        assert_eq!(loads(), before + 1, "{name:?}");
        block_on(cachette::invalidate(
            &KeyBuilder::new().arg(name.as_str()).finish(),
        ));
        assert_eq!(bare(name), format!("bare {name}"));
        assert_eq!(loads(), before + 2, "invalidated by text: {name:?}");
    }
    let before = loads();
    for id in [42i64, -42, 0, i64::MAX, i64::MIN] {
        assert_eq!(block_on(bare_id(id)), format!("bare {id}"));
    }
    assert_eq!(
        loads(),
        before,
        "the integer site shares the string site's entries"
    );
    assert_eq!(block_on(bare_id(7)), "bare 7");
    assert_eq!(bare("07"), "bare 07");
    assert_eq!(loads(), before + 2);
}
