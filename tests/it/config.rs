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

/// A config file written for etcd (its sample's layout: `*-transport-security` sections,
/// empty values, keys for features Ballast does not have) starts a member that serves, and
/// the log names each key that has no effect.
#[test]
fn an_etcd_config_file_starts_ballast() {
    let mut m = crate::cluster::Server::unstarted(crate::cluster::Kind::Ballast, &[]);
    let peer = crate::cluster::free_port();
    let path = m.data_dir.with_extension("yml");
    let url = format!("http://127.0.0.1:{}", m.port);
    std::fs::write(
        &path,
        format!(
            "name: 'default'\ndata-dir: {}\nwal-dir:\nsnapshot-count: 10000\n\
             listen-peer-urls: http://127.0.0.1:{peer}\nlisten-client-urls: {url}\n\
             advertise-client-urls: {url}\ninitial-advertise-peer-urls: http://127.0.0.1:2380\n\
             initial-cluster: default=http://127.0.0.1:2380\nmax-snapshots: 5\nmax-wals: 5\n\
             cors:\nstrict-reconfig-check: false\nenable-v2: true\nproxy: 'off'\n\
             client-transport-security:\n  cert-file:\n  key-file:\n  client-cert-auth: false\n\
             peer-transport-security:\n  cert-file:\n  auto-tls: false\n\
             log-level: info\nlogger: zap\nlog-outputs: [stderr]\n",
            m.data_dir.display()
        ),
    )
    .unwrap();
    m.args = vec!["--config-file".into(), path.display().to_string()];
    m.spawn();
    let out = crate::cluster::etcdctl(&m.endpoint(), &["put", "k", "v"], None);
    assert_eq!(out.2, 0, "{out:?}");
    let log = m.log();
    for key in ["max-snapshots", "strict-reconfig-check", "proxy"] {
        assert!(
            log.contains(&format!(r#"config key \"{key}\" has no effect in Ballast"#)),
            "{key}: {log}"
        );
    }
}
