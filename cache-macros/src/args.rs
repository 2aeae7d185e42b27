//! The attributes' arguments, parsed into typed structs. Every problem is collected, so the user
//! sees all of them at once.

use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Error, Ident, LitInt, LitStr, Path, Token};

use crate::suggest::closest;

const CACHED_OPTIONS: &[&str] = &[
    "ttl",
    "key",
    "backend",
    "cache_none",
    "version",
    "crate",
    "skip",
    "returns",
];
const BACKEND_KINDS: &[&str] = &["memory", "redis", "tiered"];

/// `#[cached(...)]`.
#[derive(Default)]
pub(crate) struct CachedArgs {
    pub(crate) ttl: Option<(u64, Span)>,
    pub(crate) key: Option<LitStr>,
    pub(crate) backend: Option<LitStr>,
    pub(crate) cache_none: Option<Span>,
    pub(crate) version: Option<u32>,
    pub(crate) crate_path: Option<Path>,
    pub(crate) skip: Option<(Span, Vec<Ident>)>,
    pub(crate) returns: Option<(Returns, Span)>,
}

/// How the return value holds what is cached; stated for type aliases.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Returns {
    Result,
    Option,
    Value,
}

/// `#[invalidates("tpl", ...)]`.
pub(crate) struct InvalidatesArgs {
    pub(crate) templates: Vec<LitStr>,
    pub(crate) crate_path: Option<Path>,
}

/// Records a value once; a second occurrence is an error on the second key.
fn set_once<T>(slot: &mut Option<T>, value: T, meta: &ParseNestedMeta, errors: &mut Vec<Error>) {
    if slot.is_some() {
        let name = meta
            .path
            .get_ident()
            .map(Ident::to_string)
            .unwrap_or_default();
        errors.push(meta.error(format!("duplicate option `{name}`")));
    } else {
        *slot = Some(value);
    }
}

impl CachedArgs {
    pub(crate) fn parse(tokens: TokenStream) -> Result<CachedArgs, Error> {
        let mut args = CachedArgs::default();
        let mut errors = Vec::new();
        let parser = syn::meta::parser(|meta| args.parse_option(&meta, &mut errors));
        parser.parse2(tokens)?;
        combine(errors)?;
        Ok(args)
    }

    fn parse_option(&mut self, meta: &ParseNestedMeta, errors: &mut Vec<Error>) -> syn::Result<()> {
        let name = meta
            .path
            .get_ident()
            .map(Ident::to_string)
            .unwrap_or_default();
        match name.as_str() {
            // ttl = "90s" | ttl = 90
            "ttl" => {
                let value = meta.value()?;
                let parsed = if value.peek(LitInt) {
                    let lit: LitInt = value.parse()?;
                    lit.base10_parse::<u64>()
                        .map(|secs| (secs.saturating_mul(1000), lit.span()))
                } else {
                    let lit: LitStr = value.parse()?;
                    parse_ttl(&lit).map(|millis| (millis, lit.span()))
                };
                match parsed {
                    Ok((0, span)) => errors.push(Error::new(
                        span,
                        "ttl must be greater than zero\nhelp: to turn caching off, remove the attribute",
                    )),
                    Ok(ttl) => set_once(&mut self.ttl, ttl, meta, errors),
                    Err(error) => errors.push(error),
                }
            }
            // key = "user:<id>"
            "key" => {
                let lit: LitStr = meta.value()?.parse()?;
                set_once(&mut self.key, lit, meta, errors);
            }
            // backend = "memory" | "memory.sessions"
            "backend" => {
                let lit: LitStr = meta.value()?.parse()?;
                if let Err(error) = check_backend(&lit) {
                    errors.push(error);
                }
                set_once(&mut self.backend, lit, meta, errors);
            }
            // cache_none
            "cache_none" => {
                if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                    errors.push(meta.error("`cache_none` takes no value: write `cache_none`"));
                    skip_value(meta)?;
                }
                set_once(
                    &mut self.cache_none,
                    meta.path
                        .get_ident()
                        .map_or_else(Span::call_site, Ident::span),
                    meta,
                    errors,
                );
            }
            // version = 2
            "version" => {
                let lit: LitInt = meta.value()?.parse()?;
                match lit.base10_parse::<u32>() {
                    Ok(version) => set_once(&mut self.version, version, meta, errors),
                    Err(error) => errors.push(error),
                }
            }
            // crate = "cachet"
            "crate" => {
                let lit: LitStr = meta.value()?.parse()?;
                match lit.parse::<Path>() {
                    Ok(path) => set_once(&mut self.crate_path, path, meta, errors),
                    Err(_) => errors.push(Error::new(
                        lit.span(),
                        "`crate` must be a path, as in `crate = \"cachet\"`",
                    )),
                }
            }
            // skip(db, logger)
            "skip" => {
                let mut names = Vec::new();
                meta.parse_nested_meta(|inner| {
                    match inner.path.get_ident() {
                        Some(ident) => names.push(ident.clone()),
                        None => errors.push(inner.error("`skip` takes parameter names")),
                    }
                    Ok(())
                })?;
                let span = meta
                    .path
                    .get_ident()
                    .map_or_else(Span::call_site, Ident::span);
                set_once(&mut self.skip, (span, names), meta, errors);
            }
            // returns = "result" | "option" | "value"
            "returns" => {
                let lit: LitStr = meta.value()?.parse()?;
                let returns = match lit.value().as_str() {
                    "result" => Some(Returns::Result),
                    "option" => Some(Returns::Option),
                    "value" => Some(Returns::Value),
                    _ => None,
                };
                match returns {
                    Some(returns) => {
                        set_once(&mut self.returns, (returns, lit.span()), meta, errors)
                    }
                    None => errors.push(Error::new(
                        lit.span(),
                        "`returns` is one of \"result\", \"option\" or \"value\"",
                    )),
                }
            }
            _ => {
                let hint = match closest(&name, CACHED_OPTIONS.iter().copied()) {
                    Some(near) => format!("help: did you mean `{near}`?"),
                    None => format!("help: the options are {}", list(CACHED_OPTIONS)),
                };
                errors.push(meta.error(format!("unknown option `{name}` for `#[cached]`\n{hint}")));
                skip_value(meta)?;
            }
        }
        Ok(())
    }
}

impl InvalidatesArgs {
    pub(crate) fn parse(tokens: TokenStream, attr_span: Span) -> Result<InvalidatesArgs, Error> {
        let mut templates = Vec::new();
        let mut crate_path = None;
        let mut errors = Vec::new();
        let parser = |input: syn::parse::ParseStream| {
            while !input.is_empty() {
                if input.peek(LitStr) {
                    templates.push(input.parse::<LitStr>()?);
                } else if input.peek(Token![crate]) {
                    input.parse::<Token![crate]>()?;
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse()?;
                    match lit.parse::<Path>() {
                        Ok(path) => crate_path = Some(path),
                        Err(_) => errors.push(Error::new(
                            lit.span(),
                            "`crate` must be a path, as in `crate = \"cachet\"`",
                        )),
                    }
                } else {
                    return Err(input.error(
                        "expected a key template string, as in `#[invalidates(\"user:<id>\")]`",
                    ));
                }
                if !input.is_empty() {
                    input.parse::<Token![,]>()?;
                }
            }
            Ok(())
        };
        parser.parse2(tokens)?;
        if templates.is_empty() {
            errors.push(Error::new(
                attr_span,
                "`#[invalidates]` needs at least one key template\nhelp: write `#[invalidates(\"user:<id>\")]`",
            ));
        }
        combine(errors)?;
        Ok(InvalidatesArgs {
            templates,
            crate_path,
        })
    }
}

fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        meta.input.parse::<proc_macro2::Group>()?;
    }
    Ok(())
}

/// Parses a duration string into milliseconds.
fn parse_ttl(lit: &LitStr) -> Result<u64, Error> {
    let duration = humantime::parse_duration(&lit.value()).map_err(|error| {
        Error::new(
            lit.span(),
            format!(
                "invalid ttl {:?}: {error}\nhelp: write a duration such as \"90s\", \"5m\", \"1h 30m\" or an integer of seconds",
                lit.value()
            ),
        )
    })?;
    Ok(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

fn check_backend(lit: &LitStr) -> Result<(), Error> {
    let name = lit.value();
    let (kind, instance) = match name.split_once('.') {
        Some((kind, instance)) => (kind, Some(instance)),
        None => (name.as_str(), None),
    };
    if !BACKEND_KINDS.contains(&kind) {
        let hint = match closest(kind, BACKEND_KINDS.iter().copied()) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("available: {}", list(BACKEND_KINDS)),
        };
        return Err(Error::new(
            lit.span(),
            format!("unknown backend `{kind}`\nhelp: {hint} (a named instance is written `<kind>.<name>`)"),
        ));
    }
    if let Some(instance) = instance {
        if instance.is_empty()
            || !instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(Error::new(
                lit.span(),
                format!("invalid backend instance name `{instance}`\nhelp: use letters, digits, `_` and `-`, as in `{kind}.sessions`"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Folds errors into one, or `Ok` if there are none.
pub(crate) fn combine(errors: Vec<Error>) -> Result<(), Error> {
    let mut errors = errors.into_iter();
    let Some(mut combined) = errors.next() else {
        return Ok(());
    };
    for error in errors {
        combined.combine(error);
    }
    Err(combined)
}
