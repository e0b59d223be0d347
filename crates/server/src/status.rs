//! The one table from internal errors to etcd's gRPC codes and messages. Every gRPC error the
//! server sends is built here (the services reach it as `rpc::status`), so clients that
//! recognise etcd's errors by code and text recognise Ballast's.

use ballast_raft::RaftError;
use ballast_state::KvError;
use tonic::{Code, Status};

use crate::member::ServerError;

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
            KvError::NoSpace => Code::ResourceExhausted,
            KvError::CorruptCluster => Code::DataLoss,
            KvError::Backend(_) | KvError::Corrupt(_) => Code::Internal,
            KvError::RootUserNotExist
            | KvError::RootRoleNotExist
            | KvError::UserAlreadyExist
            | KvError::UserNotFound
            | KvError::RoleAlreadyExist
            | KvError::RoleNotFound
            | KvError::RoleNotGranted
            | KvError::PermissionNotGranted
            | KvError::AuthNotEnabled => Code::FailedPrecondition,
            KvError::UserEmpty
            | KvError::RoleEmpty
            | KvError::AuthFailed
            | KvError::NoPasswordUser
            | KvError::PermissionNotGiven
            | KvError::InvalidAuthMgmt
            | KvError::AuthOldRevision => Code::InvalidArgument,
            KvError::PermissionDenied => Code::PermissionDenied,
            KvError::InvalidAuthToken => Code::Unauthenticated,
        },
        ServerError::Raft(r) => match r {
            RaftError::TooManyRequests => Code::ResourceExhausted,
            RaftError::Stopped | RaftError::NoLeader | RaftError::LeaderChanged => {
                Code::Unavailable
            }
            RaftError::NotLeader => Code::FailedPrecondition,
            RaftError::Log(_)
            | RaftError::Raft(_)
            | RaftError::Encode(_)
            | RaftError::Thread(_)
            | RaftError::SnapshotNotStaged(_)
            | RaftError::SnapshotInstall(_)
            | RaftError::Compacted(_) => Code::Internal,
        },
        ServerError::Timeout | ServerError::Stopped => Code::Unavailable,
        ServerError::RequestTooLarge => Code::InvalidArgument,
        ServerError::MemberNotFound => Code::NotFound,
        ServerError::MemberExists
        | ServerError::PeerUrlExists
        | ServerError::MemberNotLearner
        | ServerError::LearnerNotReady
        | ServerError::TooManyLearners => Code::FailedPrecondition,
        // etcd maps this one to a client-side error value, which gRPC sends as Unknown.
        ServerError::NotEnoughStarted => Code::Unknown,
        ServerError::BadUrls => Code::InvalidArgument,
        ServerError::LeaderTransferTimeout | ServerError::Unhealthy => Code::Unavailable,
        ServerError::NotSupportedForLearner | ServerError::BadLeaderTransferee => {
            Code::FailedPrecondition
        }
        ServerError::NoInflightDowngrade | ServerError::DowngradeInProcess => {
            Code::FailedPrecondition
        }
        ServerError::WrongDowngradeVersionFormat
        | ServerError::InvalidDowngradeTargetVersion
        | ServerError::UnknownDowngradeAction => Code::InvalidArgument,
        ServerError::WatchCancelled => Code::Unavailable,
        ServerError::Internal(_) => Code::Internal,
        ServerError::Unimplemented(_) => Code::Unimplemented,
    };
    Status::new(code, e.to_string())
}

/// An apply result of the wrong kind for the request: a bug, reported rather than panicked on.
pub fn unexpected(a: ballast_state::Applied) -> Status {
    status(ServerError::Internal(format!(
        "unexpected apply result {a:?}"
    )))
}

pub fn kv_status(e: KvError) -> Status {
    status(ServerError::Kv(e))
}
