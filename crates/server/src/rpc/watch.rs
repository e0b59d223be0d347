//! The Watch service: one bidirectional stream carries many watchers.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use ballast_api::codec::SmallCodec;
use ballast_api::etcdserverpb::watch_request::RequestUnion;
use ballast_api::etcdserverpb::{WatchRequest, WatchResponse};
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::codec::Codec;
use tonic::{Status, Streaming};

use super::status;
use crate::limits::{MAX_WATCHERS_PER_STREAM, WATCH_STREAM_BUFFER};
use crate::outbox::{self, Receiver};
use crate::server::{EtcdServer, ServerError};
use crate::watch::{Frame, Sender, Spec};

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

/// The Watch gRPC service, written out rather than generated: its responses are [`Frame`]s,
/// whose shared encodings the generated server (one message type per stream) cannot carry,
/// and they go from the stream's queue to HTTP/2 without a stream adapter and tonic's encoder
/// in between ([`WatchBody`]).
#[derive(Clone)]
pub struct WatchService {
    pub server: Arc<EtcdServer>,
    /// The largest request accepted, as for every other service.
    pub max_decoding: usize,
}

type CallFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

impl tower::Service<http::Request<axum::body::Body>> for WatchService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = CallFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> CallFuture {
        let server = self.server.clone();
        let max = self.max_decoding;
        Box::pin(async move {
            if req.uri().path() != "/etcdserverpb.Watch/Watch" {
                return Ok(status(ServerError::Unimplemented(String::new())).into_http());
            }
            // etcd's clients do not compress; what does is refused, as tonic's server would.
            if let Some(enc) = req
                .headers()
                .get("grpc-encoding")
                .filter(|e| *e != "identity")
            {
                let enc = enc.to_str().unwrap_or("?");
                return Ok(status(ServerError::Unimplemented(format!(
                    "Content is compressed with `{enc}` which isn't supported"
                )))
                .into_http());
            }
            let (parts, body) = req.into_parts();
            let decoder = SmallCodec::<Frame, WatchRequest>::default().decoder();
            let inbound = Streaming::new_request(decoder, body, None, Some(max));
            let meta = tonic::Request::from_http(http::Request::from_parts(parts, ()));
            let creds = crate::auth::Credentials::of(&meta);
            let rx = serve_queue(server, creds, inbound);
            let mut resp = http::Response::new(tonic::body::Body::new(WatchBody::new(rx)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            Ok(resp)
        })
    }
}

/// A watch stream's response body: whatever is queued when HTTP/2 asks, each response framed
/// as a gRPC message, in one DATA frame; then the trailers with the stream's status.
pub struct WatchBody {
    rx: Receiver,
    taken: Vec<outbox::Item>,
    /// The error that ends the stream, after the data before it.
    end: Option<Status>,
    done: bool,
}

impl WatchBody {
    fn new(rx: Receiver) -> WatchBody {
        WatchBody {
            rx,
            taken: Vec::new(),
            end: None,
            done: false,
        }
    }

    fn trailers(&mut self, status: &Status) -> http_body::Frame<Bytes> {
        self.done = true;
        super::trailers(status)
    }
}

impl http_body::Body for WatchBody {
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
        if let Some(status) = me.end.take() {
            return Poll::Ready(Some(Ok(me.trailers(&status))));
        }
        match me.rx.poll_drain(cx, &mut me.taken) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(false) => Poll::Ready(Some(Ok(me.trailers(&Status::ok(""))))),
            Poll::Ready(true) => {
                // Not empty: a drain that returns true took at least one item.
                let mut out = BytesMut::new();
                for item in me.taken.drain(..) {
                    match item {
                        Ok(f) => {
                            let n = f.encoded_len();
                            out.reserve(5 + n);
                            out.put_u8(0);
                            // Bounded by the server's own response limit, far below 4 GiB.
                            out.put_u32(u32::try_from(n).unwrap_or(u32::MAX));
                            f.encode_raw(&mut out);
                        }
                        Err(status) => {
                            // What follows an error is never sent: the stream ends there.
                            me.end = Some(status);
                            break;
                        }
                    }
                }
                // Nothing before the error: the trailers now.
                if out.is_empty() {
                    if let Some(status) = me.end.take() {
                        return Poll::Ready(Some(Ok(me.trailers(&status))));
                    }
                }
                Poll::Ready(Some(Ok(http_body::Frame::data(out.freeze()))))
            }
        }
    }
}

/// Runs one watch stream for the JSON gateway's `/v3/watch`: requests from `inbound`,
/// responses on the returned stream.
pub fn serve(
    server: Arc<EtcdServer>,
    creds: crate::auth::Credentials,
    inbound: impl Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
) -> WatchStream {
    Box::pin(outbox::ReceiverStream::new(serve_queue(
        server, creds, inbound,
    )))
}

/// Runs one watch stream: requests from `inbound`, responses into the returned queue.
fn serve_queue(
    server: Arc<EtcdServer>,
    creds: crate::auth::Credentials,
    mut inbound: impl Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
) -> Receiver {
    let (tx, rx) = outbox::channel(WATCH_STREAM_BUFFER);
    tokio::spawn(async move {
        let stream = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
        crate::stats::WATCH_STREAMS.fetch_add(1, Ordering::Relaxed);
        let mut ids = HashSet::new();
        let mut next_id = 0i64;
        let mut half_closed = true;
        while let Some(msg) = inbound.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    let _ = tx.send(Err(super::inbound_error(e))).await;
                    half_closed = false;
                    break;
                }
            };
            if !handle(&server, &creds, stream, &tx, &mut ids, &mut next_id, msg).await {
                half_closed = false;
                break;
            }
        }
        // A client that only closed its sending side still gets events, as from etcd,
        // until it goes away.
        if half_closed {
            tx.closed().await;
        }
        server.watch_hub().close_stream(stream);
        crate::stats::WATCH_STREAMS.fetch_sub(1, Ordering::Relaxed);
    });
    rx
}

/// Why the caller may not watch what `c` asks for, in etcd's words (the whole gRPC error
/// text, as etcd puts it in `cancel_reason`); `None` if it may.
async fn refused(
    server: &EtcdServer,
    creds: &crate::auth::Credentials,
    c: &ballast_api::etcdserverpb::WatchCreateRequest,
) -> Option<String> {
    use ballast_state::KvError;
    let mvcc = server.mvcc();
    if !mvcc.auth_enabled() {
        return None;
    }
    // etcd watches key "\0" for an empty key.
    let key: &[u8] = if c.key.is_empty() { &[0] } else { &c.key };
    let err = match server.who(creds).await {
        Ok(who) => mvcc
            .with_auth(|a| a.check(&who, key, &c.range_end, false))
            .err()?,
        Err(crate::server::ServerError::Kv(e)) => e,
        Err(_) => KvError::PermissionDenied,
    };
    let err = match err {
        KvError::InvalidAuthToken | KvError::AuthOldRevision | KvError::UserEmpty => err,
        _ => KvError::PermissionDenied,
    };
    Some(ballast_net::go::error_text(&super::kv_status(err)))
}

/// Picks and records the id of a new watcher on a stream that has `ids`: the one the client
/// asked for, or (0) the next free one from `next_id`. Refused, with the cancel reason, for an
/// id in use or negative (etcd's words), or when the stream already has `limit` watchers.
fn choose_id(
    ids: &mut HashSet<i64>,
    next_id: &mut i64,
    requested: i64,
    limit: usize,
) -> Result<i64, &'static str> {
    if ids.len() >= limit {
        return Err("etcdserver: too many watchers on one watch stream");
    }
    let id = if requested == 0 {
        while ids.contains(next_id) {
            *next_id += 1;
        }
        *next_id
    } else {
        requested
    };
    if id < 0 || !ids.insert(id) {
        return Err("mvcc: duplicate watch ID provided on the WatchStream");
    }
    Ok(id)
}

/// One request from the client; false once the response side is gone.
async fn handle(
    server: &Arc<EtcdServer>,
    creds: &crate::auth::Credentials,
    stream: u64,
    tx: &Sender,
    ids: &mut HashSet<i64>,
    next_id: &mut i64,
    req: WatchRequest,
) -> bool {
    let hub = server.watch_hub();
    match req.request_union {
        Some(RequestUnion::CreateRequest(c)) => {
            // The hub's revision, not the store's: the store may already hold a batch the hub
            // has not published, and a watcher from "now" must start right after the
            // revision its created response names.
            let rev = hub.rev();
            if let Some(reason) = refused(server, creds, &c).await {
                let resp = WatchResponse {
                    header: Some(server.header(rev)),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: reason,
                    ..Default::default()
                };
                return tx.send(Ok(resp.into())).await.is_ok();
            }
            let id = match choose_id(ids, next_id, c.watch_id, MAX_WATCHERS_PER_STREAM) {
                Ok(id) => id,
                Err(reason) => {
                    let resp = WatchResponse {
                        header: Some(server.header(rev)),
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: reason.into(),
                        ..Default::default()
                    };
                    return tx.send(Ok(resp.into())).await.is_ok();
                }
            };
            let created = WatchResponse {
                header: Some(server.header(rev)),
                watch_id: id,
                created: true,
                ..Default::default()
            };
            if tx.send(Ok(created.into())).await.is_err() {
                return false;
            }
            let start = if c.start_revision <= 0 {
                rev + 1
            } else {
                c.start_revision
            };
            hub.add(stream, id, Spec::new(&c), start, tx.clone());
        }
        // Unknown ids are ignored, as etcd does.
        Some(RequestUnion::CancelRequest(c)) if hub.cancel(stream, c.watch_id) => {
            ids.remove(&c.watch_id);
            let resp = WatchResponse {
                header: Some(server.header(server.mvcc().current_rev())),
                watch_id: c.watch_id,
                canceled: true,
                ..Default::default()
            };
            return tx.send(Ok(resp.into())).await.is_ok();
        }
        Some(RequestUnion::CancelRequest(_)) => {}
        Some(RequestUnion::ProgressRequest(_)) => hub.request_progress(stream, tx),
        None => {}
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_ids_are_chosen_unique_and_bounded() {
        let (mut ids, mut next) = (HashSet::new(), 0);
        assert_eq!(choose_id(&mut ids, &mut next, 0, 4), Ok(0));
        assert_eq!(choose_id(&mut ids, &mut next, 1, 4), Ok(1));
        // The next free id skips the ones the client chose.
        assert_eq!(choose_id(&mut ids, &mut next, 0, 4), Ok(2));
        let dup = "mvcc: duplicate watch ID provided on the WatchStream";
        assert_eq!(choose_id(&mut ids, &mut next, 1, 4), Err(dup));
        assert_eq!(choose_id(&mut ids, &mut next, -3, 4), Err(dup));
        assert_eq!(choose_id(&mut ids, &mut next, 7, 4), Ok(7));
        assert_eq!(
            choose_id(&mut ids, &mut next, 0, 4),
            Err("etcdserver: too many watchers on one watch stream")
        );
        assert_eq!(ids.len(), 4);
    }
}
