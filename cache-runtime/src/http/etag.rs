//! Entity tags: computing a strong one from a body, and evaluating `If-None-Match`.

use http::header::IF_NONE_MATCH;
use http::HeaderMap;

/// A strong ETag for `body`: its xxh3-128, quoted. Computed once, when an entry is filled.
pub(crate) fn strong_etag(body: &[u8]) -> String {
    format!("\"{:032x}\"", xxhash_rust::xxh3::xxh3_128(body))
}

/// Whether the request's `If-None-Match` (RFC 9110 §13.1.2) matches `etag`: `*`, or any listed
/// tag under the weak comparison (`W/"a"` matches `"a"`). Several header lines form one list.
pub(crate) fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let current = opaque(etag);
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(tags)
        .any(|tag| tag == "*" || opaque(tag) == current)
}

/// Splits a list of entity tags, keeping commas inside quotes (an opaque tag may hold one).
fn tags(list: &str) -> impl Iterator<Item = &str> {
    let mut rest = list;
    std::iter::from_fn(move || loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let start = rest;
        let body = rest.strip_prefix("W/").unwrap_or(rest);
        let end = match body.strip_prefix('"') {
            Some(quoted) => quoted
                .find('"')
                .map_or(start.len(), |close| start.len() - quoted.len() + close + 1),
            None => body
                .find(',')
                .map_or(start.len(), |comma| start.len() - body.len() + comma),
        };
        rest = &start[end..];
        let tag = start[..end].trim();
        if !tag.is_empty() {
            return Some(tag);
        }
    })
}

/// The opaque part of a tag, for the weak comparison.
fn opaque(tag: &str) -> &str {
    tag.trim().strip_prefix("W/").unwrap_or(tag.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(IF_NONE_MATCH, HeaderValue::from_str(value).expect("valid"));
        }
        map
    }

    #[test]
    fn strong_etags_are_quoted_hashes_of_the_body() {
        let a = strong_etag(b"hello");
        assert_eq!(a.len(), 34);
        assert!(a.starts_with('"') && a.ends_with('"'));
        assert_eq!(a, strong_etag(b"hello"));
        assert_ne!(a, strong_etag(b"hello!"));
    }

    #[test]
    fn lists_weak_comparison_and_star() {
        let etag = "\"abc\"";
        assert!(if_none_match(&headers(&["\"abc\""]), etag));
        assert!(if_none_match(&headers(&["W/\"abc\""]), etag));
        assert!(if_none_match(&headers(&["\"x\", W/\"abc\""]), etag));
        assert!(if_none_match(&headers(&["\"x\"", "\"abc\""]), etag));
        assert!(if_none_match(&headers(&["*"]), etag));
        assert!(if_none_match(&headers(&["\"abc\""]), "W/\"abc\""));
        assert!(!if_none_match(&headers(&[]), etag));
        assert!(!if_none_match(&headers(&["\"ab\""]), etag));
        assert!(!if_none_match(&headers(&["\"a,bc\""]), etag));
        assert!(if_none_match(&headers(&["\"a,bc\", \"abc\""]), etag));
        assert!(!if_none_match(&headers(&["\"abc"]), etag));
    }
}
