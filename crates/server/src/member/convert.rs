//! Starting on an etcd member's data directory: the first start converts it in place, so
//! replacing etcd's binary with Ballast's, same flags and directories, is a migration.
//!
//! What a conversion reads: etcd's backend (`member/snap/db`: keys with every revision,
//! leases, auth, membership, alarms, the consistent index) and etcd's WAL (`member/wal`:
//! identity, hard state, and the entries past the consistent index, which Ballast's raft then
//! applies as etcd would have). What it writes: Ballast's store and log, under names etcd
//! never uses (`state::layout`). etcd's files are left exactly as they were.
//!
//! Invariant: a conversion either finishes or is redone from etcd's untouched files: a marker
//! file is made durable before Ballast's first file and removed after its last, and a start
//! that finds the marker discards Ballast's partial files first. A directory Ballast cannot
//! read (another etcd version, damage) is refused before anything is written.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use ballast_api::ballast::internal::{member_change::Kind, MemberChange};
use ballast_api::etcdserverpb::Member;
use ballast_raft::{ConfKind, ImportedEntry, ImportedLog, Node};
use ballast_state::etcd_db::MemberState;
use ballast_state::etcd_log::{self, ConfChangeKind, Converted};
use ballast_state::{etcd_db, etcd_wal, layout};

use crate::config::Config;

/// Written (and fsynced) before a conversion writes anything, removed when it is done.
const MARKER: &str = "ballast-converting";

/// The etcd releases whose files Ballast reads.
const OLDEST_MINOR: u64 = 4;
const NEWEST_MINOR: u64 = 7;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot convert etcd data directory {dir}: {reason}")]
    Refused { dir: PathBuf, reason: String },
    #[error("cannot convert etcd data directory: {0}")]
    Db(#[from] ballast_state::snapfile::SnapFileError),
    #[error("cannot convert etcd data directory: {0}")]
    Wal(#[from] etcd_wal::EtcdWalError),
    #[error("cannot convert etcd data directory: {0}")]
    Entry(#[from] etcd_log::EtcdLogError),
    #[error("cannot convert etcd data directory: {0}")]
    Raft(#[from] ballast_raft::RaftError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ConvertError + '_ {
    move |source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a conversion did, for the log.
#[derive(Debug)]
pub struct Conversion {
    pub member_id: u64,
    pub cluster_id: u64,
    pub etcd_version: String,
    pub consistent_index: u64,
    pub replayed: usize,
    pub commit: u64,
    pub members: usize,
}

/// Converts `cfg`'s data directory when it is an etcd member's and not yet Ballast's.
/// `None` when there is nothing to convert (a Ballast member, or a first start).
pub fn convert_if_etcd(cfg: &Config) -> Result<Option<Conversion>, ConvertError> {
    let member_dir = cfg.data_dir.join("member");
    let marker = member_dir.join(MARKER);
    let etcd_db = layout::etcd_db_path(&cfg.data_dir);
    if marker.exists() {
        tracing::warn!(
            data_dir = %cfg.data_dir.display(),
            "an earlier conversion from etcd did not finish; starting it again"
        );
        Node::remove_log(&cfg.wal_dir)?;
        remove_if_present(&layout::store_path(&cfg.data_dir))?;
    } else if Node::log_exists(&cfg.wal_dir) {
        return Ok(None);
    }
    if !etcd_db.exists() {
        if etcd_wal::exists(&cfg.wal_dir) {
            return Err(refused(
                cfg,
                format!(
                    "{} holds etcd's log but not its database {}",
                    cfg.wal_dir.display(),
                    etcd_db.display()
                ),
            ));
        }
        return Ok(None);
    }
    let mut f = File::open(&etcd_db).map_err(io(&etcd_db))?;
    if !etcd_db::is_etcd_db(&mut f).map_err(io(&etcd_db))? {
        return Err(refused(
            cfg,
            format!("{} is not an etcd (bbolt) database", etcd_db.display()),
        ));
    }
    let len = f.metadata().map_err(io(&etcd_db))?.len();
    let plan = plan(cfg, &mut f, len)?;

    // Everything is read and checked: from here on, write.
    std::fs::write(&marker, b"").map_err(io(&marker))?;
    sync(&marker)?;
    sync(&member_dir)?;
    let store = layout::store_path(&cfg.data_dir);
    remove_if_present(&store)?;
    etcd_db::convert_member(&mut f, len, &store, &plan.state)?;
    sync(&layout::snap_dir(&cfg.data_dir))?;
    Node::import_log(&cfg.wal_dir, &plan.log)?;
    std::fs::remove_file(&marker).map_err(io(&marker))?;
    sync(&member_dir)?;
    Ok(Some(Conversion {
        member_id: plan.log.member_id,
        cluster_id: plan.log.cluster_id,
        etcd_version: plan.version,
        consistent_index: plan.state.applied,
        replayed: plan.log.entries.len(),
        commit: plan.log.commit,
        members: plan.state.members.len(),
    }))
}

fn refused(cfg: &Config, reason: String) -> ConvertError {
    ConvertError::Refused {
        dir: cfg.data_dir.clone(),
        reason,
    }
}

fn remove_if_present(path: &Path) -> Result<(), ConvertError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// fsync a file, or a directory's entries (storage's `sync_dir` does either).
fn sync(path: &Path) -> Result<(), ConvertError> {
    ballast_storage::wal::sync_dir(path).map_err(io(path))
}

struct Plan {
    state: MemberState,
    log: ImportedLog,
    version: String,
}

/// `3.x.y` as (3, x); None when it is not a version.
fn minor(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Reads and checks everything a conversion needs; writes nothing.
fn plan(cfg: &Config, f: &mut File, len: u64) -> Result<Plan, ConvertError> {
    let mut state = etcd_db::member_state(f, len)?;
    let version = state
        .storage_version
        .clone()
        .or(state.cluster_version.clone())
        .unwrap_or_default();
    for v in [&state.cluster_version, &state.storage_version]
        .into_iter()
        .flatten()
    {
        match minor(v) {
            Some((3, m)) if (OLDEST_MINOR..=NEWEST_MINOR).contains(&m) => {}
            _ => {
                return Err(refused(
                    cfg,
                    format!("etcd version {v} is not one Ballast reads (3.{OLDEST_MINOR} to 3.{NEWEST_MINOR})"),
                ))
            }
        }
    }
    let applied = state.applied;
    let mut keep = |e: &etcd_wal::Entry| {
        e.kind() == 1 || matches!(etcd_log::membership_change(e), Ok(Some(_)))
    };
    let wal = etcd_wal::read(&cfg.wal_dir, applied, &mut keep)?;
    if wal.last_index < applied {
        return Err(refused(
            cfg,
            format!(
                "the database holds index {applied} but the log ends at {}",
                wal.last_index
            ),
        ));
    }
    let applied_term = match (applied, wal.term_at_after) {
        (0, _) => 0,
        (_, Some(t)) => t,
        (_, None) => {
            return Err(refused(
                cfg,
                format!("the log no longer holds the database's index {applied}"),
            ))
        }
    };
    let (below, after): (Vec<_>, Vec<_>) = wal.entries.iter().partition(|e| e.index() <= applied);
    choose_members(&mut state, wal.first_index == Some(1), &below)?;
    if !state.members.iter().any(|m| m.id == wal.member_id) {
        return Err(refused(
            cfg,
            format!(
                "member {:x} is not in the cluster's membership (was it removed?)",
                wal.member_id
            ),
        ));
    }
    let cost = cfg.bcrypt_cost;
    let mut hash = |p: &str| crate::auth::hash_password(p, cost).map_err(|e| e.to_string());
    let mut entries = Vec::with_capacity(after.len());
    for e in after {
        let (data, conf) = match etcd_log::convert(e, &mut hash)? {
            Converted::Normal(d) => (d, None),
            Converted::Conf {
                kind,
                node_id,
                context,
            } => {
                let kind = match kind {
                    ConfChangeKind::AddVoter => ConfKind::AddVoter,
                    ConfChangeKind::AddLearner => ConfKind::AddLearner,
                    ConfChangeKind::Remove => ConfKind::Remove,
                };
                (context, Some((kind, node_id)))
            }
        };
        entries.push(ImportedEntry {
            index: e.index(),
            term: e.term(),
            data,
            conf,
        });
    }
    let hs = wal.hard_state;
    let last_term = entries.last().map_or(applied_term, |e| e.term);
    let log = ImportedLog {
        member_id: wal.member_id,
        cluster_id: wal.cluster_id,
        applied_index: applied,
        applied_term,
        voters: ids(&state.members, false),
        learners: ids(&state.members, true),
        entries,
        term: hs.term().max(last_term),
        vote: hs.vote(),
        commit: hs.commit().max(applied).min(wal.last_index),
    };
    Ok(Plan {
        state,
        log,
        version,
    })
}

fn ids(members: &[Member], learners: bool) -> Vec<u64> {
    members
        .iter()
        .filter(|m| m.is_learner == learners)
        .map(|m| m.id)
        .collect()
}

/// The membership at the consistent index. etcd 3.5+ keeps it in the backend. etcd 3.4's
/// `snapshot restore` leaves the old cluster's records there and writes the new members only
/// to its log, which then holds the whole history: when the log does, the membership it
/// builds wins over backend records for other members.
fn choose_members(
    state: &mut MemberState,
    whole_history: bool,
    below: &[&etcd_wal::Entry],
) -> Result<(), ConvertError> {
    if !whole_history {
        return Ok(());
    }
    let mut members = BTreeMap::new();
    let mut removed = BTreeSet::new();
    for e in below {
        if let Some(c) = etcd_log::membership_change(e)? {
            replay(&mut members, &mut removed, &c);
        }
    }
    let from_db: BTreeSet<u64> = state.members.iter().map(|m| m.id).collect();
    let from_log: BTreeSet<u64> = members.keys().copied().collect();
    if from_db != from_log {
        state.members = members.into_values().collect();
        state.removed = removed.into_iter().collect();
    }
    Ok(())
}

/// One membership change on a table of members, as Ballast's applier makes it.
fn replay(members: &mut BTreeMap<u64, Member>, removed: &mut BTreeSet<u64>, c: &MemberChange) {
    let Some(m) = &c.member else { return };
    let old = members.get(&m.id).cloned();
    match (Kind::try_from(c.kind).unwrap_or(Kind::Attr), old) {
        (Kind::Add, _) => {
            members.insert(m.id, m.clone());
        }
        (Kind::Remove, _) => {
            members.remove(&m.id);
            removed.insert(m.id);
        }
        (Kind::Promote, Some(old)) => {
            members.insert(
                m.id,
                Member {
                    is_learner: false,
                    ..old
                },
            );
        }
        (Kind::Update, Some(old)) => {
            members.insert(
                m.id,
                Member {
                    peer_ur_ls: m.peer_ur_ls.clone(),
                    ..old
                },
            );
        }
        (Kind::Attr, Some(old)) => {
            members.insert(
                m.id,
                Member {
                    name: m.name.clone(),
                    client_ur_ls: m.client_ur_ls.clone(),
                    ..old
                },
            );
        }
        (_, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// etcd's configuration change adding `id`, as an entry of its WAL.
    fn add(index: u64, id: u64, name: &str) -> etcd_wal::Entry {
        #[derive(Clone, PartialEq, Message)]
        struct Cc {
            #[prost(int32, tag = "2")]
            kind: i32,
            #[prost(uint64, tag = "3")]
            node_id: u64,
            #[prost(bytes = "vec", tag = "4")]
            context: Vec<u8>,
        }
        let ctx = format!(r#"{{"id":{id},"peerURLs":["http://{name}:2380"],"name":"{name}"}}"#);
        let cc = Cc {
            kind: 0,
            node_id: id,
            context: ctx.into_bytes(),
        };
        etcd_wal::Entry {
            kind: Some(1),
            term: Some(1),
            index: Some(index),
            data: Some(cc.encode_to_vec()),
        }
    }

    fn member(id: u64, client: &str) -> Member {
        Member {
            id,
            name: format!("m{id}"),
            client_ur_ls: vec![client.into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_whole_log_replaces_another_clusters_members_and_keeps_matching_ones() {
        let log = [add(1, 1, "m1"), add(2, 2, "m2")];
        let below: Vec<&etcd_wal::Entry> = log.iter().collect();
        // etcd 3.4's restore: the backend still lists the old cluster's member.
        let mut restored = MemberState {
            members: vec![member(9, "http://old:2379")],
            ..Default::default()
        };
        choose_members(&mut restored, true, &below).expect("choose");
        assert_eq!(ids(&restored.members, false), vec![1, 2]);
        // A live member's backend agrees with its log and knows more (client URLs): kept.
        let mut live = MemberState {
            members: vec![member(1, "http://a:2379"), member(2, "http://b:2379")],
            ..Default::default()
        };
        let kept = live.members.clone();
        choose_members(&mut live, true, &below).expect("choose");
        assert_eq!(live.members, kept);
        // A log without the whole history never overrides the backend.
        let mut partial = restored.clone();
        partial.members = vec![member(9, "x")];
        choose_members(&mut partial, false, &below).expect("choose");
        assert_eq!(ids(&partial.members, false), vec![9]);
    }

    #[test]
    fn versions_outside_34_to_37_are_not_read() {
        let ok = |v: &str| matches!(minor(v), Some((3, m)) if (OLDEST_MINOR..=NEWEST_MINOR).contains(&m));
        assert!(ok("3.4.0") && ok("3.5.0") && ok("3.7.0"));
        assert!(!ok("3.3.0") && !ok("3.8.0") && !ok("4.0.0") && !ok("junk"));
    }
}
