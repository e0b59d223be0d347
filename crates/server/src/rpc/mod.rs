//! gRPC services. Handlers only validate, translate and call the member; every error becomes
//! etcd's status through [`status`].

pub mod cluster;
pub mod concurrency;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod unimplemented;
pub mod watch;

use ballast_raft::RaftError;
use ballast_state::KvError;
use tonic::{Code, Status};

use crate::server::ServerError;

/// The one table from internal errors to etcd's gRPC codes and messages.
pub fn status(e: ServerError) -> Status {
    let code = match &e {
        ServerError::Kv(k) => match k {
            KvError::EmptyKey
            | KvError::KeyNotFound
            | KvError::ValueProvided
            | KvError::LeaseProvided
            | KvError::TooManyOps
            | KvError::DuplicateKey
            | KvError::InvalidSortOption => Code::InvalidArgument,
            KvError::Compacted | KvError::FutureRev => Code::OutOfRange,
            KvError::LeaseNotFound => Code::NotFound,
            KvError::LeaseExist => Code::FailedPrecondition,
            KvError::LeaseTtlTooLarge => Code::OutOfRange,
            KvError::Backend(_) | KvError::Corrupt(_) => Code::Internal,
        },
        ServerError::Raft(r) => match r {
            RaftError::TooManyRequests => Code::ResourceExhausted,
            RaftError::Stopped | RaftError::NoLeader | RaftError::LeaderChanged => {
                Code::Unavailable
            }
            RaftError::NotLeader => Code::FailedPrecondition,
            RaftError::Storage(_) | RaftError::Raft(_) => Code::Internal,
        },
        ServerError::Timeout | ServerError::Stopped => Code::Unavailable,
        ServerError::RequestTooLarge => Code::InvalidArgument,
        ServerError::Startup(_) => Code::Internal,
        ServerError::MemberNotFound => Code::NotFound,
        ServerError::MemberExists
        | ServerError::PeerUrlExists
        | ServerError::MemberNotLearner
        | ServerError::LearnerNotReady
        | ServerError::TooManyLearners => Code::FailedPrecondition,
        // etcd maps this one to a client-side error value, which gRPC sends as Unknown.
        ServerError::NotEnoughStarted => Code::Unknown,
        ServerError::BadUrls => Code::InvalidArgument,
        ServerError::LeaderTransferTimeout => Code::Unavailable,
        ServerError::NotSupportedForLearner | ServerError::BadLeaderTransferee => {
            Code::FailedPrecondition
        }
    };
    Status::new(code, e.to_string())
}

/// An apply result of the wrong kind for the request: a bug, reported rather than panicked on.
pub fn unexpected(a: ballast_state::Applied) -> Status {
    Status::internal(format!("unexpected apply result {a:?}"))
}

pub fn kv_status(e: KvError) -> Status {
    status(ServerError::Kv(e))
}
