//! Multi-member clusters: election, writes and reads through any member, leader failure,
//! quorum loss. Real `ballast` processes on loopback ports, driven by the etcd-client crate.

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::cluster::{Cluster, Kind};

async fn client(endpoint: &str) -> Option<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(5));
    Client::connect([endpoint], Some(opts)).await.ok()
}

/// (member id, leader id, raft term) as one member reports it.
async fn status(endpoint: &str) -> Option<(u64, u64, u64)> {
    let mut c = client(endpoint).await?;
    let s = tokio::time::timeout(Duration::from_secs(1), c.status())
        .await
        .ok()?
        .ok()?;
    Some((s.header()?.member_id(), s.leader(), s.raft_term()))
}

/// The leader every given member agrees on, once they agree.
async fn agreed_leader(endpoints: &[String]) -> Option<u64> {
    let mut leader = None;
    for ep in endpoints {
        let (_, l, _) = status(ep).await?;
        if l == 0 || leader.is_some_and(|x| x != l) {
            return None;
        }
        leader = Some(l);
    }
    leader
}

/// Polls `f` every 50 ms until it yields a value or `limit` passes.
/// The leader the members agree on (within 10 s): its ID and which of `endpoints` it is.
async fn leader_index(endpoints: &[String]) -> (u64, usize) {
    let leader = eventually(Duration::from_secs(10), || agreed_leader(endpoints)).await;
    let mut idx = 0;
    for (i, ep) in endpoints.iter().enumerate() {
        if status(ep).await.unwrap().0 == leader {
            idx = i;
        }
    }
    (leader, idx)
}

async fn eventually<T, F: Future<Output = Option<T>>>(limit: Duration, f: impl Fn() -> F) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn put(endpoint: &str, key: &str, value: &str) -> Result<i64, String> {
    let mut c = client(endpoint).await.ok_or("connect failed")?;
    c.put(key, value, None)
        .await
        .map(|r| r.header().map(|h| h.revision()).unwrap_or(0))
        .map_err(|e| e.to_string())
}

async fn keys(endpoint: &str, prefix: &str, serializable: bool) -> Option<Vec<String>> {
    let mut c = client(endpoint).await?;
    let mut opts = GetOptions::new().with_prefix().with_keys_only();
    if serializable {
        opts = opts.with_serializable();
    }
    let r = c.get(prefix, Some(opts)).await.ok()?;
    Some(
        r.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect(),
    )
}

#[test]
fn three_and_five_members_elect_one_leader_and_serve_any_member() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for n in [3, 5] {
        let c = Cluster::start(Kind::Ballast, n, &[]);
        let eps = c.endpoints();
        rt.block_on(async {
            let leader = eventually(Duration::from_secs(10), || agreed_leader(&eps)).await;
            let mut ids = Vec::new();
            for ep in &eps {
                ids.push(status(ep).await.unwrap().0);
            }
            assert_eq!(ids.iter().filter(|id| **id == leader).count(), 1);
            // A write through each member (followers forward), then every member reads all of
            // them linearizably: no member may answer from behind.
            for (i, ep) in eps.iter().enumerate() {
                put(ep, &format!("k{i}"), "v").await.unwrap();
                for reader in &eps {
                    let got = keys(reader, "k", false).await.unwrap();
                    assert_eq!(got.len(), i + 1, "{n} members: {reader} after write {i}");
                }
            }
        });
    }
}

#[test]
fn killed_leader_is_replaced_within_3s_and_catches_up_on_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = Cluster::start(Kind::Ballast, 3, &[]);
    let eps = c.endpoints();
    let idx = rt.block_on(async {
        let (leader, idx) = leader_index(&eps).await;
        for i in 0..20 {
            put(&eps[(idx + 1) % 3], &format!("before/{i}"), "v")
                .await
                .unwrap();
        }
        c.members[idx].kill9();
        let killed = Instant::now();
        let survivors: Vec<String> = (0..3)
            .filter(|i| *i != idx)
            .map(|i| eps[i].clone())
            .collect();
        // A survivor that reports itself leader: the moment a new leader exists.
        eventually(Duration::from_secs(10), || async {
            for ep in &survivors {
                if let Some((me, l, _)) = status(ep).await {
                    if l == me {
                        return Some(());
                    }
                }
            }
            None
        })
        .await;
        let took = killed.elapsed();
        assert!(took < Duration::from_secs(3), "new leader after {took:?}");
        let new_leader = eventually(Duration::from_secs(10), || async {
            agreed_leader(&survivors).await.filter(|l| *l != leader)
        })
        .await;
        assert_ne!(new_leader, leader);
        eventually(Duration::from_secs(10), || async {
            put(&survivors[0], "after", "kill").await.ok()
        })
        .await;
        for ep in &survivors {
            assert_eq!(keys(ep, "before/", false).await.unwrap().len(), 20);
        }
        idx
    });
    c.members[idx].spawn();
    rt.block_on(async {
        let restarted = eps[idx].clone();
        let got = eventually(Duration::from_secs(10), || async {
            keys(&restarted, "after", true)
                .await
                .filter(|k| !k.is_empty())
        })
        .await;
        assert_eq!(got, vec!["after".to_string()]);
        assert_eq!(keys(&restarted, "before/", true).await.unwrap().len(), 20);
    });
}

#[test]
fn quorum_loss_fails_writes_within_the_deadline_and_recovers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = Cluster::start(Kind::Ballast, 3, &[]);
    let eps = c.endpoints();
    rt.block_on(async {
        eventually(Duration::from_secs(10), || agreed_leader(&eps)).await;
        put(&eps[0], "a", "1").await.unwrap();
    });
    c.members[1].kill9();
    c.members[2].kill9();
    rt.block_on(async {
        for _ in 0..2 {
            let start = Instant::now();
            let err = put(&eps[0], "b", "2").await.unwrap_err();
            let took = start.elapsed();
            assert!(took < Duration::from_millis(5500), "write hung {took:?}");
            assert!(
                [
                    "etcdserver: no leader",
                    "etcdserver: request timed out",
                    "Timeout expired",
                ]
                .iter()
                .any(|m| err.contains(m)),
                "unexpected error: {err}"
            );
        }
        // Once the lone member has stepped down, it answers at once rather than at the deadline.
        let start = Instant::now();
        let err = put(&eps[0], "b", "2").await.unwrap_err();
        assert!(err.contains("etcdserver: no leader"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(1));
    });
    c.members[1].spawn();
    rt.block_on(async {
        eventually(Duration::from_secs(10), || async {
            put(&eps[0], "c", "3").await.ok()
        })
        .await;
        // A timed-out write is ambiguous: "b" may have reached the old leader's log and
        // committed once quorum returned. "a" and "c" were acknowledged and must be there.
        let got = keys(&eps[1], "", false).await.unwrap();
        assert!(
            got.contains(&"a".to_string()) && got.contains(&"c".to_string()),
            "{got:?}"
        );
    });
}

#[test]
fn lagging_follower_catches_up_by_snapshot() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = Cluster::start(
        Kind::Ballast,
        3,
        &[
            "--snapshot-count=50",
            "--experimental-snapshot-catchup-entries=10",
        ],
    );
    let eps = c.endpoints();
    let (_, leader_idx) = rt.block_on(leader_index(&eps));
    let lagging = (leader_idx + 1) % 3;
    c.members[lagging].kill9();
    rt.block_on(async {
        let mut cl = client(&eps[leader_idx]).await.unwrap();
        for i in 0..300 {
            // The leader keeps the log for a follower that still answered in the last election
            // timeout; once it is known silent, the next compactions leave it behind.
            if i == 200 {
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            cl.put(format!("s/{i:03}"), "v", None).await.unwrap();
        }
    });
    assert!(
        c.members[leader_idx].log().contains("compacted raft log"),
        "leader never compacted its log"
    );
    c.members[lagging].spawn();
    let ep = eps[lagging].clone();
    rt.block_on(async {
        eventually(Duration::from_secs(15), || async {
            keys(&ep, "s/", true).await.filter(|k| k.len() == 300)
        })
        .await;
    });
    assert!(
        c.members[lagging].log().contains("installed snapshot"),
        "caught up without a snapshot: {}",
        c.members[lagging].log()
    );
    // The installed snapshot is durable: a kill -9 right after keeps it.
    c.members[lagging].kill9();
    c.members[lagging].spawn();
    rt.block_on(async {
        assert_eq!(keys(&ep, "s/", true).await.unwrap().len(), 300);
        put(&ep, "after", "snapshot").await.unwrap();
    });
}

/// A follower that missed 160 MiB of entries (far fewer than the catch-up window) catches up
/// from the leader's log, not a snapshot, while the leader holds only the newest of those
/// entries in memory and reads the rest back from its WAL: its memory grows by a fraction of
/// what it logged, where holding the window whole costs all of it.
#[test]
fn lagging_follower_catches_up_from_entries_the_leader_reads_back_from_its_wal() {
    const PUTS: usize = 160;
    const VALUE: usize = 1 << 20;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = Cluster::start(Kind::Ballast, 3, &[]);
    let eps = c.endpoints();
    let (_, leader_idx) = rt.block_on(leader_index(&eps));
    let lagging = (leader_idx + 1) % 3;
    c.members[lagging].kill9();
    let leader_pid = c.members[leader_idx].child.as_ref().unwrap().id();
    let before = crate::kv::rss_bytes(leader_pid);
    rt.block_on(async {
        let mut cl = client(&eps[leader_idx]).await.unwrap();
        for i in 0..PUTS {
            let value = vec![b'a' + (i % 26) as u8; VALUE];
            cl.put(format!("big/{i:03}"), value, None).await.unwrap();
        }
    });
    let grown = crate::kv::rss_bytes(leader_pid).saturating_sub(before);
    assert!(
        grown < (PUTS * VALUE / 2) as u64,
        "the leader grew by {} MiB logging {} MiB",
        grown >> 20,
        (PUTS * VALUE) >> 20
    );
    c.members[lagging].spawn();
    let ep = eps[lagging].clone();
    rt.block_on(async {
        eventually(Duration::from_secs(60), || async {
            keys(&ep, "big/", true).await.filter(|k| k.len() == PUTS)
        })
        .await;
        let mut cl = client(&ep).await.unwrap();
        let opts = GetOptions::new().with_serializable();
        let got = cl.get("big/027", Some(opts)).await.unwrap();
        assert_eq!(got.kvs()[0].value(), vec![b'b'; VALUE].as_slice());
    });
    assert!(
        !c.members[lagging].log().contains("installed snapshot"),
        "caught up by snapshot, not from the log"
    );
}
