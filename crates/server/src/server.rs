//! The assembled member, as the edge (gRPC services, gateway, HTTP endpoints, metrics,
//! `main`) sees it: the raft node, the store, the proposer, the applier thread, the watch
//! hub, the lessor and the authenticator, built by [`EtcdServer::start`] from small builders.
//!
//! Write path: validate → `member::proposer` (id, quota, size, waiter) → raft (WAL fsync,
//! commit) → `member::applier` applies the batch, publishes its events, answers the waiter.
//! Read path: linearizable reads get a ReadIndex from raft and wait until that index is
//! applied; serializable reads are served from this member's applied state at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_api::ballast::internal::raft_request;
use ballast_api::etcdserverpb::{
    HashKvRequest, HashKvResponse, RangeRequest, RangeResponse, ResponseHeader,
};
use ballast_raft::{Node, NodeConfig, RaftError, RaftStatus, Transport};
use ballast_state::{layout, Applied, AuthInfo, KvError, Mvcc, Ranged};
use prost::Message;
use tokio::sync::watch;

use crate::background::lease::Lessor;
use crate::config::Config;
use crate::member::applier::Applier;
use crate::member::counters::{BackupStats, ServerCounters};
use crate::member::proposer::{first_request_id, ProposalWaiters, ProposeLimits, Proposer};
use crate::member::read::Reader;
use crate::member::received::ReceivedIndex;
use crate::member::store::Store;
use crate::member::{bootstrap, convert};
pub use crate::member::{ServerError, StartupError};
use crate::watch::WatchHub;

pub struct EtcdServer {
    pub cfg: Config,
    node: Arc<Node>,
    store: Store,
    proposer: Proposer,
    reader: Reader,
    applied: watch::Receiver<u64>,
    /// Set (and the applier stopped) when applying failed on a storage error.
    apply_failed: watch::Receiver<Option<String>>,
    removed: watch::Receiver<bool>,
    /// Whether this member is a learner, kept by the applier: every write asks, and the
    /// store's index lock it would otherwise take is held by each apply.
    learner: Arc<AtomicBool>,
    watch: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    /// Shared with the applier: one replacement of the store's file at a time.
    file_swap: Arc<Mutex<()>>,
    counters: Arc<ServerCounters>,
    backups: Arc<BackupStats>,
    /// A connection to the leader's client URL, for what only the leader can answer.
    leader_conn: Mutex<Option<(String, tonic::transport::Channel)>>,
    auth: Arc<crate::auth::Authenticator>,
}

impl EtcdServer {
    /// Starts the member: its store and identity, the raft node, the applier thread and
    /// the tasks that keep tokens, watch progress and counters; serves nothing yet.
    pub fn start(cfg: Config) -> Result<Arc<EtcdServer>, StartupError> {
        if let Some(c) = convert::convert_if_etcd(&cfg)? {
            tracing::info!(
                member_id = %format!("{:x}", c.member_id),
                cluster_id = %format!("{:x}", c.cluster_id),
                etcd_version = %c.etcd_version,
                consistent_index = c.consistent_index,
                replayed_entries = c.replayed,
                commit = c.commit,
                members = c.members,
                "converted etcd data directory; etcd's own files are left unchanged beside Ballast's \
                 (member/snap/db, member/snap/*.snap, member/wal/*-*.wal): remove them once the \
                 cluster is verified"
            );
        }
        let snap_dir = bootstrap::prepare_snap_dir(&cfg.data_dir)?;
        let opened = std::time::Instant::now();
        let mvcc = Arc::new(Mvcc::open(&snap_dir.join(layout::STORE_FILE))?);
        crate::member::store::log_opened(&mvcc, "opened the store", opened.elapsed());
        let start = bootstrap::identity(&cfg, &mvcc)?;
        let runtime = tokio::runtime::Handle::try_current()?;
        let (node, committed) = Node::start(NodeConfig {
            peer_tls: bootstrap::peer_tls(&cfg)?,
            member_id: start.member_id,
            cluster_id: start.cluster_id,
            bootstrap: start.bootstrap,
            peers: start.peers,
            runtime: runtime.clone(),
            wal_dir: cfg.wal_dir.clone(),
            snap_dir: snap_dir.clone(),
            tick: cfg.heartbeat,
            election_ticks: cfg.election_ticks,
            catch_up_entries: cfg.snapshot_catchup_entries,
            max_wal_files: cfg.max_wals,
            max_snapshot_files: cfg.max_snapshots,
            applied: mvcc.applied_index(),
            max_log_hold: cfg
                .backup
                .as_ref()
                .and_then(|b| b.archive.map(|_| b.log_hold))
                .unwrap_or(0),
            max_msg_bytes: cfg.max_request_bytes + (1 << 20),
        })?;
        let node = Arc::new(node);
        let member_id = node.member_id();
        let auth = start_authenticator(&cfg, &runtime)?;
        let store = Store::new(mvcc.clone());
        let hub = start_watch_hub(&cfg, &node, &store, &runtime);
        let received: Arc<ReceivedIndex> = Arc::default();
        answer_peer_queries(&node, &store, &received);
        let lessor = Arc::new(Lessor::new(
            node.status_watch(),
            {
                let store = store.clone();
                Box::new(move || store.current())
            },
            cfg.heartbeat * cfg.election_ticks as u32,
            cfg.lease_checkpoint_interval,
        ));
        let counters: Arc<ServerCounters> = Arc::default();
        count_leader_changes(&node, &counters, &runtime);
        let waiters: Arc<ProposalWaiters> = Arc::default();
        let dropped = waiters.clone();
        node.set_drop_handler(Arc::new(move |id, e| {
            dropped.answer(id, Err(ServerError::from(e)))
        }));
        let (applied_tx, applied_rx) = watch::channel(mvcc.applied_index());
        let (removed_tx, removed_rx) = watch::channel(false);
        let (failed_tx, failed_rx) = watch::channel(None);
        let learner = Arc::new(AtomicBool::new(mvcc.is_learner(member_id)));
        let file_swap: Arc<Mutex<()>> = Arc::default();
        let last_compact = mvcc.applied_index();
        let applier = Applier {
            store: store.clone(),
            snap_dir,
            snapshot_count: cfg.snapshot_count,
            last_compact,
            last_trim: last_compact,
            trim_bytes: 0,
            compaction_step: cfg.compaction_batch_limit,
            compaction_idle: cfg.compaction_sleep_interval,
            compaction_started: None,
            trim_every: (cfg.snapshot_catchup_entries / crate::limits::TRIMS_PER_CATCH_UP_WINDOW)
                .max(1),
            warn_apply: cfg.warning_apply_duration,
            compact: Box::new(node.compactor()),
            waiters: waiters.clone(),
            watch: hub.clone(),
            lessor: lessor.clone(),
            applied: applied_tx,
            transport: node.transport(),
            member_id,
            was_member: mvcc.members().iter().any(|m| m.id == member_id),
            removed: removed_tx,
            learner: learner.clone(),
            file_swap: file_swap.clone(),
            auth: auth.clone(),
            failed: failed_tx,
            checkpoint: crate::member::checkpoint::Checkpointer::new(&mvcc),
            received,
        };
        std::thread::Builder::new()
            .name("applier".into())
            .spawn(move || applier.run(committed))
            .map_err(StartupError::Applier)?;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let proposer = Proposer::new(
            node.clone(),
            store.clone(),
            waiters,
            counters.clone(),
            ProposeLimits {
                max_request_bytes: cfg.max_request_bytes,
                quota_backend_bytes: cfg.quota_backend_bytes,
                request_timeout: cfg.request_timeout(),
            },
            first_request_id(member_id, millis),
            file_swap.clone(),
        );
        let reader = Reader::new(
            node.clone(),
            store.clone(),
            applied_rx.clone(),
            cfg.request_timeout(),
        );
        let server = Arc::new(EtcdServer {
            cfg,
            node,
            store,
            proposer,
            reader,
            applied: applied_rx,
            apply_failed: failed_rx,
            removed: removed_rx,
            learner,
            watch: hub,
            lessor,
            leader_conn: Mutex::new(None),
            file_swap,
            counters,
            backups: Arc::default(),
            auth,
        });
        let weak = Arc::downgrade(&server);
        server.transport().set_membership(move || {
            weak.upgrade()
                .map(|s| s.membership_answer())
                .unwrap_or_default()
        });
        Ok(server)
    }

    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.lessor
    }

    /// A lease ID for a grant that did not name one (see [`Proposer::new_lease_id`]).
    pub fn new_lease_id(&self) -> i64 {
        self.proposer.new_lease_id()
    }

    /// How this member proposes: what background tasks are given instead of the server.
    pub fn proposer(&self) -> &Proposer {
        &self.proposer
    }

    /// The raft node, for the backup archive to read committed entries from.
    pub fn raft_node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// The member's store handle (the current store, across snapshot installs).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Fires with the reason if applying stopped on a storage failure.
    pub fn apply_failed_watch(&self) -> watch::Receiver<Option<String>> {
        self.apply_failed.clone()
    }

    /// Drops the cached leader connection (it failed; the leader may be gone).
    pub fn forget_leader_channel(&self) {
        *self.leader_conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A channel to the current leader's client URL (cached until the leader changes).
    pub async fn leader_channel(&self) -> Result<tonic::transport::Channel, ServerError> {
        let leader = self.raft_status().leader;
        let url = self
            .mvcc()
            .members()
            .into_iter()
            .find(|m| m.id == leader)
            .and_then(|m| m.client_ur_ls.into_iter().next())
            .ok_or(ServerError::Raft(RaftError::NoLeader))?;
        if let Some((u, ch)) = self
            .leader_conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if *u == url {
                return Ok(ch.clone());
            }
        }
        let ch = crate::conn::tls::member_channel(
            &url,
            self.cfg.client_tls.as_ref(),
            self.cfg.request_timeout(),
        )
        .map_err(|e| {
            tracing::warn!(url = %url, error = %e, "cannot dial the leader");
            ServerError::Raft(RaftError::NoLeader)
        })?;
        *self.leader_conn.lock().unwrap_or_else(|p| p.into_inner()) = Some((url, ch.clone()));
        Ok(ch)
    }

    pub fn watch_hub(&self) -> &Arc<WatchHub> {
        &self.watch
    }

    /// Fires once this member has applied its own removal from the cluster.
    pub fn removed_watch(&self) -> watch::Receiver<bool> {
        self.removed.clone()
    }

    pub fn is_removed(&self) -> bool {
        *self.removed.borrow()
    }

    /// Whether this member is a learner (it serves only serializable reads).
    pub fn is_learner(&self) -> bool {
        self.learner.load(Ordering::Acquire)
    }

    /// Learners may not take writes or linearizable reads (etcd's rule).
    pub fn refuse_learner(&self) -> Result<(), ServerError> {
        if self.is_learner() {
            return Err(ServerError::NotSupportedForLearner);
        }
        Ok(())
    }

    /// On the leader: each member and whether it was heard from within an election timeout.
    pub async fn active_peers(&self) -> Result<Vec<(u64, bool)>, ServerError> {
        Ok(self.node.active_peers().await?)
    }

    pub async fn learner_ready(&self, id: u64) -> Result<bool, ServerError> {
        Ok(self.node.learner_ready(id).await?)
    }

    pub async fn transfer_leader(&self, id: u64) -> Result<(), ServerError> {
        Ok(self.node.transfer_leader(id).await?)
    }

    pub fn member_id(&self) -> u64 {
        self.node.member_id()
    }

    pub fn cluster_id(&self) -> u64 {
        self.node.cluster_id()
    }

    /// The peer transport, for the peer listeners to feed.
    pub fn transport(&self) -> Transport {
        self.node.transport()
    }

    pub fn raft_status(&self) -> RaftStatus {
        self.node.status()
    }

    /// The highest log index this member knows to be committed.
    pub fn raft_commit(&self) -> u64 {
        self.node.commit_index()
    }

    pub fn raft_status_watch(&self) -> watch::Receiver<RaftStatus> {
        self.node.status_watch()
    }

    pub fn mvcc(&self) -> Arc<Mvcc> {
        self.store.current()
    }

    pub fn counters(&self) -> &ServerCounters {
        &self.counters
    }

    pub fn backup_stats(&self) -> &Arc<BackupStats> {
        &self.backups
    }

    /// Proposals made here and not yet applied or failed.
    pub fn pending_proposals(&self) -> usize {
        self.proposer.pending()
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Completes a header that carries only the store revision (as the store answers) into
    /// etcd's.
    pub fn fill_header(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = Some(self.header(rev));
    }

    /// A header as etcd fills it: who answered, at which revision, in which term.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.member_id(),
            revision,
            raft_term: self.raft_status().term,
        }
    }

    /// Proposes a write on behalf of `who` (permissions are checked as it applies) and
    /// waits until it is applied here. An auth change applied between resolving `who` and
    /// applying the write fails it with "revision of auth store is old"; as etcd's
    /// `raftRequest` does, the write is proposed again at the new auth revision (a simple
    /// token or a certificate stands for the user's current permissions; a JWT carries its
    /// own revision and is not renewed).
    pub async fn propose(
        &self,
        req: raft_request::Request,
        who: &AuthInfo,
    ) -> Result<Applied, ServerError> {
        let kind = crate::stats::kind(&req);
        let started = Instant::now();
        let renewable = who.revision != 0 && who.revision != u64::MAX && !self.auth.is_jwt();
        let out = if renewable {
            self.proposer.propose_renewing(req, who).await
        } else {
            self.proposer.propose(req, who).await
        };
        crate::stats::REQUEST.observe(kind, out.is_ok(), started.elapsed());
        out
    }

    pub fn authenticator(&self) -> &crate::auth::Authenticator {
        &self.auth
    }

    /// Who a request comes from, as etcd resolves it: a token first (an unknown or expired
    /// one is an error), else, under `--client-cert-auth`, the certificate's CN. With auth
    /// off, nobody in particular.
    pub async fn who(&self, c: &crate::auth::Credentials) -> Result<AuthInfo, ServerError> {
        let mvcc = self.mvcc();
        if !mvcc.auth_enabled() {
            return Ok(crate::auth::nobody());
        }
        if let Some(token) = &c.token {
            // A simple token issued by another member at an index not applied here yet.
            if !self.auth.is_jwt() {
                if let Some(i) = crate::auth::Authenticator::token_index(token) {
                    let mut applied = self.applied.clone();
                    let wait = self.cfg.request_timeout().min(Duration::from_secs(2));
                    let _ = tokio::time::timeout(wait, applied.wait_for(|a| *a >= i)).await;
                }
            }
            return match self.auth.token_user(token) {
                Some((user, rev)) => Ok(AuthInfo {
                    user,
                    revision: rev.unwrap_or_else(|| mvcc.with_auth(|a| a.revision())),
                }),
                None => Err(ServerError::Kv(KvError::InvalidAuthToken)),
            };
        }
        if self.cfg.client_cert_auth() {
            if let Some(cn) = &c.cn {
                return Ok(AuthInfo {
                    user: cn.clone(),
                    revision: mvcc.with_auth(|a| a.revision()),
                });
            }
        }
        Ok(crate::auth::nobody())
    }

    /// [`EtcdServer::who`] for a gRPC request.
    pub async fn caller<T>(&self, req: &tonic::Request<T>) -> Result<AuthInfo, ServerError> {
        // The common case, auth off, reads no metadata.
        if !self.mvcc().auth_enabled() {
            return Ok(crate::auth::nobody());
        }
        self.who(&crate::auth::Credentials::of(req)).await
    }

    /// etcd's admin check for maintenance and membership RPCs.
    pub async fn require_admin<T>(&self, req: &tonic::Request<T>) -> Result<(), ServerError> {
        if !self.mvcc().auth_enabled() {
            return Ok(());
        }
        let who = self.caller(req).await?;
        Ok(self.mvcc().with_auth(|a| a.check_admin(&who))?)
    }

    /// Defragments this member's store online; one at a time, never during a snapshot
    /// install. Returns the file size before and after.
    pub async fn defragment(self: &Arc<Self>) -> Result<(u64, u64), ServerError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || {
            let _swap = s.file_swap.lock().unwrap_or_else(|p| p.into_inner());
            let started = Instant::now();
            let sizes = s.mvcc().defragment()?;
            tracing::info!(
                size_before = sizes.0,
                size_after = sizes.1,
                took = ?started.elapsed(),
                "finished defragmenting the backend"
            );
            Ok(sizes)
        })
        .await
        .map_err(|_| ServerError::Stopped)?
    }

    /// Waits until a ReadIndex round confirms this member may serve an up-to-date read.
    pub async fn linearizable_barrier(&self) -> Result<(), ServerError> {
        self.reader.barrier().await
    }

    /// A range as `who`, with the header filled as etcd fills it.
    /// The store a range stream reads (see [`Reader::range_stream`]).
    pub async fn range_stream_store(
        &self,
        req: &RangeRequest,
        who: &AuthInfo,
    ) -> Result<Arc<Mvcc>, ServerError> {
        self.reader.range_stream(req, who).await
    }

    /// A range answered whole (header filled) within `budget` bytes, or pinned for reading in
    /// pages from the returned store.
    pub async fn range_within(
        &self,
        req: &RangeRequest,
        who: &AuthInfo,
        budget: usize,
    ) -> Result<(Arc<Mvcc>, Ranged), ServerError> {
        let (mvcc, mut ranged) = self.reader.range_within(req, who, budget).await?;
        if let Ranged::Whole(resp) = &mut ranged {
            self.fill_header(&mut resp.header);
        }
        Ok((mvcc, ranged))
    }

    pub async fn range(
        &self,
        req: &RangeRequest,
        who: &AuthInfo,
    ) -> Result<RangeResponse, ServerError> {
        let mut resp = self.reader.range(req, who).await?;
        self.fill_header(&mut resp.header);
        Ok(resp)
    }
}

fn start_authenticator(
    cfg: &Config,
    runtime: &tokio::runtime::Handle,
) -> Result<Arc<crate::auth::Authenticator>, StartupError> {
    let auth = Arc::new(
        crate::auth::Authenticator::new(&cfg.auth_token, cfg.auth_token_ttl, cfg.bcrypt_cost)
            .map_err(StartupError::AuthToken)?,
    );
    let expiring = auth.clone();
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            expiring.expire();
        }
    });
    Ok(auth)
}

/// The watch hub, publishing from the store's revision, with progress notifications every
/// `--experimental-watch-progress-notify-interval`.
fn start_watch_hub(
    cfg: &Config,
    node: &Node,
    store: &Store,
    runtime: &tokio::runtime::Handle,
) -> Arc<WatchHub> {
    let status = node.status_watch();
    let (cluster_id, member_id) = (node.cluster_id(), node.member_id());
    let reader = store.clone();
    let hub = WatchHub::new(
        store.current().current_rev(),
        Box::new(move |revision| ResponseHeader {
            cluster_id,
            member_id,
            revision,
            raft_term: status.borrow().term,
        }),
        Box::new(move || reader.current()),
        runtime.clone(),
        cfg.max_request_bytes as usize,
    );
    let ticker = hub.clone();
    let every = cfg.watch_progress_interval;
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            ticker.notify_progress();
        }
    });
    hub
}

/// What other members ask over the peer port: this member's HashKV (for their corruption
/// checks; client auth does not apply there, as with etcd's peer endpoints) and the store's
/// export (for a follower that needs a snapshot).
fn answer_peer_queries(node: &Node, store: &Store, received: &Arc<ReceivedIndex>) {
    let hashes = store.clone();
    node.transport().set_query(move |body| {
        let rev = HashKvRequest::decode(body)
            .map(|r| r.revision)
            .unwrap_or(-1);
        match hashes.current().hash_kv(rev) {
            Ok((hash, compact_revision, hash_revision)) => HashKvResponse {
                header: Some(ResponseHeader {
                    revision: hash_revision,
                    ..Default::default()
                }),
                hash,
                compact_revision,
                hash_revision,
            }
            .encode_to_vec(),
            // Not there yet, or compacted away: an empty answer, skipped by the asker.
            Err(_) => Vec::new(),
        }
    });
    let source = store.clone();
    node.transport().set_snapshot_source(Arc::new(move |out| {
        source.current().export(out).map_err(Into::into)
    }));
    let received = received.clone();
    node.transport()
        .set_snapshot_builder(Arc::new(move |path, input| {
            received.put(path, Mvcc::import(path, input)?);
            Ok(())
        }));
}

/// Counts every new leader this member sees, the first one included (as etcd counts).
fn count_leader_changes(
    node: &Node,
    counters: &Arc<ServerCounters>,
    runtime: &tokio::runtime::Handle,
) {
    let (mut status, counters) = (node.status_watch(), counters.clone());
    runtime.spawn(async move {
        let mut last = 0;
        while status.changed().await.is_ok() {
            let leader = status.borrow_and_update().leader;
            if leader != 0 && leader != last {
                counters.leader_changes.fetch_add(1, Ordering::Relaxed);
            }
            last = leader;
        }
    });
}
