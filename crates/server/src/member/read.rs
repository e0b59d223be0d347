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
use ballast_state::{AuthInfo, Mvcc};
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
        tokio::time::timeout(self.timeout, async {
            let index = self.node.read_index().await?;
            let mut applied = self.applied.clone();
            applied
                .wait_for(|a| *a >= index)
                .await
                .map_err(|_| ServerError::Stopped)?;
            Ok(())
        })
        .await
        .map_err(|_| ServerError::Timeout)?
    }

    /// A range as `who` (permissions checked when auth is on); the response's header carries
    /// only the store revision it was read at.
    pub async fn range(
        &self,
        req: &RangeRequest,
        who: &AuthInfo,
    ) -> Result<RangeResponse, ServerError> {
        if !req.serializable {
            self.barrier().await?;
        }
        Ok(self.readable(req, who)?.range(req)?)
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
