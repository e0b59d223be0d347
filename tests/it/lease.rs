//! Leases: etcdctl's `lease` commands against etcd and Ballast, expiry timing, keep-alives,
//! and a leader kill that must neither expire a kept-alive lease nor reset a TTL to full.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};

use crate::cluster::{etcdctl, Cluster, Kind, Server};
use crate::differential::{ballastctl, Ctl};

/// Lease IDs differ between servers (they embed the start time): number them by appearance.
fn normalize_ids(s: &str) -> String {
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut out = String::new();
    for line in s.lines() {
        // etcd lists attached keys in map order: sort them.
        let line = match line.split_once("attached keys([") {
            Some((head, rest)) => {
                let (keys, tail) = rest.split_once("])").unwrap_or((rest, ""));
                let mut k: Vec<&str> = keys.split(' ').collect();
                k.sort();
                format!("{head}attached keys([{}]){tail}", k.join(" "))
            }
            None => line.to_string(),
        };
        let mut words = Vec::new();
        for w in line.split(' ') {
            let hexish = w.len() == 16 && w.bytes().all(|b| b.is_ascii_hexdigit());
            if hexish && w != "0000000000001234" {
                let n = ids.len() + 1;
                words.push(ids.entry(w.to_string()).or_insert(format!("L{n}")).clone());
            } else {
                words.push(w.to_string());
            }
        }
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

fn scenario(kind: Kind, ctl: Ctl) -> Vec<(String, String, String, i32)> {
    let s = Server::start(kind, &[]);
    let ep = s.endpoint();
    let mut out = Vec::new();
    let mut run = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = ctl(&ep, &a, None);
        out.push((args.join(" "), r.0.clone(), r.1, r.2));
        r.0
    };
    run(vec!["lease".into(), "grant".into(), "100".into()]);
    run(vec!["lease".into(), "grant".into(), "1".into()]);
    let granted = run(vec!["lease".into(), "grant".into(), "3".into()]);
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    for args in [
        vec!["put", "k1", "v", "--lease", &id],
        vec!["put", "k2", "v", "--lease", &id],
        vec!["lease", "timetolive", &id, "--keys"],
        vec!["lease", "keep-alive", "--once", &id],
        vec!["lease", "revoke", "1234"],
        vec!["lease", "timetolive", "1234"],
        vec!["put", "k3", "v", "--lease=1234"],
        vec!["lease", "grant", "9000000001"],
        vec!["lease", "grant", "abc"],
        vec!["lease", "revoke", &id],
        vec!["get", "--prefix", "k"],
        vec!["lease", "timetolive", &id],
        vec!["lease", "keep-alive", "--once", &id],
        vec!["lease", "keep-alive", &id],
        vec!["lease", "grant", "10", "-w", "json"],
        vec!["lease", "grant", "10", "-w", "fields"],
        vec!["lease", "grant", "10", "-w", "table"],
        vec!["lease", "revoke", "zz"],
        vec!["lease", "timetolive"],
    ] {
        run(args.into_iter().map(String::from).collect());
    }
    let listed = run(vec!["lease".into(), "list".into()]);
    assert!(listed.starts_with("found 5 leases"), "{listed}");
    out.pop();
    out.into_iter()
        .map(|(a, o, e, c)| {
            let norm = |x: &str| {
                normalize_ids(&crate::differential::normalize_for(x, &ep)).replace(&ep, "ENDPOINT")
            };
            (normalize_ids(&a), norm(&o), norm(&e), c)
        })
        .collect()
}

/// Lease IDs also appear in decimal in JSON and fields output.
fn strip_numbers(v: &mut [(String, String, String, i32)]) {
    for row in v.iter_mut() {
        let mut o = String::new();
        for line in row.1.lines() {
            let line = regex_lite_ids(line);
            o.push_str(&line);
            o.push('\n');
        }
        row.1 = o;
    }
}

/// Replaces every run of 15+ digits (a lease ID in decimal) with N.
fn regex_lite_ids(line: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for ch in line.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        if digits.len() >= 15
            && !out.ends_with("\"cluster_id\":")
            && !out.ends_with("\"member_id\":")
        {
            out.push('N');
        } else {
            out.push_str(&digits);
        }
        digits.clear();
        out.push(ch);
    }
    out.pop();
    out
}

fn compare(
    mut want: Vec<(String, String, String, i32)>,
    mut got: Vec<(String, String, String, i32)>,
) {
    strip_numbers(&mut want);
    strip_numbers(&mut got);
    let diffs: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("{}\n--- etcd:\n{w:?}\n--- ballast:\n{g:?}", w.0))
        .collect();
    assert!(diffs.is_empty(), "{}", diffs.join("\n\n"));
}

#[test]
fn etcdctl_lease_commands_match_etcd() {
    compare(
        scenario(Kind::Etcd, etcdctl),
        scenario(Kind::Ballast, etcdctl),
    );
}

/// ballastctl follows etcdctl 3.7: compared with etcdctl 3.7 against etcd 3.7.
#[test]
fn ballastctl_lease_commands_match_etcdctl() {
    compare(
        scenario(Kind::Etcd37, crate::cluster::etcdctl37),
        scenario(Kind::Ballast, ballastctl),
    );
}

async fn exists(c: &mut Client, key: &str) -> bool {
    c.get(key, None)
        .await
        .map(|r| r.count() > 0)
        .unwrap_or(true)
}

#[test]
fn expiry_deletes_keys_and_keep_alive_holds_them() {
    let s = Server::start(Kind::Ballast, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = Client::connect([s.endpoint()], None).await.unwrap();
        // A client-chosen ID is kept; choosing it twice is etcd's "lease already exists".
        let chosen = etcd_client::LeaseGrantOptions::new().with_id(0x1234);
        let mine = c.lease_grant(30, Some(chosen)).await.unwrap();
        assert_eq!((mine.id(), mine.ttl()), (0x1234, 30));
        let again = etcd_client::LeaseGrantOptions::new().with_id(0x1234);
        match c.lease_grant(30, Some(again)).await {
            Err(etcd_client::Error::GRpcStatus(st)) => {
                assert_eq!(st.message(), "etcdserver: lease already exists");
            }
            other => panic!("duplicate lease ID accepted: {other:?}"),
        }
        let short = c.lease_grant(2, None).await.unwrap().id();
        let held = c.lease_grant(2, None).await.unwrap().id();
        let granted = Instant::now();
        c.put("short", "v", Some(PutOptions::new().with_lease(short)))
            .await
            .unwrap();
        c.put("held", "v", Some(PutOptions::new().with_lease(held)))
            .await
            .unwrap();
        let (mut keeper, mut acks) = c.lease_keep_alive(held).await.unwrap();
        let mut gone_at = None;
        while granted.elapsed() < Duration::from_secs(5) {
            keeper.keep_alive().await.unwrap();
            let ack = acks.message().await.unwrap().unwrap();
            assert_eq!(ack.ttl(), 2);
            if gone_at.is_none() && !exists(&mut c, "short").await {
                gone_at = Some(granted.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let gone_at = gone_at.expect("expired lease's key still there after 5 s");
        // Never early; at most one election timeout (plus the lessor's tick) late.
        assert!(
            gone_at >= Duration::from_millis(1900),
            "expired early: {gone_at:?}"
        );
        assert!(
            gone_at <= Duration::from_millis(3500),
            "expired late: {gone_at:?}"
        );
        assert!(exists(&mut c, "held").await, "kept-alive lease expired");
        let ttl = c.lease_time_to_live(short, None).await.unwrap().ttl();
        assert_eq!(ttl, -1);
    });
}

#[test]
fn leader_kill_keeps_kept_alive_leases_and_remaining_ttls() {
    let mut c = Cluster::start(
        Kind::Ballast,
        3,
        &["--experimental-lease-checkpoint-interval=1s"],
    );
    let eps = c.endpoints();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (kept, idle, leader_idx) = rt.block_on(async {
        let mut cl = Client::connect(eps.clone(), None).await.unwrap();
        let kept = cl.lease_grant(4, None).await.unwrap().id();
        let idle = cl.lease_grant(30, None).await.unwrap().id();
        cl.put("kept", "v", Some(PutOptions::new().with_lease(kept)))
            .await
            .unwrap();
        let st = cl.status().await.unwrap();
        let leader = st.leader();
        let mut idx = 0;
        for (i, ep) in eps.iter().enumerate() {
            let mut one = Client::connect([ep.clone()], None).await.unwrap();
            if one.status().await.unwrap().header().unwrap().member_id() == leader {
                idx = i;
            }
        }
        (kept, idle, idx)
    });
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != leader_idx)
        .map(|i| eps[i].clone())
        .collect();
    let keeper = rt.spawn({
        let eps = survivors.clone();
        async move {
            let mut cl = Client::connect(eps, None).await.unwrap();
            let until = Instant::now() + Duration::from_secs(14);
            // Re-open the keep-alive stream when it fails, as etcd's Go client does.
            while Instant::now() < until {
                let Ok((mut k, mut acks)) = cl.lease_keep_alive(kept).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                while Instant::now() < until {
                    let ok = k.keep_alive().await.is_ok()
                        && matches!(
                            tokio::time::timeout(Duration::from_secs(8), acks.message()).await,
                            Ok(Ok(Some(_)))
                        );
                    if !ok {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    // Let a few checkpoints record the idle lease's remaining TTL, then kill the leader.
    std::thread::sleep(Duration::from_secs(6));
    c.members[leader_idx].kill9();
    rt.block_on(async {
        let mut cl = Client::connect(survivors.clone(), None).await.unwrap();
        let start = Instant::now();
        let ttl = loop {
            if let Ok(r) = cl.lease_time_to_live(idle, None).await {
                break r.ttl();
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no new leader");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // 30 s granted, ~6 s gone, plus up to one election timeout of grace: never 30 again.
        assert!(
            (20..=26).contains(&ttl),
            "idle lease TTL after leader change: {ttl}"
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(exists(&mut cl, "kept").await, "kept-alive lease expired");
    });
    rt.block_on(keeper).unwrap();
}
