//! Code generation: a thin wrapper around the original body that calls the runtime, written out
//! from what `validate.rs` checked; nothing here checks anything.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::{Ident, ItemFn, Path};

use crate::template::{Segment, Template};
use crate::validate::{
    Cached, Entry, Freshness, Invalidates, Key, KeyParam, Put, Shape, SiteBackend,
};

pub(crate) fn gen_cached(cached: &Cached) -> TokenStream {
    let Cached {
        function,
        krate,
        ttl_millis,
        backend,
        version,
        key,
        shape,
        entry,
        return_type,
        tags,
        freshness,
        detached,
        kept,
    } = cached;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let fn_name = sig.ident.to_string();
    let template = match key {
        Key::Template(template) => template.lit.value(),
        Key::Default { .. } => "(default key)".to_owned(),
    };
    // The runtime's name for "the configured default" (no configured name can be it).
    let backend = match backend {
        SiteBackend::Named(backend) => backend.name.as_str(),
        SiteBackend::Default => "default",
    };
    let family = match key {
        Key::Template(template) => {
            let template = template.lit.value();
            quote!(#template)
        }
        Key::Default {
            params,
            with_self_type,
        } => {
            let self_type = if *with_self_type { "::<>" } else { "" };
            let args = vec!["<>"; params.len()].join(",");
            let rest = format!("{self_type}({args})");
            quote!(::core::concat!(::core::module_path!(), "::", #fn_name, #rest))
        }
    };
    let key = match key {
        Key::Template(template) => gen_template_key(template, krate),
        Key::Default {
            params,
            with_self_type,
        } => gen_default_key(params, *with_self_type, krate),
    };
    // Spanned at the return type, the crate path too, so that a value that cannot be cached is
    // reported once, there: rustc keeps one of the errors of one bound at one span.
    let ret_span = syn::spanned::Spanned::span(return_type);
    let shape = match shape {
        Shape::OkOnly => "OkOnly",
        Shape::SomeOnly => "SomeOnly",
        Shape::Whole => "Whole",
    };
    let shape = Ident::new(shape, ret_span);
    // A site with `refresh` or `timeout` has no tags (refused for now).
    let entry_fn = match (entry, tags.is_empty()) {
        // Fail-safe in process: neither tags nor `refresh`/`timeout` (refused).
        (Entry::Default, true) if *kept => "cached_default_kept",
        (Entry::Async, true) if *kept => "cached_kept",
        (Entry::Remote, true) if *detached => "cached_remote_detached",
        (Entry::Default, true) if *detached => "cached_default_detached",
        (Entry::Async, true) if *detached => "cached_detached",
        (Entry::Remote, true) => "cached_remote",
        (Entry::Default, true) => "cached_default",
        (Entry::Async, true) => "cached",
        (Entry::Sync, _) => "cached_sync",
        (Entry::Remote, false) => "cached_remote_tagged",
        (Entry::Default, false) => "cached_default_tagged",
        (Entry::Async, false) => "cached_tagged",
    };
    let entry_fn = Ident::new(entry_fn, ret_span);
    let krate_at_ret = respan(krate.to_token_stream(), ret_span);
    let entry_fn = quote_spanned! {ret_span=>
        #krate_at_ret::__private::#entry_fn::<#return_type, #krate_at_ret::__private::#shape>
    };
    // Rendered before the body takes the arguments, as the key is.
    let tag_keys = tags.iter().map(|tag| gen_template_key(tag, krate));
    let tags_binding = (!tags.is_empty()).then(|| quote!(let __cachette_tags = [#(#tag_keys),*];));
    let tags_arg = (!tags.is_empty()).then(|| quote!(__cachette_tags,));
    let call = match entry {
        Entry::Async | Entry::Remote | Entry::Default => quote_spanned! {ret_span=>
            #entry_fn(&__CACHETTE_SITE, __cachette_key, #tags_arg async move #block).await
        },
        Entry::Sync => quote_spanned! {ret_span=>
            #entry_fn(&__CACHETTE_SITE, __cachette_key, move || #block)
        },
    };
    // A plain async site (no tags, `refresh`, `timeout` or fail-safe) asks the hit with the key where it was built, before the key is
    // moved into the entry point's future: that move is a copy whose wide loads would wait for
    // the narrower stores that just wrote the key (ARCHITECTURE.md, "The memory hit at the
    // floor"). The entry point asks again on a miss, which costs a probe next to a body's run.
    let hit_fn = match entry {
        Entry::Async => "hit",
        Entry::Remote | Entry::Default => "hit_portable",
        // Asked inside `cached_sync`, whose key is not moved into a future.
        Entry::Sync => "hit",
    };
    let hit_fn = Ident::new(hit_fn, ret_span);
    let early_hit = (!matches!(entry, Entry::Sync) && tags.is_empty() && !*kept && !*detached)
        .then(|| {
            quote_spanned! {ret_span=>
                if let ::core::option::Option::Some(__cachette_hit) =
                    #krate_at_ret::__private::#hit_fn::<#return_type, #krate_at_ret::__private::#shape>(
                        &__CACHETTE_SITE,
                        &__cachette_key,
                    )
                {
                    return __cachette_hit;
                }
            }
        });
    // A site with `refresh` or `timeout` asks too, but leaves an entry due for a refresh to
    // its entry point, which starts the refresh with the key's text.
    let by_form = tags.is_empty() && !*kept;
    let form_hit = match &cached.key {
        key if by_form => gen_form_hit(key, sig, krate, ret_span)
            .and_then(|hit_key| {
                let hit_fn = match (entry, *detached) {
                    (Entry::Async, false) => "hit_by_form",
                    (Entry::Remote | Entry::Default, false) => "hit_portable_by_form",
                    (Entry::Sync, false) => "hit_sync_by_form",
                    (Entry::Async, true) => "hit_fresh_by_form",
                    (Entry::Remote | Entry::Default, true) => "hit_portable_fresh_by_form",
                    (Entry::Sync, true) => return None,
                };
                let hit_fn = Ident::new(hit_fn, ret_span);
                quote_spanned! {ret_span=>
                    if let ::core::option::Option::Some(__cachette_hit) =
                        #krate_at_ret::__private::#hit_fn::<#return_type, #krate_at_ret::__private::#shape>(
                            &__CACHETTE_SITE,
                            #hit_key,
                        )
                    {
                        return __cachette_hit;
                    }
                }
                .into()
            }),
        _ => None,
    };
    // Asked by text only where it was not asked by form.
    let early_hit = early_hit.filter(|_| form_hit.is_none());
    let registration = gen_registration(krate, &fn_name, "Cached", &[family], tags);
    let with_freshness = freshness.as_ref().map(|freshness| {
        let Freshness {
            stale_millis,
            throttle_millis,
            hard_timeout_millis,
            jitter_permille,
            l1_ttl_millis,
            refresh_millis,
            soft_timeout_millis,
        } = freshness;
        quote! {
            .with_freshness(#krate::__private::Freshness {
                stale_millis: #stale_millis,
                throttle_millis: #throttle_millis,
                hard_timeout_millis: #hard_timeout_millis,
                jitter_permille: #jitter_permille,
                l1_ttl_millis: #l1_ttl_millis,
                refresh_millis: #refresh_millis,
                soft_timeout_millis: #soft_timeout_millis,
            })
        }
    });
    quote! {
        #(#attrs)*
        #vis #sig {
            static __CACHETTE_SITE: #krate::__private::Site = #krate::__private::Site::new(
                #krate::__private::function_path!(#fn_name),
                #template,
                #backend,
                #ttl_millis,
                #version,
            )#with_freshness;
            #registration
            #form_hit
            let __cachette_key = #key;
            #tags_binding
            #early_hit
            #call
        }
    }
}

/// What the audit learns of this function: a static in `cachette::audit`'s distributed slice.
fn gen_registration(
    krate: &Path,
    fn_name: &str,
    kind: &str,
    keys: &[TokenStream],
    tags: &[Template],
) -> TokenStream {
    let kind = Ident::new(kind, Span::call_site());
    let tags = tags.iter().map(|tag| tag.lit.value());
    quote! {
        #[#krate::__private::linkme::distributed_slice(#krate::__private::REGISTRATIONS)]
        #[linkme(crate = #krate::__private::linkme)]
        static __CACHETTE_REGISTRATION: #krate::__private::Registration =
            #krate::__private::Registration {
                function: #krate::__private::function_path!(#fn_name),
                kind: #krate::__private::Kind::#kind,
                keys: &[#(#keys),*],
                tags: &[#(#tags),*],
            };
    }
}

/// A `#[cache_put]`: the site's `static` (where and how long), the key, and one call that runs
/// the body and stores its value.
pub(crate) fn gen_put(put: &Put) -> TokenStream {
    let Put {
        function,
        krate,
        ttl_millis,
        backend,
        version,
        key,
        shape,
        return_type,
    } = put;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let fn_name = sig.ident.to_string();
    let template = key.lit.value();
    let (entry_fn, backend) = match backend {
        SiteBackend::Named(backend) if backend.kind.is_remote() => {
            ("cache_put_remote", backend.name.as_str())
        }
        SiteBackend::Named(backend) => ("cache_put", backend.name.as_str()),
        SiteBackend::Default => ("cache_put_default", "default"),
    };
    let key = gen_template_key(key, krate);
    let ret_span = syn::spanned::Spanned::span(return_type);
    let shape = match shape {
        Shape::OkOnly => "OkOnly",
        Shape::SomeOnly => "SomeOnly",
        Shape::Whole => "Whole",
    };
    let shape = Ident::new(shape, ret_span);
    let entry_fn = Ident::new(entry_fn, ret_span);
    let krate_at_ret = respan(krate.to_token_stream(), ret_span);
    let registration = gen_registration(krate, &fn_name, "Put", &[quote!(#template)], &[]);
    quote! {
        #(#attrs)*
        #vis #sig {
            static __CACHETTE_SITE: #krate::__private::Site = #krate::__private::Site::new(
                #krate::__private::function_path!(#fn_name),
                #template,
                #backend,
                #ttl_millis,
                #version,
            );
            #registration
            let __cachette_key = #key;
            #krate_at_ret::__private::#entry_fn::<#return_type, #krate_at_ret::__private::#shape>(
                &__CACHETTE_SITE, __cachette_key, async move #block
            ).await
        }
    }
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|token| {
            let mut token = match token {
                TokenTree::Group(group) => {
                    TokenTree::Group(Group::new(group.delimiter(), respan(group.stream(), span)))
                }
                other => other,
            };
            token.set_span(span);
            token
        })
        .collect()
}

/// `module::function(<a>,<b>)`: the site's function path, then the parameters.
fn gen_default_key(params: &[KeyParam], with_self_type: bool, krate: &Path) -> TokenStream {
    let parts = params.iter().enumerate().map(|(index, param)| {
        let separator = if index == 0 { "(" } else { "," };
        let name = &param.name;
        let value = quote_spanned!(param.span=> &#name);
        quote!(.lit(#separator).arg(#value))
    });
    let close = if params.is_empty() { "()" } else { ")" };
    let self_type =
        with_self_type.then(|| quote!(.lit("::").arg(#krate::__private::type_name::<Self>())));
    quote! {
        #krate::__private::KeyBuilder::new()
            .lit(__CACHETTE_SITE.function())
            #self_type
            #(#parts)*
            .lit(#close)
            .finish()
    }
}

pub(crate) fn gen_invalidates(invalidates: &Invalidates) -> TokenStream {
    let Invalidates {
        function,
        krate,
        templates,
        tags,
        only_if_ok,
    } = invalidates;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let keys = templates
        .iter()
        .map(|template| gen_template_key(template, krate));
    let success = if *only_if_ok {
        quote!(#krate::__private::IfOk)
    } else {
        quote!(#krate::__private::Always)
    };
    let tag_keys = tags.iter().map(|tag| gen_template_key(tag, krate));
    let tags_binding = (!tags.is_empty()).then(|| quote!(let __cachette_tags = [#(#tag_keys),*];));
    let call = if !tags.is_empty() {
        quote!(#krate::__private::invalidating_tagged(#success, __cachette_keys, __cachette_tags, async move #block).await)
    } else if sig.asyncness.is_some() {
        quote!(#krate::__private::invalidating(#success, __cachette_keys, async move #block).await)
    } else {
        quote!(#krate::__private::invalidating_sync(#success, __cachette_keys, move || #block))
    };
    let families: Vec<TokenStream> = templates
        .iter()
        .map(|template| {
            let template = template.lit.value();
            quote!(#template)
        })
        .collect();
    let registration = gen_registration(
        krate,
        &sig.ident.to_string(),
        "Invalidates",
        &families,
        tags,
    );
    quote! {
        #(#attrs)*
        #vis #sig {
            #registration
            let __cachette_keys = [#(#keys),*];
            #tags_binding
            #call
        }
    }
}

/// The hit key (`cachette`'s `key::canonical`) of a key whose placeholders are all plain
/// integer parameters: a template's, or a default key's (`path::name(<a>,<b>)`) without a
/// `Self` type. A form of at most 16 bytes known here is a `HitKey` (its literal text and each
/// integer as a mark and eight bytes, in a register); a longer one, or one whose length only
/// the caller's crate knows (a default key's module path), is a `HitPieces` of literal runs
/// and integers, which the store hashes and compares piece by piece. `None` for any other key,
/// whose hit is asked by its text. Decided from the parameters' written types, so that a value
/// that is not a key part is reported once, by the text key's bound, not by this one too.
fn gen_form_hit(key: &Key, sig: &syn::Signature, krate: &Path, span: Span) -> Option<TokenStream> {
    const FORM: usize = 16;
    const INTEGER: usize = 9;
    // The literal runs, each before an integer, and the integers' calls; then the last run.
    let mut runs = Vec::new();
    let mut integers = Vec::new();
    // A template's runs as text, for a short form's `HitKey`.
    let mut texts = Vec::new();
    let mut last_text = String::new();
    let (last, len) = match key {
        Key::Template(template) => {
            let mut run = String::new();
            let mut len = Some(0);
            for segment in &template.segments {
                match segment {
                    Segment::Lit(text) => {
                        run.push_str(text);
                        len = len.map(|len| len + text.len());
                    }
                    Segment::Placeholder(placeholder) => {
                        if placeholder.hashed || !placeholder.fields.is_empty() {
                            return None;
                        }
                        let value = hit_arg(sig, &placeholder.root, span)?;
                        // A string's length is known only where the call runs.
                        len = len.filter(|_| value.0 != "str").map(|len| len + INTEGER);
                        integers.push(value);
                        runs.push(quote!(#run));
                        texts.push(std::mem::take(&mut run));
                    }
                }
            }
            let last = quote!(#run);
            last_text = run;
            (last, len)
        }
        // As `gen_default_key` writes it: the function's path, then `(<a>,<b>)`; its length
        // is the caller's module path's.
        Key::Default {
            params,
            with_self_type: false,
        } => {
            let fn_name = sig.ident.to_string();
            let path =
                |rest: &str| quote!(::core::concat!(::core::module_path!(), "::", #fn_name, #rest));
            for (index, param) in params.iter().enumerate() {
                integers.push(hit_arg(sig, &param.name.to_string(), span)?);
                runs.push(if index == 0 { path("(") } else { quote!(",") });
            }
            let last = if params.is_empty() {
                path("()")
            } else {
                quote!(")")
            };
            (last, None)
        }
        Key::Default { .. } => return None,
    };
    let private = quote_spanned!(span=> #krate::__private);
    match len {
        Some(len) if len <= FORM => {
            // An empty run is left out, so that the expansion reads as the template.
            let lit = |run: &String| (!run.is_empty()).then(|| quote_spanned!(span=> .lit(#run)));
            let parts = texts.iter().zip(&integers).map(|(run, (method, value))| {
                let lit = lit(run);
                quote_spanned!(span=> #lit.#method(#value))
            });
            let last = lit(&last_text);
            Some(quote_spanned!(span=> #private::HitKey::new() #(#parts)* #last))
        }
        _ => {
            let values = integers.iter().map(|(method, value)| {
                if method == "str" {
                    // Which `String` the name is, the type checker says (`HitArg`): a user's
                    // type of that name goes by the key's text.
                    return quote_spanned! {span=> {
                        use #private::OtherHitArg as _;
                        (&#private::HitArg(#value)).__cachette_hit_value()
                    }};
                }
                let method = format_ident!("hit_{}", method);
                quote_spanned!(span=> #private::#method(#value))
            });
            Some(quote_spanned! {span=>
                #private::HitPieces::new([#(#runs),*], [#(#values),*], #last)
            })
        }
    }
}

/// The hit key's call for the parameter `name` (`uint`, `int` or `str`) and its value, if it
/// is an integer ([`integer_param`]) or a string ([`string_param`]).
fn hit_arg(sig: &syn::Signature, name: &str, span: Span) -> Option<(Ident, TokenStream)> {
    integer_arg(sig, name, span).or_else(|| {
        let mut name = string_param(sig, name)?;
        name.set_span(span);
        // `&name` is a `&&str`, a `&String` or a `&&String` (one `&` more for a `ref`
        // binding), or a reference to a user's type of that name: `HitArg` tells them apart.
        Some((Ident::new("str", span), quote_spanned!(span=> &#name)))
    })
}

/// The hit key's call for the integer parameter `name` (`uint` or `int`) and its value, if it
/// is one ([`integer_param`]).
fn integer_arg(sig: &syn::Signature, name: &str, span: Span) -> Option<(Ident, TokenStream)> {
    let (ty, by_ref, mut name) = integer_param(sig, name)?;
    // The parameter's own identifier, which may be raw (`r#type`): `Ident::new` refuses one.
    name.set_span(span);
    let value = if by_ref {
        quote_spanned!(span=> *#name)
    } else {
        quote_spanned!(span=> #name)
    };
    // Widened losslessly, without a cast where none is needed (a lint in the caller's crate
    // would see it).
    let (method, value) = match ty.as_str() {
        "u64" => ("uint", value),
        "i64" => ("int", value),
        "u8" | "u16" | "u32" => (
            "uint",
            quote_spanned!(span=> ::core::primitive::u64::from(#value)),
        ),
        "i8" | "i16" | "i32" => (
            "int",
            quote_spanned!(span=> ::core::primitive::i64::from(#value)),
        ),
        "usize" => (
            "uint",
            quote_spanned!(span=> #value as ::core::primitive::u64),
        ),
        _ => (
            "int",
            quote_spanned!(span=> #value as ::core::primitive::i64),
        ),
    };
    Some((Ident::new(method, span), value))
}

/// The primitive integer type of at most 64 bits the parameter `name` is written as, whether
/// it is behind a `&` (or bound by `ref`), and its identifier: what a hit key takes.
fn integer_param(sig: &syn::Signature, name: &str) -> Option<(String, bool, Ident)> {
    let (ty, param, ref_binding) = sig.inputs.iter().find_map(|input| match input {
        syn::FnArg::Typed(typed) => match &*typed.pat {
            syn::Pat::Ident(ident) if ident.ident == name && ident.subpat.is_none() => {
                Some((&*typed.ty, ident.ident.clone(), ident.by_ref.is_some()))
            }
            _ => None,
        },
        syn::FnArg::Receiver(_) => None,
    })?;
    // A `ref id: u64` binds a `&u64`: one `*` as for `id: &u64`, and one too few for
    // `ref id: &u64` (the text path takes that).
    let (ty, by_ref) = match (ungroup(ty), ref_binding) {
        (syn::Type::Reference(_), true) => return None,
        (syn::Type::Reference(reference), false) if reference.mutability.is_none() => {
            (ungroup(&reference.elem), true)
        }
        (ty, ref_binding) => (ty, ref_binding),
    };
    let syn::Type::Path(path) = ty else {
        return None;
    };
    if path.qself.is_some() {
        return None;
    }
    let ty = path.path.get_ident()?.to_string();
    let integer = matches!(
        ty.as_str(),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize"
    );
    integer.then_some((ty, by_ref, param))
}

/// The identifier of the parameter `name` if it is written as a `&str`, a `String` or a
/// `&String` (by value, by `&` or bound by `ref`): whose key text is the string's own
/// (`KeyPart` for `str` and `String` writes it as it is), so a hit key can take it.
fn string_param(sig: &syn::Signature, name: &str) -> Option<Ident> {
    let (ty, param) = sig.inputs.iter().find_map(|input| match input {
        syn::FnArg::Typed(typed) => match &*typed.pat {
            syn::Pat::Ident(ident) if ident.ident == name && ident.subpat.is_none() => {
                Some((&*typed.ty, ident.ident.clone()))
            }
            _ => None,
        },
        syn::FnArg::Receiver(_) => None,
    })?;
    let ty = match ungroup(ty) {
        syn::Type::Reference(reference) if reference.mutability.is_none() => {
            ungroup(&reference.elem)
        }
        ty => ty,
    };
    let syn::Type::Path(path) = ty else {
        return None;
    };
    if path.qself.is_some() {
        return None;
    }
    let ty = path.path.get_ident()?;
    (ty == "str" || ty == "String").then_some(param)
}

fn ungroup(ty: &syn::Type) -> &syn::Type {
    match ty {
        syn::Type::Group(group) => ungroup(&group.elem),
        syn::Type::Paren(paren) => ungroup(&paren.elem),
        ty => ty,
    }
}

fn gen_template_key(template: &Template, krate: &Path) -> TokenStream {
    let span = template.lit.span();
    let parts = template.segments.iter().map(|segment| match segment {
        Segment::Lit(text) => quote!(.lit(#text)),
        Segment::Placeholder(placeholder) => {
            let root = syn::Ident::new(&placeholder.root, span);
            let fields = placeholder
                .fields
                .iter()
                .map(|field| match field.parse::<u32>() {
                    Ok(index) => {
                        let index = syn::Index { index, span };
                        quote!(.#index)
                    }
                    Err(_) => {
                        let ident = syn::Ident::new(field, span);
                        quote!(.#ident)
                    }
                });
            let value = quote_spanned!(span=> &#root #(#fields)*);
            if placeholder.hashed {
                quote_spanned!(span=> .hashed(#value))
            } else {
                quote_spanned!(span=> .arg(#value))
            }
        }
    });
    quote!(#krate::__private::KeyBuilder::new() #(#parts)* .finish())
}
