//! Moving a 3-member etcd cluster to Ballast and back, step by step as
//! docs/migrating-from-etcd.md tells operators: `etcdctl snapshot save`, stop etcd,
//! `ballastctl snapshot restore` on each member with the same names and peer URLs, start
//! Ballast; then `ballastctl snapshot save`, `etcdutl snapshot restore`, start etcd again.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::{
    ctl_bg, etcd37_tool, finish, free_port, restored_cluster, run_ctl, Cluster, Kind, Server,
};

const ROOT: &str = "--user=root:pw";

/// etcd 3.7's etcdctl, the operator's client for both servers, as root: stdout on success.
fn ctl(ep: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut all = vec![ROOT];
    all.extend_from_slice(args);
    let out = run_ctl(etcd37_tool("etcdctl"), ep, &all, stdin);
    assert_eq!(out.2, 0, "etcdctl {args:?}: {out:?}");
    out.0
}

fn json(ep: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-w", "json"]);
    serde_json::from_str(&ctl(ep, &all, None)).unwrap()
}

/// What a migration must keep, read from one cluster: every key with its revisions now and
/// at an older revision, the revision, each member's HashKV, the auth setup, the lease, and
/// the events a watch from before the migration replays.
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    kvs: serde_json::Value,
    kvs_at_old: serde_json::Value,
    hashes: Vec<(i64, i64, i64)>,
    users: String,
    reader_role: String,
    alice: (String, String),
    leases: String,
    watched: String,
}

const WATCH_FROM: i64 = 12;

fn observe(eps: &[String]) -> Observed {
    let ep = &eps[0];
    let all = json(ep, &["get", "", "--prefix"]);
    let revision = all["header"]["revision"].as_i64().unwrap();
    let hashes = eps
        .iter()
        .map(|e| {
            let h = json(e, &["endpoint", "hashkv"]);
            let h = &h[0]["HashKV"];
            (
                h["hash"].as_i64().unwrap(),
                h["hash_revision"].as_i64().unwrap(),
                h["compact_revision"].as_i64().unwrap(),
            )
        })
        .collect();
    let alice_read = run_ctl(
        etcd37_tool("etcdctl"),
        ep,
        &["--user=alice:pw", "get", "a/01", "--print-value-only"],
        None,
    );
    let alice_write = run_ctl(
        etcd37_tool("etcdctl"),
        ep,
        &["--user=alice:pw", "put", "a/01", "no"],
        None,
    );
    let watch = ctl_bg(
        &etcd37_tool("etcdctl"),
        ep,
        &[
            ROOT,
            "watch",
            "--prefix",
            "a/",
            "--rev",
            &WATCH_FROM.to_string(),
        ],
        3.0,
    );
    Observed {
        revision,
        kvs: all["kvs"].clone(),
        kvs_at_old: json(ep, &["get", "", "--prefix", "--rev", "15"])["kvs"].clone(),
        hashes,
        users: ctl(ep, &["user", "list"], None),
        reader_role: ctl(ep, &["role", "get", "reader"], None),
        // The client's last line: its logged retries carry timestamps.
        alice: (
            alice_read.0,
            alice_write.1.lines().last().unwrap_or("").to_string(),
        ),
        leases: ctl(ep, &["lease", "list"], None),
        watched: finish(watch).0,
    }
}

/// A client's history: puts, overwrites, deletes, a txn, a compaction, a lease, users and a
/// role with a permission, and auth enabled.
fn write_history(ep: &str) {
    let put = |k: &str, v: &str| ctl(ep, &["put", k, v], None);
    for i in 0..20 {
        put(&format!("a/{i:02}"), &format!("v{i}"));
    }
    put("a/01", "again");
    ctl(ep, &["del", "a/02"], None);
    let txn = "value(\"a/03\") = \"v3\"\n\nput a/03 txn\ndel a/04\n\nput never x\n\n";
    assert!(ctl(ep, &["txn"], Some(txn)).starts_with("SUCCESS"));
    ctl(ep, &["compaction", "10"], None);
    let lease = ctl(ep, &["lease", "grant", "3600"], None);
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    ctl(ep, &["put", "leased", "v", "--lease", &id], None);
    for i in 20..30 {
        put(&format!("a/{i:02}"), &format!("v{i}"));
    }
    for args in [
        &["user", "add", "root:pw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:pw"],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "a/",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "reader"],
    ] {
        let out = run_ctl(etcd37_tool("etcdctl"), ep, args, None);
        assert_eq!(out.2, 0, "{args:?}: {out:?}");
    }
    ctl(ep, &["auth", "enable"], None);
}

/// Every member restored from `snapshot` with `kind`'s tool, started, and serving.
fn restore_and_start(kind: Kind, snapshot: &Path, ports: &[(u16, u16)]) -> Vec<Server> {
    let members = restored_cluster(kind, snapshot, ports, &[]);
    let eps: Vec<String> = members.iter().map(Server::endpoint).collect();
    // Serving means a linearizable read answers on every member.
    for ep in &eps {
        ctl(ep, &["get", "a/00"], None);
    }
    members
}

/// The end-to-end migration: etcd 3.7 (3 members) → Ballast (3 members) → etcd 3.7, each
/// move by the documented procedure, and each cluster serving exactly what the first did.
#[test]
fn a_three_member_etcd_cluster_moves_to_ballast_and_back() {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let dir = tempfile::tempdir().unwrap();
    let etcd = Cluster::start_on(Kind::Etcd37, &ports, &[]);
    let eps = etcd.endpoints();
    write_history(&eps[0]);
    let before = observe(&eps);
    assert_eq!(before.hashes.len(), 3);
    assert!(before.watched.contains("a/12"), "{}", before.watched);
    assert_eq!(before.alice.0, "again\n", "alice reads a/");
    assert_eq!(before.alice.1, "Error: etcdserver: permission denied");
    assert!(
        before.leases.starts_with("found 1 leases"),
        "{}",
        before.leases
    );

    // etcd → Ballast: save, stop every member, restore each, start.
    let saved = dir.path().join("etcd.db");
    ctl(
        &eps[1],
        &["snapshot", "save", saved.to_str().unwrap()],
        None,
    );
    let stopped = Instant::now();
    for mut m in etcd.members {
        m.terminate();
    }
    let ballast = restore_and_start(Kind::Ballast, &saved, &ports);
    let downtime = stopped.elapsed();
    eprintln!("etcd -> Ballast, 3 members: downtime {downtime:?}");
    assert!(downtime < Duration::from_secs(60));
    let on_ballast = observe(&ports_eps(&ports));
    assert_eq!(on_ballast, before, "Ballast serves what etcd served");

    // Ballast → etcd: the same procedure with Ballast's snapshot.
    let back = dir.path().join("ballast.db");
    ctl(&eps[2], &["snapshot", "save", back.to_str().unwrap()], None);
    let stopped = Instant::now();
    for mut m in ballast {
        m.terminate();
    }
    let etcd_again = restore_and_start(Kind::Etcd37, &back, &ports);
    eprintln!(
        "Ballast -> etcd, 3 members: downtime {:?}",
        stopped.elapsed()
    );
    let on_etcd = observe(&ports_eps(&ports));
    assert_eq!(on_etcd, before, "etcd serves again what it served");
    drop(etcd_again);
}

fn ports_eps(ports: &[(u16, u16)]) -> Vec<String> {
    ports
        .iter()
        .map(|(c, _)| format!("127.0.0.1:{c}"))
        .collect()
}
