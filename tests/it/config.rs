//! Flag handling: a bad flag is an error naming it, exit code 1, and nothing is written.

use std::process::Command;

use crate::cluster::ballast_bin;

fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let out = Command::new(ballast_bin())
        .arg("--data-dir")
        .arg(&data)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        data.exists(),
    )
}

#[test]
fn bad_flags_and_values_exit_1_before_touching_disk() {
    for (args, envs, needle) in [
        (&["--no-such-flag"][..], &[][..], "--no-such-flag"),
        (&["--max-txn-ops", "many"][..], &[][..], "--max-txn-ops"),
        (
            &["--initial-cluster-state", "sideways"][..],
            &[][..],
            "--initial-cluster-state",
        ),
        (
            &[][..],
            &[("ETCD_MAX_REQUEST_BYTES", "lots")][..],
            "--max-request-bytes",
        ),
        (
            &["--listen-client-urls", "unix:///x"][..],
            &[][..],
            "--listen-client-urls",
        ),
        (
            &["--auto-compaction-mode", "bogus"][..],
            &[][..],
            "error verifying flags, unknown auto-compaction-mode \"bogus\". See 'ballast --help'.",
        ),
        (
            &[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1h",
            ][..],
            &[][..],
            "--auto-compaction-retention",
        ),
    ] {
        let (code, err, wrote) = run(args, envs);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: error should name {needle}: {err}"
        );
        assert!(!wrote, "{args:?} created the data dir");
    }
}
