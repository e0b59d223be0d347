//! Watchers: events from this member's applied state, with etcd's guarantees.
//!
//! Every watcher is *synced* (it has everything up to the hub's revision and gets new events
//! as they are applied), *waiting* (its stream buffer was full: the responses it could not
//! take wait in memory, in order, and a task of its own queues them as room appears, as
//! etcd's victims do) or *catching up* (a task of its own reads history from the store,
//! revision ranges at a time, until it reaches the hub's revision). A waiting watcher whose
//! responses pass `WATCH_PENDING_BYTES` drops them and catches up instead; a full stream
//! never blocks the applier, so slow watchers never stall writes or other watchers, and a
//! briefly slow one costs no store reads (10 never-read watchers had taken a third of the
//! put throughput re-reading history). Moving back to synced happens under the hub lock, the
//! same lock under which the applier publishes a batch, so nothing is skipped or delivered
//! twice.
//!
//! Invariants: a watcher's events are sent in revision order, each revision once; a response
//! never splits a revision (unless the client asked for fragments); a progress response never
//! names a revision whose events for that stream are not yet sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ballast_api::etcdserverpb::{ResponseHeader, WatchResponse};
use ballast_api::mvccpb::Event;
pub use ballast_state::watch::Spec;
use ballast_state::watch::{fragments, Selection};
use ballast_state::{KvError, Mvcc};
use prost::bytes::Bytes;
use prost::Message;

use crate::limits::{CATCH_UP_EVENTS, WATCH_PENDING_BYTES, WATCH_PENDING_TOTAL_BYTES};
use crate::outbox::{Item, TrySendError};

/// Synced watchers from which the applier hands a batch's fan-out to a runtime worker; below
/// it a few cross-thread wake-ups cost less than the hand-off.
const OFFLOAD_WATCHERS: usize = 32;

pub use crate::frame::Frame;
pub type Sender = crate::outbox::Sender;

type HeaderFn = Box<dyn Fn(i64) -> ResponseHeader + Send + Sync>;
type StoreFn = Box<dyn Fn() -> Arc<Mvcc> + Send + Sync>;

struct Watcher {
    stream: u64,
    watch_id: i64,
    spec: Spec,
    /// The first revision not yet delivered.
    next_rev: i64,
    tx: Sender,
    cancelled: Arc<AtomicBool>,
}

/// The synced watchers, indexed so a batch visits only those its events may concern: the
/// watchers of each event's key, and the range and prefix watchers (etcd keeps single-key
/// watchers in a map and ranges in an interval tree). Visiting every watcher per batch took
/// most of the applier's share of the CPU with 10,000 watchers on 1,000 keys.
///
/// A synced watcher has everything up to the hub's revision; its `next_rev` is updated only
/// when a batch concerns it, so it may lag: the hub's revision before a batch decides where
/// the watcher stands when it leaves the synced set.
#[derive(Default)]
struct Synced {
    all: HashMap<u64, Watcher>,
    by_key: HashMap<Vec<u8>, Vec<u64>>,
    ranged: std::collections::BTreeSet<u64>,
    by_stream: HashMap<u64, Vec<u64>>,
}

impl Synced {
    fn len(&self) -> usize {
        self.all.len()
    }

    fn insert(&mut self, key: u64, w: Watcher) {
        if w.spec.range_end.is_empty() {
            self.by_key.entry(w.spec.key.clone()).or_default().push(key);
        } else {
            self.ranged.insert(key);
        }
        self.by_stream.entry(w.stream).or_default().push(key);
        self.all.insert(key, w);
    }

    fn remove(&mut self, key: u64) -> Option<Watcher> {
        let w = self.all.remove(&key)?;
        if w.spec.range_end.is_empty() {
            unlist(&mut self.by_key, &w.spec.key, key);
        } else {
            self.ranged.remove(&key);
        }
        unlist(&mut self.by_stream, &w.stream, key);
        Some(w)
    }

    /// Removes the watchers of `stream` that `drop` picks.
    fn remove_in_stream(&mut self, stream: u64, drop: impl Fn(&Watcher) -> bool) {
        let keys: Vec<u64> = self
            .by_stream
            .get(&stream)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|k| self.all.get(k).is_some_and(&drop))
                    .collect()
            })
            .unwrap_or_default();
        for k in keys {
            self.remove(k);
        }
    }

    /// The watchers a batch may concern, each once, in key order.
    fn candidates(&self, events: &[Event]) -> Vec<u64> {
        let mut out: Vec<u64> = self.ranged.iter().copied().collect();
        for e in events {
            if let Some(ks) = e.kv.as_ref().and_then(|kv| self.by_key.get(&kv.key)) {
                out.extend_from_slice(ks);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn drain(&mut self) -> Vec<Watcher> {
        self.by_key.clear();
        self.ranged.clear();
        self.by_stream.clear();
        self.all.drain().map(|(_, w)| w).collect()
    }
}

/// Takes watcher `key` off `m`'s list for `k`, and the list once empty.
fn unlist<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Vec<u64>>, k: &K, key: u64) {
    if let Some(v) = m.get_mut(k) {
        v.retain(|x| *x != key);
        if v.is_empty() {
            m.remove(k);
        }
    }
}

/// A watcher whose stream was full, and the responses it has yet to queue, each batch's with
/// the first revision it covers and its size (`items_bytes`).
struct Waiting {
    w: Watcher,
    pending: std::collections::VecDeque<(i64, Vec<Item>, usize)>,
    bytes: usize,
    /// Past `WATCH_PENDING_BYTES`: nothing more is kept, and the watcher catches up from
    /// `w.next_rev` once what its task holds is queued.
    overflowed: bool,
}

fn items_bytes(items: &[Item]) -> usize {
    items
        .iter()
        .map(|i| i.as_ref().map_or(0, Message::encoded_len))
        .sum()
}

struct Hub {
    /// The last revision published to watchers.
    rev: i64,
    next_key: u64,
    synced: Synced,
    waiting: HashMap<u64, Waiting>,
    /// What all waiting watchers hold (`Waiting::bytes` summed), at most
    /// `WATCH_PENDING_TOTAL_BYTES`.
    pending_bytes: usize,
    /// Catching-up watchers per stream, and streams owed a progress response.
    catching_up: HashMap<u64, usize>,
    deferred_progress: HashMap<u64, Sender>,
    /// Progress answers waiting for room on a full stream: one slot per stream, holding the
    /// newest (a progress revision is a lower bound, so a newer one replaces an older), and
    /// one task per slot sending it.
    owed_progress: HashMap<u64, WatchResponse>,
    cancel_flags: HashMap<(u64, i64), Arc<AtomicBool>>,
}

pub struct WatchHub {
    hub: Mutex<Hub>,
    header: HeaderFn,
    store: StoreFn,
    runtime: tokio::runtime::Handle,
    max_bytes: usize,
}

impl WatchHub {
    pub fn new(
        rev: i64,
        header: HeaderFn,
        store: StoreFn,
        runtime: tokio::runtime::Handle,
        max_bytes: usize,
    ) -> Arc<WatchHub> {
        Arc::new(WatchHub {
            hub: Mutex::new(Hub {
                rev,
                next_key: 0,
                synced: Synced::default(),
                waiting: HashMap::new(),
                pending_bytes: 0,
                catching_up: HashMap::new(),
                deferred_progress: HashMap::new(),
                owed_progress: HashMap::new(),
                cancel_flags: HashMap::new(),
            }),
            header,
            store,
            runtime,
            max_bytes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last revision published to watchers.
    pub fn rev(&self) -> i64 {
        self.lock().rev
    }

    /// Watchers registered, and those catching up from history (etcd's unsynced, "slow").
    pub fn counts(&self) -> (usize, usize) {
        let hub = self.lock();
        (hub.cancel_flags.len(), hub.catching_up.values().sum())
    }

    /// Registers a watcher from `start_rev` (0: from the next revision). The created response
    /// must already be queued on `tx`.
    pub fn add(
        self: &Arc<Self>,
        stream: u64,
        watch_id: i64,
        spec: Spec,
        start_rev: i64,
        tx: Sender,
    ) {
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut hub = self.lock();
        hub.cancel_flags
            .insert((stream, watch_id), cancelled.clone());
        let next_rev = if start_rev <= 0 {
            hub.rev + 1
        } else {
            start_rev
        };
        let w = Watcher {
            stream,
            watch_id,
            spec,
            next_rev,
            tx,
            cancelled,
        };
        if next_rev > hub.rev {
            let key = hub.next_key;
            hub.next_key += 1;
            hub.synced.insert(key, w);
        } else {
            self.start_catch_up(&mut hub, w);
        }
    }

    /// Stops a watcher; true if it existed.
    pub fn cancel(&self, stream: u64, watch_id: i64) -> bool {
        let mut hub = self.lock();
        let Some(flag) = hub.cancel_flags.remove(&(stream, watch_id)) else {
            return false;
        };
        flag.store(true, Ordering::SeqCst);
        hub.synced
            .remove_in_stream(stream, |w| w.watch_id == watch_id);
        let mut freed = 0;
        hub.waiting.retain(|_, v| {
            let keep = !(v.w.stream == stream && v.w.watch_id == watch_id);
            if !keep {
                freed += v.bytes;
            }
            keep
        });
        hub.pending_bytes -= freed;
        true
    }

    /// Forgets every watcher of a closed stream.
    pub fn close_stream(&self, stream: u64) {
        let mut hub = self.lock();
        hub.synced.remove_in_stream(stream, |_| true);
        let mut freed = 0;
        hub.waiting.retain(|_, v| {
            if v.w.stream == stream {
                freed += v.bytes;
            }
            v.w.stream != stream
        });
        hub.pending_bytes -= freed;
        hub.cancel_flags.retain(|(s, _), flag| {
            if *s == stream {
                flag.store(true, Ordering::SeqCst);
            }
            *s != stream
        });
        hub.deferred_progress.remove(&stream);
        hub.owed_progress.remove(&stream);
    }

    /// Answers a progress request: now if every watcher of the stream is synced, otherwise as
    /// soon as the last one catches up (etcd 3.5+).
    pub fn request_progress(self: &Arc<Self>, stream: u64, tx: &Sender) {
        let mut hub = self.lock();
        if hub.catching_up.get(&stream).copied().unwrap_or(0) == 0 {
            let resp = self.progress(hub.rev, -1);
            self.deliver(&mut hub, stream, tx.clone(), resp);
        } else {
            hub.deferred_progress.insert(stream, tx.clone());
        }
    }

    /// Queues a progress answer that must not be lost: if the stream is full, it waits its
    /// turn in the stream's slot, where a newer answer replaces it. (Arriving after later
    /// events is fine: a progress revision is a lower bound.)
    fn deliver(self: &Arc<Self>, hub: &mut Hub, stream: u64, tx: Sender, resp: WatchResponse) {
        if let Some(owed) = hub.owed_progress.get_mut(&stream) {
            // A task already waits for room on this stream; it sends the newest.
            *owed = resp;
            return;
        }
        let Err(TrySendError::Full(_)) = tx.try_send(Ok(resp.clone().into())) else {
            return;
        };
        hub.owed_progress.insert(stream, resp);
        let me = self.clone();
        self.runtime.spawn(async move {
            loop {
                let Some(resp) = me.lock().owed_progress.get(&stream).cloned() else {
                    return;
                };
                if tx.send(Ok(resp.clone().into())).await.is_err() {
                    me.lock().owed_progress.remove(&stream);
                    return;
                }
                let mut hub = me.lock();
                if hub.owed_progress.get(&stream) == Some(&resp) {
                    hub.owed_progress.remove(&stream);
                    return;
                }
                // Replaced while this one waited: send the newer too.
            }
        });
    }

    fn progress(&self, rev: i64, watch_id: i64) -> WatchResponse {
        WatchResponse {
            header: Some((self.header)(rev)),
            watch_id,
            ..Default::default()
        }
    }

    /// Sends progress to idle synced watchers that asked for it (`progress_notify`).
    pub fn notify_progress(&self) {
        let hub = self.lock();
        for w in hub.synced.all.values().filter(|w| w.spec.progress_notify) {
            let _ = w.tx.try_send(Ok(self.progress(hub.rev, w.watch_id).into()));
        }
    }

    /// `publish`, from a thread outside the runtime (the applier). Every event goes out
    /// before it returns, as with `publish`; with many watchers the work runs on a runtime
    /// worker instead, where waking a stream's task is a push onto that worker's own queue.
    /// From here each wake-up crossed threads: under load the woken worker preempted the
    /// applier, and the two took turns once per watcher, so the last watchers of a batch
    /// waited for the scheduler more than for the work.
    pub fn publish_from_thread(self: &Arc<Self>, events: Vec<Event>, rev: i64) {
        if self.lock().synced.len() < OFFLOAD_WATCHERS {
            return self.publish(&events, rev);
        }
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let me = self.clone();
        self.runtime.spawn(async move {
            me.publish(&events, rev);
            let _ = done.send(());
        });
        // Err only if the runtime dropped the task (shutting down): nothing waits for it then.
        let _ = wait.recv();
    }

    /// Publishes the events of an applied batch that ends at revision `rev`.
    pub fn publish(self: &Arc<Self>, events: &[Event], rev: i64) {
        let mut hub = self.lock();
        if rev <= hub.rev && events.is_empty() {
            return;
        }
        let before = hub.rev;
        hub.rev = hub.rev.max(rev);
        let store = if events.is_empty() {
            None
        } else {
            Some((self.store)())
        };
        let header = (self.header)(rev);
        let mut behind = Vec::new();
        let mut closed = Vec::new();
        // Everything is queued before any stream's task is woken, so they wake in one burst
        // and their connections write many of them at a time. A watcher's responses for the
        // batch are queued all together or not at all: a revision is never half delivered.
        let mut wake = Vec::new();
        // The whole batch, encoded once per prev_kv choice for every watcher that wants all
        // of it (the common case: many watchers on one key or prefix).
        let mut whole: [Option<Bytes>; 2] = [None, None];
        let hub = &mut *hub;
        for key in hub.synced.candidates(events) {
            let Some(w) = hub.synced.all.get_mut(&key) else {
                continue;
            };
            let Some(items) = self.batch_for(w, events, header, store.as_deref(), &mut whole)
            else {
                w.next_rev = w.next_rev.max(rev + 1);
                continue;
            };
            match w.tx.try_send_vec(items) {
                Ok(waiting) => {
                    w.next_rev = rev + 1;
                    wake.extend(waiting);
                }
                Err(TrySendError::Full(items)) => behind.push((key, items)),
                Err(TrySendError::Closed(_)) => closed.push(key),
            }
        }
        // Waiting watchers keep this batch behind the ones they hold, while there is room.
        let mut total = hub.pending_bytes;
        for v in hub.waiting.values_mut().filter(|v| !v.overflowed) {
            let Some(items) = self.batch_for(&v.w, events, header, store.as_deref(), &mut whole)
            else {
                v.w.next_rev = v.w.next_rev.max(rev + 1);
                continue;
            };
            let bytes = items_bytes(&items);
            if v.bytes + bytes > WATCH_PENDING_BYTES || total + bytes > WATCH_PENDING_TOTAL_BYTES {
                v.overflowed = true;
                v.w.next_rev = v.pending.front().map_or(v.w.next_rev, |p| p.0);
                v.pending.clear();
                total -= v.bytes;
                v.bytes = 0;
            } else {
                v.pending.push_back((v.w.next_rev, items, bytes));
                v.bytes += bytes;
                total += bytes;
                v.w.next_rev = rev + 1;
            }
        }
        hub.pending_bytes = total;
        for w in wake {
            w.wake();
        }
        for key in closed {
            hub.synced.remove(key);
        }
        for (key, items) in behind {
            if let Some(mut w) = hub.synced.remove(key) {
                // Synced: it had everything up to the revision before this batch.
                w.next_rev = w.next_rev.max(before + 1);
                self.start_waiting(hub, key, w, items, rev);
            }
        }
    }

    /// What watcher `w` gets of a batch: its responses, or `None` if nothing. Whole batches
    /// share the encoding in `whole` with every other watcher that takes them whole.
    fn batch_for(
        &self,
        w: &Watcher,
        events: &[Event],
        header: ResponseHeader,
        store: Option<&Mvcc>,
        whole: &mut [Option<Bytes>; 2],
    ) -> Option<Vec<Item>> {
        let selection = w.spec.select(events, w.next_rev);
        if matches!(selection, Selection::All) {
            let slot = &mut whole[usize::from(w.spec.prev_kv)];
            let body = slot
                .get_or_insert_with(|| {
                    let evs = with_prev(store, &w.spec, events.to_vec());
                    let r = WatchResponse {
                        header: Some(header),
                        events: evs,
                        ..Default::default()
                    };
                    Bytes::from(r.encode_to_vec())
                })
                .clone();
            // A watcher that asked for fragments of a batch too large for one response gets
            // its own, split.
            if !w.spec.fragment || body.len() <= self.max_bytes {
                crate::stats::add(crate::stats::Counter::EventsSent, events.len() as u64);
                return Some(vec![Ok(Frame::Shared {
                    watch_id: w.watch_id,
                    body,
                })]);
            }
        }
        let mine = match selection {
            Selection::Nothing => return None,
            Selection::All => events.to_vec(),
            Selection::Some(mine) => mine,
        };
        let mine = with_prev(store, &w.spec, mine);
        crate::stats::add(crate::stats::Counter::EventsSent, mine.len() as u64);
        let resps = self.responses(w.watch_id, &w.spec, header, mine);
        Some(resps.into_iter().map(|r| Ok(r.into())).collect())
    }

    /// A synced watcher found its stream full with `items` (a batch up to `rev`): they wait
    /// in memory and a task queues them as room appears; a batch too large to hold sends it
    /// to catch up from history instead.
    fn start_waiting(
        self: &Arc<Self>,
        hub: &mut Hub,
        key: u64,
        mut w: Watcher,
        items: Vec<Item>,
        rev: i64,
    ) {
        let bytes = items_bytes(&items);
        if bytes > WATCH_PENDING_BYTES || hub.pending_bytes + bytes > WATCH_PENDING_TOTAL_BYTES {
            return self.start_catch_up(hub, w);
        }
        hub.pending_bytes += bytes;
        *hub.catching_up.entry(w.stream).or_default() += 1;
        let from = w.next_rev;
        w.next_rev = rev + 1;
        let (stream, tx) = (w.stream, w.tx.clone());
        hub.waiting.insert(
            key,
            Waiting {
                w,
                pending: std::collections::VecDeque::from([(from, items, bytes)]),
                bytes,
                overflowed: false,
            },
        );
        let me = self.clone();
        self.runtime
            .spawn(async move { me.drain_waiting(key, stream, tx).await });
    }

    /// Queues a waiting watcher's responses as its stream takes them, then puts it back among
    /// the synced (or, past its bound or behind a resync, hands it to a catch-up).
    async fn drain_waiting(self: Arc<Self>, key: u64, stream: u64, tx: Sender) {
        loop {
            let items = {
                let mut hub = self.lock();
                let Some(v) = hub.waiting.get_mut(&key) else {
                    // Cancelled, or its stream closed.
                    drop(hub);
                    self.done_catching_up(stream);
                    return;
                };
                match v.pending.pop_front() {
                    Some((_, items, n)) if !v.overflowed => {
                        v.bytes -= n;
                        hub.pending_bytes -= n;
                        items
                    }
                    _ => {
                        let Some(v) = hub.waiting.remove(&key) else {
                            return;
                        };
                        hub.pending_bytes -= v.bytes;
                        if v.overflowed || v.w.next_rev <= hub.rev {
                            // The catch-up counts as this same slow watcher.
                            let me = self.clone();
                            self.runtime.spawn(async move { me.catch_up(v.w).await });
                            return;
                        }
                        let k = hub.next_key;
                        hub.next_key += 1;
                        hub.synced.insert(k, v.w);
                        drop(hub);
                        self.done_catching_up(stream);
                        return;
                    }
                }
            };
            for item in items {
                if tx.send(item).await.is_err() {
                    let mut hub = self.lock();
                    if let Some(v) = hub.waiting.remove(&key) {
                        hub.pending_bytes -= v.bytes;
                    }
                    drop(hub);
                    self.done_catching_up(stream);
                    return;
                }
            }
        }
    }

    /// After the store was replaced by a snapshot: every watcher reads what it missed.
    pub fn resync(self: &Arc<Self>, rev: i64) {
        let mut hub = self.lock();
        let before = hub.rev;
        hub.rev = hub.rev.max(rev);
        let all = hub.synced.drain();
        for mut w in all {
            w.next_rev = w.next_rev.max(before + 1);
            if w.next_rev <= hub.rev {
                self.start_catch_up(&mut hub, w);
            } else {
                let key = hub.next_key;
                hub.next_key += 1;
                hub.synced.insert(key, w);
            }
        }
    }

    fn responses(
        &self,
        watch_id: i64,
        spec: &Spec,
        header: ResponseHeader,
        events: Vec<Event>,
    ) -> Vec<WatchResponse> {
        let whole = WatchResponse {
            header: Some(header),
            watch_id,
            events,
            ..Default::default()
        };
        if !spec.fragment || whole.encoded_len() <= self.max_bytes {
            return vec![whole];
        }
        // Split at event boundaries; all but the last response say `fragment`.
        let out = fragments(whole.events, self.max_bytes);
        let last = out.len().saturating_sub(1);
        out.into_iter()
            .enumerate()
            .map(|(i, events)| WatchResponse {
                header: whole.header,
                watch_id,
                fragment: i < last,
                events,
                ..Default::default()
            })
            .collect()
    }

    fn start_catch_up(self: &Arc<Self>, hub: &mut Hub, w: Watcher) {
        *hub.catching_up.entry(w.stream).or_default() += 1;
        let me = self.clone();
        self.runtime.spawn(async move { me.catch_up(w).await });
    }

    /// Reads history from the store until the watcher reaches the hub's revision.
    async fn catch_up(self: Arc<Self>, mut w: Watcher) {
        loop {
            if w.cancelled.load(Ordering::SeqCst) {
                self.done_catching_up(w.stream);
                return;
            }
            let target = {
                let mut hub = self.lock();
                if w.next_rev > hub.rev {
                    let stream = w.stream;
                    let key = hub.next_key;
                    hub.next_key += 1;
                    hub.synced.insert(key, w);
                    drop(hub);
                    self.done_catching_up(stream);
                    return;
                }
                hub.rev
            };
            let store = (self.store)();
            let spec = w.spec.clone();
            let from = w.next_rev;
            let read = tokio::task::spawn_blocking(move || {
                let r = store.history(&spec.key, &spec.range_end, from, target, CATCH_UP_EVENTS);
                r.map(|(evs, covered)| {
                    let evs: Vec<Event> = evs.into_iter().filter(|e| spec.wants(e)).collect();
                    (
                        with_prev(Some(&store), &spec, evs),
                        covered,
                        store.compact_rev(),
                    )
                })
                .map_err(|e| (e, store.compact_rev()))
            })
            .await;
            let (events, covered) = match read {
                Ok(Ok((events, covered, _))) => (events, covered),
                Ok(Err((KvError::Compacted, compact_rev))) => {
                    // etcd's compaction notice carries no revision (0 in the header).
                    let resp = WatchResponse {
                        header: Some((self.header)(0)),
                        watch_id: w.watch_id,
                        canceled: true,
                        compact_revision: compact_rev,
                        ..Default::default()
                    };
                    let _ = w.tx.send(Ok(resp.into())).await;
                    self.lock().cancel_flags.remove(&(w.stream, w.watch_id));
                    self.done_catching_up(w.stream);
                    return;
                }
                Ok(Err((e, _))) => {
                    let err = crate::status::kv_status(e);
                    let _ = w.tx.send(Err(err)).await;
                    self.done_catching_up(w.stream);
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "watch catch-up task failed");
                    self.done_catching_up(w.stream);
                    return;
                }
            };
            if !events.is_empty() {
                crate::stats::add(crate::stats::Counter::EventsSent, events.len() as u64);
                // As etcd's sync of unsynced watchers: the store's revision when read, not the
                // last event's.
                for r in self.responses(w.watch_id, &w.spec, (self.header)(target), events) {
                    if w.tx.send(Ok(r.into())).await.is_err() {
                        self.done_catching_up(w.stream);
                        return;
                    }
                }
            }
            w.next_rev = covered + 1;
        }
    }

    fn done_catching_up(self: &Arc<Self>, stream: u64) {
        let mut hub = self.lock();
        let left = match hub.catching_up.get_mut(&stream) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            hub.catching_up.remove(&stream);
            if let Some(tx) = hub.deferred_progress.remove(&stream) {
                let resp = self.progress(hub.rev, -1);
                self.deliver(&mut hub, stream, tx, resp);
            }
        }
    }
}

fn with_prev(store: Option<&Mvcc>, spec: &Spec, mut events: Vec<Event>) -> Vec<Event> {
    if let (true, Some(store)) = (spec.prev_kv, store) {
        for e in &mut events {
            if let Some(kv) = &e.kv {
                e.prev_kv = store.prev_kv(&kv.key, kv.mod_revision);
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::ReceiverStream;
    use ballast_api::ballast::internal::{raft_request, RaftRequest};
    use ballast_api::etcdserverpb::{PutRequest, WatchCreateRequest};
    use ballast_state::mvcc::mod_rev;
    use std::task::{Context, Poll, Waker};
    use tokio_stream::{Stream, StreamExt};

    fn channel(n: usize) -> (Sender, ReceiverStream) {
        let (tx, rx) = crate::outbox::channel(n);
        (tx, ReceiverStream::new(rx))
    }

    /// What is queued now, without waiting.
    fn try_next(rx: &mut ReceiverStream) -> Option<Result<Frame, tonic::Status>> {
        let mut cx = Context::from_waker(Waker::noop());
        match std::pin::Pin::new(rx).poll_next(&mut cx) {
            Poll::Ready(i) => i,
            Poll::Pending => None,
        }
    }

    fn put(index: u64, key: &str) -> (u64, Option<RaftRequest>) {
        let req = PutRequest {
            key: key.into(),
            value: format!("v{index}").into(),
            ..Default::default()
        };
        let r = RaftRequest {
            id: 0,
            request: Some(raft_request::Request::Put(req)),
            ..Default::default()
        };
        (index, Some(r))
    }

    fn hub(store: Arc<Mvcc>) -> Arc<WatchHub> {
        WatchHub::new(
            store.current_rev(),
            Box::new(|revision| ResponseHeader {
                revision,
                ..Default::default()
            }),
            Box::new(move || store.clone()),
            tokio::runtime::Handle::current(),
            1 << 20,
        )
    }

    async fn revisions(rx: &mut ReceiverStream, n: usize) -> Vec<i64> {
        let mut revs = Vec::new();
        while revs.len() < n {
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), rx.next())
                .await
                .expect("watch response in time")
                .expect("stream open")
                .expect("not an error")
                .into_response();
            revs.extend(r.events.iter().map(mod_rev));
            // A slow reader.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        revs
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn publishing_from_the_applier_thread_delivers_before_returning() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Mvcc::open(&d.path().join("db")).unwrap());
        let hub = hub(store.clone());
        // Below and above the hand-off to a worker: both deliver everything before returning.
        for watchers in [3, OFFLOAD_WATCHERS + 5] {
            let mut rxs = Vec::new();
            for id in 0..watchers {
                let (tx, rx) = channel(4);
                let spec = Spec::new(&WatchCreateRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                });
                hub.add(watchers as u64, id as i64, spec, 0, tx);
                rxs.push(rx);
            }
            let rev = store.current_rev() + 1;
            let b = store.apply_batch(&[put(rev as u64, "k")], false).unwrap();
            let h = hub.clone();
            tokio::task::spawn_blocking(move || h.publish_from_thread(b.events, b.rev))
                .await
                .unwrap();
            for rx in &mut rxs {
                let r = try_next(rx).expect("sent before publish returned");
                let revs: Vec<i64> = r
                    .unwrap()
                    .into_response()
                    .events
                    .iter()
                    .map(mod_rev)
                    .collect();
                assert_eq!(revs, vec![rev]);
            }
            hub.close_stream(watchers as u64);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_that_falls_behind_catches_up_without_gaps_or_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Mvcc::open(&d.path().join("db")).unwrap());
        let hub = hub(store.clone());
        // Room for two responses only: the third publish finds it full.
        let (tx, mut rx) = channel(2);
        let spec = Spec::new(&WatchCreateRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..Default::default()
        });
        hub.add(1, 0, spec, 0, tx);
        for i in 1..=300u64 {
            let b = store
                .apply_batch(&[put(i, &format!("k{}", i % 7))], false)
                .unwrap();
            hub.publish(&b.events, b.rev);
        }
        let revs = revisions(&mut rx, 300).await;
        assert_eq!(revs, (2..=301).collect::<Vec<i64>>());
        // Back in sync: new writes arrive through the fast path.
        for i in 301..=305u64 {
            let b = store.apply_batch(&[put(i, "k1")], false).unwrap();
            hub.publish(&b.events, b.rev);
        }
        assert_eq!(
            revisions(&mut rx, 5).await,
            (302..=306).collect::<Vec<i64>>()
        );
        assert!(hub.lock().catching_up.is_empty());
    }

    /// A watcher whose stream is briefly full gets what it missed from memory, in order, not
    /// from the store: here the history is compacted away before it reads, and a catch-up
    /// would end in a compaction notice. Past `WATCH_PENDING_BYTES` it reads history instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_briefly_full_stream_gets_its_events_from_memory_and_a_long_full_one_from_history() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Mvcc::open(&d.path().join("db")).unwrap());
        let hub = hub(store.clone());
        let spec = || {
            Spec::new(&WatchCreateRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                ..Default::default()
            })
        };
        let (tx, mut rx) = channel(2);
        hub.add(1, 0, spec(), 0, tx);
        let index = std::cell::Cell::new(0u64);
        let next = || {
            index.set(index.get() + 1);
            index.get()
        };
        let put_all = |n: usize, value: usize| {
            for _ in 0..n {
                let index = next();
                let p = PutRequest {
                    key: format!("k{}", index % 7).into_bytes(),
                    value: vec![b'v'; value],
                    ..Default::default()
                };
                let r = RaftRequest {
                    request: Some(raft_request::Request::Put(p)),
                    ..Default::default()
                };
                let b = store.apply_batch(&[(index, Some(r))], false).unwrap();
                hub.publish(&b.events, b.rev);
            }
        };
        put_all(50, 10);
        assert_eq!(hub.lock().waiting.len(), 1);
        assert!(hub.lock().catching_up.contains_key(&1));
        let compact = |rev: i64| {
            let r = RaftRequest {
                request: Some(raft_request::Request::Compaction(
                    ballast_api::etcdserverpb::CompactionRequest {
                        revision: rev,
                        physical: true,
                    },
                )),
                ..Default::default()
            };
            (next(), Some(r))
        };
        store
            .apply_batch(&[compact(store.current_rev())], false)
            .unwrap();
        assert_eq!(revisions(&mut rx, 50).await, (2..=51).collect::<Vec<i64>>());
        // Back in sync, nothing left waiting.
        put_all(1, 10);
        assert_eq!(revisions(&mut rx, 1).await, vec![52]);
        assert!(hub.lock().waiting.is_empty() && hub.lock().catching_up.is_empty());
        assert_eq!(hub.lock().pending_bytes, 0);

        // A stream that stays full past the bound: history serves the rest, without gaps.
        let (tx, mut rx) = channel(2);
        hub.add(2, 0, spec(), 0, tx);
        let each = 64 << 10;
        let n = WATCH_PENDING_BYTES / each + 10;
        put_all(n, each);
        assert!(hub.lock().waiting.values().all(|v| v.overflowed));
        let first = 53;
        assert_eq!(
            revisions(&mut rx, n).await,
            (first..first + n as i64).collect::<Vec<i64>>()
        );
        // The first watcher, never read again, still waits; the second is synced.
        assert!(hub.lock().waiting.values().all(|v| v.w.stream == 1));
        hub.close_stream(1);
        assert_eq!(hub.lock().pending_bytes, 0);
        assert!(hub.lock().synced.all.values().any(|w| w.stream == 2));
    }

    /// Batches visit only the watchers of their keys and the ranged ones; a watcher left
    /// untouched by many batches, then found full, resumes exactly where it stood; cancelled
    /// and closed watchers leave every index.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_are_found_by_key_and_range_and_untouched_ones_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Mvcc::open(&d.path().join("db")).unwrap());
        let hub = hub(store.clone());
        let watch = |key: &str, end: &str| {
            Spec::new(&WatchCreateRequest {
                key: key.as_bytes().to_vec(),
                range_end: end.as_bytes().to_vec(),
                ..Default::default()
            })
        };
        let (tx_a, mut rx_a) = channel(64);
        let (tx_x, mut rx_x) = channel(1);
        let (tx_p, mut rx_p) = channel(256);
        let (tx_gone, _rx_gone) = channel(64);
        hub.add(1, 0, watch("a", ""), 0, tx_a);
        hub.add(2, 0, watch("x", ""), 0, tx_x);
        hub.add(3, 0, watch("a", "c"), 0, tx_p.clone());
        hub.add(3, 1, watch("b", ""), 0, tx_p);
        hub.add(4, 0, watch("b", ""), 0, tx_gone.clone());
        hub.add(4, 1, watch("a", "z"), 0, tx_gone);
        assert!(hub.cancel(3, 1));
        hub.close_stream(4);
        {
            let h = hub.lock();
            assert_eq!(h.synced.len(), 3);
            assert_eq!(h.synced.candidates(&[]).len(), 1, "one ranged watcher left");
            assert!(!h.synced.by_key.contains_key(b"b".as_slice()));
            assert!(!h.synced.by_stream.contains_key(&4));
        }
        let mut index = 0u64;
        let mut write = |key: &str| {
            index += 1;
            let b = store.apply_batch(&[put(index, key)], false).unwrap();
            hub.publish(&b.events, b.rev);
            b.rev
        };
        let mut want_a = Vec::new();
        let mut want_p = Vec::new();
        for i in 0..60 {
            let key = ["a", "b", "d"][i % 3];
            let rev = write(key);
            if key == "a" {
                want_a.push(rev);
            }
            if key != "d" {
                want_p.push(rev);
            }
        }
        // "x" was in none of those batches; now three for it, and its stream holds one.
        let want_x: Vec<i64> = (0..3).map(|_| write("x")).collect();
        assert_eq!(revisions(&mut rx_a, want_a.len()).await, want_a);
        assert_eq!(revisions(&mut rx_p, want_p.len()).await, want_p);
        assert_eq!(revisions(&mut rx_x, 3).await, want_x);
        let more = write("x");
        assert_eq!(revisions(&mut rx_x, 1).await, vec![more]);
        assert!(try_next(&mut rx_x).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_watch_progress_waits_for_catch_up() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Mvcc::open(&d.path().join("db")).unwrap());
        for i in 1..=50u64 {
            store.apply_batch(&[put(i, "k")], false).unwrap();
        }
        let hub = hub(store.clone());
        let (tx, mut rx) = channel(1);
        let spec = Spec::new(&WatchCreateRequest {
            key: b"k".to_vec(),
            ..Default::default()
        });
        hub.add(7, 0, spec, 2, tx.clone());
        hub.request_progress(7, &tx);
        let mut revs = Vec::new();
        loop {
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), rx.next())
                .await
                .expect("progress answered in time")
                .unwrap()
                .unwrap()
                .into_response();
            if r.watch_id == -1 {
                // The progress answer names the store revision, after every event before it.
                assert_eq!(r.header.unwrap().revision, 51);
                break;
            }
            revs.extend(r.events.iter().map(mod_rev));
        }
        assert_eq!(revs, (2..=51).collect::<Vec<i64>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn progress_owed_to_a_full_stream_waits_in_one_slot_and_the_newest_wins() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Mvcc::open(&d.path().join("db")).unwrap());
        let hub = hub(store.clone());
        let (tx, mut rx) = channel(1);
        tx.try_send(Ok(WatchResponse::default().into())).unwrap();
        for rev in 1..=100 {
            hub.publish(&[], rev);
            hub.request_progress(3, &tx);
        }
        // One slot, one task, however many answers were owed.
        assert_eq!(hub.lock().owed_progress.len(), 1);
        let mut progress = Vec::new();
        while progress.last() != Some(&100) {
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), rx.next())
                .await
                .expect("owed progress sent once there is room")
                .unwrap()
                .unwrap()
                .into_response();
            if r.watch_id == -1 {
                progress.push(r.header.map(|h| h.revision).unwrap_or(0));
            }
        }
        assert!(progress.len() <= 2, "{progress:?}");
        // The task clears the slot right after its last send.
        for _ in 0..500 {
            if hub.lock().owed_progress.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(hub.lock().owed_progress.is_empty());
    }

    #[test]
    fn a_shared_frame_encodes_as_the_whole_response() {
        let r = WatchResponse {
            header: Some(ResponseHeader {
                revision: 9,
                raft_term: 2,
                ..Default::default()
            }),
            events: vec![Event {
                kv: Some(ballast_api::mvccpb::KeyValue {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    mod_revision: 9,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let body = Bytes::from(r.encode_to_vec());
        for watch_id in [0, 7, i64::MAX] {
            let f = Frame::Shared {
                watch_id,
                body: body.clone(),
            };
            let bytes = f.encode_to_vec();
            assert_eq!(bytes.len(), f.encoded_len());
            let want = WatchResponse {
                watch_id,
                ..r.clone()
            };
            assert_eq!(WatchResponse::decode(bytes.as_slice()).unwrap(), want);
            assert_eq!(f.into_response(), want);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_of_a_whole_batch_share_one_encoding() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Mvcc::open(&d.path().join("db")).unwrap());
        store.apply_batch(&[put(1, "k")], false).unwrap();
        let hub = hub(store.clone());
        let spec = |prev_kv| {
            let mut s = Spec::new(&WatchCreateRequest {
                key: b"k".to_vec(),
                ..Default::default()
            });
            s.prev_kv = prev_kv;
            s
        };
        let mut rxs = Vec::new();
        for (id, prev) in [(1, false), (2, false), (3, true)] {
            let (tx, rx) = channel(4);
            hub.add(id as u64, id, spec(prev), 0, tx);
            rxs.push(rx);
        }
        let b = store.apply_batch(&[put(2, "k")], false).unwrap();
        hub.publish(&b.events, b.rev);
        let mut bodies = Vec::new();
        for (i, rx) in rxs.iter_mut().enumerate() {
            let f = rx.next().await.unwrap().unwrap();
            let Frame::Shared { watch_id, body } = &f else {
                panic!("watcher {i} got its own encoding");
            };
            assert_eq!(*watch_id, i as i64 + 1);
            bodies.push(body.clone());
            let r = f.into_response();
            assert_eq!(r.events.len(), 1);
            assert_eq!(
                r.events[0].prev_kv.is_some(),
                i == 2,
                "prev_kv only when asked"
            );
        }
        // The same bytes, not copies, for the two alike.
        assert_eq!(bodies[0].as_ptr(), bodies[1].as_ptr());
        assert_ne!(bodies[0], bodies[2]);
    }
}
