//! Procedural macros of cachet. Use them through the `cachet` crate, which documents them.
//!
//! The crate is laid out by phase: [`args`] parses the attribute, [`template`] parses key
//! templates, [`signature`] reads the function, and [`expand`] writes the thin wrapper.

extern crate proc_macro;

mod args;
mod expand;
mod signature;
mod suggest;
mod template;

use proc_macro::TokenStream;

/// Caches the function's result; see `cachet::cached`.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::cached(args.into(), item.into()).into()
}

/// Invalidates cache keys after the function succeeds; see `cachet::invalidates`.
#[proc_macro_attribute]
pub fn invalidates(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::invalidates(args.into(), item.into()).into()
}
