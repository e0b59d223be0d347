//! The read path: a linearizable read asks raft for a ReadIndex (batched with concurrent
//! reads by the driver), waits until the applier has applied that index, then reads this
//! member's store; a serializable read skips the round.
//!
//! Invariant: a linearizable read never returns state older than a write acknowledged before
//! it began (the fault-injection suite checks this with `break-local-reads` as the control).

use std::sync::Arc;
use std::time::Duration;

use ballast_api::etcdserverpb::{RangeRequest, RangeResponse};
use ballast_raft::Node;
use ballast_state::{AuthInfo, Mvcc, Ranged};
use ballast_storage::failpoint;
use tokio::sync::watch;

use super::store::Store;
use super::ServerError;

#[derive(Clone)]
pub struct Reader {
    node: Arc<Node>,
    store: Store,
    applied: watch::Receiver<u64>,
    timeout: Duration,
}

impl Reader {
    pub fn new(
        node: Arc<Node>,
        store: Store,
        applied: watch::Receiver<u64>,
        timeout: Duration,
    ) -> Reader {
        Reader {
            node,
            store,
            applied,
            timeout,
        }
    }

    /// Waits until a ReadIndex round confirms this member may serve an up-to-date read.
    pub async fn barrier(&self) -> Result<(), ServerError> {
        if failpoint::enabled("break-local-reads") {
            return Ok(());
        }
        let out = tokio::time::timeout(self.timeout, async {
            let index = self.node.read_index().await?;
            let mut applied = self.applied.clone();
            applied
                .wait_for(|a| *a >= index)
                .await
                .map_err(|_| ServerError::Stopped)?;
            Ok(())
        })
        .await;
        // etcd counts failed rounds, and separately those that timed out.
        match out {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                crate::stats::add(crate::stats::Counter::ReadIndexFailed, 1);
                Err(e)
            }
            Err(_) => {
                crate::stats::add(crate::stats::Counter::ReadIndexFailed, 1);
                crate::stats::add(crate::stats::Counter::SlowReadIndex, 1);
                Err(ServerError::Timeout)
            }
        }
    }

    /// A range as `who` (permissions checked when auth is on); the response's header carries
    /// only the store revision it was read at.
    pub async fn range(
        &self,
        req: &RangeRequest,
        who: &AuthInfo,
    ) -> Result<RangeResponse, ServerError> {
        counted(async { Ok(self.checked(req, who).await?.range(req)?) }).await
    }

    /// A range answered whole while it fits `budget` bytes, else pinned for reading in pages
    /// from the returned store (see [`ballast_state::Mvcc::range_within`]).
    pub async fn range_within(
        &self,
        req: &RangeRequest,
        who: &AuthInfo,
        budget: usize,
    ) -> Result<(Arc<Mvcc>, Ranged), ServerError> {
        counted(async {
            let mvcc = self.checked(req, who).await?;
            let ranged = mvcc.range_within(req, budget)?;
            Ok((mvcc, ranged))
        })
        .await
    }

    /// The store to read `req` from: after a ReadIndex round unless it is serializable, and
    /// once `who` may read its keys.
    async fn checked(&self, req: &RangeRequest, who: &AuthInfo) -> Result<Arc<Mvcc>, ServerError> {
        if !req.serializable {
            self.barrier().await?;
        }
        self.readable(req, who)
    }

    /// The store a range stream reads its chunks from: the read barrier and the permission
    /// check done once, as etcd does them before the first chunk.
    pub async fn range_stream(
        &self,
        req: &RangeRequest,
        who: &AuthInfo,
    ) -> Result<Arc<Mvcc>, ServerError> {
        if !req.serializable {
            self.barrier().await?;
        }
        crate::stats::add(crate::stats::Counter::Range, 1);
        self.readable(req, who)
    }

    fn readable(&self, req: &RangeRequest, who: &AuthInfo) -> Result<Arc<Mvcc>, ServerError> {
        let mvcc = self.store.current();
        if mvcc.auth_enabled() {
            mvcc.with_auth(|a| a.check(who, &req.key, &req.range_end, false))?;
        }
        Ok(mvcc)
    }
}

/// Runs a range, counting and timing it in etcd's range metrics.
async fn counted<T>(
    range: impl std::future::Future<Output = Result<T, ServerError>>,
) -> Result<T, ServerError> {
    let started = std::time::Instant::now();
    let out = range.await;
    crate::stats::add(crate::stats::Counter::Range, 1);
    crate::stats::RANGE.observe(crate::stats::Kind::Range, out.is_ok(), started.elapsed());
    out
}
