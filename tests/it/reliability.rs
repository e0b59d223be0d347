//! The fault-injection scenarios of `crates/harness`, one test each, and the harness's own
//! test: servers with a safety rule broken on purpose must fail the matching scenario.

use ballast_harness::scenario::{self, Figures, Setup};

fn run(name: &str, setup: Setup) -> Figures {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let f = rt
        .block_on(scenario::run(name, &setup))
        .unwrap_or_else(|e| panic!("scenario {name} could not run: {e}"));
    println!("{}", f.summary());
    f
}

fn scenario(name: &str) {
    let setup = if scenario::needs_failpoints(name) {
        Setup::with_failpoints("")
    } else {
        Setup::normal()
    };
    let f = run(name, setup.unwrap());
    assert!(f.passed(), "{}", f.summary());
    assert!(
        f.acknowledged > 500,
        "too little load to prove anything:\n{}",
        f.summary()
    );
}

#[test]
fn leader_kill_loses_nothing() {
    scenario("leader-kill");
}

#[test]
fn member_kill_loses_nothing() {
    scenario("member-kill");
}

#[test]
fn minority_partition_loses_nothing() {
    scenario("minority-partition");
}

#[test]
fn isolated_leader_steps_down_without_split_brain() {
    scenario("leader-isolated");
}

#[test]
fn one_way_partition_loses_nothing() {
    scenario("one-way-partition");
}

#[test]
fn peer_delay_and_loss_lose_nothing() {
    scenario("delay-and-loss");
}

#[test]
fn leader_pause_loses_nothing() {
    scenario("leader-pause");
}

#[test]
fn crash_at_each_raft_failpoint_loses_nothing() {
    scenario("raft-failpoints");
}

#[test]
fn fsync_failure_stops_the_member() {
    scenario("fsync-failure");
}

#[test]
fn disk_full_stops_the_member() {
    scenario("disk-full");
}

#[test]
fn membership_changes_under_load_lose_nothing() {
    scenario("membership-changes");
}

#[test]
fn leases_survive_leader_changes_and_never_expire_early() {
    scenario("lease-keepalive");
}

#[test]
fn single_member_kill_loses_nothing() {
    scenario("single-member-kill");
}

/// Linearizable reads served locally (no ReadIndex): an isolated old leader answers reads
/// with stale data, and the checker must say so.
#[test]
fn harness_catches_reads_without_read_index() {
    let f = run(
        "leader-isolated",
        Setup::with_failpoints("break-local-reads=on").unwrap(),
    );
    assert_eq!(f.linearizable, "VIOLATION", "{}", f.summary());
}

/// Writes acknowledged before the WAL reaches the disk (after start-up): kill -9 loses them,
/// and the harness must count them.
#[test]
fn harness_catches_acknowledging_before_the_wal_is_written() {
    let f = run(
        "single-member-kill",
        Setup::with_failpoints("break-skip-wal-sync=on@300").unwrap(),
    );
    assert!(f.lost > 0, "{}", f.summary());
    assert!(!f.passed());
}
