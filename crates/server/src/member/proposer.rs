//! Proposing: request ids, the quota check, the size limit, the waiter, raft, and the wait for
//! the applier's answer. Everything that writes (the gRPC services and the background tasks)
//! goes through a [`Proposer`], never through the whole server.
//!
//! Invariants: a proposal is answered exactly once (by the applier, by raft's refusal, or by
//! the timeout); a request larger than `--max-request-bytes` or over the quota never reaches
//! raft; ids are unique among this member's proposals, across restarts too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ballast_api::ballast::internal::{raft_request, RaftRequest};
use ballast_api::etcdserverpb::alarm_request::AlarmAction;
use ballast_api::etcdserverpb::{AlarmRequest, AlarmType};
use ballast_raft::{ConfKind, Node, RaftError};
use ballast_state::{Applied, AuthInfo, KvError};
use prost::Message;

use super::counters::ServerCounters;
use super::store::Store;
use super::waiters::Waiters;
use super::ServerError;
use crate::limits::AUTH_RETRY_LIMIT;

/// The flags a proposal is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ProposeLimits {
    /// `--max-request-bytes`: the largest encoded proposal.
    pub max_request_bytes: u64,
    /// `--quota-backend-bytes` as resolved (0: no quota).
    pub quota_backend_bytes: u64,
    /// How long a proposal may take to apply.
    pub request_timeout: Duration,
}

pub type ProposalWaiters = Waiters<Result<Applied, ServerError>>;

#[derive(Clone)]
pub struct Proposer(Arc<Inner>);

struct Inner {
    node: Arc<Node>,
    store: Store,
    waiters: Arc<ProposalWaiters>,
    next_id: AtomicU64,
    counters: Arc<ServerCounters>,
    limits: ProposeLimits,
    /// Held while the store's file is replaced (here: compacted before refusing a write).
    file_swap: Arc<std::sync::Mutex<()>>,
}

/// A store this small has its file compacted before a write is refused for the quota.
const TINY_STORE_BYTES: u64 = 1 << 20;

/// A request ID as a lease ID: the top bit cleared, as etcd clears it (a member whose low ID
/// bits start with a 1 would otherwise hand out negative IDs etcdctl cannot parse back); never 0.
fn lease_id(seq: u64) -> i64 {
    match seq & (u64::MAX >> 1) {
        0 => 1,
        id => id as i64,
    }
}

/// etcd's request-ID scheme (also its lease IDs): the member ID's low 16 bits, then the start
/// time in milliseconds and a counter in the low 48 bits. Seeding from the clock keeps a
/// restarted member from matching an old entry to a new waiter.
pub fn first_request_id(member_id: u64, unix_millis: u64) -> u64 {
    ((member_id & 0xffff) << 48) | ((unix_millis << 8) & ((1 << 48) - 1))
}

impl Proposer {
    pub fn new(
        node: Arc<Node>,
        store: Store,
        waiters: Arc<ProposalWaiters>,
        counters: Arc<ServerCounters>,
        limits: ProposeLimits,
        first_id: u64,
        file_swap: Arc<std::sync::Mutex<()>>,
    ) -> Proposer {
        Proposer(Arc::new(Inner {
            node,
            store,
            waiters,
            next_id: AtomicU64::new(first_id),
            counters,
            limits,
            file_swap,
        }))
    }

    /// A lease ID for a grant that did not name one, from the request-ID sequence as etcd
    /// does (so IDs look like etcd's: this member's low ID bits first).
    pub fn new_lease_id(&self) -> i64 {
        lease_id(
            self.0
                .next_id
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1),
        )
    }

    /// Proposals made here and not yet applied or failed.
    pub fn pending(&self) -> usize {
        self.0.waiters.len()
    }

    /// Proposes a write on behalf of `who` (permissions are checked as it applies) and
    /// waits until it is applied here.
    pub async fn propose(
        &self,
        req: raft_request::Request,
        who: &AuthInfo,
    ) -> Result<Applied, ServerError> {
        self.propose_via(req, None, who, false).await
    }

    /// `propose`, and when an auth change applied between resolving `who` and applying the
    /// write fails it with "revision of auth store is old", proposed again at the new auth
    /// revision (etcd's `raftRequest` loop), up to `AUTH_RETRY_LIMIT` times.
    pub async fn propose_renewing(
        &self,
        req: raft_request::Request,
        who: &AuthInfo,
    ) -> Result<Applied, ServerError> {
        self.propose_via(req, None, who, true).await
    }

    /// Proposes a membership change as a raft configuration change, as the member itself.
    pub async fn propose_conf(
        &self,
        req: raft_request::Request,
        kind: ConfKind,
        node_id: u64,
    ) -> Result<Applied, ServerError> {
        self.propose_via(req, Some((kind, node_id)), &crate::auth::member(), false)
            .await
    }

    /// etcd's quota check before proposing: a request that could grow the store past
    /// `--quota-backend-bytes` raises NOSPACE for this member (through raft, so every member
    /// stops taking such writes) and is refused.
    async fn check_quota(&self, req: &raft_request::Request) -> Result<(), ServerError> {
        let cost = ballast_state::check::quota_cost(req);
        let quota = self.0.limits.quota_backend_bytes;
        if cost == 0 || quota == 0 || self.0.store.current().quota_size() + cost <= quota {
            return Ok(());
        }
        // A tiny store's pages in use depend on how its first commits fell (redb cannot reuse
        // pages a reader or an undurable commit still holds): a few pages either way, which
        // etcd's smallest quota (13 pages) notices. Compact the file before refusing.
        let store = self.0.store.current();
        if store.db_size() <= TINY_STORE_BYTES {
            let swap = self.0.file_swap.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let _swap = swap.lock().unwrap_or_else(|p| p.into_inner());
                store.defragment()
            })
            .await;
            if self.0.store.current().quota_size() + cost <= quota {
                return Ok(());
            }
        }
        let raise = raft_request::Request::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.0.node.member_id(),
            alarm: AlarmType::Nospace as i32,
        });
        tracing::warn!(quota, "backend quota exceeded; raising NOSPACE");
        // An alarm costs nothing, so this does not come back here.
        if let Err(e) = Box::pin(self.propose(raise, &crate::auth::member())).await {
            tracing::warn!(error = %e, "raising NOSPACE failed");
        }
        Err(ServerError::Kv(KvError::NoSpace))
    }

    async fn propose_via(
        &self,
        req: raft_request::Request,
        conf: Option<(ConfKind, u64)>,
        who: &AuthInfo,
        renew: bool,
    ) -> Result<Applied, ServerError> {
        self.check_quota(&req).await?;
        let mut msg = RaftRequest {
            id: 0,
            request: Some(req),
            username: who.user.clone(),
            auth_revision: who.revision,
        };
        let mut attempts = 1;
        loop {
            let out = self.attempt(&mut msg, conf).await;
            let stale = matches!(out, Err(ServerError::Kv(KvError::AuthOldRevision)));
            if !renew || !stale || attempts >= AUTH_RETRY_LIMIT {
                return out;
            }
            let now = self.0.store.current().with_auth(|a| a.revision());
            if now <= msg.auth_revision {
                return out;
            }
            msg.auth_revision = now;
            attempts += 1;
        }
    }

    /// One proposal of `msg` under a fresh request id, and the wait for its answer.
    async fn attempt(
        &self,
        msg: &mut RaftRequest,
        conf: Option<(ConfKind, u64)>,
    ) -> Result<Applied, ServerError> {
        let p = &self.0;
        let id = p.next_id.fetch_add(1, Ordering::Relaxed);
        msg.id = id;
        let data = msg.encode_to_vec();
        if data.len() as u64 > p.limits.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        let rx = p
            .waiters
            .register(id)
            .map_err(|_| ServerError::Raft(RaftError::TooManyRequests))?;
        // One channel per proposal: the applier completes it, or the driver's drop handler
        // fails it when raft refuses the proposal.
        let proposed = match conf {
            None => p.node.propose(data, id),
            Some((kind, node)) => p.node.propose_conf_change(kind, node, data, id),
        };
        let out = match proposed {
            Err(e) => {
                p.waiters.cancel(id);
                Err(e.into())
            }
            Ok(()) => match tokio::time::timeout(p.limits.request_timeout, rx).await {
                // Whoever answered (the applier or the drop handler) took the waiter out.
                Ok(r) => r.unwrap_or(Err(ServerError::Stopped)),
                Err(_) => {
                    p.waiters.cancel(id);
                    Err(ServerError::Timeout)
                }
            },
        };
        // Failed to commit, as etcd counts it (not a request the state machine refused).
        if matches!(
            out,
            Err(ServerError::Raft(_) | ServerError::Timeout | ServerError::Stopped)
        ) {
            p.counters.proposals_failed.fetch_add(1, Ordering::Relaxed);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lease_ids_are_positive_like_etcds() {
        assert_eq!(
            super::lease_id(0x9935_a209_abd4_e702),
            0x1935_a209_abd4_e702
        );
        assert_eq!(super::lease_id(1 << 63), 1);
        assert_eq!(super::lease_id(42), 42);
    }

    #[test]
    fn request_ids_start_with_the_member_and_the_clock() {
        let id = super::first_request_id(0x8e9e_05c5_2164_694d, 1_700_000_000_000);
        assert_eq!(id >> 48, 0x694d);
        assert_eq!(
            id & ((1 << 48) - 1),
            (1_700_000_000_000u64 << 8) & ((1 << 48) - 1)
        );
    }
}
