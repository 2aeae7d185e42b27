//! The keys of cached responses.
//!
//! Two levels, so that invalidating a route removes every variant of it:
//! - the **route key** `http:GET:/users/<1>`: the method, the route template's literal text and
//!   the path parameters' values (escaped). It names a *generation*, a random number.
//! - the **variant key** `http:GET:/users/<1>|g<8812…>|q<%none>|h:accept-language<en>`: the
//!   route key's parts, the generation, the query and every `Vary` header (plus the user's
//!   identity where the policy keys on it). It names the stored response.
//!
//! Invalidating the route key drops the generation; the next request draws a new one, so every
//! variant under the old one becomes unreachable at once and expires by its TTL.

use http::request::Parts;
use http::{HeaderName, Method};

use crate::http::RouteError;
use crate::key::{CacheKey, KeyBuilder};

/// The key naming a route's generation: `http:<METHOD>:<template with values>`. `HEAD` reads
/// what `GET` stored, so both use `GET`'s key.
///
/// ```
/// use cache_runtime::http::route_key;
/// use http::Method;
///
/// let key = route_key(&Method::GET, "/users/{id}", &[("id", "1:admin")]).unwrap();
/// assert_eq!(key.as_str(), "http:GET:/users/<1:admin>");
/// ```
pub fn route_key(
    method: &Method,
    template: &str,
    params: &[(&str, &str)],
) -> Result<CacheKey, RouteError> {
    route_builder(method, template, |name| {
        params
            .iter()
            .find(|(param, _)| *param == name)
            .map(|(_, value)| *value)
    })
    .map(KeyBuilder::finish)
}

/// Renders the route part of a key into a builder. Literal text comes from the template (the
/// route's author), values from the request, escaped by [`KeyBuilder::arg`].
pub(crate) fn route_builder<'a>(
    method: &Method,
    template: &str,
    param: impl Fn(&str) -> Option<&'a str>,
) -> Result<KeyBuilder, RouteError> {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let unsupported = || RouteError::UnsupportedTemplate {
        template: template.to_owned(),
    };
    if !method.as_str().bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(unsupported());
    }
    let mut key = KeyBuilder::new().lit("http:").lit(method.as_str()).lit(":");
    let mut rest = template;
    while !rest.is_empty() {
        let open = rest.find(['{', '}']).unwrap_or(rest.len());
        let literal = &rest[..open];
        // A literal may not hold key structure; axum's `{{`/`}}` escapes land here too.
        if literal.contains(['<', '>']) {
            return Err(unsupported());
        }
        key = key.lit(literal);
        rest = &rest[open..];
        if rest.is_empty() {
            break;
        }
        if !rest.starts_with('{') || rest.starts_with("{{") {
            return Err(unsupported());
        }
        let close = rest.find('}').ok_or_else(unsupported)?;
        let name = rest[1..close].trim_start_matches('*');
        let value = param(name).ok_or_else(|| RouteError::MissingParam {
            template: template.to_owned(),
            name: name.to_owned(),
        })?;
        key = key.arg(value);
        rest = &rest[close + 1..];
    }
    Ok(key)
}

/// What a request contributes to its variant key besides the route.
pub(crate) struct Variant<'a> {
    pub(crate) generation: u64,
    pub(crate) query: Option<&'a str>,
    pub(crate) vary: &'a [HeaderName],
    pub(crate) identity: Option<&'a str>,
}

/// The key of one stored response: the route, its generation, the query, the `Vary` headers'
/// values and the identity, each in its own labelled slot.
pub(crate) fn variant_key(route: KeyBuilder, parts: &Parts, variant: &Variant<'_>) -> CacheKey {
    let mut key = route
        .lit("|g")
        .arg(&variant.generation)
        .lit("|q")
        .arg(&variant.query);
    for name in variant.vary {
        key = key.lit("|h:").lit(name.as_str());
        let mut values = parts.headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            key = key.arg(&None::<&str>);
        }
        for value in values {
            key = match value.to_str() {
                Ok(text) => key.arg(text),
                // Not text: keyed by the bytes' hash, never lossily (two values must not merge).
                Err(_) => key.hashed(value.as_bytes()),
            };
        }
    }
    if let Some(identity) = variant.identity {
        key = key.lit("|u").arg(identity);
    }
    key.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("valid request").into_parts().0
    }

    #[test]
    fn route_keys_match_what_invalidates_renders() {
        let get = route_key(
            &Method::GET,
            "/users/{id}/posts/{*rest}",
            &[("id", "7"), ("rest", "a/b c")],
        )
        .expect("valid");
        assert_eq!(get.as_str(), "http:GET:/users/<7>/posts/<a/b%20c>");
        let head = route_key(
            &Method::HEAD,
            "/users/{id}/posts/{*rest}",
            &[("id", "7"), ("rest", "a/b c")],
        )
        .expect("valid");
        assert_eq!(head, get, "HEAD reads GET's entries");
        // The same text `#[invalidates("http:GET:/users/<id>")]` renders.
        let by_macro = KeyBuilder::new()
            .lit("http:GET:/users/")
            .arg(&7u64)
            .finish();
        assert_eq!(
            route_key(&Method::GET, "/users/{id}", &[("id", "7")]).expect("valid"),
            by_macro
        );
    }

    #[test]
    fn a_path_value_cannot_forge_another_route() {
        let forged =
            route_key(&Method::GET, "/users/{id}", &[("id", "1>/admin/<2")]).expect("valid");
        let other = route_key(
            &Method::GET,
            "/users/{id}/admin/{x}",
            &[("id", "1"), ("x", "2")],
        )
        .expect("valid");
        assert_ne!(forged, other);
        assert_eq!(forged.as_str(), "http:GET:/users/<1%3E/admin/%3C2>");
    }

    #[test]
    fn bad_templates_and_missing_params_are_errors() {
        assert!(matches!(
            route_key(&Method::GET, "/users/{id}", &[]),
            Err(RouteError::MissingParam { name, .. }) if name == "id"
        ));
        for template in ["/a/{{literal}}", "/a<b>", "/a/{open", "/a}"] {
            assert!(
                matches!(
                    route_key(&Method::GET, template, &[("open", "x")]),
                    Err(RouteError::UnsupportedTemplate { .. })
                ),
                "{template}"
            );
        }
    }

    #[test]
    fn variants_differ_by_query_vary_values_and_identity() {
        let vary = [HeaderName::from_static("accept-language")];
        let key = |uri: &str, headers: &[(&str, &str)], identity: Option<&str>| {
            let parts = parts(uri, headers);
            let route = route_builder(&Method::GET, "/x", |_| None).expect("valid");
            variant_key(
                route,
                &parts,
                &Variant {
                    generation: 5,
                    query: parts.uri.query(),
                    vary: &vary,
                    identity,
                },
            )
        };
        let plain = key("/x", &[], None);
        assert_eq!(
            plain.as_str(),
            "http:GET:/x|g<5>|q<%none>|h:accept-language<%none>"
        );
        let all = [
            plain.clone(),
            key("/x?", &[], None),
            key("/x?a=1", &[], None),
            key("/x", &[("accept-language", "")], None),
            key("/x", &[("accept-language", "en")], None),
            key(
                "/x",
                &[("accept-language", "en"), ("accept-language", "fr")],
                None,
            ),
            key("/x", &[("accept-language", "en,fr")], None),
            key("/x", &[], Some("alice")),
            key("/x", &[], Some("bob")),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            key("/x", &[("other", "y")], None),
            plain,
            "unlisted headers do not key"
        );
    }
}
