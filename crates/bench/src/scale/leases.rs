//! The scale suite's leases: many leases kept alive by many clients over keep-alive streams
//! (every lease renewed three times per TTL, as clients do), then many leases, each holding
//! a key, left to expire at once.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::kv_client::KvClient;
use ballast_api::etcdserverpb::lease_client::LeaseClient;
use ballast_api::etcdserverpb::{
    request_op, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use tokio::sync::Mutex;

use crate::report::Stats;
use crate::snapshot::cpu_ticks;

use super::conn;
use super::node::Node;

pub(crate) struct LeasePlan {
    pub(crate) leases: usize,
    pub(crate) clients: usize,
    pub(crate) ttl: i64,
    /// How long the keep-alives run.
    pub(crate) window: Duration,
    /// Leases left to expire at once, each with one key.
    pub(crate) expiring: usize,
    pub(crate) expiring_ttl: i64,
}

#[derive(Default)]
pub(crate) struct LeaseMeasured {
    pub(crate) grants_per_sec: f64,
    /// Keep-alive round trips (request to its response on the same stream).
    pub(crate) keepalives: Stats,
    /// Leases granted and kept alive in time that were gone at the end, or answered with no
    /// TTL left.
    pub(crate) lost: usize,
    pub(crate) cpu: f64,
    /// From the expiring leases' deadline until the last of their keys is gone.
    pub(crate) expiry_secs: f64,
}

/// How long expired leases may take to go before the run gives up.
const EXPIRY_LIMIT: Duration = Duration::from_secs(600);
/// Keep-alive requests in flight per stream before the sender waits.
const STREAM_QUEUE: usize = 1024;
const EXPIRING_PREFIX: &str = "/registry/events/expiring/";

/// `n` leases of `ttl` seconds granted by `clients` clients at once.
async fn grant(ep: &str, n: usize, clients: usize, ttl: i64) -> Result<Vec<i64>, String> {
    let mut tasks = tokio::task::JoinSet::new();
    let per = n.div_ceil(clients.max(1));
    for c in 0..clients.max(1) {
        let count = per.min(n.saturating_sub(c * per));
        let ep = ep.to_string();
        tasks.spawn(async move {
            let mut lc = LeaseClient::new(conn(&ep).await?);
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                let r = lc
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .map_err(|e| format!("lease grant: {}", e.message()))?;
                ids.push(r.into_inner().id);
            }
            Ok::<_, String>(ids)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

/// One client's keep-alive stream for `ids`, each renewed every `every` until `until`.
async fn keep_alive(
    ep: String,
    ids: Vec<i64>,
    every: Duration,
    until: Instant,
) -> Result<(Stats, usize), String> {
    let mut lc = LeaseClient::new(conn(&ep).await?);
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
    let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    // The first request goes before the call: a Go server sends its headers with the first
    // response.
    let Some(&first) = ids.first() else {
        return Ok((Stats::default(), 0));
    };
    sent.lock().await.push_back(Instant::now());
    tx.send(LeaseKeepAliveRequest { id: first })
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = lc
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("keep-alive: {}", e.message()))?
        .into_inner();
    let sender = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut round = Instant::now();
            let mut skip_first = true;
            while round < until {
                for &id in &ids {
                    if std::mem::take(&mut skip_first) {
                        continue;
                    }
                    sent.lock().await.push_back(Instant::now());
                    if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                        return;
                    }
                }
                round += every;
                tokio::time::sleep_until(round.into()).await;
            }
        })
    };
    let mut stats = Stats::default();
    let mut lost = 0;
    loop {
        match stream.message().await {
            Ok(Some(r)) => {
                if let Some(t) = sent.lock().await.pop_front() {
                    stats.lats.push(t.elapsed().as_secs_f64());
                }
                if r.ttl <= 0 {
                    lost += 1;
                }
                if sender.is_finished() && sent.lock().await.is_empty() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                *stats.errors.entry(e.message().to_string()).or_default() += 1;
                break;
            }
        }
    }
    Ok((stats, lost))
}

pub(crate) async fn measure(node: &Node, plan: &LeasePlan) -> Result<LeaseMeasured, String> {
    let ep = node.endpoint();
    let mut m = LeaseMeasured::default();
    let started = Instant::now();
    let ids = grant(&ep, plan.leases, plan.clients, plan.ttl).await?;
    m.grants_per_sec = ids.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);

    // Every lease renewed three times per TTL, its clients' streams spread over the window.
    let pid = node.pid();
    let cpu = cpu_ticks(pid);
    let every = Duration::from_secs_f64(plan.ttl as f64 / 3.0);
    let until = Instant::now() + plan.window;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..plan.clients.max(1) {
        let mine: Vec<i64> = ids
            .iter()
            .skip(c)
            .step_by(plan.clients.max(1))
            .copied()
            .collect();
        tasks.spawn(keep_alive(ep.clone(), mine, every, until));
    }
    let mut all = Stats::default();
    while let Some(r) = tasks.join_next().await {
        let (s, lost) = r.map_err(|e| e.to_string())??;
        all.merge(s);
        m.lost += lost;
    }
    m.keepalives = all.finish(plan.window);
    m.cpu = cpu_ticks(pid).saturating_sub(cpu) as f64 / 100.0;
    // Every lease kept alive must still be there.
    let listed: HashSet<i64> = LeaseClient::new(conn(&ep).await?)
        .lease_leases(LeaseLeasesRequest {})
        .await
        .map_err(|e| format!("lease leases: {}", e.message()))?
        .into_inner()
        .leases
        .iter()
        .map(|l| l.id)
        .collect();
    m.lost += ids.iter().filter(|id| !listed.contains(id)).count();

    // Leases left to expire together, one key each.
    let expiring = grant(&ep, plan.expiring, plan.clients, plan.expiring_ttl).await?;
    let deadline = Instant::now() + Duration::from_secs(plan.expiring_ttl.max(0) as u64);
    let mut kv = KvClient::new(conn(&ep).await?);
    // A hundred keys a transaction, so all are written well within the TTL.
    for (b, batch) in expiring.chunks(100).enumerate() {
        let success = batch
            .iter()
            .enumerate()
            .map(|(i, id)| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("{EXPIRING_PREFIX}{:08}", b * 100 + i).into_bytes(),
                    value: vec![b'e'; 200],
                    lease: *id,
                    ..Default::default()
                })),
            })
            .collect();
        kv.txn(TxnRequest {
            success,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("txn: {}", e.message()))?;
    }
    loop {
        let left = kv
            .range(RangeRequest {
                key: EXPIRING_PREFIX.as_bytes().to_vec(),
                range_end: b"/registry/events/expiring0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("range: {}", e.message()))?
            .into_inner()
            .count;
        if left == 0 {
            break;
        }
        if deadline.elapsed() > EXPIRY_LIMIT {
            return Err(format!("{left} expired leases' keys still there"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.expiry_secs = deadline.elapsed().as_secs_f64();
    Ok(m)
}
