//! Membership changes on running clusters, driven by the real etcdctl and by ballastctl, and
//! the member list compared with a real 3-member etcd cluster started with the same flags.

use std::time::{Duration, Instant};

use crate::cluster::{bin_dir, etcdctl, free_port, run_ctl, Cluster, Kind, Member, Server};

type Ctl = fn(&str, &[&str]) -> (String, String, i32);

fn etcdctl2(ep: &str, args: &[&str]) -> (String, String, i32) {
    etcdctl(ep, args, None)
}

fn ballastctl2(ep: &str, args: &[&str]) -> (String, String, i32) {
    run_ctl(bin_dir().join("ballastctl"), ep, args, None)
}

/// Runs `ctl` until it exits 0 or `limit` passes; returns the last result.
fn retry(ctl: Ctl, ep: &str, args: &[&str], limit: Duration) -> (String, String, i32) {
    retry_until(ctl, ep, args, limit, |r| r.2 == 0)
}

fn retry_until(
    ctl: Ctl,
    ep: &str,
    args: &[&str],
    limit: Duration,
    done: impl Fn(&(String, String, i32)) -> bool,
) -> (String, String, i32) {
    let start = Instant::now();
    loop {
        let r = ctl(ep, args);
        if done(&r) || start.elapsed() > limit {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `member list` once every member has published its name and client URLs.
fn settled_list(ctl: Ctl, ep: &str, format: &str) -> String {
    let start = Instant::now();
    loop {
        let simple = ctl(ep, &["member", "list"]).0;
        if !simple.is_empty() && !simple.contains("unstarted") {
            return ctl(ep, &["member", "list", "-w", format]).0;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "members never all started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scrub_term(s: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
    v["header"]["raft_term"] = 0.into();
    v.to_string()
}

fn etcdctl37_2(ep: &str, args: &[&str]) -> (String, String, i32) {
    crate::cluster::etcdctl37(ep, args, None)
}

/// etcdctl 3.4 lists Ballast's members as it lists a 3-member etcd 3.4 cluster's; ballastctl
/// lists them as etcdctl 3.7 lists an etcd 3.7 cluster's (same ports, so the same IDs).
#[test]
fn member_list_matches_a_real_three_member_etcd_cluster() {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let formats = ["json", "table", "simple", "fields"];
    let mut want: Vec<Vec<String>> = Vec::new();
    for (kind, ctl) in [
        (Kind::Etcd, etcdctl2 as Ctl),
        (Kind::Etcd37, etcdctl37_2 as Ctl),
    ] {
        let etcd = Cluster::start_on(kind, &ports, &[]);
        let ep = etcd.members[0].endpoint();
        want.push(formats.iter().map(|f| settled_list(ctl, &ep, f)).collect());
    }
    let ballast = Cluster::start_on(Kind::Ballast, &ports, &[]);
    let ep = ballast.members[0].endpoint();
    for (i, f) in formats.iter().enumerate() {
        for (w, ctl) in [(&want[0], etcdctl2 as Ctl), (&want[1], ballastctl2 as Ctl)] {
            let want = w;
            let got = settled_list(ctl, &ep, f);
            if *f == "json" {
                assert_eq!(scrub_term(&got), scrub_term(&want[i]));
            } else {
                let strip = |s: &str| {
                    s.lines()
                        .filter(|l| !l.starts_with("\"RaftTerm\""))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                assert_eq!(strip(&got), strip(&want[i]), "member list -w {f}");
            }
        }
    }
}

/// `member add NAME --learner` through `ctl` at `ep`: its output, and the member it announces
/// (with `extra` flags and the `ETCD_INITIAL_CLUSTER` printed for it), not started yet.
fn add_learner(ctl: Ctl, ep: &str, name: &str, extra: &[&str]) -> (String, Server) {
    let (client, peer) = (free_port(), free_port());
    let (out, err, code) = ctl(
        ep,
        &[
            "member",
            "add",
            name,
            "--learner",
            &format!("--peer-urls=http://127.0.0.1:{peer}"),
        ],
    );
    assert_eq!(code, 0, "member add: {out}{err}");
    let initial = out
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let mut joiner = Server::new_member(
        Kind::Ballast,
        Member {
            name: name.into(),
            peer_port: peer,
            initial_cluster: initial,
            state: "existing",
        },
        extra,
    );
    joiner.port = client;
    (out, joiner)
}

/// The operators' flow: add a learner, start it with `--initial-cluster-state existing`, let
/// it catch up, promote it, then remove another member, which stops itself.
fn learner_flow(ctl: Ctl) {
    let mut c = Cluster::start(Kind::Ballast, 3, &[]);
    let eps = c.endpoints();
    assert_eq!(ctl(&eps[0], &["put", "before", "join"]).2, 0);
    let (out, mut joiner) = add_learner(ctl, &eps[0], "m3", &[]);
    let id = out
        .strip_prefix("Member ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    assert!(out.contains("ETCD_NAME=\"m3\""), "{out}");

    // Promotion before the learner has caught up is refused.
    let early = ctl(&eps[1], &["member", "promote", &id]);
    assert_eq!(early.2, 1);
    assert!(early.1.contains("in sync with leader"), "{}", early.1);

    joiner.launch();
    let jep = joiner.endpoint();
    let got = retry_until(
        ctl,
        &jep,
        &["get", "before", "--consistency=s"],
        Duration::from_secs(15),
        |r| !r.0.is_empty(),
    );
    assert_eq!(got.0, "before\njoin\n", "learner did not catch up: {got:?}");
    // A learner refuses writes.
    let refused = ctl(&jep, &["put", "x", "y"]);
    assert!(
        refused.1.contains("rpc not supported for learner"),
        "{refused:?}"
    );

    let promoted = retry(
        ctl,
        &eps[1],
        &["member", "promote", &id],
        Duration::from_secs(15),
    );
    assert_eq!(promoted.2, 0, "{promoted:?}");
    assert!(
        promoted.0.starts_with(&format!("Member {id:>16} promoted")),
        "{promoted:?}"
    );
    let list = ctl(&eps[2], &["member", "list"]).0;
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(!list.contains("true"), "still a learner: {list}");

    // Remove the first member; it must stop itself.
    let first = ctl(&eps[0], &["member", "list", "-w", "json"]).0;
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    let first_id = format!("{:x}", v["header"]["member_id"].as_u64().unwrap());
    let removed = ctl(&eps[1], &["member", "remove", &first_id]);
    assert_eq!(removed.2, 0, "{removed:?}");
    let start = Instant::now();
    loop {
        let exited = c.members[0]
            .child
            .as_mut()
            .map(|ch| ch.try_wait().unwrap().is_some())
            .unwrap_or(true);
        if exited {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "removed member kept running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let put = retry(
        ctl,
        &jep,
        &["put", "after", "remove"],
        Duration::from_secs(10),
    );
    assert_eq!(put.2, 0, "{put:?}");
    assert_eq!(ctl(&eps[2], &["get", "after"]).0, "after\nremove\n");
    assert_eq!(ctl(&eps[2], &["member", "list"]).0.lines().count(), 3);
}

#[test]
fn learner_flow_with_etcdctl() {
    learner_flow(etcdctl2);
}

#[test]
fn learner_flow_with_ballastctl() {
    learner_flow(ballastctl2);
}

/// `endpoint status|health --cluster` reach every member from one endpoint, and `move-leader`
/// hands leadership over; the same with etcdctl and ballastctl.
#[test]
fn cluster_endpoints_and_move_leader() {
    let c = Cluster::start(Kind::Ballast, 3, &[]);
    let eps = c.endpoints();
    let all = eps.join(",");
    for ctl in [etcdctl2 as Ctl, ballastctl2 as Ctl] {
        let status = ctl(&eps[0], &["endpoint", "status", "--cluster"]);
        assert_eq!(status.2, 0, "{status:?}");
        assert_eq!(status.0.lines().count(), 3, "{}", status.0);
        for ep in &eps {
            assert!(status.0.contains(&format!("http://{ep}, ")), "{}", status.0);
        }
        // etcdctl 3.4 reports health on stderr, 3.7 (and ballastctl) on stdout.
        let health = ctl(&eps[0], &["endpoint", "health", "--cluster"]);
        assert_eq!(health.2, 0, "{health:?}");
        let said = format!("{}{}", health.0, health.1);
        assert_eq!(said.matches(" is healthy: ").count(), 3, "{said}");

        let st = ctl(&all, &["endpoint", "status", "-w", "json"]).0;
        let v: serde_json::Value = serde_json::from_str(&st).unwrap();
        let rows = v.as_array().unwrap();
        let leader = rows[0]["Status"]["leader"].as_u64().unwrap();
        let follower_ep = rows
            .iter()
            .find(|r| r["Status"]["header"]["member_id"].as_u64() != Some(leader))
            .unwrap();
        let target = follower_ep["Status"]["header"]["member_id"]
            .as_u64()
            .unwrap();
        let only_follower = follower_ep["Endpoint"].as_str().unwrap();
        let refused = ctl(only_follower, &["move-leader", &format!("{leader:x}")]);
        assert_eq!(refused.2, 128, "{refused:?}");
        assert!(
            refused.1.contains("no leader endpoint given at"),
            "{refused:?}"
        );
        let moved = ctl(&all, &["move-leader", &format!("{target:x}")]);
        assert_eq!(moved.2, 0, "{moved:?}");
        assert_eq!(
            moved.0,
            format!("Leadership transferred from {leader:x} to {target:x}\n")
        );
        let after = ctl(&all, &["endpoint", "status", "-w", "json"]).0;
        let v: serde_json::Value = serde_json::from_str(&after).unwrap();
        assert_eq!(v[0]["Status"]["leader"].as_u64(), Some(target));
    }
}

/// `--strict-reconfig-check` (on by default, as in etcd): with one of three members down,
/// removing a live member would leave no reachable quorum and is refused with etcd's
/// "unhealthy cluster"; removing the dead one is allowed; with the check off the live one
/// goes too. Asked of the live follower, the answers are the leader's (a Ballast follower hands
/// the change to the leader, which alone sees every peer's activity).
#[test]
fn strict_reconfig_check_protects_the_active_quorum() {
    let observe = |kind: Kind, extra: &[&str]| {
        let mut c = crate::cluster::Cluster::start(kind, 3, extra);
        let status: serde_json::Value = serde_json::from_str(
            &etcdctl(
                &c.endpoints().join(","),
                &["endpoint", "status", "-w", "json"],
                None,
            )
            .0,
        )
        .unwrap();
        let rows = status.as_array().unwrap();
        let leader = rows[0]["Status"]["leader"].as_u64().unwrap();
        let id_of = |i: usize| rows[i]["Status"]["header"]["member_id"].as_u64().unwrap();
        let at = (0..3).find(|i| id_of(*i) == leader).unwrap();
        let followers: Vec<usize> = (0..3).filter(|i| *i != at).collect();
        let (dead, alive) = (followers[0], followers[1]);
        c.members[dead].kill9();
        // Two election timeouts: the leader has stopped hearing from it.
        std::thread::sleep(Duration::from_secs(3));
        let ep = c.members[at].endpoint();
        let via = |ep: &str, args: &[&str]| {
            let out = etcdctl(ep, args, None);
            (out.2, out.1.lines().last().unwrap_or("").to_string())
        };
        let remove =
            |ep: &str, i: usize| via(ep, &["member", "remove", &format!("{:x}", id_of(i))]);
        // Asked of the live follower, the answer is the same as the leader's.
        let follower = c.members[alive].endpoint();
        let live_via_follower = remove(&follower, alive);
        let add_via_follower = via(
            &follower,
            &["member", "add", "x", "--peer-urls=http://127.0.0.1:1"],
        );
        let live = remove(&ep, alive);
        let gone = remove(&ep, dead);
        (live_via_follower, add_via_follower, live, gone.0)
    };
    let unhealthy = (1, "Error: etcdserver: unhealthy cluster".to_string());
    let etcd = observe(Kind::Etcd, &[]);
    assert_eq!(etcd, (unhealthy.clone(), unhealthy.clone(), unhealthy, 0));
    assert_eq!(observe(Kind::Ballast, &[]), etcd, "Ballast, then etcd");
    let relaxed = ["--strict-reconfig-check=false"];
    assert_eq!(observe(Kind::Ballast, &relaxed).0 .0, 0, "check off");
}

/// `--max-learners`: etcd 3.7 and Ballast (each with its own etcdctl) both take as many learners as it allows and refuse
/// the next with the same message and exit code.
#[test]
fn max_learners_bounds_learners_as_on_etcd() {
    let run = |kind: Kind| {
        let s = Server::start(kind, &["--max-learners=2"]);
        let ctl = crate::cluster::ctl_of(kind);
        (0..3)
            .map(|i| {
                let (out, err, code) = run_ctl(
                    ctl.clone(),
                    &s.endpoint(),
                    &[
                        "member",
                        "add",
                        &format!("l{i}"),
                        "--learner",
                        &format!("--peer-urls=http://127.0.0.1:{}", 23000 + i),
                    ],
                    None,
                );
                let first = out.lines().next().unwrap_or_default();
                // The words, without the member and cluster IDs.
                let words: Vec<&str> = first
                    .split_whitespace()
                    .filter(|w| w.len() < 8 || u64::from_str_radix(w, 16).is_err())
                    .collect();
                let error: Vec<String> = err
                    .lines()
                    .filter(|l| l.starts_with("Error:"))
                    .map(String::from)
                    .collect();
                (words.join(" "), error, code)
            })
            .collect::<Vec<_>>()
    };
    let etcd = run(Kind::Etcd37);
    assert_eq!(etcd[2].2, 1, "{etcd:?}");
    assert_eq!(
        etcd[2].1,
        vec!["Error: etcdserver: too many learner members in cluster"]
    );
    assert_eq!(run(Kind::Ballast), etcd);
}

/// The revision an endpoint reports, if it answers.
fn status_revision(ep: &str) -> Option<i64> {
    let (out, _, _) = etcdctl2(ep, &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v[0]["Status"]["header"]["revision"].as_i64()
}

/// Starts `joiner` and waits, up to `limit`, until the revision it reports is `caught_up`.
fn launch_and_catch_up(
    joiner: &mut Server,
    leader: &Server,
    limit: Duration,
    caught_up: impl Fn(i64) -> bool,
) {
    joiner.launch();
    let start = Instant::now();
    while !status_revision(&joiner.endpoint()).is_some_and(&caught_up) {
        assert!(
            start.elapsed() < limit,
            "the learner did not catch up:\n{}\n{}",
            joiner.log(),
            leader.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A learner added while writes go on gets one snapshot, even when the writes fill the
/// catch-up window before the snapshot is through: the leader keeps the entries after the
/// snapshot's index for it. Without that it sent another snapshot, and under steady writes
/// one after another until they stopped.
#[test]
fn a_member_added_under_writes_gets_one_snapshot() {
    let window = ["--experimental-snapshot-catchup-entries=10"];
    let mut c = Cluster::start(Kind::Ballast, 1, &window);
    let leader = &mut c.members[0];
    let ep = leader.endpoint();
    let bench = |args: &[&str]| {
        let mut cmd = std::process::Command::new(bin_dir().join("ballast-bench"));
        cmd.arg(format!("--endpoints={ep}"))
            .args(["--conns=2", "--clients=10"])
            .args(args);
        cmd
    };
    // 20 MB: a snapshot that takes a while to send and build.
    let load = [
        "put",
        "--total=20000",
        "--key-space-size=20000",
        "--sequential-keys",
        "--val-size=1000",
    ];
    let out = bench(&load).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, mut joiner) = add_learner(etcdctl2, &ep, "m1", &window);
    // 200 puts a second for up to 30 s: the window fills in 50 ms.
    let mut writer = bench(&["put", "--rate=200", "--total=6000", "--key-space-size=1000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let want = status_revision(&ep).unwrap();
    launch_and_catch_up(&mut joiner, leader, Duration::from_secs(60), |r| r >= want);
    let _ = writer.kill();
    let _ = writer.wait();
    assert_eq!(
        leader.log().matches("sent snapshot").count(),
        1,
        "{}",
        leader.log()
    );
    assert_eq!(joiner.log().matches("installed snapshot").count(), 1);
}

/// A learner added to an idle member whose log is compacted gets the data as one snapshot:
/// the snapshot point moves past the membership change at once, so the snapshot's
/// configuration has the new member (raft ignores one that does not, after it crossed the
/// wire whole, and an idle leader would send it again and again).
#[test]
fn a_member_added_to_an_idle_compacted_cluster_gets_one_snapshot() {
    // The in-memory log is trimmed every 100 applied entries and keeps 1,000: a learner
    // starting from nothing needs a snapshot, and the membership change is very unlikely
    // to be the entry that moves the point by itself.
    let mut c = Cluster::start(
        Kind::Ballast,
        1,
        &["--experimental-snapshot-catchup-entries=1000"],
    );
    let leader = &mut c.members[0];
    let ep = leader.endpoint();
    let out = std::process::Command::new(bin_dir().join("ballast-bench"))
        .args([
            &format!("--endpoints={ep}"),
            "--conns=2",
            "--clients=10",
            "put",
            "--total=2500",
            "--key-space-size=2500",
            "--sequential-keys",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, mut joiner) = add_learner(
        etcdctl2,
        &ep,
        "m1",
        &["--experimental-snapshot-catchup-entries=1000"],
    );
    // Nothing is written from here on: the cluster stays idle while the learner joins.
    let want = status_revision(&ep).unwrap();
    launch_and_catch_up(&mut joiner, leader, Duration::from_secs(20), |r| r == want);
    assert_eq!(joiner.log().matches("installed snapshot").count(), 1);
    // Imported as it arrived: the stream's bytes were never staged in a file of their own.
    assert!(
        joiner
            .log()
            .lines()
            .any(|l| l.contains("received snapshot") && l.contains("\"built\":true")),
        "{}",
        joiner.log()
    );
    // Opened with the key index its import built: no row was read again to build it.
    assert!(
        joiner
            .log()
            .contains("built while the snapshot was imported (2500 keys"),
        "{}",
        joiner.log()
    );
    assert_eq!(
        leader.log().matches("sent snapshot").count(),
        1,
        "{}",
        leader.log()
    );
}
