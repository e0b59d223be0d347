//! `snapshot-compare`: the same data in a fresh etcd and a fresh Ballast (one member each),
//! then `Maintenance.Snapshot` streamed to a file from each, as `etcdctl snapshot save` does:
//! how long it takes and how much the member's resident memory grows while it streams.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_api::etcdserverpb::SnapshotRequest;

use crate::compare::{self, Cluster, CompareArgs, Kind};
use crate::load::connect;
use crate::workloads::{self, PutArgs};

pub struct SnapshotArgs {
    pub etcd: PathBuf,
    pub ballast: PathBuf,
    /// Data written before the snapshot, in MiB of values.
    pub data_mib: u64,
    pub value_size: usize,
    /// Where the table goes (none: stdout only).
    pub out: Option<PathBuf>,
}

/// What one server did.
struct Measured {
    bytes: u64,
    secs: f64,
    rss_before: u64,
    rss_peak: u64,
}

/// How often resident memory is sampled while the snapshot streams.
const RSS_SAMPLE: Duration = Duration::from_millis(10);

fn vm_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

async fn fill(c: &Cluster, a: &SnapshotArgs) -> Result<(), String> {
    let total = (a.data_mib << 20) as usize / a.value_size.max(1);
    let put = PutArgs {
        total,
        rate: 0,
        key_size: 16,
        val_size: a.value_size,
        key_space_size: total.max(1),
        sequential_keys: true,
    };
    workloads::put(&compare::global(c.endpoints(), 4, 32), &put).await?;
    Ok(())
}

async fn measure(c: &Cluster, file: PathBuf) -> Result<Measured, String> {
    let pid = c.members[0].child.id();
    let rss_before = vm_rss(pid);
    let peak = Arc::new(AtomicU64::new(rss_before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(vm_rss(pid), Ordering::Relaxed);
                std::thread::sleep(RSS_SAMPLE);
            }
        })
    };
    let g = compare::global(c.endpoints(), 1, 1);
    let conn = connect(&g).await?.remove(0);
    let started = Instant::now();
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&file).map_err(|e| format!("{}: {e}", file.display()))?,
    );
    let mut stream = MaintenanceClient::new(conn)
        .max_decoding_message_size(64 << 20)
        .snapshot(SnapshotRequest {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.message().await.map_err(|e| e.to_string())? {
        bytes += chunk.blob.len() as u64;
        out.write_all(&chunk.blob).map_err(|e| e.to_string())?;
    }
    // etcdctl makes the file durable before it reports success.
    out.into_inner()
        .map_err(|e| e.to_string())?
        .sync_all()
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let _ = std::fs::remove_file(&file);
    Ok(Measured {
        bytes,
        secs,
        rss_before,
        rss_peak: peak.load(Ordering::Relaxed),
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

pub async fn run(a: &SnapshotArgs) -> Result<String, String> {
    let c = CompareArgs {
        quick: false,
        dry_run: false,
        etcd: a.etcd.clone(),
        ballast: a.ballast.clone(),
        out_dir: PathBuf::new(),
    };
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    // Room for the data under both servers' quotas.
    let quota = format!("--quota-backend-bytes={}", (a.data_mib * 4 + 1024) << 20);
    let mut rows = Vec::new();
    for kind in [Kind::Etcd, Kind::Ballast] {
        let cluster = Cluster::start_with(kind, 1, &c, &[quota.as_str()])?;
        eprintln!("snapshot: filling {kind:?} with {} MiB ...", a.data_mib);
        fill(&cluster, a).await?;
        compare::settle();
        eprintln!("snapshot: {kind:?} ...");
        rows.push((
            kind,
            measure(&cluster, scratch.path().join("snap.db")).await?,
        ));
    }
    let mut t = String::new();
    t.push_str(&format!(
        "Snapshot of {} MiB of values ({}-byte values, 16-byte keys), one member each, on {}; \
         etcd: {}.\n\n",
        a.data_mib,
        a.value_size,
        compare::machine(),
        compare::etcd_version(&a.etcd)
    ));
    t.push_str("| server | file | time | RSS before | peak RSS while streaming | growth |\n");
    t.push_str("|---|---|---|---|---|---|\n");
    for (kind, m) in &rows {
        t.push_str(&format!(
            "| {kind:?} | {} | {:.2} s | {} | {} | {} |\n",
            mib(m.bytes),
            m.secs,
            mib(m.rss_before),
            mib(m.rss_peak),
            mib(m.rss_peak.saturating_sub(m.rss_before)),
        ));
    }
    if let Some(out) = &a.out {
        compare::write(out, &t)?;
    }
    Ok(t)
}
