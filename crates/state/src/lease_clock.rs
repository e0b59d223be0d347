//! When leases expire: the leader's clocks over the replicated lease records, with time as an
//! input.
//!
//! Lease records (TTL, attached keys, last checkpointed remaining TTL) are replicated state in
//! the store; deadlines are not. Only the leader keeps them, here. On becoming leader every
//! lease gets its checkpointed remaining TTL (or its full TTL) plus an election timeout, so a
//! leader change never expires a lease early; each [`LeaseClock::tick`] then names the leases
//! whose deadline passed (each once, until [`LeaseClock::revoke_done`]) and, every checkpoint
//! interval, the remaining TTLs to record through raft, so the next leader does not restart
//! them at their full TTL.
//!
//! Invariants: nothing here reads a clock; a lease is never named expired before `ttl` seconds
//! after its last renewal (or, after a leader change, its checkpoint plus the extension); an
//! expired lease is named once until its revocation finishes or fails; a follower names none.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::LeaseCheckpoint;

use crate::mvcc::LeaseTtl;

/// What one tick asks the leader to propose.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Leases whose deadline passed: revoke them.
    pub expired: Vec<i64>,
    /// Remaining TTLs to checkpoint (0 records "the full TTL": just renewed).
    pub checkpoints: Vec<LeaseCheckpoint>,
}

/// Whole seconds left, truncated as etcd reports them.
fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

fn after(now: Instant, ttl: i64) -> Instant {
    now + Duration::from_secs(ttl.max(0) as u64)
}

/// The leader's lease deadlines. Every method takes `leader` (raft's current view) so no
/// caller can act on a stale idea of who leads, and `now`.
#[derive(Debug)]
pub struct LeaseClock {
    leader: bool,
    deadlines: HashMap<i64, Instant>,
    revoking: HashSet<i64>,
    last_checkpoint: Option<Instant>,
    /// Grace a new leader gives every lease: one election timeout.
    extension: Duration,
    checkpoint_every: Duration,
}

impl LeaseClock {
    pub fn new(extension: Duration, checkpoint_every: Duration) -> LeaseClock {
        LeaseClock {
            leader: false,
            deadlines: HashMap::new(),
            revoking: HashSet::new(),
            last_checkpoint: None,
            extension,
            checkpoint_every,
        }
    }

    /// Brings the clocks in line with leadership. Newly leading, nobody's deadline is known:
    /// each lease restarts from its checkpoint (or full TTL) plus the extension. No longer
    /// leading, the clocks are dropped. `leases` is only called on promotion.
    pub fn follow(&mut self, leader: bool, now: Instant, leases: impl FnOnce() -> Vec<LeaseTtl>) {
        if leader && !self.leader {
            self.deadlines.clear();
            for l in leases() {
                let base = if l.remaining > 0 { l.remaining } else { l.ttl };
                self.deadlines
                    .insert(l.id, after(now, base) + self.extension);
            }
            self.last_checkpoint = Some(now);
        } else if !leader && self.leader {
            self.deadlines.clear();
            self.revoking.clear();
        }
        self.leader = leader;
    }

    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// A keep-alive on the leader: the lease's clock restarts at its full TTL. `None` when not
    /// leading; `Some(0)` for a lease that does not exist or is being revoked (etcd's answer
    /// to a keep-alive for an unknown lease).
    pub fn renew(&mut self, lease: Option<&LeaseTtl>, now: Instant) -> Option<i64> {
        if !self.leader {
            return None;
        }
        let Some(l) = lease else {
            return Some(0);
        };
        if self.revoking.contains(&l.id) {
            return Some(0);
        }
        self.deadlines.insert(l.id, after(now, l.ttl));
        Some(l.ttl)
    }

    /// A grant was applied: on the leader its clock starts now, unless it already runs.
    pub fn granted(&mut self, id: i64, ttl: i64, now: Instant) {
        if self.leader {
            self.deadlines.entry(id).or_insert_with(|| after(now, ttl));
        }
    }

    /// On the leader: whole seconds before lease `id` (of `ttl`) expires; a lease whose clock
    /// has not started starts it now. `None` when not leading.
    pub fn remaining(&mut self, id: i64, ttl: i64, now: Instant) -> Option<i64> {
        if !self.leader {
            return None;
        }
        let d = *self.deadlines.entry(id).or_insert_with(|| after(now, ttl));
        Some(secs(d.saturating_duration_since(now)))
    }

    /// One look at every lease on the leader: clocks of revoked leases go, clocks of leases
    /// granted since start, expired ones are named (once), and every checkpoint interval the
    /// remaining TTLs that changed are listed. A follower gets nothing.
    pub fn tick(&mut self, leases: &[LeaseTtl], now: Instant) -> Due {
        if !self.leader {
            return Due::default();
        }
        let live: HashSet<i64> = leases.iter().map(|l| l.id).collect();
        self.deadlines.retain(|id, _| live.contains(id));
        for l in leases {
            self.deadlines
                .entry(l.id)
                .or_insert_with(|| after(now, l.ttl));
        }
        let mut expired: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(id, d)| **d <= now && !self.revoking.contains(id))
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        self.revoking.extend(expired.iter().copied());
        let due = self
            .last_checkpoint
            .is_none_or(|t| now.duration_since(t) >= self.checkpoint_every);
        let mut checkpoints = Vec::new();
        if due {
            self.last_checkpoint = Some(now);
            for l in leases {
                let Some(d) = self.deadlines.get(&l.id) else {
                    continue;
                };
                let left = secs(d.saturating_duration_since(now)) + 1;
                // 0 records "full TTL" (just renewed), so renewals clear old values.
                let want = if left >= l.ttl { 0 } else { left };
                if want != l.remaining {
                    checkpoints.push(LeaseCheckpoint {
                        id: l.id,
                        remaining_ttl: want,
                    });
                }
            }
        }
        Due {
            expired,
            checkpoints,
        }
    }

    /// A revocation named by [`LeaseClock::tick`] finished (or failed): if the lease is still
    /// there and still expired, the next tick names it again.
    pub fn revoke_done(&mut self, id: i64) {
        self.revoking.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXT: Duration = Duration::from_secs(1);
    const CHECKPOINT: Duration = Duration::from_secs(300);

    fn lease(id: i64, ttl: i64, remaining: i64) -> LeaseTtl {
        LeaseTtl { id, ttl, remaining }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn seconds_truncate_like_etcd() {
        assert_eq!(secs(Duration::from_millis(999)), 0);
        assert_eq!(secs(Duration::from_millis(2999)), 2);
    }

    #[test]
    fn a_lease_expires_once_after_its_ttl_and_again_only_if_revocation_failed() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(EXT, CHECKPOINT);
        c.follow(true, t0, Vec::new);
        let ls = [lease(7, 5, 0)];
        c.granted(7, 5, t0);
        assert!(c.tick(&ls, at(t0, 4_999)).expired.is_empty());
        assert_eq!(c.tick(&ls, at(t0, 5_000)).expired, vec![7]);
        // Being revoked: not named again, and keep-alives are answered as for no lease.
        assert!(c.tick(&ls, at(t0, 6_000)).expired.is_empty());
        assert_eq!(c.renew(Some(&ls[0]), at(t0, 6_000)), Some(0));
        // The revocation failed and the lease is still there: named again.
        c.revoke_done(7);
        assert_eq!(c.tick(&ls, at(t0, 6_500)).expired, vec![7]);
        // It succeeded: the record is gone, and so is the clock.
        c.revoke_done(7);
        assert!(c.tick(&[], at(t0, 7_000)).expired.is_empty());
        assert_eq!(c.remaining(7, 5, at(t0, 7_000)), Some(5));
    }

    #[test]
    fn keep_alives_restart_the_clock_at_the_full_ttl() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(EXT, CHECKPOINT);
        c.follow(true, t0, Vec::new);
        let l = lease(1, 10, 0);
        c.granted(1, 10, t0);
        assert_eq!(c.renew(Some(&l), at(t0, 9_000)), Some(10));
        assert_eq!(c.remaining(1, 10, at(t0, 9_500)), Some(9));
        assert!(c.tick(&[l], at(t0, 18_999)).expired.is_empty());
        assert_eq!(c.tick(&[l], at(t0, 19_000)).expired, vec![1]);
        assert_eq!(c.renew(None, t0), Some(0), "unknown lease");
    }

    #[test]
    fn followers_keep_no_clocks() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(EXT, CHECKPOINT);
        c.follow(false, t0, || panic!("a follower reads no leases"));
        c.granted(1, 1, t0);
        assert_eq!(c.renew(Some(&lease(1, 1, 0)), t0), None);
        assert_eq!(c.remaining(1, 1, t0), None);
        assert_eq!(c.tick(&[lease(1, 1, 0)], at(t0, 60_000)), Due::default());
    }

    #[test]
    fn a_new_leader_restarts_from_the_checkpoint_plus_an_election_timeout() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(EXT, CHECKPOINT);
        // A lease of 100 s checkpointed with 20 s left; another never checkpointed.
        let ls = vec![lease(1, 100, 20), lease(2, 30, 0)];
        c.follow(true, t0, || ls.clone());
        assert_eq!(c.remaining(1, 100, t0), Some(21));
        assert_eq!(c.remaining(2, 30, t0), Some(31));
        assert!(c.tick(&ls, at(t0, 20_999)).expired.is_empty());
        assert_eq!(c.tick(&ls, at(t0, 21_000)).expired, vec![1]);
        // Losing leadership drops every clock and every revocation in flight.
        c.follow(false, at(t0, 21_000), Vec::new);
        c.follow(true, at(t0, 22_000), || ls.clone());
        assert_eq!(c.remaining(1, 100, at(t0, 22_000)), Some(21));
    }

    #[test]
    fn checkpoints_record_what_changed_every_interval() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(Duration::ZERO, Duration::from_secs(5));
        let ls = vec![lease(1, 60, 0)];
        c.follow(true, t0, || ls.clone());
        assert!(c.tick(&ls, at(t0, 4_000)).checkpoints.is_empty(), "not due");
        let due = c.tick(&ls, at(t0, 5_000));
        assert_eq!(
            due.checkpoints,
            vec![LeaseCheckpoint {
                id: 1,
                remaining_ttl: 56
            }]
        );
        // Renewed to its full TTL: the checkpoint clears (0) the recorded value.
        let recorded = vec![lease(1, 60, 56)];
        c.renew(Some(&recorded[0]), at(t0, 9_000));
        let due = c.tick(&recorded, at(t0, 10_000));
        assert_eq!(
            due.checkpoints,
            vec![LeaseCheckpoint {
                id: 1,
                remaining_ttl: 0
            }]
        );
    }

    /// Inputs a leader sees, in time order.
    #[derive(Debug, Clone)]
    enum Step {
        Wait(u64),
        Renew,
        Leadership(bool),
        Revoked,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..4_000).prop_map(Step::Wait),
            2 => Just(Step::Renew),
            1 => any::<bool>().prop_map(Step::Leadership),
            1 => Just(Step::Revoked),
        ]
    }

    proptest! {
        /// Whatever the order of renewals, waits and leader changes, a lease is never named
        /// expired before its TTL since the later of its last renewal and the last promotion
        /// (plus the extension), and never twice without a finished revocation between.
        #[test]
        fn never_early_never_twice(ttl in 1i64..5, steps in proptest::collection::vec(step(), 1..60)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut c = LeaseClock::new(EXT, CHECKPOINT);
            let l = lease(1, ttl, 0);
            let mut leader = true;
            c.follow(true, now, || vec![l]);
            let mut earliest = now + Duration::from_secs(ttl as u64) + EXT;
            let mut named = false;
            for s in steps {
                match s {
                    Step::Wait(ms) => now += Duration::from_millis(ms),
                    Step::Renew => {
                        if c.renew(Some(&l), now).is_some_and(|t| t > 0) {
                            earliest = now + Duration::from_secs(ttl as u64);
                        }
                    }
                    Step::Leadership(lead) => {
                        c.follow(lead, now, || vec![l]);
                        if lead && !leader {
                            earliest = now + Duration::from_secs(ttl as u64) + EXT;
                            named = false;
                        }
                        if !lead {
                            named = false;
                        }
                        leader = lead;
                    }
                    Step::Revoked => {
                        c.revoke_done(1);
                        named = false;
                    }
                }
                let due = c.tick(&[l], now);
                if due.expired.contains(&1) {
                    prop_assert!(leader, "a follower named an expiry");
                    prop_assert!(now >= earliest, "expired early");
                    prop_assert!(!named, "named twice");
                    named = true;
                }
            }
        }
    }
}
