//! gRPC services. Handlers only validate, translate and call the member; every error becomes
//! etcd's status through [`status`].

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod dispatch;
pub mod kv;
pub mod large_range;
pub mod lease;
pub mod maintenance;
pub mod range_stream;
pub mod watch;

use tonic::{Code, Status};

pub use crate::status::{kv_status, status, unexpected};

/// The trailers that end a gRPC response with `status`.
pub fn trailers(status: &Status) -> http_body::Frame<prost::bytes::Bytes> {
    let mut h = axum::http::HeaderMap::new();
    if status.add_header(&mut h).is_err() {
        // Only a message that is not valid header text; the code alone still says it.
        h.insert(
            "grpc-status",
            axum::http::HeaderValue::from(status.code() as i32),
        );
    }
    http_body::Frame::trailers(h)
}

/// A message that could not be received, in etcd's terms: one over the size limit is
/// `ResourceExhausted` with grpc-go's message (tonic says `OutOfRange`); anything else (a body
/// that does not decode) keeps tonic's `Internal`, etcd's code too.
pub fn inbound_error(s: Status) -> Status {
    match oversize_message(s.message()) {
        Some(msg) if s.code() == Code::OutOfRange => Status::new(Code::ResourceExhausted, msg),
        _ => s,
    }
}

/// grpc-go's text for tonic's "message too large" error, if `msg` is one.
pub fn oversize_message(msg: &str) -> Option<String> {
    if !msg.starts_with("Error, decoded message length too large") {
        return None;
    }
    let nums: Vec<&str> = msg
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    match nums.as_slice() {
        [found, limit] => Some(format!(
            "grpc: received message larger than max ({found} vs. {limit})"
        )),
        _ => None,
    }
}

/// Rewrites tonic's immediate "message too large" answers (a trailers-only response, sent
/// before any handler runs) to etcd's code and message.
pub fn etcd_oversize_status<B>(resp: &mut axum::http::Response<B>) {
    let headers = resp.headers();
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return;
    }
    let Some(msg) = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .and_then(|m| oversize_message(&m))
    else {
        return;
    };
    let h = resp.headers_mut();
    h.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    if let Ok(v) = axum::http::HeaderValue::from_str(&msg) {
        h.insert("grpc-message", v);
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
