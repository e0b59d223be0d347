//! Maintenance (Status, Snapshot, MoveLeader, Hash, HashKV) and the gRPC health service.

use std::sync::Arc;

use ballast_api::etcdserverpb::maintenance_server::Maintenance;
use ballast_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use ballast_api::grpc::health::v1::health_check_response::ServingStatus;
use ballast_api::grpc::health::v1::health_server::Health;
use ballast_api::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::status;
use crate::server::{EtcdServer, ServerError};
use crate::version::ETCD_API_VERSION;
use ballast_api::ballast::internal::raft_request;
use ballast_state::mvcc::alarm_text;
use ballast_state::snapfile::HASH_LEN;
use ballast_state::Applied;

pub struct MaintenanceService {
    pub server: Arc<EtcdServer>,
}

type SnapshotStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// Blob size of a snapshot chunk, as etcd sends.
const SNAPSHOT_CHUNK: usize = 32 << 10;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Streams one consistent export of the store in 32 KiB chunks, then its SHA-256 as a last
    /// blob (etcd appends the hash the same way). Writers are never blocked; memory is bounded
    /// by the channel; a client that goes away stops the export.
    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mvcc = self.server.mvcc();
        let header = self.server.header(mvcc.current_rev());
        tokio::task::spawn_blocking(move || {
            let gone = || std::io::Error::other("snapshot client went away");
            let mut first = Some(header);
            let mut send = |blob: Vec<u8>, remaining: u64| {
                let header = first.take();
                let version = if header.is_some() {
                    ETCD_API_VERSION.to_string()
                } else {
                    String::new()
                };
                tx.blocking_send(Ok(SnapshotResponse {
                    header,
                    remaining_bytes: remaining,
                    blob,
                    version,
                }))
                .map_err(|_| gone())
            };
            let mut hasher = Sha256::new();
            let mut buf = Vec::with_capacity(SNAPSHOT_CHUNK);
            let remaining = std::cell::Cell::new(0u64);
            let exported = mvcc.export_sized(
                &mut |n| {
                    remaining.set(n + HASH_LEN as u64);
                    Ok(())
                },
                &mut |rec| {
                    hasher.update(rec);
                    let mut rec = rec;
                    while !rec.is_empty() {
                        let take = (SNAPSHOT_CHUNK - buf.len()).min(rec.len());
                        buf.extend_from_slice(&rec[..take]);
                        rec = &rec[take..];
                        if buf.len() == SNAPSHOT_CHUNK {
                            remaining.set(remaining.get() - SNAPSHOT_CHUNK as u64);
                            let full =
                                std::mem::replace(&mut buf, Vec::with_capacity(SNAPSHOT_CHUNK));
                            send(full, remaining.get())?;
                        }
                    }
                    Ok(())
                },
            );
            let done = exported.map_err(|e| e.to_string()).and_then(|()| {
                remaining.set(remaining.get() - buf.len() as u64);
                if !buf.is_empty() {
                    send(std::mem::take(&mut buf), remaining.get()).map_err(|e| e.to_string())?;
                }
                send(hasher.finalize().to_vec(), 0).map_err(|e| e.to_string())
            });
            if let Err(e) = done {
                tracing::warn!(error = %e, "snapshot stream failed");
                let _ = tx.blocking_send(Err(Status::internal(e)));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = &self.server;
        let raft = s.raft_status();
        let mvcc = s.mvcc();
        Ok(Response::new(StatusResponse {
            header: Some(s.header(mvcc.current_rev())),
            version: ETCD_API_VERSION.to_string(),
            db_size: mvcc.db_size() as i64,
            leader: raft.leader,
            raft_index: raft.commit,
            raft_term: raft.term,
            raft_applied_index: s.applied_index(),
            errors: mvcc.alarms().iter().map(alarm_text).collect(),
            db_size_in_use: mvcc.db_size_in_use() as i64,
            is_learner: s.is_learner(),
            storage_version: ETCD_API_VERSION.to_string(),
            db_size_quota: s.cfg.quota_backend_bytes as i64,
            downgrade_info: None,
        }))
    }

    /// Lists, raises or clears alarms — always through raft, as etcd does, so the answer is
    /// the cluster's applied alarm state.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let r = req.into_inner();
        let s = &self.server;
        match s
            .propose(raft_request::Request::Alarm(r))
            .await
            .map_err(status)?
        {
            Applied::Alarm(mut resp) => {
                resp.header = Some(s.header(s.mvcc().current_rev()));
                Ok(Response::new(resp))
            }
            _ => Err(Status::internal("alarm applied as another request")),
        }
    }

    /// Online defragmentation: reads and writes go on while the store is copied (etcd
    /// blocks both); only a short final catch-up holds writes.
    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let s = &self.server;
        s.defragment().await.map_err(status)?;
        Ok(Response::new(DefragmentResponse {
            header: Some(s.header(s.mvcc().current_rev())),
        }))
    }

    /// A hash of the whole key-value history this member stores.
    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let mvcc = self.server.mvcc();
        let (hash, _, rev) = mvcc.hash_kv(0).map_err(|e| status(e.into()))?;
        Ok(Response::new(HashResponse {
            header: Some(self.server.header(rev)),
            hash,
        }))
    }

    /// The history hash up to a revision: equal on every member for the same revision.
    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let rev = req.into_inner().revision;
        let mvcc = self.server.mvcc();
        let (hash, compact_revision, hash_revision) =
            mvcc.hash_kv(rev).map_err(|e| status(e.into()))?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.server.header(mvcc.current_rev())),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    /// Hands leadership to `targetID` and waits until it leads, as etcd does.
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let s = &self.server;
        let target = req.into_inner().target_id;
        if !s
            .mvcc()
            .members()
            .iter()
            .any(|m| m.id == target && !m.is_learner)
        {
            return Err(status(ServerError::BadLeaderTransferee));
        }
        s.transfer_leader(target).await.map_err(status)?;
        let mut watch = s.raft_status_watch();
        let moved = tokio::time::timeout(s.cfg.request_timeout(), async {
            watch.wait_for(|st| st.leader == target).await.is_ok()
        })
        .await;
        match moved {
            Ok(true) => Ok(Response::new(MoveLeaderResponse {
                header: Some(s.header(0)),
            })),
            Ok(false) => Err(status(ServerError::Stopped)),
            Err(_) => Err(status(ServerError::LeaderTransferTimeout)),
        }
    }
}

pub struct HealthService {
    pub server: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let serving = self.server.raft_status().leader != 0;
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }
}
