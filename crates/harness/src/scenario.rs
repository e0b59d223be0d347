//! The fault scenarios. Each starts a cluster, runs clients and watchers against it, injects
//! its faults, heals everything, and then checks: all members converge to the same revision
//! and HashKV; every acknowledged write is in the store at the revision it was acknowledged
//! with; the history is linearizable; every watcher's events are right.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::kv_client::KvClient;
use ballast_api::etcdserverpb::RangeRequest;

use crate::cluster::{Binary, Cluster, Error, Options, ELECTION_MS};
use crate::history::{Entry, Op, Outcome};
use crate::linearize;
use crate::proxy::Link;
use crate::watchcheck::{self, Truth, WatchLog};
use crate::workload::{Clients, Endpoints, Mix};

/// How a scenario runs: which binary, with which failpoints armed on every member.
#[derive(Clone, Debug)]
pub struct Setup {
    pub binary: Binary,
    /// Failpoints every member starts with (e.g. a `break-*` switch).
    pub failpoints: String,
    /// Client tasks.
    pub clients: usize,
}

impl Setup {
    pub fn normal() -> Result<Setup, Error> {
        Ok(Setup {
            binary: Binary::ballast()?,
            failpoints: String::new(),
            clients: 8,
        })
    }

    pub fn with_failpoints(failpoints: &str) -> Result<Setup, Error> {
        Ok(Setup {
            binary: Binary::with_failpoints()?,
            failpoints: failpoints.to_string(),
            clients: 8,
        })
    }
}

/// What a scenario measured and found.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub name: String,
    pub members: usize,
    pub attempted: usize,
    pub acknowledged: usize,
    pub ambiguous: usize,
    pub failed: usize,
    /// Acknowledged writes missing from the store at their revision.
    pub lost: usize,
    pub linearizable: String,
    pub watch: String,
    /// Time from each leader fault to a new agreed leader.
    pub leader_times: Vec<Duration>,
    pub problems: Vec<String>,
    pub elapsed: Duration,
    /// How long the linearizability check took.
    pub check_time: Duration,
    /// Snapshots members installed from their leader (from the members' logs).
    pub snapshots: usize,
}

impl Figures {
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.lost == 0
    }

    pub fn leader_times_text(&self) -> String {
        if self.leader_times.is_empty() {
            return "-".into();
        }
        let ms: Vec<String> = self
            .leader_times
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect();
        format!("{} s", ms.join(", "))
    }

    /// The scenario's figures as text, for test output.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "scenario {} ({} members, {:.1} s): {}\n  operations: {} attempted, {} acknowledged, {} ambiguous, {} failed\n  acknowledged writes lost: {}\n  linearizability: {} (checked in {:.2} s)\n  watch: {}\n  time to new leader: {}\n  snapshots installed: {}\n",
            self.name,
            self.members,
            self.elapsed.as_secs_f64(),
            if self.passed() { "PASS" } else { "FAIL" },
            self.attempted,
            self.acknowledged,
            self.ambiguous,
            self.failed,
            self.lost,
            self.linearizable,
            self.check_time.as_secs_f64(),
            self.watch,
            self.leader_times_text(),
            self.snapshots,
        );
        for p in &self.problems {
            s.push_str(&format!("  problem: {p}\n"));
        }
        s
    }
}

/// A scenario in progress.
pub struct Run {
    pub cluster: Cluster,
    pub endpoints: Endpoints,
    /// Indexes of the current members (removed ones leave this list).
    pub members: Vec<usize>,
    pub fig: Figures,
    mix: Mix,
    clients: Option<Clients>,
    watchers: Vec<(String, Arc<Mutex<WatchLog>>)>,
    watch_stop: Arc<AtomicBool>,
    started: Instant,
}

impl Run {
    pub async fn start(name: &str, n: usize, setup: &Setup, extra: &[&str]) -> Result<Run, Error> {
        let opts = Options {
            binary: setup.binary.clone(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            failpoints: setup.failpoints.clone(),
        };
        let cluster = Cluster::start(n, opts).await?;
        let endpoints: Endpoints = Arc::new(Mutex::new(cluster.endpoints()));
        let mix = Mix::default();
        let clients = Clients::start(setup.clients, endpoints.clone(), &mix);
        let watch_stop = Arc::new(AtomicBool::new(false));
        let mut run = Run {
            cluster,
            endpoints,
            members: (0..n).collect(),
            fig: Figures {
                name: name.to_string(),
                members: n,
                ..Figures::default()
            },
            mix,
            clients: Some(clients),
            watchers: Vec::new(),
            watch_stop,
            started: Instant::now(),
        };
        // A live watcher on each member, and one replaying from the first revision.
        for i in 0..n {
            run.watch(&format!("live@m{i}"), i, 0);
        }
        run.watch("from-1@m0", 0, 1);
        Ok(run)
    }

    fn watch(&mut self, name: &str, first: usize, start: i64) {
        let log = Arc::new(Mutex::new(WatchLog::default()));
        tokio::spawn(watchcheck::watcher(
            first,
            self.endpoints.clone(),
            self.mix.prefix.clone().into_bytes(),
            start,
            log.clone(),
            self.watch_stop.clone(),
        ));
        self.watchers.push((name.to_string(), log));
    }

    /// Progress lines on stderr when `BALLAST_HARNESS_VERBOSE` is set.
    pub fn say(&self, what: &str) {
        if std::env::var_os("BALLAST_HARNESS_VERBOSE").is_some() {
            eprintln!(
                "[{:6.2}s] {}: {what}",
                self.started.elapsed().as_secs_f64(),
                self.fig.name
            );
        }
    }

    pub fn problem(&mut self, p: impl Into<String>) {
        self.fig.problems.push(p.into());
    }

    pub async fn sleep(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    pub async fn leader(&mut self) -> Result<usize, Error> {
        self.cluster.leader().await
    }

    /// Waits for a leader other than the members in `except` and records how long it took
    /// since `since`.
    pub async fn new_leader(&mut self, since: Instant, except: &[usize]) -> Result<usize, Error> {
        let (l, _) = self
            .cluster
            .wait_leader(Duration::from_secs(15), except)
            .await?;
        self.fig.leader_times.push(since.elapsed());
        Ok(l)
    }

    /// After a quiet moment: kill -9 the leader, wait for a new one, restart the old one.
    pub async fn kill_leader_round(&mut self) -> Result<(), Error> {
        self.sleep(1500).await;
        let l = self.leader().await?;
        let t = Instant::now();
        self.cluster.kill9(l);
        self.new_leader(t, &[l]).await?;
        self.sleep(1000).await;
        self.cluster.restart(l, "")
    }

    /// Followers of the current leader.
    pub async fn followers(&mut self) -> Result<(usize, Vec<usize>), Error> {
        let l = self.leader().await?;
        let f = self.members.iter().copied().filter(|&i| i != l).collect();
        Ok((l, f))
    }

    pub fn set_endpoints(&self) {
        let eps = self
            .members
            .iter()
            .map(|&i| self.cluster.nodes[i].endpoint())
            .collect();
        *self.endpoints.lock().unwrap_or_else(|p| p.into_inner()) = eps;
    }

    /// Restarts a member armed with `failpoints` and waits (up to `limit`) for it to die.
    /// Returns whether it did.
    pub async fn crash_with(
        &mut self,
        i: usize,
        failpoints: &str,
        limit: Duration,
    ) -> Result<bool, Error> {
        self.cluster.restart(i, failpoints)?;
        Ok(self.wait_exit(i, limit).await)
    }

    /// Waits (up to `limit`) for member `i`'s process to end by itself.
    async fn wait_exit(&mut self, i: usize, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.cluster.nodes[i].exited().is_some() {
                return true;
            }
            self.sleep(50).await;
        }
        false
    }

    /// Heals every fault, checks everything, and returns the figures.
    pub async fn finish(mut self) -> Figures {
        self.cluster.heal();
        for &i in &self.members {
            self.cluster.resume(i);
        }
        for i in self.members.clone() {
            if !self.cluster.nodes[i].running() {
                let log = self.cluster.nodes[i].log_tail(5);
                self.problem(format!(
                    "{} was not running at the end:\n{log}",
                    self.cluster.nodes[i].name
                ));
                if let Err(e) = self.cluster.restart(i, "") {
                    self.problem(e);
                }
            }
        }
        self.say("healed");
        // Let the clients see the healed cluster for a moment before stopping them.
        self.sleep(1000).await;
        let history = match self.clients.take() {
            Some(c) => c.stop().await,
            None => Arc::new(crate::history::History::new()),
        };
        self.say("clients stopped");
        let members = self.members.clone();
        let converged = self
            .cluster
            .converge(&members, Duration::from_secs(30))
            .await;
        let rev = match converged {
            Ok((rev, _)) => rev,
            Err(e) => {
                self.problem(e);
                self.fig.elapsed = self.started.elapsed();
                return self.fig;
            }
        };
        self.say("converged");
        let ep = self.cluster.nodes[members[0]].endpoint();
        let mut entries = history.entries();
        if let Err(e) = self.final_reads(&ep, &history, &mut entries).await {
            self.problem(e);
        }
        self.count(&entries, history.failed_reads());
        let prefix = self.mix.prefix.clone().into_bytes();
        let truth = match Truth::read(&ep, &prefix, rev).await {
            Ok(t) => t,
            Err(e) => {
                self.problem(e);
                self.fig.elapsed = self.started.elapsed();
                return self.fig;
            }
        };
        self.say("read ground truth");
        for p in resolve_ambiguous(&mut entries, &truth, &self.mix) {
            self.problem(p);
        }
        let t = Instant::now();
        let verdict = linearize::check(&entries, Duration::from_secs(60));
        self.fig.check_time = t.elapsed();
        self.fig.linearizable = if verdict.ok() {
            format!(
                "linearizable ({} ops, {} keys)",
                verdict.operations, verdict.keys
            )
        } else if let Some(v) = &verdict.violation {
            let lines: Vec<String> = v.iter().map(|e| format!("    {e:?}")).collect();
            self.problem(format!(
                "not linearizable; minimal sub-history:\n{}",
                lines.join("\n")
            ));
            "VIOLATION".into()
        } else {
            self.problem("linearizability check timed out");
            "timed out".into()
        };
        self.say("checked linearizability");
        self.lost_writes(&entries, &truth);
        self.check_watchers(&truth).await;
        self.say("checked watchers");
        self.fig.snapshots = self
            .cluster
            .nodes
            .iter()
            .map(|n| {
                std::fs::read_to_string(&n.log_path)
                    .map(|l| l.matches("installed snapshot").count())
                    .unwrap_or(0)
            })
            .sum();
        self.fig.elapsed = self.started.elapsed();
        self.fig
    }

    /// One linearizable read per key after everything healed, added to the history: a write
    /// that was acknowledged and then lost shows up here as a violation.
    async fn final_reads(
        &self,
        ep: &str,
        history: &crate::history::History,
        entries: &mut Vec<Entry>,
    ) -> Result<(), Error> {
        let mut kv = KvClient::new(crate::cluster::channel(ep).await?);
        for key in 0..self.mix.keys {
            let invoke = history.now();
            let r = kv
                .range(RangeRequest {
                    key: self.mix.key(key),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("final read: {}", e.message()))?
                .into_inner();
            let v = r
                .kvs
                .first()
                .and_then(|kv| crate::workload::parse(&kv.value));
            entries.push(Entry {
                client: usize::MAX,
                key,
                op: Op::Get,
                invoke,
                complete: history.now(),
                outcome: Outcome::Value(v),
            });
        }
        Ok(())
    }

    fn count(&mut self, entries: &[Entry], failed_reads: usize) {
        self.fig.attempted = entries.len() + failed_reads;
        self.fig.ambiguous = entries
            .iter()
            .filter(|e| e.outcome == Outcome::Ambiguous)
            .count();
        self.fig.acknowledged = entries.len() - self.fig.ambiguous;
        self.fig.failed = failed_reads;
    }

    /// Every acknowledged write must be in the store, at its revision, with its value.
    fn lost_writes(&mut self, entries: &[Entry], truth: &Truth) {
        let mut lost = Vec::new();
        for e in entries {
            let (Outcome::Written(rev), Op::Put(v) | Op::Cas { new: v, .. }) = (e.outcome, e.op)
            else {
                continue;
            };
            let want = (self.mix.key(e.key), Some(v.to_string().into_bytes()));
            if truth.changes.get(&rev) != Some(&want) {
                lost.push(format!("key {} value {v} at revision {rev}", e.key));
            }
        }
        self.fig.lost = lost.len();
        if !lost.is_empty() {
            let shown: Vec<String> = lost.iter().take(5).cloned().collect();
            self.problem(format!(
                "{} acknowledged writes lost, e.g. {}",
                lost.len(),
                shown.join("; ")
            ));
        }
    }

    async fn check_watchers(&mut self, truth: &Truth) {
        let target = truth.changes.keys().next_back().copied().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let behind = self.watchers.iter().any(|(_, l)| {
                let l = l.lock().unwrap_or_else(|p| p.into_inner());
                let last = l
                    .seen
                    .iter()
                    .map(|s| match s {
                        watchcheck::Seen::Event { rev, .. } => *rev,
                        watchcheck::Seen::Progress(p) => *p,
                    })
                    .max()
                    .unwrap_or(0);
                last < target
            });
            if !behind {
                break;
            }
            self.sleep(100).await;
        }
        self.watch_stop.store(true, Ordering::Relaxed);
        let mut ok = 0;
        let n = self.watchers.len();
        let mut errs = Vec::new();
        let mut resumed = 0;
        for (name, log) in &self.watchers {
            let l = log.lock().unwrap_or_else(|p| p.into_inner());
            resumed += l.reconnects;
            let e = watchcheck::check(name, &l, truth);
            if e.is_empty() {
                ok += 1;
            }
            errs.extend(e);
        }
        self.fig.watch = format!("{ok}/{n} watchers correct ({resumed} resumptions)");
        for e in errs.into_iter().take(10) {
            self.problem(e);
        }
    }
}

/// Settles ambiguous writes with the store's own history. Values are unique, so a put or a
/// compare-and-set whose value never appears at any revision did not happen and leaves the
/// history; one whose value appears at revision r did happen (a CAS then succeeded). Writes
/// take effect in revision order, so it took effect before any acknowledged write with a
/// later revision completed: that bounds its completion. Returns writes that were invoked
/// after a later-revision write had already completed (revision order against real time).
fn resolve_ambiguous(entries: &mut Vec<Entry>, truth: &Truth, mix: &Mix) -> Vec<String> {
    let mut written: std::collections::HashMap<(Vec<u8>, Vec<u8>), i64> =
        std::collections::HashMap::new();
    for (rev, (k, v)) in &truth.changes {
        if let Some(v) = v {
            written.insert((k.clone(), v.clone()), *rev);
        }
    }
    // Earliest completion among acknowledged writes at or after each revision.
    let mut acked: Vec<(i64, u64)> = entries
        .iter()
        .filter_map(|e| match e.outcome {
            Outcome::Written(rev) => Some((rev, e.complete)),
            _ => None,
        })
        .collect();
    acked.sort_unstable();
    let mut suffix_min = vec![u64::MAX; acked.len() + 1];
    for i in (0..acked.len()).rev() {
        suffix_min[i] = suffix_min[i + 1].min(acked[i].1);
    }
    let completed_after = |rev: i64| suffix_min[acked.partition_point(|(r, _)| *r <= rev)];
    let mut problems = Vec::new();
    entries.retain_mut(|e| {
        if e.outcome != Outcome::Ambiguous {
            return true;
        }
        let v = match e.op {
            Op::Put(v) | Op::Cas { new: v, .. } => v,
            _ => return true,
        };
        let Some(&rev) = written.get(&(mix.key(e.key), v.to_string().into_bytes())) else {
            return false;
        };
        e.outcome = Outcome::Written(rev);
        let bound = completed_after(rev);
        if bound < e.invoke {
            problems.push(format!(
                "write of {v} at revision {rev} was sent after a write with a later revision completed"
            ));
        } else {
            e.complete = bound;
        }
        true
    });
    problems
}

/// Every scenario by name, in the order of the reliability report.
pub const ALL: &[&str] = &[
    "leader-kill",
    "member-kill",
    "minority-partition",
    "leader-isolated",
    "one-way-partition",
    "delay-and-loss",
    "leader-pause",
    "raft-failpoints",
    "fsync-failure",
    "disk-full",
    "membership-changes",
    "lease-keepalive",
    "single-member-kill",
];

/// Whether a scenario needs the server built with failpoints.
pub fn needs_failpoints(name: &str) -> bool {
    matches!(name, "raft-failpoints" | "fsync-failure" | "disk-full")
}

/// Runs the named scenario.
pub async fn run(name: &str, setup: &Setup) -> Result<Figures, Error> {
    match name {
        "leader-kill" => leader_kill(setup).await,
        "member-kill" => member_kill(setup).await,
        "minority-partition" => minority_partition(setup).await,
        "leader-isolated" => leader_isolated(setup).await,
        "one-way-partition" => one_way_partition(setup).await,
        "delay-and-loss" => delay_and_loss(setup).await,
        "leader-pause" => leader_pause(setup).await,
        "raft-failpoints" => raft_failpoints(setup).await,
        "fsync-failure" => disk_fault(setup, "fsync-failure", "wal-fsync=eio").await,
        "disk-full" => disk_fault(setup, "disk-full", "wal-write=enospc").await,
        "membership-changes" => membership_changes(setup).await,
        "lease-keepalive" => crate::leases::lease_keepalive(setup).await,
        "single-member-kill" => single_member_kill(setup).await,
        _ => Err(format!("unknown scenario {name}")),
    }
}

/// Scenario 1: kill -9 of the leader, three times, each restarted after a new leader is up.
async fn leader_kill(setup: &Setup) -> Result<Figures, Error> {
    let mut r = Run::start("leader-kill", 3, setup, &[]).await?;
    for _ in 0..3 {
        r.kill_leader_round().await?;
    }
    r.sleep(1500).await;
    Ok(r.finish().await)
}

/// Scenario 2: kill -9 of random members of five: one at a time, two at once, then all at once.
async fn member_kill(setup: &Setup) -> Result<Figures, Error> {
    use rand::seq::SliceRandom;
    // Small log limits, so members that come back after a kill often need a snapshot.
    let mut r = Run::start(
        "member-kill",
        5,
        setup,
        &[
            "--snapshot-count=500",
            "--experimental-snapshot-catchup-entries=50",
        ],
    )
    .await?;
    let rounds: [usize; 4] = [1, 1, 2, 5];
    for k in rounds {
        r.sleep(1500).await;
        let l = r.leader().await?;
        let mut victims = r.members.clone();
        victims.shuffle(&mut rand::thread_rng());
        victims.truncate(k);
        let t = Instant::now();
        for &v in &victims {
            r.cluster.kill9(v);
        }
        if k == r.members.len() {
            // Power cut: everything comes back from disk alone.
            r.sleep(500).await;
            for &v in &victims {
                r.cluster.restart(v, "")?;
            }
            r.new_leader(t, &[]).await?;
        } else {
            if victims.contains(&l) {
                r.new_leader(t, &victims).await?;
            }
            r.sleep(1000).await;
            for &v in &victims {
                r.cluster.restart(v, "")?;
            }
        }
    }
    r.sleep(1500).await;
    Ok(r.finish().await)
}

/// Scenario 13: kill -9 of a lone member under writes: everything acknowledged must come back from
/// its own disk, with no peer to fill gaps.
async fn single_member_kill(setup: &Setup) -> Result<Figures, Error> {
    let mut r = Run::start("single-member-kill", 1, setup, &[]).await?;
    for _ in 0..3 {
        r.sleep(1500).await;
        let t = Instant::now();
        r.cluster.kill9(0);
        r.cluster.restart(0, "")?;
        r.new_leader(t, &[]).await?;
    }
    r.sleep(1500).await;
    Ok(r.finish().await)
}

/// Scenario 3: Partitions of five members: two followers cut off, then a minority holding the leader.
async fn minority_partition(setup: &Setup) -> Result<Figures, Error> {
    let mut r = Run::start("minority-partition", 5, setup, &[]).await?;
    r.sleep(1000).await;
    let (l, f) = r.followers().await?;
    r.cluster.partition(&[&[f[0], f[1]], &[l, f[2], f[3]]]);
    r.sleep(3000).await;
    r.cluster.heal();
    r.sleep(1500).await;
    let (l, f) = r.followers().await?;
    let t = Instant::now();
    r.cluster.partition(&[&[l, f[0]], &[f[1], f[2], f[3]]]);
    r.new_leader(t, &[l, f[0]]).await?;
    r.sleep(2000).await;
    r.cluster.heal();
    r.sleep(1500).await;
    Ok(r.finish().await)
}

/// Scenario 4: The leader cut off from both followers: it must step down (check-quorum), the others
/// elect a new leader, and nothing the old one does can be acknowledged.
async fn leader_isolated(setup: &Setup) -> Result<Figures, Error> {
    let mut r = Run::start("leader-isolated", 3, setup, &[]).await?;
    for _ in 0..2 {
        r.sleep(1500).await;
        let (l, f) = r.followers().await?;
        let t = Instant::now();
        r.cluster.partition(&[&[l], &f]);
        r.new_leader(t, &[l]).await?;
        // Check-quorum: the old leader notices within an election timeout or two.
        let old = r.cluster.nodes[l].id;
        let deadline = Instant::now() + Duration::from_millis(3 * ELECTION_MS);
        let mut stepped_down = false;
        while Instant::now() < deadline {
            if let Ok(s) = r.cluster.status(l).await {
                if s.leader != old {
                    stepped_down = true;
                    break;
                }
            }
            r.sleep(100).await;
        }
        if !stepped_down {
            r.problem(format!(
                "isolated leader {} did not step down",
                r.cluster.nodes[l].name
            ));
        }
        r.sleep(1500).await;
        r.cluster.heal();
    }
    r.sleep(1500).await;
    Ok(r.finish().await)
}

/// Scenario 5: One-way cuts: the leader's outbound messages lost, then one follower's inbound.
async fn one_way_partition(setup: &Setup) -> Result<Figures, Error> {
    let mut r = Run::start("one-way-partition", 3, setup, &[]).await?;
    r.sleep(1500).await;
    let (l, f) = r.followers().await?;
    let t = Instant::now();
    for &x in &f {
        r.cluster.block(l, x);
    }
    r.new_leader(t, &[l]).await?;
    r.sleep(2000).await;
    r.cluster.heal();
    r.sleep(1500).await;
    let (l, f) = r.followers().await?;
    r.cluster.block(l, f[0]);
    r.cluster.block(f[1], f[0]);
    r.sleep(3000).await;
    r.cluster.heal();
    r.sleep(1500).await;
    Ok(r.finish().await)
}

/// Scenario 6: Every peer link delayed (30 ms) and lossy (5%), then one link much worse.
async fn delay_and_loss(setup: &Setup) -> Result<Figures, Error> {
    let mut r = Run::start("delay-and-loss", 3, setup, &[]).await?;
    r.sleep(1000).await;
    r.cluster.net.set_default(Link {
        blocked: false,
        delay: Duration::from_millis(30),
        drop: 0.05,
    });
    r.sleep(4000).await;
    let (l, f) = r.followers().await?;
    let bad = Link {
        blocked: false,
        delay: Duration::from_millis(300),
        drop: 0.3,
    };
    let (a, b) = (r.cluster.nodes[l].id, r.cluster.nodes[f[0]].id);
    r.cluster.net.set(a, b, bad);
    r.cluster.net.set(b, a, bad);
    r.sleep(3000).await;
    r.cluster.heal();
    r.sleep(1500).await;
    Ok(r.finish().await)
}

/// Scenario 7: SIGSTOP of the leader for three election timeouts, then SIGCONT, twice.
async fn leader_pause(setup: &Setup) -> Result<Figures, Error> {
    let mut r = Run::start("leader-pause", 3, setup, &[]).await?;
    for _ in 0..2 {
        r.sleep(1500).await;
        let l = r.leader().await?;
        let t = Instant::now();
        r.cluster.pause(l);
        r.new_leader(t, &[l]).await?;
        let rest = Duration::from_millis(3 * ELECTION_MS).saturating_sub(t.elapsed());
        tokio::time::sleep(rest).await;
        r.cluster.resume(l);
    }
    r.sleep(1500).await;
    Ok(r.finish().await)
}

/// Scenario 8: A crash at each raft boundary, alternating between the leader and a follower.
async fn raft_failpoints(setup: &Setup) -> Result<Figures, Error> {
    // Small log limits: log compaction, in-memory trimming and snapshot transfers to the
    // restarted members all happen many times.
    let mut r = Run::start(
        "raft-failpoints",
        3,
        setup,
        &[
            "--snapshot-count=200",
            "--experimental-snapshot-catchup-entries=50",
        ],
    )
    .await?;
    let points = [
        ("raft-before-save", 40),
        ("raft-after-save", 40),
        ("apply-before", 40),
        ("apply-after", 40),
        ("raft-before-snapshot", 1),
        ("raft-after-snapshot", 1),
    ];
    for (n, (point, pass)) in points.into_iter().enumerate() {
        r.sleep(800).await;
        let (l, f) = r.followers().await?;
        let target = if n % 2 == 0 { l } else { f[0] };
        let spec = format!("{point}=abort@{pass}");
        if !r.crash_with(target, &spec, Duration::from_secs(15)).await? {
            r.problem(format!("failpoint {point} never fired"));
        }
        r.cluster.restart(target, "")?;
    }
    r.sleep(1500).await;
    Ok(r.finish().await)
}

/// Scenario 9, 10: A WAL I/O failure on a follower, then on a member made leader: the member must stop
/// instead of acknowledging, and come back cleanly once the disk is fine.
async fn disk_fault(setup: &Setup, name: &str, fault: &str) -> Result<Figures, Error> {
    let mut r = Run::start(name, 3, setup, &[]).await?;
    r.sleep(1000).await;
    let (_, f) = r.followers().await?;
    let spec = format!("{fault}@30");
    if !r.crash_with(f[0], &spec, Duration::from_secs(10)).await? {
        r.problem(format!(
            "{} kept running after {fault}",
            r.cluster.nodes[f[0]].name
        ));
    }
    let log = r.cluster.nodes[f[0]].log_tail(20);
    if !log.contains("stopping") && !log.contains("storage failure") {
        // The exit status tells a logged failure that scrolled away from a silent death.
        let status = r.cluster.nodes[f[0]].exited();
        r.problem(format!(
            "no storage failure reported in the log (exit {status:?}):\n{log}"
        ));
    }
    r.cluster.restart(f[0], "")?;
    r.sleep(1500).await;
    // The same on the leader: arm a member, then hand it leadership.
    let (l, f) = r.followers().await?;
    let target = f[1];
    // Armed late enough that leadership moves to it first (the count runs from its start).
    let spec = format!("{fault}@1000");
    r.cluster.restart(target, &spec)?;
    r.sleep(500).await;
    let id = r.cluster.nodes[target].id;
    let via = r.cluster.nodes[l].endpoint();
    let mut led = false;
    for _ in 0..5 {
        if crate::leases::move_leader(&via, id).await.is_ok() {
            led = true;
            break;
        }
        r.sleep(300).await;
    }
    if !led {
        r.problem(format!(
            "could not hand leadership to the armed member before its {fault}"
        ));
    }
    let died = r.wait_exit(target, Duration::from_secs(15)).await;
    if !died {
        let name = r.cluster.nodes[target].name.clone();
        r.problem(format!("{name} kept running after {fault}"));
    } else if led {
        // Measured from when its death was noticed (within 50 ms).
        r.new_leader(Instant::now(), &[target]).await?;
    }
    r.cluster.restart(target, "")?;
    r.sleep(1500).await;
    Ok(r.finish().await)
}

/// Scenario 11: A learner added, caught up and promoted, then an original member (the leader when
/// possible) removed, all under load.
async fn membership_changes(setup: &Setup) -> Result<Figures, Error> {
    let mut r = Run::start("membership-changes", 3, setup, &[]).await?;
    r.sleep(1500).await;
    let l = r.leader().await?;
    let new = r.cluster.add_member(l, true).await?;
    r.cluster.promote(l, new, Duration::from_secs(20)).await?;
    r.members.push(new);
    r.set_endpoints();
    r.sleep(1500).await;
    let l = r.leader().await?;
    let via = r.members.iter().copied().find(|&i| i != l).unwrap_or(l);
    let t = Instant::now();
    r.cluster.remove_member(via, l).await?;
    r.members.retain(|&i| i != l);
    r.set_endpoints();
    r.new_leader(t, &[l]).await?;
    // A removed member stops by itself.
    if !r.wait_exit(l, Duration::from_secs(10)).await {
        r.problem("removed member kept running");
    }
    r.sleep(1500).await;
    Ok(r.finish().await)
}
