//! A request's preconditions on a stored response (RFC 9110 §13): whether the client's copy is
//! still current, so that a `304 Not Modified` answers it.

use std::time::SystemTime;

use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::HeaderMap;

use crate::http::etag::if_none_match;

/// The request's `If-None-Match` and `If-Modified-Since` lines, kept while the request itself
/// goes to the handler.
pub(crate) struct Preconditions {
    headers: HeaderMap,
}

impl Preconditions {
    pub(crate) fn of(request: &HeaderMap) -> Self {
        let headers = [IF_NONE_MATCH, IF_MODIFIED_SINCE]
            .into_iter()
            .flat_map(|name| {
                request
                    .get_all(&name)
                    .iter()
                    .map(move |value| (name.clone(), value.clone()))
            })
            .collect();
        Preconditions { headers }
    }

    /// Whether the client holds the entry whose validators are `etag` and `last_modified`.
    /// `If-None-Match` decides when present; only without it is `If-Modified-Since` compared
    /// with `Last-Modified` (RFC 9110 §13.2.2), which an entry without `Last-Modified` never
    /// satisfies.
    pub(crate) fn not_modified(&self, etag: &str, last_modified: Option<&[u8]>) -> bool {
        if self.headers.contains_key(IF_NONE_MATCH) {
            return if_none_match(&self.headers, etag);
        }
        // Ignored unless it is one valid HTTP-date (RFC 9110 §13.1.3).
        let mut lines = self.headers.get_all(IF_MODIFIED_SINCE).iter();
        let (Some(since), None) = (lines.next(), lines.next()) else {
            return false;
        };
        match (date(since.as_bytes()), last_modified.and_then(date)) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }
}

fn date(value: &[u8]) -> Option<SystemTime> {
    httpdate::parse_http_date(std::str::from_utf8(value).ok()?.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const MODIFIED: &[u8] = b"Wed, 21 Oct 2015 07:28:00 GMT";

    fn preconditions(lines: &[(&'static str, &str)]) -> Preconditions {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(*name, HeaderValue::from_str(value).expect("valid"));
        }
        Preconditions::of(&headers)
    }

    #[test]
    fn if_modified_since_at_or_after_last_modified_is_not_modified() {
        let etag = "\"abc\"";
        let ims = |value: &str| preconditions(&[("if-modified-since", value)]);
        assert!(ims("Wed, 21 Oct 2015 07:28:00 GMT").not_modified(etag, Some(MODIFIED)));
        assert!(ims("Thu, 22 Oct 2015 07:28:00 GMT").not_modified(etag, Some(MODIFIED)));
        // The obsolete formats a recipient must accept (RFC 9110 §5.6.7).
        assert!(ims("Wednesday, 21-Oct-15 07:28:00 GMT").not_modified(etag, Some(MODIFIED)));
        assert!(ims("Wed Oct 21 07:28:00 2015").not_modified(etag, Some(MODIFIED)));
        assert!(!ims("Wed, 21 Oct 2015 07:27:59 GMT").not_modified(etag, Some(MODIFIED)));
        assert!(!ims("yesterday").not_modified(etag, Some(MODIFIED)));
        assert!(
            !ims("Wed, 21 Oct 2015 07:28:00 GMT").not_modified(etag, None),
            "nothing to compare with"
        );
        assert!(!ims("Wed, 21 Oct 2015 07:28:00 GMT").not_modified(etag, Some(b"garbage")));
        let two = preconditions(&[
            ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]);
        assert!(
            !two.not_modified(etag, Some(MODIFIED)),
            "more than one member"
        );
    }

    #[test]
    fn if_none_match_takes_precedence() {
        let later = "Thu, 22 Oct 2015 07:28:00 GMT";
        let earlier = "Tue, 20 Oct 2015 07:28:00 GMT";
        let both = |tag: &str, since: &str| {
            preconditions(&[("if-none-match", tag), ("if-modified-since", since)])
        };
        assert!(!both("\"other\"", later).not_modified("\"abc\"", Some(MODIFIED)));
        assert!(both("\"abc\"", earlier).not_modified("\"abc\"", Some(MODIFIED)));
        assert!(!preconditions(&[]).not_modified("\"abc\"", Some(MODIFIED)));
    }
}
