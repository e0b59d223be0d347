//! Snapshot objects and their manifests. A snapshot is `ballast-<UTC time>-rev<revision>-<hash>.db`
//! (names sort by time) and counts only once its manifest, `<same name>.json`, exists: the
//! manifest is written after the snapshot is stored and checked, so a killed or failed upload
//! never looks like a backup. Retention keeps the newest by count and age.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::{BackupStoreError, Result};

const PREFIX: &str = "ballast-";
const DB: &str = ".db";
const MANIFEST: &str = ".json";
/// Largest manifest read back; real ones are a few hundred bytes.
pub const MANIFEST_LIMIT: u64 = 64 << 10;

/// A snapshot's identity, as its object names carry it. Orders by time, then revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotName {
    pub unix: u64,
    pub revision: i64,
    pub hash: u32,
}

/// Which of a snapshot's two objects a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Db,
    Manifest,
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time.
fn stamp(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = ballast_net::time::utc_civil(secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// RFC 3339 UTC for a Unix time.
pub fn rfc3339(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = ballast_net::time::utc_civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn parse_stamp(s: &str) -> Option<u64> {
    use ballast_net::time::{checked_unix_of_civil, digits};
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(digits);
    checked_unix_of_civil(
        num(0..4)?,
        num(4..6)?,
        num(6..8)?,
        num(9..11)?,
        num(11..13)?,
        num(13..15)?,
    )
}

impl SnapshotName {
    fn stem(&self) -> String {
        format!(
            "{PREFIX}{}-rev{:012}-{:08x}",
            stamp(self.unix),
            self.revision,
            self.hash
        )
    }

    /// The snapshot file's object name.
    pub fn db(&self) -> String {
        format!("{}{DB}", self.stem())
    }

    /// The manifest's object name.
    pub fn manifest(&self) -> String {
        format!("{}{MANIFEST}", self.stem())
    }

    /// Reads an object name back; `None` for anything that is not one of a snapshot's two.
    pub fn parse(name: &str) -> Option<(SnapshotName, Part)> {
        let (stem, part) = if let Some(s) = name.strip_suffix(DB) {
            (s, Part::Db)
        } else {
            (name.strip_suffix(MANIFEST)?, Part::Manifest)
        };
        let rest = stem.strip_prefix(PREFIX)?;
        let (ts, rest) = rest.split_once("-rev")?;
        let (rev, hash) = rest.split_once('-')?;
        if rev.is_empty() || !rev.bytes().all(|c| c.is_ascii_digit()) || hash.len() != 8 {
            return None;
        }
        let n = SnapshotName {
            unix: parse_stamp(ts)?,
            revision: rev.parse().ok()?,
            hash: u32::from_str_radix(hash, 16).ok()?,
        };
        // Only the canonical spelling: one snapshot, one name.
        (n.stem() == stem).then_some((n, part))
    }
}

/// What a store records about one snapshot, beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The snapshot's object name.
    pub snapshot: String,
    pub revision: i64,
    /// The raft index the snapshot's store holds: the archive replays from the next one.
    #[serde(default)]
    pub index: u64,
    /// The raft term of the entry at `index` (0: not known): the archive replayed after it must
    /// continue this history.
    #[serde(default)]
    pub term: u64,
    /// The snapshot's hash, as `snapshot status` prints it.
    pub hash: u32,
    /// Bytes of the snapshot object.
    pub size: u64,
    pub total_keys: u64,
    /// RFC 3339 UTC.
    pub created: String,
    /// The store's state in the snapshot was read by then (Unix milliseconds): a restore to
    /// a time starts from a snapshot taken by that time.
    #[serde(default)]
    pub taken_ms: u64,
    /// The member that wrote it, and its cluster (hexadecimal, as etcdctl prints IDs).
    pub member_id: String,
    pub cluster_id: String,
}

/// What a store holds, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// Snapshots with their manifests, and the snapshot object's size.
    pub complete: Vec<(SnapshotName, u64)>,
    /// Snapshot objects without a manifest: an upload in progress or one that died.
    pub incomplete: Vec<SnapshotName>,
    /// Manifests whose snapshot object is gone.
    pub stray: Vec<SnapshotName>,
}

impl Catalog {
    /// The newest complete snapshot at or below `revision` (any, if `None`).
    pub fn newest_at_or_below(&self, revision: Option<i64>) -> Option<SnapshotName> {
        self.complete
            .iter()
            .rev()
            .map(|(n, _)| *n)
            .find(|n| revision.is_none_or(|r| n.revision <= r))
    }
}

/// Lists the snapshots in `store`.
pub async fn catalog(store: &Store) -> Result<Catalog> {
    use std::collections::BTreeMap;
    let mut seen: BTreeMap<SnapshotName, (Option<u64>, bool)> = BTreeMap::new();
    for o in store.list().await? {
        if let Some((n, part)) = SnapshotName::parse(&o.name) {
            let e = seen.entry(n).or_default();
            match part {
                Part::Db => e.0 = Some(o.size),
                Part::Manifest => e.1 = true,
            }
        }
    }
    let mut c = Catalog::default();
    for (n, found) in seen {
        match found {
            (Some(size), true) => c.complete.push((n, size)),
            (Some(_), false) => c.incomplete.push(n),
            (None, _) => c.stray.push(n),
        }
    }
    Ok(c)
}

/// Reads and checks a snapshot's manifest: it must name this snapshot, with the revision and
/// hash its name carries.
pub async fn read_manifest(store: &Store, n: &SnapshotName) -> Result<Manifest> {
    let name = n.manifest();
    let bad = |why: String| BackupStoreError::Object {
        name: name.clone(),
        why,
    };
    let data = store.get_small(&name, MANIFEST_LIMIT).await?;
    let m: Manifest = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
    if m.snapshot != n.db() || m.revision != n.revision || m.hash != n.hash {
        return Err(bad(format!(
            "describes {} at revision {} (hash {:08x})",
            m.snapshot, m.revision, m.hash
        )));
    }
    Ok(m)
}

/// Stores a verified snapshot file and then its manifest, which makes it count.
pub async fn put_snapshot(store: &Store, src: &std::path::Path, m: &Manifest) -> Result<u64> {
    let size = store.put_file(&m.snapshot, src).await?;
    if size != m.size {
        return Err(BackupStoreError::Object {
            name: m.snapshot.clone(),
            why: format!("stored {size} bytes of {}", m.size),
        });
    }
    let name = m.snapshot.strip_suffix(DB).unwrap_or(&m.snapshot);
    let json = serde_json::to_vec_pretty(m).map_err(|e| BackupStoreError::Object {
        name: name.to_string(),
        why: e.to_string(),
    })?;
    store.put_small(&format!("{name}{MANIFEST}"), json).await?;
    Ok(size)
}

/// Retention: keeps the newest `keep` complete snapshots, drops those older than `max_age`
/// (never the newest), and clears what failed uploads left behind (snapshot objects without a
/// manifest that are older than the newest complete one, and manifests without a snapshot).
/// A manifest goes before its snapshot, so no listing ever shows half a backup. Returns the
/// names deleted.
pub async fn prune(
    store: &Store,
    keep: usize,
    max_age: Option<Duration>,
    now_unix: u64,
) -> Result<Vec<String>> {
    let c = catalog(store).await?;
    let mut gone = Vec::new();
    let n = c.complete.len();
    for (i, (s, _)) in c.complete.iter().enumerate() {
        let newest = i + 1 == n;
        let over_count = n - i > keep.max(1);
        let too_old =
            max_age.is_some_and(|a| now_unix.saturating_sub(s.unix) > a.as_secs()) && !newest;
        if over_count || too_old {
            gone.push(s.manifest());
            gone.push(s.db());
        }
    }
    let newest = c.complete.last().map(|(s, _)| *s);
    for s in &c.incomplete {
        if newest.is_some_and(|t| *s < t) {
            gone.push(s.db());
        }
    }
    gone.extend(c.stray.iter().map(SnapshotName::manifest));
    for name in &gone {
        store.delete(name).await?;
    }
    if !gone.is_empty() {
        store.sync().await?;
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::{Location, S3Settings};

    #[test]
    fn names_round_trip_and_sort_by_time() {
        let a = SnapshotName {
            unix: 1_795_453_706,
            revision: 42,
            hash: 0xdead_beef,
        };
        assert_eq!(
            a.db(),
            "ballast-20261123T170826Z-rev000000000042-deadbeef.db"
        );
        assert_eq!(SnapshotName::parse(&a.db()), Some((a, Part::Db)));
        assert_eq!(
            SnapshotName::parse(&a.manifest()),
            Some((a, Part::Manifest))
        );
        let b = SnapshotName {
            unix: a.unix + 1,
            ..a
        };
        assert!(a.db() < b.db() && a < b);
        for bad in [
            "ballast-20261123T170826Z-rev42-deadbeef.db",
            "ballast-20261131T170826Z-rev000000000042-deadbeef.db",
            "ballast-20261123T170826Z-rev000000000042-DEADBEEF.db",
            "ballast-20261123T170826Z-rev-00000000042-deadbeef.db",
            "ballast-20261123T170826Z-rev000000000042-deadbeef.db.tmp",
            "other.db",
            "ballast-.json",
        ] {
            assert_eq!(SnapshotName::parse(bad), None, "{bad}");
        }
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    fn manifest(n: &SnapshotName, size: u64) -> Manifest {
        Manifest {
            snapshot: n.db(),
            revision: n.revision,
            index: 0,
            term: 0,
            hash: n.hash,
            size,
            total_keys: 1,
            created: rfc3339(n.unix),
            taken_ms: n.unix * 1000,
            member_id: "1".into(),
            cluster_id: "2".into(),
        }
    }

    /// A store over the directory `d`.
    fn dir_store(d: &tempfile::TempDir) -> Store {
        Store::open(
            &Location::Dir(d.path().to_path_buf()),
            &S3Settings::from_env(),
        )
        .expect("open")
    }

    const ONE: SnapshotName = SnapshotName {
        unix: 1_800_000_000,
        revision: 5,
        hash: 7,
    };

    #[tokio::test]
    async fn a_manifest_gone_after_the_listing_reads_as_not_found() {
        let d = tempfile::tempdir().expect("tmp");
        let store = dir_store(&d);
        let n = ONE;
        let e = read_manifest(&store, &n).await.expect_err("absent");
        assert!(e.is_not_found(), "{e}");
        std::fs::write(d.path().join(n.manifest()), b"{").expect("write");
        let e = read_manifest(&store, &n).await.expect_err("damaged");
        assert!(!e.is_not_found(), "{e}");
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_and_clears_failed_uploads() {
        let d = tempfile::tempdir().expect("tmp");
        let store =
            Store::open(&Location::Dir(d.path().join("b")), &S3Settings::from_env()).expect("open");
        let day = 86_400;
        let names: Vec<SnapshotName> = (0..4)
            .map(|i| SnapshotName {
                unix: 1_800_000_000 + i * day,
                revision: 10 + i as i64,
                hash: i as u32,
            })
            .collect();
        for n in &names {
            let src = d.path().join("src");
            std::fs::write(&src, b"snapshot").expect("w");
            put_snapshot(&store, &src, &manifest(n, 8))
                .await
                .expect("put");
        }
        // A killed upload before the newest, one after it, and a manifest left alone.
        let dead = SnapshotName {
            unix: names[2].unix + 1,
            ..names[2]
        };
        let running = SnapshotName {
            unix: names[3].unix + 1,
            ..names[3]
        };
        let stray = SnapshotName {
            unix: names[0].unix + 1,
            ..names[0]
        };
        store.put_small(&dead.db(), b"x".to_vec()).await.expect("w");
        store
            .put_small(&running.db(), b"x".to_vec())
            .await
            .expect("w");
        store
            .put_small(&stray.manifest(), b"{}".to_vec())
            .await
            .expect("w");

        let c = catalog(&store).await.expect("catalog");
        assert_eq!(c.complete.len(), 4);
        assert_eq!(c.incomplete, [dead, running]);
        assert_eq!(c.stray, [stray]);
        assert_eq!(c.newest_at_or_below(Some(12)), Some(names[2]));
        assert_eq!(c.newest_at_or_below(Some(9)), None);
        assert_eq!(
            read_manifest(&store, &names[1]).await.expect("manifest"),
            manifest(&names[1], 8)
        );

        let now = names[3].unix + 10;
        let gone = prune(&store, 3, Some(Duration::from_secs(2 * day - 60)), now)
            .await
            .expect("prune");
        assert_eq!(gone.len(), 2 + 2 + 1 + 1, "{gone:?}");
        let c = catalog(&store).await.expect("catalog");
        let left: Vec<_> = c.complete.iter().map(|(n, _)| *n).collect();
        assert_eq!(left, names[2..]);
        assert_eq!(
            c.incomplete,
            [running],
            "an upload newer than the newest stays"
        );
        assert!(c.stray.is_empty());

        // Age never takes the last one.
        prune(&store, 3, Some(Duration::from_secs(1)), now + 10 * day)
            .await
            .expect("prune");
        let c = catalog(&store).await.expect("catalog");
        assert_eq!(c.complete.len(), 1);
        assert_eq!(c.complete[0].0, names[3]);
    }

    #[tokio::test]
    async fn a_manifest_for_another_snapshot_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let store = dir_store(&d);
        let n = ONE;
        let mut m = manifest(&n, 1);
        m.revision = 6;
        store
            .put_small(&n.manifest(), serde_json::to_vec(&m).expect("json"))
            .await
            .expect("w");
        assert!(read_manifest(&store, &n).await.is_err());
        store
            .put_small(&n.manifest(), vec![b'x'; MANIFEST_LIMIT as usize + 1])
            .await
            .expect("w");
        assert!(read_manifest(&store, &n).await.is_err());
    }
}
