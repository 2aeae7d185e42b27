//! What the macros need to know about the annotated function, read once from its signature.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::{Error, FnArg, GenericArgument, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::args::Returns;

/// The annotated function, as the checks and the expansion see it.
pub(crate) struct Signature<'a> {
    pub(crate) function: &'a ItemFn,
    pub(crate) params: Vec<Param>,
    pub(crate) is_async: bool,
    /// The declared return type; `None` for a function that returns `()` implicitly.
    pub(crate) output: Option<&'a Type>,
    /// The shape its return type's last segment suggests (`Result`, `Option`, anything else).
    pub(crate) detected_returns: Returns,
}

/// A parameter that a key can name.
pub(crate) struct Param {
    pub(crate) name: syn::Ident,
    /// The whole parameter (`id: u64`), where errors about it point.
    pub(crate) tokens: TokenStream,
    pub(crate) is_receiver: bool,
    /// A destructured parameter has no name a key could use.
    pub(crate) named: bool,
}

impl Param {
    pub(crate) fn span(&self) -> Span {
        syn::spanned::Spanned::span(&self.tokens)
    }
}

impl<'a> Signature<'a> {
    /// Reads `function`; a function the macros cannot wrap at all (`const fn`) is an error in
    /// `errors`, and the rest is still read so that the other checks run.
    pub(crate) fn read(function: &'a ItemFn, attribute: &str, errors: &mut Vec<Error>) -> Self {
        if let Some(constness) = &function.sig.constness {
            errors.push(Error::new(
                constness.span,
                format!(
                    "`#[{attribute}]` cannot be used on a `const fn`: a cache runs at run time"
                ),
            ));
        }
        let output = match &function.sig.output {
            ReturnType::Type(_, ty) => Some(&**ty),
            ReturnType::Default => None,
        };
        Signature {
            function,
            params: function.sig.inputs.iter().map(param).collect(),
            is_async: function.sig.asyncness.is_some(),
            output,
            detected_returns: output.map_or(Returns::Value, detect_returns),
        }
    }

    /// The parameter named `name`, if the function has one a key can use.
    pub(crate) fn param(&self, name: &str) -> Option<&Param> {
        self.params
            .iter()
            .find(|param| param.named && param.name == name)
    }

    pub(crate) fn has_receiver(&self) -> bool {
        self.params.iter().any(|param| param.is_receiver)
    }
}

fn param(input: &FnArg) -> Param {
    match input {
        FnArg::Receiver(receiver) => Param {
            name: syn::Ident::new("self", receiver.self_token.span),
            tokens: receiver.to_token_stream(),
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
                tokens: typed.to_token_stream(),
                is_receiver: false,
                named,
            }
        }
    }
}

/// `Result<..>` and `Option<..>` by their last path segment, so that `std::result::Result<..>`
/// counts; an alias of either needs `returns = "..."`.
fn detect_returns(ty: &Type) -> Returns {
    let Type::Path(path) = ty else {
        return Returns::Value;
    };
    let Some(segment) = path.path.segments.last() else {
        return Returns::Value;
    };
    let generic = matches!(
        &segment.arguments,
        PathArguments::AngleBracketed(args)
            if args.args.iter().any(|arg| matches!(arg, GenericArgument::Type(_)))
    );
    match segment.ident.to_string().as_str() {
        "Result" if generic => Returns::Result,
        "Option" if generic => Returns::Option,
        _ => Returns::Value,
    }
}

/// The item an attribute is on, as a function with a body; anything else is the one error that
/// stops the attribute from being read further.
pub(crate) fn parse_fn(item: TokenStream, attribute: &str) -> Result<ItemFn, Error> {
    syn::parse2::<ItemFn>(item.clone()).map_err(|_| {
        Error::new_spanned(
            item.into_iter().take(3).collect::<TokenStream>(),
            format!("`#[{attribute}]` can only be applied to functions with a body"),
        )
    })
}
