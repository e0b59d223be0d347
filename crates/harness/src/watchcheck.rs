//! Watchers that survive faults by resuming on another member, and the checks of what they
//! saw against ground truth read back with ranges (independent of the watch code): ordered,
//! unique, reliable (no gaps), resumable, correct values, prev_kv, create flags, and progress
//! notifications that never run ahead of undelivered events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast_api::etcdserverpb::kv_client::KvClient;
use ballast_api::etcdserverpb::watch_client::WatchClient;
use ballast_api::etcdserverpb::watch_request::RequestUnion;
use ballast_api::etcdserverpb::{
    RangeRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use ballast_api::mvccpb::event::EventType;
use ballast_net::keys::prefix_end;
use tonic::transport::Channel;

use crate::workload::Endpoints;

/// One thing a watcher received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Event {
        /// Which response it came in (events of one revision must share one).
        response: usize,
        rev: i64,
        key: Vec<u8>,
        /// None for a deletion.
        value: Option<Vec<u8>>,
        create_rev: i64,
        version: i64,
        prev: Option<Vec<u8>>,
    },
    Progress(i64),
}

#[derive(Default, Debug)]
pub struct WatchLog {
    /// First revision the watcher must report from (set once it is created).
    pub start: i64,
    pub seen: Vec<Seen>,
    pub reconnects: usize,
}

impl WatchLog {
    fn last_rev(&self) -> i64 {
        self.seen
            .iter()
            .rev()
            .find_map(|s| match s {
                Seen::Event { rev, .. } => Some(*rev),
                Seen::Progress(_) => None,
            })
            .unwrap_or(self.start - 1)
    }
}

/// Watches `prefix` from `start` (0: from now), resuming elsewhere after failures, until
/// `stop`; asks for progress every half second.
pub async fn watcher(
    first: usize,
    endpoints: Endpoints,
    prefix: Vec<u8>,
    start: i64,
    log: Arc<Mutex<WatchLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut at = first;
    let mut response = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let ep = {
            let eps = endpoints.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if eps.is_empty() {
                return;
            }
            at %= eps.len();
            eps[at].clone()
        };
        at += 1;
        let from = {
            let l = log.lock().unwrap_or_else(|p| p.into_inner());
            if l.start == 0 {
                start
            } else {
                l.last_rev() + 1
            }
        };
        let Ok(ch) =
            Channel::from_shared(ep).map(|c| c.connect_timeout(Duration::from_millis(500)))
        else {
            return;
        };
        let Ok(ch) = ch.connect().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                start_revision: from,
                prev_kv: true,
                progress_notify: true,
                ..Default::default()
            })),
        };
        if tx.send(create).await.is_err() {
            continue;
        }
        let mut client = WatchClient::new(ch);
        let Ok(stream) = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::select! {
                _ = tick.tick() => {
                    let p = WatchRequest {
                        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                    };
                    if tx.send(p).await.is_err() {
                        break;
                    }
                }
                msg = tokio::time::timeout(Duration::from_secs(3), stream.message()) => {
                    let Ok(Ok(Some(r))) = msg else { break };
                    let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
                    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                    if r.created {
                        if l.start == 0 {
                            l.start = if from == 0 { rev + 1 } else { from };
                        }
                        continue;
                    }
                    if r.canceled {
                        // Compaction never happens in these runs: a cancel is a failure to
                        // report, so stop here and let the checks find the gap.
                        return;
                    }
                    if r.events.is_empty() {
                        l.seen.push(Seen::Progress(rev));
                        continue;
                    }
                    response += 1;
                    for ev in r.events {
                        let kv = ev.kv.unwrap_or_default();
                        let delete = ev.r#type == EventType::Delete as i32;
                        l.seen.push(Seen::Event {
                            response,
                            rev: kv.mod_revision,
                            key: kv.key,
                            value: (!delete).then_some(kv.value),
                            create_rev: kv.create_revision,
                            version: kv.version,
                            prev: ev.prev_kv.map(|p| p.value),
                        });
                    }
                }
            }
        }
        log.lock().unwrap_or_else(|p| p.into_inner()).reconnects += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A key's value after a change (None: deleted).
type Value = Option<Vec<u8>>;

/// What the store held under the prefix at each revision, read back with ranges.
pub struct Truth {
    /// Per revision: the key changed there and its new value (None: deleted).
    pub changes: BTreeMap<i64, (Vec<u8>, Value)>,
    /// Per key: (revision, value) after each change, for "value at revision" lookups.
    by_key: BTreeMap<Vec<u8>, Vec<(i64, Value)>>,
    pub last: i64,
}

impl Truth {
    /// Reads every revision in `1..=last` from `endpoint` (serializable ranges).
    pub async fn read(endpoint: &str, prefix: &[u8], last: i64) -> Result<Truth, String> {
        let mut kv = KvClient::new(crate::cluster::channel(endpoint).await?);
        let mut prev: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut t = Truth {
            changes: BTreeMap::new(),
            by_key: BTreeMap::new(),
            last,
        };
        for rev in 1..=last {
            let r = kv
                .range(RangeRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    revision: rev,
                    serializable: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("range at {rev}: {}", e.message()))?
                .into_inner();
            // A put at `rev` shows as the key whose mod revision is `rev` (even when it wrote
            // the same value); a delete as a key that is gone.
            let put = r
                .kvs
                .iter()
                .find(|kv| kv.mod_revision == rev)
                .map(|kv| (kv.key.clone(), Some(kv.value.clone())));
            let now: BTreeMap<Vec<u8>, Vec<u8>> =
                r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
            let change = put.or_else(|| {
                prev.keys()
                    .find(|k| !now.contains_key(*k))
                    .map(|k| (k.clone(), None))
            });
            if let Some((k, v)) = change {
                t.by_key
                    .entry(k.clone())
                    .or_default()
                    .push((rev, v.clone()));
                t.changes.insert(rev, (k, v));
            }
            prev = now;
        }
        Ok(t)
    }

    /// Revisions in `from..=to` that changed something under the prefix.
    pub fn between(&self, from: i64, to: i64) -> impl Iterator<Item = i64> + '_ {
        let range = if from <= to {
            self.changes.range(from..=to)
        } else {
            self.changes.range(0..0)
        };
        range.map(|(r, _)| *r)
    }

    /// The value `key` held at revision `rev` (None: absent).
    pub fn value_at(&self, key: &[u8], rev: i64) -> Option<Vec<u8>> {
        let hist = self.by_key.get(key)?;
        let i = hist.partition_point(|(r, _)| *r <= rev);
        if i == 0 {
            None
        } else {
            hist[i - 1].1.clone()
        }
    }
}

/// Checks one watcher's log; returns the problems found (empty: all guarantees held).
pub fn check(name: &str, log: &WatchLog, truth: &Truth) -> Vec<String> {
    let mut errs = Vec::new();
    if log.start == 0 {
        return vec![format!("{name}: never created")];
    }
    let mut last = log.start - 1;
    let mut last_response: Option<(i64, usize)> = None;
    let mut delivered: Vec<i64> = Vec::new();
    for s in &log.seen {
        match s {
            Seen::Progress(p) => {
                let missing = truth
                    .between(log.start, *p)
                    .find(|r| delivered.binary_search(r).is_err());
                if let Some(r) = missing {
                    errs.push(format!(
                        "{name}: progress notification at {p} before the event at {r}"
                    ));
                }
                last = last.max(*p);
            }
            Seen::Event {
                response,
                rev,
                key,
                value,
                create_rev,
                version,
                prev,
            } => {
                if *rev <= last {
                    errs.push(format!(
                        "{name}: event at {rev} after revision {last} (out of order, duplicated or behind progress)"
                    ));
                }
                if let Some((r, resp)) = last_response {
                    if r == *rev && resp != *response {
                        errs.push(format!("{name}: revision {rev} split across responses"));
                    }
                }
                last_response = Some((*rev, *response));
                match truth.changes.get(rev) {
                    Some((k, v)) if k == key && v == value => {}
                    other => errs.push(format!(
                        "{name}: event at {rev} is {key:?}={value:?}, store says {other:?}"
                    )),
                }
                let before = truth.value_at(key, rev - 1);
                if *prev != before {
                    errs.push(format!(
                        "{name}: prev_kv at {rev} is {prev:?}, store says {before:?}"
                    ));
                }
                if value.is_some() {
                    let created = before.is_none();
                    if created != (*create_rev == *rev) || created != (*version == 1) {
                        errs.push(format!(
                            "{name}: create flags at {rev} wrong (create_revision {create_rev}, version {version})"
                        ));
                    }
                }
                last = last.max(*rev);
                delivered.push(*rev);
            }
        }
        if errs.len() > 5 {
            break;
        }
    }
    let expected: Vec<i64> = truth.between(log.start, truth.last).collect();
    let got: Vec<i64> = delivered
        .iter()
        .copied()
        .filter(|r| *r >= log.start)
        .collect();
    if got != expected {
        let missing = expected.iter().find(|r| !got.contains(r));
        errs.push(format!(
            "{name}: saw {} of {} events from revision {} (first missing: {missing:?})",
            got.len(),
            expected.len(),
            log.start
        ));
    }
    errs
}
