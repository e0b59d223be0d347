//! The `ballast` server: configuration, the member, and its client-facing services.

pub mod auth;
pub mod background;
pub mod config;
pub mod conn;
pub mod frame;
pub mod gateway;
pub mod http;
pub mod limits;
pub mod member;
pub mod membership;
pub mod metrics;
pub mod outbox;
pub mod rpc;
pub mod server;
pub mod stats;
pub mod status;
pub mod version;
pub mod watch;

use std::sync::Arc;

use ballast_api::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer,
};
use ballast_api::grpc::health::v1::health_server::HealthServer;
use ballast_api::{
    v3electionpb::election_server::ElectionServer, v3lockpb::lock_server::LockServer,
};

use crate::limits::GRPC_OVERHEAD_BYTES;
use crate::server::EtcdServer;

/// Every client-port route: the etcd gRPC services and the HTTP endpoints.
pub fn client_service(server: Arc<EtcdServer>) -> rpc::dispatch::ClientService {
    let max = server.cfg.max_request_bytes as usize + GRPC_OVERHEAD_BYTES;
    let grpc = rpc::dispatch::GrpcServices {
        kv: KvServer::new(rpc::kv::KvService {
            server: server.clone(),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX),
        maintenance: MaintenanceServer::new(rpc::maintenance::MaintenanceService {
            server: server.clone(),
        })
        .max_decoding_message_size(max),
        cluster: ClusterServer::new(rpc::cluster::ClusterService {
            server: server.clone(),
        })
        .max_decoding_message_size(max),
        health: HealthServer::new(rpc::maintenance::HealthService {
            server: server.clone(),
        }),
        watch: rpc::watch::WatchService {
            server: server.clone(),
            max_decoding: max,
        },
        lease: LeaseServer::new(rpc::lease::LeaseService {
            server: server.clone(),
        })
        .max_decoding_message_size(max),
        auth: AuthServer::new(rpc::auth::AuthService {
            server: server.clone(),
        })
        .max_decoding_message_size(max),
        lock: LockServer::new(rpc::concurrency::LockService {
            server: server.clone(),
        })
        .max_decoding_message_size(max),
        election: ElectionServer::new(rpc::concurrency::ElectionService {
            server: server.clone(),
        })
        .max_decoding_message_size(max),
    };
    // `--enable-grpc-gateway=false` leaves the health, version and metrics endpoints.
    let http = if server.cfg.enable_grpc_gateway {
        gateway::router(server.clone()).merge(http::router(server))
    } else {
        http::router(server)
    }
    .fallback(rpc::dispatch::unimplemented);
    rpc::dispatch::ClientService::new(Arc::new(grpc), http)
}

#[cfg(test)]
mod layering_tests;
