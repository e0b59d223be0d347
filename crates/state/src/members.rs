//! How member records travel in the log: a configuration change's context is the
//! `RaftRequest` whose `MemberChange` the applier records, so every member stores the same
//! record at the same index as raft's own configuration.

use ballast_api::ballast::internal::{
    member_change::Kind, raft_request, MemberChange, RaftRequest,
};
use ballast_api::etcdserverpb::Member;
use prost::Message;

/// The context of the configuration entry that adds `m` (a new cluster's bootstrap entries,
/// and `member add`).
pub fn add_context(m: Member) -> Vec<u8> {
    RaftRequest {
        id: 0,
        request: Some(raft_request::Request::MemberChange(MemberChange {
            kind: Kind::Add as i32,
            member: Some(m),
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A new cluster's bootstrap entries, one per initial member `(id, name, peer URLs)`, in the
/// order given; client URLs are published by each member once it runs.
pub fn bootstrap(initial: &[(u64, String, Vec<String>)]) -> Vec<(u64, Vec<u8>)> {
    initial
        .iter()
        .map(|(id, name, urls)| {
            let m = Member {
                id: *id,
                name: name.clone(),
                peer_ur_ls: urls.clone(),
                client_ur_ls: vec![],
                is_learner: false,
            };
            (*id, add_context(m))
        })
        .collect()
}
