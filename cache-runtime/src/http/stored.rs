//! What a cached response is, which responses may become one, and how one is sent back.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::http::body::{collect, Collected};
use crate::http::etag::strong_etag;
use crate::http::policy::CachePolicy;

/// The response headers stored with the body; every other header is the handler's business on
/// a miss and is not replayed (`Cache-Control` and `Age` come from the policy and the entry).
const STORED_HEADERS: [HeaderName; 7] = [
    CONTENT_TYPE,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_LANGUAGE,
    ETAG,
    http::header::LAST_MODIFIED,
    VARY,
    http::header::LOCATION,
];

/// One cached response, as every backend holds it (bincode in Redis).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "as_bytes")]
    pub(crate) body: Vec<u8>,
    /// The handler's own ETag, or a strong one computed from the body when it was stored.
    pub(crate) etag: String,
    pub(crate) stored_at_ms: u64,
}

/// Why a response was passed through instead of stored: the `detail` of its `Cache-Status`.
pub(crate) type Refusal = &'static str;

/// Turns a handler's response into an entry, or says why it must not be one (and gives the
/// response back to send as it is).
pub(crate) async fn store(
    response: Response<Body>,
    policy: &CachePolicy,
    now_ms: u64,
) -> Result<StoredResponse, (Response<Body>, Refusal)> {
    if let Some(refusal) = refusal(&response, policy) {
        return Err((response, refusal));
    }
    let (parts, body) = response.into_parts();
    let body: Bytes = match collect(body, policy.max_body_bytes).await {
        Collected::Complete(bytes) => bytes,
        Collected::Passthrough(body) => {
            return Err((Response::from_parts(parts, body), "too-large"));
        }
    };
    let etag = match parts.headers.get(ETAG).map(HeaderValue::to_str) {
        Some(Ok(etag)) => etag.to_owned(),
        _ => strong_etag(&body),
    };
    let headers = STORED_HEADERS
        .iter()
        .filter(|name| **name != ETAG)
        .flat_map(|name| {
            parts
                .headers
                .get_all(name)
                .iter()
                .map(move |value| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        })
        .collect();
    Ok(StoredResponse {
        status: parts.status.as_u16(),
        headers,
        body: body.to_vec(),
        etag,
        stored_at_ms: now_ms,
    })
}

/// Whatever in the response's head forbids storing it, checked before its body is read.
fn refusal(response: &Response<Body>, policy: &CachePolicy) -> Option<Refusal> {
    let headers = response.headers();
    if !policy.statuses.contains(&response.status()) {
        return Some("status");
    }
    if headers.contains_key(SET_COOKIE) {
        return Some("set-cookie");
    }
    for directive in list(headers, &CACHE_CONTROL) {
        let name = directive.split('=').next().unwrap_or("").trim();
        for refused in ["no-store", "private", "no-cache"] {
            if name.eq_ignore_ascii_case(refused) {
                return Some(refused);
            }
        }
    }
    // A variant the key cannot tell apart must not be stored, or one could be sent for another.
    if list(headers, &VARY).any(|name| {
        name == "*"
            || !policy
                .vary
                .iter()
                .any(|keyed| keyed.as_str().eq_ignore_ascii_case(name))
    }) {
        return Some("vary");
    }
    if headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"))
    {
        return Some("stream");
    }
    if headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|length| length > policy.max_body_bytes as u64)
    {
        return Some("too-large");
    }
    None
}

/// The comma-separated items of every line of a list header. An unreadable line is treated as a
/// wildcard, so that it refuses storing rather than being ignored.
fn list<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("*, no-store").split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// How an entry is sent back.
pub(crate) struct Reply<'a> {
    pub(crate) not_modified: bool,
    pub(crate) head: bool,
    pub(crate) cache_control: String,
    pub(crate) age: Duration,
    pub(crate) vary: &'a [HeaderName],
    pub(crate) cache_status: HeaderValue,
}

impl StoredResponse {
    /// The first stored value of the header `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(stored, _)| stored == name)
            .map(|(_, value)| value.as_slice())
    }

    /// The response for one request: the stored one, or `304 Not Modified` with its validators
    /// and caching headers (RFC 9110 §15.4.5) and no body.
    pub(crate) fn reply(&self, reply: Reply<'_>) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        if reply.not_modified {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            for (name, value) in &self.headers {
                if name == VARY.as_str() || name == http::header::LAST_MODIFIED.as_str() {
                    append(response.headers_mut(), name, value);
                }
            }
        } else {
            *response.status_mut() =
                StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            for (name, value) in &self.headers {
                append(response.headers_mut(), name, value);
            }
            // Stated for HEAD, which has no body to measure; never on a 204 (RFC 9110 §8.6).
            if response.status() != StatusCode::NO_CONTENT {
                response
                    .headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(self.body.len()));
            }
            if !reply.head {
                *response.body_mut() = Body::from(self.body.clone());
            }
        }
        let headers = response.headers_mut();
        if let Ok(etag) = HeaderValue::from_str(&self.etag) {
            headers.insert(ETAG, etag);
        }
        add_vary(headers, reply.vary);
        if let Ok(value) = HeaderValue::from_str(&reply.cache_control) {
            headers.insert(CACHE_CONTROL, value);
        }
        headers.insert(http::header::AGE, HeaderValue::from(reply.age.as_secs()));
        headers.insert(super::CACHE_STATUS, reply.cache_status);
        response
    }
}

fn append(headers: &mut HeaderMap, name: &str, value: &[u8]) {
    if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_bytes(value)) {
        headers.append(name, value);
    }
}

/// Names the policy's keyed headers in `Vary`, so that caches in front key on them too.
fn add_vary(headers: &mut HeaderMap, keyed: &[HeaderName]) {
    let missing: Vec<&str> = keyed
        .iter()
        .map(HeaderName::as_str)
        .filter(|name| !list(headers, &VARY).any(|present| present.eq_ignore_ascii_case(name)))
        .collect();
    if !missing.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&missing.join(", ")) {
            headers.append(VARY, value);
        }
    }
}

/// Bodies as one length-prefixed byte string rather than a sequence of `u8`s.
mod as_bytes {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
                Ok(bytes.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(bytes)
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn response(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<Body> {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::from(body)).expect("valid response")
    }

    fn stored(
        status: u16,
        headers: &[(&str, &str)],
        policy: &CachePolicy,
    ) -> Result<StoredResponse, Refusal> {
        futures::executor::block_on(store(response(status, headers, "body"), policy, 1))
            .map_err(|(_, refusal)| refusal)
    }

    #[test]
    fn what_is_never_stored() {
        let policy = CachePolicy::new(Duration::from_secs(1)).vary(["accept-language"]);
        type Case = (u16, &'static [(&'static str, &'static str)], Refusal);
        let cases: [Case; 9] = [
            (500, &[], "status"),
            (404, &[], "status"),
            (206, &[], "status"),
            (200, &[("set-cookie", "a=b")], "set-cookie"),
            (200, &[("cache-control", "max-age=5, No-Store")], "no-store"),
            (200, &[("cache-control", "private=\"x\"")], "private"),
            (200, &[("vary", "accept-language, cookie")], "vary"),
            (200, &[("vary", "*")], "vary"),
            (200, &[("content-type", "text/event-stream")], "stream"),
        ];
        for (status, headers, expected) in cases {
            assert_eq!(
                stored(status, headers, &policy).err(),
                Some(expected),
                "{status} {headers:?}"
            );
        }
        assert!(stored(200, &[("vary", "Accept-Language")], &policy).is_ok());
        let with_404 = policy.clone().cache_status(StatusCode::NOT_FOUND);
        assert!(stored(404, &[], &with_404).is_ok());
        let tiny = CachePolicy::new(Duration::from_secs(1)).max_body_bytes(3);
        assert_eq!(stored(200, &[], &tiny).err(), Some("too-large"));
    }

    #[test]
    fn a_handler_etag_is_kept_and_otherwise_one_is_computed() {
        let policy = CachePolicy::new(Duration::from_secs(1));
        let own = stored(200, &[("etag", "W/\"v1\"")], &policy).expect("stored");
        assert_eq!(own.etag, "W/\"v1\"");
        let computed = stored(200, &[("content-type", "text/plain")], &policy).expect("stored");
        assert_eq!(computed.etag, strong_etag(b"body"));
        assert_eq!(
            computed.headers,
            vec![("content-type".to_owned(), b"text/plain".to_vec())]
        );
    }

    #[test]
    fn entries_round_trip_through_bincode() {
        let entry = stored(
            200,
            &[("content-type", "text/plain")],
            &CachePolicy::new(Duration::from_secs(1)),
        )
        .expect("stored");
        let bytes =
            bincode::serde::encode_to_vec(&entry, bincode::config::standard()).expect("encode");
        assert!(
            bytes.len() < 100,
            "body encoded as one byte string: {}",
            bytes.len()
        );
        let (back, _): (StoredResponse, _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
        assert_eq!(back.body, entry.body);
        assert_eq!(back.etag, entry.etag);
    }
}
