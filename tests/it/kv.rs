//! KV behaviour through the `etcd-client` crate: results and etcd's exact error statuses.

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp,
};

use crate::cluster::{Kind, Server};

async fn client(s: &Server) -> Client {
    Client::connect([s.endpoint()], None).await.unwrap()
}

fn status_of(e: etcd_client::Error) -> (tonic_code::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            (tonic_code::from(s.code() as i32), s.message().to_string())
        }
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// gRPC codes by number, so this test does not depend on tonic's version.
mod tonic_code {
    #[derive(Debug, PartialEq, Eq)]
    pub enum Code {
        InvalidArgument,
        NotFound,
        OutOfRange,
        Other(i32),
    }
    pub fn from(c: i32) -> Code {
        match c {
            3 => Code::InvalidArgument,
            5 => Code::NotFound,
            11 => Code::OutOfRange,
            n => Code::Other(n),
        }
    }
}
use tonic_code::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_semantics_and_errors() {
    let s = Server::start(
        Kind::Ballast,
        &["--max-txn-ops", "4", "--max-request-bytes", "4096"],
    );
    let mut c = client(&s).await;

    let r = c.put("a", "1", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 2);
    c.put("b", "2", None).await.unwrap();
    c.put("c", "3", None).await.unwrap();
    let r = c
        .put("a", "10", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(r.prev_key().unwrap().value(), b"1");
    assert_eq!(r.header().unwrap().revision(), 5);

    // Prefix, limit + more, count, sort, keys-only, historic read.
    let g = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(g.kvs().len(), 2);
    assert!(g.more());
    assert_eq!(g.count(), 3);
    let g = c
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Mod, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<_> = g
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["a", "c", "b"]);
    let g = c
        .get("a", Some(GetOptions::new().with_keys_only()))
        .await
        .unwrap();
    assert!(g.kvs()[0].value().is_empty());
    let g = c
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap();
    assert_eq!(g.kvs()[0].value(), b"1");
    assert_eq!(g.kvs()[0].version(), 1);
    let g = c
        .get("a", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!((g.kvs()[0].version(), g.kvs()[0].create_revision()), (2, 2));
    let g = c
        .get(
            "",
            Some(GetOptions::new().with_from_key().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((g.count(), g.kvs().len()), (3, 0));
    let g = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_min_mod_revision(4)),
        )
        .await
        .unwrap();
    assert_eq!(g.kvs().len(), 2);

    // Txn: compare and branch, nested txn.
    let t = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "10")])
        .and_then([TxnOp::put("b", "20", None), TxnOp::get("b", None)])
        .or_else([TxnOp::delete("b", None)]);
    let r = c.txn(t).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 6);
    let t = Txn::new()
        .when([Compare::version("zzz", CompareOp::Greater, 0)])
        .or_else([TxnOp::get("a", None)]);
    assert!(!c.txn(t).await.unwrap().succeeded());
    let t = Txn::new().when([Compare::value("zzz", CompareOp::Equal, "")]);
    assert!(
        !c.txn(t).await.unwrap().succeeded(),
        "value compare on a missing key fails"
    );

    // Delete with prev_kv and ranges.
    let d = c
        .delete(
            "a",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!((d.deleted(), d.prev_kvs().len()), (1, 1));
    let d = c.delete("nothing", None).await.unwrap();
    assert_eq!(d.deleted(), 0);
    assert_eq!(
        d.header().unwrap().revision(),
        7,
        "a no-op delete does not bump the revision"
    );

    // etcd's errors, code and message.
    let e = c.put("", "x", None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::InvalidArgument,
            "etcdserver: key is not provided".into()
        )
    );
    let e = c
        .put("a", "x", Some(PutOptions::new().with_lease(42)))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    let e = c
        .put("nokey", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (Code::InvalidArgument, "etcdserver: key not found".into())
    );
    let e = c
        .put("b", "x", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::InvalidArgument,
            "etcdserver: value is provided".into()
        )
    );
    let many: Vec<TxnOp> = (0..5)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let e = c.txn(Txn::new().and_then(many)).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request".into()
        )
    );
    let e = c
        .txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request".into()
        )
    );
    let e = c.put("big", vec![b'x'; 5000], None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::InvalidArgument,
            "etcdserver: request is too large".into()
        )
    );
    let e = c
        .get("a", Some(GetOptions::new().with_revision(1000)))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );

    // A failed txn changed nothing.
    assert_eq!(c.get("d", None).await.unwrap().kvs().len(), 0);

    // Compaction.
    c.compact(5, None).await.unwrap();
    let e = c
        .get("b", Some(GetOptions::new().with_revision(4)))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    let e = c.compact(5, None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    let e = c.compact(100, None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
    let g = c
        .get("b", Some(GetOptions::new().with_revision(5)))
        .await
        .unwrap();
    assert_eq!(
        g.kvs()[0].value(),
        b"2",
        "the newest revision at the compaction point survives"
    );

    // Status reports the etcd API version and the raft state.
    let st = c.status().await.unwrap();
    assert_eq!(st.version(), "3.7.0");
    assert_eq!(st.leader(), st.header().unwrap().member_id());
    assert!(st.raft_index() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_the_auth_service() {
    let s = Server::start(Kind::Ballast, &[]);
    let (code, body) = crate::cluster::http_get(s.port, "/health").unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    let (_, body) = crate::cluster::http_get(s.port, "/version").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["etcdserver"], "3.7.0");
    assert!(v["ballast"].is_string());
    let mut c = client(&s).await;
    // Every service is implemented: Auth answers with etcd's error for an unknown role.
    match c.role_get("r").await {
        Err(etcd_client::Error::GRpcStatus(st)) => {
            assert_eq!(st.code(), tonic::Code::FailedPrecondition);
            assert_eq!(st.message(), "etcdserver: role name not found");
        }
        other => panic!("expected role not found: {other:?}"),
    }
}

/// What a RangeStream call gave: each chunk as (keys, first key, last key, header revision,
/// more, count), or the error's code and message. Header IDs and terms are left out.
type Streamed = Result<Vec<(usize, Vec<u8>, Vec<u8>, Option<i64>, bool, i64)>, (i32, String)>;

async fn range_stream(ep: &str, req: ballast_api::etcdserverpb::RangeRequest) -> Streamed {
    use ballast_api::etcdserverpb::kv_client::KvClient;
    let ch = tonic::transport::Channel::from_shared(format!("http://{ep}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(ch).max_decoding_message_size(64 << 20);
    let status = |s: tonic::Status| (s.code() as i32, s.message().to_string());
    let mut stream = kv.range_stream(req).await.map_err(status)?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(status)? {
        let r = chunk.range_response.unwrap_or_default();
        let key = |i: Option<&ballast_api::mvccpb::KeyValue>| i.map(|kv| kv.key.clone());
        out.push((
            r.kvs.len(),
            key(r.kvs.first()).unwrap_or_default(),
            key(r.kvs.last()).unwrap_or_default(),
            r.header.map(|h| h.revision),
            r.more,
            r.count,
        ));
    }
    Ok(out)
}

/// `KV.RangeStream` as etcd 3.7 answers it, chunk for chunk on the same data with the same
/// `--max-request-bytes`: chunk sizes growing from 10 keys, the header, `more` and `count` on
/// the last chunk only, a total limit, `count_only` in one message, a pinned old revision, a
/// compacted revision, and `Unimplemented` for a sort order or a revision filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_stream_matches_etcd_37() {
    use ballast_api::etcdserverpb::range_request::SortOrder as Order;
    use ballast_api::etcdserverpb::RangeRequest;
    let flags = ["--max-request-bytes", "65536"];
    let etcd = Server::start(Kind::Etcd37, &flags);
    let ballast = Server::start(Kind::Ballast, &flags);
    let value = "v".repeat(1000);
    for s in [&etcd, &ballast] {
        let mut c = client(s).await;
        for i in 0..300 {
            c.put(format!("k{i:03}"), value.clone(), None)
                .await
                .unwrap();
        }
        c.delete("k007", None).await.unwrap();
        c.compact(100, None).await.unwrap();
        c.put("z", "after", None).await.unwrap();
    }
    // The keys used here end in a letter: their prefix end is the last byte plus one.
    let prefix = |key: &str| {
        let mut end = key.as_bytes().to_vec();
        if let Some(b) = end.last_mut() {
            *b += 1;
        }
        RangeRequest {
            key: key.into(),
            range_end: end,
            ..Default::default()
        }
    };
    let requests = vec![
        prefix("k"),
        RangeRequest {
            limit: 55,
            ..prefix("k")
        },
        RangeRequest {
            count_only: true,
            ..prefix("k")
        },
        RangeRequest {
            keys_only: true,
            serializable: true,
            ..prefix("k")
        },
        RangeRequest {
            revision: 250,
            ..prefix("k")
        },
        RangeRequest {
            revision: 50,
            ..prefix("k")
        },
        RangeRequest {
            sort_order: Order::Descend as i32,
            ..prefix("k")
        },
        RangeRequest {
            min_mod_revision: 5,
            ..prefix("k")
        },
        prefix("nothing"),
    ];
    for req in requests {
        let want = range_stream(&etcd.endpoint(), req.clone()).await;
        let got = range_stream(&ballast.endpoint(), req.clone()).await;
        assert_eq!(got, want, "Ballast, then etcd 3.7, for {req:?}");
    }
    let whole = range_stream(&ballast.endpoint(), prefix("k"))
        .await
        .unwrap();
    assert!(whole.len() > 3, "several chunks: {whole:?}");
    assert_eq!(whole.iter().map(|c| c.0).sum::<usize>(), 299);
    // Go clientv3 3.7's `KV.GetStream` sees the same chunks from both, and the same error for
    // a compacted revision.
    let go = |s: &Server, args: &[&str]| {
        let out = std::process::Command::new(crate::cluster::etcd37_tool("getstream"))
            .arg(format!("--endpoint={}", s.endpoint()))
            .args(args)
            .output()
            .expect("run getstream");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    for args in [
        &["--prefix=k"][..],
        &["--prefix=k", "--rev=250"],
        &["--prefix=k", "--rev=50"],
        &["--prefix=k", "--count-only"],
        &["--prefix=k", "--keys-only"],
        &["--prefix=nothing"],
    ] {
        let want = go(&etcd, args);
        assert!(!want.is_empty(), "{args:?}");
        assert_eq!(
            go(&ballast, args),
            want,
            "Ballast, then etcd 3.7, for {args:?}"
        );
    }
    assert!(go(&ballast, &["--prefix=k", "--rev=50"])
        .contains("etcdserver: mvcc: required revision has been compacted"));
}

/// Resident memory of process `pid`, in bytes (0 once it is gone).
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A unary `Range` whose answer is far larger than Ballast builds in memory (it is written
/// while read): the same key-values, `more`, `count` and revision as etcd for a whole prefix,
/// a limit, keys only and an old revision, through a gRPC client and the real etcdctl; and
/// eight such reads at once grow the member's RSS by a fraction of one answer, where
/// building each answer whole costs at least their sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_unary_ranges_match_etcd_and_are_not_held_in_memory() {
    use ballast_api::etcdserverpb::kv_client::KvClient;
    use ballast_api::etcdserverpb::RangeRequest;
    const KEYS: usize = 400;
    const VALUE: usize = 60 << 10;
    let etcd = Server::start(Kind::Etcd, &[]);
    let ballast = Server::start(Kind::Ballast, &[]);
    for s in [&etcd, &ballast] {
        let mut c = client(s).await;
        for i in 0..KEYS {
            let value = format!("{i:05}").repeat(VALUE / 5);
            c.put(format!("big/{i:04}"), value, None).await.unwrap();
        }
        for i in (0..KEYS).step_by(7) {
            c.put(format!("big/{i:04}"), "rewritten", None)
                .await
                .unwrap();
        }
        c.delete("big/0003", None).await.unwrap();
        c.put("bigger", "outside", None).await.unwrap();
    }
    let prefix = RangeRequest {
        key: b"big/".to_vec(),
        range_end: b"big0".to_vec(),
        ..Default::default()
    };
    let kv = |s: &Server| {
        let ep = format!("http://{}", s.endpoint());
        async move {
            let ch = tonic::transport::Channel::from_shared(ep)
                .unwrap()
                .connect()
                .await
                .unwrap();
            KvClient::new(ch).max_decoding_message_size(256 << 20)
        }
    };
    let requests = [
        prefix.clone(),
        RangeRequest {
            limit: 300,
            ..prefix.clone()
        },
        RangeRequest {
            keys_only: true,
            ..prefix.clone()
        },
        RangeRequest {
            revision: 250,
            ..prefix.clone()
        },
    ];
    for req in requests {
        let mut answers = Vec::new();
        for s in [&etcd, &ballast] {
            let r = kv(s).await.range(req.clone()).await.unwrap().into_inner();
            let rev = r.header.map(|h| h.revision);
            answers.push((rev, r.more, r.count, r.kvs));
        }
        assert!(answers[0].3.len() > 200, "a large answer");
        assert!(
            answers[1] == answers[0],
            "Ballast differs from etcd for {req:?}"
        );
    }
    let out = |s: &Server| {
        let (out, err, code) =
            crate::cluster::etcdctl(&s.endpoint(), &["get", "big/", "--prefix"], None);
        assert_eq!(code, 0, "{err}");
        out
    };
    let want = out(&etcd);
    assert!(want.len() > 16 << 20, "{} bytes", want.len());
    assert!(out(&ballast) == want, "etcdctl get --prefix differs");

    // Eight whole-prefix reads at once, while a sampler keeps the member's peak RSS.
    let pid = ballast.child.as_ref().map(|c| c.id()).unwrap();
    // The member runs with glibc's arenas capped (it executed itself again, same pid).
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|v| v == b"MALLOC_ARENA_MAX=4"),
        "MALLOC_ARENA_MAX not set"
    );
    let before = rss_bytes(pid);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes(pid));
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak
        })
    };
    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut c = kv(&ballast).await;
        let req = prefix.clone();
        readers.push(tokio::spawn(async move {
            let r = c.range(req).await.unwrap().into_inner();
            r.kvs.iter().map(|kv| kv.value.len()).sum::<usize>()
        }));
    }
    let mut read = 0;
    for r in readers {
        read += r.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let answer = read / 8;
    assert!(answer > 16 << 20, "{answer} bytes per answer");
    let grown = peak.saturating_sub(before);
    assert!(
        grown < answer as u64,
        "RSS grew {} MiB for 8 reads of {} MiB each",
        grown >> 20,
        answer >> 20
    );
}
