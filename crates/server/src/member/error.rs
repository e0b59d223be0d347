//! The member's errors, each in etcd's words; `rpc::status` maps them to gRPC codes.

use ballast_raft::RaftError;
use ballast_state::KvError;

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
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: no inflight downgrade job")]
    NoInflightDowngrade,
    #[error("etcdserver: cluster has a downgrade job in progress")]
    DowngradeInProcess,
    #[error("etcdserver: wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    #[error("etcdserver: invalid downgrade target version")]
    InvalidDowngradeTargetVersion,
    #[error("etcdserver: unknown downgrade action")]
    UnknownDowngradeAction,
    /// A watch the member made for itself (lock and election waits) was cancelled.
    #[error("watch cancelled")]
    WatchCancelled,
    /// A method or encoding this server does not serve (tonic's own words).
    #[error("{0}")]
    Unimplemented(String),
    /// Something that cannot happen did (an apply result of the wrong kind, a failed
    /// export): reported to the client, never panicked on.
    #[error("{0}")]
    Internal(String),
}

/// Why a member could not start. `main` prints it and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no runtime for the peer transport: {0}")]
    NoRuntime(#[from] tokio::runtime::TryCurrentError),
    #[error("peer TLS: {0}")]
    PeerTls(#[from] crate::conn::tls::TlsError),
    #[error(transparent)]
    AuthToken(#[from] crate::auth::AuthTokenError),
    #[error("cannot fetch cluster info from peer urls {0:?}; is --initial-cluster-state existing right?")]
    NoPeerAnswered(Vec<String>),
    #[error("bad cluster info from peers: {0}")]
    BadClusterInfo(#[from] prost::DecodeError),
    #[error(
        "no member in the running cluster has peer URLs {0:?}; add it first with `member add`"
    )]
    NotAdded(Vec<String>),
    #[error("cannot start the applier thread: {0}")]
    Applier(std::io::Error),
    #[error(transparent)]
    Store(#[from] KvError),
    #[error(transparent)]
    Convert(#[from] super::convert::ConvertError),
    #[error(transparent)]
    Raft(#[from] RaftError),
}
