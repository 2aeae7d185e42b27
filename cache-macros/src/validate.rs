//! The rules that relate two options, or an option and the function, and the defaults of the
//! options left out. What one option means on its own is checked while parsing it (`args.rs`,
//! `template.rs`); what the function must be, while reading it (`signature.rs`). The result is
//! a description the expansion only has to write out.

use proc_macro2::Span;
use quote::ToTokens;
use syn::{Error, Ident, ItemFn, Path, Type};

use crate::args::{BackendKind, BackendName, CachedArgs, InvalidatesArgs, Returns};
use crate::signature::Signature;
use crate::suggest::closest;
use crate::template::Template;

/// A valid `#[cached]`.
pub(crate) struct Cached<'a> {
    pub(crate) function: &'a ItemFn,
    pub(crate) krate: Path,
    pub(crate) ttl_millis: u64,
    pub(crate) backend: SiteBackend,
    pub(crate) version: u32,
    pub(crate) key: Key,
    pub(crate) shape: Shape,
    pub(crate) entry: Entry,
    pub(crate) return_type: &'a Type,
    /// Tag templates (empty: an untagged site, whose expansion is unchanged).
    pub(crate) tags: Vec<Template>,
    /// The end-of-life options, if any was written (`None`: the expansion is unchanged).
    pub(crate) freshness: Option<Freshness>,
    /// `refresh` or `timeout`: a load may outlive its caller, so the body is moved into a task
    /// (the runtime's `*_detached` entry points).
    pub(crate) detached: bool,
    /// `stale` on a site that may be in process: its memory entries carry their times (the
    /// runtime's `*_kept` entry points).
    pub(crate) kept: bool,
}

/// `stale`, `throttle`, `hard_timeout`, `jitter`, `l1_ttl`, checked; milliseconds, 0 for off.
pub(crate) struct Freshness {
    pub(crate) stale_millis: u64,
    pub(crate) throttle_millis: u64,
    pub(crate) hard_timeout_millis: u64,
    pub(crate) jitter_permille: u16,
    pub(crate) l1_ttl_millis: u64,
    pub(crate) refresh_millis: u64,
    pub(crate) soft_timeout_millis: u64,
}

/// How long a stale value served after a failed load counts as fresh when `throttle` is not
/// written (FusionCache's default), or the whole window if that is shorter.
const DEFAULT_THROTTLE_MILLIS: u64 = 30_000;

/// Where a site stores its entries.
pub(crate) enum SiteBackend {
    /// `backend = "..."`.
    Named(BackendName),
    /// No `backend`: the default the application configures (`memory` unless it says
    /// otherwise), which may be remote; a synchronous site uses it only if it is in-process.
    Default,
}

/// Where a cached call's key comes from.
pub(crate) enum Key {
    /// `key = "..."`.
    Template(Template),
    /// `module::function(<a>,<b>)` over the parameters not skipped; a method's key also holds
    /// its receiver's type, since two types in one module may have methods of one name.
    Default {
        params: Vec<KeyParam>,
        with_self_type: bool,
    },
}

/// A parameter in the default key.
pub(crate) struct KeyParam {
    pub(crate) name: Ident,
    /// The whole parameter (`db: &Db`): a type that cannot be a key part is reported there.
    pub(crate) span: Span,
}

/// Which part of the return value is cached (the runtime's shape types).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Shape {
    OkOnly,
    SomeOnly,
    Whole,
}

/// The runtime entry point the expansion calls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Entry {
    Async,
    Sync,
    Remote,
    /// An async site on the configured default: it may be remote, so its value must be too.
    Default,
}

/// A valid `#[invalidates]`.
pub(crate) struct Invalidates<'a> {
    pub(crate) function: &'a ItemFn,
    pub(crate) krate: Path,
    pub(crate) templates: Vec<Template>,
    /// Tags to invalidate (empty: keys only).
    pub(crate) tags: Vec<Template>,
    /// Only an `Ok` invalidates a function that returns `Result`; any return does otherwise.
    pub(crate) only_if_ok: bool,
}

/// Checks a `#[cached]` and fills in its defaults. `errors` holds what parsing found; the result
/// reports those and this phase's together.
pub(crate) fn cached<'a>(
    args: CachedArgs,
    signature: &Signature<'a>,
    mut errors: Vec<Error>,
) -> Result<Cached<'a>, Error> {
    if args.ttl_millis.is_none() && !args.ttl_written {
        errors.push(missing_ttl());
    }
    let returns = args.returns.unwrap_or(signature.detected_returns);
    if let Some(span) = args.cache_none {
        if returns != Returns::Option {
            errors.push(Error::new(
                span,
                "`cache_none` only applies to functions that return `Option<_>`\n\
                 help: if the return type is an alias of `Option`, add `returns = \"option\"`",
            ));
        }
    }
    // `None`: no `backend`, the configured default. A synchronous site follows it only when it
    // is in-process (the runtime gives it `memory` otherwise), so only a named one is checked.
    let remote = args
        .backend
        .as_ref()
        .map(|backend| backend.kind.is_remote());
    let sync_remote = args.backend.as_ref().filter(|_| !signature.is_async);
    if let Some(backend) = sync_remote.filter(|backend| backend.kind.is_remote()) {
        errors.push(Error::new(
            backend.span,
            "a remote backend does network I/O, so it needs an `async fn`\n\
             help: make the function `async`, or use `backend = \"memory\"`",
        ));
    }
    if signature.output.is_none() {
        errors.push(returns_nothing(signature));
    }
    if let (Some(_), Some(key)) = (&args.skip, &args.key) {
        errors.push(Error::new(
            key.lit.span(),
            "`skip` has no effect with an explicit `key`: the template names the parameters it uses",
        ));
    }
    for name in args.skip.iter().flatten() {
        if signature.param(&name.to_string()).is_none() {
            let name_text = name.to_string();
            errors.push(unknown_param(name.span(), &name_text, signature, "skip"));
        }
    }
    let freshness = checked_freshness(&args, signature, &mut errors);
    let detached = args.refresh.is_some() || args.timeout.is_some();
    let may_be_in_process = !args
        .backend
        .as_ref()
        .is_some_and(|backend| backend.kind.is_remote());
    let kept = args.stale.is_some() && may_be_in_process;
    let tags = checked_tags(args.tags, signature, "cached", &mut errors);
    let key = match args.key {
        Some(template) => {
            check_placeholders(&template, signature, &mut errors);
            Key::Template(template)
        }
        None => default_key(
            args.skip.as_deref().unwrap_or_default(),
            signature,
            &mut errors,
        ),
    };
    if let Some(error) = combine(errors) {
        return Err(error);
    }
    // Both are reported above when missing; these only name the value each error promised.
    let Some(ttl_millis) = args.ttl_millis else {
        return Err(missing_ttl());
    };
    let Some(return_type) = signature.output else {
        return Err(returns_nothing(signature));
    };
    Ok(Cached {
        function: signature.function,
        krate: crate_path(args.crate_path),
        ttl_millis,
        entry: match (remote, signature.is_async) {
            (_, false) => Entry::Sync,
            (Some(true), true) => Entry::Remote,
            (Some(false), true) => Entry::Async,
            (None, true) => Entry::Default,
        },
        backend: args
            .backend
            .map_or(SiteBackend::Default, SiteBackend::Named),
        version: args.version.unwrap_or(0),
        key,
        shape: match (returns, args.cache_none.is_some()) {
            (Returns::Result, _) => Shape::OkOnly,
            (Returns::Option, false) => Shape::SomeOnly,
            (Returns::Option, true) | (Returns::Value, _) => Shape::Whole,
        },
        return_type,
        tags,
        freshness,
        detached,
        kept,
    })
}

/// The end-of-life options: each needs what it works with, and states what it cannot do yet.
fn checked_freshness(
    args: &CachedArgs,
    signature: &Signature,
    errors: &mut Vec<Error>,
) -> Option<Freshness> {
    let written = args.stale.is_some()
        || args.throttle.is_some()
        || args.hard_timeout.is_some()
        || args.jitter.is_some()
        || args.l1_ttl.is_some()
        || args.refresh.is_some()
        || args.timeout.is_some();
    if !written {
        return None;
    }
    let kind = args.backend.as_ref().map(|backend| backend.kind);
    let remote = matches!(kind, Some(BackendKind::Redis | BackendKind::Tiered));
    if let Some(stale) = args.stale {
        let problem = if !signature.is_async {
            Some("fail-safe (`stale`) needs an `async fn`\nhelp: make the function `async`")
        } else if args.tags.is_some() {
            Some("fail-safe (`stale`) is not supported with `tags` yet\nhelp: remove one of them")
        } else if !remote && args.refresh.is_some() {
            Some(
                "fail-safe (`stale`) with `refresh` is built for `backend = \"redis\"` and \
                 `\"tiered\"` only: an in-process site keeps one or the other (and a site \
                 without `backend` may be in process)\nhelp: name a remote backend, or remove \
                 one of them",
            )
        } else {
            None
        };
        if let Some(problem) = problem {
            errors.push(Error::new(stale.span, problem));
        }
    }
    if let Some(timeout) = args.timeout.filter(|_| !remote) {
        errors.push(Error::new(
            timeout.span,
            "the soft `timeout` is built for `backend = \"redis\"` and `\"tiered\"` only (a \
             site without `backend` may be in process)\nhelp: name a remote backend, or use \
             `hard_timeout`",
        ));
    }
    for (option, timed) in [
        ("throttle", args.throttle),
        ("hard_timeout", args.hard_timeout),
        ("timeout", args.timeout),
    ] {
        if let (Some(timed), None) = (timed, args.stale) {
            errors.push(Error::new(
                timed.span,
                format!(
                    "`{option}` is part of fail-safe, which `stale` turns on\nhelp: add \
                     `stale = \"10m\"`: how long past its ttl an entry may be served when a load \
                     fails"
                ),
            ));
        }
    }
    if let Some(l1_ttl) = args.l1_ttl {
        if kind != Some(BackendKind::Tiered) {
            errors.push(Error::new(
                l1_ttl.span,
                "`l1_ttl` bounds a tiered process's L1 copy; this site has no L1\nhelp: use it with `backend = \"tiered\"`",
            ));
        }
        if args.ttl_millis.is_some_and(|ttl| l1_ttl.millis >= ttl) {
            errors.push(Error::new(
                l1_ttl.span,
                "`l1_ttl` must be shorter than `ttl`: an L1 copy never outlives its entry\nhelp: remove it, or make it shorter",
            ));
        }
    }
    if let (Some(throttle), Some(stale)) = (args.throttle, args.stale) {
        if throttle.millis > stale.millis {
            errors.push(Error::new(
                throttle.span,
                "`throttle` is longer than `stale`: a stale value is never served past its \
                 window, so the throttle would end with it\nhelp: make `throttle` at most \
                 `stale`, or the window longer",
            ));
        }
    }
    if let (Some(timeout), Some(hard)) = (args.timeout, args.hard_timeout) {
        if timeout.millis >= hard.millis {
            errors.push(Error::new(
                timeout.span,
                "the soft `timeout` must be shorter than `hard_timeout`: past it a caller gets \
                 the stale value while the load goes on, until `hard_timeout` ends it\nhelp: \
                 make `timeout` shorter, or remove `hard_timeout`",
            ));
        }
    }
    if let Some(refresh) = args.refresh {
        check_refresh(args, signature, refresh, errors);
    }
    let option = match (args.refresh, args.timeout) {
        (Some(_), _) => Some("refresh"),
        (None, Some(_)) => Some("timeout"),
        (None, None) => None,
    };
    if let Some(option) = option {
        check_owned_params(signature, option, errors);
    }
    let stale_millis = args.stale.map_or(0, |stale| stale.millis);
    Some(Freshness {
        stale_millis,
        throttle_millis: args
            .throttle
            .map_or(DEFAULT_THROTTLE_MILLIS.min(stale_millis), |t| t.millis),
        hard_timeout_millis: args.hard_timeout.map_or(0, |t| t.millis),
        jitter_permille: args.jitter.map_or(0, |(permille, _)| permille),
        l1_ttl_millis: args.l1_ttl.map_or(0, |t| t.millis),
        refresh_millis: args.refresh.map_or(0, |t| t.millis),
        soft_timeout_millis: args.timeout.map_or(0, |t| t.millis),
    })
}

/// `refresh`: on an `async fn` (the refresh runs on the caller's runtime), shorter than the
/// ttl, and not yet with `tags`.
fn check_refresh(
    args: &CachedArgs,
    signature: &Signature,
    refresh: crate::args::Timed,
    errors: &mut Vec<Error>,
) {
    let problem = if !signature.is_async {
        Some(
            "refresh-ahead (`refresh`) runs the load in a background task, which needs an \
             `async fn`\nhelp: make the function `async`, or remove `refresh`"
                .to_owned(),
        )
    } else if args.ttl_millis.is_some_and(|ttl| refresh.millis >= ttl) {
        Some(
            "`refresh` must be shorter than `ttl`: it is the age from which a hit refreshes the \
             entry before it expires\nhelp: for `ttl = \"60s\"`, `refresh = \"50s\"` \
             refreshes a hot entry in its last ten seconds"
                .to_owned(),
        )
    } else if args.tags.is_some() {
        Some(
            "refresh-ahead (`refresh`) is not supported with `tags` yet\nhelp: remove one of them"
                .to_owned(),
        )
    } else {
        None
    };
    if let Some(problem) = problem {
        errors.push(Error::new(refresh.span, problem));
    }
}

/// With `refresh` or `timeout` a load may go on after its caller has returned, so the body may
/// not borrow: each parameter that is a reference, or has a lifetime other than `'static`, is
/// reported where it is written.
fn check_owned_params(signature: &Signature, option: &str, errors: &mut Vec<Error>) {
    let generics = &signature.function.sig.generics;
    // Type parameters that may hold a borrow: no `'static` among their bounds.
    let unbounded: Vec<String> = generics
        .type_params()
        .filter(|param| {
            let bounded_inline = has_static(param.bounds.to_token_stream());
            let bounded_where = generics.where_clause.iter().any(|clause| {
                clause.predicates.iter().any(|predicate| match predicate {
                    syn::WherePredicate::Type(typed) => {
                        idents(typed.bounded_ty.to_token_stream()) == [param.ident.to_string()]
                            && has_static(typed.bounds.to_token_stream())
                    }
                    _ => false,
                })
            });
            !bounded_inline && !bounded_where
        })
        .map(|param| param.ident.to_string())
        .collect();
    for input in &signature.function.sig.inputs {
        let (problem, name, help) = match input {
            syn::FnArg::Receiver(receiver) => (
                (receiver.reference.is_some() || borrows(receiver.ty.to_token_stream()))
                    .then(|| "cannot borrow".to_owned()),
                "self".to_owned(),
                "take `self: Arc<Self>`, or move the method to a function of owned handles"
                    .to_owned(),
            ),
            syn::FnArg::Typed(typed) => {
                let tokens = typed.ty.to_token_stream();
                let names = idents(tokens.clone());
                let generic = names.iter().find(|name| unbounded.contains(name));
                let (problem, help) = if borrows(tokens.clone()) {
                    (
                        Some("cannot borrow".to_owned()),
                        "take it owned: an `Arc<_>`, or a handle that is cheap to clone (a \
                         pool, a client), or a `String` for a `&str`"
                            .to_owned(),
                    )
                } else if names.iter().any(|name| name == "impl") && !has_static(tokens) {
                    (
                        Some("cannot take an `impl Trait` that may borrow".to_owned()),
                        "add `+ 'static` to its bounds".to_owned(),
                    )
                } else if let Some(generic) = generic {
                    (
                        Some(format!("cannot take a `{generic}` that may borrow")),
                        format!("bound it: `{generic}: 'static`"),
                    )
                } else {
                    (None, String::new())
                };
                (problem, typed.pat.to_token_stream().to_string(), help)
            }
        };
        if let Some(problem) = problem {
            errors.push(Error::new_spanned(
                input,
                format!(
                    "with `{option}`, a load may go on in the background after the caller has \
                     its answer, so the body {problem} (`{name}`)\nhelp: {help}"
                ),
            ));
        }
    }
}

/// Every identifier in `tokens`, groups included.
fn idents(tokens: proc_macro2::TokenStream) -> Vec<String> {
    tokens
        .into_iter()
        .flat_map(|token| match token {
            proc_macro2::TokenTree::Ident(ident) => vec![ident.to_string()],
            proc_macro2::TokenTree::Group(group) => idents(group.stream()),
            _ => Vec::new(),
        })
        .collect()
}

/// Whether `'static` is written in `tokens`.
fn has_static(tokens: proc_macro2::TokenStream) -> bool {
    let flat: Vec<proc_macro2::TokenTree> = tokens.into_iter().collect();
    flat.windows(2).any(|pair| match pair {
        [proc_macro2::TokenTree::Punct(tick), proc_macro2::TokenTree::Ident(name)] => {
            tick.as_char() == '\'' && name == "static"
        }
        _ => false,
    }) || flat.iter().any(|token| match token {
        proc_macro2::TokenTree::Group(group) => has_static(group.stream()),
        _ => false,
    })
}

/// Whether a type written as `tokens` borrows: a `&` not followed by `'static`, or a lifetime
/// other than `'static`.
fn borrows(tokens: proc_macro2::TokenStream) -> bool {
    use proc_macro2::TokenTree;
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let lifetime_at = |index: usize| match (tokens.get(index), tokens.get(index + 1)) {
        (Some(TokenTree::Punct(tick)), Some(TokenTree::Ident(name))) if tick.as_char() == '\'' => {
            Some(name.to_string())
        }
        _ => None,
    };
    tokens.iter().enumerate().any(|(index, token)| match token {
        TokenTree::Punct(punct) if punct.as_char() == '&' => {
            lifetime_at(index + 1).as_deref() != Some("static")
        }
        TokenTree::Punct(punct) if punct.as_char() == '\'' => {
            lifetime_at(index).as_deref() != Some("static")
        }
        TokenTree::Group(group) => borrows(group.stream()),
        _ => false,
    })
}

/// Tag templates whose placeholders name parameters, on an `async fn` (a tag invalidation
/// reaches Redis, which a synchronous function cannot await).
fn checked_tags(
    tags: Option<crate::args::Tags>,
    signature: &Signature,
    attribute: &str,
    errors: &mut Vec<Error>,
) -> Vec<Template> {
    let Some(tags) = tags else {
        return Vec::new();
    };
    if !signature.is_async {
        errors.push(Error::new(
            tags.span,
            format!(
                "`tags(...)` on `#[{attribute}]` needs an `async fn`\n\
                 help: make the function `async`, or call `cachette::invalidate_tag` from async code"
            ),
        ));
    }
    for template in &tags.templates {
        check_placeholders(template, signature, errors);
    }
    check_listed_once(&tags.templates, "tag", errors);
    tags.templates
}

/// No two templates of one list name one family (the same literal text and number of
/// placeholders): the second would render the same keys, so it is a slip, not a choice.
fn check_listed_once(templates: &[Template], what: &str, errors: &mut Vec<Error>) {
    for (index, template) in templates.iter().enumerate() {
        let family = template.family();
        if let Some(first) = templates[..index].iter().find(|t| t.family() == family) {
            errors.push(Error::new(
                template.lit.span(),
                format!(
                    "this {what} names the same entries as `{}` before it (placeholders are \
                     matched by position, not by name)\nhelp: remove one of them",
                    first.lit.value()
                ),
            ));
        }
    }
}

/// A valid `#[cache_put]`: a write-through site.
pub(crate) struct Put<'a> {
    pub(crate) function: &'a ItemFn,
    pub(crate) krate: Path,
    pub(crate) ttl_millis: u64,
    pub(crate) backend: SiteBackend,
    pub(crate) version: u32,
    pub(crate) key: Template,
    pub(crate) shape: Shape,
    pub(crate) return_type: &'a Type,
}

/// Checks a `#[cache_put]`: the options of `#[cached]` that say where and how long a value is
/// stored, an explicit key (the default key names this function, which no reader shares), and
/// an `async fn` (the value may go to Redis).
pub(crate) fn put<'a>(
    args: CachedArgs,
    signature: &Signature<'a>,
    mut errors: Vec<Error>,
) -> Result<Put<'a>, Error> {
    if args.ttl_millis.is_none() && !args.ttl_written {
        errors.push(Error::new(
            Span::call_site(),
            "`#[cache_put]` needs a `ttl`: how long the stored value lives\nhelp: write the reader's, as in `#[cache_put(key = \"user:<id>\", ttl = \"60s\")]`",
        ));
    }
    if let Some(span) = args.cache_none {
        errors.push(Error::new(span, "`cache_none` does not apply to `#[cache_put]`: it stores what the function returns, classified as the reader's return type is"));
    }
    if let Some(skip) = args.skip.as_ref().and_then(|skip| skip.first()) {
        errors.push(Error::new(
            skip.span(),
            "`skip` does not apply to `#[cache_put]`, which needs an explicit `key`",
        ));
    }
    let freshness = [args.stale, args.throttle, args.hard_timeout, args.l1_ttl]
        .into_iter()
        .flatten()
        .map(|timed| timed.span)
        .chain(args.jitter.map(|(_, span)| span));
    for span in freshness {
        errors.push(Error::new(
            span,
            "`stale`, `throttle`, `hard_timeout`, `jitter` and `l1_ttl` are the reader's: write them on its `#[cached]`",
        ));
    }
    if let Some(tags) = &args.tags {
        errors.push(Error::new(tags.span, "`tags` are not supported on `#[cache_put]`\nhelp: invalidate the tag with `#[invalidates(tags(...))]` instead"));
    }
    if !signature.is_async {
        errors.push(Error::new_spanned(
            signature.function.sig.fn_token,
            "`#[cache_put]` needs an `async fn`: the value may be stored in Redis\nhelp: make the function `async`",
        ));
    }
    if signature.output.is_none() {
        errors.push(Error::new_spanned(
            &signature.function.sig.ident,
            "`#[cache_put]` stores the function's return value, and this one returns nothing",
        ));
    }
    let key = match args.key {
        Some(template) => {
            check_placeholders(&template, signature, &mut errors);
            Some(template)
        }
        None => {
            errors.push(Error::new(
                Span::call_site(),
                "`#[cache_put]` needs the `key` its value is stored under: the reader's template\nhelp: write `#[cache_put(key = \"user:settings:<user_id>\", ttl = \"5m\")]`",
            ));
            None
        }
    };
    if let Some(error) = combine(errors) {
        return Err(error);
    }
    let (Some(ttl_millis), Some(key), Some(return_type)) = (args.ttl_millis, key, signature.output)
    else {
        return Err(Error::new(
            Span::call_site(),
            "`#[cache_put]` is incomplete",
        ));
    };
    Ok(Put {
        function: signature.function,
        krate: crate_path(args.crate_path),
        ttl_millis,
        backend: args
            .backend
            .map_or(SiteBackend::Default, SiteBackend::Named),
        version: args.version.unwrap_or(0),
        key,
        shape: match args.returns.unwrap_or(signature.detected_returns) {
            Returns::Result => Shape::OkOnly,
            Returns::Option => Shape::SomeOnly,
            Returns::Value => Shape::Whole,
        },
        return_type,
    })
}

/// Checks an `#[invalidates]`; see [`cached`].
pub(crate) fn invalidates<'a>(
    args: InvalidatesArgs,
    signature: &Signature<'a>,
    mut errors: Vec<Error>,
) -> Result<Invalidates<'a>, Error> {
    for template in &args.templates {
        check_placeholders(template, signature, &mut errors);
    }
    check_listed_once(&args.templates, "template", &mut errors);
    let tags = checked_tags(args.tags, signature, "invalidates", &mut errors);
    if let Some(error) = combine(errors) {
        return Err(error);
    }
    Ok(Invalidates {
        function: signature.function,
        krate: crate_path(args.crate_path),
        templates: args.templates,
        tags,
        only_if_ok: signature.detected_returns == Returns::Result,
    })
}

/// The path the expansion names the facade by: `crate = "..."`, or `::cachette`.
fn crate_path(stated: Option<Path>) -> Path {
    stated.unwrap_or_else(|| syn::parse_quote!(::cachette))
}

fn missing_ttl() -> Error {
    Error::new(
        Span::call_site(),
        "`#[cached]` needs a `ttl`\nhelp: write `#[cached(ttl = \"60s\")]`",
    )
}

fn returns_nothing(signature: &Signature) -> Error {
    Error::new_spanned(
        &signature.function.sig.ident,
        "`#[cached]` on a function that returns nothing would only skip its side effects",
    )
}

/// Every placeholder names a parameter.
fn check_placeholders(template: &Template, signature: &Signature, errors: &mut Vec<Error>) {
    for placeholder in template.placeholders() {
        if signature.param(&placeholder.root).is_none() {
            errors.push(unknown_param(
                template.lit.span(),
                &placeholder.text,
                signature,
                "template",
            ));
        }
    }
}

fn default_key(skipped: &[Ident], signature: &Signature, errors: &mut Vec<Error>) -> Key {
    if let Some(param) = signature.function.sig.generics.type_params().next() {
        errors.push(Error::new_spanned(
            param,
            format!(
                "a generic function needs an explicit `key`: the default key does not tell `{}` apart\n\
                 help: add `key = \"...\"` with a template that differs for each type",
                param.ident
            ),
        ));
    }
    let mut params = Vec::new();
    for param in &signature.params {
        if param.is_receiver || skipped.contains(&param.name) {
            continue;
        }
        if !param.named {
            errors.push(Error::new_spanned(
                &param.tokens,
                "a destructured parameter cannot be part of the default key\n\
                 help: bind it to a name, or give an explicit `key = \"...\"`",
            ));
            continue;
        }
        params.push(KeyParam {
            name: param.name.clone(),
            span: param.span(),
        });
    }
    Key::Default {
        params,
        with_self_type: signature.has_receiver(),
    }
}

fn unknown_param(span: Span, name: &str, signature: &Signature, what: &str) -> Error {
    let names: Vec<String> = signature
        .params
        .iter()
        .filter(|p| p.named)
        .map(|p| p.name.to_string())
        .collect();
    let bare = name.trim_start_matches('<').trim_end_matches('>');
    let root = bare.split(['.', ':']).next().unwrap_or(bare);
    let mut message = format!(
        "`{name}` in the {what} names no parameter of `{}`",
        signature.function.sig.ident
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

/// Folds errors into one, which reports them all.
pub(crate) fn combine(errors: Vec<Error>) -> Option<Error> {
    errors.into_iter().reduce(|mut combined, error| {
        combined.combine(error);
        combined
    })
}
