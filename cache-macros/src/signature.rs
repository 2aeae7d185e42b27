//! What the macros need to know about the annotated function.

use syn::{Error, FnArg, GenericArgument, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::args::Returns;

/// A parameter that a key can name.
pub(crate) struct Param {
    pub(crate) name: syn::Ident,
    /// The whole parameter (`id: u64`), where errors about it point.
    pub(crate) span_tokens: proc_macro2::TokenStream,
    pub(crate) is_receiver: bool,
    /// A destructured parameter has no name a key could use.
    pub(crate) named: bool,
}

pub(crate) fn params(function: &ItemFn) -> Vec<Param> {
    function
        .sig
        .inputs
        .iter()
        .map(|input| match input {
            FnArg::Receiver(receiver) => Param {
                name: syn::Ident::new("self", receiver.self_token.span),
                span_tokens: quote::quote!(#receiver),
                is_receiver: true,
                named: true,
            },
            FnArg::Typed(typed) => {
                let (name, named) = match &*typed.pat {
                    Pat::Ident(ident) => (ident.ident.clone(), true),
                    other => (
                        syn::Ident::new("_", syn::spanned::Spanned::span(other)),
                        false,
                    ),
                };
                Param {
                    name,
                    span_tokens: quote::quote!(#typed),
                    is_receiver: false,
                    named,
                }
            }
        })
        .collect()
}

/// The return shape: stated by `returns = ...`, or read from the return type's last segment.
pub(crate) fn returns(function: &ItemFn, stated: Option<Returns>) -> Returns {
    if let Some(stated) = stated {
        return stated;
    }
    match last_segment(&function.sig.output) {
        Some(segment) if segment == "Result" => Returns::Result,
        Some(segment) if segment == "Option" => Returns::Option,
        _ => Returns::Value,
    }
}

fn last_segment(output: &ReturnType) -> Option<String> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::Path(path) = &**ty else {
        return None;
    };
    let segment = path.path.segments.last()?;
    match &segment.arguments {
        PathArguments::AngleBracketed(args)
            if args
                .args
                .iter()
                .any(|arg| matches!(arg, GenericArgument::Type(_))) =>
        {
            Some(segment.ident.to_string())
        }
        _ => None,
    }
}

/// Rejects functions the macros cannot wrap.
pub(crate) fn check_function(function: &ItemFn, attribute: &str) -> Result<(), Error> {
    if let Some(constness) = &function.sig.constness {
        return Err(Error::new(
            constness.span,
            format!("`#[{attribute}]` cannot be used on a `const fn`: a cache runs at run time"),
        ));
    }
    Ok(())
}
