//! etcd v3 wire types and gRPC stubs. Generated code only; no behaviour lives here.

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Module nesting mirrors the proto package so generated `super::` paths resolve.
pub mod grpc {
    pub mod health {
        pub mod v1 {
            tonic::include_proto!("grpc.health.v1");
        }
    }
}

pub mod ballast {
    /// Ballast's replicated-log payloads.
    pub mod internal {
        tonic::include_proto!("ballast.internal");
    }
}
