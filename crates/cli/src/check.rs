//! `check perf` and `check datascale`, as etcdctl runs them: the same workload models, keys,
//! values, pass criteria and output lines.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::kv_client::KvClient;
use ballast_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{connect, prefix_end, Cli, Failure};

/// etcdctl's exit codes for these commands.
const EXIT_INVALID_INPUT: u8 = 3;
const EXIT_BAD_FEATURE: u8 = 4;

#[derive(clap::Subcommand, Debug)]
pub enum CheckCmd {
    /// Check the performance of the etcd cluster
    #[command(
        mut_arg("load", |a| a.help("The performance check's workload model. Accepted workloads: s(small), m(medium), l(large), xl(xLarge). Different workload models use different configurations in terms of number of clients and expected throughput.")),
        mut_arg("prefix", |a| a.default_value("/etcdctl-check-perf/").help("The prefix for writing the performance check's keys."))
    )]
    Perf(CheckFlags),
    /// Check the memory usage of holding data for different workloads on a given server endpoint.
    #[command(
        mut_arg("load", |a| a.help("The datascale check's workload model. Accepted workloads: s(small), m(medium), l(large), xl(xLarge)")),
        mut_arg("prefix", |a| a.default_value("/etcdctl-check-datascale/").help("The prefix for writing the datascale check's keys."))
    )]
    Datascale(CheckFlags),
}

/// Both checks' flags; their words and the prefix's default are each check's (etcdctl's).
#[derive(clap::Args, Debug)]
pub struct CheckFlags {
    #[arg(long, default_value = "s")]
    load: String,
    // Each check sets its own default.
    #[arg(long, default_value = "")]
    prefix: String,
    #[arg(
        long = "auto-compact",
        help = "Compact storage with last revision after test is finished."
    )]
    auto_compact: bool,
    #[arg(
        long = "auto-defrag",
        help = "Defragment storage after test is finished."
    )]
    auto_defrag: bool,
}

fn model(load: &str) -> Result<usize, Failure> {
    match load {
        "s" | "small" => Ok(0),
        "m" | "medium" => Ok(1),
        "l" | "large" => Ok(2),
        "xl" | "xLarge" => Ok(3),
        other => Err(Failure::Exit(
            EXIT_BAD_FEATURE,
            format!("unknown load option {other}"),
        )),
    }
}

/// (writes/s limit, clients) per model, 60 s each.
const PERF: [(u64, usize); 4] = [(150, 50), (1000, 200), (8000, 500), (15000, 1000)];
/// (keys, clients) per model; 512-byte keys and values.
const DATASCALE: [(u64, usize); 4] = [
    (10_000, 50),
    (100_000, 200),
    (1_000_000, 500),
    (3_000_000, 1000),
];

/// How long `check perf` runs: etcdctl's 60 s, unless the test suite shortens it.
fn perf_seconds() -> u64 {
    std::env::var("BALLASTCTL_CHECK_PERF_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// Go's `binary.PutVarint` of a random number into a zeroed key of `size` bytes.
fn random_key(prefix: &str, size: usize, state: &mut u64) -> Vec<u8> {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let n = (*state >> 1) as i64;
    let mut zz = ((n << 1) ^ (n >> 63)) as u64;
    let mut k = vec![0u8; size];
    let mut i = 0;
    while zz >= 0x80 {
        k[i] = (zz as u8) | 0x80;
        zz >>= 7;
        i += 1;
    }
    k[i] = zz as u8;
    let mut key = prefix.as_bytes().to_vec();
    key.extend_from_slice(&k);
    key
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t | 1
}

/// Latencies of finished requests and how many failed, by message.
#[derive(Default)]
struct Results {
    secs: Vec<f64>,
    errors: std::collections::BTreeMap<String, u64>,
}

/// A put workload: `clients` connections, `total` puts or until `deadline`, paced to `rate`
/// per second if given.
struct Load {
    clients: usize,
    total: Option<u64>,
    rate: Option<u64>,
    deadline: Option<Instant>,
    value: Vec<u8>,
}

async fn load(
    cli: &Cli,
    w: Load,
    mut next_key: impl FnMut() -> Vec<u8>,
    mut on_done: impl FnMut(u64),
) -> Result<(Results, Duration), Failure> {
    let Load {
        clients,
        total,
        rate,
        deadline,
        value,
    } = w;
    let ep = cli.endpoints.first().cloned().unwrap_or_default();
    let (tx, rx) = mpsc::channel::<PutRequest>(clients);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let results = Arc::new(Mutex::new(Results::default()));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let mut kv = crate::limited!(KvClient::new(connect(cli, &ep).await?));
        let (rx, results, done) = (rx.clone(), results.clone(), done_tx.clone());
        workers.spawn(async move {
            loop {
                let Some(req) = rx.lock().await.recv().await else {
                    return;
                };
                let t = Instant::now();
                let r = kv.put(req).await;
                let mut res = results.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(_) => res.secs.push(t.elapsed().as_secs_f64()),
                    Err(s) => *res.errors.entry(s.message().to_string()).or_default() += 1,
                }
                let _ = done.send(());
            }
        });
    }
    drop(done_tx);
    let start = Instant::now();
    let producer = async {
        let mut tick = rate.map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r as f64)));
        let mut sent = 0u64;
        loop {
            if total.is_some_and(|t| sent >= t) || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            let req = PutRequest {
                key: next_key(),
                value: value.clone(),
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                break;
            }
            sent += 1;
        }
        drop(tx);
    };
    let progress = async {
        let mut n = 0;
        while done_rx.recv().await.is_some() {
            n += 1;
            on_done(n);
        }
    };
    tokio::join!(producer, progress);
    while workers.join_next().await.is_some() {}
    let took = start.elapsed();
    let r = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((r, took))
}

async fn ensure_empty(
    kv: &mut KvClient<crate::Conn>,
    prefix: &str,
    hint: &str,
) -> Result<(), Failure> {
    let r = kv
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            limit: 1,
            ..Default::default()
        })
        .await
        .map_err(Failure::Grpc)?
        .into_inner();
    if r.kvs.is_empty() {
        Ok(())
    } else {
        Err(Failure::Exit(
            EXIT_INVALID_INPUT,
            format!("prefix {prefix:?} has keys. Delete with {hint} first"),
        ))
    }
}

/// Deletes the check's keys, then compacts and defragments if asked.
async fn clean_up(
    cli: &Cli,
    kv: &mut KvClient<crate::Conn>,
    prefix: &str,
    f: &CheckFlags,
) -> Result<(), Failure> {
    let del = kv
        .delete_range(DeleteRangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        })
        .await
        .map_err(Failure::Grpc)?
        .into_inner();
    if f.auto_compact {
        let rev = del.header.map(|h| h.revision).unwrap_or(0);
        kv.compact(ballast_api::etcdserverpb::CompactionRequest {
            revision: rev,
            physical: true,
        })
        .await
        .map_err(Failure::Grpc)?;
        println!("Compacted with revision {rev}");
    }
    if f.auto_defrag {
        crate::defrag(cli, &cli.endpoints, cli.command_timeout).await?;
    }
    Ok(())
}

fn stddev(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
}

fn print_errors(r: &Results) -> bool {
    if r.errors.is_empty() {
        return false;
    }
    println!("FAIL: too many errors");
    for (msg, n) in &r.errors {
        println!("FAIL: ERROR({msg}) -> {n}");
    }
    true
}

pub async fn run(cli: &Cli, cmd: &CheckCmd) -> Result<(), Failure> {
    let ep = cli.endpoints.first().cloned().unwrap_or_default();
    let mut kv = crate::limited!(KvClient::new(connect(cli, &ep).await?));
    let tty = std::io::stdout().is_terminal();
    match cmd {
        CheckCmd::Perf(f) => {
            let (limit, clients) = PERF[model(&f.load)?];
            let prefix = f.prefix.clone();
            ensure_empty(&mut kv, &prefix, &format!("etcdctl del --prefix {prefix}")).await?;
            let secs = perf_seconds();
            let mut state = seed();
            let started = Instant::now();
            let work = Load {
                clients,
                total: None,
                rate: Some(limit),
                deadline: Some(started + Duration::from_secs(secs)),
                value: vec![0u8; 1024],
            };
            let (r, took) = load(
                cli,
                work,
                || random_key(&prefix, 256, &mut state),
                |_| {
                    if tty {
                        let s = started.elapsed().as_secs().min(secs);
                        print!("\r {s} / {secs} {:.2}%", s as f64 * 100.0 / secs as f64);
                        let _ = std::io::stdout().flush();
                    }
                },
            )
            .await?;
            if tty {
                println!();
            }
            clean_up(cli, &mut kv, &prefix, f).await?;
            let mut ok = !print_errors(&r);
            let rps = r.secs.len() as f64 / took.as_secs_f64();
            if rps / limit as f64 <= 0.9 {
                println!("FAIL: Throughput too low: {} writes/s", rps as i64 + 1);
                ok = false;
            } else {
                println!("PASS: Throughput is {} writes/s", rps as i64 + 1);
            }
            let slowest = r.secs.iter().copied().fold(0.0, f64::max);
            if slowest > 0.5 {
                println!("Slowest request took too long: {slowest:.6}s");
                ok = false;
            } else {
                println!("PASS: Slowest request took {slowest:.6}s");
            }
            let sd = stddev(&r.secs);
            if sd > 0.1 {
                println!("Stddev too high: {sd:.6}s");
                ok = false;
            } else {
                println!("PASS: Stddev is {sd:.6}s");
            }
            if ok {
                println!("PASS");
                Ok(())
            } else {
                println!("FAIL");
                Err(Failure::Exit(crate::EXIT_ERROR, String::new()))
            }
        }
        CheckCmd::Datascale(f) => {
            let (total, clients) = DATASCALE[model(&f.load)?];
            let prefix = f.prefix.clone();
            ensure_empty(&mut kv, &prefix, &format!("etcdctl del --prefix {prefix}")).await?;
            let Some(before) = resident_bytes(&ep).await else {
                println!(
                    "FAIL: Could not read process_resident_memory_bytes before the put operations."
                );
                return Err(Failure::Exit(crate::EXIT_ERROR, String::new()));
            };
            println!(
                "Start data scale check for work load [{total} key-value pairs, 1024 bytes per key-value, {clients} concurrent clients]."
            );
            let mut state = seed();
            let work = Load {
                clients,
                total: Some(total),
                rate: None,
                deadline: None,
                value: vec![0u8; 512],
            };
            let (r, _) = load(
                cli,
                work,
                || random_key(&prefix, 512, &mut state),
                |n| {
                    if tty && n % 100 == 0 {
                        print!("\r {n} / {total}");
                        let _ = std::io::stdout().flush();
                    }
                },
            )
            .await?;
            if tty {
                println!();
            }
            let Some(after) = resident_bytes(&ep).await else {
                println!(
                    "FAIL: Could not read process_resident_memory_bytes after the put operations."
                );
                return Err(Failure::Exit(crate::EXIT_ERROR, String::new()));
            };
            clean_up(cli, &mut kv, &prefix, f).await?;
            if print_errors(&r) {
                return Err(Failure::Exit(crate::EXIT_ERROR, String::new()));
            }
            let mb = (after - before) / (1024.0 * 1024.0);
            println!("PASS: Approximate system memory used : {mb:.2} MB.");
            Ok(())
        }
    }
}

/// `process_resident_memory_bytes` from the endpoint's `/metrics`.
async fn resident_bytes(ep: &str) -> Option<f64> {
    let host = ep.split("://").last()?.trim_end_matches('/');
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await
        .ok()?
        .ok()?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_go_varints_in_a_zeroed_buffer() {
        let mut st = 12345;
        let k = random_key("/p/", 256, &mut st);
        assert_eq!(k.len(), 3 + 256);
        assert!(k.starts_with(b"/p/"));
        assert!(k[3..].iter().rev().take(200).all(|b| *b == 0));
        assert_ne!(random_key("/p/", 256, &mut st), k);
    }

    #[test]
    fn unknown_loads_are_refused_as_etcdctl_does() {
        assert!(matches!(model("xLarge"), Ok(3)));
        assert!(
            matches!(model("huge"), Err(Failure::Exit(4, m)) if m == "unknown load option huge")
        );
    }
}
