//! The KV service.

use std::sync::Arc;

use ballast_api::ballast::internal::raft_request::Request;
use ballast_api::etcdserverpb::kv_server::Kv;
use ballast_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use ballast_state::{check, Applied, AuthInfo};
use tonic::{Request as Req, Response, Status};

use super::{kv_status, status, unexpected};
use crate::server::EtcdServer;

pub struct KvService {
    pub server: Arc<EtcdServer>,
}

impl KvService {
    fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map(|h| h.revision).unwrap_or(0);
        *h = Some(self.server.header(rev));
    }

    async fn write(&self, r: Request, who: &AuthInfo) -> Result<Applied, Status> {
        self.server.refuse_learner().map_err(status)?;
        self.server.propose(r, who).await.map_err(status)
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Req<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        let r = req.into_inner();
        check::range(&r).map_err(kv_status)?;
        if !r.serializable {
            self.server.refuse_learner().map_err(status)?;
        }
        let resp = self.server.range(&r, &who).await.map_err(status)?;
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Req<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        let r = req.into_inner();
        check::put(&r).map_err(kv_status)?;
        match self.write(Request::Put(r), &who).await? {
            Applied::Put(mut resp) => {
                self.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: Req<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        let r = req.into_inner();
        check::delete(&r).map_err(kv_status)?;
        match self.write(Request::DeleteRange(r), &who).await? {
            Applied::DeleteRange(mut resp) => {
                self.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Req<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        let r = req.into_inner();
        check::txn(&r, self.server.cfg.max_txn_ops).map_err(kv_status)?;
        match self.write(Request::Txn(r), &who).await? {
            Applied::Txn(mut resp) => {
                self.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: Req<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        let r = req.into_inner();
        match self.write(Request::Compaction(r), &who).await? {
            Applied::Compaction(mut resp) => {
                self.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }
}
