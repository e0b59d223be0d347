//! Recorded client operations: what was asked, when, and what came back. Outcomes that cannot
//! be known (timeouts, dropped connections, errors after the request left) are ambiguous:
//! the operation may or may not have taken effect.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// An operation on one key of the register model. Values are unique per write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Put(u64),
    Delete,
    /// Compare-and-set: if the key holds `expect` (None: absent), set it to `new`.
    Cas {
        expect: Option<u64>,
        new: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read's result.
    Value(Option<u64>),
    /// A put, or a CAS that succeeded, at this revision.
    Written(i64),
    /// A delete that removed the key (true) or found nothing (false).
    Deleted(bool),
    /// A CAS whose comparison failed.
    CasFailed,
    /// Unknown whether it took effect.
    Ambiguous,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub client: usize,
    pub key: usize,
    pub op: Op,
    /// Nanoseconds since the history began.
    pub invoke: u64,
    /// `u64::MAX` when the outcome is ambiguous (it may take effect at any later time).
    pub complete: u64,
    pub outcome: Outcome,
}

impl Entry {
    pub fn is_write(&self) -> bool {
        !matches!(self.op, Op::Get)
    }
}

/// A history shared by concurrent clients.
pub struct History {
    start: Instant,
    entries: Mutex<Vec<Entry>>,
    failed_reads: AtomicUsize,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            entries: Mutex::new(Vec::new()),
            failed_reads: AtomicUsize::new(0),
        }
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, mut e: Entry) {
        if e.outcome == Outcome::Ambiguous {
            e.complete = u64::MAX;
        }
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    /// A read that failed: it observed nothing, so it is counted but not kept.
    pub fn failed_read(&self) {
        self.failed_reads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed_reads(&self) -> usize {
        self.failed_reads.load(Ordering::Relaxed)
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
