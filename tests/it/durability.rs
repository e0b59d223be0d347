//! A reply means the write is on disk: kill -9 loses nothing acknowledged, a torn WAL tail is
//! truncated on restart, and damage inside the WAL stops the member with file and offset.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use tokio::sync::Mutex;

use crate::cluster::{Kind, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_write() {
    kill9_under_load(&[]).await;
}

/// The same with the raft log compacted (and its WAL rewritten) every 100 entries, so kills
/// land before, during and after compactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_log_compaction_loses_no_acknowledged_write() {
    kill9_under_load(&[
        "--snapshot-count=100",
        "--experimental-snapshot-catchup-entries=20",
    ])
    .await;
}

async fn kill9_under_load(extra: &[&str]) {
    let mut s = Server::start(Kind::Ballast, extra);
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let ep = s.endpoint();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let mut c = Client::connect([ep], None).await.unwrap();
            for i in 0..10_000 {
                let key = format!("w{w}/k{i:05}");
                match c.put(key.clone(), format!("v{i}"), None).await {
                    Ok(r) => acked
                        .lock()
                        .await
                        .push((key, r.header().unwrap().revision())),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let writes flow, then kill without warning while they are in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill9();
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() > 100,
        "too few writes acknowledged to mean anything: {}",
        acked.len()
    );
    let max_rev = acked.iter().map(|(_, r)| *r).max().unwrap();

    s.spawn();
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    let all = c
        .get("w", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let found: std::collections::HashMap<String, i64> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .collect();
    for (key, rev) in &acked {
        assert_eq!(
            found.get(key),
            Some(rev),
            "acknowledged {key}@{rev} lost after kill -9"
        );
    }
    assert!(all.header().unwrap().revision() >= max_rev);
}

/// (segments in the log, segments retired from it) in a member's WAL directory.
fn wal_files(s: &Server) -> (usize, usize) {
    let dir = s.data_path().join("member").join("wal");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let count = |suffix: &str| names.iter().filter(|n| n.ends_with(suffix)).count();
    (count(".wal"), count(".wal.retired"))
}

/// `--max-wals` keeps segments that log compactions superseded, as etcd keeps old WAL files,
/// up to that many files in all (0: every one); they are never read back, so a restart
/// recovers the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_wal_segments_are_kept_up_to_max_wals() {
    for (max, expect_retired) in [(3usize, 2..=2), (0, 10..=usize::MAX)] {
        let max_wals = format!("--max-wals={max}");
        let mut s = Server::start(
            Kind::Ballast,
            &[
                "--snapshot-count=20",
                "--experimental-snapshot-catchup-entries=5",
                &max_wals,
            ],
        );
        let mut c = Client::connect([s.endpoint()], None).await.unwrap();
        for i in 0..400 {
            c.put(format!("k{i:03}"), format!("v{i}"), None)
                .await
                .unwrap();
        }
        let (live, retired) = wal_files(&s);
        assert!(
            expect_retired.contains(&retired),
            "--max-wals={max}: {live} live, {retired} retired"
        );
        if max > 0 {
            assert!(live + retired <= max, "{live} live, {retired} retired");
        }
        s.kill9();
        s.spawn();
        let mut c = Client::connect([s.endpoint()], None).await.unwrap();
        let all = c
            .get("k", Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .unwrap();
        assert_eq!(all.count(), 400, "--max-wals={max}");
    }
}

/// Where a WAL segment's records end: each is `len u32 LE | crc u32 | len bytes`, and a zero
/// length is the reserved space after them.
fn records_end(bytes: &[u8]) -> usize {
    let mut off = 0;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]);
        if len == 0 {
            break;
        }
        off += 8 + len as usize;
    }
    off
}

fn wal_segment(s: &Server) -> std::path::PathBuf {
    let dir = s.data_path().join("member").join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_wal_tail_is_truncated_and_mid_log_damage_is_reported() {
    let mut s = Server::start(Kind::Ballast, &[]);
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    for i in 0..20 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    s.kill9();
    // A crash mid-append leaves a partial record right after the last whole one (the space
    // after it is reserved and reads as zeros).
    let seg = wal_segment(&s);
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = records_end(&bytes);
    let torn = [200, 0, 0, 0, 1, 2, 3, 4, 1, 9, 9];
    if bytes.len() < end + torn.len() {
        bytes.resize(end + torn.len(), 0);
    }
    bytes[end..end + torn.len()].copy_from_slice(&torn);
    std::fs::write(&seg, &bytes).unwrap();
    s.spawn();
    assert!(s.log().contains("truncating torn wal tail"), "{}", s.log());
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    assert_eq!(
        c.get("k", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count(),
        20
    );
    s.kill9();

    // Flip a byte inside an early record: that is corruption, not a torn write.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[60] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let out = std::process::Command::new(crate::cluster::ballast_bin())
        .arg("--data-dir")
        .arg(s.data_path())
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", crate::cluster::free_port()),
        ])
        .args([
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "default=http://127.0.0.1:2380",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("wal corrupt")
            && err.contains(&seg.display().to_string())
            && err.contains("offset"),
        "{err}"
    );
}

/// Fsyncs of the WAL so far on every member of `c`.
fn wal_fsyncs(c: &crate::cluster::Cluster) -> u64 {
    c.members
        .iter()
        .map(|m| {
            let (_, text) = crate::cluster::http_get(m.port, "/metrics").unwrap();
            let samples = crate::operations::parse_metrics(&text);
            crate::operations::metric(&samples, "etcd_disk_wal_fsync_duration_seconds_count", "")
                .unwrap() as u64
        })
        .sum()
}

/// As etcd's MustSync: a put's entry is fsynced on every member, the commit index that later
/// reaches the hard state is not (a restart learns it again). Syncing it doubled the fsyncs
/// of every lone write.
#[tokio::test]
async fn a_commit_index_alone_is_not_fsynced() {
    let c = crate::cluster::Cluster::start(Kind::Ballast, 3, &[]);
    let mut client = Client::connect(c.endpoints(), None).await.unwrap();
    client.put("warm", "up", None).await.unwrap();
    // Heartbeats carry the last commit index to the followers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = wal_fsyncs(&c);
    let puts = 40;
    for i in 0..puts {
        client.put(format!("k{i}"), "v", None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let synced = wal_fsyncs(&c) - before;
    // About one per member per put. The leader and the follower that makes its quorum sync
    // every put; the other follower may get two puts' entries in one append (one sync fewer)
    // or one put's in two (one more). Syncing commit indexes too made it about twice that.
    assert!(
        (puts * 2..=puts * 3 + puts / 2).contains(&synced),
        "{synced} WAL fsyncs for {puts} puts on 3 members"
    );
    drop(client);
    drop(c);
}

/// A store that fails to commit stops the member (exit 1, the reason in its log) instead of
/// answering anything after it, and every write it acknowledged is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_commit_stops_the_member_and_loses_nothing_acknowledged() {
    // From the 30th commit of the store on: past start-up, within the puts below.
    let mut s = Server::launch_with_failpoints("backend-commit=eio@30", &[]);
    let ep = s.endpoint();
    let mut acked = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut client = None;
    while std::time::Instant::now() < deadline {
        if let Some(status) = s.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            assert_eq!(status.code(), Some(1), "{}", s.log());
            break;
        }
        if client.is_none() {
            client = Client::connect([ep.clone()], None).await.ok();
        }
        let Some(c) = client.as_mut() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let key = format!("k{:05}", acked.len());
        let put = tokio::time::timeout(Duration::from_secs(2), c.put(key.clone(), "v", None));
        match put.await {
            Ok(Ok(r)) => acked.push((key, r.header().unwrap().revision())),
            Ok(Err(_)) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
        // Commits come with time as well as with writes: pace the puts a little.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = s.child.as_mut().and_then(|c| c.try_wait().unwrap());
    assert_eq!(
        status.and_then(|st| st.code()),
        Some(1),
        "the member kept running after a failed commit:\n{}",
        s.log()
    );
    assert!(s.log().contains("apply failed"), "{}", s.log());
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the failure"
    );

    // The same data dir, without the failpoint: the WAL has everything acknowledged.
    s.failpoints = None;
    s.spawn();
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    for (key, rev) in &acked {
        let got = c.get(key.as_str(), None).await.unwrap();
        assert_eq!(
            got.kvs().first().map(|kv| kv.mod_revision()),
            Some(*rev),
            "acknowledged {key}@{rev} lost"
        );
    }
}

/// A restarted single member leads at once, after a clean stop and after kill -9, as on its
/// first start: it is the only voter, so waiting out an election timeout (10 s here) gains
/// nothing. It used to wait, since a restart has nothing to hand off first.
#[test]
fn a_restarted_single_member_leads_without_waiting_out_the_election_timeout() {
    let mut s = Server::start(Kind::Ballast, &["--election-timeout=10000"]);
    let (_, err, code) = crate::cluster::etcdctl(&s.endpoint(), &["put", "k", "v"], None);
    assert_eq!(code, 0, "{err}");
    for clean in [true, false] {
        s.relaunch(clean);
        s.wait_healthy(Duration::from_secs(5));
        let (out, err, code) = crate::cluster::etcdctl(&s.endpoint(), &["get", "k"], None);
        assert_eq!((out.as_str(), code), ("k\nv\n", 0), "{err}");
    }
}

/// A linearizable read that reaches a member the moment it accepts connections, while it is
/// still opening its store and electing itself, is answered once it leads. raft drops a
/// ReadIndex that comes before a new leader has committed in its term; such a read used to
/// wait out the request timeout (7 s), now the driver holds it until then and asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_sent_while_a_member_starts_is_answered_once_it_leads() {
    use std::io::{Read, Write};
    let mut s = Server::start(Kind::Ballast, &[]);
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    // Enough data that opening the store takes a moment.
    for t in 0..100 {
        let ops: Vec<etcd_client::TxnOp> = (0..100)
            .map(|i| etcd_client::TxnOp::put(format!("k{t:03}-{i:03}"), vec![b'v'; 200], None))
            .collect();
        c.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
    }
    drop(c);
    for clean in [true, false] {
        s.relaunch(clean);
        let port = s.port;
        let (raw, failed) = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            loop {
                assert!(started.elapsed() < Duration::from_secs(30), "never served");
                if let Ok(mut t) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    let _ = t.set_read_timeout(Some(Duration::from_secs(4)));
                    let body = r#"{"key":"azAwMC0wMDA="}"#;
                    let _ = write!(
                        t,
                        "POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let mut raw = String::new();
                    let r = t.read_to_string(&mut raw);
                    if r.is_err() || !raw.is_empty() {
                        return (raw, r.is_err());
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .await
        .unwrap();
        assert!(!failed, "no answer within 4 s (clean stop: {clean})");
        assert!(raw.contains("\"kvs\""), "clean stop: {clean}: {raw}");
        s.wait_healthy(Duration::from_secs(20));
    }
}

/// Everything a key's index entry holds: the values and revisions of every key under `k/`,
/// the keys of lease `lease`, and a historic read.
async fn index_view(c: &mut Client, lease: i64, old_rev: i64) -> Vec<String> {
    let mut out = Vec::new();
    let got = c
        .get("k/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    for kv in got.kvs() {
        out.push(format!(
            "{} {} c{} m{} v{} l{}",
            kv.key_str().unwrap(),
            kv.value_str().unwrap(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.lease()
        ));
    }
    let ttl = c
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    let mut keys: Vec<String> = ttl
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    keys.sort();
    out.push(format!("lease keys {keys:?}"));
    let old = c
        .get(
            "k/",
            Some(GetOptions::new().with_prefix().with_revision(old_rev)),
        )
        .await
        .unwrap();
    out.push(format!("at {old_rev}: {} keys", old.kvs().len()));
    out
}

/// A clean stop writes the key index to a checkpoint that the next start reads instead of
/// every stored revision; after kill -9 the start reads the checkpoint and replays the
/// revisions stored after it; a compaction past it makes the start rebuild (or read a newer
/// checkpoint). Each start serves exactly what the member served before it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_read_the_key_index_checkpoint_and_serve_what_was_served() {
    let mut s = Server::start(Kind::Ballast, &[]);
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    let with_lease = etcd_client::PutOptions::new().with_lease(lease);
    let mut old_rev = 0;
    for i in 0..300 {
        let key = format!("k/{:03}", i % 120);
        let r = if i % 7 == 0 {
            c.put(key, format!("v{i}"), Some(with_lease.clone()))
                .await
                .unwrap();
            continue;
        } else if i % 11 == 0 {
            c.delete(key, None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision()
        } else {
            c.put(key, format!("v{i}"), None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision()
        };
        if i == 150 {
            old_rev = r;
        }
    }
    let before = index_view(&mut c, lease, old_rev).await;
    drop(c);

    s.relaunch(true);
    s.wait_healthy(Duration::from_secs(20));
    let log = s.log();
    assert!(log.contains("wrote the key index checkpoint"), "{log}");
    assert!(
        log.contains("read from the checkpoint at revision"),
        "{log}"
    );
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    assert_eq!(index_view(&mut c, lease, old_rev).await, before);

    // Written after the checkpoint: the next start replays these.
    for i in 0..40 {
        let key = format!("k/{:03}", i * 3);
        if i % 4 == 0 {
            c.delete(key, None).await.unwrap();
        } else {
            c.put(key, format!("after{i}"), Some(with_lease.clone()))
                .await
                .unwrap();
        }
    }
    let before = index_view(&mut c, lease, old_rev).await;
    drop(c);
    // The store makes them durable within a second; the WAL has them before that.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.relaunch(false);
    s.wait_healthy(Duration::from_secs(20));
    let log = s.log();
    let replays = log
        .lines()
        .filter(|l| l.contains("read from the checkpoint") && !l.contains("and 0 revisions"))
        .count();
    assert_eq!(replays, 1, "{log}");
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    assert_eq!(index_view(&mut c, lease, old_rev).await, before);

    // A compaction past the checkpoint: the deletions before it are gone from the store, so
    // the checkpoint cannot be used with what follows it.
    c.lease_revoke(lease).await.unwrap();
    let rev = c
        .put("k/last", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    c.compact(rev, None).await.unwrap();
    let before = index_view(&mut c, lease, rev).await;
    drop(c);
    s.relaunch(false);
    s.wait_healthy(Duration::from_secs(20));
    let mut c = Client::connect([s.endpoint()], None).await.unwrap();
    // The revoked lease is gone: its keys list is empty on both sides.
    let after = index_view(&mut c, lease, rev).await;
    assert_eq!(after, before);
}
