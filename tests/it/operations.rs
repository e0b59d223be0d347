//! Operations: snapshot save/status/restore, hashes — with the real etcdctl and ballastctl.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::{ctl_of, etcd37_tool, etcdctl, free_port, run_ctl, Kind, Server};
use crate::differential::ballastctl;

fn ctl_ok(out: (String, String, i32)) -> String {
    assert_eq!(out.2, 0, "{out:?}");
    out.0
}

/// The hash `endpoint hashkv` prints for one endpoint at `rev`.
fn hashkv(ep: &str, rev: i64) -> String {
    let out = ctl_ok(etcdctl(
        ep,
        &["endpoint", "hashkv", "--rev", &rev.to_string()],
        None,
    ));
    out.trim().rsplit(", ").next().unwrap().to_string()
}

fn revision(ep: &str) -> i64 {
    let out = ctl_ok(etcdctl(ep, &["get", "x", "-w", "json"], None));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

/// A store with history worth restoring: overwrites, deletes, a compaction and a lease.
fn fill(ep: &str) {
    for i in 0..50 {
        ctl_ok(etcdctl(
            ep,
            &["put", &format!("k{i:02}"), &format!("v{i}")],
            None,
        ));
    }
    ctl_ok(etcdctl(ep, &["put", "k00", "again"], None));
    ctl_ok(etcdctl(ep, &["del", "k01"], None));
    ctl_ok(etcdctl(ep, &["compaction", "5"], None));
    let lease = ctl_ok(etcdctl(ep, &["lease", "grant", "600"], None));
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    ctl_ok(etcdctl(ep, &["put", "leased", "v", "--lease", &id], None));
}

/// A filled server's snapshot saved into `dir` by `kind`'s own client (etcdctl 3.4 or 3.7,
/// ballastctl), after checking that ballastctl reports the same status for it as etcdctl 3.4,
/// and the same hash, revision and size as etcdutl 3.7 (which counts only live keys).
/// Returns the file, the revision and every key as `get --prefix -w json` shows it now and
/// at revision 10.
fn save_for_migration(
    kind: Kind,
    ep: &str,
    dir: &Path,
    name: &str,
) -> (
    std::path::PathBuf,
    i64,
    serde_json::Value,
    serde_json::Value,
) {
    fill(ep);
    let rev = revision(ep);
    let file = dir.join(name);
    let file_s = file.to_str().unwrap();
    ctl_ok(run_ctl(
        ctl_of(kind),
        ep,
        &["snapshot", "save", file_s],
        None,
    ));
    let status = |out: (String, String, i32)| {
        serde_json::from_str::<serde_json::Value>(&ctl_ok(out)).unwrap()
    };
    // `snapshot status` moved to etcdutl in 3.6; ballastctl reports what etcdutl 3.7 does.
    let args = ["snapshot", "status", "-w", "json", file_s];
    let ours = status(ballastctl("", &args, None));
    let utl = status(run_ctl(etcd37_tool("etcdutl"), "", &args, None));
    assert_eq!(ours, utl, "etcdutl 3.7's snapshot status");
    assert_eq!(utl["revision"].as_i64(), Some(rev));
    (file, rev, all_kvs(ep, &[]), all_kvs(ep, &["--rev", "10"]))
}

/// Every key as `etcdctl get "" --prefix -w json` prints them.
fn all_kvs(ep: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["get", "", "--prefix", "-w", "json"];
    args.extend_from_slice(extra);
    serde_json::from_str::<serde_json::Value>(&ctl_ok(etcdctl(ep, &args, None))).unwrap()["kvs"]
        .clone()
}

/// etcd's own snapshot file, taken from a real etcd (3.4 and 3.7) with its own
/// `etcdctl snapshot save`: ballastctl reports the same status as etcd's tools, and restores
/// it into a Ballast member that serves every key with its create/mod revision and version,
/// the same current and compacted revision, and the lease.
#[test]
fn an_etcd_snapshot_restores_into_ballast_with_its_revisions() {
    for kind in [Kind::Etcd, Kind::Etcd37] {
        let etcd = Server::start(kind, &[]);
        let dir = tempfile::tempdir().unwrap();
        let (file, rev, before, at_ten) =
            save_for_migration(kind, &etcd.endpoint(), dir.path(), "etcd.db");

        let restored = crate::cluster::restored_member(Kind::Ballast, &file, &[]);
        let b = restored.endpoint();
        assert_eq!(revision(&b), rev, "{kind:?}");
        assert_eq!(
            all_kvs(&b, &[]),
            before,
            "{kind:?}: every key, value, revision and version"
        );
        assert_eq!(
            all_kvs(&b, &["--rev", "10"]),
            at_ten,
            "{kind:?}: history before the snapshot"
        );
        // Revision 5 was compacted in etcd: still compacted here.
        let old = etcdctl(&b, &["get", "k00", "--rev", "4"], None);
        assert!(
            old.1.contains("required revision has been compacted"),
            "{kind:?}: {old:?}"
        );
        let leases = ctl_ok(etcdctl(&b, &["lease", "list"], None));
        assert!(leases.starts_with("found 1 leases"), "{kind:?}: {leases}");
        // The restored member takes writes after the restored revisions.
        ctl_ok(etcdctl(&b, &["put", "after", "x"], None));
        assert_eq!(revision(&b), rev + 1, "{kind:?}");
    }
}

/// `HashKV` is etcd's (3.4 and 3.7): the same history (puts, overwrites, deletes, a
/// compaction) gives the same hash on etcd and on Ballast at the revisions asked, and after an etcd snapshot moves
/// into Ballast the hashes agree again, the lease's included, so a migration can be verified
/// with `endpoint hashkv`.
#[test]
fn hashkv_is_etcds() {
    for kind in [Kind::Etcd, Kind::Etcd37] {
        hashkv_matches(kind);
    }
}

fn hashkv_matches(kind: Kind) {
    let etcd = Server::start(kind, &[]);
    let ballast = Server::start(Kind::Ballast, &[]);
    let (e, b) = (etcd.endpoint(), ballast.endpoint());
    for ep in [&e, &b] {
        fill(ep);
        ctl_ok(etcdctl(ep, &["put", "k02", "again"], None));
        ctl_ok(etcdctl(ep, &["del", "k03"], None));
    }
    let rev = revision(&e);
    assert_eq!(
        revision(&b),
        rev,
        "the same history takes the same revisions"
    );
    // Up to the lease: the two servers chose different lease IDs, which the hash covers.
    for at in [6, 10, 52, 53] {
        assert_eq!(hashkv(&b, at), hashkv(&e, at), "{kind:?}: HashKV at {at}");
    }
    // The same hash after the store moves from etcd into Ballast.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.db");
    let save = ["snapshot", "save", file.to_str().unwrap()];
    ctl_ok(run_ctl(ctl_of(kind), &e, &save, None));
    let member = crate::cluster::restored_member(Kind::Ballast, &file, &[]);
    let restored = member.endpoint();
    for at in [10, 53, 54, rev - 1, rev] {
        assert_eq!(
            hashkv(&restored, at),
            hashkv(&e, at),
            "{kind:?}: migrated, at {at}"
        );
    }
}

/// The other way: a snapshot saved from Ballast is etcd's format. etcd's tools (etcdctl 3.4,
/// etcdutl 3.7) report its status and restore it, and a real etcd of either version started
/// on the result serves every key with the revisions, versions and history Ballast had, the
/// lease, and takes writes after them.
#[test]
fn a_ballast_snapshot_restores_into_a_real_etcd() {
    let src = Server::start(Kind::Ballast, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (file, rev, before, at_ten) =
        save_for_migration(Kind::Ballast, &src.endpoint(), dir.path(), "b.db");
    for kind in [Kind::Etcd, Kind::Etcd37] {
        let etcd = crate::cluster::restored_member(kind, &file, &[]);
        let e = etcd.endpoint();
        let served = (
            revision(&e),
            all_kvs(&e, &[]),
            all_kvs(&e, &["--rev", "10"]),
        );
        let leases = ctl_ok(etcdctl(&e, &["lease", "list"], None));
        ctl_ok(etcdctl(&e, &["put", "after", "x"], None));
        let next = revision(&e);
        assert_eq!(served.0, rev, "{kind:?}");
        assert_eq!(
            served.1, before,
            "{kind:?}: every key, value, revision and version"
        );
        assert_eq!(served.2, at_ten, "{kind:?}: history");
        assert!(leases.starts_with("found 1 leases"), "{kind:?}: {leases}");
        assert_eq!(next, rev + 1, "{kind:?}");
    }
}

/// `--bump-revision N --mark-compacted`, as etcdutl 3.6 restores: the restored member's
/// revision starts N past the snapshot's and everything before it is compacted, so clients
/// never see a revision reused; either flag alone is refused as etcdutl refuses it.
#[test]
fn restore_can_bump_the_revision_past_what_clients_saw() {
    let src = Server::start(Kind::Ballast, &[]);
    let ep = src.endpoint();
    fill(&ep);
    let rev = revision(&ep);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    let file_s = file.to_str().unwrap();
    ctl_ok(ballastctl(&ep, &["snapshot", "save", file_s], None));
    for half in [&["--bump-revision", "5"][..], &["--mark-compacted"][..]] {
        let mut args = vec!["snapshot", "restore", file_s, "--data-dir"];
        let target = dir.path().join("refused");
        args.push(target.to_str().unwrap());
        args.extend_from_slice(half);
        let out = ballastctl("", &args, None);
        assert_eq!(out.2, 128, "{out:?}");
        assert!(
            out.1
                .contains("Error: --mark-compacted required if --revision-bump > 0"),
            "{out:?}"
        );
        assert!(!target.exists(), "nothing written for refused flags");
    }
    let restored = crate::cluster::restored_member(
        Kind::Ballast,
        &file,
        &["--bump-revision", "1000", "--mark-compacted"],
    );
    let b = restored.endpoint();
    assert_eq!(revision(&b), rev + 1000);
    let old = etcdctl(&b, &["get", "k00", "--rev", &rev.to_string()], None);
    assert!(
        old.1.contains("required revision has been compacted"),
        "{old:?}"
    );
    assert_eq!(
        ctl_ok(etcdctl(&b, &["get", "k00", "--print-value-only"], None)),
        "again\n"
    );
    ctl_ok(etcdctl(&b, &["put", "after", "x"], None));
    assert_eq!(revision(&b), rev + 1001);
}

/// Saved by etcdctl and by ballastctl the same bytes; restored into a new 3-member cluster
/// it holds the same keys at the same revision with the same HashKV on every member, under a
/// fresh cluster identity; and the restored cluster takes writes.
#[test]
fn snapshot_save_and_restore_into_a_new_three_member_cluster() {
    let src = Server::start(Kind::Ballast, &[]);
    let ep = src.endpoint();
    fill(&ep);
    let rev = revision(&ep);
    let source_hash = hashkv(&ep, rev);
    let dir = tempfile::tempdir().unwrap();
    let by_etcdctl = dir.path().join("etcdctl.db");
    let by_ballastctl = dir.path().join("ballastctl.db");
    let saved = etcdctl(
        &ep,
        &["snapshot", "save", by_etcdctl.to_str().unwrap()],
        None,
    );
    assert_eq!(
        saved.0,
        format!("Snapshot saved at {}\n", by_etcdctl.display()),
        "{saved:?}"
    );
    let saved = ballastctl(
        &ep,
        &["snapshot", "save", by_ballastctl.to_str().unwrap()],
        None,
    );
    assert_eq!(
        saved.0,
        format!("Snapshot saved at {}\n", by_ballastctl.display()),
        "{saved:?}"
    );
    assert!(Path::new(&format!("{}.part", by_ballastctl.display()))
        .metadata()
        .is_err());
    let bytes = std::fs::read(&by_ballastctl).unwrap();
    assert_eq!(bytes, std::fs::read(&by_etcdctl).unwrap());
    assert_eq!(
        bytes.len() % 512,
        32,
        "etcdctl's page rule for the hash trailer"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        by_ballastctl.metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );

    let status = ctl_ok(ballastctl(
        "",
        &["snapshot", "status", by_etcdctl.to_str().unwrap()],
        None,
    ));
    let fields: Vec<&str> = status.trim().split(", ").collect();
    assert_eq!(fields[1], rev.to_string(), "{status}");
    let json = ctl_ok(ballastctl(
        "",
        &[
            "snapshot",
            "status",
            "-w",
            "json",
            by_etcdctl.to_str().unwrap(),
        ],
        None,
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["revision"].as_i64(), Some(rev));
    assert_eq!(format!("{:x}", v["hash"].as_u64().unwrap()), fields[0]);
    assert_eq!(v["totalSize"].as_u64(), Some(bytes.len() as u64 - 32));
    // Every format as etcdutl 3.7 prints it for the same file (live keys, storage version).
    for w in ["table", "simple", "json", "fields"] {
        let args = ["snapshot", "status", "-w", w, by_etcdctl.to_str().unwrap()];
        let want = crate::cluster::run_ctl(crate::cluster::etcd37_tool("etcdutl"), "", &args, None);
        assert_eq!(ballastctl("", &args, None), want, "-w {w}");
    }

    // Restore into three members of a new cluster, as the etcd procedure does.
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let peers: Vec<u16> = ports.iter().map(|p| p.1).collect();
    let mut members = crate::cluster::Cluster::unstarted(Kind::Ballast, "r", &ports, &[]);
    let initial = members[0].member.as_ref().unwrap().initial_cluster.clone();
    for (i, m) in members.iter().enumerate() {
        let peer = format!("http://127.0.0.1:{}", peers[i]);
        let out = ballastctl(
            "",
            &[
                "snapshot",
                "restore",
                by_etcdctl.to_str().unwrap(),
                "--name",
                &format!("r{i}"),
                "--data-dir",
                m.data_dir.to_str().unwrap(),
                "--initial-cluster",
                &initial,
                "--initial-cluster-token",
                "restored",
                "--initial-advertise-peer-urls",
                &peer,
            ],
            None,
        );
        assert_eq!(out.2, 0, "{out:?}");
        assert!(out.1.contains("restored snapshot"), "{out:?}");
    }
    // Flags at start no longer matter: identity comes from the restored log.
    members.iter_mut().for_each(Server::launch);
    for m in &mut members {
        m.wait_healthy(Duration::from_secs(20));
    }
    let eps: Vec<String> = members.iter().map(Server::endpoint).collect();
    for e in &eps {
        assert_eq!(revision(e), rev);
        assert_eq!(hashkv(e, rev), source_hash, "member {e}");
        let got = ctl_ok(etcdctl(e, &["get", "k", "--prefix", "--keys-only"], None));
        assert_eq!(got.lines().filter(|l| !l.is_empty()).count(), 49);
        assert_eq!(
            ctl_ok(etcdctl(e, &["get", "k00", "--print-value-only"], None)),
            "again\n"
        );
    }
    let list = ctl_ok(etcdctl(&eps[0], &["member", "list"], None));
    assert_eq!(list.lines().count(), 3, "{list}");
    for (i, port) in peers.iter().enumerate() {
        assert!(
            list.contains(&format!(", r{i}, http://127.0.0.1:{port}")),
            "{list}"
        );
    }
    let old_cluster = ctl_ok(etcdctl(&ep, &["get", "x", "-w", "json"], None));
    let new_cluster = ctl_ok(etcdctl(&eps[0], &["get", "x", "-w", "json"], None));
    let cid = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s).unwrap()["header"]["cluster_id"].clone()
    };
    assert_ne!(cid(&old_cluster), cid(&new_cluster));
    let leases = ctl_ok(etcdctl(&eps[1], &["lease", "list"], None));
    assert!(leases.starts_with("found 1 leases"), "{leases}");
    ctl_ok(etcdctl(&eps[1], &["put", "after", "restore"], None));
    let start = Instant::now();
    while revision(&eps[2]) != rev + 1 {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Damaged files are refused with etcd's messages and leave no data directory behind; an
/// existing data directory is never overwritten.
#[test]
fn damaged_snapshots_are_refused() {
    let src = Server::start(Kind::Ballast, &[]);
    let ep = src.endpoint();
    fill(&ep);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.db");
    ctl_ok(ballastctl(
        &ep,
        &["snapshot", "save", good.to_str().unwrap()],
        None,
    ));
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.db");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let target = dir.path().join("restored");
    let restore = |file: &Path, extra: &[&str]| {
        let mut args = vec![
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ballastctl("", &args, None)
    };
    let out = restore(&cut, &[]);
    assert_eq!(out.2, 1, "{out:?}");
    assert!(
        out.1
            .contains("Error: snapshot missing hash but --skip-hash-check=false"),
        "{out:?}"
    );
    assert!(!target.exists());
    let out = restore(&cut, &["--skip-hash-check"]);
    assert_eq!(out.2, 1, "{out:?}");
    assert!(
        out.1.contains("Error: snapshot file is corrupt: "),
        "{out:?}"
    );
    assert!(!target.exists());
    let status = ballastctl("", &["snapshot", "status", cut.to_str().unwrap()], None);
    assert_eq!(status.2, 1, "{status:?}");
    // One flipped byte inside the data: the hash no longer matches.
    let mut flipped = bytes.clone();
    flipped[100] ^= 0x40;
    let bad = dir.path().join("flipped.db");
    std::fs::write(&bad, &flipped).unwrap();
    let out = restore(&bad, &[]);
    assert_eq!(out.2, 1, "{out:?}");
    assert!(!target.exists());
    // Without the hash, what the format itself checks still catches damage: both meta pages
    // of the etcd database (pages 0 and 1) fail their checksums.
    let mut metas = bytes.clone();
    metas[20] ^= 0x40;
    metas[4096 + 20] ^= 0x40;
    let bad_metas = dir.path().join("metas.db");
    std::fs::write(&bad_metas, &metas).unwrap();
    let out = restore(&bad_metas, &["--skip-hash-check"]);
    assert_eq!(out.2, 1, "meta checksums catch it: {out:?}");
    assert!(
        out.1.contains("Error: snapshot file is corrupt: "),
        "{out:?}"
    );
    assert!(!target.exists());
    // The good file restores once; a second restore refuses the existing directory.
    ctl_ok(restore(&good, &[]));
    let out = restore(&good, &[]);
    assert_eq!(out.2, 1, "{out:?}");
    assert!(
        out.1.contains(&format!(
            "Error: data-dir {:?} exists",
            target.display().to_string()
        )),
        "{out:?}"
    );
}

/// Argument errors of the snapshot and hashkv commands, and hashkv's output in every format,
/// are etcdctl 3.7's (`snapshot status` and `restore`: etcdutl 3.7's, where they moved).
#[test]
fn snapshot_and_hashkv_commands_match_etcdctl() {
    use crate::cluster::{etcd37_tool, etcdctl37, run_ctl};
    let etcd = Server::start(Kind::Etcd, &[]);
    let ballast = Server::start(Kind::Ballast, &[]);
    let two = format!("{},{}", ballast.endpoint(), etcd.endpoint());
    let offline: Vec<Vec<&str>> = vec![
        vec!["snapshot", "status"],
        vec!["snapshot", "restore"],
        vec!["snapshot", "status", "/nonexistent/snap.db"],
        vec![
            "snapshot",
            "restore",
            "x.db",
            "--name",
            "m1",
            "--initial-cluster",
            "m2=http://a:1",
        ],
    ];
    for args in &offline {
        let a = run_ctl(etcd37_tool("etcdutl"), "", args, None);
        let b = ballastctl("", args, None);
        assert_eq!(a.2, b.2, "{args:?}: {a:?} vs {b:?}");
        assert_eq!(a.1.lines().last(), b.1.lines().last(), "{args:?}");
    }
    let a = etcdctl37(&ballast.endpoint(), &["snapshot", "save"], None);
    let b = ballastctl(&ballast.endpoint(), &["snapshot", "save"], None);
    assert_eq!((a.2, a.1.lines().last()), (b.2, b.1.lines().last()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.db");
    let a = etcdctl37(&two, &["snapshot", "save", file.to_str().unwrap()], None);
    let b = ballastctl(&two, &["snapshot", "save", file.to_str().unwrap()], None);
    assert_eq!(
        (a.2, a.1.lines().last()),
        (b.2, b.1.lines().last()),
        "{a:?} {b:?}"
    );
    assert_eq!(a.2, 5);

    for s in [&etcd, &ballast] {
        ctl_ok(etcdctl(&s.endpoint(), &["put", "a", "1"], None));
        ctl_ok(etcdctl(&s.endpoint(), &["put", "a", "2"], None));
    }
    for ep in [etcd.endpoint(), ballast.endpoint()] {
        for w in ["simple", "table", "json", "fields"] {
            let a = etcdctl37(&ep, &["endpoint", "hashkv", "-w", w], None);
            let b = ballastctl(&ep, &["endpoint", "hashkv", "-w", w], None);
            assert_eq!(a.0, b.0, "{ep} -w {w}");
            assert_eq!(a.2, b.2);
        }
        let a = etcdctl37(&ep, &["endpoint", "hashkv", "--rev", "99"], None);
        let b = ballastctl(&ep, &["endpoint", "hashkv", "--rev", "99"], None);
        assert_eq!(a.2, 1);
        assert_eq!((a.2, a.1.lines().last()), (b.2, b.1.lines().last()));
    }
}

/// Member IDs differ between etcd and Ballast runs; outputs are compared without them.
fn without_ids(s: &str) -> String {
    s.split_whitespace()
        .map(|w| {
            if w.starts_with("memberID:") {
                "memberID:ID"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Puts 20 kB values until the quota refuses one; returns how many were stored.
fn fill_to_nospace(ep: &str) -> usize {
    let value = "v".repeat(20_000);
    for i in 0..500 {
        let out = etcdctl(ep, &["put", &format!("big{i:03}"), &value], None);
        if out.2 != 0 {
            assert_eq!(
                out.1.lines().last(),
                Some("Error: etcdserver: mvcc: database space exceeded"),
                "{out:?}"
            );
            return i;
        }
    }
    panic!("the quota never refused a put");
}

/// The NOSPACE path on one server: what etcdctl shows while the alarm is raised, and that
/// compaction + defrag + disarm bring writes back. Returns what etcdctl printed, for the
/// differential comparison.
fn nospace_scenario(s: &Server) -> Vec<String> {
    let ep = s.endpoint();
    let stored = fill_to_nospace(&ep);
    assert!(stored > 0);
    let mut seen = Vec::new();
    let mut step = |args: &[&str], stdin: Option<&str>| {
        let out = etcdctl(&ep, args, stdin);
        seen.push(format!(
            "{args:?} -> {} | {} | {}",
            out.2,
            without_ids(&out.0),
            out.1.lines().last().unwrap_or("")
        ));
        out
    };
    // Raised once, through raft: listed, in the status, and in every later write's answer.
    let list = step(&["alarm", "list"], None);
    assert_eq!(list.0.lines().count(), 1, "{list:?}");
    step(&["put", "small", "v"], None);
    step(&["txn"], Some("\n\nput small v\n\n"));
    step(&["txn"], Some("\n\nget small\ndel nothing\n\n"));
    step(&["lease", "grant", "10"], None);
    assert!(
        ctl_ok(etcdctl(&ep, &["endpoint", "status"], None)).ends_with("alarm:NOSPACE \n"),
        "status errors name the alarm"
    );
    // Reads and deletes still work.
    step(&["get", "big000", "--keys-only"], None);
    // etcd sometimes stores the put it answered NOSPACE to (its quota check and the alarm
    // race with the backend's size); every acknowledged one must be there.
    let deleted = ctl_ok(etcdctl(&ep, &["del", "big", "--prefix"], None));
    let deleted: usize = deleted.trim().parse().unwrap();
    assert!(
        deleted == stored || deleted == stored + 1,
        "{deleted} deleted, {stored} stored"
    );
    // Disarming while still over quota: the next write raises it again.
    let rev = revision(&ep);
    ctl_ok(etcdctl(&ep, &["compaction", &rev.to_string()], None));
    ctl_ok(etcdctl(&ep, &["defrag"], None));
    step(&["alarm", "disarm"], None);
    step(&["alarm", "list"], None);
    step(&["put", "small", "v"], None);
    seen
}

/// NOSPACE: writes refused with etcd's error, reads and deletes served, /health false with
/// etcd's reason, and everything etcdctl prints is what it prints against a real etcd with the
/// same quota (member IDs aside).
#[test]
fn quota_raises_nospace_and_compaction_defrag_disarm_recover() {
    let quota = ["--quota-backend-bytes", "2000000"];
    let ballast = Server::start(Kind::Ballast, &quota);
    let etcd = Server::start(Kind::Etcd, &quota);
    let b = nospace_scenario(&ballast);
    // While raised, /health says why (etcd 3.5+'s reason, after Go's http.Error; 3.4 gives
    // none).
    fill_to_nospace(&ballast.endpoint());
    let (code, body) = crate::cluster::http_get(ballast.port, "/health").unwrap();
    assert_eq!(code, 503);
    assert_eq!(
        body,
        "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n"
    );
    // The alarm in the status table's ERRORS cell, as etcdctl 3.7 prints it (unwrapped).
    let status = ["endpoint", "status", "-w", "table"];
    let by_etcdctl = crate::cluster::etcdctl37(&ballast.endpoint(), &status, None);
    let by_ballastctl = ballastctl(&ballast.endpoint(), &status, None);
    assert_eq!(by_etcdctl.0, by_ballastctl.0);
    assert!(
        by_etcdctl.0.contains(" alarm:NOSPACE │"),
        "{}",
        by_etcdctl.0
    );
    let e = nospace_scenario(&etcd);
    assert_eq!(b, e);
}

/// A quota of etcd's minimum working set (13 pages of 4 KiB): small puts are accepted until
/// NOSPACE, and compaction, defrag and disarm make room again, on Ballast as on etcd 3.4 and
/// 3.7 (redb's file never shrinks below 72 KiB, so a tiny store counts its pages in use).
#[test]
fn a_thirteen_page_quota_works_as_on_etcd() {
    let procedure = |kind: Kind| {
        let s = Server::start(kind, &["--quota-backend-bytes=53248"]);
        let ep = s.endpoint();
        let value = "x".repeat(100);
        let (mut accepted, mut refusal) = (0, String::new());
        for i in 0..2000 {
            let out = etcdctl(&ep, &["put", &format!("k{}", i % 10), &value], None);
            if out.2 != 0 {
                refusal = out.1.lines().last().unwrap_or("").to_string();
                break;
            }
            accepted += 1;
        }
        let alarms = ctl_ok(etcdctl(&ep, &["alarm", "list"], None));
        ctl_ok(etcdctl(
            &ep,
            &["compaction", &revision(&ep).to_string()],
            None,
        ));
        ctl_ok(etcdctl(&ep, &["defrag"], None));
        ctl_ok(etcdctl(&ep, &["alarm", "disarm"], None));
        let after = etcdctl(&ep, &["put", "after", "y"], None);
        (
            accepted > 0,
            refusal,
            alarms.contains("alarm:NOSPACE"),
            after.0,
        )
    };
    let etcd = procedure(Kind::Etcd);
    assert_eq!(
        etcd,
        (
            true,
            "Error: etcdserver: mvcc: database space exceeded".to_string(),
            true,
            "OK\n".to_string()
        )
    );
    assert_eq!(procedure(Kind::Etcd37), etcd, "etcd 3.7");
    assert_eq!(procedure(Kind::Ballast), etcd, "Ballast");
}

/// Defragmentation is online: a writer keeps going while it runs (no request slower than a
/// loose bound), nothing acknowledged is lost, and the file shrinks. Both etcdctl and
/// ballastctl drive it, on one member and with --cluster.
#[test]
fn defrag_under_writes_loses_nothing_and_shrinks_the_file() {
    let s = Server::start(Kind::Ballast, &[]);
    let ep = s.endpoint();
    let value = "x".repeat(4000);
    let mut txn = String::new();
    for i in 0..2000 {
        txn.push_str(&format!("put old{i:04} {value}\n"));
        if i % 100 == 99 {
            ctl_ok(etcdctl(&ep, &["txn"], Some(&format!("\n{txn}\n\n"))));
            txn.clear();
        }
    }
    ctl_ok(etcdctl(&ep, &["del", "old", "--prefix"], None));
    ctl_ok(etcdctl(
        &ep,
        &["compaction", &revision(&ep).to_string()],
        None,
    ));
    let db = s.data_dir.join("member/snap/ballast.db");
    let before = db.metadata().unwrap().len();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (ep, stop) = (ep.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
                let (mut acked, mut slowest) = (Vec::new(), Duration::ZERO);
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    c.put(format!("new{i:05}"), "v", None).await.unwrap();
                    slowest = slowest.max(t.elapsed());
                    acked.push(i);
                    i += 1;
                }
                (acked, slowest)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let out = ctl_ok(ballastctl(&ep, &["defrag"], None));
    // etcdctl 3.7's line, with the time it took.
    assert!(
        out.starts_with(&format!("Finished defragmenting etcd member[{ep}]. took ")),
        "{out}"
    );
    let out = ctl_ok(etcdctl(&ep, &["defrag", "--cluster"], None));
    assert_eq!(
        out,
        format!("Finished defragmenting etcd member[http://{ep}]\n")
    );
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, slowest) = writer.join().unwrap();
    eprintln!(
        "defrag: {before} -> {} bytes; {} writes during it, slowest {slowest:?}",
        db.metadata().unwrap().len(),
        acked.len()
    );
    assert!(acked.len() > 10, "the writer made progress during defrag");
    assert!(
        slowest < Duration::from_secs(2),
        "a write waited {slowest:?}"
    );
    assert!(db.metadata().unwrap().len() < before / 2);
    let count = ctl_ok(ballastctl(
        &ep,
        &["get", "new", "--prefix", "--keys-only", "-w", "json"],
        None,
    ));
    let v: serde_json::Value = serde_json::from_str(&count).unwrap();
    assert_eq!(v["count"].as_u64(), Some(acked.len() as u64));

    // Unreachable members are reported and the exit code says so, as etcdctl does.
    let both = format!("{ep},127.0.0.1:1");
    let a = crate::cluster::etcdctl37(&both, &["defrag", "--dial-timeout", "300ms"], None);
    let b = ballastctl(&both, &["defrag", "--dial-timeout", "300ms"], None);
    let norm = |s: &str| crate::differential::normalize_for(s, &both);
    assert_eq!((norm(&a.0), a.2), (norm(&b.0), b.2), "{a:?} {b:?}");
    assert_eq!(
        norm(&a.1).lines().last().map(String::from),
        norm(&b.1).lines().last().map(String::from)
    );
}

/// Parses Prometheus text: every sample line is `name{labels} value` with a numeric value and
/// belongs to a family declared by `# TYPE`. Returns the samples.
pub(crate) fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    let mut families = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap();
            let kind = it.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            families.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                assert!(l.ends_with('}'), "{line}");
                (n.to_string(), l.trim_end_matches('}').to_string())
            }
            None => (series.to_string(), String::new()),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
            .unwrap_or(&name);
        assert!(families.contains(family), "sample without # TYPE: {line}");
        samples.push((name, labels, value));
    }
    samples
}

pub(crate) fn metric(samples: &[(String, String, f64)], name: &str, labels: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l.contains(labels))
        .map(|s| s.2)
}

/// The names the issue lists (and etcd's dashboards use).
const ETCD_METRICS: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_failed_total",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_keys_total",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "etcd_disk_backend_commit_duration_seconds_bucket",
    "etcd_network_peer_round_trip_time_seconds_bucket",
    "etcd_network_peer_sent_bytes_total",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
];

/// `/metrics` parses as Prometheus text, carries etcd's names (checked against a real etcd
/// cluster's own `/metrics`) with values that follow the cluster; `/health` turns false when
/// quorum is lost; `/livez` and `/readyz` answer.
#[test]
fn metrics_and_health_endpoints() {
    let etcd = crate::cluster::Cluster::start(Kind::Etcd, 3, &[]);
    let mut c = crate::cluster::Cluster::start(Kind::Ballast, 3, &[]);
    let eps: Vec<String> = c.endpoints();
    for i in 0..20 {
        ctl_ok(etcdctl(&eps[i % 3], &["put", &format!("m{i}"), "v"], None));
    }
    ctl_ok(etcdctl(&eps[0], &["get", "m0"], None));
    let _ = etcdctl(&eps[0], &["get", ""], None); // InvalidArgument
                                                  // Labelled families appear in etcd's output only once observed: give it traffic, and
                                                  // read every member.
    for e in etcd.endpoints() {
        ctl_ok(etcdctl(&e, &["put", "m", "v"], None));
    }
    let reference: String = etcd
        .members
        .iter()
        .map(|m| crate::cluster::http_get(m.port, "/metrics").unwrap().1)
        .collect();
    let status = ctl_ok(etcdctl(
        &eps[0],
        &["endpoint", "status", "-w", "json"],
        None,
    ));
    let leader = serde_json::from_str::<serde_json::Value>(&status).unwrap()[0]["Status"]["leader"]
        .as_u64()
        .unwrap();
    // Heartbeats take a moment to give round trips.
    std::thread::sleep(Duration::from_millis(500));
    let mut saw_leader = false;
    for m in &c.members {
        let (code, text) = crate::cluster::http_get(m.port, "/metrics").unwrap();
        assert_eq!(code, 200);
        let samples = parse_metrics(&text);
        for name in ETCD_METRICS {
            assert!(
                metric(&samples, name, "").is_some(),
                "{name} missing from Ballast"
            );
            // etcd's prober records its first round trip only after several seconds, and an
            // empty labelled family is not printed at all.
            let family = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                reference.contains(&format!("# TYPE {family} "))
                    || family == "etcd_network_peer_round_trip_time_seconds",
                "{name} is not etcd's name"
            );
        }
        assert_eq!(metric(&samples, "etcd_server_has_leader", ""), Some(1.0));
        assert!(metric(&samples, "etcd_server_leader_changes_seen_total", "").unwrap() >= 1.0);
        assert!(metric(&samples, "etcd_server_proposals_applied_total", "").unwrap() >= 20.0);
        assert!(metric(&samples, "etcd_debugging_mvcc_keys_total", "").unwrap() >= 20.0);
        assert!(metric(&samples, "etcd_disk_wal_fsync_duration_seconds_count", "").unwrap() > 0.0);
        let is_leader = metric(&samples, "etcd_server_is_leader", "") == Some(1.0);
        if is_leader {
            saw_leader = true;
            let rtt = samples
                .iter()
                .filter(|(n, _, _)| n == "etcd_network_peer_round_trip_time_seconds_count")
                .count();
            assert_eq!(rtt, 2, "one round-trip histogram per follower");
            assert!(
                metric(
                    &samples,
                    "etcd_network_peer_round_trip_time_seconds_count",
                    "To="
                )
                .unwrap()
                    > 0.0
            );
            assert!(metric(&samples, "etcd_network_peer_sent_bytes_total", "To=").unwrap() > 0.0);
        }
        let id = format!(
            "{:x}",
            serde_json::from_str::<serde_json::Value>(&ctl_ok(etcdctl(
                &m.endpoint(),
                &["endpoint", "status", "-w", "json"],
                None
            )))
            .unwrap()[0]["Status"]["header"]["member_id"]
                .as_u64()
                .unwrap()
        );
        assert_eq!(is_leader, id == format!("{leader:x}"));
    }
    assert!(saw_leader);
    // gRPC counters by method and code, summed over the members that served them.
    let mut puts_ok = 0.0;
    let mut ranges_invalid = 0.0;
    for m in &c.members {
        let samples = parse_metrics(&crate::cluster::http_get(m.port, "/metrics").unwrap().1);
        puts_ok += metric(
            &samples,
            "grpc_server_handled_total",
            r#"grpc_code="OK",grpc_method="Put","#,
        )
        .unwrap();
        ranges_invalid += metric(
            &samples,
            "grpc_server_handled_total",
            r#"grpc_code="InvalidArgument",grpc_method="Range","#,
        )
        .unwrap();
    }
    assert_eq!(puts_ok, 20.0);
    assert_eq!(ranges_invalid, 1.0);

    for m in &c.members {
        assert_eq!(
            crate::cluster::http_get(m.port, "/livez"),
            Some((200, "ok\n".into()))
        );
        assert_eq!(
            crate::cluster::http_get(m.port, "/readyz"),
            Some((200, "ok\n".into()))
        );
    }
    // Quorum lost: the survivor's /health and /readyz say so.
    c.members[1].kill9();
    c.members[2].kill9();
    let start = Instant::now();
    loop {
        let (code, body) = crate::cluster::http_get(c.members[0].port, "/health").unwrap();
        if code == 503 {
            assert!(body.contains(r#""health":"false""#), "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "/health stayed {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, body) = crate::cluster::http_get(c.members[0].port, "/readyz?verbose").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("[-]linearizable_read failed"), "{body}");
    // Every check's line, then Go's http.Error newline, as etcd words it.
    assert!(body.ends_with("[+]non_learner ok\n\n"), "{body}");
    let (code, body) = crate::cluster::http_get(c.members[0].port, "/livez?verbose").unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "[+]serializable_read ok\nok\n")
    );
}

/// `--listen-metrics-urls` serves metrics and health only, from before the member is ready.
#[test]
fn listen_metrics_urls_serve_metrics_only() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let s = Server::start(Kind::Ballast, &["--listen-metrics-urls", &url]);
    ctl_ok(etcdctl(&s.endpoint(), &["put", "a", "b"], None));
    let (code, text) = crate::cluster::http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metric(&parse_metrics(&text), "etcd_server_has_leader", "") == Some(1.0));
    assert_eq!(
        crate::cluster::http_get(port, "/health").map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        crate::cluster::http_get(port, "/version").map(|r| r.0),
        Some(404)
    );
}

/// Periodic auto-compaction keeps `--auto-compaction-retention` of history: with 2 s, old
/// revisions become unreadable while those of the last two seconds stay readable.
#[test]
fn periodic_auto_compaction_keeps_the_retention_window() {
    let s = Server::start(Kind::Ballast, &["--auto-compaction-retention", "2s"]);
    let ep = s.endpoint();
    let start = Instant::now();
    let mut i = 0;
    let compacted = loop {
        ctl_ok(etcdctl(&ep, &["put", "k", &i.to_string()], None));
        i += 1;
        let out = etcdctl(&ep, &["get", "k", "--rev", "2"], None);
        if out.2 != 0 {
            assert!(
                out.1.contains("required revision has been compacted"),
                "{out:?}"
            );
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "never compacted");
    };
    assert!(
        compacted >= Duration::from_secs(2),
        "compacted after {compacted:?}"
    );
    // The last second of history is still there.
    let rev = revision(&ep);
    ctl_ok(etcdctl(
        &ep,
        &["get", "k", "--rev", &(rev - 3).to_string()],
        None,
    ));
    assert!(s.log().contains("finished auto-compaction"), "{}", s.log());
}

/// A member whose disk silently flips bits (the `break-corrupt-writes` failpoint) is caught:
/// the leader's periodic check raises CORRUPT for it, writes then fail with etcd's error while
/// reads go on, and restarting that member fails its start-up check instead of serving. Auth
/// is on throughout: members compare hashes over the peer port, which client auth does not
/// guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_checks_raise_corrupt_and_refuse_a_corrupt_restart() {
    use ballast_harness::cluster::{Binary, Cluster, Options};
    let opts = Options {
        binary: Binary::with_failpoints().unwrap(),
        extra: vec![
            "--experimental-corrupt-check-time=1s".into(),
            "--bcrypt-cost=4".into(),
        ],
        failpoints: String::new(),
    };
    let mut c = Cluster::start(3, opts).await.unwrap();
    let leader = c.leader().await.unwrap();
    let bad = (leader + 1) % 3;
    c.restart(bad, "break-corrupt-writes=on").unwrap();
    let bad_id = c.nodes[bad].id;
    let ep = c.nodes[leader].endpoint();
    let ep = ep.trim_start_matches("http://").to_string();
    // The restarted member must be back in the log before the writes it will store wrongly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ctl_ok(etcdctl(&ep, &["user", "add", "root:pw"], None));
    ctl_ok(etcdctl(&ep, &["auth", "enable"], None));
    let root = "--user=root:pw";
    for i in 0..10 {
        ctl_ok(etcdctl(
            &ep,
            &[root, "put", &format!("c{i}"), "value"],
            None,
        ));
    }
    let start = Instant::now();
    let expected = format!("memberID:{bad_id} alarm:CORRUPT \n");
    loop {
        let list = ctl_ok(etcdctl(&ep, &["alarm", "list"], None));
        if list == expected {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no CORRUPT alarm: {list:?}\n{}",
            c.nodes[leader].log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let put = etcdctl(&ep, &[root, "put", "after", "x"], None);
    assert_eq!(put.2, 1);
    assert_eq!(
        put.1.lines().last(),
        Some("Error: etcdserver: corrupt cluster")
    );
    assert_eq!(
        ctl_ok(etcdctl(
            &ep,
            &[root, "get", "c1", "--print-value-only"],
            None
        )),
        "value\n"
    );
    let (code, body) = crate::cluster::http_get(c.nodes[leader].client_port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("[-]data_corruption failed"), "{body}");

    // Its own start-up check now refuses to serve with the damaged data.
    c.restart(bad, "").unwrap();
    let start = Instant::now();
    while c.nodes[bad].exited().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "corrupt member kept running:\n{}",
            c.nodes[bad].log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        c.nodes[bad]
            .log_tail(5)
            .contains("found data inconsistency with peers"),
        "{}",
        c.nodes[bad].log_tail(5)
    );
}

/// `deploy/local-cluster.sh` brings up a working 3-member cluster and stops it again.
#[test]
fn local_cluster_script_starts_three_members() {
    let dir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local-cluster.sh");
    let bin = crate::cluster::ballast_bin();
    let run = |cmd: &str, base: u16| {
        std::process::Command::new("bash")
            .arg(&script)
            .args([cmd, dir.path().to_str().unwrap()])
            .env("BALLAST", &bin)
            .env("BASE_PORT", base.to_string())
            .env("PORT_STEP", "2")
            .output()
            .unwrap()
    };
    // The script takes six ports from BASE_PORT on (checked free together); a start that
    // still finds one taken by another process is retried on new ports.
    let mut base = ballast_harness::cluster::free_ports(6);
    let mut up = run("start", base);
    for _ in 0..3 {
        let lost_port = (1..=3).any(|i| {
            std::fs::read_to_string(dir.path().join(format!("infra{i}.log")))
                .unwrap_or_default()
                .contains("Address already in use")
        });
        if up.status.success() || !lost_port {
            break;
        }
        run("stop", base);
        let _ = std::fs::remove_dir_all(dir.path());
        std::fs::create_dir_all(dir.path()).unwrap();
        base = ballast_harness::cluster::free_ports(6);
        up = run("start", base);
    }
    let stop_after = scopeguard(|| {
        run("stop", base);
    });
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let eps = format!(
        "127.0.0.1:{base},127.0.0.1:{},127.0.0.1:{}",
        base + 2,
        base + 4
    );
    let list = ctl_ok(etcdctl(&eps, &["member", "list"], None));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains(", started, infra2, "), "{list}");
    ctl_ok(etcdctl(&eps, &["put", "a", "b"], None));
    drop(stop_after);
    let start = Instant::now();
    while crate::cluster::http_get(base, "/health").is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still serving after stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `f` when dropped, so a failed assertion still stops what a test started.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// `--log-outputs` sends the structured log to every destination named.
#[test]
fn log_outputs_write_json_logs_to_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ballast.log");
    let outputs = format!("stderr,{}", file.display());
    let s = Server::start(Kind::Ballast, &["--log-outputs", &outputs]);
    let text = std::fs::read_to_string(&file).unwrap();
    let ready = text
        .lines()
        .find(|l| l.contains("ready to serve client requests"))
        .unwrap_or_else(|| panic!("{text}"));
    let v: serde_json::Value = serde_json::from_str(ready).unwrap();
    assert_eq!(v["level"], "INFO");
    assert!(
        s.log().contains("ready to serve client requests"),
        "stderr too"
    );
    // `--log-format console`: plain text, no terminal colour codes in a file.
    let text_file = dir.path().join("text.log");
    let t = Server::start(
        Kind::Ballast,
        &[
            "--log-format",
            "console",
            "--log-outputs",
            text_file.to_str().unwrap(),
        ],
    );
    let text = std::fs::read_to_string(&text_file).unwrap();
    let ready = text
        .lines()
        .find(|l| l.contains("ready to serve client requests"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        ready.contains(" INFO ") && !ready.contains('\u{1b}'),
        "{ready:?}"
    );
    drop(t);
}

/// Scheduled backups: the leader writes verified snapshots on schedule, keeps the newest
/// `--backup-retention`, reports the last success as a metric, and the files restore.
#[test]
fn scheduled_backups_rotate_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let s = Server::start(
        Kind::Ballast,
        &[
            "--backup-dir",
            backups.to_str().unwrap(),
            "--backup-interval",
            "1s",
            "--backup-retention",
            "2",
        ],
    );
    let ep = s.endpoint();
    ctl_ok(etcdctl(&ep, &["put", "kept", "v"], None));
    // Three backups written means rotation has had something to delete.
    let start = Instant::now();
    while s.log().matches("wrote scheduled backup").count() < 3 {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut all: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    all.sort();
    // Each snapshot with its manifest beside it, nothing else left behind.
    let files: Vec<String> = all.iter().filter(|f| f.ends_with(".db")).cloned().collect();
    assert_eq!(files.len(), 2, "rotated to the retention: {all:?}");
    for f in &files {
        let manifest = f.replace(".db", ".json");
        assert!(all.contains(&manifest), "{all:?}");
    }
    assert_eq!(all.len(), 4, "{all:?}");
    for f in &files {
        assert!(f.starts_with("ballast-") && f.ends_with(".db"), "{f}");
        assert!(f.contains("-rev000000000002-"), "{f}");
    }
    let newest = backups.join(&files[1]);
    let status = ctl_ok(ballastctl(
        "",
        &["snapshot", "status", newest.to_str().unwrap()],
        None,
    ));
    assert!(
        files[1].ends_with(&format!("-{:0>8}.db", status.split(", ").next().unwrap())),
        "{status}"
    );
    let target = dir.path().join("restored");
    ctl_ok(ballastctl(
        "",
        &[
            "snapshot",
            "restore",
            newest.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ],
        None,
    ));
    let (_, text) = crate::cluster::http_get(s.port, "/metrics").unwrap();
    let last = metric(
        &parse_metrics(&text),
        "ballast_backup_last_success_timestamp_seconds",
        "",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(now - last < 5.0, "last success {last}, now {now}");
}

/// `etcdctl downgrade` (3.7) answers as etcd 3.7 does: validate and enable accept only the
/// minor version below, in etcd's words otherwise; enable records the job (Status shows it,
/// another enable is refused), cancel clears it and succeeds even with none. etcd 3.7 also
/// lowers its cluster version a few seconds after enabling; answers that depend on when that
/// happened are checked on Ballast alone.
#[test]
fn downgrade_answers_as_etcd_37() {
    let session = |kind: Kind, tool: &std::path::Path| {
        let s = Server::start(kind, &[]);
        let run = |args: &[&str]| run_ctl(tool.to_path_buf(), &s.endpoint(), args, None);
        // The exit code, stdout, and etcdctl's error line (not its client's warnings).
        let ctl = |args: &[&str]| {
            let (out, err, code) = run(args);
            let error = err
                .lines()
                .filter(|l| l.starts_with("Error:"))
                .collect::<String>();
            format!("{code} {}{error}", out.trim_end())
        };
        // Status as etcdctl 3.7 prints it (ballastctl prints etcdctl 3.4's fields).
        let info = || {
            let args = ["endpoint", "status", "-w", "json"];
            let out = run_ctl(etcd37_tool("etcdctl"), &s.endpoint(), &args, None).0;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            v[0]["Status"]["downgradeInfo"].to_string()
        };
        let mut before: Vec<String> = [
            &["downgrade", "validate", "3.6"][..],
            &["downgrade", "validate"],
            &["downgrade", "validate", "3.6", "3.5"],
            &["downgrade", "validate", "3.6", "-w", "table"],
            &["downgrade", "validate", "3.6", "-w", "fields"],
            &["downgrade", "validate", "3.6.2"],
            &["downgrade", "validate", "3.5"],
            &["downgrade", "validate", "3.7"],
            &["downgrade", "validate", "v3.6"],
            &["downgrade", "validate", "three"],
            &["downgrade", "cancel"],
            &["downgrade", "enable", "3.5"],
            &["downgrade", "enable", "3.6"],
        ]
        .iter()
        .map(|a| ctl(a))
        .collect();
        before.push(info());
        let again = ctl(&["downgrade", "enable", "3.6"]);
        let cancel = ctl(&["downgrade", "cancel"]);
        before.push(info());
        (before, again, cancel)
    };
    let etcdctl = etcd37_tool("etcdctl");
    let (etcd, _, _) = session(Kind::Etcd37, &etcdctl);
    let (ballast, again, cancel) = session(Kind::Ballast, &etcdctl);
    assert_eq!(ballast, etcd, "Ballast, then etcd 3.7");
    assert!(etcd[0].starts_with("0 Downgrade validate success, cluster version 3.7"));
    assert!(etcd[13].contains(r#""enabled":true"#), "{}", etcd[13]);
    // ballastctl speaks etcdctl 3.7's downgrade commands.
    let ballastctl = crate::cluster::ctl_of(Kind::Ballast);
    let (with_ballastctl, _, _) = session(Kind::Ballast, &ballastctl);
    assert_eq!(with_ballastctl, etcd, "ballastctl, then etcdctl 3.7");
    assert_eq!(
        again,
        "1 Error: etcdserver: cluster has a downgrade job in progress"
    );
    assert_eq!(cancel, "0 Downgrade cancel success, cluster version 3.7");
}

/// `check perf` and `check datascale` run etcdctl's workloads against Ballast and report in
/// its words; refusals (keys already under the prefix, unknown load) match etcdctl's.
#[test]
fn check_perf_and_datascale_match_etcdctl() {
    let s = Server::start(Kind::Ballast, &[]);
    let ep = s.endpoint();
    let bin = crate::cluster::bin_dir().join("ballastctl");
    let perf = std::process::Command::new(&bin)
        .args([
            &format!("--endpoints={ep}"),
            "check",
            "perf",
            "--auto-compact",
        ])
        .env("BALLASTCTL_CHECK_PERF_SECONDS", "3")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&perf.stdout).to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Compacted with revision "), "{out}");
    assert!(
        lines[1].starts_with("PASS: Throughput is ")
            || lines[1].starts_with("FAIL: Throughput too low: "),
        "{out}"
    );
    assert!(lines[1].ends_with(" writes/s"), "{out}");
    assert!(lines[2].contains("Slowest request"), "{out}");
    assert!(lines[3].contains("Stddev"), "{out}");
    assert!(lines[4] == "PASS" || lines[4] == "FAIL", "{out}");
    assert_eq!(
        perf.status.code(),
        Some(if lines[4] == "PASS" { 0 } else { 1 })
    );
    let left = ctl_ok(etcdctl(
        &ep,
        &["get", "/etcdctl-check-perf/", "--prefix", "--keys-only"],
        None,
    ));
    assert!(left.is_empty(), "the check deletes its keys");

    let ds = ctl_ok(ballastctl(&ep, &["check", "datascale"], None));
    let lines: Vec<&str> = ds.lines().collect();
    assert_eq!(
        lines[0],
        "Start data scale check for work load [10000 key-value pairs, 1024 bytes per key-value, 50 concurrent clients]."
    );
    assert!(
        lines[1].starts_with("PASS: Approximate system memory used : "),
        "{ds}"
    );
    assert!(lines[1].ends_with(" MB."), "{ds}");

    ctl_ok(etcdctl(&ep, &["put", "/etcdctl-check-perf/x", "y"], None));
    ctl_ok(etcdctl(
        &ep,
        &["put", "/etcdctl-check-datascale/x", "y"],
        None,
    ));
    for args in [
        &["check", "perf"][..],
        &["check", "datascale"][..],
        &["check", "perf", "--load", "huge"][..],
    ] {
        let a = etcdctl(&ep, args, None);
        let b = ballastctl(&ep, args, None);
        assert_eq!(
            (a.2, a.1.lines().last()),
            (b.2, b.1.lines().last()),
            "{args:?}: {a:?} {b:?}"
        );
    }
}

/// Every directory and file of a member's data is owner-only (0700 / 0600), as etcd makes
/// them: the store is every key, secrets among them. Checked on etcd too, then on a fresh
/// Ballast member, one restored by ballastctl, and its scheduled backups.
#[test]
fn data_directories_and_files_are_owner_only_as_etcds() {
    use std::os::unix::fs::PermissionsExt;
    fn modes(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        out.push((dir.to_path_buf(), mode));
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                modes(&p, out);
            } else {
                let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                out.push((p, m));
            }
        }
    }
    // At least the directory, `member`, `snap`, `wal`, the store and a WAL file.
    let check = |what: &str, dir: &Path, at_least: usize| {
        let mut all = Vec::new();
        modes(dir, &mut all);
        assert!(all.len() >= at_least, "{what}: {all:?}");
        for (p, m) in all {
            let want = if p.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(m, want, "{what}: {} is {m:o}", p.display());
        }
    };
    let etcd = Server::start(Kind::Etcd, &[]);
    ctl_ok(etcdctl(&etcd.endpoint(), &["put", "k", "v"], None));
    check("etcd", etcd.data_path(), 6);

    let backups = tempfile::tempdir().unwrap();
    let backup_dir = backups.path().join("b");
    let b = Server::start(
        Kind::Ballast,
        &[
            "--backup-dir",
            backup_dir.to_str().unwrap(),
            "--backup-interval",
            "1s",
        ],
    );
    ctl_ok(etcdctl(&b.endpoint(), &["put", "k", "v"], None));
    check("ballast", b.data_path(), 6);
    let start = Instant::now();
    while std::fs::read_dir(&backup_dir).map_or(0, |d| d.count()) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no backup written"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check("backups", &backup_dir, 2);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.db");
    ctl_ok(ballastctl(
        &b.endpoint(),
        &["snapshot", "save", file.to_str().unwrap()],
        None,
    ));
    let restored = crate::cluster::restored_member(Kind::Ballast, &file, &[]);
    check("restored", restored.data_path(), 6);
}

/// etcdctl 3.7's `endpoint status -w json` shows the same fields for Ballast as for etcd 3.7
/// (`storageVersion`, `dbSizeQuota`, `downgradeInfo` included).
#[test]
fn endpoint_status_has_etcd_37s_fields() {
    let fields = |kind: Kind| {
        let s = Server::start(kind, &[]);
        let out = ctl_ok(run_ctl(
            etcd37_tool("etcdctl"),
            &s.endpoint(),
            &["endpoint", "status", "-w", "json"],
            None,
        ));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let status = v[0]["Status"].as_object().cloned().unwrap_or_default();
        let mut keys: Vec<String> = status.keys().cloned().collect();
        keys.sort();
        (keys, status["downgradeInfo"].clone())
    };
    assert_eq!(fields(Kind::Ballast), fields(Kind::Etcd37));
}

/// A raw HTTP/1.1 request without a body: (status, content type, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String, String) {
    let (code, head, body) = crate::gateway::request(port, method, path, "", "");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (code, content_type, body)
}

/// `/health`, `/livez` and `/readyz` answer as etcd 3.7's do: the same checks (`non_learner`
/// included), `?exclude=` and `?verbose`, each check's own path, `?serializable=true`, an
/// excluded alarm, etcd's failure text, and 405 for anything but GET. etcd orders the checks
/// at random, so lines are compared as sets.
#[test]
fn health_endpoints_match_etcd_37() {
    let paths = [
        "/health",
        "/health?serializable=true",
        "/livez",
        "/livez?verbose",
        "/readyz",
        "/readyz?verbose",
        "/readyz?exclude=data_corruption&verbose",
        "/readyz?exclude=nonexistent&verbose",
        "/livez/serializable_read",
        "/readyz/non_learner?verbose",
        "/readyz/linearizable_read",
    ];
    let observe = |kind: Kind| {
        let s = Server::start(kind, &[]);
        let mut out = Vec::new();
        for path in paths {
            let (code, ctype, body) = http(s.port, "GET", path);
            let mut lines: Vec<String> = body.split('\n').map(str::to_string).collect();
            lines.sort();
            out.push((path.to_string(), code, ctype, lines));
        }
        for path in ["/health", "/readyz", "/livez/serializable_read"] {
            let (code, _, body) = http(s.port, "POST", path);
            out.push((format!("POST {path}"), code, String::new(), vec![body]));
        }
        // A NOSPACE alarm fails /health unless excluded; the ready checks ignore it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([s.endpoint()], None)
                .await
                .unwrap();
            let id = c.status().await.unwrap().header().unwrap().member_id();
            let mut o = etcd_client::AlarmOptions::new();
            o.with_member(id);
            c.alarm(
                etcd_client::AlarmAction::Activate,
                etcd_client::AlarmType::Nospace,
                Some(o),
            )
            .await
            .unwrap();
        });
        for path in ["/health", "/health?exclude=NOSPACE", "/readyz"] {
            let (code, ctype, body) = http(s.port, "GET", path);
            out.push((format!("NOSPACE {path}"), code, ctype, vec![body]));
        }
        out
    };
    let (etcd, ballast) = (observe(Kind::Etcd37), observe(Kind::Ballast));
    let alarmed = etcd.iter().find(|o| o.0 == "NOSPACE /health").unwrap();
    assert_eq!(alarmed.1, 503, "the alarm was raised: {alarmed:?}");
    assert_eq!(etcd.len(), ballast.len());
    for (e, b) in etcd.iter().zip(&ballast) {
        assert_eq!(b, e, "Ballast, then etcd 3.7");
    }
}

/// The health metrics count as etcd 3.7's do: `etcd_server_health_success`/`_failures` per
/// `/health` answer, and per `/livez`/`/readyz` check `etcd_server_healthcheck` (the last
/// result) and `etcd_server_healthchecks_total` (by status), each listed once it has run.
#[test]
fn health_metrics_count_as_etcd_37s() {
    let family_lines = |port: u16| -> (Vec<String>, f64) {
        let body = crate::cluster::http_get(port, "/metrics").unwrap().1;
        let mut lines: Vec<String> = body
            .lines()
            .filter(|l| {
                l.starts_with("etcd_server_healthcheck") || l.contains(" etcd_server_healthcheck")
            })
            .map(str::to_string)
            .collect();
        lines.sort();
        let success = body
            .lines()
            .find_map(|l| l.strip_prefix("etcd_server_health_success "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0);
        (lines, success)
    };
    let observe = |kind: Kind| {
        let s = Server::start(kind, &[]);
        let (_, before) = family_lines(s.port);
        for path in [
            "/health",
            "/health",
            "/livez",
            "/readyz?exclude=non_learner",
            "/readyz/linearizable_read",
        ] {
            assert_eq!(crate::cluster::http_get(s.port, path).unwrap().0, 200);
        }
        let (lines, after) = family_lines(s.port);
        (lines, after - before)
    };
    let (etcd, ballast) = (observe(Kind::Etcd37), observe(Kind::Ballast));
    assert_eq!(etcd.1, 2.0, "two /health answers counted by etcd");
    assert!(!etcd.0.is_empty());
    assert_eq!(ballast, etcd, "Ballast, then etcd 3.7");
}

/// Families a real etcd exposes that Ballast does not, each with the reason. Go runtime
/// families (`go_*`) are left out of the comparison altogether.
const METRICS_NOT_IN_BALLAST: &[(&str, &str)] = &[
    ("etcd_debugging_disk_backend_commit_rebalance_duration_seconds", "a phase of bbolt's commit; redb's commit has no rebalance step (the whole commit is etcd_disk_backend_commit_duration_seconds)"),
    ("etcd_debugging_disk_backend_commit_spill_duration_seconds", "a phase of bbolt's commit; redb's commit has no spill step"),
    ("etcd_debugging_disk_backend_commit_write_duration_seconds", "a phase of bbolt's commit; redb's commit is measured whole"),
    ("etcd_debugging_store_expires_total", "the v2 store, which Ballast does not serve"),
    ("etcd_debugging_store_reads_total", "the v2 store, which Ballast does not serve"),
    ("etcd_debugging_store_watch_requests_total", "the v2 store, which Ballast does not serve"),
    ("etcd_debugging_store_watchers", "the v2 store, which Ballast does not serve"),
    ("etcd_debugging_store_writes_total", "the v2 store, which Ballast does not serve"),
    ("etcd_grpc_proxy_cache_hits_total", "grpc-proxy mode, which Ballast does not have"),
    ("etcd_grpc_proxy_cache_keys_total", "grpc-proxy mode, which Ballast does not have"),
    ("etcd_grpc_proxy_cache_misses_total", "grpc-proxy mode, which Ballast does not have"),
    ("etcd_grpc_proxy_events_coalescing_total", "grpc-proxy mode, which Ballast does not have"),
    ("etcd_grpc_proxy_watchers_coalescing_total", "grpc-proxy mode, which Ballast does not have"),
    ("etcd_server_go_version", "Ballast is not a Go program; ballast_version names its own build"),
    ("etcd_snap_fsync_duration_seconds", "etcd's raft snapshot .snap files; Ballast's store is its raft snapshot and writes no .snap file"),
    ("etcd_debugging_snap_save_marshalling_duration_seconds", "etcd's raft snapshot .snap files, which Ballast does not write"),
    ("etcd_debugging_snap_save_total_duration_seconds", "etcd's raft snapshot .snap files, which Ballast does not write"),
    ("etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds", "Ballast compacts its key index in the applied batch that holds the compaction, reported as a db compaction pause"),
    ("etcd_debugging_mvcc_pending_events_total", "etcd's victim batches of events held for slow watchers; a slow Ballast watcher re-reads history instead and holds no pending events"),
    ("etcd_mvcc_db_open_read_transactions", "bbolt read transactions that block its remapping; redb readers are MVCC snapshots that never block the writer, and are not counted"),
    ("grpc_server_msg_received_total", "go-grpc-prometheus's per-message stream counts; Ballast counts calls (grpc_server_started/handled_total) and bytes (etcd_network_client_grpc_*_bytes_total)"),
    ("grpc_server_msg_sent_total", "go-grpc-prometheus's per-message stream counts; Ballast counts calls and bytes"),
    ("etcd_debugging_server_watch_send_loop_control_stream_duration_seconds", "timings of etcd 3.7's watch send-loop goroutine, a loop Ballast's watch streams do not have"),
    ("etcd_debugging_server_watch_send_loop_progress_duration_seconds", "timings of etcd 3.7's watch send-loop goroutine, which Ballast does not have"),
    ("etcd_debugging_server_watch_send_loop_watch_stream_duration_per_event_seconds", "timings of etcd 3.7's watch send-loop goroutine, which Ballast does not have"),
    ("etcd_debugging_server_watch_send_loop_watch_stream_duration_seconds", "timings of etcd 3.7's watch send-loop goroutine, which Ballast does not have"),
];

/// A family as scraped: type, help text, and the label names its samples carry.
type Family = (String, String, std::collections::BTreeSet<String>);

/// `# TYPE`, `# HELP` and sample label names (`le` aside) of every family in a scrape.
fn families(text: &str) -> std::collections::BTreeMap<String, Family> {
    let mut out: std::collections::BTreeMap<String, Family> = std::collections::BTreeMap::new();
    let mut help = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name.to_string(), h.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let h = help.get(name).cloned().unwrap_or_default();
            out.insert(name.to_string(), (kind.to_string(), h, Default::default()));
        } else if let Some((series, _)) = line.split_once('{') {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|x| series.strip_suffix(x).filter(|f| out.contains_key(*f)))
                .unwrap_or(series);
            if let Some(f) = out.get_mut(family) {
                let labels = line[series.len() + 1..].split('}').next().unwrap_or("");
                for pair in labels.split("\",") {
                    let name = pair.split('=').next().unwrap_or("").trim_matches(',');
                    if !name.is_empty() && name != "le" {
                        f.2.insert(name.to_string());
                    }
                }
            }
        }
    }
    out
}

/// The same workload on 3-member clusters of etcd 3.4, etcd 3.7 and Ballast (puts, ranges,
/// deletes, txns, leases, watches, compaction, defrag, snapshot, hash, member list, auth
/// reads), then every member scraped: each family etcd exposes is in Ballast's output with
/// etcd's type and help text (3.4's or 3.7's wording), unless the allow-list says why not.
#[test]
fn metric_families_are_etcds() {
    let scrape = |kind: Kind| -> (std::collections::BTreeMap<String, Family>, Vec<String>) {
        let c = crate::cluster::Cluster::start(kind, 3, &[]);
        let eps = c.endpoints();
        let ctl = crate::cluster::ctl_of(if kind == Kind::Ballast {
            Kind::Etcd
        } else {
            kind
        });
        let run = |i: usize, args: &[&str], stdin: Option<&str>| {
            ctl_ok(crate::cluster::run_ctl(
                ctl.clone(),
                &eps[i % 3],
                args,
                stdin,
            ))
        };
        let watch = crate::cluster::ctl_bg(&ctl, &eps[1], &["watch", "w", "--prefix"], 3.0);
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..30 {
            run(i, &["put", &format!("w{i}"), "v"], None);
            run(i, &["get", &format!("w{i}")], None);
        }
        run(0, &["del", "w1"], None);
        run(
            1,
            &["txn"],
            Some("value(\"w2\") = \"v\"\n\nput w3 x\nget w4\n\n\n"),
        );
        let lease = run(2, &["lease", "grant", "60"], None);
        let id = lease.split_whitespace().nth(1).unwrap().to_string();
        run(2, &["put", "l", "v", &format!("--lease={id}")], None);
        run(0, &["lease", "keep-alive", "--once", &id], None);
        run(1, &["lease", "timetolive", &id], None);
        run(0, &["lease", "revoke", &id], None);
        // Past w1's delete and w3's overwrite, so compaction removes revisions.
        run(0, &["compact", "33"], None);
        run(0, &["defrag"], None);
        run(0, &["endpoint", "hashkv"], None);
        run(0, &["member", "list"], None);
        run(0, &["endpoint", "status"], None);
        let snap = c.members[0].data_path().with_extension("snap");
        run(0, &["snapshot", "save", snap.to_str().unwrap()], None);
        let _ = crate::cluster::finish(watch);
        // Round trips and other periodic observations take a few seconds to appear.
        std::thread::sleep(Duration::from_secs(6));
        let mut all = std::collections::BTreeMap::new();
        let mut bodies = Vec::new();
        for m in &c.members {
            // etcd's large answers are chunked.
            let (_, _, body) = crate::gateway::request(m.port, "GET", "/metrics", "", "");
            all.extend(families(&body));
            bodies.push(body);
        }
        (all, bodies)
    };
    let (ballast, bodies) = scrape(Kind::Ballast);
    // The counters follow the workload: every member applies every write; member 1 served
    // the watch.
    let samples: Vec<_> = bodies.iter().map(|b| parse_metrics(b)).collect();
    for s in &samples {
        let at_least = |name: &str, labels: &str, n: f64| {
            let v = metric(s, name, labels).unwrap_or(0.0);
            assert!(v >= n, "{name}{{{labels}}} = {v}, expected at least {n}");
        };
        at_least("etcd_mvcc_put_total", "", 32.0);
        at_least("etcd_debugging_mvcc_put_total", "", 32.0);
        at_least("etcd_mvcc_delete_total", "", 1.0);
        at_least("etcd_mvcc_txn_total", "", 1.0);
        at_least("etcd_debugging_lease_granted_total", "", 1.0);
        at_least("etcd_debugging_lease_revoked_total", "", 1.0);
        at_least("etcd_debugging_mvcc_db_compaction_keys_total", "", 1.0);
        at_least("etcd_disk_wal_write_bytes_total", "", 1.0);
        // Followers hear only from the leader: summed over peers.
        let received: f64 = s
            .iter()
            .filter(|(n, _, _)| n == "etcd_network_peer_received_bytes_total")
            .map(|x| x.2)
            .sum();
        assert!(received > 0.0, "nothing received from peers");
        at_least("etcd_network_known_peers", "Remote=", 1.0);
    }
    let sum = |name: &str, labels: &str| -> f64 {
        samples.iter().filter_map(|s| metric(s, name, labels)).sum()
    };
    assert!(sum("etcd_debugging_mvcc_events_total", "") >= 30.0);
    assert!(sum("etcd_mvcc_range_total", "") >= 30.0);
    assert!(sum("etcd_network_client_grpc_received_bytes_total", "") > 0.0);
    assert!(sum("etcd_disk_backend_defrag_duration_seconds_count", "") >= 1.0);
    assert!(sum("etcd_disk_backend_snapshot_duration_seconds_count", "") >= 1.0);
    assert!(sum("etcd_mvcc_hash_rev_duration_seconds_count", "") >= 1.0);
    assert!(
        sum(
            "etcd_server_client_requests_total",
            r#"client_api_version="3.4",type="unary""#
        ) >= 60.0
    );
    let mut problems = Vec::new();
    let mut seen_allowed = std::collections::HashSet::new();
    let references = [
        (Kind::Etcd, scrape(Kind::Etcd).0),
        (Kind::Etcd37, scrape(Kind::Etcd37).0),
    ];
    for (kind, etcd) in &references {
        for (name, (t, help, labels)) in etcd {
            if name.starts_with("go_") {
                continue;
            }
            if METRICS_NOT_IN_BALLAST.iter().any(|(n, _)| n == name) {
                seen_allowed.insert(name.clone());
                continue;
            }
            match ballast.get(name) {
                None => problems.push(format!("{kind:?}: missing {name} {t} {help:?}")),
                Some((bt, bh, bl)) => {
                    if !labels.is_empty() && !bl.is_empty() && bl != labels {
                        problems.push(format!(
                            "{kind:?}: {name} has labels {bl:?}, etcd has {labels:?}"
                        ));
                    }
                    let helps: Vec<&str> = references
                        .iter()
                        .filter_map(|(_, e)| e.get(name).map(|x| x.1.as_str()))
                        .collect();
                    if bt != t || !helps.contains(&bh.as_str()) {
                        problems.push(format!(
                            "{kind:?}: {name} is {bt} {bh:?}, etcd has {t} {help:?}"
                        ));
                    }
                }
            }
        }
    }
    for (name, why) in METRICS_NOT_IN_BALLAST {
        assert!(!why.is_empty());
        assert!(
            seen_allowed.contains(*name),
            "{name} is allowed but no etcd exposes it"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Starts `bin` as member `name` of `initial` with `urls` (client, peer) as its listen and
/// advertise URLs, logging to `<dir>/<name>.log`.
fn spawn_member(
    bin: &Path,
    dir: &Path,
    name: &str,
    (client, peer): (&str, &str),
    initial: &str,
) -> std::process::Child {
    std::process::Command::new(bin)
        .arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", dir.join(name).display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={initial}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap()
}

/// Unix-socket URLs (`unix://`) for clients and peers, as etcd serves them: a member on
/// sockets only answers etcdctl 3.7 and ballastctl through its client socket exactly as
/// etcd 3.7 does, and three members whose peer URLs are sockets elect a leader and replicate.
#[test]
fn unix_socket_listeners_serve_clients_and_peers() {
    let dir = tempfile::tempdir().unwrap();
    let session = |kind: Kind| {
        let d = dir.path().join(format!("{kind:?}"));
        std::fs::create_dir_all(&d).unwrap();
        let client = format!("unix://{}/c.sock", d.display());
        let peer = format!("unix://{}/p.sock", d.display());
        let bin = match kind {
            Kind::Ballast => crate::cluster::ballast_bin(),
            _ => etcd37_tool("etcd"),
        };
        let mut child = spawn_member(
            &bin,
            &d,
            "default",
            (&client, &peer),
            &format!("default={peer}"),
        );
        let ctl = |tool: &Path, args: &[&str]| {
            let out = run_ctl(tool.to_path_buf(), &client, args, None);
            (out.0, out.2)
        };
        let etcdctl = etcd37_tool("etcdctl");
        let start = Instant::now();
        while ctl(&etcdctl, &["put", "k", "v"]).1 != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{}",
                std::fs::read_to_string(d.join("default.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut seen = vec![
            ctl(&etcdctl, &["get", "k", "--print-value-only"]),
            ctl(&etcdctl, &["member", "list", "-w", "fields"]),
        ];
        if kind == Kind::Ballast {
            seen.push(ctl(
                &ctl_of(Kind::Ballast),
                &["get", "k", "--print-value-only"],
            ));
        }
        let _ = child.kill();
        let _ = child.wait();
        // The same answers wherever the sockets are.
        seen.iter()
            .map(|(out, code)| {
                let out: String = out
                    .lines()
                    .filter(|l| l.contains("URL") || !l.contains(" : "))
                    .collect::<Vec<_>>()
                    .join("\n");
                (out.replace(&d.display().to_string(), "DIR"), *code)
            })
            .collect::<Vec<_>>()
    };
    let etcd = session(Kind::Etcd37);
    let ballast = session(Kind::Ballast);
    assert_eq!(ballast[..2], etcd[..], "Ballast, then etcd 3.7");
    assert_eq!(
        ballast[2],
        ("v".to_string(), 0),
        "ballastctl over the socket"
    );

    // Three members talking over peer sockets, clients on TCP.
    let d = dir.path().join("cluster");
    std::fs::create_dir_all(&d).unwrap();
    let peers: Vec<String> = (0..3)
        .map(|i| format!("unix://{}/p{i}.sock", d.display()))
        .collect();
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("u{i}={p}"))
        .collect();
    let clients: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let mut children: Vec<_> = (0..3)
        .map(|i| {
            spawn_member(
                &crate::cluster::ballast_bin(),
                &d,
                &format!("u{i}"),
                (&clients[i], &peers[i]),
                &initial.join(","),
            )
        })
        .collect();
    let start = Instant::now();
    while etcdctl(&clients[0], &["put", "a", "b"], None).2 != 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "no leader");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = etcdctl(&clients[2], &["get", "a", "--print-value-only"], None);
    assert_eq!(got.0, "b\n", "{got:?}");
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Port 0 in a listen URL binds an ephemeral port, as with etcd; the log names the port
/// bound, and clients reach the member there.
#[test]
fn port_zero_binds_an_ephemeral_port() {
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut child = spawn_member(
        &crate::cluster::ballast_bin(),
        dir.path(),
        "z",
        ("http://127.0.0.1:0", &peer),
        &format!("z={peer}"),
    );
    let log = dir.path().join("z.log");
    let start = Instant::now();
    let port = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let bound = text
            .lines()
            .filter(|l| l.contains("serving client traffic insecurely"))
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v["address"]
                    .as_str()?
                    .rsplit_once(':')?
                    .1
                    .parse::<u16>()
                    .ok()
            });
        if let Some(p) = bound {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(port, 0);
    let ep = format!("127.0.0.1:{port}");
    assert_eq!(ctl_ok(etcdctl(&ep, &["put", "k", "v"], None)), "OK\n");
    let _ = child.kill();
    let _ = child.wait();
}

/// A compaction answers once it is applied and its revisions are deleted afterwards, in
/// bounded steps the applier takes between batches and while idle; reads below it fail from
/// the answer on. `--physical` answers only once they are all gone, as etcd's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_revisions_are_deleted_in_the_background_and_physical_waits() {
    use etcd_client::{Client, CompactionOptions, GetOptions, Txn, TxnOp};
    const KEYS: usize = 100;
    const WRITES: usize = 100;
    let s = Server::start(Kind::Ballast, &[]);
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    let figure = |s: &Server, name: &str| {
        let (_, _, body) = crate::gateway::request(s.port, "GET", "/metrics", "", "");
        metric(&parse_metrics(&body), name, "").unwrap_or(0.0) as usize
    };
    let dropped = |s: &Server| figure(s, "etcd_debugging_mvcc_db_compaction_keys_total");
    // etcd observes a compaction's total duration once, when its last batch is done.
    let finished = |s: &Server| {
        figure(
            s,
            "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_count",
        )
    };
    let write_all = async |c: &mut Client| {
        let mut rev = 0;
        for w in 0..WRITES {
            let ops: Vec<TxnOp> = (0..KEYS)
                .map(|k| TxnOp::put(format!("k{k:03}"), format!("{w}"), None))
                .collect();
            rev = c
                .txn(Txn::new().and_then(ops))
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
        }
        rev
    };
    let rev = write_all(&mut c).await;
    c.compact(rev, None).await.unwrap();
    // Read in this order, a finished compaction must have deleted everything it drops.
    let (done, gone) = (finished(&s), dropped(&s));
    assert!(
        done == 0 || gone == KEYS * (WRITES - 1),
        "finished at {gone}"
    );
    let old = c
        .get("k000", Some(GetOptions::new().with_revision(2)))
        .await;
    assert!(
        format!("{old:?}").contains("required revision has been compacted"),
        "{old:?}"
    );
    // All but each key's last revision go, with nothing else arriving.
    let want = KEYS * (WRITES - 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while dropped(&s) < want {
        assert!(
            Instant::now() < deadline,
            "{} of {want} dropped",
            dropped(&s)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dropped(&s), want);
    let deadline = Instant::now() + Duration::from_secs(5);
    while finished(&s) < 1 {
        assert!(Instant::now() < deadline, "total duration never observed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rev = write_all(&mut c).await;
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    // Each key's survivor of the first compaction goes too.
    assert_eq!(
        dropped(&s),
        want + KEYS * WRITES,
        "physical answered before deleting"
    );
    assert_eq!(finished(&s), 2);
}

/// After writes go quiet, `Status` shows what the store holds, as etcd's does: dbSize counts
/// the values (Ballast's store file gets them on its idle sync, not with some later write)
/// and dbSizeInUse lies between the values and dbSize.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_sizes_show_the_data_once_writes_go_quiet() {
    const VALUES: usize = 200;
    const SIZE: usize = 20_000;
    for kind in [Kind::Etcd, Kind::Ballast] {
        let s = Server::start(kind, &[]);
        let mut c = etcd_client::Client::connect([s.endpoint()], None)
            .await
            .unwrap();
        for i in 0..VALUES {
            c.put(format!("k{i:04}"), vec![b'v'; SIZE], None)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let st = c.status().await.unwrap();
        let data = (VALUES * SIZE) as i64;
        assert!(st.db_size() >= data, "{kind:?}: dbSize {}", st.db_size());
        assert!(st.db_size() < 3 * data, "{kind:?}: dbSize {}", st.db_size());
        let in_use = st.raft_used_db_size();
        assert!(
            in_use >= data && in_use <= st.db_size(),
            "{kind:?}: in use {in_use} of {}",
            st.db_size()
        );
    }
}
