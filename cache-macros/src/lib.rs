//! Procedural macros of cachette. Use them through the `cachette` crate, which documents them.
//!
//! The crate is laid out by phase, as thiserror-impl is: `args.rs` parses the attribute into
//! typed values (key templates through `template.rs`), `signature.rs` reads the function,
//! `validate.rs` checks what relates the two and fills in the defaults, and `expand.rs` writes
//! the thin wrapper. Every phase records its errors and the next one still runs, so one
//! attribute's problems are all reported together; on error the function is emitted unchanged
//! next to them.

extern crate proc_macro;

mod args;
mod expand;
mod signature;
mod suggest;
mod template;
mod validate;

use proc_macro::TokenStream;
use quote::ToTokens;

use args::{CachedArgs, InvalidatesArgs};
use signature::{parse_fn, Signature};

/// Caches the function's result under a key built from its arguments.
///
/// `#[cached(ttl = "60s", key = "user:<id>")]` on an `async fn` or a plain `fn`, free or a
/// method. Options: `ttl` (required), `key`, `backend`, `cache_none`, `version`, `skip(...)`,
/// `returns`, `crate`. The `cachette` crate's documentation describes each, with examples that
/// compile.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    cached_tokens(args.into(), item.into()).into()
}

/// Removes the entries under the given key templates after the function succeeds.
///
/// `#[invalidates("user:<id>", "profile:<id>")]`: success is `Ok` for a `Result`, any return
/// otherwise. The keys are removed from every configured backend, so the entry is reached
/// whichever cached function stored it.
#[proc_macro_attribute]
pub fn invalidates(args: TokenStream, item: TokenStream) -> TokenStream {
    invalidates_tokens(args.into(), item.into()).into()
}

/// Write-through: after the function succeeds, stores its value under the key.
///
/// `#[cache_put(key = "user:settings:<user_id>", ttl = "5m", backend = "tiered")]` on an
/// `async fn`: the value (`Ok` of a `Result`, `Some` of an `Option`, else the whole return) is
/// stored in the named backend, fenced so that an older load under way cannot overwrite it, and
/// announced to peers; every other backend drops the key.
#[proc_macro_attribute]
pub fn cache_put(args: TokenStream, item: TokenStream) -> TokenStream {
    cache_put_tokens(args.into(), item.into()).into()
}

/// `#[cache_put]`, as [`cached_tokens`].
fn cache_put_tokens(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let mut errors = Vec::new();
    let args = CachedArgs::parse(args, &mut errors);
    let function = match parse_fn(item.clone(), "cache_put") {
        Ok(function) => function,
        Err(error) => return with_errors(item, error, errors),
    };
    let signature = Signature::read(&function, "cache_put", &mut errors);
    match validate::put(args, &signature, errors) {
        Ok(put) => expand::gen_put(&put),
        Err(error) => with_errors(function.to_token_stream(), error, Vec::new()),
    }
}

/// `#[cached]`, phase by phase: parse the arguments and the function, validate, generate. On
/// error, the function unchanged plus every error of the attribute (the arguments' too when the
/// item is not a function).
fn cached_tokens(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let mut errors = Vec::new();
    let args = CachedArgs::parse(args, &mut errors);
    let function = match parse_fn(item.clone(), "cached") {
        Ok(function) => function,
        Err(error) => return with_errors(item, error, errors),
    };
    let signature = Signature::read(&function, "cached", &mut errors);
    match validate::cached(args, &signature, errors) {
        Ok(cached) => expand::gen_cached(&cached),
        Err(error) => with_errors(function.to_token_stream(), error, Vec::new()),
    }
}

/// `#[invalidates]`, as [`cached_tokens`].
fn invalidates_tokens(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let mut errors = Vec::new();
    let args = InvalidatesArgs::parse(args, &mut errors);
    let function = match parse_fn(item.clone(), "invalidates") {
        Ok(function) => function,
        Err(error) => return with_errors(item, error, errors),
    };
    let signature = Signature::read(&function, "invalidates", &mut errors);
    match validate::invalidates(args, &signature, errors) {
        Ok(invalidates) => expand::gen_invalidates(&invalidates),
        Err(error) => with_errors(function.to_token_stream(), error, Vec::new()),
    }
}

/// The user's tokens, unchanged, next to the errors: callers of the function then see no
/// cascade of "cannot find function" errors.
fn with_errors(
    item: proc_macro2::TokenStream,
    first: syn::Error,
    more: Vec<syn::Error>,
) -> proc_macro2::TokenStream {
    let error = validate::combine(std::iter::once(first).chain(more).collect())
        .map(syn::Error::into_compile_error);
    quote::quote!(#item #error)
}

/// Expansion snapshots: each `tests/expand/*.rs` of this crate holds items carrying
/// `#[cached]` or `#[invalidates]`; their pretty-printed expansion is pinned in
/// `tests/expand/snapshots/`, so a change to the generated code shows up in review.
#[cfg(test)]
mod expansion_snapshots {
    use quote::ToTokens;
    use syn::visit_mut::VisitMut;

    fn take_attr(attrs: &mut Vec<syn::Attribute>) -> Option<(bool, proc_macro2::TokenStream)> {
        let index = attrs.iter().position(|attr| {
            attr.path().is_ident("cached") || attr.path().is_ident("invalidates")
        })?;
        let attr = attrs.remove(index);
        let args = match &attr.meta {
            syn::Meta::List(list) => list.tokens.clone(),
            _ => proc_macro2::TokenStream::new(),
        };
        Some((attr.path().is_ident("cached"), args))
    }

    /// Expands `function` in place if it carries one of the attributes; the expansion of a
    /// function is a function of the same kind, so it parses back into `T`.
    fn expand_in_place<T: ToTokens + syn::parse::Parse>(
        function: &mut T,
        attrs: fn(&mut T) -> &mut Vec<syn::Attribute>,
    ) -> bool {
        let Some((cached, args)) = take_attr(attrs(function)) else {
            return false;
        };
        let item = function.to_token_stream();
        let expanded = if cached {
            crate::cached_tokens(args, item)
        } else {
            crate::invalidates_tokens(args, item)
        };
        *function = syn::parse2(expanded).expect("the expansion parses as a function");
        true
    }

    struct Rewrite;

    impl VisitMut for Rewrite {
        fn visit_item_mut(&mut self, item: &mut syn::Item) {
            let expanded = match item {
                syn::Item::Fn(function) => expand_in_place(function, |f| &mut f.attrs),
                _ => false,
            };
            if !expanded {
                syn::visit_mut::visit_item_mut(self, item);
            }
        }

        fn visit_impl_item_mut(&mut self, item: &mut syn::ImplItem) {
            if let syn::ImplItem::Fn(function) = item {
                expand_in_place(function, |f| &mut f.attrs);
            }
        }
    }

    #[test]
    fn expansions_match_their_snapshots() {
        insta::glob!("../tests/expand", "*.rs", |path| {
            let source = std::fs::read_to_string(path).expect("readable input");
            let mut file: syn::File = syn::parse_file(&source).expect("valid Rust");
            Rewrite.visit_file_mut(&mut file);
            insta::with_settings!({ snapshot_path => "../tests/expand/snapshots", prepend_module_to_snapshot => false }, {
                insta::assert_snapshot!(prettyplease::unparse(&file));
            });
        });
    }
}
