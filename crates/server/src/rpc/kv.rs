//! The KV service.

use std::sync::Arc;

use ballast_api::ballast::internal::raft_request::Request;
use ballast_api::etcdserverpb::kv_server::Kv;
use ballast_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, TxnRequest, TxnResponse,
};
use ballast_state::{check, Applied, AuthInfo, Ranged};
use tonic::{Request as Req, Response, Status};

use super::{kv_status, status, unexpected};
use crate::limits::RANGE_INLINE_BYTES;
use crate::member::ServerError;
use crate::server::EtcdServer;

pub struct KvService {
    pub server: Arc<EtcdServer>,
}

impl KvService {
    async fn write(&self, r: Request, who: &AuthInfo) -> Result<Applied, Status> {
        self.server.refuse_learner().map_err(status)?;
        self.server.propose(r, who).await.map_err(status)
    }
}

type RangeStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<RangeStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn range_stream(&self, req: Req<RangeRequest>) -> Result<Response<RangeStream>, Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        let r = req.into_inner();
        check::range(&r).map_err(kv_status)?;
        let default_order = r.sort_order == SortOrder::None as i32
            || (r.sort_target == SortTarget::Key as i32
                && r.sort_order == SortOrder::Ascend as i32);
        if !default_order {
            return Err(status(ServerError::Unimplemented(
                "RangeStream does not support custom sort orders".into(),
            )));
        }
        if r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0
        {
            return Err(status(ServerError::Unimplemented(
                "RangeStream does not support revision filters".into(),
            )));
        }
        if !r.serializable {
            self.server.refuse_learner().map_err(status)?;
        }
        let mvcc = self
            .server
            .range_stream_store(&r, &who)
            .await
            .map_err(status)?;
        let server = self.server.clone();
        let target = self.server.cfg.max_request_bytes as usize;
        // The first chunk counts the whole range: off the runtime's workers.
        let body = tokio::task::spawn_blocking(move || {
            super::range_stream::StreamBody::start(mvcc, r, target, &|rev| server.header(rev))
        })
        .await
        .map_err(|_| Status::internal("range stream stopped"))??;
        // The dispatcher swaps the body in; tonic sees an empty stream.
        let mut resp = Response::new(Box::pin(tokio_stream::empty()) as RangeStream);
        resp.extensions_mut()
            .insert(super::large_range::Streamed::new(tonic::body::Body::new(
                super::large_range::Pieces::new(body),
            )));
        Ok(resp)
    }

    async fn range(&self, req: Req<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        let r = req.into_inner();
        check::range(&r).map_err(kv_status)?;
        if !r.serializable {
            self.server.refuse_learner().map_err(status)?;
        }
        let (mvcc, ranged) = self
            .server
            .range_within(&r, &who, RANGE_INLINE_BYTES)
            .await
            .map_err(status)?;
        Ok(match ranged {
            Ranged::Whole(resp) => Response::new(resp),
            Ranged::Pinned(p) => {
                let header = self.server.header(p.revision);
                super::large_range::respond(mvcc, r, p, header).await?
            }
        })
    }

    async fn put(&self, req: Req<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        let r = req.into_inner();
        check::put(&r).map_err(kv_status)?;
        match self.write(Request::Put(r), &who).await? {
            Applied::Put(mut resp) => {
                self.server.fill_header(&mut resp.header);
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
                self.server.fill_header(&mut resp.header);
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
                self.server.fill_header(&mut resp.header);
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
                self.server.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }
}
