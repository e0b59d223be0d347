//! Auto-compaction (`--auto-compaction-mode`/`--auto-compaction-retention`), run by whoever
//! leads, through raft like a client's `Compact`:
//! * periodic: every `min(retention, 1h)`, compact to the revision the store had `retention`
//!   ago (revisions are sampled ten times per interval);
//! * revision: every 5 minutes, compact to `current - retention`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ballast_api::ballast::internal::raft_request;
use ballast_api::etcdserverpb::CompactionRequest;

use ballast_raft::RaftStatus;
use tokio::sync::watch;

use crate::config::AutoCompaction;
use crate::member::proposer::Proposer;
use crate::member::store::Store;

/// etcd's revision-mode interval.
const REVISION_INTERVAL: Duration = Duration::from_secs(300);

/// Revisions sampled over time, to find the one the store had a retention period ago.
#[derive(Default)]
pub struct Samples(VecDeque<(Instant, i64)>);

impl Samples {
    pub fn record(&mut self, at: Instant, rev: i64, retention: Duration) {
        self.0.push_back((at, rev));
        // Keep one sample at least `retention` old; older ones are never needed again.
        while self.0.len() > 1 && self.0[1].0 + retention <= at {
            self.0.pop_front();
        }
    }

    /// The newest revision sampled at least `retention` before `now`.
    pub fn target(&self, now: Instant, retention: Duration) -> Option<i64> {
        self.0
            .iter()
            .rev()
            .find(|(t, _)| *t + retention <= now)
            .map(|(_, r)| *r)
    }
}

/// Where revision mode compacts to, if anywhere.
pub fn revision_target(current: i64, compacted: i64, retention: i64) -> Option<i64> {
    let target = current - retention;
    (target > 0 && target > compacted).then_some(target)
}

async fn compact(proposer: &Proposer, store: &Store, rev: i64) {
    if rev <= store.current().compact_rev() {
        return;
    }
    tracing::info!(revision = rev, "starting auto-compaction");
    let req = raft_request::Request::Compaction(CompactionRequest {
        revision: rev,
        physical: false,
    });
    match proposer.propose(req, &crate::auth::member()).await {
        Ok(_) => tracing::info!(revision = rev, "finished auto-compaction"),
        Err(e) => tracing::warn!(revision = rev, error = %e, "auto-compaction failed"),
    }
}

/// Compacts as `mode` says while this member leads; runs for the member's life.
pub async fn run(
    mode: AutoCompaction,
    proposer: Proposer,
    store: Store,
    status: watch::Receiver<RaftStatus>,
) {
    let leading = || status.borrow().is_leader;
    match mode {
        AutoCompaction::Off => {}
        AutoCompaction::Revision(keep) => loop {
            tokio::time::sleep(REVISION_INTERVAL).await;
            if leading() {
                let m = store.current();
                if let Some(rev) = revision_target(m.current_rev(), m.compact_rev(), keep) {
                    compact(&proposer, &store, rev).await;
                }
            }
        },
        AutoCompaction::Periodic(retention) => {
            let interval = retention.min(Duration::from_secs(3600));
            let tick = interval / 10;
            let mut samples = Samples::default();
            let mut last = Instant::now();
            loop {
                let now = Instant::now();
                samples.record(now, store.current().current_rev(), retention);
                if now >= last + interval {
                    last = now;
                    let target = samples.target(now, retention);
                    if let (true, Some(rev)) = (leading(), target) {
                        compact(&proposer, &store, rev).await;
                    }
                }
                tokio::time::sleep(tick).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_targets_the_revision_from_one_retention_ago() {
        let t0 = Instant::now();
        let retention = Duration::from_secs(10);
        let mut s = Samples::default();
        for i in 0..30u64 {
            s.record(t0 + Duration::from_secs(i), 100 + i as i64, retention);
        }
        let now = t0 + Duration::from_secs(29);
        assert_eq!(s.target(now, retention), Some(119));
        assert!(s.0.len() <= 12, "old samples are dropped");
        let mut young = Samples::default();
        young.record(t0, 5, retention);
        assert_eq!(young.target(t0 + Duration::from_secs(9), retention), None);
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        assert_eq!(revision_target(1000, -1, 100), Some(900));
        assert_eq!(revision_target(1000, 900, 100), None);
        assert_eq!(revision_target(50, -1, 100), None);
    }
}
