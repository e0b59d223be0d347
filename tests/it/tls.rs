//! Client TLS with certificates made in the test: TLS and mutual TLS with the real etcdctl and
//! ballastctl, refused certificates, rotation without a restart, `--auto-tls`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::cluster::{ballast_bin, bin_dir, free_port, run_ctl};

/// A CA with a server certificate (127.0.0.1, localhost; server and client use, as kubeadm
/// makes them) and a client certificate, as PEM files in `dir`.
pub(crate) struct Pki {
    pub(crate) ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
    /// A second client certificate, CN "alice".
    pub(crate) alice_cert: PathBuf,
    pub(crate) alice_key: PathBuf,
    /// "server" certificates for one use each: serving only, and dialling only.
    pub(crate) serving_only_cert: PathBuf,
    pub(crate) serving_only_key: PathBuf,
    pub(crate) dialling_only_cert: PathBuf,
    pub(crate) dialling_only_key: PathBuf,
}

pub(crate) fn pki(dir: &Path, name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} ca"));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |cn: &str, sans: Vec<String>, usage: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = usage;
        (p.signed_by(&key, &ca_cert, &ca_key).unwrap(), key)
    };
    let (server, server_key) = leaf(
        "server",
        vec!["127.0.0.1".into(), "localhost".into()],
        // Members also present it as clients of each other (kubeadm's server certs carry both).
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let (client, client_key) = leaf("root", vec![], vec![ExtendedKeyUsagePurpose::ClientAuth]);
    let (alice, alice_key) = leaf("alice", vec![], vec![ExtendedKeyUsagePurpose::ClientAuth]);
    let sans = || vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let (serving, serving_key) = leaf("server", sans(), vec![ExtendedKeyUsagePurpose::ServerAuth]);
    let (dialling, dialling_key) =
        leaf("server", sans(), vec![ExtendedKeyUsagePurpose::ClientAuth]);
    let write = |file: &str, pem: String| {
        let p = dir.join(format!("{name}-{file}"));
        std::fs::write(&p, pem).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.pem", server.pem()),
        server_key: write("server-key.pem", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client-key.pem", client_key.serialize_pem()),
        alice_cert: write("alice.pem", alice.pem()),
        alice_key: write("alice-key.pem", alice_key.serialize_pem()),
        serving_only_cert: write("serving.pem", serving.pem()),
        serving_only_key: write("serving-key.pem", serving_key.serialize_pem()),
        dialling_only_cert: write("dialling.pem", dialling.pem()),
        dialling_only_key: write("dialling-key.pem", dialling_key.serialize_pem()),
    }
}

impl Pki {
    /// etcdctl's flags trusting this CA and presenting `cert`/`key`.
    fn creds(&self, cert: &Path, key: &Path) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca.display()),
            format!("--cert={}", cert.display()),
            format!("--key={}", key.display()),
        ]
    }
}

struct Member {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Member {
    fn spawn(mut cmd: Command, url: String, log: PathBuf) -> Member {
        let child = cmd
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Member { child, url, log }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, extra: &[&str]) -> Member {
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let log = dir.join("server.log");
    let mut cmd = Command::new(ballast_bin());
    cmd.args(["--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .arg(format!(
            "--listen-peer-urls=http://127.0.0.1:{}",
            free_port()
        ))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Member::spawn(cmd, url, log)
}

fn ctl(bin: PathBuf, ep: &str, tls: &[&str], args: &[&str]) -> (String, String, i32) {
    let mut all: Vec<&str> = tls.to_vec();
    all.push("--dial-timeout=1s");
    all.extend_from_slice(args);
    run_ctl(bin, ep, &all, None)
}

fn etcdctl(ep: &str, tls: &[&str], args: &[&str]) -> (String, String, i32) {
    ctl("etcdctl".into(), ep, tls, args)
}

fn ballastctl(ep: &str, tls: &[&str], args: &[&str]) -> (String, String, i32) {
    ctl(bin_dir().join("ballastctl"), ep, tls, args)
}

fn wait_serving(m: &Member, tls: &[&str]) {
    let start = Instant::now();
    while etcdctl(&m.url, tls, &["get", "x"]).2 != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not serving: {}",
            std::fs::read_to_string(&m.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mutual TLS: clients with a certificate from the trusted CA are served (etcdctl and
/// ballastctl); no certificate, or one from another CA, is refused at the handshake. Replacing
/// the files switches the member to the new certificates without a restart.
#[test]
fn mutual_tls_refuses_strangers_and_rotates_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki(dir.path(), "a");
    let b = pki(dir.path(), "b");
    // The member reads these paths; rotation overwrites them.
    let live = |f: &Path, name: &str| {
        let p = dir.path().join(name);
        std::fs::copy(f, &p).unwrap();
        p
    };
    let (cert, key, ca) = (
        live(&a.server_cert, "live-server.pem"),
        live(&a.server_key, "live-server-key.pem"),
        live(&a.ca, "live-ca.pem"),
    );
    let m = start(
        dir.path(),
        &[
            "--cert-file",
            cert.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
            "--trusted-ca-file",
            ca.to_str().unwrap(),
            "--client-cert-auth",
        ],
    );
    let creds = |p: &Pki| {
        vec![
            format!("--cacert={}", p.ca.display()),
            format!("--cert={}", p.client_cert.display()),
            format!("--key={}", p.client_key.display()),
        ]
    };
    let a_creds = creds(&a);
    let a_tls: Vec<&str> = a_creds.iter().map(String::as_str).collect();
    wait_serving(&m, &a_tls);
    assert_eq!(etcdctl(&m.url, &a_tls, &["put", "k", "v"]).0, "OK\n");
    assert_eq!(ballastctl(&m.url, &a_tls, &["get", "k"]).0, "k\nv\n");
    // Plain host:port endpoints use TLS too once certificate flags are given.
    let bare = m.url.trim_start_matches("https://").to_string();
    assert_eq!(
        ballastctl(&bare, &a_tls, &["get", "k", "--print-value-only"]).0,
        "v\n"
    );

    let ca_only = format!("--cacert={}", a.ca.display());
    for c in [
        etcdctl as fn(&str, &[&str], &[&str]) -> (String, String, i32),
        ballastctl,
    ] {
        let no_cert = c(&m.url, &[&ca_only], &["get", "k"]);
        assert_ne!(
            no_cert.2, 0,
            "served without a client certificate: {no_cert:?}"
        );
        let b_creds = creds(&b);
        let wrong_ca: Vec<&str> = vec![
            b_creds[0].as_str(),
            b_creds[1].as_str(),
            b_creds[2].as_str(),
        ];
        let stranger = c(&m.url, &wrong_ca, &["get", "k"]);
        assert_ne!(
            stranger.2, 0,
            "served a certificate from another CA: {stranger:?}"
        );
    }
    let plain = run_ctl(
        "etcdctl".into(),
        &bare,
        &["--dial-timeout=1s", "get", "k"],
        None,
    );
    assert_ne!(plain.2, 0, "served plaintext on a TLS port: {plain:?}");

    // Rotate everything to CA b: new handshakes use it, no restart.
    std::thread::sleep(Duration::from_millis(1100)); // a new modification time
    std::fs::copy(&b.server_cert, &cert).unwrap();
    std::fs::copy(&b.server_key, &key).unwrap();
    std::fs::copy(&b.ca, &ca).unwrap();
    let b_creds = creds(&b);
    let b_tls: Vec<&str> = b_creds.iter().map(String::as_str).collect();
    assert_eq!(
        etcdctl(&m.url, &b_tls, &["get", "k", "--print-value-only"]).0,
        "v\n"
    );
    assert_ne!(
        etcdctl(&m.url, &a_tls, &["get", "k"]).2,
        0,
        "old CA still accepted"
    );
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert!(log.contains("reloaded TLS certificates"), "{log}");
}

/// `--auto-tls` serves a self-signed certificate kept in the data dir: ballastctl connects
/// skipping verification, etcdctl trusting that certificate. (etcdctl 3.4's
/// `--insecure-skip-tls-verify` fails against etcd's own `--auto-tls` too.)
#[test]
fn auto_tls_serves_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path(), &["--auto-tls"]);
    let cert = dir.path().join("data/fixtures/client/cert.pem");
    let trust = format!("--cacert={}", cert.display());
    wait_serving(&m, &[&trust]);
    let skip = ["--insecure-skip-tls-verify"];
    assert_eq!(ballastctl(&m.url, &skip, &["put", "a", "b"]).0, "OK\n");
    assert_eq!(
        etcdctl(&m.url, &[&trust], &["get", "a", "--print-value-only"]).0,
        "b\n"
    );
    assert_ne!(
        ballastctl(&m.url, &[], &["get", "a"]).2,
        0,
        "unverified without the flag"
    );
}

/// An https client URL without certificates stops the member with etcd's message.
#[test]
fn https_without_certificates_is_refused_at_start() {
    let out = Command::new(ballast_bin())
        .args([
            "--listen-client-urls",
            "https://127.0.0.1:23999",
            "--advertise-client-urls",
            "https://127.0.0.1:23999",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:23999 with HTTPS scheme"),
        "{err}"
    );
}

/// Starts member `name` on https client and peer URLs with mutual TLS on both, certificates
/// from `p`.
fn tls_member(
    dir: &Path,
    p: &Pki,
    name: &str,
    ports: (u16, &[u16]),
    initial: &str,
    state: &str,
    extra: &[&str],
) -> Member {
    let url = format!("https://127.0.0.1:{}", ports.0);
    let peer_url = peer_urls(ports.1);
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(ballast_bin());
    cmd.args(["--name", name, "--data-dir"])
        .arg(dir.join(name))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args([
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            state,
        ])
        .arg(format!("--cert-file={}", p.server_cert.display()))
        .arg(format!("--key-file={}", p.server_key.display()))
        .arg(format!("--trusted-ca-file={}", p.ca.display()))
        .arg("--client-cert-auth")
        .arg(format!("--peer-cert-file={}", p.server_cert.display()))
        .arg(format!("--peer-key-file={}", p.server_key.display()))
        .arg(format!("--peer-trusted-ca-file={}", p.ca.display()))
        .arg("--peer-client-cert-auth")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Member::spawn(cmd, url, log)
}

/// `https://127.0.0.1:<port>` for each port, comma-separated.
fn peer_urls(ports: &[u16]) -> String {
    // The second URL names the host differently, as operators' configurations often do.
    let urls: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("https://{}:{p}", ["127.0.0.1", "localhost"][i % 2]))
        .collect();
    urls.join(",")
}

/// A new cluster of `n` TLS members named `<prefix>0..`, each listening on `peers` peer URLs;
/// returns them and `--initial-cluster`.
fn tls_cluster(
    dir: &Path,
    p: &Pki,
    prefix: &str,
    (n, peers): (usize, usize),
    extra: &[&str],
) -> (Vec<Member>, String) {
    let ports: Vec<(u16, Vec<u16>)> = (0..n)
        .map(|_| (free_port(), (0..peers).map(|_| free_port()).collect()))
        .collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .flat_map(|(i, (_, peer))| {
            peer_urls(peer)
                .split(',')
                .map(|url| format!("{prefix}{i}={url}"))
                .collect::<Vec<_>>()
        })
        .collect();
    let initial = initial.join(",");
    let members = ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            let name = format!("{prefix}{i}");
            tls_member(dir, p, &name, (*client, peer), &initial, "new", extra)
        })
        .collect();
    (members, initial)
}

/// `tls_cluster`, once every member serves; with etcdctl's flags for the client certificate.
fn serving_tls_cluster(
    dir: &Path,
    p: &Pki,
    prefix: &str,
    shape: (usize, usize),
    extra: &[&str],
) -> (Vec<Member>, String, Vec<String>) {
    let (members, initial) = tls_cluster(dir, p, prefix, shape, extra);
    let creds = p.creds(&p.client_cert, &p.client_key);
    let tls: Vec<&str> = creds.iter().map(String::as_str).collect();
    for m in &members {
        wait_serving(m, &tls);
    }
    (members, initial, creds)
}

/// Three members with mutual TLS on client and peer ports: raft runs over peer TLS, what
/// followers forward to the leader (lease keep-alive, time-to-live) goes over client TLS with
/// the member's own certificate, and a member whose peer certificate comes from another CA
/// cannot join.
#[test]
fn members_talk_over_tls_and_strangers_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path(), "c");
    // The members' certificates are all issued to "server".
    let (members, initial, creds) = serving_tls_cluster(
        dir.path(),
        &p,
        "t",
        (3, 1),
        &["--peer-cert-allowed-cn=server"],
    );
    let tls: Vec<&str> = creds.iter().map(String::as_str).collect();
    let eps: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    let status = etcdctl(&eps.join(","), &tls, &["endpoint", "status", "-w", "json"]).0;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let rows = v.as_array().unwrap();
    let leader = rows[0]["Status"]["leader"].as_u64().unwrap();
    let follower = rows
        .iter()
        .find(|r| r["Status"]["header"]["member_id"].as_u64() != Some(leader))
        .unwrap()["Endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let grant = ballastctl(&follower, &tls, &["lease", "grant", "60"]);
    assert_eq!(grant.2, 0, "{grant:?}");
    let id = grant.0.split_whitespace().nth(1).unwrap().to_string();
    let kept = ballastctl(&follower, &tls, &["lease", "keep-alive", "--once", &id]);
    assert_eq!(
        kept.0,
        format!("lease {id} keepalived with TTL(60)\n"),
        "{kept:?}"
    );
    let ttl = etcdctl(&follower, &tls, &["lease", "timetolive", &id]);
    assert!(
        ttl.0
            .starts_with(&format!("lease {id} granted with TTL(60s)")),
        "{ttl:?}"
    );

    // A fourth member, added properly but holding a certificate from another CA.
    let stranger = pki(dir.path(), "d");
    let peer_port4 = [free_port()];
    let ports4 = (free_port(), &peer_port4[..]);
    let peer4 = peer_urls(&peer_port4);
    let added = etcdctl(
        &eps[0],
        &tls,
        &["member", "add", "t3", &format!("--peer-urls={peer4}")],
    );
    assert_eq!(added.2, 0, "{added:?}");
    let initial4 = format!("{initial},t3={peer4}");
    let m4 = tls_member(
        dir.path(),
        &stranger,
        "t3",
        ports4,
        &initial4,
        "existing",
        &[],
    );
    std::thread::sleep(Duration::from_secs(3));
    let list = etcdctl(&eps[0], &tls, &["member", "list"]).0;
    assert!(
        list.contains(", unstarted, "),
        "the stranger must not start: {list}"
    );
    let logs = all_logs(&members);
    assert!(
        logs.contains("rejected peer connection") || logs.contains("peer TLS handshake failed"),
        "{logs}"
    );
    drop(m4);
    // The cluster itself carries on (a 4-member cluster with 3 up keeps quorum).
    assert_eq!(etcdctl(&eps[2], &tls, &["put", "after", "x"]).0, "OK\n");
}

/// Every member's log, one after the other.
fn all_logs(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| std::fs::read_to_string(&m.log).unwrap_or_default())
        .collect()
}

/// Members whose peer certificates the allowed names refuse: after a few election timeouts
/// the handshakes failed with etcd's message and no leader was elected.
fn assert_turned_away(members: &[Member]) {
    std::thread::sleep(Duration::from_secs(3));
    let logs = all_logs(members);
    assert!(
        logs.contains("client certificate authentication failed"),
        "{logs}"
    );
    assert!(
        !logs.contains("became leader"),
        "a leader was elected: {logs}"
    );
}

/// Members that each listen on two https peer URLs, with peer client-certificate auth and an
/// allowed CN, elect a leader and replicate (etcd dials whichever of a peer's URLs answers).
#[test]
fn members_with_two_peer_urls_elect_a_leader() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path(), "u");
    let (members, _, creds) = serving_tls_cluster(
        dir.path(),
        &p,
        "w",
        (3, 2),
        &["--peer-cert-allowed-cn=server"],
    );
    let tls: Vec<&str> = creds.iter().map(String::as_str).collect();
    assert_eq!(etcdctl(&members[0].url, &tls, &["put", "k", "v"]).0, "OK\n");
    let got = etcdctl(&members[2].url, &tls, &["get", "k", "--print-value-only"]);
    assert_eq!(got.0, "v\n", "{got:?}");
    let list = etcdctl(&members[1].url, &tls, &["member", "list"]).0;
    assert_eq!(list.matches("started").count(), 3, "{list}");
}

/// `--peer-cert-allowed-cn`: peers whose certificate names someone else are turned away, so
/// two members that only accept "nobody" never form a cluster.
#[test]
fn peer_cert_allowed_cn_turns_other_names_away() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path(), "e");
    let (members, _) = tls_cluster(
        dir.path(),
        &p,
        "n",
        (2, 1),
        &["--peer-cert-allowed-cn=nobody"],
    );
    assert_turned_away(&members);
}

/// `--peer-cert-allowed-hostname`, a comma-separated list as in etcd 3.7: a peer whose
/// certificate has a SAN matching one of the names is admitted (both ways: dialling and
/// dialled), others are turned away.
#[test]
fn peer_cert_allowed_hostname_checks_the_certificates_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path(), "h");
    // The members' certificates name 127.0.0.1 and localhost.
    let (members, _, creds) = serving_tls_cluster(
        dir.path(),
        &p,
        "h",
        (2, 1),
        &["--peer-cert-allowed-hostname=peer.example,localhost"],
    );
    let tls: Vec<&str> = creds.iter().map(String::as_str).collect();
    assert_eq!(etcdctl(&members[1].url, &tls, &["put", "k", "v"]).0, "OK\n");

    let (others, _) = tls_cluster(
        dir.path(),
        &p,
        "o",
        (2, 1),
        &["--peer-cert-allowed-hostname=peer.example"],
    );
    assert_turned_away(&others);
}

/// `--client-cert-allowed-hostname`: under `--client-cert-auth`, only client certificates
/// with a matching SAN are served, as in etcd.
#[test]
fn client_cert_allowed_hostname_admits_matching_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path(), "a");
    let m = start(
        dir.path(),
        &[
            &format!("--cert-file={}", p.server_cert.display()),
            &format!("--key-file={}", p.server_key.display()),
            &format!("--trusted-ca-file={}", p.ca.display()),
            "--client-cert-auth",
            "--client-cert-allowed-hostname=localhost",
        ],
    );
    // The server certificate names localhost and may act as a client.
    let named = p.creds(&p.server_cert, &p.server_key);
    let named: Vec<&str> = named.iter().map(String::as_str).collect();
    wait_serving(&m, &named);
    assert_eq!(etcdctl(&m.url, &named, &["put", "k", "v"]).0, "OK\n");
    // The client certificate has no SAN at all.
    let unnamed = p.creds(&p.client_cert, &p.client_key);
    let unnamed: Vec<&str> = unnamed.iter().map(String::as_str).collect();
    let out = etcdctl(&m.url, &unnamed, &["get", "k"]);
    assert_ne!(out.2, 0, "{out:?}");
    let log = std::fs::read_to_string(&m.log).unwrap_or_default();
    assert!(
        log.contains("client certificate authentication failed"),
        "{log}"
    );
}

/// Under `--client-cert-auth`, a verified certificate's CN is the user when the request has no
/// token (etcd's rule): the "root" certificate administers, "alice" gets only her role, and a
/// token still wins over the certificate. etcdctl and ballastctl alike.
#[test]
fn client_certificate_cn_is_the_user_under_client_cert_auth() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki(dir.path(), "a");
    let m = start(
        dir.path(),
        &[
            "--cert-file",
            a.server_cert.to_str().unwrap(),
            "--key-file",
            a.server_key.to_str().unwrap(),
            "--trusted-ca-file",
            a.ca.to_str().unwrap(),
            "--client-cert-auth",
            "--bcrypt-cost=4",
        ],
    );
    let as_cert = |cert: &Path, key: &Path| {
        vec![
            format!("--cacert={}", a.ca.display()),
            format!("--cert={}", cert.display()),
            format!("--key={}", key.display()),
        ]
    };
    let root = as_cert(&a.client_cert, &a.client_key);
    let root: Vec<&str> = root.iter().map(String::as_str).collect();
    let alice = as_cert(&a.alice_cert, &a.alice_key);
    let alice: Vec<&str> = alice.iter().map(String::as_str).collect();
    wait_serving(&m, &root);
    let ok = |out: (String, String, i32)| {
        assert_eq!(out.2, 0, "{out:?}");
        out.0
    };
    ok(etcdctl(&m.url, &root, &["user", "add", "root:rootpw"]));
    ok(etcdctl(
        &m.url,
        &root,
        &["user", "add", "alice", "--no-password"],
    ));
    ok(etcdctl(&m.url, &root, &["role", "add", "a-reader"]));
    ok(etcdctl(
        &m.url,
        &root,
        &[
            "role",
            "grant-permission",
            "a-reader",
            "read",
            "--prefix",
            "a/",
        ],
    ));
    ok(etcdctl(
        &m.url,
        &root,
        &["user", "grant-role", "alice", "a-reader"],
    ));
    ok(etcdctl(&m.url, &root, &["put", "a/1", "one"]));
    assert_eq!(
        ok(etcdctl(&m.url, &root, &["auth", "enable"])),
        "Authentication Enabled\n"
    );

    for c in [
        etcdctl as fn(&str, &[&str], &[&str]) -> (String, String, i32),
        ballastctl,
    ] {
        // The root certificate is root: writes and administration, no password.
        assert_eq!(ok(c(&m.url, &root, &["put", "a/2", "two"])), "OK\n");
        assert_eq!(ok(c(&m.url, &root, &["user", "list"])), "alice\nroot\n");
        // Alice's certificate reads her prefix and nothing else.
        assert_eq!(
            ok(c(&m.url, &alice, &["get", "a/", "--prefix", "--keys-only"])),
            "a/1\n\na/2\n\n"
        );
        for denied in [&["put", "a/3", "x"][..], &["get", "b"], &["user", "list"]] {
            let out = c(&m.url, &alice, denied);
            assert_eq!(out.2, 1, "{denied:?}: {out:?}");
            assert!(
                out.1.ends_with("Error: etcdserver: permission denied\n"),
                "{denied:?}: {out:?}"
            );
        }
        // A token names the user even over another's certificate.
        let mut with_user = alice.clone();
        with_user.push("--user=root:rootpw");
        assert_eq!(ok(c(&m.url, &with_user, &["put", "b", "x"])), "OK\n");
    }
}

/// Runs `openssl args...` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A P-256 key `<name>.key` and a certificate `<name>.pem` for CN `name` with `exts`
/// (`-addext` values): self-signed, or signed by `ca.pem`/`ca.key` in `dir`.
fn openssl_cert(dir: &Path, name: &str, exts: &[&str], self_signed: bool) {
    let (key, pem, csr) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("{name}.csr"),
    );
    let subj = format!("/CN={name}");
    let mut req = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-subj",
        &subj,
        "-days",
        "2",
    ];
    for e in exts {
        req.extend_from_slice(&["-addext", e]);
    }
    if self_signed {
        req.extend_from_slice(&["-x509", "-out", &pem]);
        return openssl(dir, &req);
    }
    req.extend_from_slice(&["-new", "-out", &csr]);
    openssl(dir, &req);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
            "-out",
            &pem,
        ],
    );
}

/// `--client-crl-file` with a CRL made by openssl's CA: the revoked client certificate is
/// refused at the handshake, a valid one from the same CA is served.
#[test]
fn a_revoked_client_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_cert(
        d,
        "ca",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=keyCertSign,cRLSign",
        ],
        true,
    );
    let leaf = [
        "subjectAltName=IP:127.0.0.1",
        "extendedKeyUsage=serverAuth,clientAuth",
    ];
    for name in ["server", "good", "bad"] {
        openssl_cert(d, name, &leaf, false);
    }
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\ncrlnumber=crlnumber\ndefault_md=sha256\ndefault_crl_days=2\n",
    )
    .unwrap();
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("crlnumber"), "01\n").unwrap();
    let ca = ["-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem"];
    openssl(d, &[&["ca"][..], &ca, &["-revoke", "bad.pem"]].concat());
    openssl(
        d,
        &[&["ca"][..], &ca, &["-gencrl", "-out", "crl.pem"]].concat(),
    );

    let f = |name: &str| d.join(name).display().to_string();
    let m = start(
        d,
        &[
            &format!("--cert-file={}", f("server.pem")),
            &format!("--key-file={}", f("server.key")),
            &format!("--trusted-ca-file={}", f("ca.pem")),
            "--client-cert-auth",
            &format!("--client-crl-file={}", f("crl.pem")),
        ],
    );
    let creds = |who: &str| {
        vec![
            format!("--cacert={}", f("ca.pem")),
            format!("--cert={}", f(&format!("{who}.pem"))),
            format!("--key={}", f(&format!("{who}.key"))),
        ]
    };
    let good = creds("good");
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    wait_serving(&m, &good);
    assert_eq!(etcdctl(&m.url, &good, &["put", "k", "v"]).0, "OK\n");
    let bad = creds("bad");
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    for c in [
        etcdctl as fn(&str, &[&str], &[&str]) -> (String, String, i32),
        ballastctl,
    ] {
        let out = c(&m.url, &bad, &["get", "k"]);
        assert_ne!(out.2, 0, "a revoked certificate was served: {out:?}");
    }
    let log = std::fs::read_to_string(&m.log).unwrap_or_default();
    assert!(log.contains("Revoked"), "{log}");
}

/// One self-signed certificate with CN `root` as server certificate, CA and client
/// certificate (a common test and small-site setup; Go accepts a trusted CA presented as the
/// leaf): `user add root --interactive=false` takes the password from stdin, and with auth on
/// several etcdctl and ballastctl processes add and delete users and keys at once.
#[test]
fn a_self_signed_root_certificate_serves_concurrent_admin_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_cert(
        d,
        "root",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=digitalSignature,keyCertSign",
            "subjectAltName=IP:127.0.0.1",
            "extendedKeyUsage=serverAuth,clientAuth",
        ],
        true,
    );
    let (pem, key) = (
        d.join("root.pem").display().to_string(),
        d.join("root.key").display().to_string(),
    );
    let m = start(
        d,
        &[
            &format!("--cert-file={pem}"),
            &format!("--key-file={key}"),
            &format!("--trusted-ca-file={pem}"),
            "--client-cert-auth",
        ],
    );
    let creds = [
        format!("--cacert={pem}"),
        format!("--cert={pem}"),
        format!("--key={key}"),
        "--command-timeout=10s".to_string(),
    ];
    let tls: Vec<&str> = creds.iter().map(String::as_str).collect();
    wait_serving(&m, &tls);
    let with_stdin = |bin: PathBuf, args: &[&str], input: &str| {
        let mut all = tls.clone();
        all.extend_from_slice(args);
        run_ctl(bin, &m.url, &all, Some(input))
    };
    let added = with_stdin(
        "etcdctl".into(),
        &["user", "add", "root", "--interactive=false"],
        "rootpw\n",
    );
    assert_eq!(added.0, "User root created\n", "{added:?}");
    assert_eq!(
        etcdctl(&m.url, &tls, &["auth", "enable"]).0,
        "Authentication Enabled\n"
    );
    std::thread::scope(|s| {
        for t in 0..4 {
            let with_stdin = &with_stdin;
            s.spawn(move || {
                let bin: PathBuf = if t % 2 == 0 {
                    "etcdctl".into()
                } else {
                    bin_dir().join("ballastctl")
                };
                for i in 0..4 {
                    let (user, k) = (format!("u{t}-{i}"), format!("k{t}-{i}"));
                    let steps: [(&[&str], &str); 4] = [
                        (&["user", "add", &user, "--interactive=false"], "pw\n"),
                        (&["put", &k, "v"], ""),
                        (&["user", "delete", &user], ""),
                        (&["del", &k], ""),
                    ];
                    for (args, input) in steps {
                        let out = with_stdin(bin.clone(), args, input);
                        assert_eq!(out.2, 0, "{bin:?} {args:?}: {out:?}");
                    }
                }
            });
        }
    });
    assert_eq!(etcdctl(&m.url, &tls, &["user", "list"]).0, "root\n");
    let left = etcdctl(&m.url, &tls, &["get", "k", "--prefix", "--keys-only"]);
    assert_eq!(left, (String::new(), String::new(), 0));
}

/// Members whose certificates are for serving only (no clientAuth usage) cannot dial each
/// other under client-certificate auth; given `--peer-client-cert-file`/`--peer-client-key-file`
/// and `--client-cert-file`/`--client-key-file` for dialling, as etcd takes them, they form a
/// cluster, replicate, and forward to the leader over client TLS.
#[test]
fn separate_dialling_certificates_let_serving_only_certificates_form_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = pki(dir.path(), "d");
    p.server_cert = p.serving_only_cert.clone();
    p.server_key = p.serving_only_key.clone();
    let (refused, _) = tls_cluster(dir.path(), &p, "x", (2, 1), &[]);
    std::thread::sleep(Duration::from_secs(3));
    let logs = all_logs(&refused);
    assert!(
        logs.contains("does not allow extended key usage for client authentication"),
        "{logs}"
    );
    assert!(
        !logs.contains("became leader"),
        "a leader was elected: {logs}"
    );
    drop(refused);
    let dialling = [
        format!("--peer-client-cert-file={}", p.dialling_only_cert.display()),
        format!("--peer-client-key-file={}", p.dialling_only_key.display()),
        format!("--client-cert-file={}", p.dialling_only_cert.display()),
        format!("--client-key-file={}", p.dialling_only_key.display()),
    ];
    let extra: Vec<&str> = dialling.iter().map(String::as_str).collect();
    let (members, _, creds) = serving_tls_cluster(dir.path(), &p, "y", (3, 1), &extra);
    let tls: Vec<&str> = creds.iter().map(String::as_str).collect();
    assert_eq!(etcdctl(&members[0].url, &tls, &["put", "k", "v"]).0, "OK\n");
    let got = etcdctl(&members[2].url, &tls, &["get", "k", "--print-value-only"]);
    assert_eq!(got.0, "v\n", "{got:?}");
    // Lease keep-alives reach the leader from whichever member took them.
    let lease = etcdctl(&members[1].url, &tls, &["lease", "grant", "60"]).0;
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    for m in &members {
        let kept = etcdctl(&m.url, &tls, &["lease", "keep-alive", "--once", &id]);
        assert_eq!(kept.2, 0, "{kept:?}");
    }
}
