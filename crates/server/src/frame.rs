//! What a watch stream carries: one response per `Frame`, written by the hub and read by the
//! stream's body. Its own module so the stream queue (`outbox`) and the hub (`watch`) both
//! depend on it rather than on each other.

use ballast_api::etcdserverpb::WatchResponse;
use prost::bytes::{BufMut, Bytes};
use prost::Message;

/// One response on a watch stream. Events that many watchers get alike (one key watched by
/// hundreds) are encoded once per batch and shared; only the watch id is written per watcher.
#[derive(Debug, Clone)]
pub enum Frame {
    Response(Box<WatchResponse>),
    /// A `WatchResponse` encoded without its watch id (header and events).
    Shared {
        watch_id: i64,
        body: Bytes,
    },
}

impl From<WatchResponse> for Frame {
    fn from(r: WatchResponse) -> Frame {
        Frame::Response(Box::new(r))
    }
}

impl Default for Frame {
    fn default() -> Frame {
        Frame::Response(Box::default())
    }
}

impl Frame {
    /// The response as a message (for the JSON gateway).
    pub fn into_response(self) -> WatchResponse {
        match self {
            Frame::Response(r) => *r,
            Frame::Shared { watch_id, body } => {
                // The body was encoded here from a WatchResponse; it always decodes.
                let mut r = WatchResponse::decode(body).unwrap_or_default();
                r.watch_id = watch_id;
                r
            }
        }
    }
}

impl Message for Frame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Frame::Response(r) => r.encode_raw(buf),
            Frame::Shared { watch_id, body } => {
                // Protobuf fields may come in any order: the id first, then the shared rest.
                if *watch_id != 0 {
                    prost::encoding::int64::encode(2, watch_id, buf);
                }
                buf.put_slice(body);
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if let Frame::Shared { .. } = self {
            *self = Frame::from(std::mem::take(self).into_response());
        }
        match self {
            Frame::Response(r) => r.merge_field(tag, wire_type, buf, ctx),
            Frame::Shared { .. } => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Frame::Response(r) => r.encoded_len(),
            Frame::Shared { watch_id, body } => {
                let id = if *watch_id != 0 {
                    prost::encoding::int64::encoded_len(2, watch_id)
                } else {
                    0
                };
                id + body.len()
            }
        }
    }

    fn clear(&mut self) {
        *self = Frame::default();
    }
}
