//! Moving etcd clusters to Ballast, as docs/migrating-from-etcd.md tells operators: by
//! snapshot (`etcdctl snapshot save`, stop etcd, `ballastctl snapshot restore` on each member
//! with the same names and peer URLs, start Ballast; and back the same way), or in place
//! (stop etcd, start Ballast with the same flags on the same data directories).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::{
    ctl_bg, etcd37_tool, finish, free_port, restored_cluster, run_ctl, Cluster, Kind, Server,
};

const ROOT: &str = "--user=root:pw";

/// etcd 3.7's etcdctl, the operator's client for both servers, as root: stdout on success.
fn ctl(ep: &str, args: &[&str], stdin: Option<&str>) -> String {
    ctl_as(Some(ROOT), ep, args, stdin)
}

/// etcdctl 3.7 with `user` (`--user=...`) when given, or none for a server without auth.
fn ctl_as(user: Option<&str>, ep: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut all: Vec<&str> = user.into_iter().collect();
    all.extend_from_slice(args);
    let out = run_ctl(etcd37_tool("etcdctl"), ep, &all, stdin);
    assert_eq!(out.2, 0, "etcdctl {args:?}: {out:?}");
    out.0
}

fn json(ep: &str, args: &[&str]) -> serde_json::Value {
    json_as(Some(ROOT), ep, args)
}

/// [`ctl_as`] with `-w json`, parsed.
fn json_as(user: Option<&str>, ep: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-w", "json"]);
    serde_json::from_str(&ctl_as(user, ep, &all, None)).unwrap()
}

/// What a migration must keep, read from one cluster: every key with its revisions now and
/// at an older revision, the revision, each member's HashKV, the auth setup, the lease, and
/// the events a watch from before the migration replays.
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    kvs: serde_json::Value,
    kvs_at_old: serde_json::Value,
    hashes: Vec<(i64, i64)>,
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
    // At the current revision (etcd 3.4 does not report it back as `hash_revision`).
    let hashes = eps
        .iter()
        .map(|e| {
            let h = json(e, &["endpoint", "hashkv"]);
            let h = &h[0]["HashKV"];
            (
                h["hash"].as_i64().unwrap(),
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
    // Writes after auth is on (etcd commits its backend at auth changes: these are the
    // entries a killed member has only in its log).
    for i in 30..35 {
        put(&format!("a/{i:02}"), &format!("v{i}"));
    }
    ctl(ep, &["del", "a/30"], None);
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

/// Every file under `dir` with its SHA-256.
fn file_hashes(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let data = std::fs::read(&p).unwrap();
                out.insert(p, sha2::Sha256::digest(&data).to_vec());
            }
        }
    }
    out
}

/// Stops etcd on `m` (`kill9`: no final commit of its backend), then starts Ballast with the
/// same flags on the same data directory (launched, not waited for). Returns etcd's files as
/// it left them.
fn replace_binary(m: &mut Server, kill9: bool) -> BTreeMap<PathBuf, Vec<u8>> {
    if kill9 {
        m.kill9();
    } else {
        m.terminate();
    }
    let etcd_files = file_hashes(&m.data_dir);
    m.kind = Kind::Ballast;
    m.launch();
    etcd_files
}

/// Starting Ballast on a stopped etcd member's data directory converts it in place: the same
/// keys, revisions, history, hashes, lease, users and permissions, the same member and
/// cluster IDs, etcd's own files untouched beside Ballast's, and a restart is a plain restart.
/// etcd 3.4 is killed with its backend's last commit 10 s behind, so everything since comes
/// from etcd's WAL (3.4's v2 attribute entries and clear-text passwords included); etcd 3.7
/// is stopped cleanly.
#[test]
fn an_etcd_member_converts_in_place() {
    for (kind, kill9) in [(Kind::Etcd, true), (Kind::Etcd37, false)] {
        let batch = ["--backend-batch-interval", "10s"];
        let mut m = Server::start(kind, if kill9 { &batch[..] } else { &[] });
        m.args.clear();
        let ep = m.endpoint();
        write_history(&ep);
        let before = observe(std::slice::from_ref(&ep));
        let ids = json(&ep, &["endpoint", "status"])[0]["Status"]["header"].clone();
        let etcd_files = replace_binary(&mut m, kill9);
        m.wait_healthy(Duration::from_secs(30));
        let log = m.log();
        let line = log
            .lines()
            .find(|l| l.contains("converted etcd data directory"))
            .unwrap_or_else(|| panic!("{kind:?}: no conversion logged: {log}"));
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        if kill9 {
            // The last writes came from etcd's WAL, not its backend.
            let replayed = line["replayed_entries"].as_u64().unwrap();
            assert!(replayed >= 6, "{kind:?}: {line}");
        }
        let after = observe(std::slice::from_ref(&ep));
        assert_eq!(after, before, "{kind:?}: Ballast serves what etcd served");
        let status = json(&ep, &["endpoint", "status"])[0]["Status"]["header"].clone();
        assert_eq!(status["member_id"], ids["member_id"], "{kind:?}");
        assert_eq!(status["cluster_id"], ids["cluster_id"], "{kind:?}");
        let now = file_hashes(&m.data_dir);
        for (path, sum) in &etcd_files {
            assert_eq!(
                now.get(path),
                Some(sum),
                "{kind:?}: {} changed",
                path.display()
            );
        }
        ctl(&ep, &["put", "after", "x"], None);

        // A restart is Ballast's own: nothing converted again, the write kept.
        m.terminate();
        m.launch();
        m.wait_healthy(Duration::from_secs(30));
        let log = m.log();
        assert_eq!(
            log.matches("converted etcd data directory").count(),
            1,
            "{kind:?}"
        );
        assert_eq!(json(&ep, &["get", "after"])["count"], 1, "{kind:?}");
    }
}

/// The operator's in-place migration of a 3-member etcd 3.7 cluster: stop every member (one
/// killed, its backend behind its log), start Ballast on each with the same flags; the
/// cluster serves what etcd served, every member with the same hash, and takes writes.
#[test]
fn a_three_member_etcd_cluster_converts_in_place() {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let etcd = Cluster::start_on(Kind::Etcd37, &ports, &["--backend-batch-interval", "10s"]);
    let eps = etcd.endpoints();
    write_history(&eps[0]);
    let before = observe(&eps);
    let mut members = etcd.members;
    let stopped = Instant::now();
    for (i, m) in members.iter_mut().enumerate() {
        m.args.clear();
        replace_binary(m, i == 0);
    }
    for m in &mut members {
        m.wait_healthy(Duration::from_secs(30));
    }
    for ep in &eps {
        ctl(ep, &["get", "a/00"], None);
    }
    eprintln!(
        "etcd -> Ballast in place, 3 members: downtime {:?}",
        stopped.elapsed()
    );
    assert_eq!(observe(&eps), before, "Ballast serves what etcd served");
    ctl(&eps[2], &["put", "after", "x"], None);
    let hashes: Vec<_> = eps
        .iter()
        .map(|e| json(e, &["endpoint", "hashkv"])[0]["HashKV"]["hash"].clone())
        .collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
}

/// A damaged etcd directory is refused with a clear error, and nothing in it changes: no
/// Ballast file is left behind, etcd's files are as they were.
#[test]
fn a_damaged_etcd_directory_is_refused_untouched() {
    let mut m = Server::start(Kind::Etcd37, &[]);
    for i in 0..20 {
        ctl_plain(&m.endpoint(), &["put", &format!("k{i}"), "v"]);
    }
    m.terminate();
    let wal = std::fs::read_dir(m.data_dir.join("member/wal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes[600] ^= 0x55;
    std::fs::write(&wal, &bytes).unwrap();
    let before = file_hashes(&m.data_dir);

    m.kind = Kind::Ballast;
    m.launch();
    let mut child = m.child.take().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = m.log();
    assert!(
        log.contains("cannot convert etcd data directory") && log.contains("is damaged at offset"),
        "{log}"
    );
    assert_eq!(
        file_hashes(&m.data_dir),
        before,
        "nothing written or changed"
    );
}

/// etcdctl without credentials, for a server without auth.
fn ctl_plain(ep: &str, args: &[&str]) -> String {
    ctl_as(None, ep, args, None)
}

/// A fixture made by `scripts/make-etcd-fixture` from a real etcd of `version`.
fn fixture(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/it/testdata/etcd-{version}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// etcd 3.5's and 3.6's files (a stopped member's directory, its `member/snap/db`, a saved
/// snapshot; made from the real releases by `scripts/make-etcd-fixture`): converted in place,
/// restored from the snapshot, and restored from the bare database with `--skip-hash-check`,
/// Ballast serves every key as that etcd served it, with auth as it was.
#[test]
fn etcd_35_and_36_files_convert_and_restore() {
    for version in ["3.5.36", "3.6.17"] {
        let dir = fixture(version);
        let served: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("served.json")).unwrap())
                .unwrap();
        let check = |ep: &str, how: &str| {
            let got = json(ep, &["get", "", "--prefix"]);
            assert_eq!(got["kvs"], served["kvs"], "{version} {how}");
            assert_eq!(
                got["header"]["revision"], served["header"]["revision"],
                "{version} {how}"
            );
            let denied = run_ctl(
                etcd37_tool("etcdctl"),
                ep,
                &["--user=alice:pw", "put", "k0", "no"],
                None,
            );
            assert!(
                denied.1.contains("permission denied"),
                "{version} {how}: {denied:?}"
            );
        };

        let mut m = Server::unstarted(Kind::Ballast, &[]);
        copy_dir(&dir.join("data"), &m.data_dir);
        m.launch();
        m.wait_healthy(Duration::from_secs(30));
        check(&m.endpoint(), "converted in place");

        let restored =
            crate::cluster::restored_member(Kind::Ballast, &dir.join("snapshot.db"), &[]);
        check(&restored.endpoint(), "restored from its snapshot");
        let bare = dir.join("data/member/snap/db");
        let restored =
            crate::cluster::restored_member(Kind::Ballast, &bare, &["--skip-hash-check"]);
        check(&restored.endpoint(), "restored from member/snap/db");
    }
}

/// The seeds' procedure with Ballast as the server: `etcdctl snapshot restore` (3.4) or
/// `etcdutl snapshot restore` (3.7) of an etcd snapshot into three directories, then Ballast
/// started on them with etcd's flags. etcd 3.4's restore leaves the old cluster's member in
/// the database and writes the new ones to its log only: Ballast takes the new ones.
#[test]
fn etcds_own_restore_output_starts_as_ballast() {
    for kind in [Kind::Etcd, Kind::Etcd37] {
        let etcd = Server::start(kind, &[]);
        let ep = etcd.endpoint();
        for i in 0..30 {
            ctl_plain(&ep, &["put", &format!("k{i:02}"), &format!("v{i}")]);
        }
        ctl_plain(&ep, &["del", "k03"]);
        ctl_plain(&ep, &["compaction", "10"]);
        let served = json_plain(&ep, &["get", "", "--prefix"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("etcd.db");
        ctl_plain(&ep, &["snapshot", "save", file.to_str().unwrap()]);
        drop(etcd);

        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let members = crate::cluster::restored_cluster_by(kind, Kind::Ballast, &file, &ports, &[]);
        for m in &members {
            let got = json_plain(&m.endpoint(), &["get", "", "--prefix"]);
            assert_eq!(got["kvs"], served["kvs"], "{kind:?}");
            assert_eq!(
                got["header"]["revision"], served["header"]["revision"],
                "{kind:?}"
            );
        }
        let list = ctl_plain(&members[0].endpoint(), &["member", "list"]);
        let names: Vec<&str> = list.lines().filter_map(|l| l.split(", ").nth(2)).collect();
        assert_eq!(names.len(), 3, "{kind:?}: {list}");
        assert!(names.iter().all(|n| n.starts_with('m')), "{kind:?}: {list}");
        ctl_plain(&members[1].endpoint(), &["put", "after", "x"]);
    }
}

fn json_plain(ep: &str, args: &[&str]) -> serde_json::Value {
    json_as(None, ep, args)
}
