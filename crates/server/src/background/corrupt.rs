//! Corruption checks, on by default (etcd has them off): members that applied the same log
//! must hold the same history, so their `HashKV` at one revision must agree.
//! * At start-up, before serving, a member compares its hash with every reachable peer's at
//!   its own revision and refuses to start on a mismatch (`--experimental-initial-corrupt-check`).
//! * Every `--experimental-corrupt-check-time`, the leader compares its hash with each
//!   follower's at its revision and raises a CORRUPT alarm, through raft, for a follower that
//!   disagrees. While one is raised, writes fail with `etcdserver: corrupt cluster`.
//!
//! Peers whose compacted revision differs, or that have not reached the revision yet, are
//! skipped that round, as in etcd.

use std::time::Duration;

use ballast_api::ballast::internal::raft_request;
use ballast_api::etcdserverpb::alarm_request::AlarmAction;
use ballast_api::etcdserverpb::{AlarmRequest, AlarmType, HashKvRequest, HashKvResponse};
use ballast_raft::{RaftStatus, Transport};
use prost::Message;
use tokio::sync::watch;

use crate::member::proposer::Proposer;
use crate::member::store::Store;
use crate::member::ServerError;

/// What the checks need: the store to hash, the peer transport to ask with, and (for the
/// leader's periodic check) a proposer to raise alarms and raft's status.
#[derive(Clone)]
pub struct Checker {
    pub store: Store,
    pub transport: Transport,
    pub member_id: u64,
    pub proposer: Proposer,
    pub status: watch::Receiver<RaftStatus>,
}

/// Why the start-up check refuses to start the member.
#[derive(Debug, thiserror::Error)]
pub enum CorruptError {
    #[error("found data inconsistency with peers (member {member:x} at revision {revision})")]
    Inconsistent { member: u64, revision: i64 },
    #[error(transparent)]
    Hash(#[from] ServerError),
}

/// A peer whose history disagrees with ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub member: u64,
    pub revision: i64,
    pub ours: u32,
    pub theirs: u32,
}

impl Mismatch {
    fn report(&self, what: &str) {
        tracing::error!(
            peer = %format!("{:x}", self.member),
            revision = self.revision,
            local_hash = self.ours,
            peer_hash = self.theirs,
            "{what}"
        );
    }
}

/// A peer's HashKV at `revision`, asked over the peer port.
async fn peer_hash(transport: &Transport, member: u64, revision: i64) -> Option<(u32, i64)> {
    let ask = HashKvRequest { revision }.encode_to_vec();
    let answer = transport.query(member, &ask, ROUND).await?;
    if answer.is_empty() {
        return None;
    }
    let r = HashKvResponse::decode(answer.as_slice()).ok()?;
    Some((r.hash, r.compact_revision))
}

/// How long one round waits for peers, all asked at once: a peer that has not answered by
/// then (down, or not serving yet) is skipped.
const ROUND: Duration = Duration::from_secs(2);

/// Compares this member's history with every other member's that answers within [`ROUND`].
pub async fn compare_with_peers(c: &Checker) -> Result<Vec<Mismatch>, ServerError> {
    let mvcc = c.store.current();
    let peers: Vec<u64> = mvcc
        .members()
        .iter()
        .map(|m| m.id)
        .filter(|id| *id != c.member_id)
        .collect();
    // Nothing to compare with: hashing the whole store would only delay start-up.
    if peers.is_empty() {
        return Ok(Vec::new());
    }
    // A hash reads the whole store: off the runtime's workers.
    let (ours, compacted, revision) =
        tokio::task::spawn_blocking(move || mvcc.hash_kv(mvcc.current_rev()))
            .await
            // Cancelled: the runtime is shutting down.
            .map_err(|_| ServerError::Stopped)??;
    let mut asks = tokio::task::JoinSet::new();
    for id in peers {
        let transport = c.transport.clone();
        asks.spawn(async move { (id, peer_hash(&transport, id, revision).await) });
    }
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + ROUND;
    while let Ok(Some(Ok((member, answer)))) =
        tokio::time::timeout_at(deadline, asks.join_next()).await
    {
        match answer {
            Some((theirs, c)) if c == compacted && theirs != ours => out.push(Mismatch {
                member,
                revision,
                ours,
                theirs,
            }),
            Some(_) => {}
            None => {
                tracing::debug!(peer = %format!("{member:x}"), "corruption check skipped a peer")
            }
        }
    }
    Ok(out)
}

/// The start-up check: an error means this member's data disagrees with a peer's. A member
/// with no keyspace history yet has nothing to compare.
pub async fn initial_check(c: &Checker) -> Result<(), CorruptError> {
    if c.store.current().current_rev() <= 1 {
        return Ok(());
    }
    let found = compare_with_peers(c).await?;
    if let Some(m) = found.first() {
        m.report("found data inconsistency with peers");
        return Err(CorruptError::Inconsistent {
            member: m.member,
            revision: m.revision,
        });
    }
    tracing::info!("initial corruption check passed");
    Ok(())
}

/// The leader's periodic check.
pub async fn run(c: Checker, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if !c.status.borrow().is_leader {
            continue;
        }
        let found = match compare_with_peers(&c).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "corruption check failed");
                continue;
            }
        };
        for m in found {
            let raised = c
                .store
                .current()
                .alarms()
                .iter()
                .any(|a| a.member_id == m.member && a.alarm == AlarmType::Corrupt as i32);
            if raised {
                continue;
            }
            m.report("found data inconsistency; raising CORRUPT");
            let req = raft_request::Request::Alarm(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: m.member,
                alarm: AlarmType::Corrupt as i32,
            });
            if let Err(e) = c.proposer.propose(req, &crate::auth::member()).await {
                tracing::warn!(error = %e, "raising CORRUPT failed");
            }
        }
    }
}
