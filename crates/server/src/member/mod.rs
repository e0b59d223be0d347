//! The member's core, without gRPC or HTTP: what the request path and the applier share.
//! (The rest of `EtcdServer` moves here piece by piece: proposer, applier, read path.)

pub mod waiters;
