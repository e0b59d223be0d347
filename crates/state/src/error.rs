//! Errors of the KV layer. Each maps to exactly one etcd gRPC status at the server edge.

use ballast_storage::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: corrupt cluster")]
    CorruptCluster,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// The disk failed us: the member must stop rather than acknowledge anything further.
    #[error("storage failure: {0}")]
    Backend(#[from] BackendError),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}
