//! The benchmarks, as etcd's `benchmark` tool defines them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::kv_client::KvClient;
use ballast_api::etcdserverpb::lease_client::LeaseClient;
use ballast_api::etcdserverpb::request_op::Request as OpRequest;
use ballast_api::etcdserverpb::watch_client::WatchClient;
use ballast_api::etcdserverpb::watch_request::RequestUnion;
use ballast_api::etcdserverpb::{
    compare, Compare, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use ballast_api::v3lockpb::lock_client::LockClient;
use ballast_api::v3lockpb::{LockRequest, UnlockRequest};
use prost::Message;
use rand::Rng;
use tokio::sync::mpsc;

use crate::conn::Conn;
use crate::load::{self, Global, Progress};
use crate::rawwatch::{self, WatchConn};
use crate::report::Stats;

fn status_text(s: tonic::Status) -> String {
    s.message().to_string()
}

/// One KV request of a closed-loop benchmark.
enum KvOp {
    Put(PutRequest),
    Range(RangeRequest),
    Txn(TxnRequest),
}

/// Sends `op` on `ch`; only success or the error's text matters to the report.
async fn send(ch: Conn, op: KvOp) -> Result<(), String> {
    let mut kv = KvClient::new(ch);
    let res = match op {
        KvOp::Put(r) => kv.put(r).await.map(|_| ()),
        KvOp::Range(r) => kv.range(r).await.map(|_| ()),
        KvOp::Txn(r) => kv.txn(r).await.map(|_| ()),
    };
    res.map_err(status_text)
}

/// One put on `ch`, for workloads built elsewhere (the scale suite).
pub(crate) async fn put_once(ch: Conn, req: PutRequest) -> Result<(), String> {
    send(ch, KvOp::Put(req)).await
}

/// etcd's key scheme: the key number as a varint, zero-padded to `size` bytes.
pub fn key(n: u64, size: usize) -> Vec<u8> {
    let mut k = vec![0u8; size.max(1)];
    // Go's binary.PutVarint: zig-zag, then 7 bits per byte.
    let mut v = (n as i64 as u64) << 1;
    let mut i = 0;
    while v >= 0x80 && i < k.len() {
        k[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    if i < k.len() {
        k[i] = v as u8;
    }
    k
}

fn key_number(i: usize, space: usize, sequential: bool) -> u64 {
    let space = space.max(1);
    if sequential {
        (i % space) as u64
    } else {
        rand::thread_rng().gen_range(0..space) as u64
    }
}

#[derive(Clone, Debug)]
pub struct PutArgs {
    pub total: usize,
    pub rate: u64,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space_size: usize,
    pub sequential_keys: bool,
}

pub async fn put(g: &Global, a: &PutArgs) -> Result<Stats, String> {
    let chans = load::connect(g).await?;
    let value = Arc::new(load::rand_bytes(a.val_size));
    let a2 = a.clone();
    Ok(load::run(g, &chans, a.total, a.rate, move |ch, i| {
        let req = PutRequest {
            key: key(
                key_number(i, a2.key_space_size, a2.sequential_keys),
                a2.key_size,
            ),
            value: value.to_vec(),
            ..Default::default()
        };
        send(ch, KvOp::Put(req))
    })
    .await)
}

#[derive(Clone, Debug)]
pub struct RangeArgs {
    pub key: Vec<u8>,
    pub end: Vec<u8>,
    pub total: usize,
    pub rate: u64,
    /// `l` (linearizable) or `s` (serializable).
    pub consistency: String,
    pub limit: i64,
    pub count_only: bool,
}

pub async fn range(g: &Global, a: &RangeArgs) -> Result<Stats, String> {
    let serializable = match a.consistency.as_str() {
        "l" => false,
        "s" => true,
        other => return Err(format!("unknown consistency flag {other:?}")),
    };
    let chans = load::connect(g).await?;
    let req = RangeRequest {
        key: a.key.clone(),
        range_end: a.end.clone(),
        serializable,
        limit: a.limit,
        count_only: a.count_only,
        ..Default::default()
    };
    Ok(load::run(g, &chans, a.total, a.rate, move |ch, _| {
        send(ch, KvOp::Range(req.clone()))
    })
    .await)
}

#[derive(Clone, Debug)]
pub struct TxnPutArgs {
    pub put: PutArgs,
    pub txn_ops: usize,
}

pub async fn txn_put(g: &Global, a: &TxnPutArgs) -> Result<Stats, String> {
    let chans = load::connect(g).await?;
    let value = Arc::new(load::rand_bytes(a.put.val_size));
    let a2 = a.clone();
    Ok(load::run(g, &chans, a.put.total, a.put.rate, move |ch, i| {
        let success = (0..a2.txn_ops.max(1))
            .map(|j| RequestOp {
                request: Some(OpRequest::RequestPut(PutRequest {
                    key: key(
                        key_number(i * a2.txn_ops.max(1) + j, a2.put.key_space_size, true),
                        a2.put.key_size,
                    ),
                    value: value.to_vec(),
                    ..Default::default()
                })),
            })
            .collect();
        let req = TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        };
        send(ch, KvOp::Txn(req))
    })
    .await)
}

#[derive(Clone, Debug)]
pub struct WatchLatencyArgs {
    pub total: usize,
    pub put_rate: u64,
    pub key_size: usize,
    pub val_size: usize,
}

/// One watcher per client on one key; each put's latency is measured per watcher from the
/// put's acknowledgement to the event's arrival, as etcd's `watch-latency` does.
pub async fn watch_latency(g: &Global, a: &WatchLatencyArgs) -> Result<Stats, String> {
    let k = load::rand_bytes(a.key_size);
    let v = load::rand_bytes(a.val_size);
    let watchers = g.clients.max(1);
    let conns = g.conns.max(1).min(watchers);
    // One task per connection reads all of its watchers' streams straight from the socket
    // (see `rawwatch`): the client's CPU per event is what the servers under test compete
    // with on a shared machine. Each batch of events is stamped as its read returns, and only
    // the last arrival of a put wakes the put loop.
    let arrived = Arc::new(Arrivals::default());
    // A watch channel, not a Notify: a task busy with an event when the run ends still sees it.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let create = create_watch(k.clone(), 0).encode_to_vec();
    let open_timeout = g.dial_timeout.max(Duration::from_secs(30));
    let mut tasks = Vec::with_capacity(conns);
    for c in 0..conns {
        let n = watchers / conns + usize::from(c < watchers % conns);
        let url = load::url(&g.endpoints[c % g.endpoints.len()]);
        let conn = WatchConn::open(
            rawwatch::authority(&url)?,
            "/etcdserverpb.Watch/Watch",
            &create,
            n,
            open_timeout,
        )
        .await?;
        let arrived = arrived.clone();
        let stopped = stopped.clone();
        let total = a.total;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(n * total);
            // A connection that fails ends its watchers; the others keep going, and what they
            // miss is counted.
            let _ = conn
                .run(stopped, |msg, now| {
                    for e in EventRevisions::decode(msg).unwrap_or_default().events {
                        seen.push((e.kv.map_or(0, |kv| kv.mod_revision), now));
                        arrived.one();
                    }
                })
                .await;
            seen
        }));
    }
    let put_conn = load::connect(&Global {
        conns: 1,
        ..g.clone()
    })
    .await?;
    let mut kv = KvClient::new(put_conn[0].clone());
    let progress = Progress::start(a.total, g.progress);
    let start = Instant::now();
    let mut stats = Stats::default();
    let mut sent = std::collections::HashMap::with_capacity(a.total);
    // As etcd's tool measures it: from the put's reply until each watcher has the event (an
    // event that came first counts as 0), and the next put only once every watcher has it.
    for i in 0..a.total {
        if a.put_rate > 0 {
            let at = start + Duration::from_secs_f64(i as f64 / a.put_rate as f64);
            tokio::time::sleep_until(at.into()).await;
        }
        let req = PutRequest {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        };
        match kv.put(req).await {
            Ok(r) => {
                let rev = r.into_inner().header.map_or(0, |h| h.revision);
                sent.insert(rev, Instant::now());
            }
            Err(e) => {
                return Err(format!(
                    "Failed to Put for watch latency benchmark: {}",
                    e.message()
                ))
            }
        }
        let deadline = tokio::time::Instant::now() + EVENT_WAIT;
        if !arrived.wait_for(watchers * (i + 1), deadline).await {
            // Late events still count below; a stall must not pass unseen.
            let e = format!("watch events still missing {EVENT_WAIT:?} after the put");
            *stats.errors.entry(e).or_default() += 1;
        }
        progress.add(1);
    }
    let elapsed = start.elapsed();
    let _ = stop.send(true);
    for task in tasks {
        for (rev, at) in task.await.unwrap_or_default() {
            if let Some(st) = sent.get(&rev) {
                stats
                    .lats
                    .push(at.saturating_duration_since(*st).as_secs_f64());
            }
        }
    }
    let missing = (watchers * a.total).saturating_sub(stats.lats.len());
    if missing > 0 {
        stats
            .errors
            .insert("watch event not received".into(), missing);
    }
    progress.finish(a.total, elapsed);
    Ok(stats.finish(elapsed))
}

/// How long watch-latency waits for a put's events before it puts again.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Events received by all watchers together, and a wake-up for the put loop.
///
/// Sequentially consistent on purpose: the put loop stores the target and then reads the
/// count, an arrival adds to the count and then reads the target. With acquire/release alone
/// both may read the other's old value (a store may pass a later load), so the last event of
/// a put went unnoticed and the loop slept to its 10 s deadline: a stall of one run in a few
/// once the client read its events fast enough to race the put's reply.
#[derive(Default)]
struct Arrivals {
    count: std::sync::atomic::AtomicUsize,
    target: std::sync::atomic::AtomicUsize,
    notify: tokio::sync::Notify,
}

impl Arrivals {
    fn one(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.count.fetch_add(1, SeqCst) + 1;
        if n == self.target.load(SeqCst) {
            self.notify.notify_one();
        }
    }

    /// Until `n` events have arrived, or the deadline. Returns whether they did.
    async fn wait_for(&self, n: usize, deadline: tokio::time::Instant) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.target.store(n, SeqCst);
        while self.count.load(SeqCst) < n {
            if tokio::time::timeout_at(deadline, self.notify.notified())
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }
}

/// Each client keeps one lease alive over its own stream, one keep-alive per request.
pub async fn lease_keepalive(g: &Global, total: usize) -> Result<Stats, String> {
    let chans = load::connect(g).await?;
    let clients = g.clients.max(1);
    let progress = Progress::start(total, g.progress);
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for c in 0..clients {
        let ch = chans[c % chans.len()].clone();
        let next = next.clone();
        let done = progress.handle();
        workers.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut lc = LeaseClient::new(ch);
            let id = match lc.lease_grant(LeaseGrantRequest { ttl: 100, id: 0 }).await {
                Ok(r) => r.into_inner().id,
                Err(e) => {
                    stats.errors.insert(status_text(e), 1);
                    return stats;
                }
            };
            let (tx, rx) = mpsc::channel(1);
            // gRPC servers in Go send response headers with the first response, so the call
            // only completes once a request is on its way.
            let mut first = Some(Instant::now());
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                return stats;
            }
            let mut stream = match lc
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    stats.errors.insert(status_text(e), 1);
                    return stats;
                }
            };
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let (t, sent) = match first.take() {
                    Some(t) => (t, true),
                    None => (
                        Instant::now(),
                        tx.send(LeaseKeepAliveRequest { id }).await.is_ok(),
                    ),
                };
                let ok = sent && matches!(stream.message().await, Ok(Some(_)));
                if ok {
                    stats.lats.push(t.elapsed().as_secs_f64());
                } else {
                    *stats.errors.entry("keep-alive failed".into()).or_default() += 1;
                }
                done.add(1);
            }
            stats
        }));
    }
    Ok(load::gather(workers, progress, total, start).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_go_varints_padded_to_size() {
        assert_eq!(key(0, 8), vec![0; 8]);
        assert_eq!(key(1, 4), vec![2, 0, 0, 0]);
        assert_eq!(key(64, 4), vec![0x80, 0x01, 0, 0]);
        assert_eq!(key(300, 3), vec![0xd8, 0x04, 0]);
    }

    /// Arrivals racing the put loop's target, as events race a put's reply: every wait ends
    /// by its events, never by its deadline.
    #[test]
    fn arrivals_never_miss_the_last_event_of_a_put() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let arrived = Arc::new(Arrivals::default());
            let (go, mut went) = tokio::sync::watch::channel(0usize);
            let a = arrived.clone();
            let events = tokio::spawn(async move {
                while went.changed().await.is_ok() {
                    a.one();
                }
            });
            for i in 1..=20_000 {
                go.send(i).unwrap();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                assert!(arrived.wait_for(i, deadline).await, "event {i} not seen");
            }
            drop(go);
            events.await.unwrap();
        });
    }

    #[test]
    fn event_revisions_read_a_full_watch_response() {
        use ballast_api::etcdserverpb::ResponseHeader;
        use ballast_api::mvccpb::{Event, KeyValue};
        let ev = |rev| Event {
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                mod_revision: rev,
                create_revision: 2,
                version: 9,
                value: vec![7; 40],
                ..Default::default()
            }),
            ..Default::default()
        };
        let full = WatchResponse {
            header: Some(ResponseHeader {
                revision: 12,
                ..Default::default()
            }),
            watch_id: 3,
            events: vec![ev(10), ev(12)],
            ..Default::default()
        };
        let lite = EventRevisions::decode(full.encode_to_vec().as_slice()).unwrap();
        let revs: Vec<i64> = lite
            .events
            .iter()
            .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
            .collect();
        assert_eq!(revs, vec![10, 12]);
    }
}

#[derive(Clone, Debug)]
pub struct TxnMixedArgs {
    pub total: usize,
    pub rate: u64,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space_size: usize,
    pub limit: i64,
    pub consistency: String,
    pub rw_ratio: f64,
}

/// Reads (a ranged get over every key, limited) and writes (a put) inside txns, mixed by
/// `rw_ratio`, each kind with its own figures: (reads, writes).
pub async fn txn_mixed(g: &Global, a: &TxnMixedArgs) -> Result<(Stats, Stats), String> {
    let serializable = match a.consistency.as_str() {
        "l" => false,
        "s" => true,
        other => return Err(format!("unknown consistency flag {other:?}")),
    };
    let chans = load::connect(g).await?;
    let value = Arc::new(load::rand_bytes(a.val_size));
    let a2 = a.clone();
    let mut kinds = load::run_kinds(g, &chans, a.total, a.rate, 2, move |ch, i| {
        let read = rand::thread_rng().gen_bool(a2.rw_ratio / (1.0 + a2.rw_ratio));
        let op = if read {
            // etcd's tool asks for the prefix of "" (every key), limited; its --end-key is
            // overridden by that prefix, so it changes nothing here either. Its client spells
            // that prefix as key "\0", end "\0": an empty key is refused by the server.
            OpRequest::RequestRange(RangeRequest {
                key: vec![0],
                range_end: vec![0],
                limit: a2.limit,
                serializable,
                ..Default::default()
            })
        } else {
            OpRequest::RequestPut(PutRequest {
                key: key(key_number(i, a2.key_space_size, true), a2.key_size),
                value: value.to_vec(),
                ..Default::default()
            })
        };
        let req = TxnRequest {
            compare: vec![],
            success: vec![RequestOp { request: Some(op) }],
            failure: vec![],
        };
        async move { (usize::from(!read), send(ch, KvOp::Txn(req)).await) }
    })
    .await;
    let writes = kinds.pop().unwrap_or_default();
    let reads = kinds.pop().unwrap_or_default();
    Ok((reads, writes))
}

#[derive(Clone, Debug)]
pub struct WatchGetArgs {
    pub watchers: usize,
    pub streams: usize,
    pub events: usize,
}

/// Serializable gets while many watchers replay history (unsynced), as etcd's `watch-get`:
/// the figures are the gets'.
pub async fn watch_get(g: &Global, a: &WatchGetArgs) -> Result<Stats, String> {
    let chans = load::connect(g).await?;
    let mut kv = KvClient::new(chans[0].clone());
    let mut watch_rev = 0;
    for i in 0..a.events {
        let r = kv
            .put(PutRequest {
                key: b"watchkey".to_vec(),
                value: i.to_string().into_bytes(),
                ..Default::default()
            })
            .await
            .map_err(status_text)?
            .into_inner();
        if i == 0 {
            watch_rev = r.header.map(|h| h.revision).unwrap_or(0);
        }
    }
    let total_events = a.watchers * a.events;
    let progress = Progress::start(total_events, g.progress);
    let streams = a.streams.max(1);
    let mut tasks = Vec::new();
    for s in 0..streams {
        // Watchers are spread over the streams round-robin.
        let n = (a.watchers + streams - 1 - s) / streams;
        let creates = (0..n)
            .map(|_| create_watch(b"watchkey".to_vec(), watch_rev))
            .collect();
        let (tx, mut stream) = open_watch(chans[s % chans.len()].clone(), creates).await?;
        let want = n * a.events;
        let done = progress.handle();
        tasks.push(tokio::spawn(async move {
            let _keep_open = tx;
            let mut seen = 0;
            while seen < want {
                match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                    Ok(Ok(Some(r))) => {
                        seen += r.events.len();
                        done.add(r.events.len());
                    }
                    _ => break,
                }
            }
        }));
    }
    let getter = KvClient::new(chans[0].clone());
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = watching.clone();
    let gets = tokio::spawn(async move {
        let mut kv = getter;
        let mut stats = Stats::default();
        while flag.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            let req = RangeRequest {
                key: b"abc".to_vec(),
                serializable: true,
                ..Default::default()
            };
            match kv.range(req).await {
                Ok(_) => stats.lats.push(t.elapsed().as_secs_f64()),
                Err(e) => *stats.errors.entry(status_text(e)).or_default() += 1,
            }
        }
        stats
    });
    let start = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let stats = gets.await.map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    progress.finish(total_events, elapsed);
    Ok(stats.finish(elapsed))
}

#[derive(Clone, Debug)]
pub struct WatchArgs {
    pub streams: usize,
    pub watch_per_stream: usize,
    pub watched_key_total: usize,
    pub put_rate: u64,
    pub put_total: usize,
    pub key_size: usize,
    pub key_space_size: usize,
    pub sequential_keys: bool,
}

/// etcd's `watch`: creates `streams` × `watch_per_stream` watchers over `watched_key_total`
/// keys (figures: time to each created response), then puts to those keys and counts the
/// events delivered (figures: events per second). Returns (creation, events).
pub async fn watch(g: &Global, a: &WatchArgs) -> Result<(Stats, Stats), String> {
    let chans = load::connect(g).await?;
    let watched: Vec<Vec<u8>> = (0..a.watched_key_total.max(1))
        .map(|i| {
            key(
                key_number(i, a.key_space_size, a.sequential_keys),
                a.key_size,
            )
        })
        .collect();
    let mut watchers_on: std::collections::HashMap<Vec<u8>, usize> = Default::default();
    let total_watches = a.streams * a.watch_per_stream;
    let progress = Progress::start(total_watches, g.progress);
    let start = Instant::now();
    let mut creation = Stats::default();
    let mut receivers = Vec::new();
    for s in 0..a.streams {
        let first = watched[(s * a.watch_per_stream) % watched.len()].clone();
        let t = Instant::now();
        let ch = chans[s % chans.len()].clone();
        let (tx, mut stream) = open_watch(ch, vec![create_watch(first, 0)]).await?;
        for w in 0..a.watch_per_stream {
            let k = watched[(s * a.watch_per_stream + w) % watched.len()].clone();
            *watchers_on.entry(k.clone()).or_default() += 1;
            let t = if w == 0 {
                t
            } else {
                tx.send(create_watch(k, 0))
                    .await
                    .map_err(|e| e.to_string())?;
                Instant::now()
            };
            match stream.message().await {
                Ok(Some(r)) if r.created => creation.lats.push(t.elapsed().as_secs_f64()),
                Ok(_) => {
                    *creation
                        .errors
                        .entry("no created response".into())
                        .or_default() += 1
                }
                Err(e) => *creation.errors.entry(status_text(e)).or_default() += 1,
            }
            progress.add(1);
        }
        receivers.push((tx, stream));
    }
    progress.finish(total_watches, start.elapsed());
    let creation = creation.finish(start.elapsed());

    let events_total: usize = (0..a.put_total)
        .map(|i| {
            watchers_on
                .get(&watched[i % watched.len()])
                .copied()
                .unwrap_or(0)
        })
        .sum();
    let progress = Progress::start(events_total, g.progress);
    let remaining = Arc::new(std::sync::atomic::AtomicIsize::new(events_total as isize));
    let mut tasks = Vec::new();
    for (tx, mut stream) in receivers {
        let (remaining, done) = (remaining.clone(), progress.handle());
        tasks.push(tokio::spawn(async move {
            let _keep_open = tx;
            let mut stats = Stats::default();
            while remaining.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                    Ok(Ok(Some(r))) => {
                        let n = r.events.len();
                        // As etcd's tool: one result per event, counted on arrival.
                        stats.lats.extend(std::iter::repeat_n(0.0, n));
                        remaining.fetch_sub(n as isize, std::sync::atomic::Ordering::Relaxed);
                        done.add(n);
                    }
                    Ok(_) => break,
                    Err(_) => continue,
                }
            }
            stats
        }));
    }
    let start = Instant::now();
    let puts_g = Global {
        progress: false,
        ..g.clone()
    };
    let keys = Arc::new(watched);
    let puts = load::run(&puts_g, &chans, a.put_total, a.put_rate, move |ch, i| {
        let req = PutRequest {
            key: keys[i % keys.len()].clone(),
            value: b"data".to_vec(),
            ..Default::default()
        };
        send(ch, KvOp::Put(req))
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while remaining.load(std::sync::atomic::Ordering::Relaxed) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    remaining.store(0, std::sync::atomic::Ordering::Relaxed);
    let mut events = Stats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            events.merge(s);
        }
    }
    events.merge(Stats {
        errors: puts.errors,
        ..Stats::default()
    });
    let elapsed = start.elapsed();
    progress.finish(events_total, elapsed);
    Ok((creation, events.finish(elapsed)))
}

fn create_watch(key: Vec<u8>, start_revision: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            start_revision,
            ..Default::default()
        })),
    }
}

/// A watch stream and the request side that keeps it open.
type WatchStreamHandle = (mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>);

/// Of a watch response, only what watch-latency measures: each event's revision. Decoding
/// no more than that (the rest is skipped on the wire) keeps the tool's own CPU, which the
/// servers under test share the machine with, out of the latencies it reports.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EventRevisions {
    #[prost(message, repeated, tag = "11")]
    pub(crate) events: Vec<EventRevision>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EventRevision {
    #[prost(message, optional, tag = "2")]
    pub(crate) kv: Option<KvRevision>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct KvRevision {
    #[prost(int64, tag = "3")]
    pub(crate) mod_revision: i64,
}

/// Opens a watch stream on `ch` starting with `creates`. They are queued before the call:
/// Go servers send response headers only with the first response, so the call completes
/// only once a request is on its way.
async fn open_watch(ch: Conn, creates: Vec<WatchRequest>) -> Result<WatchStreamHandle, String> {
    let (tx, rx) = mpsc::channel(creates.len().max(16));
    for c in creates {
        tx.send(c).await.map_err(|e| e.to_string())?;
    }
    let stream = WatchClient::new(ch)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(status_text)?
        .into_inner();
    Ok((tx, stream))
}

#[derive(Clone, Debug)]
pub struct StmArgs {
    /// `c`, `r`, `s` or `ss`, as etcd's concurrency STM isolation levels.
    pub isolation: String,
    pub keys: usize,
    pub total: usize,
    pub keys_per_txn: usize,
    pub write_percent: usize,
    pub locker: String,
    pub val_size: usize,
    pub rate: u64,
}

/// One key's state as a transaction read it.
struct ReadKey {
    key: Vec<u8>,
    mod_rev: i64,
}

/// etcd's software transactional memory, as its `concurrency.STM`: read the keys (pinned at
/// the first read's revision for `s`/`ss`), then commit the writes in a txn that checks
/// nothing read (and, for `ss`, nothing written) changed since; retry until it commits.
async fn stm_once(
    kv: &mut KvClient<Conn>,
    keys: &[Vec<u8>],
    writes: usize,
    val_size: usize,
    isolation: &str,
) -> Result<(), String> {
    loop {
        let mut pinned = 0i64;
        let mut reads = Vec::with_capacity(keys.len());
        for k in keys {
            let pin = matches!(isolation, "s" | "ss") && pinned > 0;
            let r = kv
                .range(RangeRequest {
                    key: k.clone(),
                    revision: if pin { pinned } else { 0 },
                    ..Default::default()
                })
                .await
                .map_err(status_text)?
                .into_inner();
            if pinned == 0 {
                pinned = r.header.map(|h| h.revision).unwrap_or(0);
            }
            let mod_rev = r.kvs.first().map(|kv| kv.mod_revision).unwrap_or(0);
            reads.push(ReadKey {
                key: k.clone(),
                mod_rev,
            });
        }
        let mut compare = Vec::new();
        if isolation != "c" {
            for r in &reads {
                compare.push(Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: r.key.clone(),
                    target_union: Some(compare::TargetUnion::ModRevision(r.mod_rev)),
                    ..Default::default()
                });
            }
        }
        let written = &keys[..writes.min(keys.len())];
        if isolation == "ss" {
            for k in written {
                compare.push(Compare {
                    result: compare::CompareResult::Less as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: k.clone(),
                    target_union: Some(compare::TargetUnion::ModRevision(pinned + 1)),
                    ..Default::default()
                });
            }
        }
        let success = written
            .iter()
            .map(|k| RequestOp {
                request: Some(OpRequest::RequestPut(PutRequest {
                    key: k.clone(),
                    value: load::rand_bytes(val_size),
                    ..Default::default()
                })),
            })
            .collect();
        let r = kv
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await
            .map_err(status_text)?
            .into_inner();
        if r.succeeded {
            return Ok(());
        }
    }
}

pub async fn stm(g: &Global, a: &StmArgs) -> Result<Stats, String> {
    if !matches!(a.isolation.as_str(), "c" | "r" | "s" | "ss") {
        return Err(format!("unexpected isolation {:?}", a.isolation));
    }
    if a.keys == 0 {
        return Err(format!("expected positive --keys, got ({})", a.keys));
    }
    if a.write_percent > 100 {
        return Err(format!(
            "expected [0, 100] --txn-wr-percent, got ({})",
            a.write_percent
        ));
    }
    if a.keys_per_txn > a.keys {
        return Err(format!(
            "expected --keys-per-txn between 0 and {}, got ({})",
            a.keys, a.keys_per_txn
        ));
    }
    let lock_rpc = match a.locker.as_str() {
        "stm" => false,
        "lock-rpc" => true,
        other => return Err(format!("unexpected stm locker {other:?}")),
    };
    let chans = load::connect(g).await?;
    // lock-rpc: each transaction runs under the Lock service's lock, held by a lease. Each
    // client needs its own (as etcd's tool gives each its own session): the lock is
    // re-entrant per lease, so two clients sharing one would both hold it.
    let mut leases = Vec::new();
    if lock_rpc {
        for _ in 0..g.clients.max(1) {
            let id = LeaseClient::new(chans[0].clone())
                .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
                .await
                .map_err(status_text)?
                .into_inner()
                .id;
            leases.push(id);
        }
    }
    let leases = Arc::new(std::sync::Mutex::new(leases));
    let a2 = a.clone();
    Ok(load::run(g, &chans, a.total, a.rate, move |ch, _| {
        let a = a2.clone();
        let leases = leases.clone();
        async move {
            let mut set = std::collections::BTreeSet::new();
            while set.len() < a.keys_per_txn {
                set.insert(key(rand::thread_rng().gen_range(0..a.keys) as u64, 16));
            }
            let keys: Vec<Vec<u8>> = set.into_iter().collect();
            let writes = keys.len() * a.write_percent / 100;
            let mut kv = KvClient::new(ch.clone());
            if !lock_rpc {
                return stm_once(&mut kv, &keys, writes, a.val_size, &a.isolation).await;
            }
            // At most one request per client is in flight, so the pool never runs dry.
            let lease = leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .ok_or("no free lease")?;
            let mut lc = LockClient::new(ch);
            let locked = lc
                .lock(LockRequest {
                    name: b"stmlock".to_vec(),
                    lease,
                })
                .await
                .map_err(status_text);
            let res = match locked {
                Ok(held) => {
                    let res = stm_once(&mut kv, &keys, writes, a.val_size, &a.isolation).await;
                    let key = held.into_inner().key;
                    lc.unlock(UnlockRequest { key })
                        .await
                        .map_err(status_text)
                        .and(res)
                }
                Err(e) => Err(e),
            };
            leases.lock().unwrap_or_else(|p| p.into_inner()).push(lease);
            res
        }
    })
    .await)
}
