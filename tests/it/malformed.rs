//! Hostile request bodies, sent as raw bytes to the real etcd and to Ballast: both must answer
//! with the same gRPC code, neither may crash, and a rejected request changes nothing.

use ballast_api::etcdserverpb::{
    compare, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::cluster::{Kind, Server};

/// Passes request and response bodies through untouched.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A ready gRPC client for raw calls to `endpoint`.
async fn raw_client(endpoint: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    grpc
}

async fn call(endpoint: &str, method: &'static str, body: Vec<u8>) -> Result<Bytes, tonic::Status> {
    let mut grpc = raw_client(endpoint).await;
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(Bytes::from(body)), path, Raw)
        .await
        .map(|r| r.into_inner())
}

/// What a response says that must agree between servers: the code, or the keys and revision.
fn outcome(r: Result<Bytes, tonic::Status>, method: &str) -> String {
    match r {
        Err(s) => format!("error {:?}", s.code()),
        Ok(b) if method.ends_with("/Range") => {
            let resp = ballast_api::etcdserverpb::RangeResponse::decode(b).unwrap();
            let keys: Vec<String> = resp
                .kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect();
            format!("ok keys={keys:?} count={}", resp.count)
        }
        Ok(b) if method.ends_with("/Txn") => {
            let resp = ballast_api::etcdserverpb::TxnResponse::decode(b).unwrap();
            format!(
                "ok succeeded={} rev={}",
                resp.succeeded,
                resp.header.unwrap().revision
            )
        }
        Ok(_) => "ok".into(),
    }
}

fn range_all(sort_order: i32, sort_target: i32) -> Vec<u8> {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        sort_order,
        sort_target,
        ..Default::default()
    }
    .encode_to_vec()
}

fn txn_with_compare(target: i32, result: i32) -> Vec<u8> {
    TxnRequest {
        compare: vec![Compare {
            key: b"b".to_vec(),
            target,
            result,
            target_union: Some(compare::TargetUnion::Version(1)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(ballast_api::etcdserverpb::request_op::Request::RequestPut(
                PutRequest {
                    key: b"txn-ok".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                },
            )),
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn malformed_and_unknown_values_match_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let ballast = Server::start(Kind::Ballast, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let put = |k: &str, v: &str| {
        PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }
        .encode_to_vec()
    };
    const RANGE: &str = "/etcdserverpb.KV/Range";
    const PUT: &str = "/etcdserverpb.KV/Put";
    const TXN: &str = "/etcdserverpb.KV/Txn";
    let cases: Vec<(&str, &'static str, Vec<u8>)> = vec![
        ("seed c", PUT, put("c", "3")),
        ("seed a", PUT, put("a", "1")),
        ("seed b", PUT, put("b", "22")),
        ("truncated length", PUT, vec![0x0a, 0x05, b'k']),
        ("garbage", RANGE, vec![0xff, 0xff, 0xff, 0xff]),
        ("key as varint", PUT, vec![0x08, 0x01]),
        ("unterminated varint", TXN, vec![0x08, 0x80, 0x80]),
        (
            "unknown field is ignored",
            RANGE,
            [range_all(0, 0), vec![0xf8, 0x06, 0x01]].concat(),
        ),
        ("unknown compare target", TXN, txn_with_compare(99, 0)),
        ("unknown compare result", TXN, txn_with_compare(0, 99)),
        ("after the noise", RANGE, range_all(0, 0)),
    ];
    let mut diffs = Vec::new();
    for (name, method, body) in cases {
        let want = outcome(
            rt.block_on(call(&etcd.endpoint(), method, body.clone())),
            method,
        );
        let got = outcome(rt.block_on(call(&ballast.endpoint(), method, body)), method);
        if want != got {
            diffs.push(format!("{name}: etcd {want} / ballast {got}"));
        }
    }
    assert!(diffs.is_empty(), "differences:\n{}", diffs.join("\n"));

    // etcd 3.4 panics applying unknown sort enums; 3.5 added the up-front check Ballast follows.
    let nested = |order, target| {
        TxnRequest {
            success: vec![RequestOp {
                request: Some(
                    ballast_api::etcdserverpb::request_op::Request::RequestRange(
                        RangeRequest::decode(range_all(order, target).as_slice()).unwrap(),
                    ),
                ),
            }],
            ..Default::default()
        }
        .encode_to_vec()
    };
    for (method, body) in [
        (RANGE, range_all(99, 0)),
        (RANGE, range_all(1, 99)),
        (RANGE, range_all(0, 42)),
        (RANGE, range_all(-1, 2)),
        (TXN, nested(0, 7)),
    ] {
        let err = rt
            .block_on(call(&ballast.endpoint(), method, body))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "etcdserver: invalid sort option");
    }
    let after = outcome(
        rt.block_on(call(&ballast.endpoint(), RANGE, range_all(0, 0))),
        RANGE,
    );
    assert!(after.starts_with("ok keys=[\"a\", \"b\", \"c\""), "{after}");
}

/// A bidirectional call with raw bodies: sends `msgs`, half-closes, and returns the first
/// response or the error.
async fn stream_call(
    endpoint: &str,
    method: &'static str,
    msgs: Vec<Vec<u8>>,
) -> Result<Option<Bytes>, tonic::Status> {
    let mut grpc = raw_client(endpoint).await;
    let path = http::uri::PathAndQuery::from_static(method);
    let input = tokio_stream::iter(msgs.into_iter().map(Bytes::from));
    let mut out = grpc
        .streaming(tonic::Request::new(input), path, Raw)
        .await?
        .into_inner();
    tokio::time::timeout(std::time::Duration::from_secs(5), out.message())
        .await
        .unwrap_or(Ok(None))
}

/// What a hostile stream got: the code, or whether anything came back.
fn stream_outcome(r: Result<Option<Bytes>, tonic::Status>) -> String {
    match r {
        Err(s) => format!("error {:?}", s.code()),
        Ok(Some(_)) => "response".into(),
        Ok(None) => "end".into(),
    }
}

/// Oversize requests, garbage on a stream and a half-closed watch stream get what etcd gives
/// them, and the server keeps serving everyone else.
#[test]
fn hostile_streams_match_etcd_and_others_keep_being_served() {
    use ballast_api::etcdserverpb::watch_client::WatchClient;
    use ballast_api::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};

    let etcd = Server::start(Kind::Etcd, &[]);
    let ballast = Server::start(Kind::Ballast, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let big = PutRequest {
        key: b"big".to_vec(),
        value: vec![b'x'; 4 << 20],
        ..Default::default()
    }
    .encode_to_vec();
    const PUT: &str = "/etcdserverpb.KV/Put";
    const RANGE: &str = "/etcdserverpb.KV/Range";
    const WATCH: &str = "/etcdserverpb.Watch/Watch";
    const KEEPALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
    let mut diffs = Vec::new();
    for (name, run) in [
        ("oversize put", 0),
        ("garbage on a watch stream", 1),
        ("garbage on a keep-alive stream", 2),
        ("oversize message on a watch stream", 3),
    ] {
        let go = |ep: String| {
            let big = big.clone();
            rt.block_on(async move {
                match run {
                    0 => outcome(call(&ep, PUT, big).await, PUT),
                    1 => stream_outcome(stream_call(&ep, WATCH, vec![vec![0xff; 7]]).await),
                    2 => stream_outcome(stream_call(&ep, KEEPALIVE, vec![vec![0x08, 0x80]]).await),
                    _ => stream_outcome(stream_call(&ep, WATCH, vec![big]).await),
                }
            })
        };
        let (want, got) = (go(etcd.endpoint()), go(ballast.endpoint()));
        if want != got {
            diffs.push(format!("{name}: etcd {want} / ballast {got}"));
        }
    }
    assert!(diffs.is_empty(), "differences:\n{}", diffs.join("\n"));
    let message = |ep: String| {
        let big = big.clone();
        rt.block_on(async move { call(&ep, PUT, big).await.unwrap_err().message().to_string() })
    };
    assert_eq!(message(ballast.endpoint()), message(etcd.endpoint()));

    // A client that half-closes its watch stream keeps receiving events, as from etcd.
    for server in [&etcd, &ballast] {
        let ep = format!("http://{}", server.endpoint());
        let got = rt.block_on(async {
            let mut w = WatchClient::connect(ep.clone()).await.unwrap();
            let create = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: b"half".to_vec(),
                        ..Default::default()
                    },
                )),
            };
            let mut events = w
                .watch(tokio_stream::iter(vec![create]))
                .await
                .unwrap()
                .into_inner();
            let created = events.message().await.unwrap().unwrap();
            assert!(created.created);
            let put = PutRequest {
                key: b"half".to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            };
            call(&server.endpoint(), PUT, put.encode_to_vec())
                .await
                .unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(5), events.message())
                .await
                .ok()
                .and_then(|m| m.ok().flatten())
                .map(|r| r.events.len())
        });
        assert_eq!(got, Some(1), "{:?} after a half-close", server.kind);
    }
    let after = outcome(
        rt.block_on(call(&ballast.endpoint(), RANGE, range_all(0, 0))),
        RANGE,
    );
    assert!(after.starts_with("ok keys=[\"half\"]"), "{after}");
}
