//! One member with a data directory that outlives its process: started, stopped cleanly or
//! killed, and started again on the same data, with the time until it serves a linearizable
//! read.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::kv_client::KvClient;
use ballast_api::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_api::etcdserverpb::{RangeRequest, StatusRequest, StatusResponse};

use crate::conn::Conn;

/// How long a start may take before the run gives up on the server.
const START_LIMIT: Duration = Duration::from_secs(600);
/// How long a clean stop may take before the process is killed.
const STOP_LIMIT: Duration = Duration::from_secs(60);

pub(crate) struct Node {
    bin: PathBuf,
    dir: PathBuf,
    pub(crate) client_port: u16,
    peer_port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    name: &'static str,
    /// `--initial-cluster` of a member joining another (started with `existing`).
    joins: Option<String>,
}

impl Node {
    /// A member named `m0` in `dir/data`, its log in `dir/member.log`; not started yet.
    pub(crate) fn new(bin: &Path, dir: &Path, extra: &[String]) -> Result<Node, String> {
        Ok(Node {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            client_port: crate::compare::free_port()?,
            peer_port: crate::compare::free_port()?,
            extra: extra.to_vec(),
            child: None,
            name: "m0",
            joins: None,
        })
    }

    /// A member `m1` in `dir/data` that joins `leader`'s cluster once added to it; not
    /// started yet.
    pub(crate) fn joining(
        bin: &Path,
        dir: &Path,
        extra: &[String],
        leader: &Node,
    ) -> Result<Node, String> {
        let mut n = Node::new(bin, dir, extra)?;
        n.name = "m1";
        n.joins = Some(format!("m0={},m1={}", leader.peer_url(), n.peer_url()));
        Ok(n)
    }

    pub(crate) fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("member.log")
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Starts the process and waits until a linearizable read succeeds; returns how long that
    /// took from the spawn.
    pub(crate) async fn start(&mut self) -> Result<Duration, String> {
        let started = self.spawn()?;
        loop {
            if self.read_once().await.is_ok() {
                return Ok(started.elapsed());
            }
            self.check_running(started)?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// An error if the process has exited or `started` is too long ago.
    pub(crate) fn check_running(&mut self, started: Instant) -> Result<(), String> {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
            return Err(format!(
                "{} exited with {status} while starting (log: {})",
                self.bin.display(),
                self.log_path().display()
            ));
        }
        if started.elapsed() > START_LIMIT {
            return Err(format!(
                "{} did not serve within {START_LIMIT:?}",
                self.bin.display()
            ));
        }
        Ok(())
    }

    /// Starts the process; returns when it was spawned.
    pub(crate) fn spawn(&mut self) -> Result<Instant, String> {
        let (c, p) = (self.client_port, self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| e.to_string())?;
        let own = format!("{}=http://127.0.0.1:{p}", self.name);
        let (cluster, state) = match &self.joins {
            Some(c) => (c.clone(), "existing"),
            None => (own, "new"),
        };
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{p}"
            ))
            .arg(format!("--initial-cluster={cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg("--snapshot-count=100000")
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        Ok(started)
    }

    async fn conn(&self) -> Result<Conn, String> {
        Conn::connect(
            &format!("http://{}", self.endpoint()),
            Duration::from_secs(1),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// One linearizable read of a single key.
    async fn read_once(&self) -> Result<(), String> {
        let mut kv = KvClient::new(self.conn().await?);
        kv.range(RangeRequest {
            key: b"/registry/health".to_vec(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| e.message().to_string())
    }

    pub(crate) async fn status(&self) -> Result<StatusResponse, String> {
        let mut m = MaintenanceClient::new(self.conn().await?);
        m.status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| format!("status: {}", e.message()))
    }

    /// Stops the process: SIGTERM and a wait (`clean`), or SIGKILL.
    pub(crate) fn stop(&mut self, clean: bool) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if clean {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + STOP_LIMIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        child.wait().map(|_| ()).map_err(|e| e.to_string())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop(false);
    }
}

/// Bytes the files under `dir` take on disk (what `du` counts).
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
