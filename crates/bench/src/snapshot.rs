//! `snapshot-compare`: the same data in a fresh etcd and a fresh Ballast (one member each),
//! then the real `etcdctl snapshot save` of each, in alternating rounds: how long it takes,
//! the member's CPU time, and how much its resident memory grows while it streams.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::compare::{self, Cluster, CompareArgs, Kind};
use crate::workloads::{self, PutArgs};

pub struct SnapshotArgs {
    pub etcd: PathBuf,
    pub ballast: PathBuf,
    /// Data written before the snapshot, in MiB of values.
    pub data_mib: u64,
    pub value_size: usize,
    /// The client that saves the snapshot (etcd's `etcdctl`).
    pub etcdctl: PathBuf,
    /// Snapshots of each server, alternating.
    pub rounds: usize,
    /// Where the table goes (none: stdout only).
    pub out: Option<PathBuf>,
}

/// What one snapshot took.
struct Measured {
    bytes: u64,
    secs: f64,
    /// The member's CPU time (user + system) during the snapshot.
    cpu_secs: f64,
    rss_before: u64,
    rss_peak: u64,
}

/// How often resident memory is sampled while the snapshot streams.
const RSS_SAMPLE: Duration = Duration::from_millis(10);

pub(crate) fn vm_rss(pid: u32) -> u64 {
    compare::proc_status_bytes(pid, "VmRSS:").unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks (1/100 s on Linux).
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// A process's peak resident memory, sampled every `RSS_SAMPLE` by a thread of its own from
/// `start` until `stop`.
pub(crate) struct RssPeak {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RssPeak {
    pub(crate) fn start(pid: u32) -> RssPeak {
        let peak = Arc::new(AtomicU64::new(vm_rss(pid)));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(vm_rss(pid), Ordering::Relaxed);
                    std::thread::sleep(RSS_SAMPLE);
                }
            })
        };
        RssPeak { peak, done, thread }
    }

    pub(crate) fn stop(self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}

/// A fresh one-member etcd (`etcd`) and Ballast (`ballast`), each filled by `fill` with the
/// same data, under quotas with room for it; `what` names the bench in progress lines.
pub(crate) async fn filled_pair(
    what: &str,
    (etcd, ballast): (&std::path::Path, &std::path::Path),
    data_mib: u64,
    value_size: usize,
) -> Result<Vec<(Kind, Cluster)>, String> {
    let c = CompareArgs {
        quick: false,
        dry_run: false,
        etcd: etcd.to_path_buf(),
        ballast: ballast.to_path_buf(),
        out_dir: PathBuf::new(),
        etcd_benchmark: None,
        rounds: 1,
        server_cpus: None,
    };
    let quota = format!("--quota-backend-bytes={}", (data_mib * 4 + 1024) << 20);
    let mut servers = Vec::new();
    for kind in [Kind::Etcd, Kind::Ballast] {
        let cluster = Cluster::start_with(kind, 1, &c, &[quota.as_str()])?;
        eprintln!("{what}: filling {kind:?} with {data_mib} MiB ...");
        fill(&cluster, data_mib, value_size).await?;
        servers.push((kind, cluster));
    }
    Ok(servers)
}

/// Writes `data_mib` MiB of `value_size`-byte values under sequential 16-byte keys.
async fn fill(c: &Cluster, data_mib: u64, value_size: usize) -> Result<(), String> {
    let total = (data_mib << 20) as usize / value_size.max(1);
    let put = PutArgs {
        total,
        rate: 0,
        key_size: 16,
        val_size: value_size,
        key_space_size: total.max(1),
        sequential_keys: true,
    };
    workloads::put(&compare::global(c.endpoints(), 4, 32), &put).await?;
    Ok(())
}

/// One `etcdctl snapshot save` of `c`'s member into `file` (removed afterwards).
fn measure(
    c: &Cluster,
    etcdctl: &std::path::Path,
    file: &std::path::Path,
) -> Result<Measured, String> {
    let pid = c.members[0].child.id();
    let rss_before = vm_rss(pid);
    let cpu_before = cpu_ticks(pid);
    let sampler = RssPeak::start(pid);
    let started = Instant::now();
    let out = std::process::Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.endpoints()[0]))
        .args(["snapshot", "save"])
        .arg(file)
        .output()
        .map_err(|e| format!("{}: {e}", etcdctl.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let rss_peak = sampler.stop();
    if !out.status.success() {
        return Err(format!(
            "snapshot save failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(file);
    Ok(Measured {
        bytes,
        secs,
        cpu_secs: cpu_ticks(pid).saturating_sub(cpu_before) as f64 / 100.0,
        rss_before,
        rss_peak,
    })
}

pub(crate) fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// The median of a few figures.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub async fn run(a: &SnapshotArgs) -> Result<String, String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let binaries = (a.etcd.as_path(), a.ballast.as_path());
    let mut servers: Vec<_> = filled_pair("snapshot", binaries, a.data_mib, a.value_size)
        .await?
        .into_iter()
        .map(|(kind, cluster)| (kind, cluster, Vec::new()))
        .collect();
    // Alternating rounds, each after the machine settles, so neither server always runs
    // behind the other's writeback.
    for round in 0..a.rounds.max(1) {
        for (kind, cluster, runs) in servers.iter_mut() {
            compare::settle();
            eprintln!("snapshot: round {round}, {kind:?} ...");
            runs.push(measure(
                cluster,
                &a.etcdctl,
                &scratch.path().join("snap.db"),
            )?);
        }
    }
    let mut t = String::new();
    t.push_str(&format!(
        "`etcdctl snapshot save` of {} MiB of values ({}-byte values, 16-byte keys), one \
         member each, {} alternating rounds, on {}; etcd: {}.\n\n",
        a.data_mib,
        a.value_size,
        a.rounds.max(1),
        compare::machine(),
        compare::etcd_version(&a.etcd)
    ));
    t.push_str(
        "| server | file | time (median; all) | member CPU (median) | RSS before | RSS growth while streaming (max) |\n",
    );
    t.push_str("|---|---|---|---|---|---|\n");
    let mut medians = Vec::new();
    for (kind, _, runs) in &servers {
        let secs: Vec<f64> = runs.iter().map(|m| m.secs).collect();
        let all: Vec<String> = secs.iter().map(|s| format!("{s:.2}")).collect();
        let growth = runs
            .iter()
            .map(|m| m.rss_peak.saturating_sub(m.rss_before))
            .max()
            .unwrap_or(0);
        let time = median(secs.clone());
        medians.push(time);
        t.push_str(&format!(
            "| {kind:?} | {} | {time:.2} s; {} | {:.2} s | {} | {} |\n",
            mib(runs.first().map_or(0, |m| m.bytes)),
            all.join(", "),
            median(runs.iter().map(|m| m.cpu_secs).collect()),
            mib(runs.first().map_or(0, |m| m.rss_before)),
            mib(growth),
        ));
    }
    if let [etcd, ballast] = medians[..] {
        t.push_str(&format!(
            "\nBallast's time as a share of etcd's: {:.2}x.\n",
            ballast / etcd.max(f64::MIN_POSITIVE)
        ));
    }
    if let Some(out) = &a.out {
        compare::write(out, &t)?;
    }
    Ok(t)
}
