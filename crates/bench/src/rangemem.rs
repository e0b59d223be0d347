//! `range-compare`: the same data in a fresh etcd 3.7 and a fresh Ballast (one member each),
//! then the two ways a client reads a whole large prefix, measured by how much the member's
//! resident memory grows while it answers: one `KV.RangeStream` of the prefix, and `clients`
//! unary `Range`s at once, each paging through the prefix with `--limit` as kube-apiserver
//! lists. etcd's out-of-memory kills on large lists are its most-reported failure.

use std::path::PathBuf;
use std::time::Instant;

use ballast_api::etcdserverpb::kv_client::KvClient;
use ballast_api::etcdserverpb::RangeRequest;
use tokio_stream::StreamExt;

use crate::compare;
use crate::snapshot::{cpu_ticks, filled_pair, median, mib, vm_rss, RssPeak};

pub struct RangeArgs {
    /// etcd 3.7 or later (RangeStream).
    pub etcd: PathBuf,
    pub ballast: PathBuf,
    pub data_mib: u64,
    pub value_size: usize,
    /// Concurrent unary readers.
    pub clients: usize,
    /// Concurrent unary readers of etcd, if fewer (twenty whole-keyspace answers built in
    /// memory would not fit this machine).
    pub etcd_clients: Option<usize>,
    /// Keys per unary page.
    pub page: i64,
    pub rounds: usize,
    pub out: Option<PathBuf>,
}

impl RangeArgs {
    /// Unary readers of `kind` at once.
    fn readers(&self, kind: compare::Kind) -> usize {
        match kind {
            compare::Kind::Etcd => self.etcd_clients.unwrap_or(self.clients),
            _ => self.clients,
        }
    }
}

/// One read of the whole prefix by some clients: wall time, bytes received, the member's
/// CPU and its resident memory before and at its peak.
pub(crate) struct Measured {
    pub(crate) secs: f64,
    pub(crate) bytes: u64,
    pub(crate) cpu_secs: f64,
    pub(crate) rss_before: u64,
    pub(crate) rss_peak: u64,
}

async fn client(ep: &str) -> Result<KvClient<tonic::transport::Channel>, String> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{ep}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{ep}: {e}"))?;
    Ok(KvClient::new(ch)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// The whole keyspace as one RangeStream, or as much of it as arrives before `until`; returns
/// the bytes of values received.
pub(crate) async fn stream_all(ep: String, until: Option<Instant>) -> Result<u64, String> {
    let mut kv = client(&ep).await?;
    let req = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let mut s = kv
        .range_stream(req)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut bytes = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let kvs = chunk.range_response.map(|r| r.kvs).unwrap_or_default();
        bytes += kvs.iter().map(|k| k.value.len() as u64).sum::<u64>();
        if past(until) {
            break;
        }
    }
    Ok(bytes)
}

/// Whether a reader's time is up.
fn past(until: Option<Instant>) -> bool {
    until.is_some_and(|t| Instant::now() >= t)
}

/// `clients` whole-keyspace RangeStreams at once, each stopping at `until`; returns the bytes
/// of values received.
pub(crate) async fn streamed_by(
    ep: String,
    clients: usize,
    until: Option<Instant>,
) -> Result<u64, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        tasks.spawn(stream_all(ep.clone(), until));
    }
    sum_of(tasks).await
}

/// The sum of what every task returned, or the first error.
async fn sum_of(mut tasks: tokio::task::JoinSet<Result<u64, String>>) -> Result<u64, String> {
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r.map_err(|e| e.to_string())??;
    }
    Ok(total)
}

/// The whole keyspace in pages of `page` keys, each page a unary Range from the last key on,
/// until the last page or `until`.
async fn page_all(ep: String, page: i64, until: Option<Instant>) -> Result<u64, String> {
    let mut kv = client(&ep).await?;
    let mut key = vec![0];
    let mut bytes = 0u64;
    loop {
        let r = kv
            .range(RangeRequest {
                key: key.clone(),
                range_end: vec![0],
                limit: page,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        bytes += r.kvs.iter().map(|k| k.value.len() as u64).sum::<u64>();
        let Some(last) = r.kvs.last() else { break };
        if !r.more || past(until) {
            break;
        }
        key = last.key.clone();
        key.push(0);
    }
    Ok(bytes)
}

/// Runs `read` while sampling the resident memory of the member with process id `pid`.
pub(crate) async fn measure<F>(pid: u32, read: F) -> Result<Measured, String>
where
    F: std::future::Future<Output = Result<u64, String>>,
{
    let rss_before = vm_rss(pid);
    let cpu_before = cpu_ticks(pid);
    let sampler = RssPeak::start(pid);
    let started = Instant::now();
    let bytes = read.await;
    let secs = started.elapsed().as_secs_f64();
    let rss_peak = sampler.stop();
    Ok(Measured {
        secs,
        bytes: bytes?,
        cpu_secs: cpu_ticks(pid).saturating_sub(cpu_before) as f64 / 100.0,
        rss_before,
        rss_peak,
    })
}

/// The whole keyspace as one unary Range, drained as it arrives (no client could decode a
/// message of gigabytes twenty times over); returns the bytes of the answer.
async fn unary_all(ep: String) -> Result<u64, String> {
    let req = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let path = "/etcdserverpb.KV/Range";
    let (bytes, status) = crate::conn::unary_drained(
        &format!("http://{ep}"),
        path,
        &prost::Message::encode_to_vec(&req),
    )
    .await
    .map_err(|e| format!("{ep}: {e}"))?;
    if status != "0" {
        return Err(format!(
            "{ep}: whole-keyspace Range ended with grpc-status {status}"
        ));
    }
    Ok(bytes)
}

/// `clients` readers of the whole keyspace at once: in pages of `page` keys (stopping at
/// `until`), or with page 0 one unary Range each.
pub(crate) async fn paged_by(
    ep: String,
    clients: usize,
    page: i64,
    until: Option<Instant>,
) -> Result<u64, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        if page > 0 {
            tasks.spawn(page_all(ep.clone(), page, until));
        } else {
            tasks.spawn(unary_all(ep.clone()));
        }
    }
    sum_of(tasks).await
}

pub async fn run(a: &RangeArgs) -> Result<String, String> {
    let binaries = (a.etcd.as_path(), a.ballast.as_path());
    let mut servers: Vec<_> = filled_pair("range", binaries, a.data_mib, a.value_size)
        .await?
        .into_iter()
        .map(|(kind, cluster)| (kind, cluster, Vec::new(), Vec::new()))
        .collect();
    for round in 0..a.rounds.max(1) {
        for (kind, cluster, streamed, paged) in servers.iter_mut() {
            let ep = cluster.endpoints()[0].clone();
            compare::settle();
            eprintln!("range: round {round}, {kind:?}, RangeStream ...");
            streamed
                .push(measure(cluster.members[0].child.id(), stream_all(ep.clone(), None)).await?);
            compare::settle();
            let clients = a.readers(*kind);
            eprintln!("range: round {round}, {kind:?}, {clients} unary readers ...");
            paged.push(
                measure(
                    cluster.members[0].child.id(),
                    paged_by(ep, clients, a.page, None),
                )
                .await?,
            );
        }
    }
    let mut t = format!(
        "Whole-prefix reads of {} MiB of values ({}-byte values, 16-byte keys), one member \
         each, {} alternating rounds, on {}; etcd: {}. RSS growth is the member's peak \
         resident memory during the read less its resident memory before it.\n\n",
        a.data_mib,
        a.value_size,
        a.rounds.max(1),
        compare::machine(),
        compare::etcd_version(&a.etcd)
    );
    t.push_str("| server | read | values received | time (median) | member CPU (median) | RSS before | RSS growth (max) |\n");
    t.push_str("|---|---|---|---|---|---|---|\n");
    let mut growth = Vec::new();
    for (kind, _, streamed, paged) in &servers {
        for (what, runs) in [
            ("one RangeStream".to_string(), streamed),
            (
                if a.page > 0 {
                    format!("{} clients, unary pages of {}", a.readers(*kind), a.page)
                } else {
                    format!("{} clients, one unary Range each", a.readers(*kind))
                },
                paged,
            ),
        ] {
            let g = runs
                .iter()
                .map(|m| m.rss_peak.saturating_sub(m.rss_before))
                .max()
                .unwrap_or(0);
            growth.push(g);
            t.push_str(&format!(
                "| {kind:?} | {what} | {} | {:.2} s | {:.2} s | {} | {} |\n",
                mib(runs.first().map_or(0, |m| m.bytes)),
                median(runs.iter().map(|m| m.secs).collect()),
                median(runs.iter().map(|m| m.cpu_secs).collect()),
                mib(runs.first().map_or(0, |m| m.rss_before)),
                mib(g),
            ));
        }
    }
    if let [es, ep, bs, bp] = growth[..] {
        let ratio = |b: u64, e: u64| b as f64 / (e.max(1)) as f64;
        t.push_str(&format!(
            "\nBallast's RSS growth as a share of etcd's: RangeStream {:.2}x, unary {:.2}x.\n",
            ratio(bs, es),
            ratio(bp, ep)
        ));
    }
    if let Some(out) = &a.out {
        compare::write(out, &t)?;
    }
    Ok(t)
}
