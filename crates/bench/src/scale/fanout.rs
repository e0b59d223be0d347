//! The scale suite's watch fan-out: many watchers over many connections while puts run at a
//! fixed rate, as Kubernetes watches: most on one object's key, one in a hundred on the
//! whole prefix (an informer), one in three with `prev_kv`; then the same with a few
//! deliberately slow consumers, watchers whose connections are never read. Measured: event
//! latency of the healthy watchers (from each put's reply to each watcher's event, as
//! etcd's `watch-latency` measures it), put throughput with and without the slow consumers,
//! and the member's memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::kv_client::KvClient;
use ballast_api::etcdserverpb::watch_request::RequestUnion;
use ballast_api::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use prost::Message;

use crate::rawwatch::{self, WatchConn};
use crate::report::Stats;
use crate::snapshot::{vm_rss, RssPeak};
use crate::workloads::EventRevisions;

use super::conn;
use super::node::Node;

pub(crate) struct FanoutPlan {
    /// Connections of healthy watchers, and watchers on each.
    pub(crate) conns: usize,
    pub(crate) per_conn: usize,
    /// Keys the exact watchers and the puts spread over.
    pub(crate) keys: usize,
    /// Puts per second, and how long they run in each phase.
    pub(crate) rate: u64,
    pub(crate) window: Duration,
    /// Slow consumers: a connection each, one prefix watcher with `prev_kv`, never read.
    pub(crate) slow: usize,
    /// Value size of the puts (large enough that slow consumers fill their sockets).
    pub(crate) value: usize,
    /// How long the throughput measurement's `burst_clients` clients put.
    pub(crate) burst: Duration,
    pub(crate) burst_clients: usize,
}

impl FanoutPlan {
    pub(crate) fn watchers(&self) -> usize {
        self.conns * self.per_conn
    }
}

#[derive(Default)]
pub(crate) struct FanoutMeasured {
    /// Healthy watchers' event latency without, and with, the slow consumers.
    pub(crate) latency: Stats,
    pub(crate) latency_slow: Stats,
    /// Closed-loop put throughput without, and with, the slow consumers.
    pub(crate) puts_per_sec: f64,
    pub(crate) puts_per_sec_slow: f64,
    /// Member RSS growth from before the watchers to the peak of the run.
    pub(crate) rss_growth: u64,
    /// Events healthy watchers never got.
    pub(crate) missing: usize,
}

const PREFIX: &str = "/registry/fanout/";
/// How long healthy watchers may take to get a phase's last events.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Watcher `i` watches the prefix (one in a hundred) or key `i % keys`; one in three asks
/// for the previous key-value.
fn create(plan: &FanoutPlan, i: usize) -> Vec<u8> {
    let prefixed = i.is_multiple_of(100);
    let (key, range_end) = if prefixed {
        let mut end = PREFIX.as_bytes().to_vec();
        if let Some(b) = end.last_mut() {
            *b += 1;
        }
        (PREFIX.as_bytes().to_vec(), end)
    } else {
        (key(i % plan.keys), Vec::new())
    };
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            range_end,
            prev_kv: i.is_multiple_of(3),
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

fn key(k: usize) -> Vec<u8> {
    format!("{PREFIX}k{k:05}").into_bytes()
}

/// How many watchers each put to key `k` reaches: the prefix watchers and key `k`'s.
fn reach(plan: &FanoutPlan) -> Vec<usize> {
    let mut per_key = vec![0usize; plan.keys];
    let mut prefixed = 0;
    for i in 0..plan.watchers() {
        if i.is_multiple_of(100) {
            prefixed += 1;
        } else {
            per_key[i % plan.keys] += 1;
        }
    }
    per_key.iter().map(|n| n + prefixed).collect()
}

pub(crate) async fn measure(node: &Node, plan: &FanoutPlan) -> Result<FanoutMeasured, String> {
    let pid = node.pid();
    let rss_before = vm_rss(pid);
    let sampler = RssPeak::start(pid);
    let url = format!("http://{}", node.endpoint());
    let authority = rawwatch::authority(&url)?.to_string();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(plan.conns);
    for c in 0..plan.conns {
        let firsts: Vec<Vec<u8>> = (c * plan.per_conn..(c + 1) * plan.per_conn)
            .map(|i| create(plan, i))
            .collect();
        let wc = WatchConn::open_each(
            &authority,
            "/etcdserverpb.Watch/Watch",
            &firsts,
            Duration::from_secs(60),
        )
        .await?;
        let stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(i64, Instant)> = Vec::new();
            let _ = wc
                .run(stopped, |msg, now| {
                    for e in EventRevisions::decode(msg).unwrap_or_default().events {
                        seen.push((e.kv.map_or(0, |kv| kv.mod_revision), now));
                    }
                })
                .await;
            seen
        }));
    }
    let reach = reach(plan);
    let mut kv = KvClient::new(conn(&node.endpoint()).await?);
    let value = vec![b'w'; plan.value];
    let mut sent: HashMap<i64, (Instant, usize)> = HashMap::new();
    let mut m = FanoutMeasured::default();
    let mut phases: Vec<Vec<i64>> = Vec::new();
    let mut slow = Vec::new();
    for phase in 0..2 {
        if phase == 1 {
            for _ in 0..plan.slow {
                // Opened and never read again: the server must not wait for them.
                slow.push(
                    WatchConn::open(
                        &authority,
                        "/etcdserverpb.Watch/Watch",
                        // The prefix, with prev_kv: every event, twice the bytes.
                        &create(plan, 0),
                        1,
                        Duration::from_secs(60),
                    )
                    .await?,
                );
            }
        }
        let mut revs = Vec::new();
        let started = Instant::now();
        let puts = (plan.rate as f64 * plan.window.as_secs_f64()) as usize;
        for i in 0..puts {
            let at = started + Duration::from_secs_f64(i as f64 / plan.rate as f64);
            tokio::time::sleep_until(at.into()).await;
            let k = i % plan.keys;
            let r = kv
                .put(PutRequest {
                    key: key(k),
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("fan-out put: {}", e.message()))?;
            let rev = r.into_inner().header.map_or(0, |h| h.revision);
            sent.insert(rev, (Instant::now(), reach[k]));
            revs.push(rev);
        }
        let burst = burst(node, plan).await?;
        if phase == 0 {
            m.puts_per_sec = burst;
        } else {
            m.puts_per_sec_slow = burst;
        }
        phases.push(revs);
    }
    // Healthy watchers get the last events before the count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let drain = Instant::now();
    let _ = stop.send(true);
    let mut arrivals: HashMap<i64, Vec<Instant>> = HashMap::new();
    for t in tasks {
        let seen = tokio::time::timeout(DRAIN_LIMIT.saturating_sub(drain.elapsed()), t)
            .await
            .map_err(|_| "fan-out watchers did not stop".to_string())?
            .unwrap_or_default();
        for (rev, at) in seen {
            if sent.contains_key(&rev) {
                arrivals.entry(rev).or_default().push(at);
            }
        }
    }
    drop(slow);
    m.rss_growth = sampler.stop().saturating_sub(rss_before);
    for (phase, revs) in phases.iter().enumerate() {
        let mut stats = Stats::default();
        for rev in revs {
            let Some((acked, want)) = sent.get(rev) else {
                continue;
            };
            let got = arrivals.get(rev).map_or(&[][..], Vec::as_slice);
            m.missing += want.saturating_sub(got.len());
            for at in got {
                stats
                    .lats
                    .push(at.saturating_duration_since(*acked).as_secs_f64());
            }
        }
        let stats = stats.finish(plan.window);
        if phase == 0 {
            m.latency = stats;
        } else {
            m.latency_slow = stats;
        }
    }
    Ok(m)
}

/// Puts per second by `burst_clients` clients putting back to back for `burst` (every
/// watcher still watching). Timed rather than counted: a short burst's rate varied by a
/// fifth between identical runs.
async fn burst(node: &Node, plan: &FanoutPlan) -> Result<f64, String> {
    let ch = conn(&node.endpoint()).await?;
    let deadline = Instant::now() + plan.burst;
    let value = Arc::new(vec![b'b'; plan.value]);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..plan.burst_clients.max(1) {
        let (ch, value) = (ch.clone(), value.clone());
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let req = PutRequest {
                    // Under the prefix: every prefix watcher, slow ones too, gets these.
                    key: format!("{PREFIX}burst/c{c:02}-{:04}", done % 100).into_bytes(),
                    value: value.to_vec(),
                    ..Default::default()
                };
                crate::workloads::put_once(ch.clone(), req).await?;
                done += 1;
            }
            Ok::<_, String>(done)
        });
    }
    let mut puts = 0u64;
    while let Some(r) = tasks.join_next().await {
        puts += r
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("fan-out burst: {e}"))?;
    }
    Ok(puts as f64 / started.elapsed().as_secs_f64())
}
