//! The Cluster service: the applied member records and changes to them.

use std::sync::Arc;

use ballast_api::etcdserverpb::cluster_client::ClusterClient;
use ballast_api::etcdserverpb::cluster_server::Cluster;
use ballast_api::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::status;
use crate::server::{EtcdServer, ServerError};

pub struct ClusterService {
    pub server: Arc<EtcdServer>,
}

type Token = Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>;

/// `msg` as a request to the leader, carrying the caller's auth token.
fn to_leader<T>(msg: T, token: Token) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert("token", t);
    }
    req
}

impl ClusterService {
    /// Promotion needs the leader's view of the learner's progress; a follower hands the
    /// request to the leader over its client URL, as etcd forwards it to the leader.
    async fn promote_on_leader(
        &self,
        id: u64,
        token: Token,
    ) -> Result<MemberPromoteResponse, Status> {
        let ch = self.server.leader_channel().await.map_err(status)?;
        ClusterClient::new(ch)
            .member_promote(to_leader(MemberPromoteRequest { id }, token))
            .await
            .map(|r| r.into_inner())
    }

    /// Whether a voter change asked of this member is judged by the leader instead:
    /// `--strict-reconfig-check` weighs which members are reachable, and only the leader hears
    /// from every member (a follower talks to the leader alone).
    fn leader_judges(&self) -> bool {
        let st = self.server.raft_status();
        self.server.cfg.strict_reconfig_check
            && st.leader != 0
            && st.leader != self.server.member_id()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.server.require_admin(&req).await.map_err(status)?;
        if !req.get_ref().is_learner && self.leader_judges() {
            let token = req.metadata().get("token").cloned();
            let ch = self.server.leader_channel().await.map_err(status)?;
            return ClusterClient::new(ch)
                .member_add(to_leader(req.into_inner(), token))
                .await;
        }
        let r = req.into_inner();
        let (member, members) = self
            .server
            .member_add(r.peer_ur_ls, r.is_learner)
            .await
            .map_err(status)?;
        Ok(Response::new(MemberAddResponse {
            header: Some(self.server.header(0)),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.server.require_admin(&req).await.map_err(status)?;
        if self.leader_judges() {
            let token = req.metadata().get("token").cloned();
            let ch = self.server.leader_channel().await.map_err(status)?;
            return ClusterClient::new(ch)
                .member_remove(to_leader(req.into_inner(), token))
                .await;
        }
        let members = self
            .server
            .member_remove(req.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.server.header(0)),
            members,
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.server.require_admin(&req).await.map_err(status)?;
        let r = req.into_inner();
        let members = self
            .server
            .member_update(r.id, r.peer_ur_ls)
            .await
            .map_err(status)?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.server.header(0)),
            members,
        }))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let s = &self.server;
        if req.into_inner().linearizable {
            s.refuse_learner().map_err(status)?;
            s.linearizable_barrier().await.map_err(status)?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(s.header(0)),
            members: s.mvcc().members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.server.require_admin(&req).await.map_err(status)?;
        let token = req.metadata().get("token").cloned();
        let id = req.into_inner().id;
        match self.server.member_promote(id).await {
            Ok(members) => {
                // Promoted here, so this member leads (etcd counts on the leader).
                crate::stats::add(crate::stats::Counter::LearnerPromoted, 1);
                Ok(Response::new(MemberPromoteResponse {
                    header: Some(self.server.header(0)),
                    members,
                }))
            }
            Err(ServerError::Raft(ballast_raft::RaftError::NotLeader)) => {
                self.promote_on_leader(id, token).await.map(Response::new)
            }
            Err(e) => Err(status(e)),
        }
    }
}
