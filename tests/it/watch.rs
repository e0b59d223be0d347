//! Watch: the real etcdctl's `watch` output against etcd and Ballast for the same writes, and a
//! guarantee checker (ordered, unique, atomic, reliable, resumable, prev_kv, created flags)
//! over many watchers on a 3-member cluster with a leader kill in the middle.

use std::collections::BTreeMap;
use std::process::Child;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchOptions};

use crate::cluster::{ctl_bg, etcdctl, finish, Cluster, Kind, Server};

/// `<ctl> watch` in the background, stopped after `secs`.
fn watch_bg(ctl: &std::path::Path, endpoint: &str, args: &[&str], secs: f32) -> Child {
    let args: Vec<&str> = std::iter::once("watch")
        .chain(args.iter().copied())
        .collect();
    ctl_bg(ctl, endpoint, &args, secs)
}

/// Runs the same writes under several `etcdctl watch` invocations; returns what each printed.
fn scenario(kind: Kind, ctl: &std::path::Path) -> Vec<(String, (String, String, i32))> {
    let s = Server::start(kind, &[]);
    let ep = s.endpoint();
    for (k, v) in [("foo", "1"), ("foo", "2"), ("bar", "x")] {
        assert_eq!(etcdctl(&ep, &["put", k, v], None).2, 0);
    }
    let watches: Vec<&[&str]> = vec![
        &["foo"],
        &["foo", "--rev", "1", "--prev-kv"],
        &["--prefix", "f", "-w", "json"],
        &["f", "g"],
        &["--prefix", "", "--rev", "2", "-w", "fields"],
        &["bar", "--rev", "3", "--prev-kv", "-w", "json"],
    ];
    let running: Vec<Child> = watches.iter().map(|a| watch_bg(ctl, &ep, a, 3.0)).collect();
    let exec_dir = tempfile::tempdir().unwrap();
    let exec_log = exec_dir.path().join("exec");
    let script = format!(
        "echo \"$ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY $ETCD_WATCH_VALUE $ETCD_WATCH_REVISION\" >> {}",
        exec_log.display()
    );
    let exec = watch_bg(ctl, &ep, &["foo", "--", "sh", "-c", &script], 3.0);
    std::thread::sleep(Duration::from_millis(700));
    let writes: Vec<(&[&str], Option<&str>)> = vec![
        (&["put", "foo", "3"], None),
        (&["del", "foo"], None),
        (&["txn"], Some("\nput foo 7\nput fab 8\ndel bar\n\n\n")),
        (&["put", "bar", "y"], None),
        (&["put", "zzz", "1"], None),
    ];
    for (args, stdin) in writes {
        assert_eq!(etcdctl(&ep, args, stdin).2, 0);
    }
    let mut out: Vec<(String, (String, String, i32))> = watches
        .iter()
        .zip(running)
        .map(|(a, c)| (a.join(" "), finish(c)))
        .collect();
    let printed = finish(exec);
    let ran = std::fs::read_to_string(&exec_log).unwrap_or_default();
    out.push(("exec mode".into(), (printed.0, ran, printed.2)));
    // History replayed to a new watcher: the header names the store's revision, not the
    // last event's.
    let replay = watch_bg(ctl, &ep, &["foo", "--rev", "2", "-w", "json"], 1.0);
    out.push(("foo --rev 2 -w json (replay)".into(), finish(replay)));
    assert_eq!(etcdctl(&ep, &["compaction", "5"], None).2, 0);
    let compacted = watch_bg(ctl, &ep, &["foo", "--rev", "2", "-w", "json"], 2.0);
    out.push(("foo --rev 2 -w json (compacted)".into(), finish(compacted)));
    let compacted = watch_bg(ctl, &ep, &["foo", "--rev", "2"], 2.0);
    out.push(("foo --rev 2 (compacted)".into(), finish(compacted)));
    let future = watch_bg(ctl, &ep, &["foo", "--rev", "100"], 1.0);
    out.push(("foo --rev 100 (future)".into(), finish(future)));
    let bad = watch_bg(ctl, &ep, &["--prefix", "a", "b"], 1.0);
    out.push(("--prefix a b".into(), finish(bad)));
    for (_, o) in &mut out {
        o.0 = crate::differential::normalize_for(&o.0, &ep);
        o.1 = crate::differential::normalize_for(&o.1, &ep);
    }
    out
}

fn compare(want: Vec<(String, (String, String, i32))>, got: Vec<(String, (String, String, i32))>) {
    let diffs: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| {
            format!(
                "watch {}\n--- etcd:\n{:?}\n--- ballast:\n{:?}",
                w.0, w.1, g.1
            )
        })
        .collect();
    assert!(diffs.is_empty(), "{}", diffs.join("\n\n"));
}

#[test]
fn etcdctl_watch_matches_etcd() {
    let etcdctl = std::path::Path::new("etcdctl");
    compare(
        scenario(Kind::Etcd, etcdctl),
        scenario(Kind::Ballast, etcdctl),
    );
}

#[test]
fn ballastctl_watch_matches_etcdctl() {
    let etcdctl = std::path::Path::new("etcdctl");
    let ours = crate::cluster::bin_dir().join("ballastctl");
    compare(
        scenario(Kind::Etcd, etcdctl),
        scenario(Kind::Ballast, &ours),
    );
}

/// One acknowledged write: its revision and the (key, value or None for delete) it made.
type History = BTreeMap<i64, Vec<(String, Option<String>)>>;

/// One event as a watcher saw it; `response` numbers the response it came in (atomicity).
struct SeenEvent {
    rev: i64,
    key: String,
    value: Option<String>,
    prev: Option<String>,
    is_create: bool,
    response: usize,
}

struct Seen {
    events: Vec<SeenEvent>,
}

/// How a checker watcher behaves.
#[derive(Clone, Copy, Debug)]
enum Style {
    Live,
    /// Reads slowly, so it falls behind and catches up from history.
    Slow,
    /// Drops its watch every 50 responses and resumes from `last revision + 1`.
    Resuming,
}

async fn collect(
    endpoint: String,
    prefix: &'static str,
    start: i64,
    style: Style,
    until: Instant,
    target: Arc<AtomicI64>,
) -> Seen {
    let mut c = Client::connect([endpoint], None).await.unwrap();
    let watch_from = |rev: i64| {
        WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(rev)
    };
    let mut stream = c.watch(prefix, Some(watch_from(start))).await.unwrap();
    let mut seen = Seen { events: Vec::new() };
    let mut n = 0;
    let slow = matches!(style, Style::Slow);
    while Instant::now() < until
        && seen.events.last().map(|e| e.rev).unwrap_or(0) < target.load(Ordering::SeqCst)
    {
        if matches!(style, Style::Resuming) && n > 0 && n % 50 == 0 {
            if let Some(last) = seen.events.last().map(|e| e.rev) {
                let Ok(s) = c.watch(prefix, Some(watch_from(last + 1))).await else {
                    break;
                };
                stream = s;
                n += 1;
            }
        }
        // Short waits, so reaching the target is noticed promptly.
        let resp = match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Err(_) => continue,
            Ok(Ok(Some(resp))) => resp,
            Ok(_) => break,
        };
        n += 1;
        if slow {
            // Fall behind on purpose, so this watcher goes through catch-up.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for e in resp.events() {
            let kv = e.kv().unwrap();
            let value = match e.event_type() {
                EventType::Put => Some(kv.value_str().unwrap().to_string()),
                EventType::Delete => None,
            };
            let prev = e.prev_kv().map(|p| p.value_str().unwrap().to_string());
            let is_create = kv.create_revision() == kv.mod_revision();
            seen.events.push(SeenEvent {
                rev: kv.mod_revision(),
                key: kv.key_str().unwrap().to_string(),
                value,
                prev,
                is_create,
                response: n,
            });
        }
    }
    seen
}

/// Checks one watcher's events against the acknowledged history from `start` on.
fn check(name: &str, seen: &Seen, history: &History, start: i64, upto: i64) {
    let mut last = (0i64, String::new());
    let mut rev_response: BTreeMap<i64, usize> = BTreeMap::new();
    for e in &seen.events {
        let (rev, key) = (e.rev, &e.key);
        assert!(
            (rev, key.clone()) > last,
            "{name}: out of order or duplicate at {rev} {key}"
        );
        last = (rev, key.clone());
        let r = rev_response.entry(rev).or_insert(e.response);
        assert_eq!(
            *r, e.response,
            "{name}: revision {rev} split across responses"
        );
    }
    // Reliable: every acknowledged change in range is there, with the right value, prev and
    // create flag (the model tracks values and versions key by key).
    let mut model: BTreeMap<String, String> = BTreeMap::new();
    let mut got = seen.events.iter();
    for (rev, changes) in history {
        for (key, value) in changes {
            let prev = model.get(key).cloned();
            match value {
                Some(v) => model.insert(key.clone(), v.clone()),
                None => model.remove(key),
            };
            if *rev < start || *rev > upto {
                continue;
            }
            let e = got
                .next()
                .unwrap_or_else(|| panic!("{name}: missing event at {rev} {key}"));
            assert_eq!(
                (e.rev, &e.key),
                (*rev, key),
                "{name}: gap before {rev} {key}"
            );
            assert_eq!(&e.value, value, "{name}: wrong value at {rev} {key}");
            if value.is_some() {
                assert_eq!(e.prev, prev, "{name}: wrong prev_kv at {rev} {key}");
                assert_eq!(
                    e.is_create,
                    prev.is_none(),
                    "{name}: wrong IsCreate at {rev} {key}"
                );
            }
        }
    }
}

/// The key space under `w/` at revision `rev`, read with ranges (independent of watch code).
async fn state_at(cl: &mut Client, rev: i64) -> BTreeMap<String, String> {
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_revision(rev);
    let r = cl.get("w/", Some(opts)).await.unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Ground truth: what changed under `w/` at each revision in `from..=to`.
async fn ground_truth(ep: &str, from: i64, to: i64) -> History {
    let mut cl = Client::connect([ep], None).await.unwrap();
    let mut prev = if from > 1 {
        state_at(&mut cl, from - 1).await
    } else {
        BTreeMap::new()
    };
    let mut history = History::new();
    for rev in from..=to {
        let cur = state_at(&mut cl, rev).await;
        let mut changes = Vec::new();
        for (k, v) in &cur {
            if prev.get(k) != Some(v) {
                changes.push((k.clone(), Some(v.clone())));
            }
        }
        for k in prev.keys() {
            if !cur.contains_key(k) {
                changes.push((k.clone(), None));
            }
        }
        if !changes.is_empty() {
            history.insert(rev, changes);
        }
        prev = cur;
    }
    history
}

#[test]
fn watch_guarantees_hold_through_a_leader_kill() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Cluster::start(Kind::Ballast, 3, &[]);
    let eps = c.endpoints();
    rt.block_on(async {
        let mut cl = Client::connect([eps[0].clone()], None).await.unwrap();
        cl.put("w/seed", "0", None).await.unwrap();
    });
    let until = Instant::now() + Duration::from_secs(25);
    let target = Arc::new(AtomicI64::new(i64::MAX));
    // Watchers on every member: live, slow, and from old revisions.
    let mut watchers = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        for (style, start) in [
            (Style::Live, 0),
            (Style::Slow, 0),
            (Style::Live, 1),
            (Style::Slow, 2),
            (Style::Resuming, 1),
        ] {
            let ep = ep.clone();
            let name = format!("m{i} {style:?} start={start}");
            let t = target.clone();
            let task = rt.spawn(collect(ep, "w/", start, style, until, t));
            watchers.push((i, name, start, task));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let writes_end = Instant::now() + Duration::from_secs(6);
    let (acked, killed) = rt.block_on(async {
        let mut handles = Vec::new();
        for (wi, ep) in eps.iter().enumerate() {
            let ep = ep.clone();
            handles.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let Ok(mut cl) = Client::connect([ep], None).await else {
                    return acked;
                };
                let mut i = 0;
                while Instant::now() < writes_end {
                    i += 1;
                    let key = format!("w/k{}", i % 17);
                    let v = format!("{wi}-{i}");
                    if let Ok(r) = cl.put(key.clone(), v.clone(), None).await {
                        acked.push((r.header().unwrap().revision(), key.clone(), v));
                    }
                    if i % 9 == 0 {
                        let _ = cl.delete(key, None).await;
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let mut leader_idx = 0;
        for (i, ep) in eps.iter().enumerate() {
            if let Ok(mut cl) = Client::connect([ep.clone()], None).await {
                if let Ok(st) = cl.status().await {
                    if st.leader() == st.header().unwrap().member_id() {
                        leader_idx = i;
                    }
                }
            }
        }
        c.members[leader_idx].kill9();
        let mut acked = Vec::new();
        for h in handles {
            acked.extend(h.await.unwrap());
        }
        (acked, leader_idx)
    });
    let survivor = eps[(killed + 1) % 3].clone();
    let upto = rt.block_on(async {
        let mut cl = Client::connect([survivor.clone()], None).await.unwrap();
        cl.get("w/", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
    });
    // Watchers stop once they have seen the last revision (or at the deadline).
    target.store(upto, Ordering::SeqCst);
    let history = rt.block_on(ground_truth(&survivor, 1, upto));
    assert!(history.len() > 100, "too little traffic: {}", history.len());
    for (rev, key, value) in &acked {
        let changes = history
            .get(rev)
            .unwrap_or_else(|| panic!("acked {rev} lost"));
        assert!(
            changes.contains(&(key.clone(), Some(value.clone()))),
            "acked {key}={value}@{rev} not in history"
        );
    }
    for (member, name, start, h) in watchers {
        let seen = rt.block_on(h).unwrap();
        if member == killed {
            // Cut off with its member; what it saw must still be right.
            if let Some(last) = seen.events.last().map(|e| e.rev) {
                let first = if start > 0 { start } else { seen.events[0].rev };
                check(&name, &seen, &history, first, last);
            }
            continue;
        }
        assert!(!seen.events.is_empty(), "{name} saw nothing");
        let first = if start > 0 { start } else { seen.events[0].rev };
        check(&name, &seen, &history, first, upto);
    }
}

async fn raw_watch(
    endpoint: &str,
    create: ballast_api::etcdserverpb::WatchCreateRequest,
) -> tonic::Streaming<ballast_api::etcdserverpb::WatchResponse> {
    use ballast_api::etcdserverpb::{watch_client::WatchClient, watch_request, WatchRequest};
    let ch = tonic::transport::Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let req = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    };
    // Chained with a never-ending stream so the request side stays open.
    let requests =
        tokio_stream::StreamExt::chain(tokio_stream::iter(vec![req]), tokio_stream::pending());
    WatchClient::new(ch)
        .watch(requests)
        .await
        .unwrap()
        .into_inner()
}

/// Large catch-up responses are split for watchers that ask for fragments (and only for
/// them), and idle watchers that asked for progress notifications get them.
#[test]
fn fragments_and_progress_notifications() {
    let s = Server::start(
        Kind::Ballast,
        &[
            "--max-request-bytes=4096",
            "--experimental-watch-progress-notify-interval=300ms",
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = Client::connect([s.endpoint()], None).await.unwrap();
        for i in 0..40 {
            c.put(format!("f/{i:02}"), "x".repeat(500), None)
                .await
                .unwrap();
        }
        let create = |fragment| ballast_api::etcdserverpb::WatchCreateRequest {
            key: b"f/".to_vec(),
            range_end: b"f0".to_vec(),
            start_revision: 1,
            fragment,
            ..Default::default()
        };
        for fragment in [true, false] {
            let mut w = raw_watch(&s.endpoint(), create(fragment)).await;
            let mut events = 0;
            let mut fragments = 0;
            while events < 40 {
                let r = tokio::time::timeout(Duration::from_secs(5), w.message())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                events += r.events.len();
                fragments += usize::from(r.fragment);
                if fragment {
                    assert!(r.events.len() < 40, "a response larger than the limit");
                }
            }
            assert_eq!(events, 40);
            assert_eq!(fragments > 0, fragment, "fragment={fragment}");
        }
        let mut idle = raw_watch(
            &s.endpoint(),
            ballast_api::etcdserverpb::WatchCreateRequest {
                key: b"quiet".to_vec(),
                progress_notify: true,
                ..Default::default()
            },
        )
        .await;
        let created = idle.message().await.unwrap().unwrap();
        assert!(created.created);
        let notify = tokio::time::timeout(Duration::from_secs(3), idle.message())
            .await
            .expect("a progress notification")
            .unwrap()
            .unwrap();
        assert!(notify.events.is_empty() && !notify.canceled);
        assert_eq!(notify.header.unwrap().revision, 41);
    });
}

/// Many watch streams over one connection (kube-apiserver multiplexes its watches): etcd
/// allows `--max-concurrent-streams` (no limit by default), and a stream past the limit waits.
#[test]
fn many_watch_streams_share_one_connection() {
    for kind in [Kind::Etcd, Kind::Ballast] {
        let s = Server::start(kind, &[]);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut c = Client::connect([s.endpoint()], None).await.unwrap();
            let mut streams = Vec::new();
            for _ in 0..300 {
                let w = tokio::time::timeout(Duration::from_secs(5), c.watch("k", None))
                    .await
                    .unwrap_or_else(|_| panic!("{kind:?}: watch {} never started", streams.len()))
                    .unwrap();
                streams.push(w);
            }
            c.put("k", "v", None).await.unwrap();
            for (i, st) in streams.iter_mut().enumerate() {
                // The created response may come first.
                let events = loop {
                    let r = tokio::time::timeout(Duration::from_secs(5), st.message())
                        .await
                        .unwrap_or_else(|_| panic!("{kind:?}: watcher {i} got no event"))
                        .unwrap()
                        .unwrap();
                    if !r.created() {
                        break r.events().len();
                    }
                };
                assert_eq!(events, 1, "{kind:?}");
            }
        });
        drop(s);
        let s = Server::start(kind, &["--max-concurrent-streams=3"]);
        rt.block_on(async {
            let mut c = Client::connect([s.endpoint()], None).await.unwrap();
            let mut held = Vec::new();
            for _ in 0..3 {
                held.push(c.watch("k", None).await.unwrap());
            }
            let fourth = tokio::time::timeout(Duration::from_millis(800), c.watch("k", None)).await;
            assert!(
                fourth.is_err(),
                "{kind:?}: a fourth stream started past the limit"
            );
            // A freed stream lets the next one start.
            held.pop();
            let fifth = tokio::time::timeout(Duration::from_secs(5), c.watch("k", None)).await;
            assert!(
                fifth.is_ok(),
                "{kind:?}: no stream started after one closed"
            );
        });
    }
}
