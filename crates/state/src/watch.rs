//! Which watcher gets which event: etcd's watch matching as pure functions over a batch of
//! events. The server's watch hub owns streams, buffers and tasks; what goes into each
//! watcher's responses is decided here.
//!
//! Invariants: a watcher gets an event only if its key is in the watched range, its type is
//! not filtered out and its revision is at or past the watcher's next revision; a selection
//! keeps the batch's order; fragments split only between events, keep every event once and in
//! order, and are each within the byte limit unless a single event is larger.

use ballast_api::etcdserverpb::watch_create_request::FilterType;
use ballast_api::etcdserverpb::WatchCreateRequest;
use ballast_api::mvccpb::{event::EventType, Event};
use prost::Message;

use crate::mvcc::{in_range, mod_rev};

/// Bytes counted per event beyond its own encoding when splitting into fragments: the
/// repeated field's tag and length.
const EVENT_FRAMING: usize = 8;

/// What a client asked to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

/// The events of a batch one watcher gets.
#[derive(Debug, PartialEq)]
pub enum Selection {
    /// None of them.
    Nothing,
    /// Every event of the batch (so an encoding of the whole batch can be shared).
    All,
    /// These, in the batch's order.
    Some(Vec<Event>),
}

impl Spec {
    pub fn new(r: &WatchCreateRequest) -> Spec {
        let mut key = r.key.clone();
        if key.is_empty() {
            // The smallest key, as etcd does.
            key = vec![0];
        }
        Spec {
            key,
            range_end: r.range_end.clone(),
            prev_kv: r.prev_kv,
            no_put: r.filters.contains(&(FilterType::Noput as i32)),
            no_delete: r.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: r.progress_notify,
            fragment: r.fragment,
        }
    }

    /// Whether the watcher wants this event, whatever its revision.
    pub fn wants(&self, e: &Event) -> bool {
        let Some(kv) = e.kv.as_ref() else {
            return false;
        };
        let put = e.r#type == EventType::Put as i32;
        in_range(&kv.key, &self.key, &self.range_end)
            && if put { !self.no_put } else { !self.no_delete }
    }

    /// The events of `batch` a watcher whose next undelivered revision is `next_rev` gets.
    pub fn select(&self, batch: &[Event], next_rev: i64) -> Selection {
        let mine = |e: &&Event| mod_rev(e) >= next_rev && self.wants(e);
        if batch.is_empty() {
            return Selection::Nothing;
        }
        if batch.iter().all(|e| mine(&e)) {
            return Selection::All;
        }
        let some: Vec<Event> = batch.iter().filter(mine).cloned().collect();
        if some.is_empty() {
            Selection::Nothing
        } else {
            Selection::Some(some)
        }
    }
}

/// Splits `events` into consecutive groups of at most `max_bytes` encoded (a group holds at
/// least one event, so an event larger than the limit travels alone). Each group is one
/// fragment of a response; all but the last say `fragment`.
pub fn fragments(events: Vec<Event>, max_bytes: usize) -> Vec<Vec<Event>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for e in events {
        let n = e.encoded_len() + EVENT_FRAMING;
        if !cur.is_empty() && size + n > max_bytes {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += n;
        cur.push(e);
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_api::mvccpb::KeyValue;
    use proptest::prelude::*;

    fn ev(key: &str, rev: i64, put: bool) -> Event {
        Event {
            r#type: if put {
                EventType::Put as i32
            } else {
                EventType::Delete as i32
            },
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: rev,
                value: vec![b'v'; 10],
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn spec(key: &str, end: &str, filters: Vec<FilterType>) -> Spec {
        Spec::new(&WatchCreateRequest {
            key: key.into(),
            range_end: end.into(),
            filters: filters.into_iter().map(|f| f as i32).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn a_watcher_gets_its_keys_revisions_and_types() {
        let batch = vec![ev("a", 5, true), ev("b", 6, true), ev("b", 7, false)];
        assert_eq!(spec("a", "c", vec![]).select(&batch, 5), Selection::All);
        assert_eq!(
            spec("b", "", vec![]).select(&batch, 0),
            Selection::Some(vec![batch[1].clone(), batch[2].clone()])
        );
        assert_eq!(
            spec("a", "c", vec![FilterType::Noput]).select(&batch, 0),
            Selection::Some(vec![batch[2].clone()])
        );
        assert_eq!(
            spec("a", "c", vec![FilterType::Nodelete]).select(&batch, 6),
            Selection::Some(vec![batch[1].clone()])
        );
        // Already delivered, or out of range.
        assert_eq!(spec("a", "c", vec![]).select(&batch, 8), Selection::Nothing);
        assert_eq!(
            spec("c", "\0", vec![]).select(&batch, 0),
            Selection::Nothing
        );
        // An empty key watches from the smallest key; "\0" as end means every key after it.
        assert_eq!(spec("", "\0", vec![]).select(&batch, 0), Selection::All);
        assert_eq!(spec("a", "c", vec![]).select(&[], 0), Selection::Nothing);
    }

    #[test]
    fn fragments_stay_within_the_limit() {
        let events: Vec<Event> = (1..=10).map(|r| ev("k", r, true)).collect();
        let one = events[0].encoded_len() + EVENT_FRAMING;
        let groups = fragments(events.clone(), 3 * one);
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        // An event larger than the limit still travels, alone.
        assert_eq!(fragments(events[..2].to_vec(), 1).len(), 2);
        assert_eq!(fragments(Vec::new(), 1), vec![Vec::<Event>::new()]);
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (0u8..4, 1i64..20, any::<bool>()).prop_map(|(k, rev, put)| {
            ev(
                &String::from_utf8(vec![b'a' + k]).unwrap_or_default(),
                rev,
                put,
            )
        })
    }

    proptest! {
        /// Selecting equals filtering event by event; `All` only when nothing is left out.
        #[test]
        fn select_is_per_event_filtering(
            batch in proptest::collection::vec(arb_event(), 0..12),
            next_rev in 0i64..20,
            no_put: bool,
            no_delete: bool,
            wide: bool,
        ) {
            let mut s = spec("b", if wide { "d" } else { "" }, vec![]);
            s.no_put = no_put;
            s.no_delete = no_delete;
            let want: Vec<Event> = batch
                .iter()
                .filter(|e| mod_rev(e) >= next_rev && s.wants(e))
                .cloned()
                .collect();
            let got = match s.select(&batch, next_rev) {
                Selection::Nothing => Vec::new(),
                Selection::All => batch.clone(),
                Selection::Some(v) => v,
            };
            prop_assert_eq!(got, want);
        }

        /// Fragments keep every event once, in order, and each within the limit.
        #[test]
        fn fragments_partition_in_order(
            n in 0usize..40,
            max in 1usize..400,
        ) {
            let events: Vec<Event> = (0..n).map(|r| ev("k", r as i64, true)).collect();
            let groups = fragments(events.clone(), max);
            let flat: Vec<Event> = groups.iter().flatten().cloned().collect();
            prop_assert_eq!(flat, events);
            for g in &groups {
                let size: usize = g.iter().map(|e| e.encoded_len() + EVENT_FRAMING).sum();
                prop_assert!(g.len() <= 1 || size <= max);
            }
        }
    }
}
