//! Differential tests: the same etcdctl session against the real etcd and against Ballast must
//! print the same stdout and stderr and exit with the same code. Only what legitimately differs
//! between two clusters is normalised: raft terms, client log timestamps and timings.

use crate::cluster::{etcdctl, Kind, Server};

/// One etcdctl invocation: arguments and optional stdin.
pub type Step = (&'static [&'static str], Option<&'static str>);

const KV_SESSION: &[Step] = &[
    (&["put", "foo", "bar"], None),
    (&["put", "foo", "bar2", "--prev-kv"], None),
    (&["get", "foo"], None),
    (&["get", "foo", "-w", "json"], None),
    (&["get", "foo", "-w", "fields"], None),
    (&["get", "foo", "-w", "table"], None),
    (&["get", "foo", "--hex"], None),
    (&["put", "a", "1"], None),
    (&["put", "b", "2"], None),
    (&["put", "c", "3"], None),
    (&["put", "b", "22"], None),
    (&["get", "", "--prefix", "--keys-only"], None),
    (&["get", "a", "c"], None),
    (&["get", "--from-key", "b"], None),
    (&["get", "", "--prefix", "--limit", "2", "-w", "json"], None),
    (
        &["get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"],
        None,
    ),
    (
        &[
            "get",
            "",
            "--prefix",
            "--sort-by=VERSION",
            "--order=ASCEND",
            "--print-value-only",
        ],
        None,
    ),
    (&["get", "", "--prefix", "--count-only", "-w", "json"], None),
    (&["get", "", "--prefix", "--count-only"], None),
    (&["get", "foo", "--rev", "2"], None),
    (&["get", "foo", "--consistency=s", "-w", "json"], None),
    (&["get", "nothing"], None),
    (&["get", "nothing", "-w", "json"], None),
    (&["put", "nothing", "--ignore-value"], None),
    (&["put", "a", "x", "--lease=1234"], None),
    (&["put", "a", "--ignore-value", "--ignore-lease"], None),
    (&["get", "a", "-w", "json"], None),
    (&["del", "a"], None),
    (&["del", "a"], None),
    (&["put", "a", "back"], None),
    (
        &["txn", "-w", "json"],
        Some("value(\"a\") = \"back\"\n\nput t1 v1\nget a\n\nput t2 v2\n\n"),
    ),
    (
        &["txn"],
        Some("mod(\"a\") > \"0\"\nversion(\"zz\") = \"0\"\n\nput t3 v3\ndel t1\n\nget t1\n\n"),
    ),
    (
        &["txn"],
        Some("value(\"a\") = \"nope\"\n\nput t4 v4\n\nget a\nget t3 -w json\n\n"),
    ),
    (&["txn"], Some("\n\nput dup 1\nput dup 2\n\n\n")),
    (&["get", "t", "--prefix", "-w", "json"], None),
    (&["del", "t", "--prefix", "--prev-kv"], None),
    (&["del", "--from-key", "b", "--prev-kv", "-w", "json"], None),
    (&["compaction", "3"], None),
    (&["compaction", "3"], None),
    (&["compaction", "1000"], None),
    (&["get", "foo", "--rev", "2"], None),
    (&["get", "foo", "--rev", "1000"], None),
    (&["get", "foo", "--rev", "3", "-w", "json"], None),
    // Ties keep ascending key order whichever way the sort goes.
    (&["put", "p/b", "same"], None),
    (&["put", "p/a", "same"], None),
    (&["put", "p/c", "same"], None),
    (
        &[
            "get",
            "p",
            "--prefix",
            "--sort-by=VERSION",
            "--order=DESCEND",
        ],
        None,
    ),
    (
        &["get", "p", "--prefix", "--sort-by=VALUE", "--order=DESCEND"],
        None,
    ),
    (
        &[
            "get",
            "p",
            "--prefix",
            "--sort-by=CREATE",
            "--order=DESCEND",
        ],
        None,
    ),
    (
        &["get", "p", "--prefix", "--sort-by=VALUE", "--order=ASCEND"],
        None,
    ),
    (&["endpoint", "health"], None),
];

/// etcdctl 3.7's additions and changes to the KV commands (RangeStream, revision filters,
/// `--count-only` only with `-w fields`, `del --range`, exit codes of bad options and of txn
/// input), run after [`KV_SESSION`] against etcd 3.7 and Ballast.
const KV_SESSION_37: &[Step] = &[
    (&["put", "s/a", "1"], None),
    (&["put", "s/b", "2"], None),
    (&["put", "s/a", "3"], None),
    (&["get", "s/", "--prefix", "--stream"], None),
    (&["get", "s/", "--prefix", "--stream", "-w", "json"], None),
    (
        &[
            "get", "s/", "--prefix", "--stream", "--limit", "1", "-w", "json",
        ],
        None,
    ),
    (
        &["get", "s/", "--prefix", "--count-only", "-w", "fields"],
        None,
    ),
    (
        &["get", "s/", "--prefix", "--keys-only", "--count-only"],
        None,
    ),
    (
        &[
            "get",
            "s/",
            "--prefix",
            "--min-mod-rev",
            "2",
            "--max-mod-rev",
            "1",
        ],
        None,
    ),
    (&["get", "s/", "--prefix", "--sort-by=nope"], None),
    (&["get", "s/", "--prefix", "--order=sideways"], None),
    (&["get", "s/", "--prefix", "--consistency=x"], None),
    (&["get", "s/a", "-w", "json", "--print-value-only"], None),
    (&["del", "s/a", "s/c", "--range", "--prev-kv"], None),
    (&["del", "s/", "s/z", "--prefix"], None),
    (&["txn"], Some("bogus(\"a\") = \"1\"\n\n\n\n")),
    (&["txn"], Some("mod(\"a\") > \"x\"\n\n\n\n")),
    (&["txn"], Some("\n\nput only\n\n\n")),
    (&["txn"], Some("\n")),
    (&["member", "list", "-w", "fields"], None),
];

/// [`normalize`] for other test modules.
pub fn normalize_for(s: &str, endpoint: &str) -> String {
    normalize(s, endpoint)
}

fn normalize(s: &str, endpoint: &str) -> String {
    s.replace(endpoint, "ENDPOINT")
        .lines()
        .map(|line| {
            if line.starts_with('{') {
                if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(line) {
                    scrub(&mut v);
                    return v.to_string();
                }
            }
            let mut l = line.to_string();
            if let Some(i) = l.find("took = ") {
                l.truncate(i + 7);
            }
            // etcdctl 3.7's defrag reports its time: "... member[ep]. took 2.9ms" (and
            // ". (error)" after it on failure).
            if let Some(i) = l.find(". took ") {
                let rest = l[i + 7..].find(". (").map(|j| l[i + 7 + j..].to_string());
                l = format!("{}. took T{}", &l[..i], rest.unwrap_or_default());
            }
            if l.starts_with("\"RaftTerm\" : ") {
                l = "\"RaftTerm\" : N".into();
            }
            l
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn scrub(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for k in ["ts", "target", "raft_term", "peer"] {
                if m.contains_key(k) {
                    m.insert(k.into(), "N".into());
                }
            }
            m.values_mut().for_each(scrub);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
        _ => {}
    }
}

pub type Ctl = fn(&str, &[&str], Option<&str>) -> (String, String, i32);

/// Runs `steps` with `reference` against etcd and `subject` against Ballast and compares.
pub fn run_session(reference: Ctl, subject: Ctl, steps: &[Step]) {
    run_session_with(reference, subject, steps, &[]);
}

/// [`run_session`] with extra flags for Ballast.
pub fn run_session_with(reference: Ctl, subject: Ctl, steps: &[Step], ballast_args: &[&str]) {
    run_session_on(Kind::Etcd, reference, subject, steps, ballast_args);
}

/// [`run_session_with`] against etcd of `kind`.
pub fn run_session_on(
    kind: Kind,
    reference: Ctl,
    subject: Ctl,
    steps: &[Step],
    ballast_args: &[&str],
) {
    let etcd = Server::start(kind, &[]);
    let ballast = Server::start(Kind::Ballast, ballast_args);
    let mut failures = Vec::new();
    for (args, stdin) in steps {
        let want = reference(&etcd.endpoint(), args, *stdin);
        let got = subject(&ballast.endpoint(), args, *stdin);
        let (e, b) = (etcd.endpoint(), ballast.endpoint());
        let want = (normalize(&want.0, &e), normalize(&want.1, &e), want.2);
        let got = (normalize(&got.0, &b), normalize(&got.1, &b), got.2);
        if want != got {
            failures.push(format!(
                "etcdctl {args:?}\n--- etcd (exit {}):\n{}\n{}\n--- ballast (exit {}):\n{}\n{}",
                want.2, want.0, want.1, got.2, got.0, got.1
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} steps differ:\n\n{}",
        failures.len(),
        steps.len(),
        failures.join("\n\n")
    );
}

#[test]
fn etcdctl_kv_session_matches_etcd() {
    run_session(etcdctl, etcdctl, KV_SESSION);
}

pub fn ballastctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (String, String, i32) {
    crate::cluster::run_ctl(
        crate::cluster::bin_dir().join("ballastctl"),
        endpoint,
        args,
        stdin,
    )
}

/// ballastctl against Ballast prints what etcdctl 3.7 prints against etcd 3.7 (ballastctl
/// follows etcdctl 3.7 where it differs from 3.4).
#[test]
fn ballastctl_kv_session_matches_etcdctl() {
    let steps: Vec<Step> = KV_SESSION.iter().chain(KV_SESSION_37).copied().collect();
    run_session_on(
        Kind::Etcd37,
        crate::cluster::etcdctl37,
        ballastctl,
        &steps,
        &[],
    );
}

/// Bad command lines and help screens: the same stdout, stderr (program name aside) and exit
/// code as etcdctl 3.7 — cobra's error and usage on stderr, help on stdout, prefix matching,
/// suggestions — and every command's help lists etcdctl 3.7's flags with their types and
/// defaults. Nothing listens at the endpoint: all of this happens before any dial.
#[test]
fn ballastctl_flag_errors_and_help_match_etcdctl() {
    let cases: &[&[&str]] = &[
        &["get", "--bogus"],
        &["get", "-x", "k"],
        &["get", "--limit=abc", "k"],
        &["get", "k", "--limit"],
        &["bogus"],
        &["gett"],
        &["ge"],
        &["get", "--dial-timeout=zz", "k"],
        &["get", "--hex=maybe", "k"],
        &["del", "--prefix=nope", "k"],
        &["put", "--bogus", "k", "v"],
        &["member", "bogus"],
        &["mem", "li", "--bogus"],
        &["lease"],
        &["help", "get"],
        &["help", "member", "add"],
        &["options"],
    ];
    let helps = [
        "alarm",
        "alarm list",
        "auth",
        "auth enable",
        "check",
        "check perf",
        "check datascale",
        "compaction",
        "defrag",
        "del",
        "downgrade",
        "downgrade enable",
        "elect",
        "endpoint",
        "endpoint health",
        "endpoint status",
        "endpoint hashkv",
        "get",
        "lease",
        "lease grant",
        "lease keep-alive",
        "lease timetolive",
        "lock",
        "member",
        "member add",
        "member list",
        "member promote",
        "member update",
        "move-leader",
        "put",
        "role",
        "role grant-permission",
        "snapshot save",
        "txn",
        "user",
        "user add",
        "user get",
        "user passwd",
        "watch",
    ];
    let endpoint = "127.0.0.1:1";
    let mut diffs = Vec::new();
    let lines: Vec<Vec<&str>> = cases
        .iter()
        .map(|c| c.to_vec())
        .chain(
            helps
                .iter()
                .map(|h| h.split(' ').chain(["--help"]).collect()),
        )
        .collect();
    for args in &lines {
        let want = crate::cluster::etcdctl37(endpoint, args, None);
        let got = ballastctl(endpoint, args, None);
        let got = (
            got.0.replace("ballastctl", "etcdctl"),
            got.1.replace("ballastctl", "etcdctl"),
            got.2,
        );
        if got != want {
            diffs.push(format!(
                "{args:?}\n--- etcdctl 3.7 (exit {}):\n{}{}\n--- ballastctl (exit {}):\n{}{}",
                want.2, want.0, want.1, got.2, got.0, got.1
            ));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n\n"));
}

/// Membership on a single member: list in every format and etcd's errors, with etcdctl and
/// with ballastctl, against etcd. IDs match because the flags match; the one added learner
/// gets a time-derived ID on each server, so that ID is normalised.
#[test]
fn member_session_matches_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let etcd37 = Server::start(Kind::Etcd37, &[]);
    let ballast = Server::start(Kind::Ballast, &[]);
    let list = etcdctl(&etcd.endpoint(), &["member", "list"], None).0;
    let id = list.split(',').next().unwrap().trim().to_string();
    let url = || format!("http://127.0.0.1:{}", crate::cluster::free_port());
    let steps: Vec<Vec<String>> = [
        "member list",
        "member list -w json",
        "member list -w table",
        "member list -w fields",
        "member remove ID",
        "member promote ID",
        "member add x --peer-urls=http://127.0.0.1:2380",
        "member add x --learner --peer-urls=LEARNER",
        "member add y --learner --peer-urls=http://127.0.0.1:1",
        "member list -w json",
        "member list",
        "member promote NEW",
        "member update ID --peer-urls=http://127.0.0.1:2380",
        "member update 1234 --peer-urls=http://127.0.0.1:9",
        "member update ID --peer-urls=nope",
        "member remove zz",
        "member remove",
        "member add",
        "member add z",
        "member remove NEW",
        "member list -w json",
        "member add j --learner --peer-urls=LEARNER2 -w json",
        "member update ID --peer-urls=http://127.0.0.1:2380 -w json",
        "member promote NEW -w json",
        "member remove NEW -w json",
        "member add k --learner --peer-urls=LEARNER3 -w table",
        "member remove NEW -w fields",
        "move-leader zz",
    ]
    .iter()
    .map(|s| s.split(' ').map(String::from).collect())
    .collect();
    // etcdctl 3.4 against etcd 3.4 and Ballast; ballastctl, which follows etcdctl 3.7, against
    // Ballast beside etcdctl 3.7 against etcd 3.7.
    let rounds: [(&Server, Ctl, Ctl); 2] = [
        (&etcd, etcdctl as Ctl, etcdctl as Ctl),
        (&etcd37, crate::cluster::etcdctl37 as Ctl, ballastctl as Ctl),
    ];
    for (etcd, reference, ctl) in rounds {
        // Fresh URLs per round: re-adding a removed member's URLs within a second would
        // recreate its ID, which both servers refuse.
        let (learner_url, learner2, learner3) = (url(), url(), url());
        let mut new_ids: [Option<String>; 2] = [None, None];
        let mut diffs = Vec::new();
        for step in &steps {
            let mut outs = Vec::new();
            for (i, (server, c)) in [(etcd, reference), (&ballast, ctl)].iter().enumerate() {
                let args: Vec<String> = step
                    .iter()
                    .map(|a| {
                        a.replace("LEARNER2", &learner2)
                            .replace("LEARNER3", &learner3)
                            .replace("LEARNER", &learner_url)
                            .replace("NEW", new_ids[i].as_deref().unwrap_or("0"))
                            .replace("ID", &id)
                    })
                    .collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (out, err, code) = c(&server.endpoint(), &args, None);
                if let Some(rest) = out.strip_prefix("Member ") {
                    if out.contains(" added ") {
                        new_ids[i] = rest.split_whitespace().next().map(String::from);
                    }
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) {
                    if let Some(id) = v["member"]["ID"].as_u64() {
                        new_ids[i] = Some(format!("{id:x}"));
                    }
                }
                // `-w table` adds the member, then refuses to print it: find it in the list.
                if step.iter().any(|a| a == "table") && step[1] == "add" {
                    let list = c(&server.endpoint(), &["member", "list"], None).0;
                    new_ids[i] = list
                        .lines()
                        .find(|l| l.contains("unstarted"))
                        .and_then(|l| l.split(',').next())
                        .map(String::from);
                }
                let norm = |s: &str| {
                    let mut s = normalize(s, &server.endpoint()).replace("ballastctl", "etcdctl");
                    if let Some(n) = &new_ids[i] {
                        let dec = u64::from_str_radix(n, 16).unwrap().to_string();
                        // `%16x` pads shorter IDs; the two servers' new IDs differ in length.
                        s = s
                            .replace(&format!("{n:>16}"), "NEWID")
                            .replace(n.as_str(), "NEWID")
                            .replace(&dec, "\"NEWID\"");
                    }
                    order_members(&s)
                };
                outs.push((norm(&out), norm(&err), code));
            }
            if outs[0] != outs[1] {
                diffs.push(format!(
                    "{step:?}\n--- etcd:\n{:?}\n--- ballast:\n{:?}",
                    outs[0], outs[1]
                ));
            }
        }
        assert!(diffs.is_empty(), "differences:\n{}", diffs.join("\n\n"));
    }
}

/// Members are listed in ID order, and a newly added member's ID differs between servers, so
/// member order is normalised: list lines, JSON member arrays and `ETCD_INITIAL_CLUSTER`.
fn order_members(s: &str) -> String {
    let mut lines: Vec<String> = s
        .lines()
        .map(|l| {
            if let Some(v) = l.strip_prefix("ETCD_INITIAL_CLUSTER=") {
                let mut items: Vec<&str> = v.trim_matches('"').split(',').collect();
                items.sort();
                return format!("ETCD_INITIAL_CLUSTER=\"{}\"", items.join(","));
            }
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(l) {
                if let Some(serde_json::Value::Array(a)) = v.get_mut("members") {
                    a.sort_by_key(|m| m.to_string());
                }
                return v.to_string();
            }
            l.to_string()
        })
        .collect();
    if lines
        .iter()
        .all(|l| l.contains(", started, ") || l.contains(", unstarted, "))
    {
        lines.sort();
    }
    lines.join("\n")
}

/// etcdctl's client takes answers up to `math.MaxInt32` bytes unless `--max-recv-bytes` says
/// otherwise (tonic's default would refuse anything over 4 MiB), and refuses a larger one with
/// grpc-go's words.
#[test]
fn ballastctl_receives_large_answers_and_honours_max_recv_bytes() {
    let value = "v".repeat(1 << 20);
    let run = |kind: Kind, ctl: Ctl| {
        let s = Server::start(kind, &[]);
        for i in 0..6 {
            let key = format!("big/{i}");
            let (_, err, code) = etcdctl(&s.endpoint(), &["put", &key], Some(value.as_str()));
            assert_eq!(code, 0, "{err}");
        }
        let all = ctl(
            &s.endpoint(),
            &["get", "big/", "--prefix", "--keys-only"],
            None,
        );
        let capped = ctl(
            &s.endpoint(),
            &["get", "big/", "--prefix", "--max-recv-bytes=1000000"],
            None,
        );
        (
            all.0,
            all.2,
            capped.2,
            capped.1.lines().last().unwrap_or_default().to_string(),
        )
    };
    let etcd = run(Kind::Etcd37, crate::cluster::etcdctl37);
    assert_eq!(etcd.1, 0);
    assert!(
        etcd.3.contains("received message larger than max"),
        "{etcd:?}"
    );
    assert_eq!(run(Kind::Ballast, ballastctl), etcd);
}
