//! Request validation etcd performs before proposing (its v3rpc layer): cheap, stateless, and
//! the same on every member.

use std::collections::HashSet;

use ballast_api::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use ballast_api::ballast::internal::raft_request;

use crate::KvError;

/// Unknown sort enums are rejected up front, as etcd 3.5+ does (3.4 panics applying them).
pub fn range(r: &RangeRequest) -> Result<(), KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(KvError::InvalidSortOption);
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

pub fn delete(r: &DeleteRangeRequest) -> Result<(), KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` followed by its put/delete overlap check on both branches.
pub fn txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), KvError> {
    txn_ops(r, max_txn_ops as i64)?;
    intervals(&r.success)?;
    intervals(&r.failure)?;
    Ok(())
}

fn txn_ops(r: &TxnRequest, max_ops: i64) -> Result<(), KvError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_ops {
        return Err(KvError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(KvError::EmptyKey);
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        match &op.request {
            Some(Request::RequestRange(q)) => range(q)?,
            Some(Request::RequestPut(q)) => put(q)?,
            Some(Request::RequestDeleteRange(q)) => delete(q)?,
            Some(Request::RequestTxn(q)) => txn_ops(q, max_ops - opc)?,
            None => return Err(KvError::KeyNotFound),
        }
    }
    Ok(())
}

/// A delete's key interval as etcd compares it: `[key, end)` by bytes, a point when `end` is
/// empty. (etcd compares a `"\0"` end literally here, so from-key deletes rarely overlap.)
#[derive(Clone)]
struct Interval {
    key: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => self.key == k,
            Some(end) => self.key.as_slice() <= k && k < end.as_slice(),
        }
    }
}

fn intervals(reqs: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), KvError> {
    let mut dels: Vec<Interval> = reqs
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Interval {
                key: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in reqs {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = intervals(&t.success)?;
        let (puts_else, dels_else) = intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            // Then and else are exclusive, so the same key in both is fine.
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(KvError::DuplicateKey);
            }
            if dels.iter().any(|d| d.contains(k)) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in reqs {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(KvError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// etcd's estimate of what storing a key's metadata costs.
const KV_OVERHEAD: u64 = 256;
/// etcd's estimate of what storing a lease costs.
const LEASE_OVERHEAD: u64 = 64;

fn cost_put(p: &PutRequest) -> u64 {
    KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64
}

/// The bytes a request may add to the store, as etcd's quota estimates them (0: it cannot
/// grow the store). A txn costs its more expensive branch's puts.
pub fn quota_cost(r: &raft_request::Request) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(p)) => cost_put(p),
                _ => 0,
            })
            .sum()
    };
    match r {
        raft_request::Request::Put(p) => cost_put(p),
        raft_request::Request::Txn(t) => branch(&t.success).max(branch(&t.failure)),
        raft_request::Request::LeaseGrant(_) => LEASE_OVERHEAD,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn_of(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_rules() {
        assert!(matches!(
            txn(&txn_of(vec![put_op("a"), put_op("a")], vec![]), 128),
            Err(KvError::DuplicateKey)
        ));
        assert!(matches!(
            txn(&txn_of(vec![del_op("a", "c"), put_op("b")], vec![]), 128),
            Err(KvError::DuplicateKey)
        ));
        // Same key in success and failure of one txn is allowed.
        assert!(txn(&txn_of(vec![put_op("a")], vec![put_op("a")]), 128).is_ok());
        // Nested then/else may both put a key, but not alongside an outer put of it.
        let nested = RequestOp {
            request: Some(Request::RequestTxn(txn_of(
                vec![put_op("a")],
                vec![put_op("a")],
            ))),
        };
        assert!(txn(&txn_of(vec![nested.clone()], vec![]), 128).is_ok());
        assert!(matches!(
            txn(&txn_of(vec![nested, put_op("a")], vec![]), 128),
            Err(KvError::DuplicateKey)
        ));
    }

    #[test]
    fn op_limits_and_empty_ops() {
        let many: Vec<RequestOp> = (0..3).map(|i| put_op(&format!("k{i}"))).collect();
        assert!(matches!(
            txn(&txn_of(many.clone(), vec![]), 2),
            Err(KvError::TooManyOps)
        ));
        assert!(txn(&txn_of(many, vec![]), 3).is_ok());
        let empty = RequestOp { request: None };
        assert!(matches!(
            txn(&txn_of(vec![empty], vec![]), 3),
            Err(KvError::KeyNotFound)
        ));
        assert!(matches!(
            txn(&txn_of(vec![put_op("")], vec![]), 3),
            Err(KvError::EmptyKey)
        ));
    }
}
