//! The Cluster service: membership as this member knows it.

use std::sync::Arc;

use ballast_api::etcdserverpb::cluster_server::Cluster;
use ballast_api::etcdserverpb::{Member, MemberListRequest, MemberListResponse};
use tonic::{Request, Response, Status};

use crate::ids;
use crate::server::EtcdServer;

pub struct ClusterService {
    pub server: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let s = &self.server;
        let cfg = &s.cfg;
        let members = cfg
            .initial_cluster
            .iter()
            .map(|(name, urls)| {
                let id = ids::member_id(urls, &cfg.initial_cluster_token);
                let me = id == s.member_id();
                Member {
                    id,
                    name: if me { name.clone() } else { String::new() },
                    peer_ur_ls: urls.clone(),
                    client_ur_ls: if me {
                        cfg.advertise_client_urls.clone()
                    } else {
                        vec![]
                    },
                    is_learner: false,
                }
            })
            .collect();
        Ok(Response::new(MemberListResponse {
            header: Some(s.header(0)),
            members,
        }))
    }
}
