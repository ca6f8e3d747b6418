//! Reading request bodies: into one bounded buffer, or discarded.
//!
//! An upload is copied exactly once, from the connection's chunks into a buffer sized from
//! `Content-Length` up front, and then frozen into the [`Bytes`] the state keeps.

use std::fmt::Display;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// A body read whole.
pub struct Collected {
    /// The bytes.
    pub data: Bytes,
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum CollectError {
    /// It was longer than the limit (the rest was read and discarded).
    TooLarge,
    /// The stream failed (client gone, malformed multipart, …).
    Stream(String),
}

/// The request's `Content-Length`, if given and valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads `stream` into one buffer of at most `limit` bytes. `size_hint` (e.g. the
/// `Content-Length`) pre-sizes the buffer so it is not regrown.
pub async fn collect<S, E>(
    stream: S,
    size_hint: Option<u64>,
    limit: u64,
) -> Result<Collected, CollectError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Display,
{
    let capacity = size_hint.unwrap_or(64 * 1024).min(limit.saturating_add(1));
    let mut buf = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(usize::MAX));
    let mut too_large = false;
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CollectError::Stream(e.to_string()))?;
        if too_large {
            continue;
        }
        if (buf.len() + chunk.len()) as u64 > limit {
            too_large = true;
            buf = BytesMut::new();
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if too_large {
        return Err(CollectError::TooLarge);
    }
    Ok(Collected { data: buf.freeze() })
}

/// Reads and discards a body, so that an early error reply reaches a client still sending.
pub async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = stream.next().await {}
}
