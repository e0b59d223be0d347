//! The client port's front service: a gRPC call goes straight to its tonic service by the
//! first segment of its path; everything else (JSON gateway, `/health`, `/metrics`,
//! `/version`) to the axum router.
//!
//! One hand-written layer instead of a router, two middlewares and a second router: each of
//! those boxed a future and allocated per call, a measurable share of a small put's CPU.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tonic::body::Body as GrpcBody;
use tower::{Service, ServiceExt};

use ballast_api::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer,
};
use ballast_api::grpc::health::v1::health_server::HealthServer;
use ballast_api::{
    v3electionpb::election_server::ElectionServer, v3lockpb::lock_server::LockServer,
};

use super::{auth, cluster, concurrency, kv, lease, maintenance, watch};
use crate::conn::tls::ClientAddr;

/// The etcd gRPC services, built once and shared by every connection.
pub struct GrpcServices {
    pub kv: KvServer<kv::KvService>,
    pub watch: watch::WatchService,
    pub lease: LeaseServer<lease::LeaseService>,
    pub cluster: ClusterServer<cluster::ClusterService>,
    pub maintenance: MaintenanceServer<maintenance::MaintenanceService>,
    pub auth: AuthServer<auth::AuthService>,
    pub lock: LockServer<concurrency::LockService>,
    pub election: ElectionServer<concurrency::ElectionService>,
    pub health: HealthServer<maintenance::HealthService>,
}

type GrpcFuture = Pin<Box<dyn Future<Output = Result<Response<GrpcBody>, Infallible>> + Send>>;

/// One connection's view of the client port.
#[derive(Clone)]
pub struct ClientService {
    grpc: Arc<GrpcServices>,
    http: axum::Router,
    /// Given to handlers as `ConnectInfo` when the connection carries a verified client
    /// certificate's CN (the user under `--client-cert-auth`); nothing else reads it.
    peer: Option<ClientAddr>,
    /// Which kinds of call this connection's listener serves.
    serves: Serves,
}

impl ClientService {
    pub fn new(grpc: Arc<GrpcServices>, http: axum::Router) -> ClientService {
        ClientService {
            grpc,
            http,
            peer: None,
            serves: Serves::All,
        }
    }

    /// The same service for a connection from `peer`.
    pub fn for_peer(&self, peer: &ClientAddr) -> ClientService {
        ClientService {
            grpc: self.grpc.clone(),
            http: self.http.clone(),
            peer: peer.cn.as_ref().map(|_| peer.clone()),
            serves: self.serves,
        }
    }

    fn grpc_call(&self, service: Grpc, req: Request<Body>) -> GrpcFuture {
        let g = &self.grpc;
        match service {
            Grpc::Kv => g.kv.clone().call(req),
            Grpc::Watch => g.watch.clone().call(req),
            Grpc::Lease => g.lease.clone().call(req),
            Grpc::Cluster => g.cluster.clone().call(req),
            Grpc::Maintenance => g.maintenance.clone().call(req),
            Grpc::Auth => g.auth.clone().call(req),
            Grpc::Lock => g.lock.clone().call(req),
            Grpc::Election => g.election.clone().call(req),
            Grpc::Health => g.health.clone().call(req),
        }
    }
}

#[derive(Clone, Copy)]
enum Grpc {
    Kv,
    Watch,
    Lease,
    Cluster,
    Maintenance,
    Auth,
    Lock,
    Election,
    Health,
}

/// The service a path names (`/<package>.<Service>/<Method>`), if it is one of ours.
fn grpc_service(path: &str) -> Option<Grpc> {
    let (service, _) = path.strip_prefix('/')?.split_once('/')?;
    Some(match service {
        "etcdserverpb.KV" => Grpc::Kv,
        "etcdserverpb.Watch" => Grpc::Watch,
        "etcdserverpb.Lease" => Grpc::Lease,
        "etcdserverpb.Cluster" => Grpc::Cluster,
        "etcdserverpb.Maintenance" => Grpc::Maintenance,
        "etcdserverpb.Auth" => Grpc::Auth,
        "v3lockpb.Lock" => Grpc::Lock,
        "v3electionpb.Election" => Grpc::Election,
        "grpc.health.v1.Health" => Grpc::Health,
        _ => return None,
    })
}

/// Responses carry tonic's body type: gRPC's, polled once per message sent, then reach hyper
/// without another boxed layer; only the HTTP endpoints' bodies are wrapped.
impl Service<Request<Body>> for ClientService {
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = ClientFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The tonic services and the router are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> ClientFuture {
        if let Some(p) = &self.peer {
            req.extensions_mut().insert(ConnectInfo(p.clone()));
        }
        let service = match self.serves {
            Serves::Http => None,
            _ => grpc_service(req.uri().path()),
        };
        match service {
            Some(service) => {
                let metric = crate::metrics::grpc_started(req.uri().path());
                if let Some(i) = metric {
                    crate::metrics::client_request(i, req.headers());
                }
                let fut = self.grpc_call(service, req);
                ClientFuture::Grpc { fut, metric }
            }
            None if self.serves == Serves::Grpc => ClientFuture::Grpc {
                fut: Box::pin(async { Ok(grpc_unimplemented().map(GrpcBody::new)) }),
                metric: None,
            },
            None => ClientFuture::Http(Box::new(self.http.call(req))),
        }
    }
}

pub enum ClientFuture {
    Grpc {
        fut: GrpcFuture,
        metric: Option<usize>,
    },
    /// Boxed: axum's future is large, and only HTTP endpoints take this path.
    Http(Box<axum::routing::future::RouteFuture<Infallible>>),
}

impl Future for ClientFuture {
    type Output = Result<Response<GrpcBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every variant's fields are Unpin (boxed futures, axum's RouteFuture).
        match self.get_mut() {
            ClientFuture::Grpc { fut, metric } => {
                let Ok(mut resp) = std::task::ready!(fut.as_mut().poll(cx));
                super::etcd_oversize_status(&mut resp);
                super::large_range::take_streamed(&mut resp);
                if let Some(i) = *metric {
                    crate::metrics::grpc_handled(i, resp.headers());
                }
                Poll::Ready(Ok(resp))
            }
            ClientFuture::Http(f) => Pin::new(f.as_mut())
                .poll(cx)
                .map(|r| r.map(|resp| resp.map(GrpcBody::new))),
        }
    }
}

fn grpc_unimplemented() -> Response<Body> {
    super::status(crate::server::ServerError::Unimplemented(String::new())).into_http::<Body>()
}

/// The most of an unserved request's body read before answering (Go's `maxPostHandlerReadBytes`).
const UNREAD_BODY_DRAIN: usize = 256 << 10;

/// What the client port answers for paths nobody serves: gRPC's Unimplemented to a gRPC
/// call, as grpc-go does; Go's `http.NotFound` to anything else, as etcd's HTTP mux does.
pub async fn unimplemented(req: axum::extract::Request) -> Response<Body> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return grpc_unimplemented();
    }
    // Read what is left of the request first, as Go's server does (up to its 256 KiB): a
    // connection closed with a body unread is reset, and the client can lose the answer.
    let _ = axum::body::to_bytes(req.into_body(), UNREAD_BODY_DRAIN).await;
    let mut r = Response::new(Body::from("404 page not found\n"));
    *r.status_mut() = http::StatusCode::NOT_FOUND;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

/// What a listener knows of a connection's peer: a TLS listener the verified certificate's CN,
/// a plain one nothing.
pub trait ConnPeer {
    fn client_addr(&self) -> Option<&ClientAddr>;
}

impl ConnPeer for std::net::SocketAddr {
    fn client_addr(&self) -> Option<&ClientAddr> {
        None
    }
}

impl ConnPeer for tokio::net::unix::SocketAddr {
    fn client_addr(&self) -> Option<&ClientAddr> {
        None
    }
}

impl ConnPeer for ClientAddr {
    fn client_addr(&self) -> Option<&ClientAddr> {
        Some(self)
    }
}

/// What a client listener serves: everything (etcd's default), gRPC only (the
/// `--listen-client-urls` when `--listen-client-http-urls` is given), or HTTP only (those).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serves {
    All,
    Grpc,
    Http,
}

/// The client port's HTTP/2 settings, as etcd's gRPC server takes them from its flags.
#[derive(Debug, Clone, Copy)]
pub struct Http2 {
    /// `--max-concurrent-streams`.
    pub max_streams: u32,
    /// `--grpc-keepalive-interval`: a connection idle this long is pinged (`None`: never).
    pub keepalive_interval: Option<std::time::Duration>,
    /// `--grpc-keepalive-timeout`: an unanswered ping closes the connection after this.
    pub keepalive_timeout: std::time::Duration,
}

/// Serves the client port: HTTP/1 (the JSON gateway) and HTTP/2 (gRPC) on every accepted
/// connection, each with its own [`ClientService`]. A gRPC-only listener speaks HTTP/2 alone
/// and answers other paths Unimplemented; an HTTP-only one hands gRPC paths to the HTTP
/// router, which serves none of them.
///
/// Not `axum::serve`: its HTTP/2 settings are hyper's, and hyper allows 200 concurrent streams
/// per connection where etcd allows `--max-concurrent-streams` (2^32-1 by default). A client
/// that multiplexes many watches over one connection (kube-apiserver does) would see the
/// 201st stream wait forever.
pub async fn serve<L>(
    mut listener: L,
    svc: ClientService,
    http2: Http2,
    serves: Serves,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: ConnPeer,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(http2.max_streams)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(http2.keepalive_interval)
        .keep_alive_timeout(http2.keepalive_timeout);
    // gRPC needs HTTP/2; HTTP may come over either (ALPN picks h2 on TLS).
    let builder = match serves {
        Serves::Grpc => builder.http2_only(),
        Serves::All | Serves::Http => builder,
    };
    let svc = ClientService { serves, ..svc };
    loop {
        let (io, addr) = listener.accept().await;
        let svc = match addr.client_addr() {
            Some(peer) => svc.for_peer(peer),
            None => svc.clone(),
        };
        let svc = TowerToHyperService::new(
            svc.map_request(|r: Request<hyper::body::Incoming>| r.map(Body::new)),
        );
        let builder = builder.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(io);
            // hyper-util applies `http2_only` to plain connections, not upgradable ones.
            let served = match serves {
                Serves::Grpc => builder.serve_connection(io, svc).await,
                Serves::All | Serves::Http => builder.serve_connection_with_upgrades(io, svc).await,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "client connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_pick_the_grpc_service_or_the_http_router() {
        assert!(matches!(
            grpc_service("/etcdserverpb.KV/Put"),
            Some(Grpc::Kv)
        ));
        assert!(matches!(
            grpc_service("/grpc.health.v1.Health/Check"),
            Some(Grpc::Health)
        ));
        assert!(matches!(
            grpc_service("/v3electionpb.Election/Observe"),
            Some(Grpc::Election)
        ));
        // The gateway, the HTTP endpoints and unknown services are the router's.
        for path in [
            "/v3/kv/put",
            "/v3beta/watch",
            "/health",
            "/metrics",
            "/",
            "",
            "/etcdserverpb.KV",
            "/etcdserverpb.Nope/Put",
        ] {
            assert!(grpc_service(path).is_none(), "{path}");
        }
    }
}
