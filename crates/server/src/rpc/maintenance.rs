//! Maintenance (Status, MoveLeader, Hash, HashKV) and the gRPC health service.

use std::sync::Arc;

use ballast_api::etcdserverpb::maintenance_server::Maintenance;
use ballast_api::etcdserverpb::{
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, StatusRequest, StatusResponse,
};
use ballast_api::grpc::health::v1::health_check_response::ServingStatus;
use ballast_api::grpc::health::v1::health_server::Health;
use ballast_api::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request, Response, Status};

use super::status;
use crate::server::{EtcdServer, ServerError};
use crate::version::ETCD_API_VERSION;

pub struct MaintenanceService {
    pub server: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
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
            errors: vec![],
            db_size_in_use: mvcc.db_size_in_use() as i64,
            is_learner: s.is_learner(),
            storage_version: ETCD_API_VERSION.to_string(),
            db_size_quota: s.cfg.quota_backend_bytes as i64,
            downgrade_info: None,
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
