//! Proposals in flight on this member: each one's reply channel, by request id, until the
//! applier answers it, raft refuses it, or its caller gives up.
//!
//! Invariants: at most [`MAX_PENDING_PROPOSALS`] at once (beyond it a proposal is refused
//! before it reaches raft); every waiter is answered at most once, by whoever takes it out.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::limits::MAX_PENDING_PROPOSALS;

/// The map is full: etcd's answer when its applier falls too far behind.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany;

pub struct Waiters<T> {
    map: Mutex<HashMap<u64, oneshot::Sender<T>>>,
    limit: usize,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters::with_limit(MAX_PENDING_PROPOSALS)
    }
}

impl<T> Waiters<T> {
    pub fn with_limit(limit: usize) -> Waiters<T> {
        Waiters {
            map: Mutex::new(HashMap::new()),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<T>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers proposal `id`; its answer arrives on the returned receiver.
    pub fn register(&self, id: u64) -> Result<oneshot::Receiver<T>, TooMany> {
        let mut map = self.lock();
        if map.len() >= self.limit {
            return Err(TooMany);
        }
        let (tx, rx) = oneshot::channel();
        map.insert(id, tx);
        Ok(rx)
    }

    /// Forgets proposal `id` (its caller gave up or it never reached raft).
    pub fn cancel(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Answers proposal `id`, if anyone still waits for it.
    pub fn answer(&self, id: u64, value: T) {
        let w = self.lock().remove(&id);
        if let Some(w) = w {
            let _ = w.send(value);
        }
    }

    /// Answers many at once: the waiters are taken under one lock and answered after it,
    /// since each answer may wake a task and request tasks registering new proposals must
    /// not queue behind those wake-ups.
    pub fn answer_all(&self, answers: impl IntoIterator<Item = (Option<u64>, T)>) {
        let taken: Vec<_> = {
            let mut map = self.lock();
            answers
                .into_iter()
                .filter_map(|(id, v)| Some((map.remove(&id?)?, v)))
                .collect()
        };
        for (w, v) in taken {
            let _ = w.send(v);
        }
    }

    /// Proposals in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_answered_once() {
        let w: Waiters<u32> = Waiters::with_limit(2);
        let mut a = w.register(1).unwrap();
        let mut b = w.register(2).unwrap();
        assert_eq!(w.register(3).err(), Some(TooMany));
        w.answer_all([(Some(1), 10), (None, 0), (Some(9), 0)]);
        assert_eq!(a.try_recv(), Ok(10));
        // A second answer for the same id finds nobody.
        w.answer(1, 11);
        assert_eq!(w.len(), 1);
        w.cancel(2);
        assert!(b.try_recv().is_err());
        assert!(w.is_empty());
        assert!(w.register(3).is_ok(), "room again");
    }
}
