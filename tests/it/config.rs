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
    // max-snapshots and max-wals now mean something (retention of Ballast's own files).
    assert!(!log.contains("max-wals"), "{log}");
    for key in ["enable-v2", "proxy"] {
        assert!(
            log.contains(&format!(r#"config key \"{key}\" has no effect in Ballast"#)),
            "{key}: {log}"
        );
    }
}

/// `bin` (etcd or Ballast) serving clients at `url` from `data`, with a fresh peer port.
fn member_command(bin: &std::path::Path, data: &std::path::Path, url: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--data-dir")
        .arg(data)
        .args(["--listen-client-urls", url, "--advertise-client-urls", url])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", crate::cluster::free_port()),
        ]);
    cmd
}

/// etcd checks `--initial-cluster` against `--initial-advertise-peer-urls` only when a member
/// bootstraps: restarted with flags that disagree (a member's log says who it is), etcd 3.7
/// and Ballast both start; on a first start both refuse.
#[test]
fn initial_cluster_flags_are_checked_on_the_first_start_only() {
    use crate::cluster::{etcd37_tool, http_get, Kind, Server};
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
            member_command(&bin, dir, &url)
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

/// etcd flags with a meaning for Ballast, each side by side with etcd 3.7: the JSON gateway
/// turned off leaves health answering and `/v3/...` refused alike; `--socket-reuse-port` lets
/// another socket bind the client port (and nothing else does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_switch_and_socket_reuse_port_act_as_on_etcd() {
    use crate::cluster::{http_get, Kind, Server};
    use crate::gateway::request;
    let observe = |kind: Kind| {
        let on = Server::start(kind, &["--socket-reuse-port"]);
        let shared = bind_reuse_port(on.port);
        let range = |s: &Server| {
            let (code, _, body) = request(s.port, "POST", "/v3/kv/range", "", r#"{"key":"YQ=="}"#);
            // An answer's header, or the whole of a refusal.
            match code {
                200 => (code, body.contains("header").to_string()),
                _ => (code, body),
            }
        };
        let gateway_on = range(&on);
        drop(on);
        let off = Server::start(kind, &["--enable-grpc-gateway=false"]);
        let alone = bind_reuse_port(off.port);
        (
            shared,
            alone,
            gateway_on,
            range(&off),
            http_get(off.port, "/health").map(|r| r.0),
        )
    };
    let etcd = observe(Kind::Etcd37);
    assert_eq!(
        (etcd.0, etcd.1, etcd.2.clone(), etcd.4),
        (true, false, (200, "true".to_string()), Some(200)),
        "{etcd:?}"
    );
    assert_eq!(etcd.3, (404, "404 page not found\n".to_string()));
    assert_eq!(observe(Kind::Ballast), etcd);
}

/// Whether a socket with SO_REUSEPORT may bind 127.0.0.1:`port` while a member listens there.
fn bind_reuse_port(port: u16) -> bool {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.set_reuseport(true).unwrap();
    s.bind(([127, 0, 0, 1], port).into()).is_ok()
}

/// `--self-signed-cert-validity`: an auto-TLS certificate lasts that many years of 365 days
/// from now, on etcd 3.7 as on Ballast, and 0 is refused where a certificate is made.
#[test]
fn auto_tls_certificates_last_self_signed_cert_validity_years() {
    use crate::cluster::{etcd37_tool, free_port};
    use std::time::{Duration, Instant};
    for bin in [etcd37_tool("etcd"), ballast_bin()] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        let url = format!("https://127.0.0.1:{}", free_port());
        let start = |years: &str| {
            member_command(&bin, &data, &url)
                .args([
                    "--auto-tls",
                    &format!("--self-signed-cert-validity={years}"),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        // 0: no certificate can be made, so the member does not start.
        let out = start("0").wait_with_output().unwrap();
        assert!(!out.status.success(), "{bin:?} started with validity 0");
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("selfSignedCertValidity is invalid,it should be greater than 0"),
            "{bin:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&data);
        let mut child = start("2");
        let cert = data.join("fixtures").join("client").join("cert.pem");
        let began = Instant::now();
        while !cert.exists() && began.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        let _ = child.kill();
        let _ = child.wait();
        let expires_within = |days: u64| {
            !Command::new("openssl")
                .args([
                    "x509",
                    "-noout",
                    "-checkend",
                    &(days * 86_400).to_string(),
                    "-in",
                ])
                .arg(&cert)
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        assert!(!expires_within(729), "{bin:?}: shorter than two years");
        assert!(expires_within(731), "{bin:?}: longer than two years");
    }
}

/// `--experimental-warning-apply-duration`: an apply slower than it is logged with etcd's
/// message and counted in `etcd_server_slow_apply_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_slower_than_the_warning_duration_are_logged_and_counted() {
    use crate::cluster::{http_get, Kind, Server};
    let s = Server::start(
        Kind::Ballast,
        &["--experimental-warning-apply-duration=1ms"],
    );
    let mut c = etcd_client::Client::connect([s.endpoint()], None)
        .await
        .unwrap();
    for i in 0..3000 {
        c.put(format!("k{}", i % 100), "v", None).await.unwrap();
    }
    // A physical compaction deletes thousands of revisions in one apply, well over a
    // millisecond (a plain one leaves them to background steps).
    c.compact(
        3000,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    let (_, metrics) = http_get(s.port, "/metrics").unwrap();
    let slow: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("etcd_server_slow_apply_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(slow >= 1.0, "etcd_server_slow_apply_total {slow}");
    assert!(
        s.log().contains("apply request took too long"),
        "{}",
        s.log()
    );
}

/// `--grpc-keepalive-interval` and `--grpc-keepalive-timeout`: a client connection idle for
/// the interval is pinged, and one that does not answer within the timeout is closed, on etcd
/// 3.7 as on Ballast (a raw HTTP/2 connection that acknowledges settings, never pings).
#[test]
fn idle_client_connections_are_pinged_and_silent_ones_closed() {
    use crate::cluster::{Kind, Server};
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let observe = |kind: Kind| {
        let s = Server::start(
            kind,
            &[
                "--grpc-keepalive-interval=1s",
                "--grpc-keepalive-timeout=1s",
            ],
        );
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
        let started = Instant::now();
        let (mut pinged, mut closed) = (None, None);
        loop {
            let mut head = [0u8; 9];
            if c.read_exact(&mut head).is_err() {
                closed = Some(started.elapsed());
                break;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut body = vec![0u8; len];
            if c.read_exact(&mut body).is_err() {
                closed = Some(started.elapsed());
                break;
            }
            match (head[3], head[4] & 1) {
                // The server's settings: acknowledged, so only the ping goes unanswered.
                (4, 0) => c.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).unwrap(),
                (6, 0) => pinged = pinged.or(Some(started.elapsed())),
                (7, _) => {
                    closed = Some(started.elapsed());
                    break;
                }
                _ => {}
            }
            if started.elapsed() > Duration::from_secs(12) {
                break;
            }
        }
        let within =
            |t: Option<Duration>, secs: u64| t.is_some_and(|t| t < Duration::from_secs(secs));
        (within(pinged, 5), within(closed, 10))
    };
    let etcd = observe(Kind::Etcd37);
    assert_eq!(etcd, (true, true));
    assert_eq!(observe(Kind::Ballast), etcd);
}
