//! `ballast-bench compare`: a fresh etcd (found on PATH) and a fresh Ballast with identical
//! settings, single member and three members on 127.0.0.1, the same workloads against each in
//! turn, one table of throughput, latency and peak memory with the ratio Ballast / etcd, and
//! the table as Markdown plus an SVG chart in `docs/benchmarks/`.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::Global;
use crate::report::Stats;
use crate::workloads::{self, PutArgs, RangeArgs, TxnPutArgs, WatchLatencyArgs};

#[derive(Clone, Debug)]
pub struct CompareArgs {
    pub quick: bool,
    pub dry_run: bool,
    pub etcd: PathBuf,
    pub ballast: PathBuf,
    pub out_dir: PathBuf,
    /// etcd's own benchmark tool: also drive the loads with it (`etcdtool`).
    pub etcd_benchmark: Option<PathBuf>,
    /// Rounds of the loads driven by etcd's tool.
    pub rounds: usize,
    /// CPUs the servers are pinned to (`taskset -c`), if any.
    pub server_cpus: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Etcd,
    Ballast,
}

pub(crate) struct Member {
    pub(crate) child: Child,
    client_port: u16,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Cluster {
    pub(crate) members: Vec<Member>,
    _dir: tempfile::TempDir,
}

pub(crate) fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

impl Cluster {
    pub(crate) fn start(kind: Kind, n: usize, a: &CompareArgs) -> Result<Cluster, String> {
        Cluster::start_with(kind, n, a, &[])
    }

    /// [`Cluster::start`] with flags added for both kinds.
    pub(crate) fn start_with(
        kind: Kind,
        n: usize,
        a: &CompareArgs,
        extra: &[&str],
    ) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push((free_port()?, free_port()?));
        }
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let bin = match kind {
            Kind::Etcd => a.etcd.clone(),
            Kind::Ballast => a.ballast.clone(),
        };
        let mut members = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log")))
                .map_err(|e| e.to_string())?;
            let child = pinned_command(&bin, a.server_cpus.as_deref())
                .arg(format!("--name=m{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.path().join(format!("m{i}")).display()
                ))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{c}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{c}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{p}"
                ))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                // The same settings for both: etcd's defaults, stated.
                .arg("--snapshot-count=100000")
                .arg("--heartbeat-interval=100")
                .arg("--election-timeout=1000")
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", bin.display()))?;
            members.push(Member {
                child,
                client_port: *c,
            });
        }
        let c = Cluster { members, _dir: dir };
        c.wait_healthy(Duration::from_secs(30))?;
        Ok(c)
    }

    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    fn wait_healthy(&self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        for m in &self.members {
            loop {
                if health(m.client_port) {
                    break;
                }
                if start.elapsed() > limit {
                    return Err(format!(
                        "member on port {} never became healthy",
                        m.client_port
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The largest peak resident set (VmHWM) among the members, in bytes.
    fn peak_rss(&self) -> u64 {
        self.members
            .iter()
            .filter_map(|m| vm_hwm(m.child.id()))
            .max()
            .unwrap_or(0)
    }
}

fn health(port: u16) -> bool {
    http_get(port, "/health").is_some_and(|body| body.contains("\"true\""))
}

/// A plain-HTTP GET of `path` from 127.0.0.1:`port`: the whole response, headers included.
pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    Some(body)
}

pub(crate) fn vm_hwm(pid: u32) -> Option<u64> {
    proc_status_bytes(pid, "VmHWM:")
}

/// A `/proc/<pid>/status` memory figure (`VmHWM:`, `VmRSS:`), in bytes.
pub(crate) fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One workload's figures for both servers.
struct Row {
    name: String,
    etcd: Stats,
    ballast: Stats,
    /// Minimum throughput ratio and maximum p99 ratio this workload must meet.
    min_rps_ratio: f64,
    max_p99_ratio: Option<f64>,
}

impl Row {
    fn rps_ratio(&self) -> f64 {
        ratio(self.ballast.rps(), self.etcd.rps())
    }

    fn p99_ratio(&self) -> f64 {
        ratio(self.ballast.percentile(99.0), self.etcd.percentile(99.0))
    }

    fn met(&self) -> bool {
        self.rps_ratio() >= self.min_rps_ratio
            && self.max_p99_ratio.is_none_or(|m| self.p99_ratio() <= m)
            && self.etcd.errors.is_empty()
            && self.ballast.errors.is_empty()
    }
}

/// `bin` to run on `cpus` (`taskset -c`), or anywhere.
pub(crate) fn pinned_command(bin: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", c]).arg(bin);
            t
        }
        None => Command::new(bin),
    }
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

struct Plan {
    put_total: usize,
    range_total: usize,
    txn_total: usize,
    watch_puts: usize,
    watchers: usize,
}

impl Plan {
    fn new(a: &CompareArgs) -> Plan {
        if a.dry_run {
            Plan {
                put_total: 200,
                range_total: 200,
                txn_total: 100,
                watch_puts: 20,
                watchers: 20,
            }
        } else if a.quick {
            Plan {
                put_total: 20_000,
                range_total: 20_000,
                txn_total: 10_000,
                watch_puts: 300,
                watchers: 1000,
            }
        } else {
            Plan {
                put_total: 100_000,
                range_total: 100_000,
                txn_total: 50_000,
                watch_puts: 1000,
                watchers: 1000,
            }
        }
    }
}

pub(crate) fn global(endpoints: Vec<String>, conns: usize, clients: usize) -> Global {
    Global {
        endpoints,
        conns,
        clients,
        precise: false,
        dial_timeout: Duration::from_secs(5),
        progress: false,
    }
}

fn put_args(total: usize) -> PutArgs {
    PutArgs {
        total,
        rate: 0,
        key_size: 8,
        val_size: 256,
        key_space_size: 100_000,
        sequential_keys: true,
    }
}

/// Lets the machine settle before a measured run: what the previous run left dirty in the page
/// cache is written back now, not during the next run (whose fsyncs would queue behind it).
pub(crate) fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(1));
}

/// Runs one workload on etcd, then on Ballast.
async fn both<F, Fut>(
    name: &str,
    etcd: &Cluster,
    ballast: &Cluster,
    f: F,
) -> Result<(Stats, Stats), String>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Stats, String>>,
{
    settle();
    eprintln!("{name}: etcd ...");
    let e = f(etcd.endpoints()).await?;
    settle();
    eprintln!("{name}: ballast ...");
    let b = f(ballast.endpoints()).await?;
    Ok((e, b))
}

pub async fn run(a: &CompareArgs) -> Result<bool, String> {
    let plan = Plan::new(a);
    let mut rows = Vec::new();
    let rss;
    {
        let etcd = Cluster::start(Kind::Etcd, 3, a)?;
        let ballast = Cluster::start(Kind::Ballast, 3, a)?;
        let (e, b) = both("3-member put", &etcd, &ballast, |eps| async move {
            workloads::put(&global(eps, 10, 100), &put_args(plan.put_total)).await
        })
        .await?;
        rss = (etcd.peak_rss(), ballast.peak_rss());
        rows.push(Row {
            name: "put, 3 members (10 conns, 100 clients, 256 B)".into(),
            etcd: e,
            ballast: b,
            min_rps_ratio: 2.0,
            max_p99_ratio: Some(0.5),
        });
        for (consistency, label) in [("l", "linearizable"), ("s", "serializable")] {
            let (e, b) = both(
                &format!("range {label}"),
                &etcd,
                &ballast,
                |eps| async move {
                    let args = RangeArgs {
                        key: b"foo".to_vec(),
                        end: vec![],
                        total: plan.range_total,
                        rate: 0,
                        consistency: consistency.into(),
                        limit: 0,
                        count_only: false,
                    };
                    workloads::range(&global(eps, 10, 100), &args).await
                },
            )
            .await?;
            rows.push(Row {
                name: format!("range {label}, 3 members (10 conns, 100 clients)"),
                etcd: e,
                ballast: b,
                min_rps_ratio: 1.5,
                max_p99_ratio: None,
            });
        }
        let (e, b) = both("txn-put", &etcd, &ballast, |eps| async move {
            let args = TxnPutArgs {
                put: put_args(plan.txn_total),
                txn_ops: 1,
            };
            workloads::txn_put(&global(eps, 10, 100), &args).await
        })
        .await?;
        rows.push(Row {
            name: "txn-put, 3 members (10 conns, 100 clients)".into(),
            etcd: e,
            ballast: b,
            min_rps_ratio: 1.0,
            max_p99_ratio: None,
        });
        let watchers = plan.watchers;
        let (e, b) = both("watch-latency", &etcd, &ballast, |eps| async move {
            let args = WatchLatencyArgs {
                total: plan.watch_puts,
                put_rate: 100,
                key_size: 32,
                val_size: 32,
            };
            workloads::watch_latency(&global(eps, 10, watchers), &args).await
        })
        .await?;
        rows.push(Row {
            name: format!("watch-latency, 3 members ({watchers} watchers on one key, 100 puts/s)"),
            etcd: e,
            ballast: b,
            // Throughput is fixed by the put rate; what counts is how soon events arrive.
            min_rps_ratio: 0.0,
            max_p99_ratio: Some(0.5),
        });
    }
    {
        let etcd = Cluster::start(Kind::Etcd, 1, a)?;
        let ballast = Cluster::start(Kind::Ballast, 1, a)?;
        let (e, b) = both("1-member put", &etcd, &ballast, |eps| async move {
            workloads::put(&global(eps, 10, 100), &put_args(plan.put_total)).await
        })
        .await?;
        rows.push(Row {
            name: "put, 1 member (10 conns, 100 clients, 256 B)".into(),
            etcd: e,
            ballast: b,
            min_rps_ratio: 2.0,
            max_p99_ratio: None,
        });
    }
    let mut table = markdown(&rows, rss, a);
    let mut tool_met = true;
    if let Some(tool) = &a.etcd_benchmark {
        let tool_run = crate::etcdtool::run(a, tool, a.rounds, plan.put_total, plan.watch_puts)?;
        tool_met = tool_run.all_met();
        table.push_str(&tool_run.markdown(tool));
    }
    println!("{table}");
    let rss_met = rss.0 > 0 && (rss.1 as f64) <= 0.5 * rss.0 as f64;
    let all_met = rows.iter().all(Row::met) && rss_met && tool_met;
    if !a.dry_run {
        std::fs::create_dir_all(&a.out_dir).map_err(|e| e.to_string())?;
        let name = if a.quick { "compare-quick" } else { "compare" };
        write(&a.out_dir.join(format!("{name}.md")), &table)?;
        write(&a.out_dir.join(format!("{name}.svg")), &svg(&rows, rss))?;
        eprintln!("wrote {}/{name}.md and {name}.svg", a.out_dir.display());
    }
    // A dry run measures nothing, so it has no targets to miss.
    Ok(all_met || a.dry_run)
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs ({model})")
}

pub(crate) fn etcd_version(etcd: &Path) -> String {
    Command::new(etcd)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "etcd (version unknown)".into())
}

fn ms(s: f64) -> String {
    format!("{:.2}", s * 1000.0)
}

fn markdown(rows: &[Row], rss: (u64, u64), a: &CompareArgs) -> String {
    let mut s = String::new();
    let mode = if a.dry_run {
        "dry run (tiny totals, not a measurement)"
    } else if a.quick {
        "quick"
    } else {
        "full"
    };
    let _ = writeln!(s, "# Ballast vs etcd ({mode})\n");
    let _ = writeln!(
        s,
        "`ballast-bench compare{}{}` on {}, everything on one machine; reference: {}. Each workload ran against a fresh etcd and a fresh Ballast started with the same flags, one after the other.\n",
        if a.quick { " --quick" } else { "" },
        if a.dry_run { " --dry-run" } else { "" },
        machine(),
        etcd_version(&a.etcd),
    );
    let _ = writeln!(
        s,
        "| workload | etcd req/s | Ballast req/s | ratio | etcd p50 ms | Ballast p50 ms | etcd p99 ms | Ballast p99 ms | p99 ratio | target | met |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let target = match (r.min_rps_ratio > 0.0, r.max_p99_ratio) {
            (true, Some(p)) => format!(">= {:.1}x, p99 <= {p:.1}x", r.min_rps_ratio),
            (false, Some(p)) => format!("p99 <= {p:.1}x"),
            (_, None) => format!(">= {:.1}x", r.min_rps_ratio),
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.2}x | {} | {} | {} | {} | {:.2}x | {target} | {} |",
            r.name,
            r.etcd.rps(),
            r.ballast.rps(),
            r.rps_ratio(),
            ms(r.etcd.percentile(50.0)),
            ms(r.ballast.percentile(50.0)),
            ms(r.etcd.percentile(99.0)),
            ms(r.ballast.percentile(99.0)),
            r.p99_ratio(),
            if r.met() { "yes" } else { "no" },
        );
    }
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let rss_ratio = ratio(rss.1 as f64, rss.0 as f64);
    let _ = writeln!(
        s,
        "\n| memory | etcd | Ballast | ratio | target | met |\n|---|---|---|---|---|---|\n| peak RSS per member after the 3-member put | {:.1} MiB | {:.1} MiB | {rss_ratio:.2}x | <= 0.5x | {} |",
        mb(rss.0),
        mb(rss.1),
        if rss.0 > 0 && rss_ratio <= 0.5 { "yes" } else { "no" },
    );
    let errors: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            let e = r
                .etcd
                .errors
                .iter()
                .map(move |(m, n)| format!("{}: etcd: {n} × {m}", r.name));
            let b = r
                .ballast
                .errors
                .iter()
                .map(move |(m, n)| format!("{}: Ballast: {n} × {m}", r.name));
            e.chain(b)
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "\nErrors:\n");
        for e in errors {
            let _ = writeln!(s, "- {e}");
        }
    }
    s
}

/// Bars of the Ballast / etcd ratio per workload (throughput, and p99 where it has a target),
/// with the parity line and each target marked.
fn svg(rows: &[Row], rss: (u64, u64)) -> String {
    let mut bars: Vec<(String, f64, f64, bool)> = Vec::new();
    for r in rows {
        if r.min_rps_ratio > 0.0 {
            bars.push((
                format!("{} — req/s", short(&r.name)),
                r.rps_ratio(),
                r.min_rps_ratio,
                true,
            ));
        }
        if let Some(p) = r.max_p99_ratio {
            bars.push((format!("{} — p99", short(&r.name)), r.p99_ratio(), p, false));
        }
    }
    bars.push((
        "peak RSS".into(),
        ratio(rss.1 as f64, rss.0 as f64),
        0.5,
        false,
    ));
    bars_svg(&bars)
}

/// A bar chart of ratios to etcd: (label, ratio, target, whether higher is better) per bar,
/// each target marked, green where it is met.
pub(crate) fn bars_svg(bars: &[(String, f64, f64, bool)]) -> String {
    let (w, row_h, left, top) = (760.0, 28.0, 300.0, 40.0);
    let max = bars
        .iter()
        .map(|b| b.1.max(b.2))
        .fold(2.0_f64, f64::max)
        .ceil();
    let scale = (w - left - 40.0) / max;
    let h = top + row_h * bars.len() as f64 + 40.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"20\" font-size=\"14\">Ballast / etcd (higher is better for req/s, lower for p99 and RSS; | marks the target)</text>\n"
    );
    for (i, (label, v, target, higher)) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let met = if *higher { v >= target } else { v <= target };
        let color = if met { "#2e7d32" } else { "#c62828" };
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect x=\"{left}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{}\">{v:.2}x</text><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"black\" stroke-width=\"2\"/>",
            left - 8.0,
            y + 16.0,
            xml(label),
            y + 4.0,
            v * scale,
            row_h - 8.0,
            left + v * scale + 4.0,
            y + 16.0,
            left + target * scale,
            left + target * scale,
            y + 2.0,
            y + row_h - 2.0,
        );
    }
    let x1 = left + scale;
    let _ = writeln!(
        s,
        "<line x1=\"{x1:.1}\" x2=\"{x1:.1}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"#555\" stroke-dasharray=\"4 3\"/><text x=\"{x1:.1}\" y=\"{:.1}\" text-anchor=\"middle\">1.0x (parity)</text>\n</svg>",
        h - 30.0,
        h - 14.0
    );
    s
}

fn short(name: &str) -> String {
    name.split(" (").next().unwrap_or(name).to_string()
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
