//! The KV service.

use std::sync::Arc;

use ballast_api::ballast::internal::raft_request::Request;
use ballast_api::etcdserverpb::kv_server::Kv;
use ballast_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, ResponseHeader, TxnRequest,
    TxnResponse,
};
use ballast_api::mvccpb::KeyValue;
use ballast_state::mvcc::range_entry_len;
use ballast_state::{check, Applied, AuthInfo, KvError, Ranged};
use prost::Message;
use tonic::{Request as Req, Response, Status};

use super::{kv_status, status, unexpected};
use crate::limits::{RANGE_INLINE_BYTES, RANGE_STREAM_FIRST_CHUNK, RANGE_STREAM_QUEUE};
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

/// etcd 3.7's next chunk size: double below half the target, halve above twice it, never 0.
fn next_chunk_limit(last: usize, last_size: usize, target: usize) -> usize {
    let next = if last_size < target / 2 {
        last.saturating_mul(2)
    } else if last_size > target.saturating_mul(2) {
        last / 2
    } else {
        last
    };
    next.max(1)
}

/// etcd 3.7's RangeStream: chunks at the revision of the first, each a disjoint slice of the
/// keys; the last one carries the header (revision = that pinned revision), `more` and
/// `count`. The first chunk's range counts the keys once; later chunks are read as pages
/// from the next key on. Sends on `tx` until done, an error, or the client leaves.
fn stream_chunks(
    mvcc: &ballast_state::Mvcc,
    mut r: RangeRequest,
    target: usize,
    header: &dyn Fn(i64) -> ResponseHeader,
    tx: &tokio::sync::mpsc::Sender<Result<RangeStreamResponse, Status>>,
) -> Result<(), Status> {
    let send = |resp: RangeResponse| {
        tx.blocking_send(Ok(RangeStreamResponse {
            range_response: Some(resp),
        }))
        .map_err(|_| Status::cancelled("client went away"))
    };
    if r.count_only {
        let resp = mvcc.range(&r).map_err(kv_status)?;
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        return send(RangeResponse {
            header: Some(header(rev)),
            count: resp.count,
            ..Default::default()
        });
    }
    let total = if r.limit > 0 {
        r.limit as usize
    } else {
        usize::MAX
    };
    r.limit = RANGE_STREAM_FIRST_CHUNK.min(i64::try_from(total).unwrap_or(i64::MAX));
    let first = mvcc.range(&r).map_err(kv_status)?;
    let pinned = first.header.as_ref().map_or(0, |h| h.revision);
    let at = if r.revision > 0 { r.revision } else { pinned };
    let (count, mut limit) = (first.count, r.limit as usize);
    let mut size = prost::Message::encoded_len(&first);
    let mut sent = first.kvs.len();
    let mut next = first.more.then(|| {
        let mut k = first
            .kvs
            .last()
            .map(|kv| kv.key.clone())
            .unwrap_or_default();
        k.push(0);
        k
    });
    let mut kvs = first.kvs;
    loop {
        let done = next.is_none() || sent >= total;
        let mut out = RangeResponse {
            kvs: std::mem::take(&mut kvs),
            ..Default::default()
        };
        if done {
            out.header = Some(header(pinned));
            out.more = count > sent as i64;
            out.count = count;
        }
        send(out)?;
        let Some(from) = next.take().filter(|_| !done) else {
            return Ok(());
        };
        limit = next_chunk_limit(limit, size, target).min(total - sent);
        let mut kv_bytes = 0;
        next = mvcc
            .range_page::<KvError>(
                &from,
                &r.range_end,
                at,
                r.keys_only,
                limit,
                usize::MAX,
                &mut |b| {
                    kv_bytes += range_entry_len(b.len());
                    kvs.push(KeyValue::decode(b).map_err(|e| KvError::Corrupt(e.to_string()))?);
                    Ok(())
                },
            )
            .map_err(kv_status)?;
        // Sized as the range from `from` would answer, as etcd sizes its chunks.
        size = kv_bytes
            + RangeResponse {
                header: Some(ResponseHeader {
                    revision: pinned,
                    ..Default::default()
                }),
                more: next.is_some(),
                count: count - sent as i64,
                ..Default::default()
            }
            .encoded_len();
        sent += kvs.len();
    }
}

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
        let (tx, rx) = tokio::sync::mpsc::channel(RANGE_STREAM_QUEUE);
        let server = self.server.clone();
        let target = self.server.cfg.max_request_bytes as usize;
        tokio::task::spawn_blocking(move || {
            let header = |rev| server.header(rev);
            if let Err(e) = stream_chunks(&mvcc, r, target, &header, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
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
