//! Scenario 12: leases kept alive across leader changes never expire, and leases left alone
//! never expire before their TTL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::kv_client::KvClient;
use ballast_api::etcdserverpb::lease_client::LeaseClient;
use ballast_api::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, MoveLeaderRequest,
    PutRequest, RangeRequest,
};

use crate::cluster::{channel as connect, Error};
use crate::scenario::{Figures, Run, Setup};
use crate::workload::Endpoints;

const KEPT_TTL: i64 = 10;
const SHORT_TTL: i64 = 4;

/// Asks the member at `via` to hand leadership to `target`.
pub async fn move_leader(via: &str, target: u64) -> Result<(), Error> {
    let mut m = MaintenanceClient::new(connect(via).await?);
    m.move_leader(MoveLeaderRequest { target_id: target })
        .await
        .map_err(|e| e.message().to_string())?;
    Ok(())
}

fn pick(endpoints: &Endpoints, n: usize) -> String {
    let eps = endpoints.lock().unwrap_or_else(|p| p.into_inner());
    eps[n % eps.len()].clone()
}

/// Grants a lease and attaches `key` to it, trying members in turn. Returns (lease id, the
/// instant the grant was sent).
async fn grant(endpoints: &Endpoints, ttl: i64, key: &str) -> Result<(i64, Instant), Error> {
    for attempt in 0..20 {
        let ep = pick(endpoints, attempt);
        let Ok(ch) = connect(&ep).await else { continue };
        let sent = Instant::now();
        let Ok(g) = LeaseClient::new(ch.clone())
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let id = g.into_inner().id;
        let put = KvClient::new(ch)
            .put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"leased".to_vec(),
                lease: id,
                ..Default::default()
            })
            .await;
        if put.is_ok() {
            return Ok((id, sent));
        }
    }
    Err(format!("could not grant a lease for {key}"))
}

/// Keeps `id` alive once a second through whichever member answers; returns the longest gap
/// between acknowledged keep-alives.
async fn keeper(endpoints: Endpoints, id: i64, stop: Arc<AtomicBool>, gap: Arc<Mutex<Duration>>) {
    let mut last_ok = Instant::now();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let Ok(ch) = connect(&pick(&endpoints, n)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let Ok(resp) = LeaseClient::new(ch)
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        else {
            continue;
        };
        let mut stream = resp.into_inner();
        while !stop.load(Ordering::Relaxed) {
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl > 0 => {
                    let mut g = gap.lock().unwrap_or_else(|p| p.into_inner());
                    *g = (*g).max(last_ok.elapsed());
                    last_ok = Instant::now();
                }
                _ => break,
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Polls `key` until it is gone; returns when that was first seen.
async fn watch_expiry(endpoints: Endpoints, key: String, limit: Duration) -> Option<Instant> {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < limit {
        n += 1;
        if let Ok(ch) = connect(&pick(&endpoints, n)).await {
            let mut kv = KvClient::new(ch);
            while start.elapsed() < limit {
                let r = kv
                    .range(RangeRequest {
                        key: key.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(r) if r.get_ref().kvs.is_empty() => return Some(Instant::now()),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(_) => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

pub async fn lease_keepalive(setup: &Setup) -> Result<Figures, Error> {
    let mut r = Run::start("lease-keepalive", 3, setup, &[]).await?;
    let (kept, _) = grant(&r.endpoints, KEPT_TTL, "lease/kept").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let gap = Arc::new(Mutex::new(Duration::ZERO));
    tokio::spawn(keeper(r.endpoints.clone(), kept, stop.clone(), gap.clone()));
    for round in 0..2 {
        let key = format!("lease/short{round}");
        let (_, sent) = grant(&r.endpoints, SHORT_TTL, &key).await?;
        let expiry = tokio::spawn(watch_expiry(
            r.endpoints.clone(),
            key.clone(),
            Duration::from_secs(30),
        ));
        r.kill_leader_round().await?;
        match expiry.await.ok().flatten() {
            Some(gone) => {
                let lived = gone.duration_since(sent);
                if lived < Duration::from_secs(SHORT_TTL as u64) {
                    r.problem(format!(
                        "{key} expired after {lived:?}, before its {SHORT_TTL} s TTL"
                    ));
                }
            }
            None => r.problem(format!("{key} never expired")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let gap = *gap.lock().unwrap_or_else(|p| p.into_inner());
    if gap >= Duration::from_secs(KEPT_TTL as u64) {
        r.problem(format!(
            "keep-alives paused for {gap:?}: longer than the TTL, nothing proven"
        ));
    }
    // The kept lease and its key must have survived every leader change.
    let ep = pick(&r.endpoints, 0);
    let ch = connect(&ep).await?;
    let ttl = LeaseClient::new(ch.clone())
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: kept,
            keys: true,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    if ttl.ttl <= 0 || ttl.keys.is_empty() {
        r.problem(format!(
            "kept-alive lease expired (ttl {}, keys {})",
            ttl.ttl,
            ttl.keys.len()
        ));
    }
    Ok(r.finish().await)
}
