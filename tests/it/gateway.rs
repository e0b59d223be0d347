//! The JSON gateway: the same HTTP session against the real etcd and Ballast gives the same
//! JSON (IDs normalised), and errors come back as etcd's error object with its HTTP status.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::cluster::{Kind, Server};

/// `POST path` with a JSON body; returns (status, body).
fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    post_as(port, path, body, None)
}

/// [`post`] with an `Authorization` header carrying a token from `/v3/auth/authenticate`.
pub fn post_as(port: u16, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: {t}\r\n"))
        .unwrap_or_default();
    let headers = format!("Content-Type: application/json\r\n{auth}");
    let (code, _, body) = request(port, "POST", path, &headers, body);
    (code, body)
}

/// One HTTP/1.1 request on its own connection, `headers` each ending in CRLF: (status, the
/// response's head, its body with any chunked encoding removed).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // Trailers are dropped.
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (code, head.to_string(), body)
}

/// Replaces what differs between two clusters (IDs, terms, URLs, sizes) with placeholders.
pub fn normalise(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if [
                    "cluster_id",
                    "member_id",
                    "raft_term",
                    "ID",
                    "clientURLs",
                    "peerURLs",
                ]
                .contains(&k.as_str())
                {
                    *x = serde_json::Value::String("*".into());
                } else {
                    normalise(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(normalise),
        _ => {}
    }
}

fn session(s: &Server) -> Vec<String> {
    let steps: &[(&str, &str)] = &[
        ("/v3/kv/range", "{}"),
        ("/v3/kv/range", "garbage"),
        ("/v3/kv/range", r#"{"key":"#),
        ("/v3/kv/range", r#"{"unknown_field":1}"#),
        ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        (
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
        ),
        ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
        ("/v3beta/kv/range", r#"{"key":"Zm9v","keys_only":true}"#),
        (
            "/v3beta/kv/range",
            r#"{"key":"AA==","range_end":"AA==","count_only":true}"#,
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmF6"}],"success":[{"request_put":{"key":"YQ==","value":"Yg=="}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
        ),
        ("/v3/kv/range", r#"{"key":"Zm9v","revision":"99"}"#),
        ("/v3/kv/compaction", r#"{"revision":"2"}"#),
        ("/v3/kv/range", r#"{"key":"Zm9v","revision":"1"}"#),
        ("/v3/kv/deleterange", r#"{"key":"YQ==","prev_kv":true}"#),
        ("/v3/lease/grant", r#"{"TTL":"60"}"#),
        ("/v3/lease/grant", r#"{"TTL":"60","ID":"7"}"#),
        ("/v3/lease/keepalive", r#"{"ID":"7"}"#),
        ("/v3/lease/keepalive", r#"{"ID":"8"}"#),
        ("/v3/lease/revoke", r#"{"ID":"1"}"#),
        ("/v3/cluster/member/list", "{}"),
    ];
    steps
        .iter()
        .map(|(path, body)| {
            let (code, out) = post(s.port, path, body);
            let out = out.lines().next().unwrap_or("").to_string();
            let mut v: serde_json::Value =
                serde_json::from_str(&out).unwrap_or_else(|_| panic!("{path}: {out}"));
            normalise(&mut v);
            format!("{path} {body} -> {code} {v}")
        })
        .collect()
}

#[test]
fn gateway_session_matches_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let ballast = Server::start(Kind::Ballast, &[]);
    let a = session(&etcd);
    let b = session(&ballast);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y);
    }
    assert_eq!(a.len(), b.len());
    // Browsers' CORS preflight and headers, as etcd's gateway allows any origin.
    for srv in [&etcd, &ballast] {
        let mut c = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            c,
            "OPTIONS /v3/kv/range HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        c.read_to_string(&mut raw).unwrap();
        let raw = raw.to_ascii_lowercase();
        assert!(raw.starts_with("http/1.1 200"), "{raw}");
        assert!(raw.contains("access-control-allow-origin: *"), "{raw}");
        assert!(
            raw.contains("access-control-allow-methods: post, get, options, put, delete"),
            "{raw}"
        );
    }
    // etcd 3.4 dropped the /v3alpha prefix; Ballast still answers it for older clients.
    let (code, out) = post(ballast.port, "/v3alpha/kv/range", r#"{"key":"Zm9v"}"#);
    assert_eq!(code, 200, "{out}");
    assert!(out.contains(r#""kvs":[{"key":"Zm9v""#), "{out}");
}

/// Opens `/v3/watch`, makes two puts, returns the first three streamed lines.
fn watch_session(s: &Server) -> Vec<String> {
    let body = r#"{"create_request":{"key":"Zm9v","prev_kv":true}}"#;
    let mut w = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        w,
        "POST /v3/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    let mut buf = [0u8; 4096];
    let mut put_done = false;
    while raw.matches(r#"{"result""#).count() < 3 {
        let n = w.read(&mut buf).unwrap();
        assert!(n > 0, "watch stream ended: {raw}");
        raw.push_str(&String::from_utf8_lossy(&buf[..n]));
        if !put_done && raw.contains(r#""created":true"#) {
            post(s.port, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
            post(s.port, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmF6"}"#);
            put_done = true;
        }
    }
    raw.lines()
        .filter_map(|l| l.find(r#"{"result""#).map(|i| l[i..].to_string()))
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(&l).unwrap();
            normalise(&mut v);
            v.to_string()
        })
        .collect()
}

#[test]
fn gateway_watch_streams_like_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let ballast = Server::start(Kind::Ballast, &[]);
    let a = watch_session(&etcd);
    assert_eq!(a.len(), 3, "{a:?}");
    assert_eq!(a, watch_session(&ballast));
}

/// `/v3/maintenance/snapshot` streams the snapshot as `{"result":{"blob":...}}` lines, like
/// etcd's: the blobs joined are a file whose last 32 bytes are the SHA-256 of the rest (for
/// both servers), and Ballast's restores with ballastctl. `/v3/election/observe` streams the
/// leader as it is elected.
#[test]
fn gateway_streams_snapshots_and_election_leaders() {
    use base64::Engine;
    use sha2::Digest;
    let etcd = Server::start(Kind::Etcd, &[]);
    let ballast = Server::start(Kind::Ballast, &[]);
    for s in [&etcd, &ballast] {
        for i in 0..50 {
            let body = format!(
                r#"{{"key":"{}","value":"dg=="}}"#,
                base64::engine::general_purpose::STANDARD.encode(format!("k{i}"))
            );
            assert_eq!(post(s.port, "/v3/kv/put", &body).0, 200);
        }
        let (code, body) = post(s.port, "/v3/maintenance/snapshot", "{}");
        assert_eq!(code, 200, "{body}");
        let mut file = Vec::new();
        for line in body.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let blob = v["result"]["blob"].as_str().unwrap();
            file.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(blob)
                    .unwrap(),
            );
        }
        let (data, sum) = file.split_at(file.len() - 32);
        assert_eq!(sha2::Sha256::digest(data).as_slice(), sum);
        if s.kind == Kind::Ballast {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("snap.db");
            std::fs::write(&path, &file).unwrap();
            let p = path.to_str().unwrap();
            let out = crate::differential::ballastctl(
                &s.endpoint(),
                &["snapshot", "status", p, "-w", "json"],
                None,
            );
            assert_eq!(out.2, 0, "{out:?}");
            let st: serde_json::Value = serde_json::from_str(out.0.trim()).unwrap();
            assert_eq!(st["revision"], 51, "{st}");
        }
    }

    // Observe: the first streamed line names the leader a campaign just made.
    let ctl = crate::cluster::bin_dir().join("ballastctl");
    let elect = crate::cluster::ctl_bg(&ctl, &ballast.endpoint(), &["elect", "e", "v1"], 10.0);
    let body = r#"{"name":"ZQ=="}"#;
    let mut w = TcpStream::connect(("127.0.0.1", ballast.port)).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        w,
        "POST /v3/election/observe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    let mut buf = [0u8; 4096];
    while !raw.contains("}}\n") {
        let n = w.read(&mut buf).unwrap();
        assert!(n > 0, "observe stream ended: {raw}");
        raw.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let line = &raw[raw.find(r#"{"result""#).unwrap()..];
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["result"]["kv"]["value"], "djE=", "{v}");
    assert!(
        v["result"]["kv"]["key"]
            .as_str()
            .unwrap()
            .starts_with("ZS8"),
        "{v}"
    );
    let _ = crate::cluster::finish(elect);
}

/// `--max-concurrent-streams 3`: with three gateway watches open (each on its own
/// connection), a fourth gateway call waits, as on etcd 3.4 and 3.7 (whose gateway reaches
/// the gRPC server over one internal connection); it completes once a watch ends.
#[test]
fn gateway_calls_wait_for_a_stream_slot_like_etcd() {
    let observe = |kind: Kind| -> (bool, u16) {
        let s = Server::start(kind, &["--max-concurrent-streams=3"]);
        let body = r#"{"create_request":{"key":"Zm9v"}}"#;
        let mut watches: Vec<TcpStream> = (0..3)
            .map(|_| {
                let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
                write!(
                    c,
                    "POST /v3/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                c
            })
            .collect();
        // Each watch has started once its created response arrives.
        for c in &mut watches {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 256];
            assert!(c.read(&mut buf).unwrap() > 0);
        }
        let put = r#"{"key":"Zm9v","value":"YmFy"}"#;
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        write!(
            c,
            "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{put}",
            put.len()
        )
        .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        let answered_while_full = c.read(&mut buf).is_ok_and(|n| n > 0);
        // One watch ends: the waiting put gets its slot.
        drop(watches.remove(0));
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        let text = String::from_utf8_lossy(&rest).to_string();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (answered_while_full, code)
    };
    for kind in [Kind::Etcd, Kind::Etcd37, Kind::Ballast] {
        assert_eq!(observe(kind), (false, 200), "{kind:?}");
    }
}

/// `--listen-client-http-urls` (etcd 3.5+): HTTP (health, the gateway) on those URLs only,
/// and gRPC only on `--listen-client-urls`, as etcd 3.7 splits them.
#[test]
fn listen_client_http_urls_split_http_from_grpc_like_etcd() {
    let observe = |kind: Kind| {
        let http_port = crate::cluster::free_port();
        let flag = format!("--listen-client-http-urls=http://127.0.0.1:{http_port}");
        let mut s = Server::unstarted(kind, &[&flag]);
        s.launch();
        // Health answers on the HTTP URL only.
        let start = std::time::Instant::now();
        while crate::cluster::http_get(http_port, "/health").map(|r| r.0) != Some(200) {
            assert!(start.elapsed() < Duration::from_secs(20), "{}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let health_http = crate::cluster::http_get(http_port, "/health").map(|r| r.0);
        let health_grpc = crate::cluster::http_get(s.port, "/health").map(|r| r.0);
        let (gw, _) = post(http_port, "/v3/kv/put", r#"{"key":"YQ==","value":"Yg=="}"#);
        let ctl = crate::cluster::ctl_of(kind);
        let put = |port: u16| {
            crate::cluster::run_ctl(
                ctl.clone(),
                &format!("127.0.0.1:{port}"),
                &["--dial-timeout=1s", "--command-timeout=2s", "put", "k", "v"],
                None,
            )
            .2
        };
        (
            health_http,
            health_grpc.unwrap_or(0),
            gw,
            put(s.port),
            put(http_port) != 0,
        )
    };
    let etcd = observe(Kind::Etcd37);
    assert_eq!(etcd, (Some(200), 0, 200, 0, true), "etcd 3.7");
    assert_eq!(observe(Kind::Ballast), etcd, "Ballast");
}
