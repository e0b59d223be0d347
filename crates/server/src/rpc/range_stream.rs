//! etcd 3.7's `KV.RangeStream`, written from the stored bytes. Chunks are etcd's: ten keys
//! first, then a key limit doubled below half of `--max-request-bytes` and halved above
//! twice it, at the revision of the first chunk; the last one carries the header, `more`
//! and `count`. Each chunk after the first is sized by a pass over its stored lengths, then
//! written a `LARGE_RANGE_CHUNK` at a time as HTTP/2 asks for more, straight from the stored
//! key-values (`large_range::read_kvs`, in a `large_range::Pieces` body), so a stream holds a few dozen KiB however large its chunks. Decoding each
//! chunk's key-values and encoding them again, with two chunks queued per stream, held more
//! than etcd (20 streams of a 480 MiB set: RSS +309 MiB, etcd 3.7 +305 MiB).
//!
//! Invariant: every message holds exactly the bytes its length announced, or the stream ends
//! with an error status; chunks never overlap and follow key order.

use std::sync::Arc;

use ballast_api::etcdserverpb::{RangeRequest, RangeResponse, RangeStreamResponse, ResponseHeader};
use ballast_state::mvcc::range_entry_len;
use ballast_state::{KvError, Mvcc};
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{self, WireType};
use prost::Message;
use tonic::Status;

use super::kv_status;
use super::large_range::{read_kvs, KvPiece, NextPiece};
use crate::limits::RANGE_STREAM_FIRST_CHUNK;

/// etcd 3.7's next chunk size: double below half the target, halve above twice it, never 0.
fn next_chunk_limit(last: usize, last_size: usize, target: usize) -> usize {
    let next = if last_size < target / 2 {
        last.saturating_mul(2)
    } else if last_size > target.saturating_mul(2) {
        last / 2
    } else {
        last
    };
    next.max(1)
}

/// One gRPC message: the length prefix and the whole encoded message.
fn framed(m: &impl Message) -> Bytes {
    let len = m.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    m.encode_raw(&mut b);
    count_sent(b.len());
    b.freeze()
}

fn count_sent(n: usize) {
    ballast_api::codec::SENT_BYTES.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// The stream's body (see the module's comment).
pub struct StreamBody {
    mvcc: Arc<Mvcc>,
    req: RangeRequest,
    /// The revision every chunk reads, and the header the last one carries.
    at: i64,
    header: ResponseHeader,
    /// What the first chunk counted, and the keys asked for in all.
    count: i64,
    total: usize,
    /// `--max-request-bytes`: what a chunk aims at.
    target: usize,
    /// Keys sent, the last chunk's key limit and size.
    sent: usize,
    limit: usize,
    size: usize,
    /// A whole message waiting to go (the first chunk).
    ready: Option<Bytes>,
    /// The chunk being written, if any.
    chunk: Option<Chunk>,
    /// Where the next chunk starts; `None` once no key is left.
    next: Option<Vec<u8>>,
    /// Whether the last chunk has been framed.
    last: bool,
}

/// A chunk whose prefix went out: its key-values still to write, then its tail.
struct Chunk {
    from: Vec<u8>,
    keys: usize,
    bytes: usize,
    tail: Bytes,
}

impl StreamBody {
    /// Reads the first chunk (which counts the range and pins its revision); later chunks
    /// are read as the client takes them. Blocking: run it off the runtime's workers.
    pub fn start(
        mvcc: Arc<Mvcc>,
        mut req: RangeRequest,
        target: usize,
        header: &dyn Fn(i64) -> ResponseHeader,
    ) -> Result<StreamBody, Status> {
        let total = if req.limit > 0 {
            req.limit as usize
        } else {
            usize::MAX
        };
        if req.count_only {
            let resp = mvcc.range(&req).map_err(kv_status)?;
            let rev = resp.header.as_ref().map_or(0, |h| h.revision);
            let msg = RangeResponse {
                header: Some(header(rev)),
                count: resp.count,
                ..Default::default()
            };
            return Ok(Self::only(mvcc, req, msg));
        }
        req.limit = RANGE_STREAM_FIRST_CHUNK.min(i64::try_from(total).unwrap_or(i64::MAX));
        let first = mvcc.range(&req).map_err(kv_status)?;
        let pinned = first.header.as_ref().map_or(0, |h| h.revision);
        let at = if req.revision > 0 {
            req.revision
        } else {
            pinned
        };
        let sent = first.kvs.len();
        let next = first.more.then(|| {
            let mut k = first
                .kvs
                .last()
                .map(|kv| kv.key.clone())
                .unwrap_or_default();
            k.push(0);
            k
        });
        let header = header(pinned);
        let last = next.is_none() || sent >= total;
        // etcd sizes the next chunk by this one as the range answered it.
        let size = first.encoded_len();
        let msg = RangeResponse {
            kvs: first.kvs,
            header: last.then_some(header),
            more: last && first.count > sent as i64,
            count: if last { first.count } else { 0 },
        };
        Ok(StreamBody {
            limit: req.limit as usize,
            mvcc,
            req,
            at,
            header,
            count: first.count,
            total,
            target,
            sent,
            size,
            ready: Some(framed(&RangeStreamResponse {
                range_response: Some(msg),
            })),
            chunk: None,
            next: next.filter(|_| !last),
            last,
        })
    }

    /// A stream of the one message `msg`.
    fn only(mvcc: Arc<Mvcc>, req: RangeRequest, msg: RangeResponse) -> StreamBody {
        StreamBody {
            mvcc,
            req,
            at: 0,
            header: ResponseHeader::default(),
            count: 0,
            total: 0,
            target: 0,
            sent: 0,
            limit: 0,
            size: 0,
            ready: Some(framed(&RangeStreamResponse {
                range_response: Some(msg),
            })),
            chunk: None,
            next: None,
            last: true,
        }
    }

    /// Sizes the next chunk from `from` and returns its prefix; the chunk is then written.
    fn begin_chunk(&mut self, from: Vec<u8>) -> Result<Bytes, Status> {
        self.limit =
            next_chunk_limit(self.limit, self.size, self.target).min(self.total - self.sent);
        let (mut keys, mut bytes) = (0usize, 0usize);
        let next = self
            .mvcc
            .range_page_lens::<KvError>(
                &from,
                &self.req.range_end,
                self.at,
                self.req.keys_only,
                self.limit,
                usize::MAX,
                &mut |n| {
                    keys += 1;
                    bytes += range_entry_len(n);
                    Ok(())
                },
            )
            .map_err(kv_status)?;
        if keys == 0 {
            return Err(kv_status(KvError::Corrupt(format!(
                "range at revision {} found no key where one was counted",
                self.at
            ))));
        }
        let sent = self.sent + keys;
        self.last = next.is_none() || sent >= self.total;
        // Sized as the range from `from` would answer, as etcd sizes its chunks.
        self.size = bytes
            + RangeResponse {
                header: Some(ResponseHeader {
                    revision: self.header.revision,
                    ..Default::default()
                }),
                more: next.is_some(),
                count: self.count - self.sent as i64,
                ..Default::default()
            }
            .encoded_len();
        let mut tail = BytesMut::new();
        if self.last {
            encoding::message::encode(1, &self.header, &mut tail);
            if self.count > sent as i64 {
                encoding::bool::encode(3, &true, &mut tail);
            }
            if self.count != 0 {
                encoding::int64::encode(4, &self.count, &mut tail);
            }
        }
        let inner = bytes + tail.len();
        let outer = 1 + encoding::encoded_len_varint(inner as u64) + inner;
        let len = u32::try_from(outer)
            .map_err(|_| Status::resource_exhausted("range stream chunk too large"))?;
        let mut prefix = BytesMut::with_capacity(16);
        prefix.put_u8(0);
        prefix.put_u32(len);
        encoding::encode_key(1, WireType::LengthDelimited, &mut prefix);
        encoding::encode_varint(inner as u64, &mut prefix);
        count_sent(5 + outer);
        self.chunk = Some(Chunk {
            from,
            keys,
            bytes,
            tail: tail.freeze(),
        });
        self.next = next.filter(|_| !self.last);
        Ok(prefix.freeze())
    }

    /// The next piece of the chunk being written: key-values, then its tail.
    fn continue_chunk(&mut self) -> Result<Option<Bytes>, Status> {
        let Some(c) = self.chunk.as_mut() else {
            return Ok(None);
        };
        if c.keys == 0 {
            let tail = std::mem::take(&mut c.tail);
            self.chunk = None;
            return Ok((!tail.is_empty()).then_some(tail));
        }
        let KvPiece {
            bytes: piece,
            keys,
            next,
        } = read_kvs(&self.mvcc, &self.req, &c.from, self.at, c.keys)?;
        let bytes = piece.len();
        if keys == 0 || keys > c.keys || bytes > c.bytes || (keys == c.keys && bytes != c.bytes) {
            return Err(Status::internal(format!(
                "range at revision {} changed while read",
                self.at
            )));
        }
        c.keys -= keys;
        c.bytes -= bytes;
        self.sent += keys;
        match next {
            Some(k) => c.from = k,
            None if c.keys > 0 => {
                return Err(Status::internal(format!(
                    "range at revision {} ended early",
                    self.at
                )))
            }
            None => {}
        }
        Ok(Some(piece))
    }
}

impl NextPiece for StreamBody {
    fn next_piece(&mut self) -> Result<Option<Bytes>, Status> {
        if let Some(b) = self.ready.take() {
            return Ok(Some(b));
        }
        if let Some(piece) = self.continue_chunk()? {
            return Ok(Some(piece));
        }
        match self.next.take() {
            Some(from) if !self.last => self.begin_chunk(from).map(Some),
            _ => Ok(None),
        }
    }
}
