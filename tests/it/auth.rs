//! Authentication and authorisation: an etcdctl user/role/auth session that prints what it
//! prints against the real etcd (with etcdctl and with ballastctl), permission checks on every
//! service (compared with etcd where etcd 3.4 checks them), simple tokens across members and
//! their expiry, JWTs, and the JSON gateway's `Authorization` header.

use std::time::Duration;

use ballast_api::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
    watch_request::RequestUnion, AuthRoleAddRequest, AuthenticateRequest, DefragmentRequest,
    HashKvRequest, LeaseGrantRequest, LeaseRevokeRequest, MemberAddRequest, PutRequest,
    RangeRequest, SnapshotRequest, StatusRequest, WatchCreateRequest, WatchRequest,
};
use ballast_api::v3electionpb::{election_client::ElectionClient, CampaignRequest};
use ballast_api::v3lockpb::{lock_client::LockClient, LockRequest};
use tonic::transport::Channel;

use crate::cluster::{etcdctl, Cluster, Kind, Server};
use crate::differential::{ballastctl, run_session_with, Step};

const ROOT: &str = "--user=root:pw";
const ALICE: &str = "--user=alice:x";

/// Auth from nothing to enabled, users and roles managed, permissions exercised by a
/// restricted user, root's protections, and back to disabled.
const AUTH_SESSION: &[Step] = &[
    (&["auth", "enable"], None),
    (&["user", "add", "root:pw"], None),
    (&["user", "get", "root"], None),
    (&["role", "get", "root"], None),
    (&["auth", "enable"], None),
    (&["auth", "enable"], None),
    (&["put", "a", "b"], None),
    (&[ROOT, "put", "a", "b"], None),
    (&["--user=root:bad", "put", "a", "b"], None),
    (&["--user=nobody:pw", "get", "a"], None),
    (&["--user=root", "--password=pw", "get", "a"], None),
    (&[ROOT, "user", "add", "alice:x"], None),
    (&[ROOT, "user", "add", "alice:x"], None),
    (&[ROOT, "user", "add", ":x"], None),
    (
        &[ROOT, "user", "add", "bob", "--interactive=false"],
        Some("bobpw\n"),
    ),
    (&[ROOT, "role", "add", "ro"], None),
    (&[ROOT, "role", "add", "ro"], None),
    (&[ROOT, "role", "add", ""], None),
    (
        &[ROOT, "role", "grant-permission", "ro", "read", "foo"],
        None,
    ),
    (
        &[
            ROOT,
            "role",
            "grant-permission",
            "ro",
            "readwrite",
            "--prefix",
            "pre/",
        ],
        None,
    ),
    (
        &[ROOT, "role", "grant-permission", "ro", "write", "a", "z"],
        None,
    ),
    (
        &[
            ROOT,
            "role",
            "grant-permission",
            "ro",
            "READ",
            "--from-key",
            "k",
        ],
        None,
    ),
    (
        &[ROOT, "role", "grant-permission", "ro", "bogus", "x"],
        None,
    ),
    (
        &[ROOT, "role", "grant-permission", "nope", "read", "x"],
        None,
    ),
    (&[ROOT, "role", "grant-permission", "ro", "read"], None),
    (
        &[
            ROOT,
            "role",
            "grant-permission",
            "ro",
            "read",
            "x",
            "y",
            "--prefix",
        ],
        None,
    ),
    (&[ROOT, "role", "get", "ro"], None),
    (&[ROOT, "-w", "json", "role", "get", "ro"], None),
    (&[ROOT, "user", "grant-role", "alice", "ro"], None),
    (&[ROOT, "user", "grant-role", "alice", "ro"], None),
    (&[ROOT, "user", "grant-role", "alice", "nope"], None),
    (&[ROOT, "user", "grant-role", "ghost", "ro"], None),
    (&[ROOT, "user", "get", "alice", "--detail"], None),
    (&[ROOT, "-w", "json", "user", "get", "alice"], None),
    (&[ROOT, "-w", "table", "user", "list"], None),
    (&[ALICE, "get", "foo"], None),
    (&[ALICE, "put", "foo", "1"], None),
    (&[ALICE, "put", "pre/1", "1"], None),
    (&[ALICE, "put", "b", "2"], None),
    (&[ALICE, "get", "b"], None),
    (&[ALICE, "get", "pre/", "--prefix"], None),
    (&[ALICE, "get", "", "--prefix"], None),
    (&[ALICE, "del", "foo"], None),
    (&[ALICE, "del", "pre/1", "--prev-kv"], None),
    (
        &[ALICE, "txn"],
        Some("value(\"foo\") = \"x\"\n\nput pre/2 2\n\nput b 3\n\n"),
    ),
    (
        &[ALICE, "txn"],
        Some("value(\"b\") = \"x\"\n\nput pre/3 3\n\n\n"),
    ),
    (&[ALICE, "user", "list"], None),
    (&[ALICE, "role", "get", "ro"], None),
    (&[ALICE, "role", "get", "root"], None),
    (&[ALICE, "user", "get", "alice"], None),
    (&[ALICE, "user", "get", "root"], None),
    (&[ALICE, "user", "add", "eve:x"], None),
    (&["--user=bob:bobpw", "get", "foo"], None),
    (&[ROOT, "role", "list"], None),
    (&[ROOT, "user", "list"], None),
    (&[ROOT, "-w", "json", "user", "list"], None),
    (&[ROOT, "role", "revoke-permission", "ro", "foo"], None),
    (&[ROOT, "role", "revoke-permission", "ro", "foo"], None),
    (
        &[ROOT, "role", "revoke-permission", "ro", "--prefix", "pre/"],
        None,
    ),
    (&[ROOT, "role", "revoke-permission", "ro", "a", "z"], None),
    (&[ROOT, "role", "get", "ro"], None),
    (&[ROOT, "user", "revoke-role", "alice", "ro"], None),
    (&[ROOT, "user", "revoke-role", "alice", "ro"], None),
    (
        &[ROOT, "user", "passwd", "alice", "--interactive=false"],
        Some("y\n"),
    ),
    (&[ALICE, "get", "foo"], None),
    (&["--user=alice:y", "get", "foo"], None),
    (&[ROOT, "user", "delete", "alice"], None),
    (&[ROOT, "user", "delete", "alice"], None),
    (&[ROOT, "role", "delete", "ro"], None),
    (&[ROOT, "role", "delete", "ro"], None),
    (&[ROOT, "user", "delete", "root"], None),
    (&[ROOT, "role", "delete", "root"], None),
    (&[ROOT, "user", "revoke-role", "root", "root"], None),
    (&["endpoint", "health"], None),
    (&[ROOT, "compaction", "2"], None),
    (&[ROOT, "defrag"], None),
    (&[ROOT, "auth", "disable"], None),
    (&["auth", "disable"], None),
    (&["user", "list"], None),
    (&[ROOT, "put", "x", "y"], None),
    (&["get", "", "--prefix", "--keys-only"], None),
];

#[test]
fn etcdctl_auth_session_matches_etcd() {
    run_session_with(etcdctl, etcdctl, AUTH_SESSION, &["--bcrypt-cost=4"]);
}

/// ballastctl follows etcdctl 3.7, so it is compared with etcdctl 3.7 against etcd 3.7.
#[test]
fn ballastctl_auth_session_matches_etcdctl() {
    crate::differential::run_session_on(
        crate::cluster::Kind::Etcd37,
        crate::cluster::etcdctl37,
        ballastctl,
        AUTH_SESSION,
        &["--bcrypt-cost=4"],
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A request carrying `token` as etcd clients send it.
fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if !token.is_empty() {
        r.metadata_mut().insert("token", token.parse().unwrap());
    }
    r
}

async fn login(ch: &Channel, name: &str, password: &str) -> Result<String, tonic::Status> {
    let r = AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    Ok(AuthClient::new(ch.clone())
        .authenticate(r)
        .await?
        .into_inner()
        .token)
}

fn outcome<T>(r: Result<tonic::Response<T>, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// Root with password "pw"; "alice" (password "x") may read and write `a/` and read `r/`.
fn set_up_auth(ep: &str) {
    let steps: &[&[&str]] = &[
        &["user", "add", "root:pw"],
        &["user", "add", "alice:x"],
        &["role", "add", "a"],
        &[
            "role",
            "grant-permission",
            "a",
            "readwrite",
            "--prefix",
            "a/",
        ],
        &["role", "grant-permission", "a", "read", "--prefix", "r/"],
        &["user", "grant-role", "alice", "a"],
        &["put", "b/1", "x"],
        &["auth", "enable"],
    ];
    for s in steps {
        let out = etcdctl(ep, s, None);
        assert_eq!(out.2, 0, "{s:?}: {out:?}");
    }
}

/// What a restricted user gets from each KV, Watch, Lease and Cluster call etcd 3.4 guards.
async fn guarded_calls(ep: &str) -> Vec<String> {
    let ch = channel(ep).await;
    let alice = login(&ch, "alice", "x").await.unwrap();
    let root = login(&ch, "root", "pw").await.unwrap();
    let mut kv = KvClient::new(ch.clone());
    let put = |k: &str| PutRequest {
        key: k.into(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let get = |k: &str, end: &str| RangeRequest {
        key: k.into(),
        range_end: end.into(),
        ..Default::default()
    };
    let mut out = vec![
        outcome(kv.put(with_token(put("a/1"), &alice)).await),
        outcome(kv.put(with_token(put("r/1"), &alice)).await),
        outcome(kv.put(with_token(put("b/1"), &alice)).await),
        outcome(kv.put(tonic::Request::new(put("a/1"))).await),
        outcome(kv.put(with_token(put("a/1"), "bogus.1")).await),
        outcome(kv.range(with_token(get("r/", "r0"), &alice)).await),
        outcome(kv.range(with_token(get("a/", "b"), &alice)).await),
        outcome(kv.range(with_token(get("b/1", ""), &alice)).await),
        outcome(kv.range(with_token(get("b/1", ""), &root)).await),
    ];
    // A lease carrying a key alice may not write cannot be revoked by her, nor extended
    // with her keys.
    let mut lease = LeaseClient::new(ch.clone());
    let id = lease
        .lease_grant(with_token(LeaseGrantRequest { ttl: 60, id: 0 }, &root))
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut leased = put("b/2");
    leased.lease = id;
    kv.put(with_token(leased, &root)).await.unwrap();
    let mut mine = put("a/2");
    mine.lease = id;
    out.push(outcome(kv.put(with_token(mine, &alice)).await));
    out.push(outcome(
        lease
            .lease_revoke(with_token(LeaseRevokeRequest { id }, &alice))
            .await,
    ));
    out.push(outcome(
        lease
            .lease_revoke(with_token(LeaseRevokeRequest { id }, &root))
            .await,
    ));
    // Watching outside her roles is refused in the created response.
    let mut w = WatchClient::new(ch.clone());
    for key in ["b/", "a/"] {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.into(),
                range_end: format!("{}0", &key[..1]).into_bytes(),
                ..Default::default()
            })),
        };
        let req = with_token(tokio_stream::iter(vec![create]), &alice);
        let mut s = w.watch(req).await.unwrap().into_inner();
        let first = s.message().await.unwrap().unwrap();
        out.push(format!(
            "watch {key}: created={} canceled={} id={} reason={}",
            first.created, first.canceled, first.watch_id, first.cancel_reason
        ));
    }
    // Membership changes need root.
    let add = MemberAddRequest {
        peer_ur_ls: vec!["http://127.0.0.1:1".into()],
        is_learner: true,
    };
    out.push(outcome(
        ClusterClient::new(ch.clone())
            .member_add(with_token(add, &alice))
            .await,
    ));
    // Auth management too.
    out.push(outcome(
        AuthClient::new(ch.clone())
            .role_add(with_token(AuthRoleAddRequest { name: "x".into() }, &alice))
            .await,
    ));
    out
}

/// Every guarded KV, Watch, Lease, Cluster and Auth call answers a restricted, an anonymous and
/// a wrongly-tokened caller exactly as etcd does.
#[test]
fn permission_checks_match_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let ballast = Server::start(Kind::Ballast, &["--bcrypt-cost=4"]);
    set_up_auth(&etcd.endpoint());
    set_up_auth(&ballast.endpoint());
    let rt = rt();
    let want = rt.block_on(guarded_calls(&etcd.endpoint()));
    let got = rt.block_on(guarded_calls(&ballast.endpoint()));
    assert_eq!(got, want);
    // The outcomes are what they should be, not only the same.
    assert_eq!(got[0], "ok");
    assert_eq!(got[1], "PermissionDenied: etcdserver: permission denied");
    assert_eq!(got[3], "InvalidArgument: etcdserver: user name is empty");
    assert_eq!(got[4], "Unauthenticated: etcdserver: invalid auth token");
    assert!(got
        .iter()
        .any(|l| l.starts_with("watch b/: created=true canceled=true")));
}

/// Maintenance, Lock and Election: admin-only maintenance (etcd 3.4 reports these denials
/// as raw `Unknown` errors; Ballast gives the gRPC codes etcd 3.5+ gives), Status for anyone,
/// and the lock and election recipes under the caller's key permissions.
#[test]
fn maintenance_lock_and_election_are_guarded() {
    let s = Server::start(Kind::Ballast, &["--bcrypt-cost=4"]);
    set_up_auth(&s.endpoint());
    rt().block_on(async {
        let ch = channel(&s.endpoint()).await;
        let alice = login(&ch, "alice", "x").await.unwrap();
        let root = login(&ch, "root", "pw").await.unwrap();
        let mut m = MaintenanceClient::new(ch.clone());
        let denied = "PermissionDenied: etcdserver: permission denied";
        assert_eq!(
            outcome(m.defragment(with_token(DefragmentRequest {}, &alice)).await),
            denied
        );
        assert_eq!(
            outcome(
                m.hash_kv(with_token(HashKvRequest { revision: 0 }, &alice))
                    .await
            ),
            denied
        );
        assert_eq!(
            outcome(m.snapshot(with_token(SnapshotRequest {}, &alice)).await),
            denied
        );
        assert_eq!(
            outcome(m.snapshot(tonic::Request::new(SnapshotRequest {})).await),
            "InvalidArgument: etcdserver: user name is empty"
        );
        assert_eq!(
            outcome(m.status(with_token(StatusRequest {}, &alice)).await),
            "ok"
        );
        assert_eq!(
            outcome(
                m.hash_kv(with_token(HashKvRequest { revision: 0 }, &root))
                    .await
            ),
            "ok"
        );
        let mut lock = LockClient::new(ch.clone());
        let mut lease = LeaseClient::new(ch.clone());
        let id = lease
            .lease_grant(with_token(LeaseGrantRequest { ttl: 60, id: 0 }, &alice))
            .await
            .unwrap()
            .into_inner()
            .id;
        let lock_on = |name: &str| LockRequest {
            name: name.into(),
            lease: id,
        };
        assert_eq!(
            outcome(lock.lock(with_token(lock_on("b/l"), &alice)).await),
            denied
        );
        assert_eq!(
            outcome(lock.lock(with_token(lock_on("a/l"), &alice)).await),
            "ok"
        );
        let campaign = |name: &str| CampaignRequest {
            name: name.into(),
            lease: id,
            value: b"me".to_vec(),
        };
        let mut e = ElectionClient::new(ch.clone());
        assert_eq!(
            outcome(e.campaign(with_token(campaign("r/e"), &alice)).await),
            denied
        );
        assert_eq!(
            outcome(e.campaign(with_token(campaign("a/e"), &alice)).await),
            "ok"
        );
    });
}

/// A simple token issued by one member works on every member (it is issued through raft), is
/// void once its user's password changes, and expires after `--auth-token-ttl` unused.
#[test]
fn simple_tokens_work_on_every_member_and_expire() {
    let c = Cluster::start(Kind::Ballast, 3, &["--bcrypt-cost=4", "--auth-token-ttl=3"]);
    let eps = c.endpoints();
    set_up_auth(&eps[0]);
    rt().block_on(async {
        let chans = [
            channel(&eps[0]).await,
            channel(&eps[1]).await,
            channel(&eps[2]).await,
        ];
        let put = || PutRequest {
            key: b"a/k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let token = login(&chans[0], "alice", "x").await.unwrap();
        assert!(token
            .rsplit_once('.')
            .is_some_and(|(p, i)| p.len() == 16 && i.parse::<u64>().is_ok()));
        for ch in &chans {
            let r = KvClient::new(ch.clone())
                .put(with_token(put(), &token))
                .await;
            assert_eq!(outcome(r), "ok");
        }
        // Unused for longer than the TTL: gone everywhere.
        tokio::time::sleep(Duration::from_millis(4500)).await;
        for ch in &chans {
            let r = KvClient::new(ch.clone())
                .put(with_token(put(), &token))
                .await;
            assert_eq!(
                outcome(r),
                "Unauthenticated: etcdserver: invalid auth token"
            );
        }
        // Kept alive by use; killed by a password change.
        let token = login(&chans[1], "alice", "x").await.unwrap();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let r = KvClient::new(chans[1].clone())
                .put(with_token(put(), &token))
                .await;
            assert_eq!(outcome(r), "ok");
        }
        let out = etcdctl(
            &eps[2],
            &[ROOT, "user", "passwd", "alice", "--interactive=false"],
            Some("new\n"),
        );
        assert_eq!(out.2, 0, "{out:?}");
        let r = KvClient::new(chans[1].clone())
            .put(with_token(put(), &token))
            .await;
        assert_eq!(
            outcome(r),
            "Unauthenticated: etcdserver: invalid auth token"
        );
        assert!(login(&chans[0], "alice", "x").await.is_err());
        assert!(login(&chans[0], "alice", "new").await.is_ok());
    });
}

/// `--auth-token jwt`: tokens are ES256-signed JWTs any member holding the public key
/// verifies; one from before an auth change is refused as stale, one signed by another key
/// or past its `ttl` is invalid.
#[test]
fn jwt_tokens_are_verified_go_stale_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (pubf, privf) = (dir.path().join("jwt.pub"), dir.path().join("jwt.key"));
    std::fs::write(&pubf, key.public_key_pem()).unwrap();
    std::fs::write(&privf, key.serialize_pem()).unwrap();
    let opt = format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256,ttl=2s",
        pubf.display(),
        privf.display()
    );
    let s = Server::start(Kind::Ballast, &["--bcrypt-cost=4", &opt]);
    set_up_auth(&s.endpoint());
    rt().block_on(async {
        let ch = channel(&s.endpoint()).await;
        let mut kv = KvClient::new(ch.clone());
        let put = || PutRequest {
            key: b"a/k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let token = login(&ch, "alice", "x").await.unwrap();
        assert_eq!(token.split('.').count(), 3, "{token}");
        assert_eq!(outcome(kv.put(with_token(put(), &token)).await), "ok");
        // A forged signature.
        let (head, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{head}.AAAA");
        assert_eq!(
            outcome(kv.put(with_token(put(), &forged)).await),
            "Unauthenticated: etcdserver: invalid auth token"
        );
        // Any auth change makes earlier JWTs stale (they carry the revision).
        let root = login(&ch, "root", "pw").await.unwrap();
        AuthClient::new(ch.clone())
            .role_add(with_token(AuthRoleAddRequest { name: "z".into() }, &root))
            .await
            .unwrap();
        assert_eq!(
            outcome(kv.put(with_token(put(), &token)).await),
            "InvalidArgument: etcdserver: revision of auth store is old"
        );
        let token = login(&ch, "alice", "x").await.unwrap();
        assert_eq!(outcome(kv.put(with_token(put(), &token)).await), "ok");
        tokio::time::sleep(Duration::from_millis(3200)).await;
        assert_eq!(
            outcome(kv.put(with_token(put(), &token)).await),
            "Unauthenticated: etcdserver: invalid auth token"
        );
    });
}

/// The JSON gateway's auth routes and `Authorization` header give what etcd's gateway gives
/// (tokens and IDs aside).
#[test]
fn gateway_auth_session_matches_etcd() {
    fn session(s: &Server) -> Vec<String> {
        let mut token = String::new();
        let mut out = Vec::new();
        let steps: &[(&str, &str, bool)] = &[
            (
                "/v3/auth/user/add",
                r#"{"name":"root","password":"pw"}"#,
                false,
            ),
            ("/v3/auth/role/add", r#"{"name":"root"}"#, false),
            (
                "/v3/auth/user/grant",
                r#"{"user":"root","role":"root"}"#,
                false,
            ),
            ("/v3/auth/user/get", r#"{"name":"root"}"#, false),
            ("/v3/auth/enable", "{}", false),
            ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#, false),
            (
                "/v3/auth/authenticate",
                r#"{"name":"root","password":"bad"}"#,
                false,
            ),
            (
                "/v3/auth/authenticate",
                r#"{"name":"root","password":"pw"}"#,
                false,
            ),
            ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#, true),
            ("/v3/kv/range", r#"{"key":"Zm9v"}"#, true),
            ("/v3/auth/role/list", "{}", true),
            ("/v3/auth/user/list", "{}", true),
            ("/v3/auth/role/get", r#"{"role":"root"}"#, true),
            ("/v3/auth/disable", "{}", true),
            ("/v3/kv/range", r#"{"key":"Zm9v"}"#, false),
        ];
        for (path, body, auth) in steps {
            let t = auth.then_some(token.as_str());
            let (code, text) = crate::gateway::post_as(s.port, path, body, t);
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(t) = v.get("token").and_then(|t| t.as_str()) {
                token = t.to_string();
                v["token"] = "TOKEN".into();
            }
            crate::gateway::normalise(&mut v);
            out.push(format!("{path} {code} {v}"));
        }
        out
    }
    let etcd = Server::start(Kind::Etcd, &[]);
    let ballast = Server::start(Kind::Ballast, &["--bcrypt-cost=4"]);
    let want = session(&etcd);
    let got = session(&ballast);
    assert_eq!(got, want);
    assert!(got[8].starts_with("/v3/kv/put 200"), "{}", got[8]);
    assert!(got[5].starts_with("/v3/kv/put 400"), "{}", got[5]);
}

/// Users, roles, permissions and the enabled flag come along when an etcd snapshot is
/// restored into Ballast: the restored member answers the same auth questions as etcd did.
#[test]
fn an_etcd_snapshot_brings_its_users_roles_and_permissions() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let ep = etcd.endpoint();
    let setup: &[&[&str]] = &[
        &["user", "add", "root:pw"],
        &["role", "add", "ro"],
        &["role", "grant-permission", "ro", "read", "--prefix", "pub/"],
        &["role", "grant-permission", "ro", "readwrite", "mine"],
        &["user", "add", "alice:x"],
        &["user", "grant-role", "alice", "ro"],
        &["put", "pub/a", "1"],
        &["auth", "enable"],
    ];
    for args in setup {
        let out = etcdctl(&ep, args, None);
        assert_eq!(out.2, 0, "{args:?}: {out:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.db");
    let file_s = file.to_str().unwrap();
    let saved = etcdctl(&ep, &[ROOT, "snapshot", "save", file_s], None);
    assert_eq!(saved.2, 0, "{saved:?}");
    // What etcd answers, asked as root and as alice.
    let questions: &[&[&str]] = &[
        &[ROOT, "user", "list"],
        &[ROOT, "user", "get", "alice"],
        &[ROOT, "role", "get", "ro"],
        &[ALICE, "get", "pub/a", "--print-value-only"],
        &[ALICE, "put", "mine", "v"],
        &[ALICE, "put", "pub/a", "2"],
        &["get", "pub/a"],
    ];
    let answers = |e: &str| -> Vec<(String, String, i32)> {
        questions
            .iter()
            .map(|q| {
                let (out, err, code) = etcdctl(e, q, None);
                // The last line of an error carries etcd's message; the rest is client noise.
                let err = err.lines().last().unwrap_or("").to_string();
                (out, err, code)
            })
            .collect()
    };
    let want = answers(&ep);
    drop(etcd);

    let restored = crate::cluster::restored_member(Kind::Ballast, &file, &[]);
    let got = answers(&restored.endpoint());
    for ((q, w), g) in questions.iter().zip(&want).zip(&got) {
        assert_eq!(g, w, "{q:?}");
    }
}
