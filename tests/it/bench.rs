//! `ballast-bench` works: its report parses (against Ballast and the real etcd), and
//! `compare --quick --dry-run` starts, drives and stops both servers. Nothing here is timed.

use std::process::Command;

use crate::cluster::{bin_dir, finish, Kind, Server};

fn bench(args: &[&str]) -> (String, String, i32) {
    let child = Command::new(bin_dir().join("ballast-bench"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ballast-bench built beside the other binaries");
    finish(child)
}

/// The figures of etcd's report: (requests/sec, number of requests in the histogram).
fn parse_report(out: &str) -> (f64, usize) {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in:\n{out}"));
    let counted = out
        .lines()
        .filter(|l| l.contains("]\t|"))
        .filter_map(|l| {
            l.split('[')
                .nth(1)?
                .split(']')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    // Percentiles of exactly zero are left out, as etcd leaves them out.
    assert!(out.contains("\nLatency distribution:\n"), "{out}");
    (rps, counted)
}

#[test]
fn bench_reports_parse_against_ballast_and_etcd() {
    for kind in [Kind::Ballast, Kind::Etcd] {
        let s = Server::start(kind, &[]);
        let ep = format!("--endpoints={}", s.endpoint());
        let runs: [&[&str]; 7] = [
            &[
                "put",
                "--total=60",
                "--clients=4",
                "--conns=2",
                "--val-size=64",
            ],
            &["range", "foo", "--total=40", "--consistency=s"],
            &[
                "txn-put",
                "--total=30",
                "--txn-ops=2",
                "--key-space-size=10",
            ],
            &["lease-keepalive", "--total=30", "--clients=3"],
            &[
                "stm",
                "--total=30",
                "--clients=4",
                "--keys=3",
                "--keys-per-txn=2",
            ],
            &[
                "stm",
                "--total=20",
                "--clients=4",
                "--isolation=ss",
                "--keys=2",
            ],
            &["stm", "--total=10", "--clients=2", "--stm-locker=lock-rpc"],
        ];
        for args in runs {
            let mut all = vec![ep.as_str()];
            all.extend_from_slice(args);
            let (out, err, code) = bench(&all);
            assert_eq!(code, 0, "{kind:?} {args:?}: {err}");
            let (rps, n) = parse_report(&out);
            assert!(rps > 0.0, "{kind:?} {args:?}:\n{out}");
            assert!(
                !out.contains("Error distribution"),
                "{kind:?} {args:?}:\n{out}"
            );
            let total: usize = args
                .iter()
                .find_map(|a| a.strip_prefix("--total="))
                .and_then(|t| t.parse().ok())
                .unwrap();
            assert_eq!(
                n, total,
                "{kind:?} {args:?}: every request in the histogram:\n{out}"
            );
        }
        let (out, err, code) = bench(&[&ep, "txn-mixed", "--total=40", "--clients=4"]);
        assert_eq!(code, 0, "{kind:?} txn-mixed: {err}");
        assert!(
            out.starts_with("bench with linearizable range\nTotal Read Ops: "),
            "{out}"
        );
        let reads: usize = out.lines().nth(1).unwrap()[16..].trim().parse().unwrap();
        let writes: usize = out
            .lines()
            .find_map(|l| l.strip_prefix("Total Write Ops: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(reads + writes, 40, "{out}");
        assert!(
            !out.contains("Error distribution"),
            "{kind:?} txn-mixed:\n{out}"
        );
        let (out, err, code) = bench(&[
            &ep,
            "watch-get",
            "--watchers=50",
            "--streams=2",
            "--events=4",
        ]);
        assert_eq!(code, 0, "{kind:?} watch-get: {err}");
        assert!(out.starts_with("Get during watch summary:\n"), "{out}");
        let (out, err, code) = bench(&[
            &ep,
            "watch",
            "--streams=2",
            "--watch-per-stream=5",
            "--put-total=10",
            "--clients=2",
        ]);
        assert_eq!(code, 0, "{kind:?} watch: {err}");
        let (created, received) = out
            .split_once("Watch events received summary:\n")
            .unwrap_or_else(|| panic!("{out}"));
        assert!(created.starts_with("Watch creation summary:\n"), "{out}");
        assert_eq!(parse_report(created).1, 10, "10 watchers created:\n{out}");
        assert_eq!(
            parse_report(received).1,
            100,
            "10 puts seen by 10 watchers:\n{out}"
        );
        let (out, err, code) = bench(&[&ep, "watch-latency", "--total=5", "--clients=3"]);
        assert_eq!(code, 0, "{kind:?} watch-latency: {err}");
        assert_eq!(
            parse_report(&out).1,
            15,
            "5 puts seen by 3 watchers:\n{out}"
        );
    }
    let (_, err, code) = bench(&["range", "foo", "--consistency=x", "--endpoints=127.0.0.1:1"]);
    assert_ne!(code, 0);
    assert!(!err.is_empty());
}

#[test]
fn compare_dry_run_drives_both_servers() {
    let ballast = bin_dir().join("ballast");
    let out_dir = tempfile::tempdir().unwrap();
    let (out, err, code) = bench(&[
        "compare",
        "--quick",
        "--dry-run",
        &format!("--ballast={}", ballast.display()),
        &format!("--out-dir={}", out_dir.path().display()),
        &format!(
            "--etcd-benchmark={}",
            crate::cluster::etcd_benchmark().display()
        ),
        "--rounds=1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("| put, 3 members"), "{out}");
    // etcd's own tool drove both loads, sharing the CPUs and (with two or more) pinned apart;
    // every row has a figure for both servers.
    let pinned = std::thread::available_parallelism().map_or(1, usize::from) >= 2;
    for row in ["| put | 1 | shared |", "| watch-latency | 1 | shared |"]
        .into_iter()
        .chain(pinned.then_some("| put | 1 | pinned |"))
        .chain(pinned.then_some("| watch-latency | 1 | pinned |"))
    {
        let line = out.lines().find(|l| l.starts_with(row));
        let cells: Vec<&str> = line.unwrap_or_default().split('|').map(str::trim).collect();
        assert!(
            cells.len() > 5 && cells[4] != "0" && cells[5] != "0",
            "{row}:\n{out}"
        );
    }
    assert!(out.contains("| put, 1 member"), "{out}");
    assert!(out.contains("peak RSS per member"), "{out}");
    // Every row has figures for both servers and no errors.
    assert!(!out.contains("Errors:"), "{out}");
    // A dry run writes nothing.
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);
}

/// `compare --scale-quick --dry-run` runs every scale measurement on etcd 3.4, etcd 3.7 and
/// Ballast (tiny sizes): every figure has a value for every server (RangeStream aside on
/// etcd 3.4, which lacks it) and a ratio, and nothing errs. Nothing here is timed.
#[test]
fn scale_dry_run_measures_every_figure_on_every_server() {
    let ballast = bin_dir().join("ballast");
    let etcd37 = crate::cluster::etcd37_tool("etcd");
    let (out, err, code) = bench(&[
        "compare",
        "--scale-quick",
        "--dry-run",
        &format!("--etcd37={}", etcd37.display()),
        &format!("--ballast={}", ballast.display()),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("Errors:"), "{out}");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| figure"))
        .collect();
    for want in [
        "empty store: dbSize",
        "MiB of 1000000 B values",
        "load: puts/s",
        "loaded: dbSize",
        "readers paging the set: member RSS growth",
        "for at most 60 s): values read a second",
        "RangeStreams of the set at once, from a fresh start: values read a second",
        "put p99 during / without a compaction",
        "compaction finished deleting in",
        "compacted + defragmented: dbSize",
        "restart after kill -9",
        "a learner added and started: applied the leader's index in",
        "on the leader during / without the catch-up",
        "watchers on 10 connections, puts at 50/s: event latency p99",
        "2 slow consumers: event latency p99",
        "puts/s with / without the 2 slow consumers",
    ] {
        assert!(
            rows.iter().any(|r| r.contains(want)),
            "no row {want:?}:\n{out}"
        );
    }
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | figure | 3.4 | 3.7 | Ballast | vs 3.4 | vs 3.7 | target | met |
        assert_eq!(cells.len(), 10, "{row}");
        let stream = cells[1].contains("RangeStreams of the set");
        assert_eq!(cells[2] == "n/a", stream, "{row}");
        assert!(cells[3] != "n/a" && cells[4] != "n/a", "{row}");
        // A growth of nothing on tiny data, or no lease lost or event missed, has no ratio.
        assert!(
            cells[6] != "n/a"
                || cells[1].contains("growth")
                || cells[1].contains("lost")
                || cells[1].contains("missed"),
            "{row}"
        );
    }
}
