//! Real `ballast` processes on 127.0.0.1, each behind its own peer-link proxy, and the faults
//! that act on processes: kill -9, restart, SIGSTOP/SIGCONT, failpoints armed at start.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::cluster_client::ClusterClient;
use ballast_api::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_api::etcdserverpb::{
    HashKvRequest, MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    StatusRequest, StatusResponse,
};
use tonic::transport::Channel;

use crate::proxy::{self, Link, Net};

pub type Error = String;

/// Raft timing for every member: etcd's defaults.
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_MS: u64 = 1000;

/// A loopback port nobody is listening on right now (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive loopback ports nobody is listening on right now, taken from
/// below the kernel's ephemeral range: a port the system hands out for outgoing connections
/// can be taken by one while a test's member is down, and the member then cannot listen again
/// when restarted. Each process walks its own sequence (seeded by its pid), so parallel test
/// processes rarely try the same ports and one process never hands a port out twice.
pub fn free_ports(n: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    let n = u32::from(n.max(1));
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if low > FIRST + 1_000 {
        let span = low - FIRST;
        let seed = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..span / n {
            // The counter counts ports, so blocks of any size never overlap in one process.
            let at = NEXT.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            let first = FIRST + (seed + at) % span;
            if first + n > low {
                continue;
            }
            let free = (first..first + n).all(|p| {
                u16::try_from(p).is_ok_and(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
            });
            if free {
                return first as u16;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Which server binary a cluster runs.
#[derive(Clone, Debug)]
pub struct Binary {
    pub path: PathBuf,
}

impl Binary {
    /// `name` from the directory holding the running executable or its parent (cargo puts
    /// test executables in `target/<profile>/deps`), or `$BALLAST_BIN_DIR`.
    pub fn find(name: &str) -> Result<Binary, Error> {
        let mut dirs = Vec::new();
        if let Ok(d) = std::env::var("BALLAST_BIN_DIR") {
            dirs.push(PathBuf::from(d));
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(d) = exe.parent() {
                dirs.push(d.to_path_buf());
                if let Some(p) = d.parent() {
                    dirs.push(p.to_path_buf());
                }
            }
        }
        dirs.into_iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .map(|path| Binary { path })
            .ok_or_else(|| format!("{name} not found: build it first (see scripts/test)"))
    }

    /// The normal server.
    pub fn ballast() -> Result<Binary, Error> {
        Binary::find("ballast")
    }

    /// The server built with the `failpoints` feature.
    pub fn with_failpoints() -> Result<Binary, Error> {
        Binary::find("ballast-failpoints")
    }
}

/// One member: its ports, data, process and identity.
pub struct Node {
    pub name: String,
    pub id: u64,
    pub client_port: u16,
    /// The port the member listens on for peers (behind the proxy).
    pub peer_port: u16,
    /// The port other members dial (the proxy's).
    pub proxy_port: u16,
    /// Where the proxy forwards to (the member's `peer_port`).
    upstream: Arc<AtomicU16>,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    /// `--initial-cluster-state` for the first start.
    state: &'static str,
    initial_cluster: String,
    extra: Vec<String>,
    started_once: bool,
    /// The failpoints of the last launch, so a relaunch after a lost port keeps them.
    armed: String,
}

impl Node {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit status if the process has ended by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn launch(&mut self, bin: &Path, failpoints: &str) -> Result<(), Error> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| e.to_string())?;
        let client = self.endpoint();
        let mut cmd = Command::new(bin);
        cmd.args(["--name", &self.name, "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                self.peer_port
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                self.proxy_port
            ))
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", self.state])
            .arg(format!("--heartbeat-interval={HEARTBEAT_MS}"))
            .arg(format!("--election-timeout={ELECTION_MS}"))
            .args(&self.extra)
            .env("BALLAST_FAILPOINTS", failpoints)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        self.child = Some(child);
        self.started_once = true;
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([sig, &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill9();
    }
}

/// Options every member of a cluster starts with.
#[derive(Clone, Debug)]
pub struct Options {
    pub binary: Binary,
    /// Extra server flags.
    pub extra: Vec<String>,
    /// Failpoints armed on every start (see `ballast_storage::failpoint`).
    pub failpoints: String,
}

/// A cluster of members on loopback, with the proxies between them.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub net: Arc<Net>,
    pub opts: Options,
    dir: tempfile::TempDir,
    proxies: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &self.proxies {
            p.abort();
        }
    }
}

/// A client channel to `endpoint` with short connect and request timeouts.
pub async fn channel(endpoint: &str) -> Result<Channel, Error> {
    Channel::from_shared(endpoint.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))
}

impl Cluster {
    /// Starts `n` members together and waits until they agree on a leader.
    pub async fn start(n: usize, opts: Options) -> Result<Cluster, Error> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let net = Arc::new(Net::default());
        let mut c = Cluster {
            nodes: Vec::new(),
            net,
            opts,
            dir,
            proxies: Vec::new(),
        };
        let specs: Vec<(String, u16, u16, u16)> = (0..n)
            .map(|i| (format!("m{i}"), free_port(), free_port(), free_port()))
            .collect();
        let initial: Vec<String> = specs
            .iter()
            .map(|(name, _, _, proxy)| format!("{name}=http://127.0.0.1:{proxy}"))
            .collect();
        let initial = initial.join(",");
        for (name, client, peer, proxy) in specs {
            c.add_node(name, client, peer, proxy, "new", initial.clone())
                .await?;
        }
        for i in 0..n {
            c.launch(i, "")?;
        }
        c.wait_leader(Duration::from_secs(20), &[]).await?;
        c.relaunch_port_losers().await?;
        c.learn_ids().await?;
        Ok(c)
    }

    async fn add_node(
        &mut self,
        name: String,
        client_port: u16,
        peer_port: u16,
        proxy_port: u16,
        state: &'static str,
        initial_cluster: String,
    ) -> Result<usize, Error> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", proxy_port))
            .await
            .map_err(|e| format!("proxy port {proxy_port}: {e}"))?;
        let upstream = Arc::new(AtomicU16::new(peer_port));
        self.proxies.push(tokio::spawn(proxy::run(
            listener,
            upstream.clone(),
            self.net.clone(),
        )));
        let base = self.dir.path().join(&name);
        self.nodes.push(Node {
            name,
            id: 0,
            client_port,
            peer_port,
            proxy_port,
            upstream,
            data_dir: base.with_extension("data"),
            log_path: base.with_extension("log"),
            child: None,
            state,
            initial_cluster,
            extra: self.opts.extra.clone(),
            started_once: false,
            armed: String::new(),
        });
        Ok(self.nodes.len() - 1)
    }

    /// After start-up: relaunches port losers until every member runs (see `relaunch_lost`).
    async fn relaunch_port_losers(&mut self) -> Result<(), Error> {
        for attempt in 0..3 {
            if !self.relaunch_lost()? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
            self.wait_leader(Duration::from_secs(20), &[]).await?;
        }
        Ok(())
    }

    fn launch(&mut self, i: usize, failpoints: &str) -> Result<(), Error> {
        let bin = self.opts.binary.path.clone();
        let node = &mut self.nodes[i];
        if node.started_once {
            // Restarts come back as the same member from their data dir.
            node.state = "existing";
        }
        let armed = format!("{};{failpoints}", self.opts.failpoints);
        node.armed = failpoints.to_string();
        node.launch(&bin, &armed)
    }

    /// Ports are picked free and bound by the member later, so a concurrent test can take one
    /// in between (on a start or any restart). A member that stopped on "Address already in
    /// use" gets fresh client and peer ports (the proxy keeps the advertised one) and starts
    /// again with the same failpoints. Returns whether any was relaunched.
    fn relaunch_lost(&mut self) -> Result<bool, Error> {
        let mut any = false;
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            if n.exited().is_some() && n.log_tail(3).contains("Address already in use") {
                n.client_port = free_port();
                n.peer_port = free_port();
                n.upstream.store(n.peer_port, Ordering::Relaxed);
                n.child = None;
                let armed = n.armed.clone();
                // Its data dir is kept: it may already have voted, and must remember that.
                self.launch(i, &armed)?;
                any = true;
            }
        }
        Ok(any)
    }

    async fn learn_ids(&mut self) -> Result<(), Error> {
        let ep = self.nodes[0].endpoint();
        let mut cl = ClusterClient::new(channel(&ep).await?);
        let list = cl
            .member_list(MemberListRequest {
                linearizable: false,
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        for m in list.members {
            if let Some(n) = self.nodes.iter_mut().find(|n| n.name == m.name) {
                n.id = m.id;
            }
        }
        Ok(())
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id && id != 0)
    }

    pub async fn status(&self, i: usize) -> Result<StatusResponse, Error> {
        let ch = channel(&self.nodes[i].endpoint()).await?;
        let mut m = MaintenanceClient::new(ch);
        let call = m.status(StatusRequest {});
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(e)) => Err(e.message().to_string()),
            Err(_) => Err("status timed out".into()),
        }
    }

    /// The member every running member (outside `except`) names as leader, once they agree.
    pub async fn wait_leader(
        &mut self,
        limit: Duration,
        except: &[usize],
    ) -> Result<(usize, Duration), Error> {
        let start = Instant::now();
        while start.elapsed() < limit {
            self.relaunch_lost()?;
            let mut seen = Vec::new();
            for i in 0..self.nodes.len() {
                if except.contains(&i) || !self.nodes[i].running() {
                    continue;
                }
                if let Ok(s) = self.status(i).await {
                    seen.push(s.leader);
                }
            }
            if let Some(&l) = seen.first() {
                let agreed = l != 0 && seen.iter().all(|&x| x == l);
                if let Some(i) = self.index_of(l).filter(|_| agreed) {
                    if !except.contains(&i) && self.nodes[i].running() {
                        return Ok((i, start.elapsed()));
                    }
                }
                // Before IDs are known, any agreement will do (start-up).
                if agreed && self.nodes.iter().all(|n| n.id == 0) {
                    return Ok((0, start.elapsed()));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let logs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log_tail(15)))
            .collect();
        Err(format!(
            "no agreed leader within {limit:?}\n{}",
            logs.join("\n")
        ))
    }

    pub async fn leader(&mut self) -> Result<usize, Error> {
        Ok(self.wait_leader(Duration::from_secs(10), &[]).await?.0)
    }

    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// Starts a stopped member again from its data dir, optionally with failpoints armed.
    pub fn restart(&mut self, i: usize, failpoints: &str) -> Result<(), Error> {
        self.nodes[i].kill9();
        self.launch(i, failpoints)
    }

    pub fn pause(&self, i: usize) {
        self.nodes[i].signal("-STOP");
    }

    pub fn resume(&self, i: usize) {
        self.nodes[i].signal("-CONT");
    }

    /// Cuts every link between members of different groups (both ways).
    pub fn partition(&self, groups: &[&[usize]]) {
        for (gi, a) in groups.iter().enumerate() {
            for (gj, b) in groups.iter().enumerate() {
                if gi == gj {
                    continue;
                }
                for &x in a.iter() {
                    for &y in b.iter() {
                        self.block(x, y);
                    }
                }
            }
        }
    }

    /// Drops every message from `from` to `to` (one way).
    pub fn block(&self, from: usize, to: usize) {
        let link = Link {
            blocked: true,
            ..Link::default()
        };
        self.net.set(self.nodes[from].id, self.nodes[to].id, link);
    }

    pub fn heal(&self) {
        self.net.heal();
    }

    /// Client endpoints of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::endpoint).collect()
    }

    /// Adds a member through the Cluster API (as a learner when asked) and starts it.
    pub async fn add_member(&mut self, via: usize, learner: bool) -> Result<usize, Error> {
        let name = format!("m{}", self.nodes.len());
        let (client, peer, proxy) = (free_port(), free_port(), free_port());
        let url = format!("http://127.0.0.1:{proxy}");
        let mut cl = ClusterClient::new(channel(&self.nodes[via].endpoint()).await?);
        let resp = cl
            .member_add(MemberAddRequest {
                peer_ur_ls: vec![url],
                is_learner: learner,
            })
            .await
            .map_err(|e| format!("member add: {}", e.message()))?
            .into_inner();
        let mut initial = Vec::new();
        for m in &resp.members {
            let n = if m.name.is_empty() { &name } else { &m.name };
            for u in &m.peer_ur_ls {
                initial.push(format!("{n}={u}"));
            }
        }
        let i = self
            .add_node(name, client, peer, proxy, "existing", initial.join(","))
            .await?;
        self.nodes[i].id = resp.member.map(|m| m.id).unwrap_or(0);
        self.launch(i, "")?;
        Ok(i)
    }

    /// Promotes a learner, retrying while it is still catching up.
    pub async fn promote(&mut self, via: usize, i: usize, limit: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let mut cl = ClusterClient::new(channel(&self.nodes[via].endpoint()).await?);
            match cl
                .member_promote(MemberPromoteRequest {
                    id: self.nodes[i].id,
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() < limit => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(format!("promote: {}", e.message())),
            }
        }
    }

    pub async fn remove_member(&mut self, via: usize, i: usize) -> Result<(), Error> {
        let mut cl = ClusterClient::new(channel(&self.nodes[via].endpoint()).await?);
        cl.member_remove(MemberRemoveRequest {
            id: self.nodes[i].id,
        })
        .await
        .map_err(|e| format!("member remove: {}", e.message()))?;
        Ok(())
    }

    /// Waits until every running member in `members` has applied the same revision and
    /// reports the same HashKV for it. Returns that revision and hash.
    pub async fn converge(
        &mut self,
        members: &[usize],
        limit: Duration,
    ) -> Result<(i64, u32), Error> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < limit {
            let mut revs = Vec::new();
            for &i in members {
                match self.status(i).await {
                    Ok(s) => revs.push((
                        s.header.map(|h| h.revision).unwrap_or(0),
                        s.raft_applied_index,
                    )),
                    Err(e) => last = format!("{}: {e}", self.nodes[i].name),
                }
            }
            if revs.len() == members.len() && revs.windows(2).all(|w| w[0] == w[1]) {
                let rev = revs[0].0;
                let mut hashes = Vec::new();
                for &i in members {
                    let ch = channel(&self.nodes[i].endpoint()).await?;
                    let r = MaintenanceClient::new(ch)
                        .hash_kv(HashKvRequest { revision: rev })
                        .await
                        .map_err(|e| e.message().to_string())?
                        .into_inner();
                    hashes.push(r.hash);
                }
                if hashes.windows(2).all(|w| w[0] == w[1]) {
                    return Ok((rev, hashes[0]));
                }
                return Err(format!("HashKV differs at revision {rev}: {hashes:?}"));
            }
            if !revs.is_empty() {
                last = format!("revisions/applied indexes {revs:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("members did not converge within {limit:?}: {last}"))
    }

    /// Indexes of members whose process is running.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running())
            .collect()
    }
}
