//! Key templates: `user:<id>`, `org:<self.org>:q:<filter:hash>`. One parser for `#[cached]`
//! and `#[invalidates]`.

use syn::{Error, LitStr};

/// A parsed template: literal text and placeholders, in order.
pub(crate) struct Template {
    /// The template as written, where errors about it and the code built from it point.
    pub(crate) lit: LitStr,
    pub(crate) segments: Vec<Segment>,
}

impl Template {
    /// The literal text with each placeholder written `<>` (`<#>` if hashed: a hash never
    /// renders as a plain value does): two templates render the same keys exactly when their
    /// families are equal (the runtime's audit compares them so).
    pub(crate) fn family(&self) -> String {
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Lit(text) => text.as_str(),
                Segment::Placeholder(placeholder) if placeholder.hashed => "<#>",
                Segment::Placeholder(_) => "<>",
            })
            .collect()
    }
}

pub(crate) enum Segment {
    Lit(String),
    Placeholder(Placeholder),
}

pub(crate) struct Placeholder {
    /// `id`, `self`, or the first name of a field path.
    pub(crate) root: String,
    /// Fields after the root: `user.address.city` has `["address", "city"]`.
    pub(crate) fields: Vec<String>,
    /// `<name:hash>`: keyed by a hash of the serialised value.
    pub(crate) hashed: bool,
    /// The placeholder as written, for messages.
    pub(crate) text: String,
}

impl Template {
    /// Parses `lit`; errors point at the literal and quote the offending part.
    pub(crate) fn parse(lit: LitStr) -> Result<Template, Error> {
        let text = lit.value();
        let fail = |message: String| Err(Error::new(lit.span(), message));
        // Literal text cannot hold braces and every placeholder renders as `<...>`, so the empty
        // template is the only one whose key, the Redis Cluster hash tag, is empty.
        if text.is_empty() {
            return fail(
                "empty key template: every call would share one key, and on Redis Cluster its \
                 hash tag would be empty (`{}`)\n\
                 help: write literal text and placeholders, as in \"user:<id>\""
                    .to_owned(),
            );
        }
        let mut segments = Vec::new();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let next = rest.find(['<', '>', '{', '}']).unwrap_or(rest.len());
            if next > 0 {
                segments.push(Segment::Lit(rest[..next].to_owned()));
            }
            rest = &rest[next..];
            match rest.chars().next() {
                None => break,
                Some('>') => {
                    return fail(format!(
                        "unmatched `>` in key template {text:?}\n\
                         help: placeholders are written `<name>`"
                    ))
                }
                Some(brace @ ('{' | '}')) => {
                    return fail(format!(
                        "`{brace}` is not allowed in key template {text:?}\n\
                         help: braces are reserved for Redis Cluster hash tags, which cachette adds itself"
                    ))
                }
                _ => {}
            }
            let Some(close) = rest.find('>') else {
                return fail(format!(
                    "unclosed `<` in key template {text:?}\nhelp: close the placeholder with `>`"
                ));
            };
            let inner = &rest[1..close];
            if inner.contains('<') {
                return fail(format!(
                    "unclosed `<` in key template {text:?}\nhelp: close the placeholder with `>`"
                ));
            }
            segments.push(Segment::Placeholder(parse_placeholder(inner, &text, &lit)?));
            rest = &rest[close + 1..];
        }
        Ok(Template { lit, segments })
    }

    pub(crate) fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Placeholder(p) => Some(p),
            Segment::Lit(_) => None,
        })
    }
}

fn parse_placeholder(inner: &str, text: &str, lit: &LitStr) -> Result<Placeholder, Error> {
    let fail = |message: String| Err(Error::new(lit.span(), message));
    if inner.trim().is_empty() {
        return fail(format!(
            "empty placeholder `<>` in key template {text:?}\n\
             help: name a parameter, as in `<id>`"
        ));
    }
    let (path, hashed) = match inner.split_once(':') {
        None => (inner, false),
        Some((path, "hash")) => (path, true),
        Some((_, modifier)) => {
            return fail(format!(
                "unknown modifier `:{modifier}` in placeholder `<{inner}>`\n\
                 help: the only modifier is `:hash`, as in `<{}:hash>`",
                inner.split(':').next().unwrap_or_default()
            ))
        }
    };
    let mut names = path.split('.').map(str::trim);
    let root = names.next().unwrap_or_default().to_owned();
    let fields: Vec<String> = names.map(str::to_owned).collect();
    for name in std::iter::once(root.as_str()).chain(fields.iter().map(String::as_str)) {
        if !is_ident_or_index(name) {
            return fail(format!(
                "`{name}` in placeholder `<{inner}>` is not a parameter or field name\n\
                 help: placeholders are `<param>`, `<param.field>` or `<param:hash>`"
            ));
        }
    }
    Ok(Placeholder {
        root,
        fields,
        hashed,
        text: format!("<{inner}>"),
    })
}

fn is_ident_or_index(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_digit() => name.chars().all(|c| c.is_ascii_digit()),
        Some(c) if c == '_' || c.is_alphabetic() => chars.all(|c| c == '_' || c.is_alphanumeric()),
        _ => false,
    }
}
