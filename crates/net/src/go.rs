//! How grpc-go names and prints statuses: etcd and etcdctl show this text in places, and the
//! `grpc_server_handled_total` metric labels codes by these names.

/// gRPC status code names, by number.
pub const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// grpc-go's name for a status code (as in "rpc error: code = NotFound desc = ...").
pub fn code_name(c: tonic::Code) -> &'static str {
    CODES.get(c as usize).copied().unwrap_or("Unknown")
}

/// A status as grpc-go prints it (`err.Error()`).
pub fn error_text(s: &tonic::Status) -> String {
    format!(
        "rpc error: code = {} desc = {}",
        code_name(s.code()),
        s.message()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn prints_like_grpc_go() {
        let s = tonic::Status::not_found("etcdserver: member not found");
        assert_eq!(
            super::error_text(&s),
            "rpc error: code = NotFound desc = etcdserver: member not found"
        );
        assert_eq!(
            super::code_name(tonic::Code::Unauthenticated),
            "Unauthenticated"
        );
    }
}
