//! The Lock and Election services: etcd's recipes (keys `<name>/<lease-hex>`, fairness by
//! create revision, ownership bound to a lease) run inside the member against its own KV and
//! watch hub.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ballast_api::ballast::internal::raft_request::Request as Raft;
use ballast_api::etcdserverpb::{
    compare, range_request, request_op, response_op, watch_create_request::FilterType, Compare,
    DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader,
    TxnRequest, TxnResponse, WatchCreateRequest,
};
use ballast_api::mvccpb::KeyValue;
use ballast_api::v3electionpb::election_server::Election;
use ballast_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use ballast_api::v3lockpb::lock_server::Lock;
use ballast_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use ballast_net::keys::prefix_end;
use ballast_state::Applied;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{status, unexpected};
use crate::server::{EtcdServer, ServerError};
use crate::watch::Spec;

/// Internal watchers use stream ids far from client streams'.
static NEXT_INTERNAL: AtomicU64 = AtomicU64::new(1 << 62);

/// `<name>/<lease in hex>`, as etcd's concurrency package names owner keys.
fn owner_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut k = name.to_vec();
    k.extend_from_slice(format!("/{lease:x}").as_bytes());
    k
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// One right a recipe needs: `(key, end, write)`, an empty end being the single key.
type Right = (Vec<u8>, Vec<u8>, bool);

/// Write access to one key.
fn write(key: &[u8]) -> Right {
    (key.to_vec(), vec![], true)
}

/// Read access to every key of an election or lock (`name/...`).
fn read_all(name: &[u8]) -> Right {
    let p = prefix_of(name);
    let end = prefix_end(&p);
    (p, end, false)
}

/// The key a leader key names (empty if missing: the recipe then refuses the request).
fn leader_key(l: &Option<LeaderKey>) -> &[u8] {
    l.as_ref().map(|l| l.key.as_slice()).unwrap_or_default()
}

/// The caller's rights over what a recipe touches, checked once when the RPC arrives (etcd
/// runs these recipes through a client carrying the caller's token). The recipe's own steps
/// then run as the member.
async fn permit<T>(server: &EtcdServer, req: &Request<T>, checks: &[Right]) -> Result<(), Status> {
    let mvcc = server.mvcc();
    if !mvcc.auth_enabled() {
        return Ok(());
    }
    let who = server.caller(req).await.map_err(status)?;
    mvcc.with_auth(|a| {
        checks
            .iter()
            .try_for_each(|(k, e, w)| a.check(&who, k, e, *w))
    })
    .map_err(super::kv_status)
}

async fn txn(server: &EtcdServer, t: TxnRequest) -> Result<TxnResponse, Status> {
    server.refuse_learner().map_err(status)?;
    match server
        .propose(Raft::Txn(t), &crate::auth::member())
        .await
        .map_err(status)?
    {
        Applied::Txn(mut r) => {
            let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
            r.header = Some(server.header(rev));
            Ok(r)
        }
        other => Err(unexpected(other)),
    }
}

async fn range(server: &EtcdServer, r: RangeRequest) -> Result<RangeResponse, Status> {
    server
        .range(&r, &crate::auth::member())
        .await
        .map_err(status)
}

fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn create_rev_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        target: compare::CompareTarget::Create as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

/// Creates `key` (value, lease) unless it exists; returns the txn response and the key's
/// create revision.
async fn create_or_get(
    server: &EtcdServer,
    key: &[u8],
    value: Vec<u8>,
    lease: i64,
) -> Result<(TxnResponse, Option<KeyValue>), Status> {
    let put = PutRequest {
        key: key.to_vec(),
        value,
        lease,
        ..Default::default()
    };
    let get = RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    };
    let r = txn(
        server,
        TxnRequest {
            compare: vec![create_rev_is(key, 0)],
            success: vec![op(request_op::Request::RequestPut(put))],
            failure: vec![op(request_op::Request::RequestRange(get))],
        },
    )
    .await?;
    let existing = if r.succeeded {
        None
    } else {
        r.responses.first().and_then(|o| match &o.response {
            Some(response_op::Response::ResponseRange(g)) => g.kvs.first().cloned(),
            _ => None,
        })
    };
    Ok((r, existing))
}

/// Waits for the first event `req` matches at or after `from_rev`, through an internal
/// watcher on the hub. `Ok(false)` if `stop` resolves first.
async fn next_event(
    server: &Arc<EtcdServer>,
    req: WatchCreateRequest,
    from_rev: i64,
    stop: impl std::future::Future<Output = ()>,
) -> Result<bool, Status> {
    let stream = NEXT_INTERNAL.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = crate::outbox::channel(16);
    let mut rx = crate::outbox::ReceiverStream::new(rx);
    let hub = server.watch_hub();
    hub.add(stream, 0, Spec::new(&req), from_rev, tx);
    tokio::pin!(stop);
    let out = loop {
        tokio::select! {
            r = tokio_stream::StreamExt::next(&mut rx) => match r.map(|r| r.map(crate::watch::Frame::into_response)) {
                Some(Ok(r)) if r.canceled => break Err(status(ServerError::WatchCancelled)),
                Some(Ok(r)) if !r.events.is_empty() => break Ok(true),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(e),
                None => break Err(status(ServerError::Stopped)),
            },
            _ = &mut stop => break Ok(false),
        }
    };
    hub.close_stream(stream);
    out
}

/// Waits until `key` is deleted at or after `from_rev`.
async fn wait_delete(server: &Arc<EtcdServer>, key: &[u8], from_rev: i64) -> Result<(), Status> {
    let req = WatchCreateRequest {
        key: key.to_vec(),
        filters: vec![FilterType::Noput as i32],
        ..Default::default()
    };
    next_event(server, req, from_rev, std::future::pending()).await?;
    Ok(())
}

/// etcd's `waitDeletes`: waits until no key under `prefix` older than `max_create_rev` is
/// left, always watching the newest such key (the one directly ahead in line).
async fn wait_deletes(
    server: &Arc<EtcdServer>,
    prefix: &[u8],
    max_create_rev: i64,
) -> Result<(), Status> {
    loop {
        let r = range(
            server,
            RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                max_create_revision: max_create_rev,
                sort_order: range_request::SortOrder::Descend as i32,
                sort_target: range_request::SortTarget::Create as i32,
                limit: 1,
                ..Default::default()
            },
        )
        .await?;
        let Some(ahead) = r.kvs.first() else {
            return Ok(());
        };
        let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
        wait_delete(server, &ahead.key, rev + 1).await?;
    }
}

pub struct LockService {
    pub server: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let s = &self.server;
        let key = owner_key(&req.get_ref().name, req.get_ref().lease);
        permit(s, &req, &[write(&key), read_all(&req.get_ref().name)]).await?;
        let r = req.into_inner();
        let (resp, existing) = create_or_get(s, &key, vec![], r.lease).await?;
        let my_rev = match &existing {
            Some(kv) => kv.create_revision,
            None => resp.header.as_ref().map(|h| h.revision).unwrap_or(0),
        };
        wait_deletes(s, &prefix_of(&r.name), my_rev - 1).await?;
        // The lease may have expired while waiting, taking the key with it.
        let mine = range(
            s,
            RangeRequest {
                key: key.clone(),
                ..Default::default()
            },
        )
        .await?;
        if mine.kvs.is_empty() {
            return Err(Status::unknown("session expired"));
        }
        Ok(Response::new(LockResponse {
            header: mine.header,
            key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let s = &self.server;
        s.refuse_learner().map_err(status)?;
        let who = s.caller(&req).await.map_err(status)?;
        let del = DeleteRangeRequest {
            key: req.into_inner().key,
            ..Default::default()
        };
        match s
            .propose(Raft::DeleteRange(del), &who)
            .await
            .map_err(status)?
        {
            Applied::DeleteRange(d) => {
                let rev = d.header.map(|h| h.revision).unwrap_or(0);
                Ok(Response::new(UnlockResponse {
                    header: Some(s.header(rev)),
                }))
            }
            other => Err(unexpected(other)),
        }
    }
}

pub struct ElectionService {
    pub server: Arc<EtcdServer>,
}

fn missing_leader() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

/// The current leader of an election: the oldest key under its prefix.
async fn leader_of(
    server: &EtcdServer,
    name: &[u8],
) -> Result<(Option<ResponseHeader>, Option<KeyValue>), Status> {
    let prefix = prefix_of(name);
    let r = range(
        server,
        RangeRequest {
            key: prefix.clone(),
            range_end: prefix_end(&prefix),
            sort_order: range_request::SortOrder::Ascend as i32,
            sort_target: range_request::SortTarget::Create as i32,
            limit: 1,
            ..Default::default()
        },
    )
    .await?;
    Ok((r.header, r.kvs.into_iter().next()))
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let s = &self.server;
        let key = owner_key(&req.get_ref().name, req.get_ref().lease);
        permit(s, &req, &[write(&key), read_all(&req.get_ref().name)]).await?;
        let r = req.into_inner();
        let (resp, existing) = create_or_get(s, &key, r.value.clone(), r.lease).await?;
        let mut rev = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        let mut header = resp.header;
        if let Some(kv) = existing {
            rev = kv.create_revision;
            if kv.value != r.value {
                header = proclaim(s, &key, rev, r.value).await?;
            }
        }
        wait_deletes(s, &prefix_of(&r.name), rev - 1).await?;
        Ok(Response::new(CampaignResponse {
            header,
            leader: Some(LeaderKey {
                name: r.name,
                key,
                rev,
                lease: r.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let right = write(leader_key(&req.get_ref().leader));
        permit(&self.server, &req, &[right]).await?;
        let r = req.into_inner();
        let leader = r.leader.ok_or_else(missing_leader)?;
        let header = proclaim(&self.server, &leader.key, leader.rev, r.value).await?;
        Ok(Response::new(ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let right = read_all(&req.get_ref().name);
        permit(&self.server, &req, &[right]).await?;
        let (header, kv) = leader_of(&self.server, &req.into_inner().name).await?;
        let kv = kv.ok_or_else(|| Status::unknown("election: no leader"))?;
        Ok(Response::new(LeaderResponse {
            header,
            kv: Some(kv),
        }))
    }

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let right = read_all(&req.get_ref().name);
        permit(&self.server, &req, &[right]).await?;
        let name = req.into_inner().name;
        let server = self.server.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                let (header, kv) = match leader_of(&server, &name).await {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let rev = header.as_ref().map(|h| h.revision).unwrap_or(0);
                if let Some(kv) = &kv {
                    let now = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&now) {
                        last = Some(now);
                        let resp = LeaderResponse {
                            header,
                            kv: Some(kv.clone()),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
                // Anything under the prefix may change who leads or what it says; stop once
                // the observer is gone.
                let prefix = prefix_of(&name);
                let req = WatchCreateRequest {
                    range_end: prefix_end(&prefix),
                    key: prefix,
                    ..Default::default()
                };
                if !matches!(
                    next_event(&server, req, rev + 1, tx.closed()).await,
                    Ok(true)
                ) {
                    return;
                }
            }
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(out)))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let right = write(leader_key(&req.get_ref().leader));
        permit(&self.server, &req, &[right]).await?;
        let leader = req.into_inner().leader.ok_or_else(missing_leader)?;
        let del = DeleteRangeRequest {
            key: leader.key.clone(),
            ..Default::default()
        };
        let r = txn(
            &self.server,
            TxnRequest {
                compare: vec![create_rev_is(&leader.key, leader.rev)],
                success: vec![op(request_op::Request::RequestDeleteRange(del))],
                failure: vec![],
            },
        )
        .await?;
        Ok(Response::new(ResignResponse { header: r.header }))
    }
}

/// Sets the leader's value, if `key` still holds leadership at `rev`.
async fn proclaim(
    server: &EtcdServer,
    key: &[u8],
    rev: i64,
    value: Vec<u8>,
) -> Result<Option<ResponseHeader>, Status> {
    let put = PutRequest {
        key: key.to_vec(),
        value,
        ignore_lease: true,
        ..Default::default()
    };
    let r = txn(
        server,
        TxnRequest {
            compare: vec![create_rev_is(key, rev)],
            success: vec![op(request_op::Request::RequestPut(put))],
            failure: vec![],
        },
    )
    .await?;
    if !r.succeeded {
        return Err(Status::unknown("election: not leader"));
    }
    Ok(r.header)
}
