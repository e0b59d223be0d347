//! Maintenance (Status for now) and the gRPC health service.

use std::sync::Arc;

use ballast_api::etcdserverpb::maintenance_server::Maintenance;
use ballast_api::etcdserverpb::{StatusRequest, StatusResponse};
use ballast_api::grpc::health::v1::health_check_response::ServingStatus;
use ballast_api::grpc::health::v1::health_server::Health;
use ballast_api::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request, Response, Status};

use crate::server::EtcdServer;
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
            is_learner: false,
            storage_version: ETCD_API_VERSION.to_string(),
            db_size_quota: s.cfg.quota_backend_bytes as i64,
            downgrade_info: None,
        }))
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
