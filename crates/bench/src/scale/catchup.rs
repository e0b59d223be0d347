//! Catch-up: a new member added to the loaded one (`member add --learner`, as a careful
//! operator adds one: a voter added to a lone member would stop its writes until it caught
//! up) and started, until it has applied the leader's index — the whole data set sent as a
//! snapshot. Measured: how long that takes, the leader's RSS growth and CPU meanwhile, and the
//! p99 of puts at a fixed rate on the leader without and during it.

use std::path::Path;
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::cluster_client::ClusterClient;
use ballast_api::etcdserverpb::{MemberAddRequest, MemberRemoveRequest};

use super::heartbeats;
use super::node::Node;
use crate::report::Stats;

/// The put load around the catch-up.
pub(crate) struct CatchupPlan {
    pub(crate) rate: u64,
    pub(crate) window: Duration,
}

#[derive(Default)]
pub(crate) struct CatchupMeasured {
    pub(crate) secs: f64,
    pub(crate) leader_rss_growth: u64,
    pub(crate) leader_cpu: f64,
    pub(crate) puts_quiet: Stats,
    pub(crate) puts_during: Stats,
}

pub(crate) async fn measure(
    leader: &Node,
    bin: &Path,
    extra: &[String],
    plan: &CatchupPlan,
) -> Result<CatchupMeasured, String> {
    let puts_quiet = heartbeats(leader.endpoint(), plan.rate, plan.window, 0).await?;
    crate::compare::settle();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut joiner = Node::joining(bin, dir.path(), extra, leader)?;
    let mut cluster = ClusterClient::new(super::conn(&leader.endpoint()).await?);
    let added = cluster
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![joiner.peer_url()],
            is_learner: true,
        })
        .await
        .map_err(|e| format!("member add: {}", e.message()))?
        .into_inner();
    let id = added.member.map_or(0, |m| m.id);
    let target = leader.status().await?.raft_index;
    let during = tokio::spawn(heartbeats(leader.endpoint(), plan.rate, plan.window, 1));
    let caught_up = crate::rangemem::measure(leader.pid(), async {
        let started = joiner.spawn()?;
        loop {
            if let Ok(st) = joiner.status().await {
                if st.raft_applied_index >= target {
                    return Ok(0);
                }
            }
            joiner.check_running(started)?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let puts_during = during.await.map_err(|e| e.to_string())??;
    for (what, s) in [("without", &puts_quiet), ("during", &puts_during)] {
        if let Some((e, n)) = s.errors.iter().next() {
            return Err(format!("puts {what} the catch-up: {n} × {e}"));
        }
    }
    cluster
        .member_remove(MemberRemoveRequest { id })
        .await
        .map_err(|e| format!("member remove: {}", e.message()))?;
    joiner.stop(false)?;
    let settled = Instant::now();
    // The lone member again: wait until it takes writes before the next phase.
    while leader.status().await.is_err() && settled.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(CatchupMeasured {
        secs: caught_up.secs,
        leader_rss_growth: caught_up.rss_peak.saturating_sub(caught_up.rss_before),
        leader_cpu: caught_up.cpu_secs,
        puts_quiet,
        puts_during,
    })
}
