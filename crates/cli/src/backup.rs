//! Ballast's own `backup list` and `snapshot restore --backup-url`: the scheduled backups in a
//! directory or an S3-compatible bucket, found by their manifests; credentials from the
//! standard AWS places, as the server takes them.

use std::path::{Path, PathBuf};

use ballast_backup::archive::{self, Segment};
use ballast_backup::catalog::{self, Catalog};
use ballast_backup::{Location, Manifest, S3Settings, SnapshotName, Store};

use ballast_api::ballast::internal::{raft_request, RaftRequest};
use prost::Message;

use crate::output::{table, Format, Printer};
use crate::{human_bytes, Failure};

#[derive(clap::Subcommand, Debug)]
pub enum BackupCmd {
    /// Lists the scheduled backups in a backup store
    List(StoreFlags),
    /// Writes the state a backup store holds (newest, at a revision or at a time) as an etcd snapshot file
    Export(ExportFlags),
}

#[derive(clap::Args, Debug)]
pub struct ExportFlags {
    #[command(flatten)]
    store: StoreFlags,
    /// The revision to write (0: the newest backup)
    #[arg(long = "to-revision", default_value_t = 0)]
    to_revision: i64,
    /// Write what was committed by this time (RFC 3339)
    #[arg(long = "to-time", default_value = "")]
    to_time: String,
    args: Vec<String>,
}

/// Where the backups are and how to reach the bucket (the server's `--backup-*` flags).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StoreFlags {
    /// Where the backups are: s3://bucket/prefix or file:///path
    #[arg(long = "backup-url", default_value = "")]
    pub url: String,
    /// S3-compatible endpoint (else AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL)
    #[arg(long = "backup-endpoint", default_value = "")]
    pub endpoint: String,
    /// S3 region (else AWS_REGION or AWS_DEFAULT_REGION; else us-east-1)
    #[arg(long = "backup-region", default_value = "")]
    pub region: String,
    /// S3 addressing: path, virtual or auto
    #[arg(long = "backup-addressing-style", default_value = "auto")]
    pub addressing: String,
    /// Extra CA certificates (PEM) for the S3 endpoint (else AWS_CA_BUNDLE)
    #[arg(long = "backup-ca-file", default_value = "")]
    pub ca_file: String,
}

impl StoreFlags {
    pub fn open(&self) -> Result<Store, Failure> {
        if self.url.is_empty() {
            return Err(Failure::BadArgs("--backup-url is required".into()));
        }
        let loc = Location::parse(&self.url).map_err(|e| Failure::BadArgs(e.to_string()))?;
        let mut s3 = S3Settings::from_env();
        if !self.endpoint.is_empty() {
            s3.endpoint = Some(self.endpoint.clone());
        }
        if !self.region.is_empty() {
            s3.region = self.region.clone();
        }
        s3.addressing = self.addressing.parse().map_err(Failure::BadArgs)?;
        if !self.ca_file.is_empty() {
            s3.ca_file = Some(PathBuf::from(&self.ca_file));
        }
        Store::open(&loc, &s3).map_err(|e| Failure::Other(e.to_string()))
    }
}

fn other(e: impl std::fmt::Display) -> Failure {
    Failure::Other(e.to_string())
}

pub async fn run(p: &Printer, cmd: &BackupCmd) -> Result<(), Failure> {
    match cmd {
        BackupCmd::List(f) => {
            let store = f.open()?;
            let c = catalog::catalog(&store).await.map_err(other)?;
            let mut rows = Vec::with_capacity(c.complete.len());
            for (n, _) in &c.complete {
                match catalog::read_manifest(&store, n).await {
                    Ok(m) => rows.push(m),
                    // Retention removed it after the listing: it is no longer a backup.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(other(e)),
                }
            }
            let segs = archive::segments(&store).await.map_err(other)?;
            print_list(p, &c, &rows, &runs(&segs));
            Ok(())
        }
        BackupCmd::Export(f) => export(f).await,
    }
}

/// A contiguous run of archived raft indexes.
struct Run {
    first: u64,
    last: u64,
    /// The revision after the run's last entry (0: not known).
    last_revision: i64,
    segments: usize,
}

/// The archive's contiguous runs of raft indexes.
fn runs(segs: &[Segment]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for s in segs {
        match out.last_mut() {
            Some(r) if s.first <= r.last + 1 => {
                if s.last >= r.last {
                    r.last = s.last;
                    r.last_revision = s.last_revision;
                }
                r.segments += 1;
            }
            _ => out.push(Run {
                first: s.first,
                last: s.last,
                last_revision: s.last_revision,
                segments: 1,
            }),
        }
    }
    out
}

fn print_list(p: &Printer, c: &Catalog, ms: &[Manifest], runs: &[Run]) {
    match p.format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "snapshots": ms,
                "incomplete": c.incomplete.iter().map(SnapshotName::db).collect::<Vec<_>>(),
                "archive": runs.iter().map(|r| serde_json::json!({
                    "firstIndex": r.first, "lastIndex": r.last,
                    "lastRevision": r.last_revision, "segments": r.segments,
                })).collect::<Vec<_>>(),
            })
        ),
        Format::Table => {
            let head = [
                "SNAPSHOT",
                "REVISION",
                "INDEX",
                "HASH",
                "TOTAL KEYS",
                "SIZE",
                "CREATED",
                "MEMBER",
            ];
            let rows: Vec<Vec<String>> = ms
                .iter()
                .map(|m| {
                    vec![
                        m.snapshot.clone(),
                        m.revision.to_string(),
                        m.index.to_string(),
                        format!("{:x}", m.hash),
                        m.total_keys.to_string(),
                        human_bytes(m.size),
                        m.created.clone(),
                        m.member_id.clone(),
                    ]
                })
                .collect();
            table(&head, &rows);
            if !runs.is_empty() {
                let rows: Vec<Vec<String>> = runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.first.to_string(),
                            r.last.to_string(),
                            r.last_revision.to_string(),
                            r.segments.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ARCHIVE FIRST INDEX",
                        "ARCHIVE LAST INDEX",
                        "LAST REVISION",
                        "SEGMENTS",
                    ],
                    &rows,
                );
            }
        }
        Format::Simple | Format::Fields => {
            for m in ms {
                println!(
                    "{}, {}, {}, {:x}, {}, {}, {}, {}",
                    m.snapshot,
                    m.revision,
                    m.index,
                    m.hash,
                    m.total_keys,
                    human_bytes(m.size),
                    m.created,
                    m.member_id
                );
            }
            for r in runs {
                println!(
                    "archive, {}, {}, {}, {}",
                    r.first, r.last, r.last_revision, r.segments
                );
            }
        }
    }
}

/// What state a restore rebuilds: the newest there is (the newest snapshot and all of the
/// archive after it), the state right after the entry that made a revision, or every entry
/// the leader had read from its log by a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Newest,
    Revision(i64),
    /// Unix milliseconds.
    Time(u64),
}

/// What a restore from a backup store needs: the snapshot (downloaded) and, for a state past
/// it, the store and the archive segments to replay after the snapshot's index.
pub struct Fetched {
    pub file: PathBuf,
    pub manifest: Manifest,
    pub replay: Option<(Store, Vec<Segment>)>,
}

/// The newest complete snapshot whose state is at or before `target`.
async fn base_for(store: &Store, c: &Catalog, target: Target) -> Result<Manifest, Failure> {
    let none = || {
        Failure::Other(match target {
            Target::Newest => format!("no backup in {store}"),
            Target::Revision(r) => format!("no backup at or below revision {r} in {store}"),
            Target::Time(t) => format!(
                "no backup taken by {} in {store}",
                catalog::rfc3339(t / 1000)
            ),
        })
    };
    match target {
        Target::Newest | Target::Revision(_) => {
            let r = match target {
                Target::Revision(r) => Some(r),
                _ => None,
            };
            let n = c.newest_at_or_below(r).ok_or_else(none)?;
            catalog::read_manifest(store, &n).await.map_err(other)
        }
        Target::Time(t) => {
            for (n, _) in c.complete.iter().rev() {
                let m = catalog::read_manifest(store, n).await.map_err(other)?;
                // The snapshot's state was read by `taken_ms`: nothing after `t` is in it.
                if m.taken_ms > 0 && m.taken_ms <= t {
                    return Ok(m);
                }
            }
            Err(none())
        }
    }
}

/// Downloads the newest complete backup whose state is at or before `target` into a new
/// file beside `near` and checks it against its manifest. A state past that snapshot needs
/// the archive, without a hole, from the snapshot's index on; otherwise it is refused, never
/// approximated.
pub async fn fetch_for_restore(
    f: &StoreFlags,
    target: Target,
    near: &Path,
) -> Result<Fetched, Failure> {
    let store = f.open()?;
    let c = catalog::catalog(&store).await.map_err(other)?;
    let m = base_for(&store, &c, target).await?;
    let past = match target {
        // The newest state there is: the snapshot and all of the archive after it.
        Target::Newest => true,
        Target::Revision(r) => r != m.revision,
        Target::Time(_) => true,
    };
    let mut replay = None;
    if past {
        let segs = archive::segments(&store).await.map_err(other)?;
        let (run, _) = archive::run_after(&segs, m.index);
        match (run.is_empty() || m.index == 0, target) {
            (true, Target::Newest) => {}
            (true, Target::Revision(r)) => {
                return Err(Failure::Other(format!(
                    "no backup at revision {r} in {store}: the newest below it is at revision {}, and there is no archive to replay from it",
                    m.revision
                )))
            }
            (true, _) => {
                return Err(Failure::Other(format!(
                    "no archive in {store} after the backup at revision {}",
                    m.revision
                )))
            }
            (false, _) => replay = Some((store.clone(), run)),
        }
    }
    let dir = near
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| other(format!("{}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".{}.part", m.snapshot));
    let got = store.get_file(&m.snapshot, m.size, &tmp).await;
    if let Err(e) = got {
        let _ = std::fs::remove_file(&tmp);
        return Err(other(e));
    }
    Ok(Fetched {
        file: tmp,
        manifest: m,
        replay,
    })
}

/// `2026-12-07T09:30:00Z`, with optional fractional seconds and a `Z` or `±HH:MM` offset, as
/// Unix milliseconds.
pub fn parse_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    use ballast_net::time::{checked_unix_of_civil, digits};
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(digits);
    let unix = checked_unix_of_civil(
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    )?;
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let mut scaled: String = frac[..n].chars().take(3).collect();
        while scaled.len() < 3 {
            scaled.push('0');
        }
        ms = scaled.parse().ok()?;
        rest = &frac[n..];
    }
    let offset = match rest.as_bytes() {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let secs = digits(&rest[1..3])? * 3600 + digits(&rest[4..6])? * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let unix = i64::try_from(unix).ok()? - offset;
    u64::try_from(unix * 1000 + ms).ok()
}

/// `--to-revision` and `--to-time` (neither: the newest backup).
pub fn target(to_revision: i64, to_time: &str) -> Result<Target, Failure> {
    match (to_revision, to_time) {
        (0, "") => Ok(Target::Newest),
        (r, "") if r > 0 => Ok(Target::Revision(r)),
        (0, t) => parse_time(t).map(Target::Time).ok_or_else(|| {
            Failure::BadArgs(format!(
                "--to-time {t:?}: expected an RFC 3339 time such as 2026-12-07T09:30:00Z"
            ))
        }),
        (r, "") => Err(Failure::BadArgs(format!(
            "--to-revision {r}: must be positive"
        ))),
        _ => Err(Failure::BadArgs(
            "use --to-revision or --to-time, not both".into(),
        )),
    }
}

/// Restores the state `target` names from the backups in `flags` into the new data directory
/// `data_dir`: the snapshot is downloaded beside it, checked against its manifest, handed to
/// `restore` (which builds the directory from a snapshot file), then the archive is replayed
/// into the store. On any failure after `restore` the directory goes, as a failed restore
/// leaves nothing behind.
pub async fn restore_into(
    flags: &StoreFlags,
    target: Target,
    data_dir: &Path,
    restore: impl FnOnce(&str) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let fetched = fetch_for_restore(flags, target, data_dir).await?;
    let (tmp, m) = (&fetched.file, &fetched.manifest);
    let checked = ballast_state::snapfile::status(tmp)
        .map_err(other)
        .and_then(|st| {
            if st.revision == m.revision && st.hash == m.hash {
                Ok(())
            } else {
                Err(Failure::Other(format!(
                    "{}: holds revision {} (hash {:x}) where its manifest says {} ({:x})",
                    m.snapshot, st.revision, st.hash, m.revision, m.hash
                )))
            }
        });
    crate::snapshot::log(
        "fetched backup",
        serde_json::json!({"snapshot": m.snapshot, "revision": m.revision, "size": m.size}),
    );
    let restored = checked.and_then(|()| restore(&tmp.display().to_string()));
    let _ = std::fs::remove_file(tmp);
    restored?;
    let Some((store, segs)) = &fetched.replay else {
        return Ok(());
    };
    let db = ballast_state::layout::snap_dir(data_dir).join(ballast_state::layout::STORE_FILE);
    match replay(&db, store, segs, m, target).await {
        Ok(rev) => {
            crate::snapshot::log(
                "replayed the backup archive",
                serde_json::json!({"from-revision": m.revision, "revision": rev, "segments": segs.len()}),
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(data_dir);
            Err(e)
        }
    }
}

/// `backup export FILE`: the state restored into a scratch data directory beside `FILE`, then
/// written from there as `snapshot save` writes a file (etcd's format, SHA-256 trailer; to
/// `FILE.part`, fsynced, renamed, owner-only), so etcd's own `snapshot restore` takes it.
async fn export(f: &ExportFlags) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let [file] = f.args.as_slice() else {
        return Err(Failure::BadArgs(
            "backup export expects one argument <filename>".into(),
        ));
    };
    let target = target(f.to_revision, &f.to_time)?;
    let out = Path::new(file);
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let work = dir.join(format!(".{name}.restore"));
    let _ = std::fs::remove_dir_all(&work);
    let part = dir.join(format!("{name}.part"));
    let done = async {
        let work_dir = work.display().to_string();
        restore_into(&f.store, target, &work, |snap| {
            crate::restore::restore(&crate::restore::RestoreArgs {
                snapshot: PathBuf::from(snap),
                name: "default".into(),
                data_dir: Some(work_dir.clone()),
                wal_dir: None,
                initial_cluster: "default=http://localhost:2380".into(),
                initial_cluster_token: "etcd-cluster".into(),
                initial_advertise_peer_urls: "http://localhost:2380".into(),
                skip_hash_check: false,
                bump_revision: 0,
            })
            .map(|_| ())
            .map_err(other)
        })
        .await?;
        let db = ballast_state::layout::snap_dir(&work).join(ballast_state::layout::STORE_FILE);
        let mvcc = ballast_state::Mvcc::open(&db).map_err(other)?;
        let _ = std::fs::remove_file(&part);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&part)
            .map_err(|e| other(format!("could not open {} ({e})", part.display())))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        ballast_state::snapfile::write(&mvcc, &mut |_| Ok(()), &mut w).map_err(other)?;
        w.flush().map_err(other)?;
        let file = w.into_inner().map_err(|e| other(e.into_error()))?;
        file.sync_all().map_err(other)?;
        std::fs::rename(&part, out).map_err(other)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(other)?;
        Ok::<_, Failure>(mvcc.current_rev())
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    if done.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    let rev = done?;
    crate::snapshot::log(
        "saved",
        serde_json::json!({"path": out.display().to_string(), "revision": rev}),
    );
    println!("Snapshot saved at {}", out.display());
    Ok(())
}

/// The request an archived entry applies, as the applier decodes it; membership, alarms and
/// the downgrade job belong to the old cluster and are left out, as a restore leaves them.
fn request_of(e: &archive::Entry) -> Option<RaftRequest> {
    if e.conf_change || e.data.is_empty() {
        return None;
    }
    let r = RaftRequest::decode(e.data.as_slice()).ok()?;
    match r.request {
        Some(
            raft_request::Request::MemberChange(_)
            | raft_request::Request::Alarm(_)
            | raft_request::Request::DowngradeInfoSet(_),
        ) => None,
        _ => Some(r),
    }
}

/// Entries applied per store transaction while replaying.
const REPLAY_BATCH: usize = 1024;

/// Replays `segs` after the raft index of `base` (the snapshot's manifest) into the restored
/// store at `db`, each segment checked to continue the history before it (the snapshot's, then
/// the segment's before):
/// to a revision, stopping right after the entry that made it (each entry makes at most one
/// revision, so a batch never holds more entries than revisions still wanted); or to a time,
/// through the last entry the leader had read from its log by then, which needs a segment
/// that holds every entry committed through that time. One segment is in memory at a time.
/// The store then forgets the old cluster's raft index. Returns the revision reached.
pub async fn replay(
    db: &Path,
    store: &Store,
    segs: &[Segment],
    base: &Manifest,
    target: Target,
) -> Result<i64, Failure> {
    let mvcc = ballast_state::Mvcc::open(db).map_err(other)?;
    let mut rev = mvcc.current_rev();
    // The snapshot holds everything up to its raft index.
    let mut applied = base.index;
    // The term of the entry at `applied` (0: not known), and what holds it.
    let mut applied_term = base.term;
    let mut holder = format!("the backup {}", base.snapshot);
    let mut covered_ms = 0u64;
    let mut done = false;
    'segments: for seg in segs {
        if matches!(target, Target::Revision(r) if rev >= r) {
            done = true;
            break;
        }
        let name = seg.path();
        let seg = archive::get(store, seg).await.map_err(other)?;
        if seg.continues(applied, applied_term) == Some(false) {
            return Err(Failure::Other(format!(
                "the archive in {store} does not continue {holder} at raft index {applied} (term {applied_term}): {name} belongs to another cluster's history; restore from a prefix only one cluster has written"
            )));
        }
        holder = name;
        covered_ms = covered_ms.max(seg.through_ms);
        // Overlapping segments (two leaders for a moment) hold the same committed entries.
        let floor = applied;
        let mut it = seg
            .entries
            .iter()
            .filter(move |e| e.index > floor)
            .peekable();
        while it.peek().is_some() {
            let room = match target {
                Target::Revision(r) => usize::try_from(r - rev).unwrap_or(0),
                _ => usize::MAX,
            }
            .min(REPLAY_BATCH);
            if room == 0 {
                done = true;
                break 'segments;
            }
            let mut batch: Vec<(u64, Option<RaftRequest>)> = Vec::with_capacity(room.min(64));
            let mut batch_term = applied_term;
            while batch.len() < room {
                let Some(e) = it.next_if(|e| match target {
                    Target::Time(t) => e.unix_ms <= t,
                    _ => true,
                }) else {
                    break;
                };
                batch.push((e.index, request_of(e)));
                batch_term = e.term;
            }
            if batch.is_empty() {
                // The next entry was read after the time asked for.
                done = true;
                break 'segments;
            }
            applied = batch.last().map_or(applied, |b| b.0);
            applied_term = batch_term;
            mvcc.apply_batch(&batch, false).map_err(other)?;
            rev = mvcc.current_rev();
        }
    }
    match target {
        Target::Revision(r) if rev != r => {
            return Err(Failure::Other(format!(
                "replaying the archive in {store} reached revision {rev}, not {r}: it holds nothing later"
            )))
        }
        Target::Time(t) if !done && covered_ms < t => {
            return Err(Failure::Other(format!(
                "the archive in {store} holds entries only through {}, before {}",
                catalog::rfc3339(covered_ms / 1000),
                catalog::rfc3339(t / 1000)
            )))
        }
        _ => {}
    }
    mvcc.forget_applied().map_err(other)?;
    Ok(rev)
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_parse_as_rfc3339() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2026-12-07T09:30:00Z"), Some(1_796_635_800_000));
        assert_eq!(
            parse_time("2026-12-07T09:30:00.25Z"),
            Some(1_796_635_800_250)
        );
        assert_eq!(
            parse_time("2026-12-07T10:30:00+01:00"),
            parse_time("2026-12-07T09:30:00Z")
        );
        assert_eq!(
            parse_time("2026-12-07T08:30:00.5-01:00"),
            Some(1_796_635_800_500)
        );
        for bad in [
            "",
            "2026-12-07",
            "2026-12-07 09:30:00Z",
            "2026-13-07T09:30:00Z",
            "2026-02-31T09:30:00Z",
            "2026-12-07T09:30:00",
            "2026-12-07T09:30:00.Z",
            "2026-12-07T09:30:00+0100",
            "2026-12-07T09:30:00+x1:00",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
