//! The lessor: lease expiry, decided by the leader alone and applied through raft.
//!
//! The decisions (whose deadline passed, which remaining TTLs to checkpoint, what a keep-alive
//! answers) are `ballast_state::lease_clock::LeaseClock`'s, which takes time as an input; this
//! module feeds it raft's leadership, the store's lease records and the clock, and proposes
//! what it asks for.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ballast_api::ballast::internal::raft_request::Request;
use ballast_api::etcdserverpb::{LeaseCheckpointRequest, LeaseRevokeRequest};
use ballast_raft::RaftStatus;
use ballast_state::lease_clock::LeaseClock;
use ballast_state::Mvcc;
use tokio::sync::watch;

use crate::limits::LEASE_CHECKPOINT_BATCH;

/// How often the leader looks for expired leases.
const TICK: Duration = Duration::from_millis(250);

type StoreFn = Box<dyn Fn() -> Arc<Mvcc> + Send + Sync>;

pub struct Lessor {
    clock: Mutex<LeaseClock>,
    status: watch::Receiver<RaftStatus>,
    store: StoreFn,
}

impl Lessor {
    /// `extension`: the grace a new leader gives every lease (one election timeout);
    /// `checkpoint_every`: how often remaining TTLs are recorded through raft.
    pub fn new(
        status: watch::Receiver<RaftStatus>,
        store: StoreFn,
        extension: Duration,
        checkpoint_every: Duration,
    ) -> Lessor {
        Lessor {
            clock: Mutex::new(LeaseClock::new(extension, checkpoint_every)),
            status,
            store,
        }
    }

    /// The clock, after bringing it in line with raft leadership, so no caller ever acts on
    /// a stale idea of who leads.
    fn lock(&self, now: Instant) -> MutexGuard<'_, LeaseClock> {
        let mut c = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        let leader = self.status.borrow().is_leader;
        c.follow(leader, now, || (self.store)().lease_ttls());
        c
    }

    /// On the leader: restarts a lease's TTL. `None` if this member is not the leader;
    /// `Some(0)` for a lease that does not exist (as etcd answers keep-alives for it).
    pub fn renew(&self, id: i64) -> Option<i64> {
        let now = Instant::now();
        let mut c = self.lock(now);
        if !c.is_leader() {
            return None;
        }
        let ttl = c.renew((self.store)().lease_ttl(id).as_ref(), now);
        if ttl.is_some_and(|t| t > 0) {
            crate::stats::add(crate::stats::Counter::LeaseRenewed, 1);
        }
        ttl
    }

    /// A grant was applied: its clock starts now (on the leader; others keep no clocks).
    pub fn granted(&self, id: i64, ttl: i64) {
        let now = Instant::now();
        self.lock(now).granted(id, ttl, now);
    }

    /// On the leader: seconds left before lease `id` (of `ttl`) expires. `None` if not the
    /// leader.
    pub fn remaining(&self, id: i64, ttl: i64) -> Option<i64> {
        let now = Instant::now();
        self.lock(now).remaining(id, ttl, now)
    }

    /// Follows leadership, revokes expired leases and checkpoints TTLs through `propose`
    /// (which proposes as the member itself); runs for the member's life.
    pub async fn run<P, F, E>(self: Arc<Self>, propose: P)
    where
        P: Fn(Request) -> F + Send + Sync + 'static,
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let propose = Arc::new(propose);
        let mut status = self.status.clone();
        loop {
            // Wake on a tick or as soon as leadership changes.
            let _ = tokio::time::timeout(TICK, status.changed()).await;
            let now = Instant::now();
            let due = {
                let mut c = self.lock(now);
                if !c.is_leader() {
                    continue;
                }
                c.tick(&(self.store)().lease_ttls(), now)
            };
            for id in due.expired {
                let (me, propose) = (self.clone(), propose.clone());
                tokio::spawn(async move {
                    let r = propose(Request::LeaseRevoke(LeaseRevokeRequest { id })).await;
                    match &r {
                        Ok(()) => crate::stats::add(crate::stats::Counter::LeaseExpired, 1),
                        Err(e) => {
                            tracing::debug!(lease = id, error = %e, "lease revoke failed; will retry")
                        }
                    }
                    me.lock(Instant::now()).revoke_done(id);
                });
            }
            for chunk in due.checkpoints.chunks(LEASE_CHECKPOINT_BATCH) {
                let req = Request::LeaseCheckpoint(LeaseCheckpointRequest {
                    checkpoints: chunk.to_vec(),
                });
                let propose = propose.clone();
                tokio::spawn(async move {
                    let _ = propose(req).await;
                });
            }
        }
    }
}
