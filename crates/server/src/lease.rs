//! The lessor: lease expiry, decided by the leader alone and applied through raft.
//!
//! Leases themselves (TTL, attached keys, last checkpointed remaining TTL) are replicated state
//! in the store. Deadlines are not: only the leader keeps them, in memory. On becoming leader
//! it gives every lease its checkpointed remaining TTL (or the full TTL) plus an election
//! timeout, so a leader change never expires a lease early; it then revokes leases whose
//! deadline passed through raft, and checkpoints remaining TTLs through raft every interval,
//! so the next leader does not restart them at their full TTL.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ballast_api::ballast::internal::raft_request::Request;
use ballast_api::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use ballast_raft::RaftStatus;
use ballast_state::Mvcc;
use tokio::sync::watch;

use crate::server::EtcdServer;

const TICK: Duration = Duration::from_millis(250);
/// Checkpoints per raft entry.
const CHECKPOINT_BATCH: usize = 1000;

#[derive(Default)]
struct State {
    leader: bool,
    deadlines: HashMap<i64, Instant>,
    revoking: HashSet<i64>,
    last_checkpoint: Option<Instant>,
}

pub struct Lessor {
    state: Mutex<State>,
    status: watch::Receiver<RaftStatus>,
    store: Box<dyn Fn() -> Arc<Mvcc> + Send + Sync>,
    /// Grace a new leader gives every lease: one election timeout.
    extension: Duration,
}

/// Whole seconds left, truncated as etcd reports them.
fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

impl Lessor {
    pub fn new(
        status: watch::Receiver<RaftStatus>,
        store: Box<dyn Fn() -> Arc<Mvcc> + Send + Sync>,
        extension: Duration,
    ) -> Lessor {
        Lessor {
            state: Mutex::default(),
            status,
            store,
            extension,
        }
    }

    /// Locks the state after bringing it in line with raft leadership, so no caller ever
    /// acts on a stale idea of who leads.
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let leader = self.status.borrow().is_leader;
        if leader && !st.leader {
            // Newly leading: nobody's deadline is known, so start from the last checkpoint
            // (or the full TTL), plus the time an election may have taken.
            let now = Instant::now();
            st.deadlines.clear();
            for l in (self.store)().lease_ttls() {
                let base = if l.remaining > 0 { l.remaining } else { l.ttl };
                let d = now + Duration::from_secs(base.max(0) as u64) + self.extension;
                st.deadlines.insert(l.id, d);
            }
            st.last_checkpoint = Some(now);
        } else if !leader && st.leader {
            st.deadlines.clear();
            st.revoking.clear();
        }
        st.leader = leader;
        st
    }

    /// On the leader: restarts a lease's TTL. `None` if this member is not the leader, or the
    /// lease does not exist (`Some(0)`, as etcd answers keep-alives for unknown leases).
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut st = self.lock();
        if !st.leader {
            return None;
        }
        let Some(lease) = (self.store)().lease_ttl(id) else {
            return Some(0);
        };
        if st.revoking.contains(&id) {
            return Some(0);
        }
        st.deadlines.insert(
            id,
            Instant::now() + Duration::from_secs(lease.ttl.max(0) as u64),
        );
        Some(lease.ttl)
    }

    /// A grant was applied: its clock starts now (on the leader; others keep no clocks).
    pub fn granted(&self, id: i64, ttl: i64) {
        let mut st = self.lock();
        if st.leader {
            st.deadlines
                .entry(id)
                .or_insert(Instant::now() + Duration::from_secs(ttl.max(0) as u64));
        }
    }

    /// On the leader: seconds left before lease `id` (of `ttl`) expires. `None` if not the
    /// leader. A lease granted since the last tick starts its clock now.
    pub fn remaining(&self, id: i64, ttl: i64) -> Option<i64> {
        let mut st = self.lock();
        if !st.leader {
            return None;
        }
        let now = Instant::now();
        let d = *st
            .deadlines
            .entry(id)
            .or_insert(now + Duration::from_secs(ttl.max(0) as u64));
        Some(secs(d.saturating_duration_since(now)))
    }

    /// Follows leadership, expires leases and checkpoints TTLs; runs for the member's life.
    pub async fn run(self: Arc<Self>, server: Arc<EtcdServer>, checkpoint_every: Duration) {
        let mut status = self.status.clone();
        loop {
            // Wake on a tick or as soon as leadership changes.
            let _ = tokio::time::timeout(TICK, status.changed()).await;
            let (expired, checkpoints) = {
                let mut st = self.lock();
                let now = Instant::now();
                if !st.leader {
                    continue;
                }
                let leases = (self.store)().lease_ttls();
                let live: HashSet<i64> = leases.iter().map(|l| l.id).collect();
                st.deadlines.retain(|id, _| live.contains(id));
                for l in &leases {
                    // Granted since the last look.
                    st.deadlines
                        .entry(l.id)
                        .or_insert(now + Duration::from_secs(l.ttl.max(0) as u64));
                }
                let expired: Vec<i64> = st
                    .deadlines
                    .iter()
                    .filter(|(id, d)| **d <= now && !st.revoking.contains(id))
                    .map(|(id, _)| *id)
                    .collect();
                st.revoking.extend(expired.iter().copied());
                let due = st
                    .last_checkpoint
                    .is_none_or(|t| now.duration_since(t) >= checkpoint_every);
                let mut checkpoints = Vec::new();
                if due {
                    st.last_checkpoint = Some(now);
                    for l in &leases {
                        let Some(d) = st.deadlines.get(&l.id) else {
                            continue;
                        };
                        let left = secs(d.saturating_duration_since(now)) + 1;
                        // 0 records "full TTL" (just renewed), so renewals clear old values.
                        let want = if left >= l.ttl { 0 } else { left };
                        if want != l.remaining {
                            checkpoints.push(LeaseCheckpoint {
                                id: l.id,
                                remaining_ttl: want,
                            });
                        }
                    }
                }
                (expired, checkpoints)
            };
            for id in expired {
                let me = self.clone();
                let server = server.clone();
                tokio::spawn(async move {
                    let r = server
                        .propose(
                            Request::LeaseRevoke(LeaseRevokeRequest { id }),
                            &crate::auth::member(),
                        )
                        .await;
                    if let Err(e) = &r {
                        tracing::debug!(lease = id, error = %e, "lease revoke failed; will retry");
                    }
                    me.lock().revoking.remove(&id);
                });
            }
            for chunk in checkpoints.chunks(CHECKPOINT_BATCH) {
                let req = LeaseCheckpointRequest {
                    checkpoints: chunk.to_vec(),
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let _ = server
                        .propose(Request::LeaseCheckpoint(req), &crate::auth::member())
                        .await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_truncate_like_etcd() {
        assert_eq!(secs(Duration::from_millis(999)), 0);
        assert_eq!(secs(Duration::from_millis(2999)), 2);
    }
}
