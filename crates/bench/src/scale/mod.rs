//! `compare --scale`: etcd 3.4, etcd 3.7 and Ballast, one member each on fresh data
//! directories, one after the other in one run, each given the same Kubernetes-shaped data
//! set ([`dataset`]) and measured the same way: load, footprint (empty, per value size, the
//! whole set before and after compaction and defragmentation), whole-prefix reads, puts during
//! a compaction of the set's history, and restarts (clean and after kill -9). Every figure is
//! reported beside the etcds' with the ratio, in `docs/benchmarks/scale{,-quick}.md` and a chart.

mod catchup;
mod dataset;
mod fanout;
mod leases;
mod node;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::kv_client::KvClient;
use ballast_api::etcdserverpb::lease_client::LeaseClient;
use ballast_api::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_api::etcdserverpb::{
    CompactionRequest, DefragmentRequest, LeaseGrantRequest, PutRequest,
};

use crate::compare;
use crate::rangemem;
use crate::report::Stats;
use crate::snapshot::{cpu_ticks, mib};
use dataset::Dataset;
use node::{disk_usage, Node};

pub struct ScaleArgs {
    pub quick: bool,
    pub dry_run: bool,
    /// etcd 3.4 (Debian's).
    pub etcd: PathBuf,
    /// etcd 3.7, when given.
    pub etcd37: Option<PathBuf>,
    pub ballast: PathBuf,
    pub out_dir: PathBuf,
    /// Measure Ballast alone (while working on it: no ratios).
    pub ballast_only: bool,
    /// Where each server's member log of the whole-set run is copied.
    pub logs: Option<PathBuf>,
}

/// The sizes of one run.
struct Plan {
    keys: u64,
    rewrites: u64,
    /// MiB written at each value size of the footprint-by-size figures.
    per_size_mib: u64,
    readers: usize,
    page: i64,
    /// How long the whole-set readers may read: at a million keys etcd 3.4 served 20 paging
    /// readers 4.4 pages a second (each page counts every key after it), two hours for a
    /// full pass, so the figures are rates and the memory of a bounded window.
    read_for: Duration,
    /// How long puts run without, then with, a compaction.
    window: Duration,
    put_rate: u64,
    leases: leases::LeasePlan,
    fanout: fanout::FanoutPlan,
    catchup: catchup::CatchupPlan,
}

impl Plan {
    fn new(a: &ScaleArgs) -> Plan {
        let (keys, per_size_mib, readers, window, put_rate) = if a.dry_run {
            (2_000, 1, 2, Duration::from_secs(1), 100)
        } else if a.quick {
            (100_000, 16, 20, Duration::from_secs(10), 500)
        } else {
            (1_000_000, 128, 20, Duration::from_secs(30), 500)
        };
        // Leases: kept alive three times per TTL by 100 clients for a window, then 10,000
        // (the figures) left to expire at once.
        let leases = if a.dry_run {
            leases::LeasePlan {
                leases: 200,
                clients: 10,
                ttl: 6,
                window: Duration::from_secs(3),
                expiring: 100,
                expiring_ttl: 3,
            }
        } else {
            leases::LeasePlan {
                leases: if a.quick { 10_000 } else { 100_000 },
                clients: 100,
                ttl: 30,
                window: Duration::from_secs(if a.quick { 20 } else { 40 }),
                expiring: 10_000,
                expiring_ttl: 10,
            }
        };
        // Watch fan-out: the 10,000 watchers over 100 connections and 10 slow
        // consumers.
        let fanout = if a.dry_run {
            fanout::FanoutPlan {
                conns: 10,
                per_conn: 20,
                keys: 50,
                rate: 50,
                window: Duration::from_secs(1),
                slow: 2,
                value: 256,
                burst: Duration::from_millis(500),
                burst_clients: 4,
            }
        } else {
            fanout::FanoutPlan {
                conns: 100,
                per_conn: 100,
                keys: 1_000,
                rate: 200,
                window: Duration::from_secs(if a.quick { 10 } else { 30 }),
                slow: 10,
                value: 1024,
                burst: Duration::from_secs(if a.quick { 4 } else { 10 }),
                burst_clients: 16,
            }
        };
        Plan {
            fanout,
            catchup: catchup::CatchupPlan {
                rate: put_rate,
                window,
            },
            keys,
            rewrites: 3,
            per_size_mib,
            readers,
            page: 500,
            read_for: if a.dry_run {
                Duration::from_secs(60)
            } else {
                Duration::from_secs(300)
            },
            window,
            put_rate,
            leases,
        }
    }
}

/// The value sizes whose footprint is measured one at a time (the data set's range).
const SIZES: [usize; 6] = [512, 2_048, 4_096, 20_000, 100_000, dataset::MEGABYTE];
/// Clients and connections of the load (etcd's benchmark tool's usual 100 over 10).
const LOAD_CLIENTS: usize = 100;
const LOAD_CONNS: usize = 10;
/// How long a compaction may take to finish before the run stops waiting.
const COMPACTION_LIMIT: Duration = Duration::from_secs(1800);

struct Server {
    label: String,
    bin: PathBuf,
    /// Serves `KV.RangeStream` (etcd 3.7 and Ballast).
    streams: bool,
}

/// What one server measured.
#[derive(Default)]
struct Measured {
    empty_db: u64,
    empty_disk: u64,
    /// Per value size of [`SIZES`]: dbSize after the writes, and after a defragmentation.
    by_size: Vec<(u64, u64)>,
    load_secs: f64,
    load_cpu: f64,
    load_peak_rss: u64,
    load_errors: Vec<String>,
    loaded_db: u64,
    loaded_disk: u64,
    paged: Option<rangemem::Measured>,
    streamed: Option<rangemem::Measured>,
    put_quiet: Stats,
    put_compacting: Stats,
    compact_call: f64,
    compaction_total: f64,
    compacted_db: u64,
    compacted_disk: u64,
    restart_clean: f64,
    restart_killed: f64,
    catchup: catchup::CatchupMeasured,
    leases: leases::LeaseMeasured,
    fanout: fanout::FanoutMeasured,
}

pub async fn run(a: &ScaleArgs) -> Result<bool, String> {
    let plan = Plan::new(a);
    let data = Arc::new(Dataset::new(plan.keys, plan.rewrites));
    let mut servers = Vec::new();
    if !a.ballast_only {
        servers.push(Server {
            label: version_label(&a.etcd),
            bin: a.etcd.clone(),
            streams: false,
        });
    }
    if let Some(e) = a.etcd37.as_ref().filter(|_| !a.ballast_only) {
        servers.push(Server {
            label: version_label(e),
            bin: e.clone(),
            streams: true,
        });
    }
    servers.push(Server {
        label: "Ballast".into(),
        bin: a.ballast.clone(),
        streams: true,
    });
    let mut results = Vec::new();
    // Ballast first: a failure of the server under test shows before the references' hour.
    for s in servers.iter().rev() {
        let mut m = Measured::default();
        for &size in &SIZES {
            m.by_size
                .push(by_size(s, size, plan.per_size_mib, &data).await?);
        }
        whole_set(s, &plan, &data, &mut m, a.logs.as_deref()).await?;
        m.leases = on_leases(s, &plan.leases).await?;
        m.fanout = on_fanout(s, &plan.fanout).await?;
        eprintln!("scale: {}: measured: {}", s.label, m.summary());
        results.push(m);
    }
    results.reverse();
    let figures = figures(&results, &plan, &data);
    let table = markdown(a, &servers, &figures, &plan, &data);
    println!("{table}");
    let met = figures.iter().all(|f| f.met() != Some(false));
    if !a.dry_run {
        std::fs::create_dir_all(&a.out_dir).map_err(|e| e.to_string())?;
        let name = if a.quick { "scale-quick" } else { "scale" };
        compare::write(&a.out_dir.join(format!("{name}.md")), &table)?;
        compare::write(
            &a.out_dir.join(format!("{name}.svg")),
            &compare::bars_svg(&bars(&figures)),
        )?;
        eprintln!("wrote {}/{name}.md and {name}.svg", a.out_dir.display());
    }
    Ok(met || a.dry_run)
}

fn version_label(bin: &std::path::Path) -> String {
    let v = compare::etcd_version(bin);
    let n = v.rsplit(' ').next().unwrap_or(&v);
    format!("etcd {n}")
}

/// Flags both kinds get: a quota with room for the set (etcd's default 2 GiB would not hold the
/// full one) and etcd's default request limit, stated.
fn flags() -> Vec<String> {
    vec![
        format!("--quota-backend-bytes={}", 16u64 << 30),
        "--max-request-bytes=1572864".into(),
    ]
}

async fn conn(ep: &str) -> Result<crate::conn::Conn, String> {
    crate::conn::Conn::connect(&format!("http://{ep}"), Duration::from_secs(5))
        .await
        .map_err(|e| format!("{ep}: {e}"))
}

/// dbSize of a fresh store after writing `mib` MiB of `size`-byte values under new keys, and
/// after defragmenting it.
async fn by_size(s: &Server, size: usize, mib: u64, data: &Dataset) -> Result<(u64, u64), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut node = Node::new(&s.bin, dir.path(), &flags())?;
    node.start().await?;
    let count = ((mib << 20) / size as u64).max(8);
    eprintln!("scale: {}: {count} values of {size} bytes ...", s.label);
    let chans = vec![conn(&node.endpoint()).await?];
    let value = Arc::new(data.value_of_size(size));
    let g = compare::global(vec![node.endpoint()], 1, 16);
    let stats = crate::load::run(&g, &chans, count as usize, 0, move |ch, i| {
        let req = PutRequest {
            key: format!("/registry/configmaps/ns-000/cm-{i:08}").into_bytes(),
            value: value.to_vec(),
            ..Default::default()
        };
        crate::workloads::put_once(ch, req)
    })
    .await;
    if let Some((e, _)) = stats.errors.iter().next() {
        return Err(format!("{}: writing {size}-byte values: {e}", s.label));
    }
    // Both servers commit their backends in batches: let the last one land first.
    compare::settle();
    let written = node.status().await?.db_size as u64;
    defragment(&node).await?;
    let defragmented = node.status().await?.db_size as u64;
    Ok((written, defragmented))
}

impl Measured {
    /// The headline figures on one line, so a long run that fails later keeps them in its log.
    fn summary(&self) -> String {
        format!(
            "load {:.0} s, dbSize {} loaded / {} compacted, restart {:.2} s clean / {:.2} s killed, \
             catch-up {:.1} s, put p99 {:.2} ms quiet / {:.2} ms compacting",
            self.load_secs,
            self.loaded_db,
            self.compacted_db,
            self.restart_clean,
            self.restart_killed,
            self.catchup.secs,
            self.put_quiet.percentile(99.0) * 1e3,
            self.put_compacting.percentile(99.0) * 1e3,
        )
    }
}

/// The leases measurements, on a fresh store.
async fn on_leases(s: &Server, plan: &leases::LeasePlan) -> Result<leases::LeaseMeasured, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut node = Node::new(&s.bin, dir.path(), &flags())?;
    node.start().await?;
    compare::settle();
    eprintln!(
        "scale: {}: {} leases kept alive, then {} expiring ...",
        s.label, plan.leases, plan.expiring
    );
    let m = leases::measure(&node, plan).await?;
    node.stop(true)?;
    Ok(m)
}

/// The watch fan-out measurements, on a fresh store.
async fn on_fanout(
    s: &Server,
    plan: &fanout::FanoutPlan,
) -> Result<fanout::FanoutMeasured, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut node = Node::new(&s.bin, dir.path(), &flags())?;
    node.start().await?;
    compare::settle();
    eprintln!(
        "scale: {}: {} watchers on {} connections, then {} slow consumers ...",
        s.label,
        plan.watchers(),
        plan.conns,
        plan.slow
    );
    let m = fanout::measure(&node, plan).await?;
    node.stop(true)?;
    Ok(m)
}

/// Bytes of values whole-set readers received a second.
fn read_rate(m: &rangemem::Measured) -> f64 {
    m.bytes as f64 / m.secs.max(1e-9)
}

async fn defragment(node: &Node) -> Result<(), String> {
    MaintenanceClient::new(conn(&node.endpoint()).await?)
        .defragment(DefragmentRequest {})
        .await
        .map(|_| ())
        .map_err(|e| format!("defragment: {}", e.message()))
}

/// The whole data set in one fresh store, and everything measured on it.
async fn whole_set(
    s: &Server,
    plan: &Plan,
    data: &Arc<Dataset>,
    m: &mut Measured,
    logs: Option<&std::path::Path>,
) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut node = Node::new(&s.bin, dir.path(), &flags())?;
    node.start().await?;
    let st = node.status().await?;
    (m.empty_db, m.empty_disk) = (st.db_size as u64, disk_usage(&node.data_dir()));

    compare::settle();
    eprintln!("scale: {}: loading {} puts ...", s.label, data.puts());
    let pid = node.pid();
    let cpu = cpu_ticks(pid);
    let started = Instant::now();
    let stats = load(&node, data).await?;
    m.load_secs = started.elapsed().as_secs_f64();
    m.load_cpu = cpu_ticks(pid).saturating_sub(cpu) as f64 / 100.0;
    m.load_peak_rss = compare::vm_hwm(pid).unwrap_or(0);
    m.load_errors = stats
        .errors
        .iter()
        .map(|(e, n)| format!("{}: load: {n} × {e}", s.label))
        .collect();
    compare::settle();
    let st = node.status().await?;
    (m.loaded_db, m.loaded_disk) = (st.db_size as u64, disk_usage(&node.data_dir()));

    compare::settle();
    eprintln!("scale: {}: {} paging readers ...", s.label, plan.readers);
    m.paged = Some(
        rangemem::measure(
            pid,
            rangemem::paged_by(
                node.endpoint(),
                plan.readers,
                plan.page,
                Some(Instant::now() + plan.read_for),
            ),
        )
        .await?,
    );
    if s.streams {
        compare::settle();
        // From a fresh process: etcd's file pages stay resident once read (its RSS counts
        // them), so after the paging readers its streams would seem to cost nothing.
        node.stop(true)?;
        compare::settle();
        node.start().await?;
        eprintln!("scale: {}: {} RangeStreams ...", s.label, plan.readers);
        m.streamed = Some(
            rangemem::measure(
                node.pid(),
                rangemem::streamed_by(
                    node.endpoint(),
                    plan.readers,
                    Some(Instant::now() + plan.read_for),
                ),
            )
            .await?,
        );
    }

    compare::settle();
    compaction(s, &node, plan, m).await?;
    defragment(&node).await?;
    compare::settle();
    let st = node.status().await?;
    (m.compacted_db, m.compacted_disk) = (st.db_size as u64, disk_usage(&node.data_dir()));

    eprintln!("scale: {}: restarts ...", s.label);
    node.stop(true)?;
    compare::settle();
    m.restart_clean = node.start().await?.as_secs_f64();
    node.stop(false)?;
    compare::settle();
    m.restart_killed = node.start().await?.as_secs_f64();
    compare::settle();
    eprintln!(
        "scale: {}: a learner catching up, puts at {}/s ...",
        s.label, plan.catchup.rate
    );
    m.catchup = catchup::measure(&node, &s.bin, &flags(), &plan.catchup).await?;
    node.stop(true)?;
    if let Some(logs) = logs {
        let to = logs.join(format!("{}.log", s.label.replace(' ', "-")));
        std::fs::create_dir_all(logs)
            .and_then(|_| std::fs::copy(node.log_path(), &to))
            .map_err(|e| format!("{}: {e}", to.display()))?;
    }
    Ok(())
}

/// Writes the data set: the event leases, every key, then the rewrites.
async fn load(node: &Node, data: &Arc<Dataset>) -> Result<Stats, String> {
    let mut lc = LeaseClient::new(conn(&node.endpoint()).await?);
    let mut leases = Vec::with_capacity(dataset::EVENT_LEASES);
    for _ in 0..dataset::EVENT_LEASES {
        let r = lc
            .lease_grant(LeaseGrantRequest {
                ttl: dataset::EVENT_LEASE_TTL,
                id: 0,
            })
            .await
            .map_err(|e| format!("lease grant: {}", e.message()))?;
        leases.push(r.into_inner().id);
    }
    let g = compare::global(vec![node.endpoint()], LOAD_CONNS, LOAD_CLIENTS);
    let chans = crate::load::connect(&g).await?;
    let data = data.clone();
    Ok(
        crate::load::run(&g, &chans, data.puts() as usize, 0, move |ch, n| {
            let (i, round) = data.put(n as u64);
            let lease = if dataset::is_event(i) {
                leases[(i as usize) % leases.len()]
            } else {
                0
            };
            let req = PutRequest {
                key: dataset::key(i),
                value: data.value(i, round),
                lease,
                ..Default::default()
            };
            crate::workloads::put_once(ch, req)
        })
        .await,
    )
}

/// Puts at a fixed rate for a window, then again for a window that starts with a compaction of
/// everything written so far; waits for the compaction's deletions to finish.
/// Node heartbeats (a few hundred bytes over a thousand keys) at `rate` for `window` on `ep`,
/// on connections of their own.
async fn heartbeats(
    ep: String,
    rate: u64,
    window: Duration,
    offset: usize,
) -> Result<Stats, String> {
    let g = compare::global(vec![ep], 2, 10);
    let total = (rate as f64 * window.as_secs_f64()) as usize;
    let chans = crate::load::connect(&g).await?;
    Ok(crate::load::run(&g, &chans, total, rate, move |ch, i| {
        let req = PutRequest {
            key: format!(
                "/registry/leases/kube-node-lease/node-{:04}",
                (offset + i) % 1000
            )
            .into_bytes(),
            value: vec![b'h'; 300],
            ..Default::default()
        };
        crate::workloads::put_once(ch, req)
    })
    .await)
}

async fn compaction(s: &Server, node: &Node, plan: &Plan, m: &mut Measured) -> Result<(), String> {
    let puts = |offset: usize| heartbeats(node.endpoint(), plan.put_rate, plan.window, offset);
    eprintln!("scale: {}: puts without a compaction ...", s.label);
    m.put_quiet = puts(0).await?;
    let finished_before = compactions_finished(node.client_port).await;
    let head = node.status().await?.header.map(|h| h.revision).unwrap_or(0);
    eprintln!("scale: {}: puts during a compaction at {head} ...", s.label);
    let mut kv = KvClient::new(conn(&node.endpoint()).await?);
    let started = Instant::now();
    let during = tokio::spawn(puts(1));
    kv.compact(CompactionRequest {
        revision: head,
        physical: false,
    })
    .await
    .map_err(|e| format!("compact: {}", e.message()))?;
    m.compact_call = started.elapsed().as_secs_f64();
    // Watched while the puts run, so its end is seen when it comes.
    let mut finished = None;
    while finished.is_none() || !during.is_finished() {
        if finished.is_none() && compactions_finished(node.client_port).await > finished_before {
            finished = Some(started.elapsed());
        }
        if started.elapsed() > COMPACTION_LIMIT {
            return Err(format!("{}: the compaction never finished", s.label));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.put_compacting = during.await.map_err(|e| e.to_string())??;
    m.compaction_total = finished.map_or(0.0, |d| d.as_secs_f64());
    Ok(())
}

/// How many compactions have finished their deletions (etcd observes the total duration once
/// each does). Read off the runtime's workers, which are timing puts.
async fn compactions_finished(port: u16) -> u64 {
    let name = "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_count";
    let body = tokio::task::spawn_blocking(move || compare::http_get(port, "/metrics"))
        .await
        .ok()
        .flatten();
    body.and_then(|body| {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    })
    .map_or(0, |v| v as u64)
}

/// How a figure compares, and what Ballast must reach.
#[derive(Clone, Copy)]
enum Target {
    /// Reported, no target.
    None,
    /// Ballast / each etcd at most this.
    AtMost(f64),
    /// Ballast's own figure at most this (a ratio it measures against itself).
    OwnAtMost(f64),
    /// Ballast's own figure at least this.
    OwnAtLeast(f64),
}

#[derive(Clone, Copy)]
enum Unit {
    Bytes,
    Secs,
    Millis,
    PerSec,
    Times,
    Count,
}

struct Figure {
    name: String,
    unit: Unit,
    /// One per server, in the servers' order (Ballast last); `None` where it does not apply.
    values: Vec<Option<f64>>,
    target: Target,
}

impl Figure {
    /// Ballast's figure over each etcd's.
    fn ratios(&self) -> Vec<Option<f64>> {
        let Some(Some(b)) = self.values.last().copied() else {
            return vec![None; self.values.len().saturating_sub(1)];
        };
        self.values[..self.values.len() - 1]
            .iter()
            .map(|e| e.filter(|e| *e > 0.0).map(|e| b / e))
            .collect()
    }

    /// Whether the target is met (`None`: no target).
    /// Ballast's own figure (the last column).
    fn own(&self) -> Option<f64> {
        self.values.last().copied().flatten()
    }

    fn met(&self) -> Option<bool> {
        let ratios: Vec<f64> = self.ratios().into_iter().flatten().collect();
        match self.target {
            Target::None => None,
            Target::AtMost(x) => Some(!ratios.is_empty() && ratios.iter().all(|r| *r <= x)),
            Target::OwnAtMost(x) => Some(self.own().is_some_and(|b| b <= x)),
            Target::OwnAtLeast(x) => Some(self.own().is_some_and(|b| b >= x)),
        }
    }
}

fn p99(s: &Stats) -> f64 {
    s.percentile(99.0)
}

fn figures(ms: &[Measured], plan: &Plan, data: &Dataset) -> Vec<Figure> {
    let each = |f: &dyn Fn(&Measured) -> Option<f64>| ms.iter().map(f).collect::<Vec<_>>();
    let fig = |name: String, unit: Unit, values: Vec<Option<f64>>, target: Target| Figure {
        name,
        unit,
        values,
        target,
    };
    let mut v = vec![
        fig(
            "empty store: dbSize".into(),
            Unit::Bytes,
            each(&|m| Some(m.empty_db as f64)),
            Target::AtMost(1.0),
        ),
        fig(
            "empty store: data directory on disk".into(),
            Unit::Bytes,
            each(&|m| Some(m.empty_disk as f64)),
            Target::None,
        ),
    ];
    for (i, size) in SIZES.iter().enumerate() {
        v.push(fig(
            format!("{} MiB of {size} B values: dbSize", plan.per_size_mib),
            Unit::Bytes,
            each(&|m| m.by_size.get(i).map(|s| s.0 as f64)),
            Target::AtMost(1.0),
        ));
        v.push(fig(
            format!(
                "{} MiB of {size} B values: dbSize after defrag",
                plan.per_size_mib
            ),
            Unit::Bytes,
            each(&|m| m.by_size.get(i).map(|s| s.1 as f64)),
            Target::AtMost(1.0),
        ));
    }
    let puts = data.puts() as f64;
    v.extend([
        fig(
            "load: puts/s".into(),
            Unit::PerSec,
            each(&|m| Some(puts / m.load_secs.max(1e-9))),
            Target::None,
        ),
        fig(
            "load: member CPU".into(),
            Unit::Secs,
            each(&|m| Some(m.load_cpu)),
            Target::None,
        ),
        fig(
            "load: member peak RSS".into(),
            Unit::Bytes,
            each(&|m| Some(m.load_peak_rss as f64)),
            Target::None,
        ),
        fig(
            "loaded: dbSize".into(),
            Unit::Bytes,
            each(&|m| Some(m.loaded_db as f64)),
            Target::AtMost(1.0),
        ),
        fig(
            "loaded: data directory on disk".into(),
            Unit::Bytes,
            each(&|m| Some(m.loaded_disk as f64)),
            Target::None,
        ),
        fig(
            format!(
                "{} readers paging the set ({} keys a page, for at most {} s): values read a second",
                plan.readers,
                plan.page,
                plan.read_for.as_secs()
            ),
            Unit::Bytes,
            each(&|m| m.paged.as_ref().map(read_rate)),
            Target::None,
        ),
        fig(
            format!("{} readers paging the set: member RSS growth", plan.readers),
            Unit::Bytes,
            each(&|m| {
                m.paged
                    .as_ref()
                    .map(|p| p.rss_peak.saturating_sub(p.rss_before) as f64)
            }),
            Target::AtMost(0.25),
        ),
        fig(
            format!(
                "{} RangeStreams of the set at once, from a fresh start: values read a second",
                plan.readers
            ),
            Unit::Bytes,
            each(&|m| m.streamed.as_ref().map(read_rate)),
            Target::None,
        ),
        fig(
            format!(
                "{} RangeStreams of the set at once: member RSS growth",
                plan.readers
            ),
            Unit::Bytes,
            each(&|m| {
                m.streamed
                    .as_ref()
                    .map(|p| p.rss_peak.saturating_sub(p.rss_before) as f64)
            }),
            Target::AtMost(0.25),
        ),
        fig(
            format!("put p99 at {}/s, no compaction", plan.put_rate),
            Unit::Millis,
            each(&|m| Some(p99(&m.put_quiet) * 1000.0)),
            Target::None,
        ),
        fig(
            format!(
                "put p99 at {}/s, compaction of the history running",
                plan.put_rate
            ),
            Unit::Millis,
            each(&|m| Some(p99(&m.put_compacting) * 1000.0)),
            Target::None,
        ),
        fig(
            "put p99 during / without a compaction".into(),
            Unit::Times,
            each(&|m| Some(p99(&m.put_compacting) / p99(&m.put_quiet).max(1e-9))),
            Target::OwnAtMost(1.2),
        ),
        fig(
            "Compact answered in".into(),
            Unit::Millis,
            each(&|m| Some(m.compact_call * 1000.0)),
            Target::None,
        ),
        fig(
            "compaction finished deleting in".into(),
            Unit::Secs,
            each(&|m| Some(m.compaction_total)),
            Target::None,
        ),
        fig(
            "compacted + defragmented: dbSize".into(),
            Unit::Bytes,
            each(&|m| Some(m.compacted_db as f64)),
            Target::AtMost(1.0),
        ),
        fig(
            "compacted + defragmented: data directory on disk".into(),
            Unit::Bytes,
            each(&|m| Some(m.compacted_disk as f64)),
            Target::None,
        ),
        fig(
            "restart after a clean stop, to a linearizable read".into(),
            Unit::Secs,
            each(&|m| Some(m.restart_clean)),
            Target::AtMost(0.25),
        ),
        fig(
            "restart after kill -9, to a linearizable read".into(),
            Unit::Secs,
            each(&|m| Some(m.restart_killed)),
            Target::AtMost(0.25),
        ),
        fig(
            "a learner added and started: applied the leader's index in".into(),
            Unit::Secs,
            each(&|m| Some(m.catchup.secs)),
            Target::AtMost(1.0),
        ),
        fig(
            "catch-up: leader RSS growth".into(),
            Unit::Bytes,
            each(&|m| Some(m.catchup.leader_rss_growth as f64)),
            Target::None,
        ),
        fig(
            "catch-up: leader CPU".into(),
            Unit::Secs,
            each(&|m| Some(m.catchup.leader_cpu)),
            Target::None,
        ),
        fig(
            format!(
                "put p99 at {}/s on the leader during / without the catch-up",
                plan.catchup.rate
            ),
            Unit::Times,
            each(&|m| Some(p99(&m.catchup.puts_during) / p99(&m.catchup.puts_quiet).max(1e-9))),
            Target::OwnAtMost(2.0),
        ),
    ]);
    let l = &plan.leases;
    let kept = format!("{} leases kept alive by {} clients", l.leases, l.clients);
    v.extend([
        fig(
            format!("{} leases granted: grants/s", l.leases),
            Unit::PerSec,
            each(&|m| Some(m.leases.grants_per_sec)),
            Target::None,
        ),
        fig(
            format!("{kept}: keep-alives/s"),
            Unit::PerSec,
            each(&|m| Some(m.leases.keepalives.rps())),
            Target::None,
        ),
        fig(
            format!("{kept}: keep-alive p99"),
            Unit::Millis,
            each(&|m| Some(p99(&m.leases.keepalives) * 1000.0)),
            Target::None,
        ),
        fig(
            format!("{kept}: member CPU"),
            Unit::Secs,
            each(&|m| Some(m.leases.cpu)),
            Target::None,
        ),
        fig(
            format!("{kept}: leases lost"),
            Unit::Count,
            each(&|m| Some(m.leases.lost as f64)),
            Target::OwnAtMost(0.0),
        ),
        fig(
            format!(
                "{} leases expiring at once: keys gone, after the TTL, in",
                l.expiring
            ),
            Unit::Secs,
            each(&|m| Some(m.leases.expiry_secs)),
            Target::None,
        ),
    ]);
    let f = &plan.fanout;
    let watch = format!(
        "{} watchers on {} connections, puts at {}/s",
        f.watchers(),
        f.conns,
        f.rate
    );
    let slow = format!("{} slow consumers", f.slow);
    v.extend([
        fig(
            format!("{watch}: event latency p99"),
            Unit::Millis,
            each(&|m| Some(p99(&m.fanout.latency) * 1000.0)),
            Target::AtMost(0.5),
        ),
        fig(
            format!("{watch}, {slow}: event latency p99"),
            Unit::Millis,
            each(&|m| Some(p99(&m.fanout.latency_slow) * 1000.0)),
            Target::AtMost(0.5),
        ),
        fig(
            format!("{watch}: events the healthy watchers missed"),
            Unit::Count,
            each(&|m| Some(m.fanout.missing as f64)),
            Target::OwnAtMost(0.0),
        ),
        fig(
            format!("{watch}: puts/s by {} clients", f.burst_clients),
            Unit::PerSec,
            each(&|m| Some(m.fanout.puts_per_sec)),
            Target::None,
        ),
        fig(
            format!("{watch}, {slow}: puts/s by {} clients", f.burst_clients),
            Unit::PerSec,
            each(&|m| Some(m.fanout.puts_per_sec_slow)),
            Target::None,
        ),
        fig(
            format!("{watch}: puts/s with / without the {slow}"),
            Unit::Times,
            each(&|m| Some(m.fanout.puts_per_sec_slow / m.fanout.puts_per_sec.max(1e-9))),
            Target::OwnAtLeast(0.9),
        ),
        fig(
            format!("{watch}: member RSS growth"),
            Unit::Bytes,
            each(&|m| Some(m.fanout.rss_growth as f64)),
            Target::None,
        ),
    ]);
    v
}

fn show(unit: Unit, v: Option<f64>) -> String {
    let Some(v) = v else { return "n/a".into() };
    match unit {
        Unit::Bytes if v < (1 << 20) as f64 => format!("{:.1} kB", v / 1000.0),
        Unit::Bytes => mib(v as u64),
        Unit::Secs => format!("{v:.2} s"),
        Unit::Millis => format!("{v:.2} ms"),
        Unit::PerSec => format!("{v:.0}"),
        Unit::Times => format!("{v:.2}x"),
        Unit::Count => format!("{v:.0}"),
    }
}

fn markdown(
    a: &ScaleArgs,
    servers: &[Server],
    figures: &[Figure],
    plan: &Plan,
    data: &Dataset,
) -> String {
    let mut s = String::new();
    let mode = if a.dry_run {
        "dry run (tiny sizes, not a measurement)"
    } else if a.quick {
        "quick"
    } else {
        "full"
    };
    let _ = writeln!(s, "# Ballast vs etcd at scale ({mode})\n");
    let _ = writeln!(
        s,
        "`ballast-bench compare --scale{}` on {}, one member of each server on a fresh data \
         directory, one server after the other. The data set: {} keys under \
         `/registry/<resource>/<namespace>/<name>` (most values 0.5–4 kB, one in a hundred \
         10–100 kB, one in 20,000 a megabyte; events under {} leases), one in five of the \
         other objects rewritten {} times: {} puts, {} of values. Ratios are Ballast's figure \
         over each etcd's.\n",
        if a.quick { "-quick" } else { "" },
        compare::machine(),
        plan.keys,
        dataset::EVENT_LEASES,
        plan.rewrites,
        data.puts(),
        mib(data.logical_bytes()),
    );
    let etcds = &servers[..servers.len() - 1];
    let mut head = String::from("| figure |");
    let mut rule = String::from("|---|");
    for sv in servers {
        let _ = write!(head, " {} |", sv.label);
        rule.push_str("---|");
    }
    for e in etcds {
        let _ = write!(head, " vs {} |", e.label);
        rule.push_str("---|");
    }
    head.push_str(" target | met |");
    rule.push_str("---|---|");
    let _ = writeln!(s, "{head}\n{rule}");
    for f in figures {
        let mut row = format!("| {} |", f.name);
        for v in &f.values {
            let _ = write!(row, " {} |", show(f.unit, *v));
        }
        for r in f.ratios() {
            let _ = write!(row, " {} |", r.map_or("n/a".into(), |r| format!("{r:.2}x")));
        }
        let target = match f.target {
            Target::None => String::new(),
            Target::AtMost(x) => format!("<= {x}x"),
            Target::OwnAtMost(x) => format!("Ballast <= {x}x"),
            Target::OwnAtLeast(x) => format!("Ballast >= {x}x"),
        };
        let met = match f.met() {
            None => "",
            Some(true) => "yes",
            Some(false) => "no",
        };
        let _ = writeln!(s, "{row} {target} | {met} |");
    }
    s
}

/// Chart bars: each targeted figure's worst ratio (own ratio for Ballast's own target).
fn bars(figures: &[Figure]) -> Vec<(String, f64, f64, bool)> {
    figures
        .iter()
        .filter_map(|f| {
            let worst = f.ratios().into_iter().flatten().reduce(f64::max);
            match f.target {
                Target::None => None,
                Target::AtMost(x) => worst.map(|r| (f.name.clone(), r, x, false)),
                Target::OwnAtMost(x) => f.own().map(|b| (f.name.clone(), b, x, false)),
                Target::OwnAtLeast(x) => f.own().map(|b| (f.name.clone(), b, x, true)),
            }
        })
        .collect()
}
