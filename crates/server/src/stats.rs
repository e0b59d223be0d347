//! The member's counters and histograms for `/metrics` that its gauges cannot derive, kept
//! where the work happens (applier, read path, lessor, maintenance RPCs, the codec's byte
//! counts) as process-wide atomics, like the storage crate's disk histograms. `/metrics` only
//! reads them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use ballast_api::ballast::internal::raft_request::Request;
use ballast_api::etcdserverpb::{request_op, response_op, TxnRequest, TxnResponse};
use ballast_state::Applied;
use ballast_storage::stats::Histogram;

/// etcd's counters with no labels, by the order `COUNTERS` names them.
#[derive(Clone, Copy)]
pub enum Counter {
    Put,
    Range,
    Delete,
    Txn,
    PutBytes,
    LeaseGranted,
    LeaseRenewed,
    LeaseRevoked,
    LeaseExpired,
    CompactionKeys,
    ReadIndexFailed,
    SlowReadIndex,
    SlowApply,
    LearnerPromoted,
    EventsSent,
}

const COUNTERS: usize = Counter::EventsSent as usize + 1;
static COUNTS: [AtomicU64; COUNTERS] = [const { AtomicU64::new(0) }; COUNTERS];

pub fn add(c: Counter, n: u64) {
    COUNTS[c as usize].fetch_add(n, Ordering::Relaxed);
}

pub fn get(c: Counter) -> u64 {
    COUNTS[c as usize].load(Ordering::Relaxed)
}

/// Unix seconds of the last compaction applied here (0 since start, as etcd resets it).
pub static COMPACTION_LAST: AtomicU64 = AtomicU64::new(0);
/// Watch streams open.
pub static WATCH_STREAMS: AtomicU64 = AtomicU64::new(0);
/// 1 while a defragmentation runs.
pub static DEFRAG_INFLIGHT: AtomicU64 = AtomicU64::new(0);
/// 1 while a snapshot received from the leader is being installed.
pub static SNAPSHOT_APPLYING: AtomicU64 = AtomicU64::new(0);
/// Scrapes of `/metrics` in flight and answered.
pub static SCRAPES_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
pub static SCRAPES: AtomicU64 = AtomicU64::new(0);

/// A histogram made on first use, with etcd's exponential buckets for its family.
pub struct Hist {
    start: f64,
    n: usize,
    h: OnceLock<Histogram>,
}

impl Hist {
    const fn new(start: f64, n: usize) -> Hist {
        Hist {
            start,
            n,
            h: OnceLock::new(),
        }
    }

    pub fn get(&self) -> &Histogram {
        self.h
            .get_or_init(|| Histogram::exponential(self.start, 2.0, self.n))
    }
}

/// etcd's bucket layouts, family by family.
pub static LEASE_TTL: Hist = Hist::new(1.0, 24);
pub static COMPACTION_PAUSE_MS: Hist = Hist::new(1.0, 13);
pub static COMPACTION_TOTAL_MS: Hist = Hist::new(100.0, 14);
pub static DEFRAG: Hist = Hist::new(0.1, 13);
pub static BACKEND_SNAPSHOT: Hist = Hist::new(0.01, 17);
pub static HASH: Hist = Hist::new(0.01, 15);
pub static HASH_REV: Hist = Hist::new(0.01, 15);
pub static SNAP_DB_FSYNC: Hist = Hist::new(0.001, 14);
pub static SNAP_DB_SAVE: Hist = Hist::new(0.1, 10);

/// Request kinds as etcd names them (its `InternalRaftRequest` fields), and `Range`: the
/// label values of the latency histograms, a fixed set.
macro_rules! kinds {
    ($($k:ident),* $(,)?) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Kind { $($k),* }
        const KIND_NAMES: &[&str] = &[$(stringify!($k)),*];
    };
}

kinds!(
    Put,
    DeleteRange,
    Txn,
    Compaction,
    LeaseGrant,
    LeaseRevoke,
    LeaseCheckpoint,
    Alarm,
    MemberChange,
    AuthEnable,
    AuthDisable,
    Authenticate,
    AuthUserAdd,
    AuthUserDelete,
    AuthUserChangePassword,
    AuthUserGrantRole,
    AuthUserRevokeRole,
    AuthRoleAdd,
    AuthRoleGrantPermission,
    AuthRoleRevokePermission,
    AuthRoleDelete,
    DowngradeInfoSet,
    Range,
);

const KINDS: usize = Kind::Range as usize + 1;

impl Kind {
    pub fn name(self) -> &'static str {
        KIND_NAMES[self as usize]
    }
}

/// Histograms labelled by a request kind and its outcome: one slot per (kind, success), made
/// on first use, so an observation takes no lock.
pub struct Labelled {
    start: f64,
    n: usize,
    slots: [OnceLock<Histogram>; 2 * KINDS],
}

impl Labelled {
    const fn new(start: f64, n: usize) -> Labelled {
        Labelled {
            start,
            n,
            slots: [const { OnceLock::new() }; 2 * KINDS],
        }
    }

    pub fn observe(&self, kind: Kind, ok: bool, d: Duration) {
        self.slots[kind as usize * 2 + usize::from(ok)]
            .get_or_init(|| Histogram::exponential(self.start, 2.0, self.n))
            .observe(d);
    }

    /// Every (kind, success) seen, with its histogram, by kind name.
    pub fn each(&self) -> Vec<((&'static str, bool), &Histogram)> {
        let mut seen: Vec<_> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, h)| Some(((KIND_NAMES[i / 2], i % 2 == 1), h.get()?)))
            .collect();
        seen.sort_by_key(|(k, _)| *k);
        seen
    }
}

/// `etcd_server_apply_duration_seconds{op,success}`.
pub static APPLY: Labelled = Labelled::new(0.0001, 20);
/// `etcd_server_request_duration_seconds{type,success}`.
pub static REQUEST: Labelled = Labelled::new(0.001, 14);
/// `etcd_server_range_duration_seconds{success}`.
pub static RANGE: Labelled = Labelled::new(0.0001, 20);

/// A raft request's kind.
pub fn kind(r: &Request) -> Kind {
    match r {
        Request::Put(_) => Kind::Put,
        Request::DeleteRange(_) => Kind::DeleteRange,
        Request::Txn(_) => Kind::Txn,
        Request::Compaction(_) => Kind::Compaction,
        Request::LeaseGrant(_) => Kind::LeaseGrant,
        Request::LeaseRevoke(_) => Kind::LeaseRevoke,
        Request::LeaseCheckpoint(_) => Kind::LeaseCheckpoint,
        Request::Alarm(_) => Kind::Alarm,
        Request::MemberChange(_) => Kind::MemberChange,
        Request::AuthEnable(_) => Kind::AuthEnable,
        Request::AuthDisable(_) => Kind::AuthDisable,
        Request::Authenticate(_) => Kind::Authenticate,
        Request::UserAdd(_) => Kind::AuthUserAdd,
        Request::UserDelete(_) => Kind::AuthUserDelete,
        Request::UserChangePassword(_) => Kind::AuthUserChangePassword,
        Request::UserGrantRole(_) => Kind::AuthUserGrantRole,
        Request::UserRevokeRole(_) => Kind::AuthUserRevokeRole,
        Request::RoleAdd(_) => Kind::AuthRoleAdd,
        Request::RoleGrantPermission(_) => Kind::AuthRoleGrantPermission,
        Request::RoleRevokePermission(_) => Kind::AuthRoleRevokePermission,
        Request::RoleDelete(_) => Kind::AuthRoleDelete,
        Request::DowngradeInfoSet(_) => Kind::DowngradeInfoSet,
    }
}

/// What an applied entry adds to the mvcc counters, as etcd's metered transactions count:
/// each put, delete and range (a txn's compares are ranges), and a txn when it did more than
/// one of them.
pub fn count_applied(req: &Request, res: &Applied) {
    match (req, res) {
        (Request::Put(p), Applied::Put(_)) => {
            add(Counter::Put, 1);
            add(Counter::PutBytes, (p.key.len() + p.value.len()) as u64);
        }
        (Request::DeleteRange(_), Applied::DeleteRange(_)) => add(Counter::Delete, 1),
        (Request::Txn(t), Applied::Txn(r)) => {
            let n = count_txn(t, r);
            if n > 1 {
                add(Counter::Txn, 1);
            }
        }
        (Request::LeaseGrant(g), Applied::LeaseGrant(_)) => {
            add(Counter::LeaseGranted, 1);
            LEASE_TTL.get().observe_value(g.ttl as f64);
        }
        (Request::LeaseRevoke(_), Applied::LeaseRevoke(_)) => add(Counter::LeaseRevoked, 1),
        _ => {}
    }
}

/// Counts a txn's compares and the ops of the branch it took (nested txns included); returns
/// how many it counted.
fn count_txn(t: &TxnRequest, r: &TxnResponse) -> u64 {
    add(Counter::Range, t.compare.len() as u64);
    let mut n = t.compare.len() as u64;
    let branch = if r.succeeded { &t.success } else { &t.failure };
    for (op, resp) in branch.iter().zip(&r.responses) {
        n += 1;
        match (&op.request, &resp.response) {
            (Some(request_op::Request::RequestRange(_)), _) => add(Counter::Range, 1),
            (Some(request_op::Request::RequestPut(p)), _) => {
                add(Counter::Put, 1);
                add(Counter::PutBytes, (p.key.len() + p.value.len()) as u64);
            }
            (Some(request_op::Request::RequestDeleteRange(_)), _) => add(Counter::Delete, 1),
            (
                Some(request_op::Request::RequestTxn(inner)),
                Some(response_op::Response::ResponseTxn(ir)),
            ) => n += count_txn(inner, ir),
            _ => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_api::etcdserverpb::{
        Compare, PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse,
    };

    #[test]
    fn a_txn_counts_its_compares_and_the_branch_it_took() {
        let put = |k: &str| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                value: b"vv".to_vec(),
                ..Default::default()
            })),
        };
        let range = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest::default())),
        };
        let t = TxnRequest {
            compare: vec![Compare::default()],
            success: vec![put("a"), range],
            failure: vec![put("b")],
        };
        let r = TxnResponse {
            succeeded: true,
            responses: vec![ResponseOp::default(), ResponseOp::default()],
            ..Default::default()
        };
        let before = (get(Counter::Put), get(Counter::Range), get(Counter::Txn));
        count_applied(&Request::Txn(t), &Applied::Txn(r));
        assert_eq!(get(Counter::Put) - before.0, 1);
        assert_eq!(get(Counter::Range) - before.1, 2);
        assert_eq!(get(Counter::Txn) - before.2, 1);
    }
}
