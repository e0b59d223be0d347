//! The member: ties the raft node, the applier and the MVCC store together.
//!
//! Write path: validate → encode `RaftRequest` with a fresh id → propose → (driver: WAL fsync,
//! commit) → applier thread applies the batch to MVCC → completes the waiter with that id → reply.
//! Read path: linearizable reads get a ReadIndex from raft and wait until that index is applied;
//! serializable reads are served from this member's applied state at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_api::ballast::internal::{raft_request, RaftRequest};
use ballast_api::etcdserverpb::alarm_request::AlarmAction;
use ballast_api::etcdserverpb::{
    AlarmRequest, AlarmType, HashKvRequest, HashKvResponse, RangeRequest, RangeResponse,
    ResponseHeader,
};
use ballast_raft::{
    Apply, Committed, ConfKind, Node, NodeConfig, RaftError, RaftStatus, Transport,
};
use ballast_state::{Applied, AuthInfo, KvError, Mvcc};
use ballast_storage::failpoint;
use prost::Message;
use tokio::sync::watch;

use crate::config::Config;
use crate::lease::Lessor;
use crate::limits::MAX_MERGED_ENTRIES;
use crate::membership;
use crate::watch::WatchHub;

/// How often applied state is forced to disk; the WAL covers anything newer after a crash.
const BACKEND_SYNC_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Raft(#[from] RaftError),
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("{0}")]
    Startup(String),
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    BadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
}

type Waiters = crate::member::waiters::Waiters<Result<Applied, ServerError>>;

/// The state machine, replaced whole when a snapshot from the leader is installed.
type SharedMvcc = Arc<std::sync::RwLock<Arc<Mvcc>>>;

/// Snapshot files a crash left half-received or never installed: the leader sends again.
fn remove_staging_files(snap_dir: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(snap_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".snap") || name.ends_with(".tmp") || name == "db.new" {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A request ID as a lease ID: the top bit cleared, as etcd clears it (a member whose low ID
/// bits start with a 1 would otherwise hand out negative IDs etcdctl cannot parse back); never 0.
fn lease_id(seq: u64) -> i64 {
    match seq & (u64::MAX >> 1) {
        0 => 1,
        id => id as i64,
    }
}

fn current(m: &SharedMvcc) -> Arc<Mvcc> {
    m.read().unwrap_or_else(|p| p.into_inner()).clone()
}

pub struct EtcdServer {
    pub cfg: Config,
    node: Node,
    mvcc: SharedMvcc,
    waiters: Arc<Waiters>,
    next_id: AtomicU64,
    applied: watch::Receiver<u64>,
    removed: watch::Receiver<bool>,
    /// Whether this member is a learner, kept by the applier: every write asks, and the
    /// store's index lock it would otherwise take is held by each apply.
    learner: Arc<AtomicBool>,
    watch: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    /// Shared with the applier: one replacement of the store's file at a time.
    file_swap: Arc<Mutex<()>>,
    counters: Arc<crate::metrics::ServerCounters>,
    backups: crate::backup::BackupStats,
    /// A connection to the leader's client URL, for what only the leader can answer.
    leader_conn: Mutex<Option<(String, tonic::transport::Channel)>>,
    auth: Arc<crate::auth::Authenticator>,
}

impl EtcdServer {
    pub fn start(cfg: Config) -> Result<Arc<EtcdServer>, ServerError> {
        let member_dir = cfg.data_dir.join("member");
        let snap_dir = member_dir.join("snap");
        std::fs::create_dir_all(&snap_dir).map_err(|e| {
            ServerError::Startup(format!("cannot create {}: {e}", snap_dir.display()))
        })?;
        remove_staging_files(&snap_dir);
        let mvcc = Arc::new(Mvcc::open(&snap_dir.join("db"))?);
        let start = if Node::log_exists(&cfg.wal_dir) {
            // A restart: identity comes from the log and peers from the applied members; the
            // --initial-cluster flags only ever describe a first start, as in etcd.
            membership::Startup {
                member_id: 0,
                cluster_id: 0,
                bootstrap: vec![],
                peers: mvcc
                    .members()
                    .into_iter()
                    .map(|m| (m.id, m.peer_ur_ls))
                    .collect(),
            }
        } else {
            membership::startup(&cfg)?
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| ServerError::Startup(format!("no runtime for the peer transport: {e}")))?;
        let peer_tls = crate::tls::peer_tls(&cfg).map_err(ServerError::Startup)?;
        let (node, committed) = Node::start(NodeConfig {
            peer_tls,
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
            applied: mvcc.applied_index(),
            max_msg_bytes: cfg.max_request_bytes + (1 << 20),
        })?;
        let auth = Arc::new(
            crate::auth::Authenticator::new(&cfg.auth_token, cfg.auth_token_ttl, cfg.bcrypt_cost)
                .map_err(ServerError::Startup)?,
        );
        {
            let auth = auth.clone();
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    auth.expire();
                }
            });
        }
        let waiters: Arc<Waiters> = Arc::default();
        let dropped = waiters.clone();
        node.set_drop_handler(Arc::new(move |id, e| {
            dropped.answer(id, Err(ServerError::from(e)))
        }));
        let (applied_tx, applied_rx) = watch::channel(mvcc.applied_index());
        let (removed_tx, removed_rx) = watch::channel(false);
        let member_id = node.member_id();
        let was_member = mvcc.members().iter().any(|m| m.id == member_id);
        let learner = Arc::new(AtomicBool::new(mvcc.is_learner(member_id)));
        let last_compact = mvcc.applied_index();
        let mvcc: SharedMvcc = Arc::new(std::sync::RwLock::new(mvcc));
        let hub = {
            let status = node.status_watch();
            let (cluster_id, member_id) = (node.cluster_id(), member_id);
            let store = mvcc.clone();
            WatchHub::new(
                current(&mvcc).current_rev(),
                Box::new(move |revision| ResponseHeader {
                    cluster_id,
                    member_id,
                    revision,
                    raft_term: status.borrow().term,
                }),
                Box::new(move || current(&store)),
                runtime.clone(),
                cfg.max_request_bytes as usize,
            )
        };
        let ticker = hub.clone();
        let every = cfg.watch_progress_interval;
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                ticker.notify_progress();
            }
        });
        {
            // Other members' corruption checks ask for this member's HashKV over the peer
            // port (client auth does not apply there, as with etcd's peer endpoints).
            let store = mvcc.clone();
            node.transport().set_query(move |body| {
                let rev = HashKvRequest::decode(body)
                    .map(|r| r.revision)
                    .unwrap_or(-1);
                match current(&store).hash_kv(rev) {
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
        }
        let source = mvcc.clone();
        node.transport().set_snapshot_source(Arc::new(move |out| {
            current(&source).export(out).map_err(|e| e.to_string())
        }));
        let lessor = {
            let store = mvcc.clone();
            Arc::new(Lessor::new(
                node.status_watch(),
                Box::new(move || current(&store)),
                cfg.heartbeat * cfg.election_ticks as u32,
                cfg.lease_checkpoint_interval,
            ))
        };
        let file_swap: Arc<Mutex<()>> = Arc::default();
        let counters: Arc<crate::metrics::ServerCounters> = Arc::default();
        {
            // Every new leader this member sees, the first one included (as etcd counts).
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
        let applier = Applier {
            mvcc: mvcc.clone(),
            snap_dir,
            snapshot_count: cfg.snapshot_count,
            last_compact,
            last_trim: last_compact,
            trim_every: cfg.snapshot_catchup_entries.max(1),
            compact: Box::new(node.compactor()),
            waiters: waiters.clone(),
            watch: hub.clone(),
            lessor: lessor.clone(),
            applied: applied_tx,
            last_sync: Instant::now(),
            transport: node.transport(),
            member_id,
            was_member,
            removed: removed_tx,
            learner: learner.clone(),
            file_swap: file_swap.clone(),
            auth: auth.clone(),
        };
        std::thread::Builder::new()
            .name("applier".into())
            .spawn(move || applier.run(committed))
            .map_err(|e| ServerError::Startup(e.to_string()))?;
        // Ids only need to be unique among this member's in-flight proposals; seeding from the
        // clock keeps a restarted member from matching an old entry to a new waiter.
        // etcd's request-ID scheme (also its lease IDs): the member ID's low 16 bits, then
        // the start time in milliseconds and a counter in the low 48 bits.
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let seed = ((member_id & 0xffff) << 48) | ((millis << 8) & ((1 << 48) - 1));
        let server = Arc::new(EtcdServer {
            cfg,
            node,
            mvcc,
            waiters,
            next_id: AtomicU64::new(seed),
            applied: applied_rx,
            removed: removed_rx,
            learner,
            watch: hub,
            lessor,
            leader_conn: Mutex::new(None),
            file_swap,
            counters: counters.clone(),
            backups: Default::default(),
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

    /// A lease ID for a grant that did not name one, from the request-ID sequence as etcd
    /// does (so IDs look like etcd's: this member's low ID bits first).
    pub fn new_lease_id(&self) -> i64 {
        lease_id(self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1))
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
        let ch = crate::tls::member_channel(
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
        current(&self.mvcc)
    }

    pub fn counters(&self) -> &crate::metrics::ServerCounters {
        &self.counters
    }

    pub fn backup_stats(&self) -> &crate::backup::BackupStats {
        &self.backups
    }

    /// Proposals made here and not yet applied or failed.
    pub fn pending_proposals(&self) -> usize {
        self.waiters.len()
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
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
    /// waits until it is applied here.
    pub async fn propose(
        &self,
        req: raft_request::Request,
        who: &AuthInfo,
    ) -> Result<Applied, ServerError> {
        self.propose_via(req, None, who).await
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

    /// etcd's quota check before proposing: a request that could grow the store past
    /// `--quota-backend-bytes` raises NOSPACE for this member (through raft, so every member
    /// stops taking such writes) and is refused.
    async fn check_quota(&self, req: &raft_request::Request) -> Result<(), ServerError> {
        let cost = ballast_state::check::quota_cost(req);
        let quota = self.cfg.quota_backend_bytes;
        if cost == 0 || quota == 0 || self.mvcc().db_size() + cost <= quota {
            return Ok(());
        }
        let raise = raft_request::Request::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.member_id(),
            alarm: AlarmType::Nospace as i32,
        });
        tracing::warn!(quota, "backend quota exceeded; raising NOSPACE");
        // An alarm costs nothing, so this does not come back here.
        if let Err(e) = Box::pin(self.propose(raise, &crate::auth::member())).await {
            tracing::warn!(error = %e, "raising NOSPACE failed");
        }
        Err(ServerError::Kv(KvError::NoSpace))
    }

    /// Proposes a membership change as a raft configuration change.
    pub async fn propose_conf(
        &self,
        req: raft_request::Request,
        kind: ConfKind,
        node_id: u64,
    ) -> Result<Applied, ServerError> {
        self.propose_via(req, Some((kind, node_id)), &crate::auth::member())
            .await
    }

    async fn propose_via(
        &self,
        req: raft_request::Request,
        conf: Option<(ConfKind, u64)>,
        who: &AuthInfo,
    ) -> Result<Applied, ServerError> {
        self.check_quota(&req).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = RaftRequest {
            id,
            request: Some(req),
            username: who.user.clone(),
            auth_revision: who.revision,
        }
        .encode_to_vec();
        if data.len() as u64 > self.cfg.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        let rx = self
            .waiters
            .register(id)
            .map_err(|_| ServerError::Raft(RaftError::TooManyRequests))?;
        // One channel per proposal: the applier completes it, or the driver's drop handler
        // fails it when raft refuses the proposal.
        let proposed = match conf {
            None => self.node.propose(data, id),
            Some((kind, node)) => self.node.propose_conf_change(kind, node, data, id),
        };
        let out = match proposed {
            Err(e) => {
                self.waiters.cancel(id);
                Err(e.into())
            }
            Ok(()) => match tokio::time::timeout(self.cfg.request_timeout(), rx).await {
                // Whoever answered (the applier or the drop handler) took the waiter out.
                Ok(r) => r.unwrap_or(Err(ServerError::Stopped)),
                Err(_) => {
                    self.waiters.cancel(id);
                    Err(ServerError::Timeout)
                }
            },
        };
        // Failed to commit, as etcd counts it (not a request the state machine refused).
        if matches!(
            out,
            Err(ServerError::Raft(_) | ServerError::Timeout | ServerError::Stopped)
        ) {
            self.counters
                .proposals_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// Waits until a ReadIndex round confirms this member may serve an up-to-date read.
    pub async fn linearizable_barrier(&self) -> Result<(), ServerError> {
        if failpoint::enabled("break-local-reads") {
            return Ok(());
        }
        let deadline = self.cfg.request_timeout();
        tokio::time::timeout(deadline, async {
            let index = self.node.read_index().await?;
            let mut applied = self.applied.clone();
            applied
                .wait_for(|a| *a >= index)
                .await
                .map_err(|_| ServerError::Stopped)?;
            Ok(())
        })
        .await
        .map_err(|_| ServerError::Timeout)?
    }

    pub async fn range(
        &self,
        req: &RangeRequest,
        who: &AuthInfo,
    ) -> Result<RangeResponse, ServerError> {
        if !req.serializable {
            self.linearizable_barrier().await?;
        }
        let mvcc = self.mvcc();
        if mvcc.auth_enabled() {
            mvcc.with_auth(|a| a.check(who, &req.key, &req.range_end, false))?;
        }
        let mut resp = mvcc.range(req)?;
        let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        resp.header = Some(self.header(rev));
        Ok(resp)
    }
}

/// Applies committed entries in log order on its own thread, so applying never blocks the
/// driver's next fsync.
struct Applier {
    mvcc: SharedMvcc,
    snap_dir: std::path::PathBuf,
    snapshot_count: u64,
    /// Applied index at the last log compaction (WAL rewrite).
    last_compact: u64,
    /// Applied index at the last trim of the in-memory log, and how often to trim: the raft
    /// log would otherwise hold up to `snapshot_count` entries in memory.
    last_trim: u64,
    trim_every: u64,
    compact: Box<dyn Fn(u64, bool) + Send>,
    watch: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    waiters: Arc<Waiters>,
    applied: watch::Sender<u64>,
    last_sync: Instant,
    transport: Transport,
    member_id: u64,
    /// Whether this member's own record has been applied (a joiner's comes later).
    was_member: bool,
    removed: watch::Sender<bool>,
    learner: Arc<AtomicBool>,
    /// Held while the store's file is being replaced (snapshot install, defragmentation).
    file_swap: Arc<Mutex<()>>,
    auth: Arc<crate::auth::Authenticator>,
}

impl Applier {
    fn run(mut self, committed: std::sync::mpsc::Receiver<Apply>) {
        let mut next = None;
        while let Some(work) = next.take().or_else(|| committed.recv().ok()) {
            let res = match work {
                Apply::Entries(mut batch) => {
                    // Batches that queued up meanwhile share one store transaction: each
                    // commit copies the B-tree pages it touched, so fewer commits do less.
                    while batch.len() < MAX_MERGED_ENTRIES {
                        match committed.try_recv() {
                            Ok(Apply::Entries(more)) => batch.extend(more),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.apply(batch)
                }
                Apply::Snapshot { index, path, done } => {
                    let r = self.install(index, &path);
                    let _ = std::fs::remove_file(&path);
                    let _ = done.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    r
                }
            };
            if let Err(e) = res {
                // The disk failed: stop acknowledging anything, and stop the member.
                tracing::error!(error = %e, "apply failed; stopping");
                std::process::exit(1);
            }
        }
        if let Err(e) = current(&self.mvcc).sync() {
            tracing::error!(error = %e, "final backend sync failed");
        }
    }

    /// Replaces the state machine with a received snapshot: build a new store beside the
    /// old, fsync it, rename it into place, then switch readers over.
    fn install(&mut self, index: u64, path: &std::path::Path) -> Result<(), KvError> {
        let swap = self.file_swap.clone();
        let _swap = swap.lock().unwrap_or_else(|p| p.into_inner());
        let db = self.snap_dir.join("db");
        let fresh = self.snap_dir.join("db.new");
        let file = std::fs::File::open(path)
            .map_err(|e| KvError::Corrupt(format!("snapshot {}: {e}", path.display())))?;
        Mvcc::import(&fresh, std::io::BufReader::with_capacity(1 << 20, file))?;
        let installed = Mvcc::open(&fresh)?;
        if installed.applied_index() < index {
            return Err(KvError::Corrupt(format!(
                "snapshot data covers index {} but raft sent it for {index}",
                installed.applied_index()
            )));
        }
        drop(installed);
        std::fs::rename(&fresh, &db)
            .and_then(|_| ballast_storage::wal::sync_dir(&self.snap_dir))
            .map_err(|e| KvError::Corrupt(format!("installing snapshot: {e}")))?;
        let m = Arc::new(Mvcc::open(&db)?);
        let applied = m.applied_index();
        *self.mvcc.write().unwrap_or_else(|p| p.into_inner()) = m;
        self.last_compact = applied;
        self.last_trim = applied;
        self.applied.send_replace(applied);
        self.watch.resync(current(&self.mvcc).current_rev());
        self.sync_membership();
        Ok(())
    }

    fn apply(&mut self, batch: Vec<Committed>) -> Result<(), KvError> {
        let Some(last) = batch.last().map(|c| c.index) else {
            return Ok(());
        };
        let mvcc = current(&self.mvcc);
        let mut ids = Vec::with_capacity(batch.len());
        let entries: Vec<(u64, Option<RaftRequest>)> = batch
            .into_iter()
            .map(|c| {
                let req = if c.rejected || c.data.is_empty() {
                    None
                } else {
                    match RaftRequest::decode(c.data.as_slice()) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            // Every member decodes the same bytes the same way, so skipping
                            // keeps members identical.
                            tracing::error!(index = c.index, error = %e, "undecodable entry skipped");
                            None
                        }
                    }
                };
                (c.index, req)
            })
            .collect();
        for (index, req) in &entries {
            if *index > mvcc.applied_index() {
                ids.push(req.as_ref().map(|r| r.id));
            }
        }
        let membership = entries.iter().any(|(_, r)| {
            matches!(
                r.as_ref().and_then(|r| r.request.as_ref()),
                Some(raft_request::Request::MemberChange(_))
            )
        });
        // Membership must survive a crash with the raft configuration it matches.
        failpoint::crash("apply-before");
        let applied = mvcc.apply_batch(&entries, membership)?;
        failpoint::crash("apply-after");
        let results = applied.results;
        self.watch.publish_from_thread(applied.events, applied.rev);
        if membership {
            self.last_sync = Instant::now();
        }
        // Effects first, so a client that hears back can already use what it created.
        for res in results.iter().flatten() {
            match res {
                Applied::LeaseGrant(g) => self.lessor.granted(g.id, g.ttl),
                // Every member learns every simple token, so any member accepts it.
                Applied::Authenticated { user, token } if !token.is_empty() => {
                    self.auth.assign(token.clone(), user.clone())
                }
                Applied::Auth(effect) => self.auth.apply_effect(effect),
                _ => {}
            }
        }
        self.waiters.answer_all(
            ids.into_iter()
                .zip(results.into_iter().map(|r| r.map_err(ServerError::from))),
        );
        self.applied.send_replace(last);
        if membership {
            self.sync_membership();
        }
        if last.saturating_sub(self.last_compact) >= self.snapshot_count {
            // The WAL may only drop what the store holds durably.
            self.sync_store(&mvcc)?;
            self.last_compact = last;
            self.last_trim = last;
            (self.compact)(last, true);
        } else if last.saturating_sub(self.last_trim) >= self.trim_every {
            self.last_trim = last;
            (self.compact)(last, false);
        }
        // The periodic sync only bounds how much WAL a restart replays, so it runs after the
        // batch's events and answers are out (inside the batch it held them for a whole fsync
        // of the store), and after the snapshot's sync, which resets its clock.
        if self.last_sync.elapsed() >= BACKEND_SYNC_INTERVAL {
            self.sync_store(&mvcc)?;
        }
        Ok(())
    }

    fn sync_store(&mut self, mvcc: &Mvcc) -> Result<(), KvError> {
        mvcc.sync()?;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Points the transport at the applied members and notices this member's own removal.
    fn sync_membership(&mut self) {
        let members = current(&self.mvcc).members();
        let mut present = false;
        for m in &members {
            if m.id == self.member_id {
                present = true;
                self.learner.store(m.is_learner, Ordering::Release);
            } else {
                self.transport.set_peer(m.id, m.peer_ur_ls.clone());
            }
        }
        self.transport
            .retain_peers(|id| members.iter().any(|m| m.id == id));
        if self.was_member && !present {
            tracing::warn!("the member has been permanently removed from the cluster");
            self.removed.send_replace(true);
        }
        self.was_member |= present;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lease_ids_are_positive_like_etcds() {
        assert_eq!(
            super::lease_id(0x9935_a209_abd4_e702),
            0x1935_a209_abd4_e702
        );
        assert_eq!(super::lease_id(1 << 63), 1);
        assert_eq!(super::lease_id(42), 42);
    }
}
