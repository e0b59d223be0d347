//! Maintenance (Status, Snapshot, MoveLeader, Hash, HashKV) and the gRPC health service.

use std::sync::Arc;

use ballast_api::etcdserverpb::maintenance_server::Maintenance;
use ballast_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, ResponseHeader, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};
use ballast_api::grpc::health::v1::health_check_response::ServingStatus;
use ballast_api::grpc::health::v1::health_server::Health;
use ballast_api::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::status;
use crate::limits::SNAPSHOT_CHUNK;
use crate::server::{EtcdServer, ServerError};
use crate::version::ETCD_API_VERSION;
use ballast_api::ballast::internal::raft_request;
use ballast_state::mvcc::alarm_text;
use ballast_state::snapfile;
use ballast_state::Applied;
use ballast_state::KvError;

pub struct MaintenanceService {
    pub server: Arc<EtcdServer>,
}

/// Cuts the snapshot into `SNAPSHOT_CHUNK` blobs for the stream, counting down
/// `remaining_bytes`; the first message carries the header and version. Writing fails once the
/// client has gone, which stops the export.
struct Chunks<'a> {
    tx: &'a mpsc::Sender<Result<SnapshotResponse, Status>>,
    header: Option<ResponseHeader>,
    buf: Vec<u8>,
    remaining: &'a std::cell::Cell<u64>,
}

impl Chunks<'_> {
    fn send(&mut self) -> std::io::Result<()> {
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK));
        let left = self.remaining.get().saturating_sub(blob.len() as u64);
        self.remaining.set(left);
        let header = self.header.take();
        let version = if header.is_some() {
            ETCD_API_VERSION.to_string()
        } else {
            String::new()
        };
        self.tx
            .blocking_send(Ok(SnapshotResponse {
                header,
                remaining_bytes: left,
                blob,
                version,
            }))
            .map_err(|_| std::io::Error::other("snapshot client went away"))
    }

    /// Sends what is left.
    fn finish(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

impl std::io::Write for Chunks<'_> {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (SNAPSHOT_CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == SNAPSHOT_CHUNK {
                self.send()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type SnapshotStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Streams one consistent export of the store in `SNAPSHOT_CHUNK` chunks, then its SHA-256 as a last
    /// blob (etcd appends the hash the same way). Writers are never blocked; memory is bounded
    /// by the channel; a client that goes away stops the export.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.server.require_admin(&req).await.map_err(status)?;
        let (tx, rx) = mpsc::channel(4);
        let mvcc = self.server.mvcc();
        let header = self.server.header(mvcc.current_rev());
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let remaining = std::cell::Cell::new(0u64);
            let mut out = Chunks {
                tx: &tx,
                header: Some(header),
                buf: Vec::with_capacity(SNAPSHOT_CHUNK),
                remaining: &remaining,
            };
            let written = snapfile::write(
                &mvcc,
                &mut |n| {
                    remaining.set(n);
                    Ok(())
                },
                &mut out,
            )
            .and_then(|()| out.finish().map_err(|e| KvError::Corrupt(e.to_string())));
            crate::stats::BACKEND_SNAPSHOT
                .get()
                .observe(started.elapsed());
            if let Err(e) = written {
                tracing::warn!(error = %e, "snapshot stream failed");
                let _ = tx.blocking_send(Err(status(ServerError::Internal(e.to_string()))));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = &self.server;
        let raft = s.raft_status();
        let mvcc = s.mvcc();
        Ok(Response::new(StatusResponse {
            header: Some(s.header(mvcc.current_rev())),
            version: ETCD_API_VERSION.to_string(),
            db_size: mvcc.db_size() as i64,
            leader: raft.leader,
            raft_index: s.raft_commit(),
            raft_term: raft.term,
            raft_applied_index: s.applied_index(),
            errors: mvcc.alarms().iter().map(alarm_text).collect(),
            db_size_in_use: mvcc.db_size_in_use() as i64,
            is_learner: s.is_learner(),
            storage_version: ETCD_API_VERSION.to_string(),
            db_size_quota: s.cfg.quota_backend_bytes as i64,
            // etcd 3.6+ always reports it.
            downgrade_info: Some(match mvcc.downgrade_target() {
                Some((major, minor)) => ballast_api::etcdserverpb::DowngradeInfo {
                    enabled: true,
                    target_version: format!("{major}.{minor}.0"),
                },
                None => Default::default(),
            }),
        }))
    }

    /// Lists, raises or clears alarms — always through raft, as etcd does, so the answer is
    /// the cluster's applied alarm state.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let s = &self.server;
        let who = s.caller(&req).await.map_err(status)?;
        let r = req.into_inner();
        match s
            .propose(raft_request::Request::Alarm(r), &who)
            .await
            .map_err(status)?
        {
            Applied::Alarm(mut resp) => {
                resp.header = Some(s.header(s.mvcc().current_rev()));
                Ok(Response::new(resp))
            }
            other => Err(super::unexpected(other)),
        }
    }

    /// Online defragmentation: reads and writes go on while the store is copied (etcd
    /// blocks both); only a short final catch-up holds writes.
    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.server.require_admin(&req).await.map_err(status)?;
        let s = &self.server;
        let started = std::time::Instant::now();
        crate::stats::DEFRAG_INFLIGHT.store(1, std::sync::atomic::Ordering::Relaxed);
        let done = s.defragment().await;
        crate::stats::DEFRAG_INFLIGHT.store(0, std::sync::atomic::Ordering::Relaxed);
        crate::stats::DEFRAG.get().observe(started.elapsed());
        done.map_err(status)?;
        Ok(Response::new(DefragmentResponse {
            header: Some(s.header(s.mvcc().current_rev())),
        }))
    }

    /// Downgrades as etcd 3.7 answers them. The only target is the minor version below the
    /// API Ballast implements; enabling records the job in the log (Status reports it, and
    /// validate and enable then refuse another), cancel clears it and succeeds either way. No
    /// member ever runs the older version, so a job stays enabled until it is cancelled.
    async fn downgrade(
        &self,
        req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        use ballast_api::ballast::internal::DowngradeInfoSet;
        use ballast_api::etcdserverpb::downgrade_request::DowngradeAction;
        let s = &self.server;
        s.require_admin(&req).await.map_err(status)?;
        let r = req.into_inner();
        let action = DowngradeAction::try_from(r.action)
            .map_err(|_| status(ServerError::UnknownDowngradeAction))?;
        let (major, minor) = crate::version::api_major_minor();
        let answer = DowngradeResponse {
            header: Some(s.header(s.mvcc().current_rev())),
            version: format!("{major}.{minor}"),
        };
        let set = |enabled: bool, ver: String| {
            raft_request::Request::DowngradeInfoSet(DowngradeInfoSet { enabled, ver })
        };
        if action == DowngradeAction::Cancel {
            s.linearizable_barrier().await.map_err(status)?;
            if s.mvcc().downgrade_target().is_some() {
                s.propose(set(false, String::new()), &crate::auth::member())
                    .await
                    .map_err(status)?;
            } else {
                // etcd 3.7 logs the refusal and still answers success.
                tracing::warn!("failed to cancel downgrade: etcdserver: no inflight downgrade job");
            }
            return Ok(Response::new(answer));
        }
        let target = downgrade_target(&r.version)
            .ok_or_else(|| status(ServerError::WrongDowngradeVersionFormat))?;
        s.linearizable_barrier().await.map_err(status)?;
        if minor == 0 || target != (major, minor - 1) {
            return Err(status(ServerError::InvalidDowngradeTargetVersion));
        }
        if s.mvcc().downgrade_target().is_some() {
            return Err(status(ServerError::DowngradeInProcess));
        }
        if action == DowngradeAction::Enable {
            s.propose(
                set(true, format!("{}.{}.0", target.0, target.1)),
                &crate::auth::member(),
            )
            .await
            .map_err(status)?;
        }
        Ok(Response::new(answer))
    }

    /// A hash of the whole key-value history this member stores.
    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.server.require_admin(&req).await.map_err(status)?;
        let mvcc = self.server.mvcc();
        let started = std::time::Instant::now();
        let (hash, _, rev) = mvcc.hash_kv(0).map_err(|e| status(e.into()))?;
        crate::stats::HASH.get().observe(started.elapsed());
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
        self.server.require_admin(&req).await.map_err(status)?;
        let rev = req.into_inner().revision;
        let mvcc = self.server.mvcc();
        let started = std::time::Instant::now();
        let (hash, compact_revision, hash_revision) =
            mvcc.hash_kv(rev).map_err(|e| status(e.into()))?;
        crate::stats::HASH_REV.get().observe(started.elapsed());
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

/// A downgrade target as etcd reads it: a semantic version `X.Y.Z` (a pre-release suffix
/// allowed) or `X.Y`; only major and minor count.
fn downgrade_target(v: &str) -> Option<(u64, u64)> {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'))
    };
    if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| numeric(p)) {
        return None;
    }
    if parts.len() == 2 && core.len() != v.len() {
        return None;
    }
    Some((parts[0].parse().ok()?, parts[1].parse().ok()?))
}
