//! Reading a response body into memory up to a bound, without losing it when it is larger.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

/// A body read to its end, or given back whole because it is larger than the bound (or failed).
pub(crate) enum Collected {
    /// The complete body.
    Complete(Bytes),
    /// Too large or failed: the chunks read so far followed by the rest, to send as they are.
    Passthrough(Body),
}

/// Reads `body` while it fits in `limit` bytes.
pub(crate) async fn collect(mut body: Body, limit: usize) -> Collected {
    let mut read: VecDeque<Bytes> = VecDeque::new();
    let mut total = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                // Trailers are not stored; a body that has them is passed through.
                let data = match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        return Collected::Passthrough(Body::new(Replay {
                            read,
                            trailers: Some(frame),
                            rest: Some(body),
                        }))
                    }
                };
                total = total.saturating_add(data.len());
                read.push_back(data);
                if total > limit {
                    return Collected::Passthrough(Body::new(Replay {
                        read,
                        trailers: None,
                        rest: Some(body),
                    }));
                }
            }
            Some(Err(error)) => {
                return Collected::Passthrough(Body::new(Replay {
                    read,
                    trailers: None,
                    rest: Some(Body::new(Failed(Some(error)))),
                }))
            }
        }
    }
    let mut whole = BytesMut::with_capacity(total);
    for chunk in read {
        whole.extend_from_slice(&chunk);
    }
    Collected::Complete(whole.freeze())
}

/// The chunks already read, then a pending trailers frame, then the rest of the body.
struct Replay {
    read: VecDeque<Bytes>,
    trailers: Option<Frame<Bytes>>,
    rest: Option<Body>,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(chunk) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(frame) = self.trailers.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown in general; an exact hint here would make axum set a wrong Content-Length.
        SizeHint::default()
    }
}

/// A body that fails once with the original error, so a client sees the failure it would have.
struct Failed(Option<axum::Error>);

impl http_body::Body for Failed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Poll::Ready(self.0.take().map(Err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(chunks: &[&'static str]) -> Body {
        let stream = futures_stream(chunks.iter().map(|c| Bytes::from_static(c.as_bytes())));
        Body::new(stream)
    }

    /// A body of several data frames (a `Full` body would be one frame).
    fn futures_stream(chunks: impl Iterator<Item = Bytes>) -> Replay {
        Replay {
            read: chunks.collect(),
            trailers: None,
            rest: None,
        }
    }

    fn run<F: std::future::Future>(future: F) -> F::Output {
        futures::executor::block_on(future)
    }

    #[test]
    fn small_bodies_are_collected_and_large_ones_given_back_whole() {
        match run(collect(chunked(&["ab", "cd"]), 4)) {
            Collected::Complete(bytes) => assert_eq!(&bytes[..], b"abcd"),
            Collected::Passthrough(_) => panic!("fits"),
        }
        match run(collect(chunked(&["ab", "cd", "ef", "gh"]), 3)) {
            Collected::Passthrough(body) => {
                let bytes = run(body.collect()).expect("no error").to_bytes();
                assert_eq!(&bytes[..], b"abcdefgh");
            }
            Collected::Complete(_) => panic!("too large"),
        }
    }
}
