//! The attributes' arguments, parsed into typed values. Parsing never stops at a bad option: each
//! problem is recorded and the next option parsed, so the user sees all of them at once. Rules
//! that relate two options, or an option and the function, are in `validate.rs`.

use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::parse::{ParseStream, Parser};
use syn::{Error, Ident, LitInt, LitStr, Path, Token};

use crate::suggest::closest;
use crate::template::Template;

const CACHED_OPTIONS: &[&str] = &[
    "ttl",
    "key",
    "backend",
    "cache_none",
    "version",
    "crate",
    "skip",
    "returns",
    "tags",
    "stale",
    "throttle",
    "hard_timeout",
    "jitter",
    "l1_ttl",
    "refresh",
    "timeout",
];

/// `#[cached(...)]`, as written: an option left out is `None` (its default is chosen in
/// `validate.rs`).
#[derive(Default)]
pub(crate) struct CachedArgs {
    /// In milliseconds; never zero.
    pub(crate) ttl_millis: Option<u64>,
    /// `ttl` was written, perhaps misspelt or with a bad value that is already reported: the
    /// missing-`ttl` error would only repeat that report.
    pub(crate) ttl_written: bool,
    pub(crate) key: Option<Template>,
    pub(crate) backend: Option<BackendName>,
    pub(crate) cache_none: Option<Span>,
    pub(crate) version: Option<u32>,
    pub(crate) crate_path: Option<Path>,
    pub(crate) skip: Option<Vec<Ident>>,
    pub(crate) returns: Option<Returns>,
    /// `tags("products", "category:<category>")`.
    pub(crate) tags: Option<Tags>,
    /// `stale = "10m"`: the fail-safe window after the ttl.
    pub(crate) stale: Option<Timed>,
    /// `throttle = "30s"`: how long a stale value served after a failed load counts as fresh.
    pub(crate) throttle: Option<Timed>,
    /// `hard_timeout = "2s"`: with a stale value at hand, how long a load may run.
    pub(crate) hard_timeout: Option<Timed>,
    /// `jitter = 0.1`: in thousandths, with where it was written.
    pub(crate) jitter: Option<(u16, Span)>,
    /// `l1_ttl = "10s"`: how long a tiered process may serve its L1 copy.
    pub(crate) l1_ttl: Option<Timed>,
    /// `refresh = "50s"`: an entry this old is refreshed in the background by a hit.
    pub(crate) refresh: Option<Timed>,
    /// `timeout = "300ms"` (soft): with a stale value at hand, how long a caller waits.
    pub(crate) timeout: Option<Timed>,
}

/// A duration option's value, in milliseconds (never zero), and where it was written.
#[derive(Clone, Copy)]
pub(crate) struct Timed {
    pub(crate) millis: u64,
    pub(crate) span: Span,
}

/// `tags(...)`: tag templates, and where the option was written.
pub(crate) struct Tags {
    pub(crate) templates: Vec<Template>,
    pub(crate) span: Span,
}

impl Tags {
    /// Parses the parenthesised list after `tags`; the templates' problems go to `errors`.
    fn parse(input: ParseStream, span: Span, errors: &mut Vec<Error>) -> syn::Result<Tags> {
        let content;
        syn::parenthesized!(content in input);
        let lits = content.parse_terminated(|input| input.parse::<LitStr>(), Token![,])?;
        if lits.is_empty() {
            errors.push(Error::new(
                span,
                "`tags()` needs at least one tag template\nhelp: write `tags(\"products\", \"category:<category>\")`",
            ));
        }
        let mut templates = Vec::new();
        for lit in lits {
            match Template::parse(lit) {
                Ok(template) => templates.push(template),
                Err(error) => errors.push(error),
            }
        }
        Ok(Tags { templates, span })
    }
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
    pub(crate) templates: Vec<Template>,
    pub(crate) tags: Option<Tags>,
    pub(crate) crate_path: Option<Path>,
}

/// `backend = "..."`: a kind, and the instance's name as written (`memory.sessions`), which the
/// runtime looks up in its registry.
pub(crate) struct BackendName {
    pub(crate) kind: BackendKind,
    pub(crate) name: String,
    pub(crate) span: Span,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum BackendKind {
    Memory,
    Redis,
    Tiered,
}

impl BackendKind {
    const ALL: [(&'static str, BackendKind); 3] = [
        ("memory", BackendKind::Memory),
        ("redis", BackendKind::Redis),
        ("tiered", BackendKind::Tiered),
    ];

    /// A remote backend does network I/O on every call.
    pub(crate) fn is_remote(self) -> bool {
        self != BackendKind::Memory
    }
}

impl BackendName {
    /// `<kind>` or `<kind>.<instance>`.
    fn parse(lit: &LitStr) -> Result<BackendName, Error> {
        let name = lit.value();
        let (kind, instance) = match name.split_once('.') {
            Some((kind, instance)) => (kind, Some(instance)),
            None => (name.as_str(), None),
        };
        if name == "default" {
            return Err(Error::new(
                lit.span(),
                "`default` is not a backend name: a site without `backend` follows the configured default\n\
                 help: remove `backend = \"default\"`",
            ));
        }
        let kinds = BackendKind::ALL.map(|(kind, _)| kind);
        let Some(&(_, parsed)) = BackendKind::ALL.iter().find(|(known, _)| *known == kind) else {
            let hint = match closest(kind, kinds) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("available: {}", list(&kinds)),
            };
            return Err(Error::new(
                lit.span(),
                format!("unknown backend `{kind}`\nhelp: {hint} (a named instance is written `<kind>.<name>`)"),
            ));
        };
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
        Ok(BackendName {
            kind: parsed,
            name,
            span: lit.span(),
        })
    }
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

/// Records a parsed value once, or its error.
fn set_parsed<T>(
    slot: &mut Option<T>,
    parsed: Result<T, Error>,
    meta: &ParseNestedMeta,
    errors: &mut Vec<Error>,
) {
    match parsed {
        Ok(value) => set_once(slot, value, meta, errors),
        Err(error) => errors.push(error),
    }
}

impl CachedArgs {
    /// Parses every option it can; the problems go to `errors`. A syntax error ends the parse
    /// (what follows it cannot be read), leaving the options before it.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Vec<Error>) -> CachedArgs {
        let mut args = CachedArgs::default();
        let parser = syn::meta::parser(|meta| args.parse_option(&meta, errors));
        if let Err(error) = parser.parse2(tokens) {
            errors.push(error);
            // The options after a syntax error were never read: `ttl` may be among them.
            args.ttl_written = true;
        }
        args
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
                self.ttl_written = true;
                let ttl = if meta.input.peek2(LitInt) {
                    literal::<LitInt>(meta, "a duration", errors)?.map(|lit| ttl_from_secs(&lit))
                } else {
                    literal::<LitStr>(meta, "a duration", errors)?.map(|lit| ttl_from_str(&lit))
                };
                if let Some(ttl) = ttl {
                    set_parsed(&mut self.ttl_millis, ttl, meta, errors);
                }
            }
            // stale = "10m" | throttle = "30s" | hard_timeout = "2s" | l1_ttl = "10s" |
            // refresh = "50s" | timeout = "300ms" (or seconds)
            "stale" | "throttle" | "hard_timeout" | "l1_ttl" | "refresh" | "timeout" => {
                let parsed = if meta.input.peek2(LitInt) {
                    literal::<LitInt>(meta, "a duration", errors)?
                        .map(|lit| duration_from_secs(&lit, &name))
                } else {
                    literal::<LitStr>(meta, "a duration", errors)?
                        .map(|lit| duration_from_str(&lit, &name))
                };
                let slot = match name.as_str() {
                    "stale" => &mut self.stale,
                    "throttle" => &mut self.throttle,
                    "hard_timeout" => &mut self.hard_timeout,
                    "refresh" => &mut self.refresh,
                    "timeout" => &mut self.timeout,
                    _ => &mut self.l1_ttl,
                };
                if let Some(parsed) = parsed {
                    set_parsed(slot, parsed, meta, errors);
                }
            }
            // jitter = 0.1
            "jitter" => {
                if let Some(lit) = literal::<syn::LitFloat>(meta, "a fraction", errors)? {
                    set_parsed(&mut self.jitter, jitter(&lit), meta, errors);
                }
            }
            // key = "user:<id>"
            "key" => {
                if let Some(lit) = literal::<LitStr>(meta, "a string", errors)? {
                    set_parsed(&mut self.key, Template::parse(lit), meta, errors);
                }
            }
            // backend = "memory" | "memory.sessions"
            "backend" => {
                if let Some(lit) = literal::<LitStr>(meta, "a string", errors)? {
                    set_parsed(&mut self.backend, BackendName::parse(&lit), meta, errors);
                }
            }
            // cache_none
            "cache_none" => {
                if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                    errors.push(meta.error("`cache_none` takes no value: write `cache_none`"));
                    skip_value(meta)?;
                }
                let span = meta
                    .path
                    .get_ident()
                    .map_or_else(Span::call_site, Ident::span);
                set_once(&mut self.cache_none, span, meta, errors);
            }
            // version = 2
            "version" => {
                if let Some(lit) = literal::<LitInt>(meta, "an integer", errors)? {
                    set_parsed(&mut self.version, lit.base10_parse::<u32>(), meta, errors);
                }
            }
            // crate = "cachette"
            "crate" => {
                if let Some(lit) = literal::<LitStr>(meta, "a string", errors)? {
                    set_parsed(&mut self.crate_path, parse_crate_path(&lit), meta, errors);
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
                set_once(&mut self.skip, names, meta, errors);
            }
            // tags("products", "category:<category>")
            "tags" => {
                let span = meta
                    .path
                    .get_ident()
                    .map_or_else(Span::call_site, Ident::span);
                let tags = Tags::parse(meta.input, span, errors)?;
                set_once(&mut self.tags, tags, meta, errors);
            }
            // returns = "result" | "option" | "value"
            "returns" => {
                let Some(lit) = literal::<LitStr>(meta, "a string", errors)? else {
                    return Ok(());
                };
                let returns = match lit.value().as_str() {
                    "result" => Ok(Returns::Result),
                    "option" => Ok(Returns::Option),
                    "value" => Ok(Returns::Value),
                    _ => Err(Error::new(
                        lit.span(),
                        "`returns` is one of \"result\", \"option\" or \"value\"",
                    )),
                };
                set_parsed(&mut self.returns, returns, meta, errors);
            }
            _ => {
                let near = closest(&name, CACHED_OPTIONS.iter().copied());
                // A misspelt `ttl` is reported here, with the fix; "needs a `ttl`" would repeat it.
                self.ttl_written |= near == Some("ttl");
                let hint = match near {
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
    /// Parses the templates and `crate = "..."`; the problems go to `errors`.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Vec<Error>) -> InvalidatesArgs {
        let mut templates = Vec::new();
        let mut written = 0;
        let mut crate_path = None;
        let mut tags: Option<Tags> = None;
        let parser = |input: ParseStream| {
            while !input.is_empty() {
                let is_tags = input
                    .fork()
                    .parse::<Ident>()
                    .is_ok_and(|ident| ident == "tags");
                if is_tags {
                    let ident: Ident = input.parse()?;
                    let parsed = Tags::parse(input, ident.span(), errors)?;
                    if tags.is_some() {
                        errors.push(Error::new(ident.span(), "duplicate option `tags`"));
                    } else {
                        written += parsed.templates.len().max(1);
                        tags = Some(parsed);
                    }
                } else if input.peek(LitStr) {
                    written += 1;
                    match Template::parse(input.parse::<LitStr>()?) {
                        Ok(template) => templates.push(template),
                        Err(error) => errors.push(error),
                    }
                } else if input.peek(Token![crate]) {
                    input.parse::<Token![crate]>()?;
                    input.parse::<Token![=]>()?;
                    match parse_crate_path(&input.parse()?) {
                        Ok(path) => crate_path = Some(path),
                        Err(error) => errors.push(error),
                    }
                } else {
                    // Recorded, and the templates after it are still checked.
                    let expr: syn::Expr = input.parse()?;
                    errors.push(Error::new_spanned(
                        expr,
                        "expected a key template string, as in `#[invalidates(\"user:<id>\")]`",
                    ));
                    written += 1;
                }
                if !input.is_empty() {
                    input.parse::<Token![,]>()?;
                }
            }
            Ok(())
        };
        let complete = parser.parse2(tokens).map_err(|error| errors.push(error));
        if written == 0 && complete.is_ok() {
            errors.push(Error::new(
                Span::call_site(),
                "`#[invalidates]` needs at least one key template or `tags(...)`\nhelp: write `#[invalidates(\"user:<id>\")]` or `#[invalidates(tags(\"users\"))]`",
            ));
        }
        InvalidatesArgs {
            templates,
            tags,
            crate_path,
        }
    }
}

/// The option's value as a literal of kind `T`. A value of another kind is recorded (naming the
/// option and what it takes) and skipped, so that the options after it are still checked; only
/// a value that is not an expression at all ends the parse.
fn literal<T: syn::parse::Parse>(
    meta: &ParseNestedMeta,
    takes: &str,
    errors: &mut Vec<Error>,
) -> syn::Result<Option<T>> {
    let value = meta.value()?;
    if let Ok(literal) = value.fork().parse::<T>() {
        value.parse::<T>()?;
        return Ok(Some(literal));
    }
    let expr: syn::Expr = value.parse()?;
    let name = meta
        .path
        .get_ident()
        .map(Ident::to_string)
        .unwrap_or_default();
    let example = match takes {
        "an integer" => format!("`{name} = 2`"),
        "a duration" => format!("`{name} = \"60s\"` or `{name} = 60`"),
        "a fraction" => format!("`{name} = 0.1` (a share of the ttl, below 1)"),
        _ => format!("`{name} = \"...\"`"),
    };
    errors.push(Error::new_spanned(
        expr,
        format!("`{name}` takes {takes}\nhelp: write {example}"),
    ));
    Ok(None)
}

fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        meta.input.parse::<proc_macro2::Group>()?;
    }
    Ok(())
}

/// `ttl = 90`: seconds.
fn ttl_from_secs(lit: &LitInt) -> Result<u64, Error> {
    let secs = lit.base10_parse::<u64>()?;
    nonzero_ttl(secs.saturating_mul(1000), lit.span())
}

/// `ttl = "90s"`, `"1h 30m"`: a duration.
fn ttl_from_str(lit: &LitStr) -> Result<u64, Error> {
    let duration = humantime::parse_duration(&lit.value()).map_err(|error| {
        Error::new(
            lit.span(),
            format!(
                "invalid ttl {:?}: {error}\nhelp: write a duration such as \"90s\", \"5m\", \"1h 30m\" or an integer of seconds",
                lit.value()
            ),
        )
    })?;
    nonzero_ttl(
        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        lit.span(),
    )
}

/// `stale = 600`: seconds.
fn duration_from_secs(lit: &LitInt, option: &str) -> Result<Timed, Error> {
    let secs = lit.base10_parse::<u64>()?;
    nonzero(secs.saturating_mul(1000), lit.span(), option)
}

/// `stale = "10m"`: a duration.
fn duration_from_str(lit: &LitStr, option: &str) -> Result<Timed, Error> {
    let duration = humantime::parse_duration(&lit.value()).map_err(|error| {
        Error::new(
            lit.span(),
            format!(
                "invalid {option} {:?}: {error}\nhelp: write a duration such as \"500ms\", \"30s\" or \"10m\"",
                lit.value()
            ),
        )
    })?;
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    nonzero(millis, lit.span(), option)
}

fn nonzero(millis: u64, span: Span, option: &str) -> Result<Timed, Error> {
    if millis == 0 {
        return Err(Error::new(
            span,
            format!(
                "`{option}` must be greater than zero\nhelp: to turn it off, remove the option"
            ),
        ));
    }
    Ok(Timed { millis, span })
}

/// `jitter = 0.1`: a share of the ttl, above 0 and below 1, in thousandths.
fn jitter(lit: &syn::LitFloat) -> Result<(u16, Span), Error> {
    let share = lit.base10_parse::<f64>()?;
    if !(share > 0.0 && share < 1.0) {
        return Err(Error::new(
            lit.span(),
            "`jitter` is a share of the ttl, above 0 and below 1\nhelp: write `jitter = 0.1` to shorten each entry's ttl by up to 10%",
        ));
    }
    let permille = (share * 1000.0).round().clamp(1.0, 999.0) as u16;
    Ok((permille, lit.span()))
}

fn nonzero_ttl(millis: u64, span: Span) -> Result<u64, Error> {
    if millis == 0 {
        return Err(Error::new(
            span,
            "ttl must be greater than zero\nhelp: to turn caching off, remove the attribute",
        ));
    }
    Ok(millis)
}

fn parse_crate_path(lit: &LitStr) -> Result<Path, Error> {
    lit.parse::<Path>().map_err(|_| {
        Error::new(
            lit.span(),
            "`crate` must be a path, as in `crate = \"cachette\"`",
        )
    })
}

pub(crate) fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
