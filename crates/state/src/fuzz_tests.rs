//! Untrusted bytes: request decoders and the state machine fed random or mutated input must
//! never panic, and whatever gets applied must read back identically after a reopen.

use ballast_api::ballast::internal::{raft_request::Request, RaftRequest};
use ballast_api::etcdserverpb::{
    compare, request_op, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use proptest::prelude::*;
use prost::Message;

use crate::{check, Mvcc};

/// One valid entry of each kind, as bytes, for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let put = PutRequest {
        key: b"k1".to_vec(),
        value: b"v".to_vec(),
        prev_kv: true,
        ..Default::default()
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b"k1".to_vec(),
            target: compare::CompareTarget::Version as i32,
            target_union: Some(compare::TargetUnion::Version(1)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put.clone())),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                ..Default::default()
            })),
        }],
    };
    let reqs = [
        Request::Put(put),
        Request::Txn(txn),
        Request::DeleteRange(DeleteRangeRequest {
            key: b"k".to_vec(),
            range_end: vec![0],
            prev_kv: true,
        }),
        Request::Compaction(CompactionRequest {
            revision: 2,
            physical: false,
        }),
        Request::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 5 }),
        Request::LeaseRevoke(LeaseRevokeRequest { id: 5 }),
    ];
    reqs.into_iter()
        .map(|r| {
            RaftRequest {
                id: 1,
                request: Some(r),
                ..Default::default()
            }
            .encode_to_vec()
        })
        .collect()
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let edits = proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4);
    (0usize..6, edits, any::<usize>()).prop_map(|(i, edits, cut)| {
        let mut b = seeds()[i].clone();
        for (at, x) in edits {
            if !b.is_empty() {
                let at = at % b.len();
                b[at] ^= x;
            }
        }
        // Sometimes cut short, as a torn or hostile message would be.
        if cut % 4 == 0 && !b.is_empty() {
            b.truncate(cut % b.len());
        }
        b
    })
}

fn entry_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![mutated(), proptest::collection::vec(any::<u8>(), 0..64)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_entries_never_panic_and_survive_reopen(entries in proptest::collection::vec(entry_bytes(), 1..24)) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        let (rev, hash) = {
            let s = Mvcc::open(&path).unwrap();
            let batch: Vec<(u64, Option<RaftRequest>)> = entries
                .iter()
                .enumerate()
                .map(|(i, b)| (i as u64 + 1, RaftRequest::decode(b.as_slice()).ok()))
                .collect();
            // Request-level errors are answers, not failures; only storage errors may fail.
            s.apply_batch(&batch, true).unwrap();
            let (hash, _, _) = s.hash_kv(0).unwrap();
            (s.current_rev(), hash)
        };
        let s = Mvcc::open(&path).unwrap();
        prop_assert_eq!(s.current_rev(), rev);
        prop_assert_eq!(s.hash_kv(0).unwrap().0, hash);
        prop_assert_eq!(s.applied_index(), entries.len() as u64);
    }

    /// The checks run on every client request before it is proposed.
    #[test]
    fn request_checks_never_panic(bytes in entry_bytes()) {
        if let Ok(r) = RangeRequest::decode(bytes.as_slice()) {
            let _ = check::range(&r);
        }
        if let Ok(r) = PutRequest::decode(bytes.as_slice()) {
            let _ = check::put(&r);
        }
        if let Ok(r) = DeleteRangeRequest::decode(bytes.as_slice()) {
            let _ = check::delete(&r);
        }
        if let Ok(r) = TxnRequest::decode(bytes.as_slice()) {
            let _ = check::txn(&r, 128);
        }
        if let Ok(RaftRequest { request: Some(Request::Txn(t)), .. }) = RaftRequest::decode(bytes.as_slice()) {
            let _ = check::txn(&t, 128);
        }
    }
}
