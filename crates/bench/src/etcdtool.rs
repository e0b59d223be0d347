//! `compare --etcd-benchmark PATH`: the same put and watch-latency loads driven by etcd's own
//! `benchmark` tool (what users measure an etcd replacement with; `scripts/etcd-benchmark`
//! builds it from the Go module proxy), in alternating rounds on fresh clusters, first with
//! the tool and the servers sharing every CPU, then with the servers pinned to one CPU and the
//! tool to another (`taskset`), so the load generator's CPU does not compress the ratio.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::compare::{pinned_command, ratio, settle, Cluster, CompareArgs, Kind};

/// What one run of the tool reported (seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ToolStats {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
}

/// The figures of one `Summary:` block of the tool's report: requests/s and the latency
/// distribution's 50% and 99% lines (absent: zero, as the tool prints it). The watch-latency report has two blocks (puts, then
/// after `Watch events summary:` the events); `events` takes the second.
pub fn parse(out: &str, events: bool) -> Result<ToolStats, String> {
    let text = if events {
        out.split_once("Watch events summary:")
            .map(|(_, rest)| rest)
            .ok_or("no watch events summary in the report")?
    } else {
        out
    };
    let block = text
        .split_once("Summary:")
        .map(|(_, rest)| rest)
        .ok_or("no summary in the report")?;
    // This block ends where the next one starts.
    let block = block.split("Summary:").next().unwrap_or(block);
    let mut s = ToolStats::default();
    // The tool leaves out a percentile whose latency is zero.
    let (mut rps, mut dist) = (false, false);
    let secs = |l: &str, prefix: &str| -> Option<f64> {
        l.strip_prefix(prefix)?
            .trim()
            .trim_end_matches("secs.")
            .trim()
            .parse()
            .ok()
    };
    for line in block.lines().map(str::trim) {
        if let Some(v) = line
            .strip_prefix("Requests/sec:")
            .and_then(|v| v.trim().parse().ok())
        {
            (s.rps, rps) = (v, true);
        } else if line == "Latency distribution:" {
            dist = true;
        } else if let Some(v) = secs(line, "50% in") {
            s.p50 = v;
        } else if let Some(v) = secs(line, "99% in") {
            s.p99 = v;
        }
    }
    if rps && dist {
        Ok(s)
    } else {
        Err(format!("incomplete report: {}", block.trim()))
    }
}

/// Runs the tool against `endpoints` (pinned to `cpus` when given) and parses its report.
fn run_tool(
    bin: &Path,
    cpus: Option<&str>,
    endpoints: &[String],
    args: &[String],
    events: bool,
) -> Result<ToolStats, String> {
    let out = pinned_command(bin, cpus)
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--precise")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} {}: {}\n{}",
            bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&text, events)
}

/// One load, both servers, one round.
pub struct ToolRow {
    pub load: &'static str,
    pub round: usize,
    pub pinned: bool,
    pub etcd: ToolStats,
    pub ballast: ToolStats,
}

impl ToolRow {
    fn rps_ratio(&self) -> f64 {
        ratio(self.ballast.rps, self.etcd.rps)
    }

    fn p99_ratio(&self) -> f64 {
        ratio(self.ballast.p99, self.etcd.p99)
    }

    /// The targets hold for the unpinned rounds: puts at least 2x etcd's in every
    /// round, watch events' p99 at most half etcd's. Pinned rounds are reported beside them.
    fn met(&self) -> Option<bool> {
        if self.pinned {
            return None;
        }
        Some(match self.load {
            PUT => self.rps_ratio() >= 2.0,
            _ => self.p99_ratio() <= 0.5,
        })
    }
}

const PUT: &str = "put";
const WATCH: &str = "watch-latency";

/// The tool's flags for each load: the 10 connections and 100 clients, 256 B values;
/// 1,000 watchers (10 streams of 100) on one key at 100 puts/s.
fn loads(put_total: usize, watch_puts: usize) -> [(&'static str, Vec<String>, bool); 2] {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    [
        (
            PUT,
            s(&[
                "--conns=10",
                "--clients=100",
                "put",
                &format!("--total={put_total}"),
                "--key-size=8",
                "--val-size=256",
                "--key-space-size=100000",
                "--sequential-keys",
            ]),
            false,
        ),
        (
            WATCH,
            s(&[
                "--conns=10",
                "--clients=100",
                "watch-latency",
                &format!("--put-total={watch_puts}"),
                "--put-rate=100",
                "--streams=10",
                "--watchers-per-stream=100",
            ]),
            true,
        ),
    ]
}

/// The servers' CPUs and the tool's, when the machine has at least two.
fn pinning() -> Option<(String, String)> {
    let n = std::thread::available_parallelism().map_or(1, usize::from);
    let taskset = Command::new("taskset")
        .args(["-c", "0", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let servers = if n > 2 {
        format!("1-{}", n - 1)
    } else {
        "1".to_string()
    };
    (n >= 2 && taskset).then(|| (servers, "0".to_string()))
}

/// What the rounds measured, and the CPUs the pinned ones ran on (servers', tool's).
pub struct ToolRun {
    pub rows: Vec<ToolRow>,
    pub pins: Option<(String, String)>,
}

/// `rounds` alternating rounds unpinned, then as many pinned (when the machine allows), each on
/// fresh 3-member clusters: etcd, then Ballast, for each load.
pub fn run(
    a: &CompareArgs,
    tool: &Path,
    rounds: usize,
    put_total: usize,
    watch_puts: usize,
) -> Result<ToolRun, String> {
    let mut rows = Vec::new();
    let pins = pinning();
    let modes: Vec<Option<&(String, String)>> = match &pins {
        Some(p) => vec![None, Some(p)],
        None => vec![None],
    };
    for pin in modes {
        let (server_cpus, tool_cpus) = match pin {
            Some((s, t)) => (Some(s.clone()), Some(t.as_str())),
            None => (None, None),
        };
        let args = CompareArgs {
            server_cpus,
            ..a.clone()
        };
        for round in 1..=rounds {
            for (load, flags, events) in loads(put_total, watch_puts) {
                let mut got = Vec::new();
                for kind in [Kind::Etcd, Kind::Ballast] {
                    let c = Cluster::start(kind, 3, &args)?;
                    settle();
                    eprintln!(
                        "etcd's benchmark {load}, round {round}{}: {kind:?} ...",
                        if pin.is_some() { ", pinned" } else { "" }
                    );
                    got.push(run_tool(tool, tool_cpus, &c.endpoints(), &flags, events)?);
                }
                rows.push(ToolRow {
                    load,
                    round,
                    pinned: pin.is_some(),
                    etcd: got[0],
                    ballast: got[1],
                });
            }
        }
    }
    Ok(ToolRun { rows, pins })
}

impl ToolRun {
    /// Whether every unpinned round met its target.
    pub fn all_met(&self) -> bool {
        self.rows.iter().all(|r| r.met() != Some(false))
    }

    /// The section of the compare report.
    pub fn markdown(&self, tool: &Path) -> String {
        markdown(&self.rows, self.pins.as_ref(), tool)
    }
}

fn markdown(rows: &[ToolRow], pins: Option<&(String, String)>, tool: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## With etcd's own benchmark tool\n\n`{}` as the load generator (`--etcd-benchmark`), 3 members each, fresh clusters every round. Unpinned: the tool and the servers share every CPU, as users run it. Pinned: the servers on CPUs {} and the tool on CPU {} (`taskset`), so the tool's CPU does not compress the ratio. put: 10 conns, 100 clients, 256 B values; watch-latency: 1,000 watchers (10 streams of 100) on one key, 100 puts/s, event latency.\n",
        tool.file_name().map_or_else(|| tool.display().to_string(), |n| n.to_string_lossy().into_owned()),
        pins.map_or("-", |p| p.0.as_str()),
        pins.map_or("-", |p| p.1.as_str()),
    );
    let _ = writeln!(
        s,
        "| load | round | CPUs | etcd req/s | Ballast req/s | ratio | etcd p50 ms | Ballast p50 ms | etcd p99 ms | Ballast p99 ms | p99 ratio | target | met |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let ms = |v: f64| format!("{:.2}", v * 1000.0);
    for r in rows {
        let target = match (r.pinned, r.load) {
            (true, _) => "-",
            (false, PUT) => ">= 2.0x",
            (false, _) => "p99 <= 0.5x",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {:.2}x | {} | {} | {} | {} | {:.2}x | {target} | {} |",
            r.load,
            r.round,
            if r.pinned { "pinned" } else { "shared" },
            r.etcd.rps,
            r.ballast.rps,
            r.rps_ratio(),
            ms(r.etcd.p50),
            ms(r.ballast.p50),
            ms(r.etcd.p99),
            ms(r.ballast.p99),
            r.p99_ratio(),
            match r.met() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const WATCH_REPORT: &str = "Summary:
  Total:	1.0023 secs.
  Requests/sec:	199.5382

Latency distribution:
  10% in 0.0009 secs.
  50% in 0.0015 secs.
  99% in 0.0036 secs.

Watch events summary:

Summary:
  Total:	1.0051 secs.
  Slowest:	0.0032 secs.
  Requests/sec:	19897.5703

Response time histogram:
  0.0000 [6618]	|

Latency distribution:
  50% in 0.0001 secs.
  99% in 0.0015 secs.
  99.9% in 0.0029 secs.
";

    #[test]
    fn reports_parse_as_the_tool_prints_them() {
        assert_eq!(
            parse(WATCH_REPORT, false),
            Ok(ToolStats {
                rps: 199.5382,
                p50: 0.0015,
                p99: 0.0036
            })
        );
        assert_eq!(
            parse(WATCH_REPORT, true),
            Ok(ToolStats {
                rps: 19897.5703,
                p50: 0.0001,
                p99: 0.0015
            })
        );
        // 99.9% is not 99%; a percentile left out is zero.
        assert_eq!(
            parse(
                "Summary:\n Requests/sec: 5\nLatency distribution:\n 99.9% in 2 secs.\n",
                false
            ),
            Ok(ToolStats {
                rps: 5.0,
                p50: 0.0,
                p99: 0.0
            })
        );
        assert!(parse("Summary:\n Requests/sec: 5\n 99% in 2 secs.\n", false).is_err());
        assert!(parse("no report", false).is_err());
        assert!(parse("Summary:\n Requests/sec: 5\n", true).is_err());
    }
}
