//! Code generation: a thin wrapper around the original body that calls the runtime.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::{Error, ItemFn, LitStr, Path, ReturnType};

use crate::args::{combine, CachedArgs, InvalidatesArgs, Returns};
use crate::signature::{check_function, params, returns, Param};
use crate::suggest::closest;
use crate::template::{Segment, Template};

/// `#[cached]`: parse, validate, expand; on error, the function unchanged plus the errors.
pub(crate) fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    let function = match parse_fn(item.clone(), "cached") {
        Ok(function) => function,
        Err(error) => return with_error(item, error),
    };
    match CachedArgs::parse(args).and_then(|args| gen_cached(&args, &function)) {
        Ok(expanded) => expanded,
        Err(error) => with_error(function.into_token_stream(), error),
    }
}

/// `#[invalidates]`.
pub(crate) fn invalidates(args: TokenStream, item: TokenStream) -> TokenStream {
    let function = match parse_fn(item.clone(), "invalidates") {
        Ok(function) => function,
        Err(error) => return with_error(item, error),
    };
    match InvalidatesArgs::parse(args, Span::call_site())
        .and_then(|args| gen_invalidates(&args, &function))
    {
        Ok(expanded) => expanded,
        Err(error) => with_error(function.into_token_stream(), error),
    }
}

fn parse_fn(item: TokenStream, attribute: &str) -> Result<ItemFn, Error> {
    syn::parse2::<ItemFn>(item.clone()).map_err(|_| {
        Error::new_spanned(
            item.into_iter().take(3).collect::<TokenStream>(),
            format!("`#[{attribute}]` can only be applied to functions with a body"),
        )
    })
}

/// The user's tokens, unchanged, next to the errors: callers of the function then see no
/// cascade of "cannot find function" errors.
fn with_error(item: TokenStream, error: Error) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#item #error)
}

fn gen_cached(args: &CachedArgs, function: &ItemFn) -> Result<TokenStream, Error> {
    check_function(function, "cached")?;
    let params = params(function);
    let mut errors = Vec::new();
    let krate = crate_path(args.crate_path.as_ref());
    let Some((ttl_millis, _)) = args.ttl else {
        return Err(Error::new(
            Span::call_site(),
            "`#[cached]` needs a `ttl`\nhelp: write `#[cached(ttl = \"60s\")]`",
        ));
    };
    let shape = returns(function, args.returns.map(|(returns, _)| returns));
    if let Some(span) = args.cache_none {
        if shape != Returns::Option {
            errors.push(Error::new(
                span,
                "`cache_none` only applies to functions that return `Option<_>`\n\
                 help: if the return type is an alias of `Option`, add `returns = \"option\"`",
            ));
        }
    }
    let remote = backend_kind(args) != "memory";
    if remote && function.sig.asyncness.is_none() {
        let backend = args
            .backend
            .as_ref()
            .map(LitStr::span)
            .unwrap_or_else(Span::call_site);
        errors.push(Error::new(
            backend,
            "a remote backend does network I/O, so it needs an `async fn`\n\
             help: make the function `async`, or use `backend = \"memory\"`",
        ));
    }
    if let ReturnType::Default = function.sig.output {
        errors.push(Error::new_spanned(
            &function.sig.ident,
            "`#[cached]` on a function that returns nothing would only skip its side effects",
        ));
    }
    if let Some((_, skipped)) = &args.skip {
        if let Some(key) = &args.key {
            errors.push(Error::new(
                key.span(),
                "`skip` has no effect with an explicit `key`: the template names the parameters it uses",
            ));
        }
        for name in skipped {
            if !params
                .iter()
                .any(|param| param.named && param.name == *name)
            {
                errors.push(unknown_param(
                    name.span(),
                    &name.to_string(),
                    function,
                    &params,
                    "skip",
                ));
            }
        }
    }
    let key = match &args.key {
        Some(lit) => gen_template_key(lit, function, &params, &krate),
        None => gen_default_key(args, function, &params, &krate),
    };
    let key = match key {
        Ok(key) => Some(key),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    combine(errors)?;
    let key = key.unwrap_or_default();

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let fn_suffix = format!("::{}", sig.ident);
    let template = match &args.key {
        Some(lit) => lit.value(),
        None => "(default key)".to_owned(),
    };
    let backend = args
        .backend
        .as_ref()
        .map_or_else(|| "memory".to_owned(), LitStr::value);
    let version = args.version.unwrap_or(0);
    let shape_tokens = match (shape, args.cache_none.is_some()) {
        (Returns::Result, _) => quote!(OkOnly),
        (Returns::Option, false) => quote!(SomeOnly),
        (Returns::Option, true) | (Returns::Value, _) => quote!(Whole),
    };
    let ret_ty = match &sig.output {
        ReturnType::Type(_, ty) => ty.to_token_stream(),
        ReturnType::Default => quote!(()),
    };
    // Spanned at the return type, so that a value that cannot be cached is reported there.
    let ret_span = ret_ty_span(&sig.output);
    let shape_tokens = quote_spanned!(ret_span=> #krate::__private::#shape_tokens);
    let entry = if remote {
        quote_spanned!(ret_span=> #krate::__private::cached_remote::<#ret_ty, _, _>)
    } else if sig.asyncness.is_some() {
        quote_spanned!(ret_span=> #krate::__private::cached::<#ret_ty, _, _>)
    } else {
        quote_spanned!(ret_span=> #krate::__private::cached_sync::<#ret_ty, _, _>)
    };
    let call = if sig.asyncness.is_some() {
        quote_spanned! {ret_span=>
            #entry(&__CACHET_SITE, #shape_tokens, __cachet_key, async move #block).await
        }
    } else {
        quote_spanned! {ret_span=>
            #entry(&__CACHET_SITE, #shape_tokens, __cachet_key, move || #block)
        }
    };
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            static __CACHET_SITE: #krate::__private::Site = #krate::__private::Site {
                function: #krate::__private::concat!(#krate::__private::module_path!(), #fn_suffix),
                template: #template,
                backend: #backend,
                ttl: #krate::__private::Duration::from_millis(#ttl_millis),
                version: #version,
                state: #krate::__private::SiteState::new(),
            };
            let __cachet_key = #key;
            #call
        }
    })
}

/// `memory` or `redis`: the part of the backend name before any `.instance`.
fn backend_kind(args: &CachedArgs) -> String {
    let name = args
        .backend
        .as_ref()
        .map_or_else(|| "memory".to_owned(), LitStr::value);
    name.split('.').next().unwrap_or_default().to_owned()
}

fn ret_ty_span(output: &ReturnType) -> Span {
    match output {
        ReturnType::Type(_, ty) => syn::spanned::Spanned::span(ty),
        ReturnType::Default => Span::call_site(),
    }
}

fn gen_invalidates(args: &InvalidatesArgs, function: &ItemFn) -> Result<TokenStream, Error> {
    check_function(function, "invalidates")?;
    let params = params(function);
    let krate = crate_path(args.crate_path.as_ref());
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for lit in &args.templates {
        match gen_template_key(lit, function, &params, &krate) {
            Ok(key) => keys.push(key),
            Err(error) => errors.push(error),
        }
    }
    combine(errors)?;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let success = match returns(function, None) {
        Returns::Result => quote!(#krate::__private::IfOk),
        _ => quote!(#krate::__private::Always),
    };
    let call = if sig.asyncness.is_some() {
        quote!(#krate::__private::invalidating(#success, __cachet_keys, async move #block).await)
    } else {
        quote!(#krate::__private::invalidating_sync(#success, __cachet_keys, move || #block))
    };
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            let __cachet_keys = [#(#keys),*];
            #call
        }
    })
}

fn crate_path(path: Option<&Path>) -> TokenStream {
    match path {
        Some(path) => path.to_token_stream(),
        None => quote!(::cachet),
    }
}

/// `KeyBuilder::new().lit("user:").arg(&id).finish()` from a template.
fn gen_template_key(
    lit: &LitStr,
    function: &ItemFn,
    params: &[Param],
    krate: &TokenStream,
) -> Result<TokenStream, Error> {
    let template = Template::parse(lit)?;
    let mut errors = Vec::new();
    for placeholder in template.placeholders() {
        let known = params
            .iter()
            .any(|param| param.named && param.name == placeholder.root.as_str());
        if !known {
            errors.push(unknown_param(
                lit.span(),
                &placeholder.text,
                function,
                params,
                "template",
            ));
        }
    }
    combine(errors)?;
    let parts = template.segments.iter().map(|segment| match segment {
        Segment::Lit(text) => quote!(.lit(#text)),
        Segment::Placeholder(placeholder) => {
            let root = syn::Ident::new(&placeholder.root, lit.span());
            let fields = placeholder
                .fields
                .iter()
                .map(|field| match field.parse::<u32>() {
                    Ok(index) => {
                        let index = syn::Index {
                            index,
                            span: lit.span(),
                        };
                        quote!(.#index)
                    }
                    Err(_) => {
                        let ident = syn::Ident::new(field, lit.span());
                        quote!(.#ident)
                    }
                });
            let value = quote_spanned!(lit.span()=> &#root #(#fields)*);
            if placeholder.hashed {
                quote_spanned!(lit.span()=> .hashed(#value))
            } else {
                quote_spanned!(lit.span()=> .arg(#value))
            }
        }
    });
    Ok(quote!(#krate::__private::KeyBuilder::new() #(#parts)* .finish()))
}

/// The default key: `module::function(<a>,<b>)` over every parameter not skipped.
fn gen_default_key(
    args: &CachedArgs,
    function: &ItemFn,
    params: &[Param],
    krate: &TokenStream,
) -> Result<TokenStream, Error> {
    let mut errors = Vec::new();
    if let Some(param) = function.sig.generics.type_params().next() {
        errors.push(Error::new_spanned(
            param,
            format!(
                "a generic function needs an explicit `key`: the default key does not tell `{}` apart\n\
                 help: add `key = \"...\"` with a template that differs for each type",
                param.ident
            ),
        ));
    }
    let skipped = |param: &Param| {
        param.is_receiver
            || args
                .skip
                .as_ref()
                .is_some_and(|(_, names)| names.contains(&param.name))
    };
    let mut parts = Vec::new();
    for param in params.iter().filter(|param| !skipped(param)) {
        if !param.named {
            errors.push(Error::new_spanned(
                &param.span_tokens,
                "a destructured parameter cannot be part of the default key\n\
                 help: bind it to a name, or give an explicit `key = \"...\"`",
            ));
            continue;
        }
        let name = &param.name;
        let separator = if parts.is_empty() { "(" } else { "," };
        let value = quote_spanned!(param_span(param)=> &#name);
        parts.push(quote!(.lit(#separator).arg(#value)));
    }
    combine(errors)?;
    let fn_path = format!("::{}", function.sig.ident);
    let close = if parts.is_empty() { "()" } else { ")" };
    // Methods of two types in one module share a name and a module path: the receiver's type
    // tells them apart.
    let self_type = params
        .iter()
        .any(|param| param.is_receiver)
        .then(|| quote!(.lit("::").arg(#krate::__private::type_name::<Self>())));
    Ok(quote! {
        #krate::__private::KeyBuilder::new()
            .lit(#krate::__private::concat!(#krate::__private::module_path!(), #fn_path))
            #self_type
            #(#parts)*
            .lit(#close)
            .finish()
    })
}

fn param_span(param: &Param) -> Span {
    syn::spanned::Spanned::span(&param.span_tokens)
}

fn unknown_param(span: Span, name: &str, function: &ItemFn, params: &[Param], what: &str) -> Error {
    let names: Vec<String> = params
        .iter()
        .filter(|p| p.named)
        .map(|p| p.name.to_string())
        .collect();
    let bare = name.trim_start_matches('<').trim_end_matches('>');
    let root = bare.split(['.', ':']).next().unwrap_or(bare);
    let mut message = format!(
        "`{name}` in the {what} names no parameter of `{}`",
        function.sig.ident
    );
    if let Some(near) = closest(root, names.iter().map(String::as_str)) {
        message.push_str(&format!("\nhelp: did you mean `{near}`?"));
    }
    if names.is_empty() {
        message.push_str("\nhelp: the function has no parameters");
    } else {
        let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        message.push_str(&format!("\nhelp: the parameters are {}", list.join(", ")));
    }
    Error::new(span, message)
}
