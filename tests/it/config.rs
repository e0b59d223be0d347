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
            &["--listen-client-urls", "ftp://x:1"][..],
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
    for key in ["max-snapshots", "proxy"] {
        assert!(
            log.contains(&format!(r#"config key \"{key}\" has no effect in Ballast"#)),
            "{key}: {log}"
        );
    }
}

/// etcd checks `--initial-cluster` against `--initial-advertise-peer-urls` only when a member
/// bootstraps: restarted with flags that disagree (a member's log says who it is), etcd 3.7
/// and Ballast both start; on a first start both refuse.
#[test]
fn initial_cluster_flags_are_checked_on_the_first_start_only() {
    use crate::cluster::{etcd37_tool, free_port, http_get, Kind, Server};
    use std::time::{Duration, Instant};
    for kind in [Kind::Etcd37, Kind::Ballast] {
        let mut m = Server::start(kind, &[]);
        m.terminate();
        let bin = match kind {
            Kind::Ballast => ballast_bin(),
            _ => etcd37_tool("etcd"),
        };
        let url = format!("http://127.0.0.1:{}", m.port);
        let disagreeing = |dir: &std::path::Path| {
            Command::new(&bin)
                .arg("--data-dir")
                .arg(dir)
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args([
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{}", free_port()),
                ])
                .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2399"])
                .args(["--initial-cluster", "default=http://127.0.0.1:2380"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut child = disagreeing(&m.data_dir);
        let start = Instant::now();
        let healthy = loop {
            if let Some((200, _)) = http_get(m.port, "/health") {
                break true;
            }
            if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(20) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(healthy, "{kind:?} restarts with flags that disagree");

        let fresh = tempfile::tempdir().unwrap();
        let status = disagreeing(&fresh.path().join("d")).wait().unwrap();
        assert!(!status.success(), "{kind:?} refuses them on a first start");
    }
}
