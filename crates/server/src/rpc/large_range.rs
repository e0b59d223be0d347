//! A unary `Range` whose answer is too large to build in memory: one gRPC message written
//! while the store is read in pages, so twenty clients listing a gigabyte each hold a few
//! pages each, never the answer (etcd builds the whole response, its most-reported OOM).
//!
//! The message's length comes first on the wire, so a first pass over the pinned range adds
//! up the size of every key-value and a second writes them; both read the same immutable
//! revision. The handler answers tonic with an empty response marked [`Streamed`], whose body
//! the dispatcher swaps in ([`take_streamed`]).
//!
//! Invariant: the bytes written are exactly the length announced, or the stream ends with an
//! error status (a client never decodes a truncated message as a whole one).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ballast_api::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use ballast_state::mvcc::range_entry_len;
use ballast_state::{KvError, Mvcc, Pinned};
use ballast_storage::BackendError;
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{self, WireType};
use tokio::sync::mpsc;
use tonic::body::Body as GrpcBody;
use tonic::{Response, Status};

use super::kv_status;
use crate::limits::{LARGE_RANGE_CHUNK, LARGE_RANGE_PAGE, LARGE_RANGE_QUEUE};

/// The largest message grpc-go sends (etcd's `MaxSendMsgSize`).
const MAX_MESSAGE: u64 = i32::MAX as u64;

/// Marks a response whose body is the streamed message (an extension must be `Clone`).
#[derive(Clone)]
pub struct Streamed(Arc<Mutex<Option<GrpcBody>>>);

/// Replaces the body of a response marked [`Streamed`] by the streamed message.
pub fn take_streamed(resp: &mut axum::http::Response<GrpcBody>) {
    let Some(Streamed(body)) = resp.extensions_mut().remove::<Streamed>() else {
        return;
    };
    let body = body.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(body) = body {
        *resp.body_mut() = body;
    }
}

/// The answer to `req`, pinned as `p`, written by a blocking task as the client reads it.
pub fn respond(
    mvcc: Arc<Mvcc>,
    req: RangeRequest,
    p: Pinned,
    header: ResponseHeader,
) -> Response<RangeResponse> {
    let (tx, rx) = mpsc::channel(LARGE_RANGE_QUEUE);
    tokio::task::spawn_blocking(move || {
        let end = match write(&mvcc, &req, &p, &header, &tx) {
            Ok(()) => Status::ok(""),
            Err(Stop::Gone) => return,
            Err(Stop::Kv(e)) => kv_status(e),
            Err(Stop::Status(s)) => s,
        };
        let _ = tx.blocking_send(Part::End(end));
    });
    let body = GrpcBody::new(RangeBody { rx, done: false });
    let mut resp = Response::new(RangeResponse::default());
    resp.extensions_mut()
        .insert(Streamed(Arc::new(Mutex::new(Some(body)))));
    resp
}

/// Why writing stopped early.
enum Stop {
    Kv(KvError),
    Status(Status),
    /// The client left: nobody to tell.
    Gone,
}

impl From<KvError> for Stop {
    fn from(e: KvError) -> Stop {
        Stop::Kv(e)
    }
}

impl From<BackendError> for Stop {
    fn from(e: BackendError) -> Stop {
        Stop::Kv(e.into())
    }
}

enum Part {
    Data(Bytes),
    End(Status),
}

/// Hands every key-value of the pinned range to `out`, page by page; fails unless there are
/// exactly `p.send` of them.
fn pages(
    mvcc: &Mvcc,
    req: &RangeRequest,
    p: &Pinned,
    out: &mut dyn FnMut(&[u8]) -> Result<(), Stop>,
) -> Result<(), Stop> {
    let (mut from, mut sent) = (req.key.clone(), 0usize);
    while sent < p.send {
        let next = mvcc.range_page(
            &from,
            &req.range_end,
            p.at,
            req.keys_only,
            p.send - sent,
            LARGE_RANGE_PAGE,
            &mut |kv| {
                sent += 1;
                out(kv)
            },
        )?;
        match next {
            Some(k) => from = k,
            None => break,
        }
    }
    if sent != p.send {
        return Err(Stop::Status(Status::internal(format!(
            "range at revision {} read {sent} keys, {} expected",
            p.at, p.send
        ))));
    }
    Ok(())
}

fn write(
    mvcc: &Mvcc,
    req: &RangeRequest,
    p: &Pinned,
    header: &ResponseHeader,
    tx: &mpsc::Sender<Part>,
) -> Result<(), Stop> {
    let mut kv_bytes = 0u64;
    pages(mvcc, req, p, &mut |kv| {
        kv_bytes += range_entry_len(kv.len()) as u64;
        Ok(())
    })?;
    let head = encoding::message::encoded_len(1, header) as u64;
    let tail = if p.more {
        encoding::bool::encoded_len(3, &true)
    } else {
        0
    } + if p.count != 0 {
        encoding::int64::encoded_len(4, &p.count)
    } else {
        0
    };
    let total = head + kv_bytes + tail as u64;
    if total > MAX_MESSAGE {
        return Err(Stop::Status(Status::resource_exhausted(format!(
            "grpc: trying to send message larger than max ({total} vs. {MAX_MESSAGE})"
        ))));
    }
    let send = |buf: &mut BytesMut| {
        tx.blocking_send(Part::Data(buf.split().freeze()))
            .map_err(|_| Stop::Gone)
    };
    let mut buf = BytesMut::with_capacity(LARGE_RANGE_CHUNK + LARGE_RANGE_PAGE);
    buf.put_u8(0);
    buf.put_u32(total as u32);
    encoding::message::encode(1, header, &mut buf);
    let mut written = 0u64;
    pages(mvcc, req, p, &mut |kv| {
        encoding::encode_key(2, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(kv.len() as u64, &mut buf);
        buf.put_slice(kv);
        written += range_entry_len(kv.len()) as u64;
        if buf.len() >= LARGE_RANGE_CHUNK {
            send(&mut buf)?;
        }
        Ok(())
    })?;
    if written != kv_bytes {
        return Err(Stop::Status(Status::internal(format!(
            "range at revision {} changed size while read ({written} bytes, {kv_bytes} expected)",
            p.at
        ))));
    }
    if p.more {
        encoding::bool::encode(3, &true, &mut buf);
    }
    if p.count != 0 {
        encoding::int64::encode(4, &p.count, &mut buf);
    }
    ballast_api::codec::SENT_BYTES.fetch_add(total, std::sync::atomic::Ordering::Relaxed);
    send(&mut buf)
}

/// The streamed message, then its status as trailers.
struct RangeBody {
    rx: mpsc::Receiver<Part>,
    done: bool,
}

impl http_body::Body for RangeBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let me = self.get_mut();
        if me.done {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(me.rx.poll_recv(cx)) {
            Some(Part::Data(b)) => http_body::Frame::data(b),
            Some(Part::End(status)) => {
                me.done = true;
                super::trailers(&status)
            }
            // The writer died without a word: never let the client take what came as whole.
            None => {
                me.done = true;
                super::trailers(&Status::internal("range stream ended early"))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }
}
