//! A linearizability checker for the register model (get, put, delete, compare-and-set on
//! independent keys), in the style of Wing & Gong with Lowe's memoisation (as in Porcupine).
//!
//! Keys are independent objects, so each key's sub-history is checked on its own (a history
//! is linearizable iff every key's is). Within a key the search walks call/return events in
//! time order, tentatively linearizing any pending call the model allows, backtracking at a
//! return it cannot explain, and never revisits a (set of linearized ops, state) pair.
//! Ambiguous operations return at infinity: they may take effect anywhere after their call,
//! and taking effect at the very end is the same as never happening.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::history::{Entry, Op, Outcome};

type State = Option<u64>;

/// The register model: the state after `e`, or None when `e`'s outcome is impossible in `s`.
fn step(s: State, e: &Entry) -> Option<State> {
    match (e.op, e.outcome) {
        (Op::Get, Outcome::Value(v)) => (v == s).then_some(s),
        (Op::Get, _) => Some(s),
        (Op::Put(v), _) => Some(Some(v)),
        (Op::Delete, Outcome::Deleted(d)) => (d == s.is_some()).then_some(None),
        (Op::Delete, _) => Some(None),
        (Op::Cas { expect, new }, Outcome::Written(_)) => (s == expect).then_some(Some(new)),
        (Op::Cas { expect, .. }, Outcome::CasFailed) => (s != expect).then_some(s),
        (Op::Cas { expect, new }, _) => Some(if s == expect { Some(new) } else { s }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyResult {
    Linearizable,
    Violation,
    TimedOut,
}

/// Checks one key's operations.
fn check_key(ops: &[&Entry], deadline: Instant) -> KeyResult {
    let n = ops.len();
    // Events in time order; at equal times calls come first (the more permissive order).
    let mut evs: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in ops.iter().enumerate() {
        evs.push((e.invoke, 0, i));
        evs.push((e.complete, 1, i));
    }
    evs.sort_unstable();
    let m = evs.len();
    let nil = m + 1;
    // Nodes 1..=m are events; 0 is the head.
    let mut next: Vec<usize> = (1..=m + 1).collect();
    next.push(nil);
    let mut prev: Vec<usize> = (0..=m + 1).map(|i| i.saturating_sub(1)).collect();
    let mut is_call = vec![false; m + 2];
    let mut node_op = vec![0usize; m + 2];
    let mut ret_node = vec![0usize; n];
    for (k, &(_, kind, op)) in evs.iter().enumerate() {
        let node = k + 1;
        is_call[node] = kind == 0;
        node_op[node] = op;
        if kind == 1 {
            ret_node[op] = node;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = nx;
        prev[nx] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = x;
        prev[nx] = x;
    };
    let mut state: State = None;
    let mut bits = vec![0u64; n.div_ceil(64)];
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut cur = next[0];
    let mut steps = 0u64;
    loop {
        if next[0] == nil {
            return KeyResult::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(1 << 14) && Instant::now() > deadline {
            return KeyResult::TimedOut;
        }
        if cur != nil && is_call[cur] {
            let op = node_op[cur];
            if let Some(ns) = step(state, ops[op]) {
                bits[op / 64] |= 1 << (op % 64);
                if seen.insert((bits.clone(), ns)) {
                    stack.push((cur, state));
                    state = ns;
                    unlink(&mut next, &mut prev, cur);
                    unlink(&mut next, &mut prev, ret_node[op]);
                    cur = next[0];
                    continue;
                }
                bits[op / 64] &= !(1 << (op % 64));
            }
            cur = next[cur];
        } else {
            // A return (or the end) reached with its operation not linearized: undo one.
            let Some((call, s)) = stack.pop() else {
                return KeyResult::Violation;
            };
            let op = node_op[call];
            state = s;
            bits[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_node[op]);
            relink(&mut next, &mut prev, call);
            cur = next[call];
        }
    }
}

/// The checker's answer for a whole history.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub operations: usize,
    pub keys: usize,
    /// Some key's check ran out of time: nothing was proven about it.
    pub timed_out: bool,
    /// A small non-linearizable sub-history of one key, when one was found.
    pub violation: Option<Vec<Entry>>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        !self.timed_out && self.violation.is_none()
    }
}

/// Checks `entries` within `budget`. Reads that failed are not part of a history (they
/// observed nothing) and must not be passed in as ambiguous.
pub fn check(entries: &[Entry], budget: Duration) -> Verdict {
    let deadline = Instant::now() + budget;
    let mut by_key: BTreeMap<usize, Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        by_key.entry(e.key).or_default().push(e);
    }
    let mut v = Verdict {
        operations: entries.len(),
        keys: by_key.len(),
        timed_out: false,
        violation: None,
    };
    for ops in by_key.values() {
        match check_key(ops, deadline) {
            KeyResult::Linearizable => {}
            KeyResult::TimedOut => v.timed_out = true,
            KeyResult::Violation => {
                v.violation = Some(shrink(ops, Instant::now() + Duration::from_secs(5)));
                return v;
            }
        }
    }
    v
}

/// A smaller sub-history that is still not linearizable: the shortest failing prefix (by
/// call time), then greedy removal of single operations while time allows.
fn shrink(ops: &[&Entry], deadline: Instant) -> Vec<Entry> {
    let mut sorted: Vec<&Entry> = ops.to_vec();
    sorted.sort_by_key(|e| e.invoke);
    let fails = |h: &[&Entry]| check_key(h, deadline) == KeyResult::Violation;
    let (mut lo, mut hi) = (1, sorted.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(&sorted[..mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut cur: Vec<&Entry> = if fails(&sorted[..hi]) {
        sorted[..hi].to_vec()
    } else {
        sorted
    };
    // A write stays while a remaining read observed its value (or a CAS expected it), so
    // the result never shows reads of values nobody wrote.
    let observed = |h: &[&Entry], v: u64| {
        h.iter().any(|e| {
            e.outcome == Outcome::Value(Some(v))
                || matches!(e.op, Op::Cas { expect: Some(x), .. } if x == v)
        })
    };
    let mut i = cur.len();
    while i > 0 && Instant::now() < deadline {
        i -= 1;
        if let Op::Put(v) | Op::Cas { new: v, .. } = cur[i].op {
            if observed(&cur, v) {
                continue;
            }
        }
        let mut trial = cur.clone();
        trial.remove(i);
        if fails(&trial) {
            cur = trial;
        }
    }
    cur.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(client: usize, op: Op, invoke: u64, complete: u64, outcome: Outcome) -> Entry {
        Entry {
            client,
            key: 0,
            op,
            invoke,
            complete: if outcome == Outcome::Ambiguous {
                u64::MAX
            } else {
                complete
            },
            outcome,
        }
    }

    fn verdict(h: &[Entry]) -> Verdict {
        check(h, Duration::from_secs(5))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            e(0, Op::Put(1), 0, 10, Outcome::Written(2)),
            e(0, Op::Get, 20, 30, Outcome::Value(Some(1))),
            e(
                0,
                Op::Cas {
                    expect: Some(1),
                    new: 2,
                },
                40,
                50,
                Outcome::Written(3),
            ),
            e(
                0,
                Op::Cas {
                    expect: Some(1),
                    new: 3,
                },
                60,
                70,
                Outcome::CasFailed,
            ),
            e(0, Op::Delete, 80, 90, Outcome::Deleted(true)),
            e(0, Op::Get, 100, 110, Outcome::Value(None)),
        ];
        assert!(verdict(&h).ok());
    }

    #[test]
    fn stale_read_after_a_completed_write_is_a_violation() {
        let h = [
            e(0, Op::Put(1), 0, 10, Outcome::Written(2)),
            e(1, Op::Put(2), 20, 30, Outcome::Written(3)),
            e(2, Op::Get, 40, 50, Outcome::Value(Some(1))),
        ];
        let v = verdict(&h);
        assert!(!v.ok());
        // All three are needed: the read's value must have a writer in the sub-history.
        let min = v.violation.unwrap();
        assert_eq!(min.len(), 3);
    }

    #[test]
    fn shrinking_keeps_only_what_shows_the_lost_write() {
        let h = [
            e(0, Op::Put(1), 0, 10, Outcome::Written(2)),
            e(1, Op::Put(2), 20, 30, Outcome::Written(3)),
            e(2, Op::Put(3), 40, 50, Outcome::Written(4)),
            e(3, Op::Put(4), 60, 70, Outcome::Written(5)),
            e(4, Op::Get, 80, 90, Outcome::Value(Some(3))),
        ];
        let min = verdict(&h).violation.unwrap();
        let ops: Vec<Op> = min.iter().map(|e| e.op).collect();
        assert_eq!(ops, vec![Op::Put(3), Op::Put(4), Op::Get]);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let h = [
            e(0, Op::Put(1), 0, 100, Outcome::Written(2)),
            e(1, Op::Put(2), 10, 90, Outcome::Written(3)),
            e(2, Op::Get, 110, 120, Outcome::Value(Some(1))),
            e(3, Op::Get, 130, 140, Outcome::Value(Some(1))),
        ];
        assert!(verdict(&h).ok());
    }

    #[test]
    fn ambiguous_write_may_appear_late_or_never_but_not_before_its_call() {
        let late = [
            e(0, Op::Put(1), 0, 0, Outcome::Ambiguous),
            e(1, Op::Get, 10, 20, Outcome::Value(None)),
            e(1, Op::Get, 30, 40, Outcome::Value(Some(1))),
        ];
        assert!(verdict(&late).ok());
        let never = [
            e(0, Op::Put(1), 0, 0, Outcome::Ambiguous),
            e(1, Op::Get, 30, 40, Outcome::Value(None)),
        ];
        assert!(verdict(&never).ok());
        let early = [
            e(1, Op::Get, 0, 10, Outcome::Value(Some(1))),
            e(0, Op::Put(1), 20, 0, Outcome::Ambiguous),
        ];
        assert!(!verdict(&early).ok());
    }

    #[test]
    fn lost_acknowledged_write_is_a_violation() {
        let h = [
            e(0, Op::Put(1), 0, 10, Outcome::Written(2)),
            e(0, Op::Put(2), 20, 30, Outcome::Written(3)),
            e(1, Op::Get, 40, 50, Outcome::Value(Some(1))),
        ];
        assert!(!verdict(&h).ok());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut a = e(0, Op::Put(1), 0, 10, Outcome::Written(2));
        let mut b = e(1, Op::Get, 20, 30, Outcome::Value(None));
        a.key = 1;
        b.key = 2;
        assert!(verdict(&[a, b]).ok());
    }

    #[test]
    fn large_concurrent_history_checks_quickly() {
        // 8 clients, 20k operations over 4 keys, each op overlapping its neighbours.
        let mut h = Vec::new();
        let mut vals = [None; 4];
        let mut next = 1u64;
        for i in 0..20_000u64 {
            let key = (i % 4) as usize;
            let t = i * 10;
            let op = if i % 3 == 0 {
                Op::Get
            } else {
                next += 1;
                Op::Put(next)
            };
            let outcome = match op {
                Op::Get => Outcome::Value(vals[key]),
                Op::Put(v) => {
                    vals[key] = Some(v);
                    Outcome::Written(i as i64)
                }
                _ => unreachable!(),
            };
            let mut en = e((i % 8) as usize, op, t, t + 65, outcome);
            en.key = key;
            h.push(en);
        }
        let start = Instant::now();
        let v = verdict(&h);
        assert!(v.ok(), "{v:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
