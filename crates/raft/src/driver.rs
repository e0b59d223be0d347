//! The raft driver: one OS thread, one loop, one order.
//!
//! Each turn: take every queued command (proposals, read-index requests) so a burst becomes one
//! batch (the proposals one raft message), tick if due, then handle `Ready` in raft-rs's
//! documented order:
//!
//! 1. send leader messages (safe before our own fsync: the leader counts itself only once its
//!    entries are persisted, so sending early never commits anything unsafely);
//! 2. hand committed entries to the applier (they are durable on a quorum already);
//! 3. append new entries and hard state to the WAL and fsync once for all of them (group
//!    commit). No proposal is acknowledged before this: acks come from the applier, and an
//!    entry only commits after this fsync;
//! 4. send messages that must follow persistence (votes, follower acks);
//! 5. `advance`, then hand off what the light ready newly committed.
//!
//! Nothing but this thread touches the `RawNode`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self as std_mpsc, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MessageType,
    SnapshotMetadata,
};
use raft::prelude::{Config, RawNode};
use raft::{ProgressState, SnapshotStatus, StateRole, Storage};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use ballast_storage::failpoint;

use crate::limits::{APPLY_QUEUE, CMD_QUEUE, INBOUND_QUEUE};
use crate::log::{LogError, MemberRecord, RaftLog};
use crate::store::LogStore;
use crate::transport::{Inbound, Transport};

/// How many nice levels below the rest of the process the driver runs.
const DRIVER_NICE: i32 = 5;
/// How long an unanswered ReadIndex waits before it is asked for again (etcd's
/// `readIndexRetryTime`).
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);

/// Lowers the calling thread's priority by [`DRIVER_NICE`], from whatever the operator gave
/// the process. At equal priority, each proposal woke the driver onto the CPU of the thread
/// serving requests: it cycled (and fsynced) for one or two entries while the requests that
/// would have joined the batch waited behind it. Lower, it runs when a core is free or the
/// request threads yield, with the turn's whole batch: on 2 cores, 1-member puts +13-25%,
/// linearizable ranges +12-20%, and less CPU per request. It still gets its share of a busy
/// core, so heartbeats keep their time. Linux sets this per thread.
fn lower_priority() {
    use rustix::process::{getpriority_process, setpriority_process};
    let Ok(now) = getpriority_process(None) else {
        return;
    };
    if let Err(e) = setpriority_process(None, (now + DRIVER_NICE).min(19)) {
        tracing::debug!(error = %e, "raft driver keeps the process's priority");
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RaftError {
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The WAL failed (shared: a fatal error reaches every waiting proposal).
    #[error("raft storage: {0}")]
    Log(Arc<LogError>),
    /// raft-rs refused (its configuration, its in-memory log, a campaign).
    #[error("raft: {0}")]
    Raft(Arc<raft::Error>),
    /// A raft message failed to encode.
    #[error("raft: {0}")]
    Encode(Arc<protobuf::ProtobufError>),
    #[error("cannot start the raft driver thread: {0}")]
    Thread(Arc<std::io::Error>),
    #[error("raft storage: snapshot {0} accepted but not staged")]
    SnapshotNotStaged(u64),
    /// The state machine could not install a received snapshot (its own words).
    #[error("raft storage: {0}")]
    SnapshotInstall(String),
    /// Entries asked for are no longer in the log (compacted after a snapshot).
    #[error("raft log: entries from {0} are compacted")]
    Compacted(u64),
}

impl From<LogError> for RaftError {
    fn from(e: LogError) -> Self {
        RaftError::Log(Arc::new(e))
    }
}

impl From<raft::Error> for RaftError {
    fn from(e: raft::Error) -> Self {
        RaftError::Raft(Arc::new(e))
    }
}

impl From<raft::StorageError> for RaftError {
    fn from(e: raft::StorageError) -> Self {
        RaftError::Raft(Arc::new(raft::Error::Store(e)))
    }
}

impl From<protobuf::ProtobufError> for RaftError {
    fn from(e: protobuf::ProtobufError) -> Self {
        RaftError::Encode(Arc::new(e))
    }
}

pub struct NodeConfig {
    pub member_id: u64,
    pub cluster_id: u64,
    /// A brand-new cluster's voters with the context of the configuration entry that adds
    /// each (written as the log's first entries, as etcd does). Empty when joining an existing
    /// cluster; ignored when the log already exists.
    pub bootstrap: Vec<(u64, Vec<u8>)>,
    /// Peer URLs of the other members, for the transport.
    pub peers: Vec<(u64, Vec<String>)>,
    /// Runs the transport's network tasks.
    pub runtime: tokio::runtime::Handle,
    pub wal_dir: PathBuf,
    /// Where received snapshots are staged before the state machine takes them.
    pub snap_dir: PathBuf,
    /// One raft tick (etcd's `--heartbeat-interval`).
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns (`--election-timeout` / tick).
    pub election_ticks: usize,
    /// Entries kept in the log behind a snapshot point for lagging followers.
    pub catch_up_entries: u64,
    /// WAL segment files kept, superseded ones included (`--max-wals`; 0: every one).
    pub max_wal_files: usize,
    /// Received snapshot files kept waiting to be installed (`--max-snapshots`; 0: no bound).
    pub max_snapshot_files: usize,
    /// Last index the state machine has durably applied.
    pub applied: u64,
    /// The most entries a hold ([`Node::hold_log_after`]) may keep past where the log would
    /// otherwise be compacted (`--backup-archive-log-hold`; 0: no hold).
    pub max_log_hold: u64,
    pub max_msg_bytes: u64,
    /// TLS for peer connections to and from `https` peer URLs.
    pub peer_tls: Option<crate::transport::PeerTls>,
}

/// A committed log entry for the applier.
#[derive(Debug, Clone)]
pub struct Committed {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
    /// A configuration change; `data` is its context.
    pub conf_change: bool,
    /// Raft refused the configuration change (e.g. it would remove the last voter); every
    /// member refuses it alike, so the applier must skip it.
    pub rejected: bool,
}

/// Where an index stands in a member's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTerm {
    /// The entry's term.
    Term(u64),
    /// Compacted out of the log: its term is no longer known here.
    Gone,
    /// Past the last entry.
    Beyond,
}

/// Work for the applier, in log order.
pub enum Apply {
    Entries(Vec<Committed>),
    /// Replace the state machine with a received snapshot (a file of backend export records)
    /// covering at least `index`; answer once the new state is durable.
    Snapshot {
        index: u64,
        path: PathBuf,
        done: SyncSender<Result<(), String>>,
    },
}

/// A converted member's raft state (see [`Node::import_log`]).
#[derive(Debug, Clone, Default)]
pub struct ImportedLog {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The last index the store holds, its term, and the configuration at that index.
    pub applied_index: u64,
    pub applied_term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The entries after `applied_index`, contiguous.
    pub entries: Vec<ImportedEntry>,
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// One entry of an [`ImportedLog`]: normal data, or a configuration change and its context.
#[derive(Debug, Clone)]
pub struct ImportedEntry {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
    pub conf: Option<(ConfKind, u64)>,
}

/// raft-rs's configuration change for `kind` of `node_id`, carrying `context`.
fn conf_change(kind: ConfKind, node_id: u64, context: Vec<u8>) -> ConfChange {
    let mut cc = ConfChange::default();
    cc.set_change_type(match kind {
        ConfKind::AddVoter => ConfChangeType::AddNode,
        ConfKind::AddLearner => ConfChangeType::AddLearnerNode,
        ConfKind::Remove => ConfChangeType::RemoveNode,
    });
    cc.node_id = node_id;
    cc.context = context.into();
    cc
}

/// Membership changes raft itself knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfKind {
    AddVoter,
    AddLearner,
    Remove,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub leader: u64,
    pub term: u64,
    pub is_leader: bool,
    /// Set when the driver stopped on a storage failure; the member must exit.
    pub fatal: Option<String>,
}

enum Cmd {
    /// Entry data and the proposer's token, passed to the drop handler if raft refuses it.
    Propose(Vec<u8>, u64),
    ProposeConf(ConfChange, u64),
    ReadIndex(oneshot::Sender<Result<u64, RaftError>>),
    LearnerReady(u64, oneshot::Sender<Result<bool, RaftError>>),
    ActivePeers(oneshot::Sender<Result<Vec<(u64, bool)>, RaftError>>),
    TransferLeader(u64, oneshot::Sender<Result<(), RaftError>>),
    /// Committed entries from an index through another, up to a byte budget.
    Committed(
        u64,
        u64,
        u64,
        oneshot::Sender<Result<Vec<Committed>, RaftError>>,
    ),
    /// The term of the entry at an index.
    LogTerm(u64, oneshot::Sender<LogTerm>),
    /// The state machine has applied everything up to `index`: drop in-memory entries before
    /// it (keeping the catch-up entries). With `durable`, it also holds them durably, so the
    /// WAL is rewritten from there too.
    Compact {
        index: u64,
        durable: bool,
    },
}

/// Told `(token, why)` when a proposal never made it into the log. Success is seen when the
/// entry is applied, so a proposal costs no channel of its own.
pub type DropHandler = Arc<dyn Fn(u64, RaftError) + Send + Sync>;

pub struct Node {
    tx: mpsc::Sender<Cmd>,
    on_drop: Arc<OnceLock<DropHandler>>,
    transport: Transport,
    status: watch::Receiver<RaftStatus>,
    commit: Arc<AtomicU64>,
    /// Entries after this index stay in the log (0: no hold).
    log_hold: Arc<AtomicU64>,
    member_id: u64,
    cluster_id: u64,
    _thread: JoinHandle<()>,
}

impl Node {
    /// Whether `wal_dir` already holds a member's log (a restart rather than a first start).
    pub fn log_exists(wal_dir: &std::path::Path) -> bool {
        RaftLog::exists(wal_dir)
    }

    /// Writes a new member's log (identity and the committed bootstrap configuration) without
    /// starting anything: what a first start would write, for `snapshot restore`.
    pub fn bootstrap_log(
        wal_dir: &std::path::Path,
        member_id: u64,
        cluster_id: u64,
        bootstrap: &[(u64, Vec<u8>)],
    ) -> Result<(), RaftError> {
        let member = MemberRecord {
            member_id,
            cluster_id,
        };
        create_log(wal_dir, member, bootstrap).map(|_| ())
    }

    /// Writes the log of a member converted from another raft implementation (an etcd
    /// member): its identity, the configuration and position its store holds as a snapshot
    /// point, the entries after it, and its hard state, all fsynced. The caller marks the
    /// conversion as unfinished until this returns, and removes a partial log to redo it.
    pub fn import_log(wal_dir: &std::path::Path, log: &ImportedLog) -> Result<(), RaftError> {
        let member = MemberRecord {
            member_id: log.member_id,
            cluster_id: log.cluster_id,
        };
        let cs = ConfState::from((log.voters.clone(), log.learners.clone()));
        let mut l = RaftLog::create(wal_dir, member, &cs)?;
        let mut meta = SnapshotMetadata {
            index: log.applied_index,
            term: log.applied_term,
            ..Default::default()
        };
        meta.set_conf_state(cs);
        l.save_snapshot(&meta)?;
        let mut entries = Vec::with_capacity(log.entries.len());
        for e in &log.entries {
            let mut entry = Entry {
                index: e.index,
                term: e.term,
                ..Default::default()
            };
            match e.conf {
                None => entry.data = e.data.clone().into(),
                Some((kind, node_id)) => {
                    let cc = conf_change(kind, node_id, e.data.clone());
                    entry.set_entry_type(EntryType::EntryConfChange);
                    entry.data = cc.write_to_bytes()?.into();
                }
            }
            entries.push(entry);
        }
        let hs = HardState {
            term: log.term,
            vote: log.vote,
            commit: log.commit,
            ..Default::default()
        };
        l.save(&entries, Some(&hs))?;
        l.sync()?;
        Ok(())
    }

    /// Removes a member's log from `wal_dir` (a conversion that did not finish), leaving any
    /// other file there alone.
    pub fn remove_log(wal_dir: &std::path::Path) -> Result<(), RaftError> {
        Ok(RaftLog::remove(wal_dir)?)
    }

    /// Opens (or creates) the member's log and starts the driver thread. Returns the node and
    /// the stream of committed entries, which the caller must apply in order.
    pub fn start(cfg: NodeConfig) -> Result<(Node, Receiver<Apply>), RaftError> {
        let mut storage;
        let log;
        let member;
        if RaftLog::exists(&cfg.wal_dir) {
            let (l, rec) = RaftLog::open(&cfg.wal_dir, cfg.applied)?;
            storage = LogStore::new(rec.conf_state.clone());
            if rec.snapshot.index > 0 {
                storage.apply_snapshot(rec.snapshot.clone());
                storage.set_conf_state(rec.conf_state.clone());
            }
            storage.recover(&rec)?;
            let mut hs = rec.hard_state;
            // The commit index is made durable only with the next append, so the logged one
            // may lag what the state machine applied. Whatever it applied was committed:
            // without this, raft handed every entry in between to the applier again (read
            // back from the WAL), and a restart's first read waited for them.
            let last = storage.last_index().unwrap_or(0);
            hs.commit = hs
                .commit
                .max(storage.hard_state().commit)
                .max(cfg.applied.min(last));
            storage.set_hard_state(hs);
            log = l;
            member = rec.member;
        } else {
            member = MemberRecord {
                member_id: cfg.member_id,
                cluster_id: cfg.cluster_id,
            };
            (log, storage) = create_log(&cfg.wal_dir, member, &cfg.bootstrap)?;
        }
        storage.set_wal_dir(cfg.wal_dir.clone());
        let committed = storage.hard_state().commit;
        let wal_compacted = storage.snapshot_metadata().index;
        let conf_now = storage.conf_state().clone();
        let raft_cfg = Config {
            id: member.member_id,
            election_tick: cfg.election_ticks.max(2),
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            applied: cfg.applied.min(committed),
            max_size_per_msg: cfg.max_msg_bytes,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let node = RawNode::new(&raft_cfg, storage, &crate::logger::logger())?;
        let voters = node
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .collect::<Vec<_>>();
        // A lone voter need not wait out an election timeout to lead; it campaigns as soon as
        // its bootstrap configuration is applied (raft refuses before).
        let lone_voter = voters == [member.member_id];
        let (tx, rx) = mpsc::channel(CMD_QUEUE);
        let (apply_tx, apply_rx) = std_mpsc::sync_channel(APPLY_QUEUE);
        let (status_tx, status_rx) = watch::channel(RaftStatus::default());
        let commit = Arc::new(AtomicU64::new(0));
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        // Frames carry one append's worth of entries (capped by max_size_per_msg, but at least
        // one entry of up to that size) plus headers.
        let max_frame = (cfg.max_msg_bytes as usize).saturating_mul(2) + (1 << 20);
        let transport = Transport::new(
            member.member_id,
            member.cluster_id,
            max_frame,
            inbound_tx,
            cfg.runtime.clone(),
            crate::transport::SnapshotStage {
                dir: cfg.snap_dir.clone(),
                max_files: cfg.max_snapshot_files,
            },
            cfg.peer_tls.clone(),
        );
        for (id, urls) in &cfg.peers {
            transport.set_peer(*id, urls.clone());
        }
        let on_drop: Arc<OnceLock<DropHandler>> = Arc::new(OnceLock::new());
        let log_hold = Arc::new(AtomicU64::new(0));
        let mut driver = Driver {
            log_hold: log_hold.clone(),
            max_log_hold: cfg.max_log_hold,
            snapshots_sent: HashMap::new(),
            node,
            on_drop: on_drop.clone(),
            log,
            rx,
            inbound,
            transport: transport.clone(),
            member,
            conf_history: vec![(0, conf_now)],
            apply_tx,
            status: status_tx,
            commit: commit.clone(),
            tick: cfg.tick,
            reads: HashMap::new(),
            next_read: 0,
            read_asked: None,
            lone_voter,
            catch_up_entries: cfg.catch_up_entries,
            max_wal_files: cfg.max_wal_files,
            wal_compacted,
            max_msg_bytes: cfg.max_msg_bytes as usize,
            proposals: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("raft-driver".into())
            .spawn(move || {
                lower_priority();
                driver.run()
            })
            .map_err(|e| RaftError::Thread(Arc::new(e)))?;
        Ok((
            Node {
                tx,
                on_drop,
                transport,
                status: status_rx,
                commit,
                log_hold,
                member_id: member.member_id,
                cluster_id: member.cluster_id,
                _thread: thread,
            },
            apply_rx,
        ))
    }

    fn send(&self, cmd: Cmd) -> Result<(), RaftError> {
        self.tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => RaftError::TooManyRequests,
            TrySendError::Closed(_) => RaftError::Stopped,
        })
    }

    /// A handle the applier uses to report how far the state machine has applied (and, with
    /// `true`, holds durably), so the in-memory log (and then the WAL) can be compacted.
    pub fn compactor(&self) -> impl Fn(u64, bool) + Send + 'static {
        let tx = self.tx.clone();
        move |index, durable| {
            // A full queue only postpones compaction to the next report.
            let _ = tx.try_send(Cmd::Compact { index, durable });
        }
    }

    /// The peer transport, to serve the peer listener with.
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// Installs the handler told about dropped proposals (once; later calls are ignored).
    pub fn set_drop_handler(&self, f: DropHandler) {
        let _ = self.on_drop.set(f);
    }

    /// Queues `data` for the log. If raft refuses it, the drop handler gets `token`; success is
    /// observed when the entry is applied.
    pub fn propose(&self, data: Vec<u8>, token: u64) -> Result<(), RaftError> {
        self.send(Cmd::Propose(data, token))
    }

    /// Queues a membership change; like [`Node::propose`], success is seen when it applies.
    pub fn propose_conf_change(
        &self,
        kind: ConfKind,
        node_id: u64,
        context: Vec<u8>,
        token: u64,
    ) -> Result<(), RaftError> {
        self.send(Cmd::ProposeConf(conf_change(kind, node_id, context), token))
    }

    /// On the leader: whether learner `id` has caught up enough to be promoted (its match
    /// index is at least 90% of the leader's, etcd's rule). `NotLeader` elsewhere.
    pub async fn learner_ready(&self, id: u64) -> Result<bool, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::LearnerReady(id, tx))?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// On the leader: every member of the configuration, and whether it was heard from within
    /// the last election timeout (raft's check-quorum activity).
    pub async fn active_peers(&self) -> Result<Vec<(u64, bool)>, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::ActivePeers(tx))?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// On the leader: starts handing leadership to `id`.
    pub async fn transfer_leader(&self, id: u64) -> Result<(), RaftError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::TransferLeader(id, tx))?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Keeps entries after `index` in the log (0 lifts the hold), for the backup archive that
    /// has not copied them yet: compaction stops short of them, by at most
    /// `NodeConfig::max_log_hold` entries.
    pub fn hold_log_after(&self, index: u64) {
        self.log_hold.store(index, Ordering::Relaxed);
    }

    /// Committed entries from `low` through `high`, as logged (at least one if any is
    /// committed, then up to `max_bytes`): what a backup archive copies. `Compacted` if `low`
    /// is gone.
    pub async fn committed_entries(
        &self,
        low: u64,
        high: u64,
        max_bytes: u64,
    ) -> Result<Vec<Committed>, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Committed(low, high, max_bytes, tx))?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// The term of the entry at `index` in this member's log: what tells one raft history
    /// from another (two logs with an entry of the same index and term agree up to it).
    pub async fn log_term(&self, index: u64) -> Result<LogTerm, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::LogTerm(index, tx))?;
        rx.await.map_err(|_| RaftError::Stopped)
    }

    /// The commit index a linearizable read must wait to have applied (raft ReadIndex).
    pub async fn read_index(&self) -> Result<u64, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::ReadIndex(tx))?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    pub fn status_watch(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// The highest log index this member knows to be committed.
    pub fn commit_index(&self) -> u64 {
        self.commit.load(Ordering::Relaxed)
    }

    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }
}

struct Driver {
    node: RawNode<LogStore>,
    on_drop: Arc<OnceLock<DropHandler>>,
    log: RaftLog,
    rx: mpsc::Receiver<Cmd>,
    inbound: mpsc::Receiver<Inbound>,
    transport: Transport,
    member: MemberRecord,
    /// Configurations raft applied, by the index that produced them (for snapshot metadata).
    conf_history: Vec<(u64, ConfState)>,
    apply_tx: SyncSender<Apply>,
    status: watch::Sender<RaftStatus>,
    /// Kept apart from `status`: it moves on every ready, and the status watchers (leader
    /// changes, the lessor) should wake only when leadership does.
    commit: Arc<AtomicU64>,
    tick: Duration,
    reads: HashMap<u64, Vec<oneshot::Sender<Result<u64, RaftError>>>>,
    next_read: u64,
    /// When the newest pending read context was last asked for (`None`: not yet). raft drops
    /// a ReadIndex silently (a leader that has not committed in its term yet, a lost
    /// message), so unanswered reads are asked for again, as etcd retries its read loop.
    read_asked: Option<Instant>,
    /// Campaign once the configuration is applied: this member is the only voter.
    lone_voter: bool,
    catch_up_entries: u64,
    max_wal_files: usize,
    /// Index of the snapshot the WAL starts from.
    wal_compacted: u64,
    /// Largest proposal batch, in bytes of entry data (the peer transport's frames must hold a
    /// forwarded batch).
    max_msg_bytes: usize,
    /// Client proposals drained this turn, proposed together by [`Driver::flush_proposals`].
    proposals: Vec<(Vec<u8>, u64)>,
    log_hold: Arc<AtomicU64>,
    max_log_hold: u64,
    /// When a snapshot to each peer was last delivered: while the peer installs it (too busy
    /// to answer heartbeats for seconds), the leader keeps the entries after it.
    snapshots_sent: HashMap<u64, Instant>,
}

/// Where compaction to `index` may go with entries after `hold` held (0: none), keeping at
/// most `max_hold` extra entries: never below `hold` unless that would keep more.
fn held_index(index: u64, hold: u64, max_hold: u64) -> u64 {
    if hold == 0 || index <= hold {
        return index;
    }
    hold.max(index.saturating_sub(max_hold))
}

/// On a leader, the lowest index a peer it is catching up has: the index of a snapshot in
/// flight to it, or what an active follower has (matched, or while probing, what the leader
/// probes from: right after a snapshot, its index). 0: none (or not the leader). A peer
/// that has stopped answering holds nothing, so a dead member never keeps the snapshot point
/// behind a membership change a new member's snapshot needs; one `installing` a snapshot it
/// was just sent (silent while it does) is the exception.
fn catching_up<S: Storage>(raft: &raft::Raft<S>, installing: &dyn Fn(u64) -> bool) -> u64 {
    if raft.state != StateRole::Leader {
        return 0;
    }
    raft.prs()
        .iter()
        .filter(|(id, _)| **id != raft.id)
        .filter_map(|(id, pr)| match pr.state {
            ProgressState::Snapshot => Some(pr.pending_snapshot),
            // Probing past what it matched: the snapshot's index, once it was delivered.
            ProgressState::Probe
                if pr.recent_active || (pr.next_idx > pr.matched + 1 && installing(*id)) =>
            {
                Some(pr.next_idx.saturating_sub(1).max(pr.matched))
            }
            ProgressState::Replicate if pr.recent_active => Some(pr.matched),
            _ => None,
        })
        .filter(|&i| i > 0)
        .min()
        .unwrap_or(0)
}

impl Driver {
    fn run(&mut self) {
        // A runtime of its own: the loop waits on channels and timers, never on other tasks,
        // and its blocking fsyncs cannot stall the network runtime.
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                self.status.send_modify(|s| s.fatal = Some(e.to_string()));
                return;
            }
        };
        if let Err(e) = rt.block_on(self.run_loop()) {
            tracing::error!(error = %e, "raft driver stopped");
            self.status.send_modify(|s| s.fatal = Some(e.to_string()));
        }
        for (_, waiters) in self.reads.drain() {
            for w in waiters {
                let _ = w.send(Err(RaftError::Stopped));
            }
        }
    }

    async fn run_loop(&mut self) -> Result<(), RaftError> {
        let mut next_tick = Instant::now() + self.tick;
        // A lone voter with nothing left to apply leads at once, not after the first tick.
        self.on_ready()?;
        self.campaign_if_alone()?;
        self.on_ready()?;
        loop {
            let mut reads = Vec::new();
            tokio::select! {
                biased;
                Some(m) = self.inbound.recv() => self.step(m),
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd, &mut reads),
                    None => return Ok(()),
                },
                _ = tokio::time::sleep_until(next_tick) => {}
            }
            // Drain both queues so a burst shares one fsync, one append and one ReadIndex.
            for _ in 0..INBOUND_QUEUE {
                match self.inbound.try_recv() {
                    Ok(m) => self.step(m),
                    Err(_) => break,
                }
            }
            for _ in 0..CMD_QUEUE {
                match self.rx.try_recv() {
                    Ok(cmd) => self.handle(cmd, &mut reads),
                    Err(_) => break,
                }
            }
            self.flush_proposals();
            if !reads.is_empty() {
                self.next_read += 1;
                self.reads.insert(self.next_read, reads);
                self.read_asked = None;
            }
            self.ask_reads();
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick = Instant::now() + self.tick;
            }
            self.on_ready()?;
            // A leader's first commit in its term, just handled, lets held reads go now.
            if self.ask_reads() {
                self.on_ready()?;
            }
        }
    }

    /// Asks raft for the read index of the newest pending read context (answering it answers
    /// every earlier one): at once, and again every `READ_INDEX_RETRY` until answered. A
    /// leader waits until it has committed in its term, since raft would drop the request.
    fn ask_reads(&mut self) -> bool {
        if self.reads.is_empty() {
            self.read_asked = None;
            return false;
        }
        if self
            .read_asked
            .is_some_and(|at| at.elapsed() < READ_INDEX_RETRY)
        {
            return false;
        }
        let r = &self.node.raft;
        if r.state == StateRole::Leader && !r.commit_to_current_term() {
            return false;
        }
        // The leader keys pending reads by context, so contexts must be unique across
        // members, not just here: prefix this member's id.
        let mut rctx = self.member.member_id.to_be_bytes().to_vec();
        rctx.extend_from_slice(&self.next_read.to_be_bytes());
        self.node.read_index(rctx);
        self.read_asked = Some(Instant::now());
        true
    }

    fn step(&mut self, m: Inbound) {
        match m {
            Inbound::Message(m) => {
                // Errors here are stale or foreign messages raft refuses; nothing to undo.
                if let Err(e) = self.node.step(*m) {
                    tracing::debug!(error = %e, "peer message not stepped");
                }
            }
            Inbound::Unreachable(id) => self.node.report_unreachable(id),
            Inbound::SnapshotSent(id, ok) => {
                if ok {
                    self.snapshots_sent.insert(id, Instant::now());
                }
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.node.report_snapshot(id, status);
            }
        }
    }

    /// Drops in-memory log entries up to `index` (less the catch-up entries) and, when the
    /// state machine holds them durably, rewrites the WAL to start there too. Raft then sends
    /// followers that need older entries a snapshot, exported from the live store, which
    /// covers `index`.
    fn committed_from(
        &self,
        low: u64,
        high: u64,
        max_bytes: u64,
    ) -> Result<Vec<Committed>, RaftError> {
        let commit = self.node.raft.raft_log.committed.min(high);
        if low > commit {
            return Ok(Vec::new());
        }
        let store = self.node.store();
        let ctx = raft::GetEntriesContext::empty(false);
        match store.entries(low, commit + 1, max_bytes, ctx) {
            Ok(ents) => Ok(ents
                .into_iter()
                .map(|e| Committed {
                    index: e.index,
                    term: e.term,
                    // A configuration change as logged (raft's own encoding).
                    conf_change: e.get_entry_type() == EntryType::EntryConfChange,
                    data: e.data.to_vec(),
                    rejected: false,
                })
                .collect()),
            Err(raft::Error::Store(raft::StorageError::Compacted)) => {
                Err(RaftError::Compacted(low))
            }
            Err(e) => Err(RaftError::Raft(Arc::new(e))),
        }
    }

    fn compact(&mut self, index: u64, durable: bool) -> Result<(), RaftError> {
        let store = self.node.store();
        // A hold on entries already gone holds nothing.
        let hold = |index: u64, from: u64, max: u64| {
            let held = held_index(index, from, max);
            if store.term_of(held).is_some() {
                held
            } else {
                index
            }
        };
        let backup = self.log_hold.load(Ordering::Relaxed);
        let index = hold(index, backup, self.max_log_hold);
        // A peer the leader is catching up keeps the entries after what it has, as a
        // follower inside the catch-up window does anyway.
        self.snapshots_sent
            .retain(|_, at| at.elapsed() < crate::limits::SNAPSHOT_INSTALL_GRACE);
        let sent = &self.snapshots_sent;
        let behind = match catching_up(&self.node.raft, &|id| sent.contains_key(&id)) {
            0 => 0,
            has => has.saturating_add(self.catch_up_entries),
        };
        let index = hold(index, behind, crate::limits::CATCH_UP_HOLD);
        let trim = index > store.snapshot_metadata().index;
        let rewrite = durable && index > self.wal_compacted;
        if !trim && !rewrite {
            return Ok(());
        }
        let Some(term) = store.term_of(index) else {
            return Ok(());
        };
        let conf = self
            .conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| store.conf_state().clone());
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf);
        if trim {
            self.node
                .mut_store()
                .compact_to(meta.clone(), self.catch_up_entries);
        }
        // The WAL's entries must continue right after its snapshot. Reports come in index
        // order, so a trim never runs past a later durable index; if one ever did, keep the
        // old WAL rather than write a log that cannot be read back.
        let gap = self
            .node
            .store()
            .first_retained()
            .is_some_and(|first| first > index + 1);
        debug_assert!(!(rewrite && gap), "log trimmed past durable index {index}");
        if rewrite && gap {
            tracing::warn!(
                index,
                "in-memory log trimmed past the durable index; WAL kept as is"
            );
        }
        if rewrite && !gap {
            failpoint::crash("raft-before-snapshot");
            let started = std::time::Instant::now();
            let store = self.node.store();
            let at = self.log.rewrite(
                self.max_wal_files,
                self.member,
                store.conf_state(),
                store.hard_state(),
                &meta,
                store.retained(),
            )?;
            self.node.mut_store().set_positions(&at);
            self.wal_compacted = index;
            failpoint::crash("raft-after-snapshot");
            tracing::info!(index, term, took = ?started.elapsed(), "compacted raft log");
        }
        // Older configurations can no longer be asked for.
        let keep_from = self
            .conf_history
            .iter()
            .rposition(|(i, _)| *i <= index)
            .unwrap_or(0);
        self.conf_history.drain(..keep_from);
        Ok(())
    }

    /// A snapshot from the leader: the state machine takes it first (durably), then the log
    /// records it, so a crash in between only means receiving it again.
    fn install_snapshot(&mut self, meta: SnapshotMetadata) -> Result<(), RaftError> {
        let path = self
            .transport
            .take_received(meta.index)
            .ok_or_else(|| RaftError::SnapshotNotStaged(meta.index))?;
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.apply_tx
            .send(Apply::Snapshot {
                index: meta.index,
                path,
                done: tx,
            })
            .map_err(|_| RaftError::Stopped)?;
        rx.recv()
            .map_err(|_| RaftError::Stopped)?
            .map_err(RaftError::SnapshotInstall)?;
        self.conf_history
            .push((meta.index, meta.get_conf_state().clone()));
        self.log.save_snapshot(&meta)?;
        self.node.mut_store().apply_snapshot(meta.clone());
        tracing::info!(index = meta.index, term = meta.term, "installed snapshot");
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        for id in self.transport.send(msgs) {
            self.node.report_unreachable(id);
        }
    }

    fn handle(&mut self, cmd: Cmd, reads: &mut Vec<oneshot::Sender<Result<u64, RaftError>>>) {
        if !matches!(cmd, Cmd::Propose(..)) {
            // Anything else keeps its place after the proposals queued before it.
            self.flush_proposals();
        }
        match cmd {
            Cmd::Propose(data, token) => self.proposals.push((data, token)),
            Cmd::ProposeConf(cc, token) => {
                self.propose_or_drop(&[token], |n| n.propose_conf_change(vec![], cc));
            }
            Cmd::LearnerReady(id, tx) => {
                let r = &self.node.raft;
                let res = if r.state != StateRole::Leader {
                    Err(RaftError::NotLeader)
                } else {
                    let leader_match = r.prs().get(r.id).map(|p| p.matched).unwrap_or(0);
                    Ok(r.prs()
                        .get(id)
                        .is_none_or(|p| p.matched as f64 >= leader_match as f64 * 0.9))
                };
                let _ = tx.send(res);
            }
            Cmd::ActivePeers(tx) => {
                let r = &self.node.raft;
                let res = if r.state != StateRole::Leader {
                    Err(RaftError::NotLeader)
                } else {
                    Ok(r.prs()
                        .iter()
                        .map(|(id, p)| (*id, *id == r.id || p.recent_active))
                        .collect())
                };
                let _ = tx.send(res);
            }
            Cmd::TransferLeader(id, tx) => {
                let res = if self.node.raft.state != StateRole::Leader {
                    Err(RaftError::NotLeader)
                } else {
                    self.node.transfer_leader(id);
                    Ok(())
                };
                let _ = tx.send(res);
            }
            Cmd::Committed(low, high, max_bytes, tx) => {
                let _ = tx.send(self.committed_from(low, high, max_bytes));
            }
            Cmd::LogTerm(index, tx) => {
                let log = &self.node.raft.raft_log;
                let at = if index > log.last_index() {
                    LogTerm::Beyond
                } else {
                    // raft's log: the unstable tail too; 0 for an index before the first.
                    match log.term(index) {
                        Ok(t) if t > 0 => LogTerm::Term(t),
                        _ => LogTerm::Gone,
                    }
                };
                let _ = tx.send(at);
            }
            Cmd::Compact { index, durable } => {
                if let Err(e) = self.compact(index, durable) {
                    // The old log is still whole; compaction is retried at the next report.
                    tracing::warn!(index, error = %e, "raft log compaction failed");
                }
            }
            Cmd::ReadIndex(tx) => {
                if self.node.raft.leader_id == raft::INVALID_ID {
                    let _ = tx.send(Err(RaftError::NoLeader));
                } else {
                    reads.push(tx);
                }
            }
        }
    }

    /// Proposes the turn's client proposals as few raft messages as their size allows: one
    /// append and one fsync'd WAL write either way, but a batch is one message to step (and, on
    /// a follower, one forwarded to the leader) and one append per follower, where proposing
    /// them one by one made a message, and an answer from every follower, per proposal.
    fn flush_proposals(&mut self) {
        if self.proposals.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.proposals);
        let mut entries = Vec::new();
        let mut tokens = Vec::new();
        let mut bytes = 0usize;
        for (data, token) in pending {
            if !entries.is_empty() && bytes + data.len() > self.max_msg_bytes {
                self.propose_entries(std::mem::take(&mut entries), std::mem::take(&mut tokens));
                bytes = 0;
            }
            bytes += data.len();
            entries.push(Entry {
                data: data.into(),
                ..Default::default()
            });
            tokens.push(token);
        }
        self.propose_entries(entries, tokens);
    }

    fn propose_entries(&mut self, entries: Vec<Entry>, tokens: Vec<u64>) {
        // What `RawNode::propose` builds, with every entry of the batch.
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.node.raft.id;
        m.set_entries(entries.into());
        self.propose_or_drop(&tokens, |n| n.raft.step(m));
    }

    /// Proposes through raft, or tells the proposers (by token) at once that there is no
    /// leader to take it.
    fn propose_or_drop(
        &mut self,
        tokens: &[u64],
        propose: impl FnOnce(&mut RawNode<LogStore>) -> raft::Result<()>,
    ) {
        let dropped = if self.node.raft.leader_id == raft::INVALID_ID {
            true
        } else if let Err(e) = propose(&mut self.node) {
            tracing::debug!(error = %e, "proposal dropped");
            true
        } else {
            false
        };
        if dropped {
            if let Some(f) = self.on_drop.get() {
                for &token in tokens {
                    f(token, RaftError::NoLeader);
                }
            }
        }
    }

    fn hand_off(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        if entries.is_empty() {
            return Ok(());
        }
        let last = entries.last().map(|e| e.index).unwrap_or(0);
        let mut batch = Vec::with_capacity(entries.len());
        for mut e in entries {
            let mut c = Committed {
                index: e.index,
                term: e.term,
                conf_change: e.get_entry_type() == EntryType::EntryConfChange,
                rejected: false,
                data: e.take_data().to_vec(),
            };
            if c.conf_change {
                c.rejected = !self.apply_conf_change(c.index, &mut c.data)?;
            }
            batch.push(c);
        }
        self.apply_tx
            .send(Apply::Entries(batch))
            .map_err(|_| RaftError::Stopped)?;
        self.node.advance_apply_to(last);
        Ok(())
    }

    fn on_ready(&mut self) -> Result<(), RaftError> {
        if !self.node.has_ready() {
            // A restarted lone voter has nothing to hand off, so no Ready ever comes first.
            self.campaign_if_alone()?;
            self.publish_status();
            return Ok(());
        }
        let mut rd = self.node.ready();
        self.send(rd.take_messages());
        for rs in rd.take_read_states() {
            self.resolve_read(&rs.request_ctx, rs.index);
        }
        let has_snapshot = !rd.snapshot().is_empty();
        if has_snapshot {
            self.install_snapshot(rd.snapshot().get_metadata().clone())?;
        }
        self.hand_off(rd.take_committed_entries())?;
        if has_snapshot || !rd.entries().is_empty() || rd.hs().is_some() {
            failpoint::crash("raft-before-save");
            let at = self.log.save(rd.entries(), rd.hs())?;
            // etcd's MustSync: entries, term and vote must be on disk before anything that
            // depends on them is sent; a commit index need not (a restart learns it again,
            // and the applier skips what the store already holds). A lone put otherwise paid
            // a second fsync on every member just for its commit.
            let prev = self.node.store().hard_state();
            let must_sync = has_snapshot
                || !rd.entries().is_empty()
                || rd
                    .hs()
                    .is_some_and(|hs| hs.term != prev.term || hs.vote != prev.vote);
            if must_sync {
                self.log.sync()?;
            }
            failpoint::crash("raft-after-save");
            let store = self.node.mut_store();
            store.append_at(rd.entries(), &at)?;
            if let Some(hs) = rd.hs() {
                store.set_hard_state(hs.clone());
            }
        }
        self.send(rd.take_persisted_messages());
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit);
        }
        self.send(light.take_messages());
        self.hand_off(light.take_committed_entries())?;
        self.node.advance_apply();
        self.campaign_if_alone()?;
        self.publish_status();
        Ok(())
    }

    /// A lone voter campaigns once everything committed is handed off (raft refuses before),
    /// instead of waiting out an election timeout.
    fn campaign_if_alone(&mut self) -> Result<(), RaftError> {
        let log = &self.node.raft.raft_log;
        if self.lone_voter && log.applied >= log.committed {
            self.lone_voter = false;
            if self.node.raft.state != StateRole::Leader {
                self.node.campaign()?;
            }
        }
        Ok(())
    }

    /// Applies a committed configuration change to raft and makes the new configuration
    /// durable before anything else happens (a restart must not forget it). Leaves the change's
    /// context in `data`. Returns whether raft accepted it.
    fn apply_conf_change(&mut self, index: u64, data: &mut Vec<u8>) -> Result<bool, RaftError> {
        let mut cc = match ConfChange::parse_from_bytes(data) {
            Ok(cc) => cc,
            Err(e) => {
                tracing::error!(index, error = %e, "undecodable configuration change skipped");
                data.clear();
                return Ok(false);
            }
        };
        *data = cc.take_context().to_vec();
        match self.node.apply_conf_change(&cc) {
            Ok(cs) => {
                self.log.save_conf_state(&cs)?;
                self.log.sync()?;
                self.conf_history.push((index, cs.clone()));
                self.node.mut_store().set_conf_state(cs);
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(index, error = %e, "configuration change refused");
                Ok(false)
            }
        }
    }

    fn resolve_read(&mut self, ctx: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 16]>::try_from(ctx) else {
            return;
        };
        let (member, counter) = bytes.split_at(8);
        if member != self.member.member_id.to_be_bytes() {
            return;
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(counter);
        let id = u64::from_be_bytes(c);
        // A read state answers its own request and every earlier one still waiting.
        let done: Vec<u64> = self.reads.keys().copied().filter(|k| *k <= id).collect();
        for k in done {
            for w in self.reads.remove(&k).unwrap_or_default() {
                let _ = w.send(Ok(index));
            }
        }
    }

    fn publish_status(&mut self) {
        let r = &self.node.raft;
        let next = RaftStatus {
            leader: r.leader_id,
            term: r.term,
            is_leader: r.state == StateRole::Leader,
            fatal: None,
        };
        self.commit.store(r.raft_log.committed, Ordering::Relaxed);
        let term_changed = self.status.borrow().term != next.term;
        if term_changed && !self.reads.is_empty() {
            for (_, waiters) in self.reads.drain() {
                for w in waiters {
                    let _ = w.send(Err(RaftError::LeaderChanged));
                }
            }
        }
        self.status.send_if_modified(|s| {
            if *s != next {
                *s = next;
                true
            } else {
                false
            }
        });
    }
}

/// Creates a member's log holding its identity and the bootstrap configuration, fsynced.
fn create_log(
    wal_dir: &std::path::Path,
    member: MemberRecord,
    bootstrap: &[(u64, Vec<u8>)],
) -> Result<(RaftLog, LogStore), RaftError> {
    let voters: Vec<u64> = bootstrap.iter().map(|(id, _)| *id).collect();
    let cs = ConfState::from((voters, vec![]));
    let mut l = RaftLog::create(wal_dir, member, &cs)?;
    let mut storage = LogStore::new(cs);
    let (entries, hs) = bootstrap_entries(bootstrap)?;
    if !entries.is_empty() {
        let at = l.save(&entries, Some(&hs))?;
        l.sync()?;
        storage.append_at(&entries, &at)?;
        storage.set_hard_state(hs);
    }
    Ok((l, storage))
}

/// The first entries of a new cluster's log: one committed configuration change per initial
/// member, at term 1, identical on every member (etcd bootstraps the same way).
fn bootstrap_entries(members: &[(u64, Vec<u8>)]) -> Result<(Vec<Entry>, HardState), RaftError> {
    let mut entries = Vec::with_capacity(members.len());
    for (i, (id, context)) in members.iter().enumerate() {
        let cc = conf_change(ConfKind::AddVoter, *id, context.clone());
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = 1;
        e.index = i as u64 + 1;
        e.data = cc.write_to_bytes()?.into();
        entries.push(e);
    }
    let mut hs = HardState::default();
    if !entries.is_empty() {
        hs.term = 1;
        hs.commit = entries.len() as u64;
    }
    Ok((entries, hs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's nice value, from `/proc` (field 19 of its `stat`).
    fn nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn a_log_hold_stops_compaction_short_by_a_bounded_amount() {
        // No hold, or a hold past the point: compaction goes where it was asked to.
        assert_eq!(held_index(500, 0, 100), 500);
        assert_eq!(held_index(500, 600, 100), 500);
        // Entries after the hold stay...
        assert_eq!(held_index(500, 450, 100), 450);
        // ...but never more than the bound past the point.
        assert_eq!(held_index(500, 100, 100), 400);
        assert_eq!(held_index(50, 10, 100), 10);
    }

    /// A leader holds the log for a peer a snapshot is on its way to, then for the same peer
    /// probed from the snapshot's index, and for a follower behind; never for a peer that has
    /// stopped answering, and a follower holds nothing.
    #[test]
    fn a_peer_being_caught_up_holds_the_log_and_a_silent_one_does_not() {
        let storage = raft::storage::MemStorage::new_with_conf_state((vec![1, 2, 3], vec![4]));
        let cfg = Config {
            id: 1,
            ..Default::default()
        };
        let mut node = RawNode::new(&cfg, storage, &crate::logger::logger()).unwrap();
        let none = |_| false;
        assert_eq!(
            catching_up(&node.raft, &none),
            0,
            "a follower holds nothing"
        );
        node.raft.become_candidate();
        node.raft.become_leader();
        let installing = std::cell::Cell::new(false);
        let mut peer = |id: u64, f: &dyn Fn(&mut raft::Progress)| {
            f(node.raft.mut_prs().get_mut(id).unwrap());
            catching_up(&node.raft, &|p| installing.get() && p == 4)
        };
        for id in [2, 3] {
            peer(id, &|p| p.recent_active = false);
        }
        assert_eq!(peer(4, &|p| p.recent_active = false), 0, "silent peers");
        assert_eq!(
            peer(4, &|p| p.become_snapshot(50)),
            50,
            "a snapshot in flight"
        );
        assert_eq!(peer(4, &|p| p.become_probe()), 0, "sent, but silent");
        installing.set(true);
        assert_eq!(
            peer(4, &|_| {}),
            50,
            "silent while it installs what it was sent"
        );
        installing.set(false);
        assert_eq!(peer(4, &|p| p.recent_active = true), 50, "probed from it");
        let behind = |p: &mut raft::Progress| {
            p.recent_active = true;
            p.matched = 30;
            p.become_replicate();
        };
        assert_eq!(peer(3, &behind), 30, "the furthest behind");
    }

    #[test]
    fn the_driver_thread_runs_below_the_process_priority() {
        let before = nice();
        let lowered = std::thread::spawn(|| {
            let start = nice();
            lower_priority();
            nice() - start
        })
        .join()
        .unwrap();
        assert_eq!(lowered, DRIVER_NICE.min(19 - before));
        // Only that thread: the rest of the process keeps its priority.
        assert_eq!(nice(), before);
    }
}
