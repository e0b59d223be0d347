//! Property test: the MVCC store against a plain in-memory model that keeps a full copy of the
//! key space at every revision. Every historic read is compared after every step.

use std::collections::BTreeMap;

use ballast_api::ballast::internal::{raft_request::Request, RaftRequest};
use ballast_api::etcdserverpb::{
    compare, request_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use proptest::prelude::*;

use crate::{Applied, KvError, Mvcc};

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    value: Vec<u8>,
    create: i64,
    modr: i64,
    version: i64,
}

type Snapshot = BTreeMap<Vec<u8>, Entry>;

struct Model {
    /// `history[r]` is the key space at revision r (index 0 unused, revision 1 is empty).
    history: Vec<Snapshot>,
    compacted: i64,
}

impl Model {
    fn rev(&self) -> i64 {
        self.history.len() as i64 - 1
    }
    fn cur(&self) -> &Snapshot {
        self.history.last().unwrap()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Del(u8, Option<u8>),
    /// If key's value equals v then put(k2, v2) else delete k2.
    Cas(u8, u8, u8, u8),
    Compact(u8),
    /// Write the key index checkpoint (see `indexfile`).
    Checkpoint,
}

fn key(k: u8) -> Vec<u8> {
    vec![b'a' + k]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 0u8..4).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..6, proptest::option::of(0u8..7)).prop_map(|(k, e)| Op::Del(k, e)),
        2 => (0u8..6, 0u8..4, 0u8..6, 0u8..4).prop_map(|(a, b, c, d)| Op::Cas(a, b, c, d)),
        1 => (0u8..40).prop_map(Op::Compact),
        1 => Just(Op::Checkpoint),
    ]
}

fn put_req(k: u8, v: u8) -> PutRequest {
    PutRequest {
        key: key(k),
        value: vec![v],
        ..Default::default()
    }
}

fn model_put(s: &mut Snapshot, k: &[u8], v: Vec<u8>, rev: i64) {
    let e = match s.get(k) {
        Some(e) => Entry {
            value: v,
            create: e.create,
            modr: rev,
            version: e.version + 1,
        },
        None => Entry {
            value: v,
            create: rev,
            modr: rev,
            version: 1,
        },
    };
    s.insert(k.to_vec(), e);
}

fn in_range(k: &[u8], start: &[u8], end: Option<&[u8]>) -> bool {
    match end {
        None => k == start,
        Some(e) => k >= start && k < e,
    }
}

fn check_reads(store: &Mvcc, m: &Model) {
    assert_eq!(store.current_rev(), m.rev());
    for at in 1..=m.rev() {
        let req = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: at,
            ..Default::default()
        };
        let got = store.range(&req);
        if at < m.compacted {
            assert!(
                matches!(got, Err(KvError::Compacted)),
                "rev {at} should be compacted"
            );
            continue;
        }
        let got = got.unwrap();
        let want = &m.history[at as usize];
        assert_eq!(got.count as usize, want.len(), "count at {at}");
        let got: Vec<_> = got
            .kvs
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    Entry {
                        value: kv.value.clone(),
                        create: kv.create_revision,
                        modr: kv.mod_revision,
                        version: kv.version,
                    },
                )
            })
            .collect();
        let want: Vec<_> = want.iter().map(|(k, e)| (k.clone(), e.clone())).collect();
        assert_eq!(got, want, "state at revision {at}");
    }
    let fut = RangeRequest {
        key: key(0),
        revision: m.rev() + 1,
        ..Default::default()
    };
    assert!(matches!(store.range(&fut), Err(KvError::FutureRev)));
}

fn run(ops: Vec<Op>, reopen_every: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut store = Mvcc::open(&path).unwrap();
    let mut m = Model {
        history: vec![Snapshot::new(), Snapshot::new()],
        compacted: -1,
    };
    let mut checkpoint = None;
    let mut index = 0;
    for (i, op) in ops.into_iter().enumerate() {
        let (req, next): (Request, Option<Snapshot>) = match op {
            Op::Checkpoint => {
                let rev = store.checkpoint_index().unwrap();
                assert_eq!(rev, m.rev());
                checkpoint = Some(rev);
                continue;
            }
            Op::Put(k, v) => {
                let mut s = m.cur().clone();
                model_put(&mut s, &key(k), vec![v], m.rev() + 1);
                (Request::Put(put_req(k, v)), Some(s))
            }
            Op::Del(k, end) => {
                let end = end.map(key);
                let mut s = m.cur().clone();
                s.retain(|kk, _| !in_range(kk, &key(k), end.as_deref()));
                let changed = s.len() != m.cur().len();
                let req = DeleteRangeRequest {
                    key: key(k),
                    range_end: end.unwrap_or_default(),
                    ..Default::default()
                };
                (Request::DeleteRange(req), changed.then_some(s))
            }
            Op::Cas(a, b, c, d) => {
                let hit = m
                    .cur()
                    .get(&key(a))
                    .map(|e| e.value == vec![b])
                    .unwrap_or(false);
                let mut s = m.cur().clone();
                let changed = if hit {
                    model_put(&mut s, &key(c), vec![d], m.rev() + 1);
                    true
                } else {
                    s.remove(&key(c)).is_some()
                };
                let cmp = Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Value as i32,
                    key: key(a),
                    target_union: Some(compare::TargetUnion::Value(vec![b])),
                    range_end: vec![],
                };
                let t = TxnRequest {
                    compare: vec![cmp],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(put_req(c, d))),
                    }],
                    failure: vec![RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: key(c),
                                ..Default::default()
                            },
                        )),
                    }],
                };
                (Request::Txn(t), changed.then_some(s))
            }
            Op::Compact(r) => (
                Request::Compaction(CompactionRequest {
                    revision: r as i64,
                    physical: false,
                }),
                None,
            ),
        };
        let is_compact = matches!(req, Request::Compaction(_));
        let compact_to = if let Request::Compaction(c) = &req {
            c.revision
        } else {
            0
        };
        index += 1;
        let res = store
            .apply_batch(
                &[(
                    index,
                    Some(RaftRequest {
                        id: index,
                        request: Some(req),
                        ..Default::default()
                    }),
                )],
                i % 3 == 0,
            )
            .unwrap()
            .results
            .pop()
            .unwrap();
        if is_compact {
            if compact_to <= m.compacted {
                assert!(matches!(res, Err(KvError::Compacted)));
            } else if compact_to > m.rev() {
                assert!(matches!(res, Err(KvError::FutureRev)));
            } else {
                assert!(matches!(res, Ok(Applied::Compaction(_))));
                m.compacted = compact_to;
            }
        } else {
            assert!(res.is_ok(), "{res:?}");
        }
        if let Some(s) = next {
            m.history.push(s);
        }
        if reopen_every > 0 && i % reopen_every == reopen_every - 1 {
            store.sync().unwrap();
            drop(store);
            store = Mvcc::open(&path).unwrap();
            assert_eq!(store.applied_index(), index);
            // A checkpoint is used unless a compaction passed it.
            let used = matches!(
                store.index_source(),
                crate::mvcc::IndexSource::Checkpoint { .. }
            );
            assert_eq!(
                used,
                checkpoint.is_some_and(|r| r >= m.compacted),
                "{}",
                store.index_source()
            );
            assert_eq!(store.index_digest(), crate::mvcc::rebuilt_digest(&path));
            received_copy_has_the_same_index(&store, &dir.path().join(format!("copy{i}")));
        }
        check_reads(&store, &m);
    }
}

/// A copy of `store` received as a snapshot at `copy` opens with the key index its import
/// built, which is the index its rows give and the sender's; the sender's checkpoint record
/// stays behind.
fn received_copy_has_the_same_index(store: &Mvcc, copy: &std::path::Path) {
    let stream = crate::mvcc::exported(store);
    let built = Mvcc::import(copy, stream.as_slice()).unwrap();
    let received = Mvcc::open_imported(copy, built).unwrap();
    assert!(
        matches!(
            received.index_source(),
            crate::mvcc::IndexSource::Imported { .. }
        ),
        "{}",
        received.index_source()
    );
    assert_eq!(received.index_checkpoint_rev().unwrap(), None);
    assert_eq!(received.current_rev(), store.current_rev());
    let digest = received.index_digest();
    assert_eq!(digest, store.index_digest());
    drop(received);
    assert_eq!(digest, crate::mvcc::rebuilt_digest(copy));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn mvcc_matches_model(ops in proptest::collection::vec(op(), 1..40), reopen in 0usize..6) {
        run(ops, reopen);
    }
}

#[test]
fn replayed_entries_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Mvcc::open(&dir.path().join("db")).unwrap();
    let e = (
        1,
        Some(RaftRequest {
            id: 1,
            request: Some(Request::Put(put_req(0, 1))),
            ..Default::default()
        }),
    );
    assert_eq!(
        store
            .apply_batch(std::slice::from_ref(&e), true)
            .unwrap()
            .results
            .len(),
        1
    );
    assert_eq!(store.apply_batch(&[e], true).unwrap().results.len(), 0);
    assert_eq!(store.current_rev(), 2);
}

/// Applies `r` durably as the entry after `index`, which it advances; the request's result.
fn apply_next(store: &Mvcc, index: &mut u64, r: Request) -> Result<Applied, KvError> {
    *index += 1;
    let e = (
        *index,
        Some(RaftRequest {
            id: *index,
            request: Some(r),
            ..Default::default()
        }),
    );
    store.apply_batch(&[e], true).unwrap().results.remove(0)
}

/// NOSPACE caps the store as etcd's capped applier does: nothing that could grow it applies,
/// deletes and compaction still do; alarms survive reopening; disarming lifts the cap.
#[test]
fn nospace_alarm_caps_growth_until_disarmed() {
    use ballast_api::etcdserverpb::{
        alarm_request::AlarmAction, AlarmRequest, AlarmType, LeaseGrantRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut index = 0;
    let mut apply = |store: &Mvcc, r: Request| apply_next(store, &mut index, r);
    let alarm = |action: AlarmAction| {
        Request::Alarm(AlarmRequest {
            action: action as i32,
            member_id: 7,
            alarm: AlarmType::Nospace as i32,
        })
    };
    let put_in_txn = |success: bool| {
        let op = RequestOp {
            request: Some(request_op::Request::RequestPut(put_req(1, 1))),
        };
        Request::Txn(TxnRequest {
            success: if success { vec![op.clone()] } else { vec![] },
            failure: if success { vec![] } else { vec![op] },
            ..Default::default()
        })
    };
    let store = Mvcc::open(&path).unwrap();
    assert!(apply(&store, Request::Put(put_req(0, 1))).is_ok());
    match apply(&store, alarm(AlarmAction::Activate)) {
        Ok(Applied::Alarm(r)) => assert_eq!(r.alarms.len(), 1),
        other => panic!("{other:?}"),
    }
    drop(store);
    let store = Mvcc::open(&path).unwrap();
    assert_eq!(store.alarms().len(), 1);
    let nospace = |r: Result<Applied, KvError>| matches!(r, Err(KvError::NoSpace));
    assert!(nospace(apply(&store, Request::Put(put_req(0, 2)))));
    assert!(nospace(apply(&store, put_in_txn(true))));
    assert!(nospace(apply(&store, put_in_txn(false))));
    assert!(nospace(apply(
        &store,
        Request::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 5 })
    )));
    assert!(apply(
        &store,
        Request::DeleteRange(DeleteRangeRequest {
            key: key(0),
            ..Default::default()
        })
    )
    .is_ok());
    assert!(apply(
        &store,
        Request::Compaction(CompactionRequest {
            revision: 2,
            physical: false
        })
    )
    .is_ok());
    match apply(&store, alarm(AlarmAction::Deactivate)) {
        Ok(Applied::Alarm(r)) => assert_eq!(r.alarms.len(), 1),
        other => panic!("{other:?}"),
    }
    // Clearing it again clears nothing.
    match apply(&store, alarm(AlarmAction::Deactivate)) {
        Ok(Applied::Alarm(r)) => assert!(r.alarms.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(store.alarms().is_empty());
    assert!(apply(&store, Request::Put(put_req(0, 3))).is_ok());
}

#[test]
fn corrupt_alarm_stops_every_keyspace_change_until_disarmed() {
    use ballast_api::etcdserverpb::{
        alarm_request::AlarmAction, AlarmRequest, AlarmType, LeaseGrantRequest, LeaseRevokeRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Mvcc::open(&dir.path().join("db")).unwrap();
    let mut index = 0;
    let mut apply = |r: Request| apply_next(&store, &mut index, r);
    let corrupt = |action: AlarmAction| {
        Request::Alarm(AlarmRequest {
            action: action as i32,
            member_id: 9,
            alarm: AlarmType::Corrupt as i32,
        })
    };
    assert!(apply(Request::Put(put_req(0, 1))).is_ok());
    assert!(apply(corrupt(AlarmAction::Activate)).is_ok());
    let rev = store.current_rev();
    let refused = |r: Result<Applied, KvError>| matches!(r, Err(KvError::CorruptCluster));
    assert!(refused(apply(Request::Put(put_req(0, 2)))));
    assert!(refused(apply(Request::DeleteRange(DeleteRangeRequest {
        key: key(0),
        ..Default::default()
    }))));
    assert!(refused(apply(Request::Txn(TxnRequest::default()))));
    assert!(refused(apply(Request::Compaction(CompactionRequest {
        revision: 1,
        physical: false
    }))));
    assert!(refused(apply(Request::LeaseGrant(LeaseGrantRequest {
        ttl: 10,
        id: 5
    }))));
    assert!(refused(apply(Request::LeaseRevoke(LeaseRevokeRequest {
        id: 5
    }))));
    assert_eq!(
        store.current_rev(),
        rev,
        "refused requests take no revision"
    );
    // Alarms still apply, so the cluster can recover; then writes do again.
    assert!(apply(corrupt(AlarmAction::Deactivate)).is_ok());
    assert!(apply(Request::Put(put_req(0, 3))).is_ok());
    assert_eq!(store.current_rev(), rev + 1);
}
