//! `ballast-bench`: etcd's `benchmark` tool (same subcommands, flags and report) for Ballast
//! or etcd, and `compare`, which measures both side by side.

mod compare;
mod conn;
mod etcdtool;
mod load;
mod rangemem;
mod rawwatch;
mod report;
mod scale;
mod snapshot;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::load::Global;

#[derive(Parser)]
#[command(
    name = "ballast-bench",
    about = "A low-level benchmark tool for etcd3 and Ballast"
)]
struct Cli {
    /// gRPC endpoints
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Total number of gRPC connections
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Total number of gRPC clients
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// use full floating point precision
    #[arg(long, global = true)]
    precise: bool,
    /// dial timeout for client connections (e.g. 5s)
    #[arg(long = "dial-timeout", global = true, default_value = "0s", value_parser = parse_duration)]
    dial_timeout: Duration,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The load flags put, txn-put and txn-mixed share.
#[derive(Args, Clone)]
struct LoadFlags {
    /// Total number of requests
    #[arg(long, default_value_t = 10000)]
    total: usize,
    /// Maximum requests per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Key size of put request
    #[arg(long = "key-size", default_value_t = 8)]
    key_size: usize,
    /// Value size of put request
    #[arg(long = "val-size", default_value_t = 8)]
    val_size: usize,
    /// Maximum possible keys
    #[arg(long = "key-space-size", default_value_t = 1)]
    key_space_size: usize,
}

#[derive(Args, Clone)]
struct PutFlags {
    #[command(flatten)]
    load: LoadFlags,
    /// Use sequential keys
    #[arg(long = "sequential-keys")]
    sequential_keys: bool,
}

impl PutFlags {
    fn args(&self) -> workloads::PutArgs {
        workloads::PutArgs {
            total: self.load.total,
            rate: self.load.rate,
            key_size: self.load.key_size,
            val_size: self.load.val_size,
            key_space_size: self.load.key_space_size,
            sequential_keys: self.sequential_keys,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmark put
    Put(PutFlags),
    /// Benchmark range
    Range {
        key: String,
        end: Option<String>,
        /// Total number of range requests
        #[arg(long, default_value_t = 10000)]
        total: usize,
        /// Maximum range requests per second (0 is no limit)
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Linearizable(l) or Serializable(s)
        #[arg(long, default_value = "l")]
        consistency: String,
        /// Maximum number of results to return from range request (0 is no limit)
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Only returns the count of keys
        #[arg(long = "count-only")]
        count_only: bool,
    },
    /// Benchmark txn-put
    #[command(name = "txn-put")]
    TxnPut {
        #[command(flatten)]
        put: PutFlags,
        /// Number of puts per txn
        #[arg(long = "txn-ops", default_value_t = 1)]
        txn_ops: usize,
    },
    /// Benchmark a mixed load of txn-put & txn-range.
    #[command(name = "txn-mixed")]
    TxnMixed {
        key: Option<String>,
        end: Option<String>,
        #[command(flatten)]
        load: LoadFlags,
        /// Read operation range end key. By default, we do full range query with the default limit of 1000.
        #[arg(long = "end-key", default_value = "")]
        end_key: String,
        /// Read operation range result limit
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// Linearizable(l) or Serializable(s)
        #[arg(long, default_value = "l")]
        consistency: String,
        /// Read/write ops ratio
        #[arg(long = "rw-ratio", default_value_t = 1.0)]
        rw_ratio: f64,
    },
    /// Benchmark STM
    Stm {
        /// Read Committed (c), Repeatable Reads (r), Serializable (s), or Snapshot (ss)
        #[arg(long, default_value = "r")]
        isolation: String,
        /// Total unique keys accessible by the benchmark
        #[arg(long, default_value_t = 1)]
        keys: usize,
        /// Total number of completed STM transactions
        #[arg(long, default_value_t = 10000)]
        total: usize,
        /// Number of keys to access per transaction
        #[arg(long = "keys-per-txn", default_value_t = 1)]
        keys_per_txn: usize,
        /// Percentage of keys to overwrite per transaction
        #[arg(long = "txn-wr-percent", default_value_t = 50)]
        txn_wr_percent: usize,
        /// Wrap STM transaction with a custom locking mechanism (stm, lock-rpc)
        #[arg(long = "stm-locker", default_value = "stm")]
        stm_locker: String,
        /// Value size of each STM put request
        #[arg(long = "val-size", default_value_t = 8)]
        val_size: usize,
        /// Maximum STM transactions per second (0 is no limit)
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Benchmark watch
    Watch {
        /// Total watch streams
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Total watchers per stream
        #[arg(long = "watch-per-stream", default_value_t = 100)]
        watch_per_stream: usize,
        /// Total number of keys to be watched
        #[arg(long = "watched-key-total", default_value_t = 1)]
        watched_key_total: usize,
        /// Number of keys to put per second
        #[arg(long = "put-rate", default_value_t = 0)]
        put_rate: u64,
        /// Number of put requests
        #[arg(long = "put-total", default_value_t = 1000)]
        put_total: usize,
        /// Key size of watch request
        #[arg(long = "key-size", default_value_t = 32)]
        key_size: usize,
        /// Maximum possible keys
        #[arg(long = "key-space-size", default_value_t = 1)]
        key_space_size: usize,
        /// Use sequential keys
        #[arg(long = "sequential-keys")]
        sequential_keys: bool,
    },
    /// Benchmark watch with get
    #[command(name = "watch-get")]
    WatchGet {
        /// Total number of watchers
        #[arg(long, default_value_t = 10000)]
        watchers: usize,
        /// Total number of watcher streams
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Number of events per watcher
        #[arg(long, default_value_t = 8)]
        events: usize,
    },
    /// Benchmark watch latency
    #[command(name = "watch-latency")]
    WatchLatency {
        /// Total number of put requests
        #[arg(long, default_value_t = 10000)]
        total: usize,
        /// Number of keys to put per second
        #[arg(long = "put-rate", default_value_t = 100)]
        put_rate: u64,
        /// Key size of watch response
        #[arg(long = "key-size", default_value_t = 32)]
        key_size: usize,
        /// Value size of watch response
        #[arg(long = "val-size", default_value_t = 32)]
        val_size: usize,
    },
    /// Benchmark lease keepalive
    #[command(name = "lease-keepalive")]
    LeaseKeepalive {
        /// Total number of lease keepalive requests
        #[arg(long, default_value_t = 10000)]
        total: usize,
    },
    /// Run the same workloads against a fresh etcd and a fresh Ballast and compare them (exit
    /// status 3: everything ran, but a target was missed)
    Compare {
        /// A reduced set (a few minutes)
        #[arg(long)]
        quick: bool,
        /// Tiny totals and no files written: proves the orchestration, measures nothing
        #[arg(long = "dry-run")]
        dry_run: bool,
        /// The scale suite instead: a million keys of Kubernetes-shaped data in etcd 3.4,
        /// etcd 3.7 (--etcd37) and Ballast: load, footprint, big reads, compaction, restarts
        #[arg(long)]
        scale: bool,
        /// The scale suite with 100,000 keys (CI runs it)
        #[arg(long = "scale-quick")]
        scale_quick: bool,
        /// The reference etcd binary
        #[arg(long, default_value = "etcd")]
        etcd: PathBuf,
        /// etcd 3.7, the second reference of the scale suite
        #[arg(long)]
        etcd37: Option<PathBuf>,
        /// Scale suite: measure Ballast alone (while working on it; no ratios)
        #[arg(long = "ballast-only")]
        ballast_only: bool,
        /// Scale suite: copy each server's member log here
        #[arg(long)]
        logs: Option<PathBuf>,
        /// The ballast binary (default: beside this one)
        #[arg(long)]
        ballast: Option<PathBuf>,
        /// Where the table and chart go
        #[arg(long = "out-dir", default_value = "docs/benchmarks")]
        out_dir: PathBuf,
        /// etcd's own benchmark tool (scripts/etcd-benchmark builds it): also drive put and
        /// watch-latency with it, in rounds, unpinned and with the servers and the tool on
        /// separate CPUs
        #[arg(long = "etcd-benchmark")]
        etcd_benchmark: Option<PathBuf>,
        /// Rounds of the loads driven by etcd's benchmark tool
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Fill a fresh etcd and a fresh Ballast with the same data, then time a snapshot of each
    /// and measure how much its resident memory grows while it streams
    #[command(name = "snapshot-compare")]
    SnapshotCompare {
        /// The reference etcd binary
        #[arg(long, default_value = "etcd")]
        etcd: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// The etcdctl that saves the snapshots
        #[arg(long, default_value = "etcdctl")]
        etcdctl: PathBuf,
        /// Snapshots of each server, alternating
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Fill a fresh etcd 3.7 and a fresh Ballast with the same data, then read the whole
    /// prefix with one RangeStream and with many paging unary readers, measuring how much the
    /// member's resident memory grows
    #[command(name = "range-compare")]
    RangeCompare {
        /// The reference etcd binary (3.7 or later: it needs RangeStream)
        #[arg(long)]
        etcd: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Unary readers at once
        #[arg(long = "readers", default_value_t = 20)]
        readers: usize,
        /// Unary readers of etcd at once, if fewer (whole-keyspace answers it builds in
        /// memory may not fit the machine twenty times)
        #[arg(long = "etcd-readers")]
        etcd_readers: Option<usize>,
        /// Keys per unary page (kube-apiserver lists 500 at a time); 0: one unary Range of
        /// the whole keyspace per reader
        #[arg(long, default_value_t = 500)]
        page: i64,
        /// Reads of each server, alternating
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
}

/// The data a side-by-side measurement writes into both servers first, and where it reports.
#[derive(Args)]
struct DataArgs {
    /// The ballast binary (default: beside this one)
    #[arg(long)]
    ballast: Option<PathBuf>,
    /// MiB of values written before measuring
    #[arg(long = "data-mib", default_value_t = 1024)]
    data_mib: u64,
    /// Bytes per value
    #[arg(long = "value-size", default_value_t = 65536)]
    value_size: usize,
    /// Also write the table here
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What `compare` reports (exit status 3) when everything ran but some target was missed.
const TARGETS_MISSED: &str = "not every target was met";

/// The ballast binary: as given, or beside this one.
fn ballast_bin(given: &Option<PathBuf>) -> PathBuf {
    match given {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("ballast")))
            .unwrap_or_else(|| PathBuf::from("ballast")),
    }
}

/// Go's duration syntax for the common cases: `500ms`, `5s`, `1m`, `0`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("time: invalid duration \"{s}\""))?;
    let secs = match unit {
        "" if n == 0.0 => 0.0,
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("time: invalid duration \"{s}\"")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() {
    let cli = Cli::parse();
    let g = Global {
        endpoints: cli.endpoints.clone(),
        conns: cli.conns,
        clients: cli.clients,
        precise: cli.precise,
        dial_timeout: cli.dial_timeout,
        progress: true,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    let precise = g.precise;
    let render = |s: report::Stats| s.render(precise);
    let res = rt.block_on(async {
        match &cli.cmd {
            Cmd::Put(p) => workloads::put(&g, &p.args()).await.map(render),
            Cmd::Range {
                key,
                end,
                total,
                rate,
                consistency,
                limit,
                count_only,
            } => {
                let a = workloads::RangeArgs {
                    key: key.clone().into_bytes(),
                    end: end.clone().unwrap_or_default().into_bytes(),
                    total: *total,
                    rate: *rate,
                    consistency: consistency.clone(),
                    limit: *limit,
                    count_only: *count_only,
                };
                workloads::range(&g, &a).await.map(render)
            }
            Cmd::TxnPut { put, txn_ops } => {
                let a = workloads::TxnPutArgs {
                    put: put.args(),
                    txn_ops: *txn_ops,
                };
                workloads::txn_put(&g, &a).await.map(render)
            }
            Cmd::TxnMixed {
                key: _,
                end: _,
                load,
                end_key: _,
                limit,
                consistency,
                rw_ratio,
            } => {
                let a = workloads::TxnMixedArgs {
                    total: load.total,
                    rate: load.rate,
                    key_size: load.key_size,
                    val_size: load.val_size,
                    key_space_size: load.key_space_size,
                    limit: *limit,
                    consistency: consistency.clone(),
                    rw_ratio: *rw_ratio,
                };
                let kind = if consistency == "s" { "serializable" } else { "linearizable" };
                workloads::txn_mixed(&g, &a).await.map(|(r, w)| {
                    format!(
                        "bench with {kind} range\nTotal Read Ops: {}\nDetails:{}\nTotal Write Ops: {}\nDetails:{}\n",
                        r.lats.len() + r.errors.values().sum::<usize>(),
                        r.render(g.precise),
                        w.lats.len() + w.errors.values().sum::<usize>(),
                        w.render(g.precise),
                    )
                })
            }
            Cmd::Stm {
                isolation,
                keys,
                total,
                keys_per_txn,
                txn_wr_percent,
                stm_locker,
                val_size,
                rate,
            } => {
                let a = workloads::StmArgs {
                    isolation: isolation.clone(),
                    keys: *keys,
                    total: *total,
                    keys_per_txn: *keys_per_txn,
                    write_percent: *txn_wr_percent,
                    locker: stm_locker.clone(),
                    val_size: *val_size,
                    rate: *rate,
                };
                workloads::stm(&g, &a).await.map(render)
            }
            Cmd::Watch {
                streams,
                watch_per_stream,
                watched_key_total,
                put_rate,
                put_total,
                key_size,
                key_space_size,
                sequential_keys,
            } => {
                let a = workloads::WatchArgs {
                    streams: *streams,
                    watch_per_stream: *watch_per_stream,
                    watched_key_total: *watched_key_total,
                    put_rate: *put_rate,
                    put_total: *put_total,
                    key_size: *key_size,
                    key_space_size: *key_space_size,
                    sequential_keys: *sequential_keys,
                };
                workloads::watch(&g, &a).await.map(|(c, e)| {
                    format!(
                        "Watch creation summary:\n{}Watch events received summary:\n{}",
                        c.render(g.precise),
                        e.render(g.precise)
                    )
                })
            }
            Cmd::WatchGet {
                watchers,
                streams,
                events,
            } => {
                let a = workloads::WatchGetArgs {
                    watchers: *watchers,
                    streams: *streams,
                    events: *events,
                };
                workloads::watch_get(&g, &a)
                    .await
                    .map(|s| format!("Get during watch summary:\n{}", s.render(g.precise)))
            }
            Cmd::WatchLatency {
                total,
                put_rate,
                key_size,
                val_size,
            } => {
                let a = workloads::WatchLatencyArgs {
                    total: *total,
                    put_rate: *put_rate,
                    key_size: *key_size,
                    val_size: *val_size,
                };
                workloads::watch_latency(&g, &a).await.map(render)
            }
            Cmd::LeaseKeepalive { total } => {
                workloads::lease_keepalive(&g, *total).await.map(render)
            }
            Cmd::Compare {
                dry_run,
                scale,
                scale_quick,
                etcd,
                etcd37,
                ballast,
                out_dir,
                ballast_only,
                logs,
                ..
            } if *scale || *scale_quick => {
                let a = scale::ScaleArgs {
                    quick: *scale_quick,
                    dry_run: *dry_run,
                    etcd: etcd.clone(),
                    etcd37: etcd37.clone(),
                    ballast: ballast_bin(ballast),
                    out_dir: out_dir.clone(),
                    ballast_only: *ballast_only,
                    logs: logs.clone(),
                };
                match scale::run(&a).await {
                    Ok(true) => Ok(String::new()),
                    Ok(false) => Err(TARGETS_MISSED.to_string()),
                    Err(e) => Err(e),
                }
            }
            Cmd::Compare {
                quick,
                dry_run,
                etcd,
                ballast,
                out_dir,
                etcd_benchmark,
                rounds,
                ..
            } => {
                let a = compare::CompareArgs {
                    quick: *quick,
                    dry_run: *dry_run,
                    etcd: etcd.clone(),
                    ballast: ballast_bin(ballast),
                    out_dir: out_dir.clone(),
                    etcd_benchmark: etcd_benchmark.clone(),
                    rounds: (*rounds).max(1),
                    server_cpus: None,
                };
                match compare::run(&a).await {
                    Ok(true) => Ok(String::new()),
                    Ok(false) => Err(TARGETS_MISSED.to_string()),
                    Err(e) => Err(e),
                }
            }
            Cmd::SnapshotCompare {
                etcd,
                data,
                etcdctl,
                rounds,
            } => {
                let a = snapshot::SnapshotArgs {
                    etcd: etcd.clone(),
                    ballast: ballast_bin(&data.ballast),
                    data_mib: data.data_mib,
                    value_size: data.value_size,
                    etcdctl: etcdctl.clone(),
                    rounds: *rounds,
                    out: data.out.clone(),
                };
                snapshot::run(&a).await
            }
            Cmd::RangeCompare {
                etcd,
                data,
                readers,
                etcd_readers,
                page,
                rounds,
            } => {
                let a = rangemem::RangeArgs {
                    etcd: etcd.clone(),
                    ballast: ballast_bin(&data.ballast),
                    data_mib: data.data_mib,
                    value_size: data.value_size,
                    clients: *readers,
                    etcd_clients: *etcd_readers,
                    page: *page,
                    rounds: *rounds,
                    out: data.out.clone(),
                };
                rangemem::run(&a).await
            }
        }
    });
    match res {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("{e}");
            // A comparison that ran but missed a target is told apart from one that failed.
            std::process::exit(if e == TARGETS_MISSED { 3 } else { 1 });
        }
    }
}
