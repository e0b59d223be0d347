//! Clients that drive a cluster and record every operation into a [`History`].
//!
//! Each client works like an etcd client library: it talks to one member, and after an error
//! or a timeout moves to the next one. Writes whose outcome is not known are recorded as
//! ambiguous; reads that fail observed nothing and are left out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_api::etcdserverpb::kv_client::KvClient;
use ballast_api::etcdserverpb::request_op::Request as OpRequest;
use ballast_api::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use rand::Rng;
use tonic::transport::Channel;

use crate::history::{Entry, History, Op, Outcome};

/// Longest a client waits for one answer before calling it ambiguous.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Endpoints clients may use; scenarios change it as members come and go.
pub type Endpoints = Arc<Mutex<Vec<String>>>;

#[derive(Clone, Debug)]
pub struct Mix {
    pub keys: usize,
    pub prefix: String,
    /// Pause between a client's operations.
    pub think: Duration,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            keys: 5,
            prefix: "lin/".into(),
            think: Duration::from_millis(5),
        }
    }
}

impl Mix {
    pub fn key(&self, k: usize) -> Vec<u8> {
        format!("{}{k}", self.prefix).into_bytes()
    }
}

/// Values are unique across all clients of a run.
static NEXT_VALUE: AtomicU64 = AtomicU64::new(1);

async fn connect(endpoint: &str) -> Option<KvClient<Channel>> {
    crate::cluster::channel(endpoint)
        .await
        .ok()
        .map(KvClient::new)
}

/// A value as the workload writes it (a decimal number).
pub fn parse(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

async fn perform(
    kv: &mut KvClient<Channel>,
    key: Vec<u8>,
    op: Op,
) -> Result<Outcome, tonic::Status> {
    Ok(match op {
        Op::Get => {
            let r = kv
                .range(RangeRequest {
                    key,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Outcome::Value(r.kvs.first().and_then(|kv| parse(&kv.value)))
        }
        Op::Put(v) => {
            let r = kv
                .put(PutRequest {
                    key,
                    value: v.to_string().into_bytes(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Outcome::Written(r.header.map(|h| h.revision).unwrap_or(0))
        }
        Op::Delete => {
            let r = kv
                .delete_range(DeleteRangeRequest {
                    key,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Outcome::Deleted(r.deleted > 0)
        }
        Op::Cas { expect, new } => {
            let compare = match expect {
                Some(v) => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: key.clone(),
                    target_union: Some(TargetUnion::Value(v.to_string().into_bytes())),
                    ..Default::default()
                },
                None => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Create as i32,
                    key: key.clone(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                    ..Default::default()
                },
            };
            let put = RequestOp {
                request: Some(OpRequest::RequestPut(PutRequest {
                    key,
                    value: new.to_string().into_bytes(),
                    ..Default::default()
                })),
            };
            let r = kv
                .txn(TxnRequest {
                    compare: vec![compare],
                    success: vec![put],
                    failure: vec![],
                })
                .await?
                .into_inner();
            if r.succeeded {
                Outcome::Written(r.header.map(|h| h.revision).unwrap_or(0))
            } else {
                Outcome::CasFailed
            }
        }
    })
}

/// One client: operations until `stop`, failing over between endpoints.
pub async fn client(
    id: usize,
    endpoints: Endpoints,
    mix: Mix,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let mut at = id;
    let mut kv: Option<KvClient<Channel>> = None;
    let mut seen: Vec<Option<u64>> = vec![None; mix.keys];
    while !stop.load(Ordering::Relaxed) {
        let Some(client) = kv.as_mut() else {
            let eps = endpoints.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if eps.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            at = (at + 1) % eps.len();
            kv = tokio::time::timeout(OP_TIMEOUT, connect(&eps[at]))
                .await
                .ok()
                .flatten();
            if kv.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        };
        let (key, op) = {
            let mut rng = rand::thread_rng();
            let key = rng.gen_range(0..mix.keys);
            let roll = rng.gen_range(0..100);
            let op = if roll < 40 {
                Op::Get
            } else if roll < 70 {
                Op::Put(NEXT_VALUE.fetch_add(1, Ordering::Relaxed))
            } else if roll < 80 {
                Op::Delete
            } else {
                Op::Cas {
                    expect: seen[key],
                    new: NEXT_VALUE.fetch_add(1, Ordering::Relaxed),
                }
            };
            (key, op)
        };
        let invoke = history.now();
        let res = tokio::time::timeout(OP_TIMEOUT, perform(client, mix.key(key), op)).await;
        let complete = history.now();
        let outcome = match res {
            Ok(Ok(o)) => o,
            _ => {
                // Unknown outcome; try another member next, after a pause as client
                // libraries do.
                kv = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                if op == Op::Get {
                    history.failed_read();
                    continue;
                }
                Outcome::Ambiguous
            }
        };
        if let Outcome::Value(v) = outcome {
            seen[key] = v;
        }
        history.record(Entry {
            client: id,
            key,
            op,
            invoke,
            complete,
            outcome,
        });
        if !mix.think.is_zero() {
            tokio::time::sleep(mix.think).await;
        }
    }
}

/// Running clients; [`Clients::stop`] ends them and returns the history.
pub struct Clients {
    pub history: Arc<History>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    pub fn start(n: usize, endpoints: Endpoints, mix: &Mix) -> Clients {
        let history = Arc::new(History::new());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..n)
            .map(|i| {
                tokio::spawn(client(
                    i,
                    endpoints.clone(),
                    mix.clone(),
                    history.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Clients {
            history,
            stop,
            tasks,
        }
    }

    pub async fn stop(self) -> Arc<History> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.history
    }
}
