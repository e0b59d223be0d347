//! The JSON gateway (grpc-gateway's `/v3/...` HTTP API): `POST` a request message as proto3
//! JSON (proto field names, int64 as strings, bytes as base64), get the response message
//! back the same way, or etcd's error object with grpc-gateway's HTTP status. Each route calls
//! the same service code as gRPC. `/v3beta` and `/v3alpha` are aliases, as in etcd 3.4.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use ballast_api::etcdserverpb::auth_server::Auth;
use ballast_api::etcdserverpb::cluster_server::Cluster;
use ballast_api::etcdserverpb::kv_server::Kv;
use ballast_api::etcdserverpb::lease_server::Lease;
use ballast_api::etcdserverpb::maintenance_server::Maintenance;
use ballast_api::etcdserverpb::{LeaseKeepAliveRequest, WatchRequest};
use ballast_api::v3electionpb::election_server::Election;
use ballast_api::v3lockpb::lock_server::Lock;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use crate::rpc::auth::AuthService;
use crate::rpc::cluster::ClusterService;
use crate::rpc::concurrency::{ElectionService, LockService};
use crate::rpc::kv::KvService;
use crate::rpc::lease::LeaseService;
use crate::rpc::maintenance::MaintenanceService;
use crate::server::EtcdServer;

/// grpc-gateway's mapping from gRPC codes to HTTP statuses.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// etcd's gateway error object.
fn error(code: Code, msg: &str) -> Response {
    let body = serde_json::json!({"error": msg, "message": msg, "code": code as i32});
    (http_status(code), axum::Json(body)).into_response()
}

/// A JSON decoding error in the words of Go's `encoding/json` where clients may match them
/// (a body that is not JSON at all, or cut short); otherwise serde's description.
fn json_error(body: &[u8], e: &serde_json::Error) -> String {
    if e.is_eof() {
        return "unexpected EOF".into();
    }
    if e.is_syntax() && e.to_string().starts_with("expected value") {
        let text = String::from_utf8_lossy(body);
        let c = text
            .lines()
            .nth(e.line().saturating_sub(1))
            .and_then(|l| l.chars().nth(e.column().saturating_sub(1)));
        if let Some(c) = c {
            return format!("invalid character '{c}' looking for beginning of value");
        }
    }
    e.to_string()
}

/// The `Authorization` header: a token from `/v3/auth/authenticate`, as etcd's gateway
/// passes it on.
fn token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// The request message from a body (empty means the default message), with the caller's
/// token; or why a body does not decode, in Go's words.
fn request<Req: DeserializeOwned + Default>(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<tonic::Request<Req>, String> {
    let msg = if body.iter().all(u8::is_ascii_whitespace) {
        Req::default()
    } else {
        serde_json::from_slice::<Req>(body).map_err(|e| json_error(body, &e))?
    };
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token(headers).and_then(|t| t.parse().ok()) {
        req.metadata_mut().insert("authorization", t);
    }
    Ok(req)
}

/// Decodes the body (empty means the default message), runs `f`, encodes the answer.
async fn call<Req, Resp, F, Fut>(headers: axum::http::HeaderMap, body: Bytes, f: F) -> Response
where
    Req: DeserializeOwned + Default + Send,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req = match request(&headers, &body) {
        Ok(r) => r,
        Err(why) => return error(Code::InvalidArgument, &why),
    };
    match f(req).await {
        Ok(r) => axum::Json(r.into_inner()).into_response(),
        Err(s) => error(s.code(), s.message()),
    }
}

/// `POST /v3/watch`: the body holds one or more `WatchRequest`s; the response streams each
/// `WatchResponse` as `{"result":...}` on its own line (grpc-gateway's stream format) until
/// the client goes away.
async fn watch(server: Arc<EtcdServer>, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    let mut reqs = Vec::new();
    for r in serde_json::Deserializer::from_slice(&body).into_iter::<WatchRequest>() {
        match r {
            Ok(r) => reqs.push(Ok(r)),
            Err(e) => return error(Code::InvalidArgument, &json_error(&body, &e)),
        }
    }
    let creds = crate::auth::Credentials {
        token: token(&headers),
        cn: None,
    };
    let stream = crate::rpc::watch::serve(server, creds, tokio_stream::iter(reqs));
    lines(stream.map(|r| r.map(crate::watch::Frame::into_response)))
}

/// A server stream in grpc-gateway's format: each message as `{"result":...}` on its own
/// line, an error as `{"error":{...}}`, flushed as they come.
fn lines<T: Serialize + Send + 'static>(
    stream: impl tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static,
) -> Response {
    let out = stream.map(|r| {
        let line = match r {
            Ok(resp) => serde_json::json!({ "result": resp }),
            Err(s) => serde_json::json!({ "error": {
                "grpc_code": s.code() as i32,
                "http_code": http_status(s.code()).as_u16(),
                "message": s.message(),
                "http_status": http_status(s.code()).canonical_reason().unwrap_or(""),
            }}),
        };
        Ok::<_, std::convert::Infallible>(Bytes::from(format!("{line}\n")))
    });
    let mut resp = Response::new(axum::body::Body::from_stream(out));
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A server-streaming route (snapshot, election observe): one request message in the body,
/// the stream's messages out as [`lines`]; an error before the stream starts is etcd's
/// error object, as for unary routes.
async fn server_stream<Req, Resp, S, F, Fut>(
    headers: axum::http::HeaderMap,
    body: Bytes,
    f: F,
) -> Response
where
    Req: DeserializeOwned + Default + Send,
    Resp: Serialize + Send + 'static,
    S: tokio_stream::Stream<Item = Result<Resp, Status>> + Send + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    let req = match request(&headers, &body) {
        Ok(r) => r,
        Err(why) => return error(Code::InvalidArgument, &why),
    };
    match f(req).await {
        Ok(r) => lines(r.into_inner()),
        Err(s) => error(s.code(), s.message()),
    }
}

/// `POST /v3/lease/keepalive`: each `LeaseKeepAliveRequest` in the body is answered with a
/// `{"result":...}` line; the response ends with the requests, as the gateway's does.
async fn keep_alive(server: Arc<EtcdServer>, body: Bytes) -> Response {
    let mut lines = String::new();
    for r in serde_json::Deserializer::from_slice(&body).into_iter::<LeaseKeepAliveRequest>() {
        let r = match r {
            Ok(r) => r,
            Err(e) => return error(Code::InvalidArgument, &json_error(&body, &e)),
        };
        match crate::rpc::lease::keep_alive_response(&server, r.id).await {
            Ok(resp) => {
                lines.push_str(&format!("{}\n", serde_json::json!({ "result": resp })));
            }
            Err(s) => return error(s.code(), s.message()),
        }
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        lines,
    )
        .into_response()
}

/// A CORS preflight: allowed (the headers come from [`cors`]).
async fn preflight() -> StatusCode {
    StatusCode::OK
}

/// etcd's gateway allows any origin (its `--cors` default).
async fn cors(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-headers",
        axum::http::HeaderValue::from_static("accept, content-type, authorization"),
    );
    h.insert(
        "access-control-allow-methods",
        axum::http::HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert(
        "access-control-allow-origin",
        axum::http::HeaderValue::from_static("*"),
    );
    resp
}

/// One route: `POST <prefix><path>` calls `$svc.$method`.
macro_rules! routes {
    ($router:ident, $prefix:expr, $( $path:literal => $svc:ident . $method:ident ),* $(,)?) => {
        $(
            let svc = $svc.clone();
            $router = $router.route(
                &format!("{}{}", $prefix, $path),
                post(move |headers: axum::http::HeaderMap, body: Bytes| {
                    let svc = svc.clone();
                    async move {
                        call(headers, body, |r| async move { svc.$method(r).await }).await
                    }
                })
                .options(preflight),
            );
        )*
    };
}

/// Every unary route of the etcd v3 API, under `/v3`, `/v3beta` and `/v3alpha`.
pub fn router(server: Arc<EtcdServer>) -> Router {
    let kv = Arc::new(KvService {
        server: server.clone(),
    });
    let lease = Arc::new(LeaseService {
        server: server.clone(),
    });
    let cluster = Arc::new(ClusterService {
        server: server.clone(),
    });
    let maintenance = Arc::new(MaintenanceService {
        server: server.clone(),
    });
    let lock = Arc::new(LockService {
        server: server.clone(),
    });
    let election = Arc::new(ElectionService {
        server: server.clone(),
    });
    let auth = Arc::new(AuthService {
        server: server.clone(),
    });
    let mut r = Router::new();
    for prefix in ["/v3", "/v3beta", "/v3alpha"] {
        let s = server.clone();
        r = r.route(
            &format!("{prefix}/watch"),
            post(move |headers: axum::http::HeaderMap, body: Bytes| {
                watch(s.clone(), headers, body)
            })
            .options(preflight),
        );
        let m = maintenance.clone();
        r =
            r.route(
                &format!("{prefix}/maintenance/snapshot"),
                post(move |headers: axum::http::HeaderMap, body: Bytes| {
                    let m = m.clone();
                    async move {
                        server_stream(headers, body, |r| async move { m.snapshot(r).await }).await
                    }
                })
                .options(preflight),
            );
        let e = election.clone();
        r =
            r.route(
                &format!("{prefix}/election/observe"),
                post(move |headers: axum::http::HeaderMap, body: Bytes| {
                    let e = e.clone();
                    async move {
                        server_stream(headers, body, |r| async move { e.observe(r).await }).await
                    }
                })
                .options(preflight),
            );
        let s = server.clone();
        r = r.route(
            &format!("{prefix}/lease/keepalive"),
            post(move |body: Bytes| keep_alive(s.clone(), body)).options(preflight),
        );
        routes!(r, prefix,
            "/kv/range" => kv.range,
            "/kv/put" => kv.put,
            "/kv/deleterange" => kv.delete_range,
            "/kv/txn" => kv.txn,
            "/kv/compaction" => kv.compact,
            "/lease/grant" => lease.lease_grant,
            "/lease/revoke" => lease.lease_revoke,
            "/kv/lease/revoke" => lease.lease_revoke,
            "/lease/timetolive" => lease.lease_time_to_live,
            "/kv/lease/timetolive" => lease.lease_time_to_live,
            "/lease/leases" => lease.lease_leases,
            "/kv/lease/leases" => lease.lease_leases,
            "/cluster/member/add" => cluster.member_add,
            "/cluster/member/remove" => cluster.member_remove,
            "/cluster/member/update" => cluster.member_update,
            "/cluster/member/list" => cluster.member_list,
            "/cluster/member/promote" => cluster.member_promote,
            "/maintenance/alarm" => maintenance.alarm,
            "/maintenance/status" => maintenance.status,
            "/maintenance/defragment" => maintenance.defragment,
            "/maintenance/hash" => maintenance.hash,
            "/maintenance/hashkv" => maintenance.hash_kv,
            "/maintenance/transfer-leadership" => maintenance.move_leader,
            "/maintenance/downgrade" => maintenance.downgrade,
            "/lock/lock" => lock.lock,
            "/lock/unlock" => lock.unlock,
            "/election/campaign" => election.campaign,
            "/election/proclaim" => election.proclaim,
            "/election/leader" => election.leader,
            "/election/resign" => election.resign,
            "/auth/enable" => auth.auth_enable,
            "/auth/disable" => auth.auth_disable,
            "/auth/status" => auth.auth_status,
            "/auth/authenticate" => auth.authenticate,
            "/auth/user/add" => auth.user_add,
            "/auth/user/get" => auth.user_get,
            "/auth/user/list" => auth.user_list,
            "/auth/user/delete" => auth.user_delete,
            "/auth/user/changepw" => auth.user_change_password,
            "/auth/user/grant" => auth.user_grant_role,
            "/auth/user/revoke" => auth.user_revoke_role,
            "/auth/role/add" => auth.role_add,
            "/auth/role/get" => auth.role_get,
            "/auth/role/list" => auth.role_list,
            "/auth/role/delete" => auth.role_delete,
            "/auth/role/grant" => auth.role_grant_permission,
            "/auth/role/revoke" => auth.role_revoke_permission,
        );
    }
    let r = r.layer(axum::middleware::map_response(cors));
    // etcd's gateway reaches its gRPC server over one internal client connection, so at most
    // `--max-concurrent-streams` gateway calls run at once and the rest wait for a slot.
    match server.cfg.max_concurrent_streams {
        u32::MAX => r,
        n => {
            let slots = Arc::new(tokio::sync::Semaphore::new(n as usize));
            r.layer(axum::middleware::from_fn_with_state(slots, stream_slot))
        }
    }
}

/// Holds one of the gateway's stream slots until the response body has been sent (a watch
/// holds it for as long as it runs).
async fn stream_slot(
    axum::extract::State(slots): axum::extract::State<Arc<tokio::sync::Semaphore>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(permit) = slots.acquire_owned().await else {
        return error(Code::Unavailable, "etcdserver: server stopped");
    };
    let (parts, body) = next.run(req).await.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(body))
}
