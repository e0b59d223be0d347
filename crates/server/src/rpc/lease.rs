//! The Lease service. Grants and revokes go through raft; keep-alives and time-to-live need
//! the leader's deadlines, so a follower hands them to the leader, as etcd does.

use std::pin::Pin;
use std::sync::Arc;

use ballast_api::ballast::internal::raft_request::Request;
use ballast_api::etcdserverpb::lease_client::LeaseClient;
use ballast_api::etcdserverpb::lease_server::Lease;
use ballast_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, ResponseHeader,
};
use ballast_state::mvcc::MAX_LEASE_TTL;
use ballast_state::{Applied, KvError};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request as Req, Response, Status, Streaming};

use super::{kv_status, status, unexpected};
use crate::server::{EtcdServer, ServerError};

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

pub struct LeaseService {
    pub server: Arc<EtcdServer>,
}

impl LeaseService {
    fn header(&self) -> ResponseHeader {
        self.server.header(self.server.mvcc().current_rev())
    }
}

/// The answer to one keep-alive request (gRPC stream and JSON gateway alike).
pub(crate) async fn keep_alive_response(
    server: &Arc<EtcdServer>,
    id: i64,
) -> Result<LeaseKeepAliveResponse, Status> {
    let ttl = keep_alive_once(server, id).await?;
    Ok(LeaseKeepAliveResponse {
        header: Some(server.header(server.mvcc().current_rev())),
        id,
        ttl,
    })
}

/// One keep-alive: renewed here if this member leads, else by the leader. Like etcd, a
/// follower keeps trying (through leader changes) until the request timeout.
async fn keep_alive_once(server: &Arc<EtcdServer>, id: i64) -> Result<i64, Status> {
    let deadline = tokio::time::Instant::now() + server.cfg.request_timeout();
    loop {
        if let Some(ttl) = server.lessor().renew(id) {
            return Ok(ttl);
        }
        let err = match forward_keep_alive(server, id).await {
            Ok(ttl) => return Ok(ttl),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(err);
        }
        server.forget_leader_channel();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn forward_keep_alive(server: &Arc<EtcdServer>, id: i64) -> Result<i64, Status> {
    let ch = server.leader_channel().await.map_err(status)?;
    let mut out = LeaseClient::new(ch)
        .lease_keep_alive(tokio_stream::iter(vec![LeaseKeepAliveRequest { id }]))
        .await?
        .into_inner();
    match out.next().await {
        Some(r) => Ok(r?.ttl),
        None => Err(status(ServerError::Raft(ballast_raft::RaftError::NoLeader))),
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Req<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        let mut r = req.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(kv_status(KvError::LeaseTtlTooLarge));
        }
        // etcd's floor: leases must outlive an election (1.5 election timeouts, rounded up).
        let min = self.server.cfg.heartbeat * (3 * self.server.cfg.election_ticks as u32) / 2;
        let min = min.as_secs() as i64 + i64::from(min.subsec_nanos() > 0);
        r.ttl = r.ttl.max(min);
        if r.id == 0 {
            r.id = self.server.new_lease_id();
        }
        self.server.refuse_learner().map_err(status)?;
        match self
            .server
            .propose(Request::LeaseGrant(r), &who)
            .await
            .map_err(status)?
        {
            Applied::LeaseGrant(mut resp) => {
                resp.header = Some(self.header());
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn lease_revoke(
        &self,
        req: Req<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.server.refuse_learner().map_err(status)?;
        let who = self.server.caller(&req).await.map_err(status)?;
        let r = req.into_inner();
        match self
            .server
            .propose(Request::LeaseRevoke(r), &who)
            .await
            .map_err(status)?
        {
            Applied::LeaseRevoke(mut resp) => {
                resp.header = Some(self.header());
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn lease_keep_alive(
        &self,
        req: Req<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let server = self.server.clone();
        tokio::spawn(async move {
            while let Some(r) = inbound.next().await {
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(super::inbound_error(e))).await;
                        break;
                    }
                };
                let resp = keep_alive_response(&server, r.id).await;
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_time_to_live(
        &self,
        req: Req<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        let s = &self.server;
        if !s.raft_status().is_leader {
            let ch = s.leader_channel().await.map_err(status)?;
            return LeaseClient::new(ch).lease_time_to_live(r).await;
        }
        let Some(lease) = s.mvcc().lease(r.id) else {
            // etcd answers an unknown lease with TTL -1 and an empty header.
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: Some(ResponseHeader::default()),
                id: r.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: Some(self.header()),
            id: r.id,
            ttl: s.lessor().remaining(r.id, lease.ttl).unwrap_or(lease.ttl),
            granted_ttl: lease.ttl,
            keys: if r.keys {
                lease.keys.into_iter().collect()
            } else {
                vec![]
            },
        }))
    }

    async fn lease_leases(
        &self,
        _: Req<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.header()),
            leases: self
                .server
                .mvcc()
                .lease_ttls()
                .into_iter()
                .map(|l| LeaseStatus { id: l.id })
                .collect(),
        }))
    }
}
