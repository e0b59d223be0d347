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
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Status, Streaming};

use crate::server::EtcdServer;
use crate::watch::{Frame, Sender, Spec};

/// Responses buffered per stream (etcd's is 128); a watcher that would overflow it catches up
/// from history instead.
const STREAM_BUFFER: usize = 128;

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

/// The Watch gRPC service, written out rather than generated: its responses are [`Frame`]s,
/// whose shared encodings the generated server (one message type per stream) cannot carry.
#[derive(Clone)]
pub struct WatchService {
    pub server: Arc<EtcdServer>,
    /// The largest request accepted, as for every other service.
    pub max_decoding: usize,
}

struct WatchCall(Arc<EtcdServer>);

impl tonic::server::StreamingService<WatchRequest> for WatchCall {
    type Response = Frame;
    type ResponseStream = WatchStream;
    type Future = std::future::Ready<Result<tonic::Response<WatchStream>, Status>>;

    fn call(&mut self, req: tonic::Request<Streaming<WatchRequest>>) -> Self::Future {
        let creds = crate::auth::Credentials::of(&req);
        std::future::ready(Ok(tonic::Response::new(serve(
            self.0.clone(),
            creds,
            req.into_inner(),
        ))))
    }
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
                return Ok(Status::unimplemented("").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(SmallCodec::<Frame, WatchRequest>::default())
                .apply_max_message_size_config(Some(max), Some(usize::MAX));
            Ok(grpc.streaming(WatchCall(server), req).await)
        })
    }
}

/// Runs one watch stream: requests from `inbound`, responses on the returned stream (gRPC's
/// and the JSON gateway's `/v3/watch` alike).
pub fn serve(
    server: Arc<EtcdServer>,
    creds: crate::auth::Credentials,
    mut inbound: impl Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
) -> WatchStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    {
        tokio::spawn(async move {
            let stream = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
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
        });
    }
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
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
    Some(crate::metrics::go_error_text(&super::kv_status(err)))
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
            let id = if c.watch_id == 0 {
                while ids.contains(next_id) {
                    *next_id += 1;
                }
                *next_id
            } else {
                c.watch_id
            };
            if ids.contains(&id) || id < 0 {
                let resp = WatchResponse {
                    header: Some(server.header(rev)),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                    ..Default::default()
                };
                return tx.send(Ok(resp.into())).await.is_ok();
            }
            ids.insert(id);
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
