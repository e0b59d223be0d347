//! Locks and elections: etcdctl's `lock` and `elect` against etcd and Ballast, and mutual
//! exclusion under contention from several processes.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use crate::cluster::{ctl_bg, finish, run_ctl, Cluster, Kind, Server};

fn out(c: Child) -> String {
    let (stdout, stderr, _) = finish(c);
    let text = stdout + &stderr;
    // Owner keys end in the lease ID, which differs between servers.
    text.lines()
        .map(|l| match l.rsplit_once('/') {
            Some((head, tail)) if tail.len() == 16 => format!("{head}/LEASE"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn scenario(kind: Kind, ctl: &Path) -> Vec<String> {
    let s = Server::start(kind, &[]);
    let ep = s.endpoint();
    let mut seen = Vec::new();
    let run = |args: &[&str]| run_ctl(ctl.to_path_buf(), &ep, args, None);
    seen.push(format!("{:?}", run(&["lock", "mylock", "echo", "held"])));
    let holder = ctl_bg(ctl, &ep, &["lock", "mylock"], 1.5);
    std::thread::sleep(Duration::from_millis(500));
    // Waits for the holder to go, then runs.
    seen.push(format!("{:?}", run(&["lock", "mylock", "echo", "second"])));
    seen.push(out(holder));
    let observer = ctl_bg(ctl, &ep, &["elect", "-l", "myelection"], 4.0);
    std::thread::sleep(Duration::from_millis(300));
    let first = ctl_bg(ctl, &ep, &["elect", "myelection", "alpha"], 1.5);
    std::thread::sleep(Duration::from_millis(500));
    let second = ctl_bg(ctl, &ep, &["elect", "myelection", "beta"], 3.0);
    seen.push(out(first));
    seen.push(out(second));
    seen.push(out(observer));
    // Observing an election nobody leads waits (and prints nothing) until stopped.
    seen.push(out(ctl_bg(ctl, &ep, &["elect", "-l", "nobody"], 1.0)));
    seen.push(format!("{:?}", run(&["elect", "nobody"])));
    seen
}

fn compare(want: Vec<String>, got: Vec<String>) {
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let g = g.replace("ballastctl", "etcdctl");
        assert_eq!(&g, w, "step {i}");
    }
}

#[test]
fn etcdctl_lock_and_elect_match_etcd() {
    let etcdctl = Path::new("etcdctl");
    compare(
        scenario(Kind::Etcd, etcdctl),
        scenario(Kind::Ballast, etcdctl),
    );
}

#[test]
fn ballastctl_lock_and_elect_match_etcdctl() {
    let etcdctl = Path::new("etcdctl");
    let ours = crate::cluster::bin_dir().join("ballastctl");
    compare(
        scenario(Kind::Etcd, etcdctl),
        scenario(Kind::Ballast, &ours),
    );
}

#[test]
fn lock_excludes_under_contention() {
    let c = Cluster::start(Kind::Ballast, 3, &[]);
    let eps = c.endpoints();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "echo start >> {0}; sleep 0.2; echo end >> {0}",
        log.display()
    );
    // Six processes on three members compete for the same lock.
    let procs: Vec<Child> = (0..6)
        .map(|i| {
            let args = ["lock", "contended", "--", "sh", "-c", &script];
            ctl_bg(Path::new("etcdctl"), &eps[i % 3], &args, 20.0)
        })
        .collect();
    for p in procs {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 12);
    for pair in lines.chunks(2) {
        assert_eq!(
            pair,
            ["start", "end"],
            "critical sections overlapped: {lines:?}"
        );
    }
}
