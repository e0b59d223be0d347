//! Starting and stopping server processes for tests. Every wait is bounded; every process is
//! killed when its handle drops.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Directory holding the workspace's built binaries (the test executable lives in `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

pub fn ballast_bin() -> PathBuf {
    let p = bin_dir().join("ballast");
    assert!(
        p.exists(),
        "{} missing: build with `cargo build --bins` first",
        p.display()
    );
    p
}

pub use ballast_harness::cluster::free_port;

/// A GET against the client port; None when nothing answers yet.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ballast,
    /// etcd 3.4 from Debian, on the PATH.
    Etcd,
    /// etcd 3.7 built from the Go module proxy by `scripts/reference-etcd`.
    Etcd37,
}

/// What a tool the tests need is: `$env` when set (scripts/test sets it), otherwise the path
/// `scripts/<script>` prints after building it or finding it in its per-machine cache.
pub fn built_by(env: &str, script: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let out = Command::new(&path)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(out.status.success(), "scripts/{script} failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// etcd's own benchmark tool (scripts/etcd-benchmark).
pub fn etcd_benchmark() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| built_by("BALLAST_ETCD_BENCHMARK", "etcd-benchmark"))
}

/// The directory holding etcd 3.7's `etcd`, `etcdctl` and `etcdutl` (scripts/reference-etcd).
pub fn etcd37_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| built_by("BALLAST_ETCD37", "reference-etcd"))
}

/// The client a kind's operators use: Debian's etcdctl, etcd 3.7's, or ballastctl.
pub fn ctl_of(kind: Kind) -> PathBuf {
    match kind {
        Kind::Ballast => bin_dir().join("ballastctl"),
        Kind::Etcd => "etcdctl".into(),
        Kind::Etcd37 => etcd37_tool("etcdctl"),
    }
}

/// etcd 3.7's `etcdctl` or `etcdutl`.
pub fn etcd37_tool(name: &str) -> PathBuf {
    etcd37_dir().join(name)
}

/// One server process with its own data dir and client port.
pub struct Server {
    pub kind: Kind,
    pub child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    /// Set for members of a multi-member cluster.
    pub member: Option<Member>,
    /// `BALLAST_FAILPOINTS` for a Ballast built with failpoints (`ballast-failpoints`).
    pub failpoints: Option<String>,
    /// Environment variables for the process (credentials never go on a command line).
    pub env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

/// A cluster member's identity flags.
#[derive(Clone)]
pub struct Member {
    pub name: String,
    pub peer_port: u16,
    pub initial_cluster: String,
    pub state: &'static str,
}

impl Server {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts a single member. Both kinds get the same advertised peer URL, so etcd and Ballast
    /// derive the same member and cluster IDs.
    pub fn start(kind: Kind, extra: &[&str]) -> Server {
        let mut s = Server::unstarted(kind, extra);
        s.spawn();
        s
    }

    /// The single member [`Server::start`] starts, not started yet (its data directory can be
    /// filled first).
    pub fn unstarted(kind: Kind, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        Server {
            kind,
            child: None,
            port: free_port(),
            data_dir: tmp.path().join("data"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            member: None,
            failpoints: None,
            env: Vec::new(),
            _tmp: Some(tmp),
        }
    }

    /// A single Ballast member built with failpoints, armed with `failpoints`; launched, not
    /// waited for (an armed point may stop it at any time).
    pub fn launch_with_failpoints(failpoints: &str, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Server {
            kind: Kind::Ballast,
            child: None,
            port: free_port(),
            data_dir: tmp.path().join("data"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            member: None,
            failpoints: Some(failpoints.to_string()),
            env: Vec::new(),
            _tmp: Some(tmp),
        };
        s.launch();
        s
    }

    /// A cluster member, not yet started (members must start together to elect a leader).
    pub fn new_member(kind: Kind, member: Member, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        Server {
            kind,
            child: None,
            port: free_port(),
            data_dir: tmp.path().join("data"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            member: Some(member),
            failpoints: None,
            env: Vec::new(),
            _tmp: Some(tmp),
        }
    }

    pub fn spawn(&mut self) {
        self.launch();
        self.wait_healthy(Duration::from_secs(20));
    }

    /// Starts the process without waiting for it to serve.
    pub fn launch(&mut self) {
        let url = format!("http://127.0.0.1:{}", self.port);
        let (name, listen_peer, peer, cluster, state) = match &self.member {
            Some(m) => {
                let p = format!("http://127.0.0.1:{}", m.peer_port);
                (
                    m.name.clone(),
                    p.clone(),
                    p,
                    m.initial_cluster.clone(),
                    m.state,
                )
            }
            None => (
                "default".into(),
                format!("http://127.0.0.1:{}", free_port()),
                "http://127.0.0.1:2380".into(),
                "default=http://127.0.0.1:2380".into(),
                "new",
            ),
        };
        let bin: PathBuf = match (self.kind, &self.failpoints) {
            (Kind::Ballast, None) => ballast_bin(),
            (Kind::Ballast, Some(_)) => bin_dir().join("ballast-failpoints"),
            (Kind::Etcd, _) => "etcd".into(),
            (Kind::Etcd37, _) => etcd37_tool("etcd"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .unwrap();
        let mut cmd = Command::new(bin);
        if let Some(f) = &self.failpoints {
            cmd.env("BALLAST_FAILPOINTS", f);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .args(["--name", &name, "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &listen_peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-state", state])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn server");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn wait_healthy(&mut self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some((200, body)) = http_get(self.port, "/health") {
                if body.contains("\"true\"") {
                    return;
                }
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("server exited early ({st}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server not healthy within {limit:?}:\n{}", self.log());
    }

    /// SIGTERM, as `systemctl stop` sends it, and waits (bounded) for the process to exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("server ignored SIGTERM for 10 s:\n{}", self.log());
        }
    }

    /// Stops the process (SIGTERM and a wait when `clean`, else SIGKILL) and starts it again
    /// on the same data, without waiting for it to serve.
    pub fn relaunch(&mut self, clean: bool) {
        if clean {
            self.terminate();
        } else {
            self.kill9();
        }
        self.launch();
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn data_path(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the real `etcdctl` (3.4) against `endpoint` (none for offline commands when empty);
/// returns (stdout, stderr, exit code).
pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (String, String, i32) {
    run_ctl("etcdctl".into(), endpoint, args, stdin)
}

/// Runs etcd 3.7's `etcdctl`, as [`etcdctl`].
pub fn etcdctl37(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (String, String, i32) {
    run_ctl(etcd37_tool("etcdctl"), endpoint, args, stdin)
}

pub fn run_ctl(
    bin: PathBuf,
    endpoint: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (String, String, i32) {
    // etcdctl 3.4 needs the v3 API chosen; 3.7 warns about the variable it no longer reads.
    let v34 = bin == Path::new("etcdctl");
    let mut cmd = Command::new(bin);
    if v34 {
        cmd.env("ETCDCTL_API", "3");
    }
    // Offline commands get no endpoint: etcdutl has no such flag.
    if !endpoint.is_empty() {
        cmd.arg(format!("--endpoints={endpoint}"));
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctl");
    {
        let mut si = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            si.write_all(input.as_bytes()).unwrap();
        }
    }
    finish(child)
}

/// `<ctl> --endpoints=<endpoint> args...` in the background, stopped after `secs`: for
/// commands that run until interrupted (watch, lock, elect).
pub fn ctl_bg(ctl: &Path, endpoint: &str, args: &[&str], secs: f32) -> Child {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(ctl)
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctl")
}

/// A finished client process: (stdout, stderr, exit code).
pub fn finish(child: Child) -> (String, String, i32) {
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// An n-member cluster on loopback ports, every member started and serving.
pub struct Cluster {
    pub members: Vec<Server>,
}

impl Cluster {
    pub fn start(kind: Kind, n: usize, extra: &[&str]) -> Cluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        Cluster::start_on(kind, &ports, extra)
    }

    /// A cluster on given (client, peer) ports: the same ports give the same member IDs to
    /// etcd and Ballast, so their outputs compare byte for byte.
    pub fn start_on(kind: Kind, ports: &[(u16, u16)], extra: &[&str]) -> Cluster {
        let mut members = Cluster::unstarted(kind, "m", ports, extra);
        members.iter_mut().for_each(Server::launch);
        for m in &mut members {
            m.wait_healthy(Duration::from_secs(20));
        }
        // A member serves once its own client URLs are applied; the others learn them a
        // heartbeat later. Tests that list members expect all of them (etcd has the same race).
        let start = Instant::now();
        for m in &members {
            loop {
                let (out, _, code) = etcdctl(&m.endpoint(), &["member", "list"], None);
                if code == 0 && out.lines().count() == ports.len() && !out.contains("unstarted") {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "members never learned each other's client URLs: {out}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Cluster { members }
    }

    /// The members of a new cluster named `<prefix>0`, `<prefix>1`, ..., not started yet.
    pub fn unstarted(
        kind: Kind,
        prefix: &str,
        ports: &[(u16, u16)],
        extra: &[&str],
    ) -> Vec<Server> {
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{prefix}{i}=http://127.0.0.1:{}", p.1))
            .collect();
        let initial = initial.join(",");
        ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let m = Member {
                    name: format!("{prefix}{i}"),
                    peer_port: *peer,
                    initial_cluster: initial.clone(),
                    state: "new",
                };
                let mut s = Server::new_member(kind, m, extra);
                s.port = *client;
                s
            })
            .collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Server::endpoint).collect()
    }
}

/// A single member of `kind` restored from `snapshot` with that kind's ctl (`extra` flags
/// added to the restore), started and serving.
pub fn restored_member(kind: Kind, snapshot: &Path, extra: &[&str]) -> Server {
    let ports = [(free_port(), free_port())];
    restored_cluster(kind, snapshot, &ports, extra).remove(0)
}

/// A cluster of `kind` on `ports` (members `m0`, `m1`, ...), each member restored from
/// `snapshot` with that kind's tool as an operator does it (same names, peer URLs and
/// `--initial-cluster` on every member), then started together and serving.
pub fn restored_cluster(
    kind: Kind,
    snapshot: &Path,
    ports: &[(u16, u16)],
    extra: &[&str],
) -> Vec<Server> {
    restored_cluster_by(kind, kind, snapshot, ports, extra)
}

/// [`restored_cluster`] restored with `tool`'s restore command and run as `server`: etcd's
/// `snapshot restore` output started as Ballast is the seeds' procedure on Ballast.
pub fn restored_cluster_by(
    tool: Kind,
    server: Kind,
    snapshot: &Path,
    ports: &[(u16, u16)],
    extra: &[&str],
) -> Vec<Server> {
    let mut members = Cluster::unstarted(server, "m", ports, &[]);
    for (m, (_, peer_port)) in members.iter().zip(ports) {
        let member = m.member.as_ref().unwrap();
        let peer = format!("http://127.0.0.1:{peer_port}");
        let data_dir = m.data_dir.to_str().unwrap().to_string();
        let mut args = vec![
            "snapshot",
            "restore",
            snapshot.to_str().unwrap(),
            "--name",
            &member.name,
            "--data-dir",
            &data_dir,
            "--initial-cluster",
            &member.initial_cluster,
            "--initial-advertise-peer-urls",
            &peer,
        ];
        args.extend_from_slice(extra);
        let out = match tool {
            Kind::Ballast => crate::differential::ballastctl("", &args, None),
            Kind::Etcd => etcdctl("", &args, None),
            // etcdctl 3.6 gave `snapshot restore` to etcdutl.
            Kind::Etcd37 => run_ctl(etcd37_tool("etcdutl"), "", &args, None),
        };
        assert_eq!(out.2, 0, "{tool:?} restores the snapshot: {out:?}");
    }
    members.iter_mut().for_each(Server::launch);
    for m in &mut members {
        m.wait_healthy(Duration::from_secs(20));
    }
    members
}
