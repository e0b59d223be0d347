//! Kubernetes' own storage conformance suite — the `k8s.io/apiserver/pkg/storage/testing`
//! functions its etcd3 store tests run, built from the Go module proxy by
//! `scripts/kube-storage-tests` (tests/kubernetes) — against etcd 3.7 and against Ballast, one
//! fresh single member per test: every test and subtest that passes on etcd passes on Ballast.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cluster::{ballast_bin, etcd37_tool};

/// The test binary (scripts/kube-storage-tests).
fn suite() -> PathBuf {
    crate::cluster::built_by("BALLAST_KUBE_STORAGE", "kube-storage-tests")
}

/// Every test's and subtest's outcome (`PASS`, `FAIL`, `SKIP`) with `server` under test, and
/// the tail of the output for failure messages.
fn run(server: &Path) -> (BTreeMap<String, String>, String) {
    let out = Command::new(suite())
        .args(["-test.v", "-test.timeout", "20m"])
        .env("STORAGE_SERVER", server)
        .stdin(Stdio::null())
        .output()
        .expect("run the storage conformance tests");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let results = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--- "))
        .filter_map(|l| {
            let (outcome, rest) = l.split_once(": ")?;
            let name = rest.rsplit_once(" (").map_or(rest, |(n, _)| n);
            Some((name.to_string(), outcome.to_string()))
        })
        .collect();
    let tail = text.lines().rev().take(60).collect::<Vec<_>>();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    (results, tail)
}

#[test]
fn apiserver_storage_conformance_passes_on_ballast_as_on_etcd() {
    let (etcd, etcd_tail) = run(&etcd37_tool("etcd"));
    let passed: Vec<&String> = etcd
        .iter()
        .filter(|(_, o)| *o == "PASS")
        .map(|(n, _)| n)
        .collect();
    // The whole suite ran on the reference: ~40 tests, ~430 subtests.
    assert!(
        passed.len() > 400,
        "etcd 3.7 passed only {}:\n{etcd_tail}",
        passed.len()
    );
    let (ballast, tail) = run(&ballast_bin());
    let lost: Vec<String> = passed
        .iter()
        .filter(|n| ballast.get(n.as_str()).map(String::as_str) != Some("PASS"))
        .map(|n| format!("{n}: {}", ballast.get(n.as_str()).map_or("not run", |o| o)))
        .collect();
    assert!(
        lost.is_empty(),
        "passed on etcd 3.7, not on Ballast:\n{}\n\n{tail}",
        lost.join("\n")
    );
}
