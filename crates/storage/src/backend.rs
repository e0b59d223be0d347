//! The MVCC backend: a redb database holding every stored revision and the apply metadata.
//!
//! Table `kv`: 16-byte big-endian `(main, sub)` revision -> `flags: u8 | encoded value`
//! (flag bit 0 marks a tombstone); a long value is stored in parts (`split`), and read back
//! whole. Table `meta`: name -> u64 (e.g. the consistent index). Any
//! other table is one the caller names ([`Table`]): bytes under bytes, whose meaning is the
//! caller's (the state machine's schema lives in `ballast-state`).
//!
//! All mutation goes through [`Core::update`]: the closure's writes are staged together or not
//! at all, so an error part-way through a request never leaves half of it applied. Staged
//! writes are committed by the store writer thread (see `staging`): like etcd's batched bbolt
//! transaction, one redb commit takes up to [`HOLD_FOR`] or [`HOLD_WRITES`] of them (each
//! commit copies the B-tree pages it touched and records their freeing), and views read the
//! staged rows over redb's committed ones.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Instant;

use crate::limits::{
    HOLD_BYTES, HOLD_FOR, HOLD_WRITES, IMPORT_BATCH_BYTES, MAX_SNAPSHOT_FIELD, STAGED_MAX_BYTES,
    STAGED_MAX_WRITES, SYNC_EVERY,
};
use crate::overlay::Rows;
use crate::split;
use crate::staging::{self, Flow, Gen};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

pub(crate) const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The store's own accounting of its size ([`Usage`]): never exported, copied or hashed.
const USAGE: TableDefinition<&str, u64> = TableDefinition::new("usage");
const USAGE_STORED: &str = "stored_bytes";
const USAGE_RATIO: &str = "page_bytes_per_stored_ppm";
const TOMBSTONE: u8 = 1;
const SNAP_KV: u8 = 0;
const SNAP_META: u8 = 1;
/// The last record: key = number of records before it (u64 LE), value = CRC32C of every byte
/// before it (u32 LE). A stream without it, or with anything after it, is rejected.
const SNAP_END: u8 = 0xff;
/// A table the caller names: bytes under bytes. `tag` identifies its rows in snapshot streams
/// (0, 1 and 0xff are the backend's own: `kv`, `meta` and the end record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub tag: u8,
}

/// The rows of a caller's table: (key, value) pairs.
pub type TableRows = Vec<(Vec<u8>, Vec<u8>)>;

/// A redb table of bytes under bytes, open for writing.
pub(crate) type BytesTable<'a> = redb::Table<'a, &'static [u8], &'static [u8]>;

impl Table {
    fn def(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("backend: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("backend: {0}")]
    Table(#[from] redb::TableError),
    #[error("backend: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("backend: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("backend: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    /// A file operation around the database (export, defragmentation, injected faults).
    #[error("backend: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A snapshot stream that is not whole or not Ballast's.
    #[error("backend: snapshot import: {0}")]
    BadSnapshot(String),
    #[error("backend value at revision {0:?} is malformed")]
    Malformed(Rev),
    #[error("backend: table {0:?} is not usable: its tag is reserved or taken")]
    BadTable(&'static str),
    /// An earlier commit failed: nothing written since is kept.
    #[error("backend: the store writer stopped: {0}")]
    Stopped(String),
}

/// An I/O error while doing `what`.
fn io_error(what: &'static str) -> impl Fn(std::io::Error) -> BackendError + Copy {
    move |source| BackendError::Io { what, source }
}

/// An MVCC revision: `main` is the store revision, `sub` orders changes within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rev {
    pub main: i64,
    pub sub: i64,
}

impl Rev {
    pub fn new(main: i64, sub: i64) -> Rev {
        Rev { main, sub }
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.main.to_be_bytes());
        b[8..].copy_from_slice(&self.sub.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Rev> {
        let main = i64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let sub = i64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
        Some(Rev { main, sub })
    }
}

/// A stored revision: the encoded key-value and whether it is a deletion marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub tombstone: bool,
    pub kv: Vec<u8>,
}

/// A stored row read as its deletion flag and its encoded key-value; `None` if it has no
/// flags byte.
fn unflag(v: &[u8]) -> Option<(bool, &[u8])> {
    let (&flags, kv) = v.split_first()?;
    Some((flags & TOMBSTONE != 0, kv))
}

fn decode_stored(rev: Rev, v: &[u8]) -> Result<Stored, BackendError> {
    let (tombstone, kv) = unflag(v).ok_or(BackendError::Malformed(rev))?;
    Ok(Stored {
        tombstone,
        kv: kv.to_vec(),
    })
}

/// The length of a stored row's encoded key-value (the row less its flags byte).
fn stored_len(rev: Rev, v: &[u8]) -> Result<usize, BackendError> {
    v.len().checked_sub(1).ok_or(BackendError::Malformed(rev))
}

/// Read access shared by read-only views and write transactions (reads see earlier writes).
pub trait RevRead {
    fn get_rev(&self, rev: Rev) -> Result<Option<Stored>, BackendError>;
    /// The length of a stored revision's encoded key-value (what `get_rev` would copy).
    fn kv_len(&self, rev: Rev) -> Result<Option<usize>, BackendError> {
        Ok(self.get_rev(rev)?.map(|s| s.kv.len()))
    }
    fn meta(&self, name: &str) -> Result<Option<u64>, BackendError>;
}

/// The store: see [`Core`], which it derefs to. It owns the store writer thread: dropping it
/// commits everything staged, durably, and ends the thread.
pub struct Backend {
    core: Arc<Core>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for Backend {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

pub struct Core {
    /// Replaced whole by [`Core::defragment`]; readers hold their own `Arc` meanwhile.
    db: RwLock<Arc<Database>>,
    /// The caller's tables besides `kv` and `meta`.
    tables: &'static [Table],
    path: PathBuf,
    /// Serializes updates: each one stages after the one before it.
    updates: Mutex<()>,
    /// Held by the store writer around each redb write transaction, and by the last phase of
    /// a defragmentation.
    writer: Mutex<()>,
    /// What updates staged since the writer last took it, and what it is committing now
    /// (`staging`). A view takes both (shared, this order) before its read transaction; the
    /// writer moves `open` into `sealed` exclusively, and empties `sealed` exclusively after
    /// committing it: a view's snapshot misses nothing these lack.
    open: RwLock<Gen>,
    sealed: RwLock<Arc<Gen>>,
    flow: Mutex<Flow>,
    /// Signalled when updates want the writer (a durable update, a reader, full limits).
    wake: Condvar,
    /// Signalled by the writer when it took or committed a generation.
    moved: Condvar,
    /// Rows removed so far: a defragmentation that saw none during its copy skips the diff.
    removals: AtomicU64,
    /// The bytes the file takes on disk, refreshed after every commit: the quota check reads it on every
    /// proposal, which must not cost a `stat` each.
    file_size: AtomicU64,
    /// What `--quota-backend-bytes` counts, refreshed with `file_size`: see [`Backend::quota_size`].
    quota_size: AtomicU64,
    usage: Usage,
}

/// What the pages in use come to, without counting them. redb counts them only by walking
/// every page of every tree (its `stats`), which on a store of gigabytes reads the whole file
/// under the writer lock, so every `/metrics` scrape and `Status` stalled writes for as long.
/// Instead every write adds or subtracts the bytes of the rows it stores or removes, and the
/// pages those bytes take is estimated with the ratio of the last real count (when the store
/// was tiny, defragmented or restored). Both figures are stored with every commit.
struct Usage {
    /// Bytes of keys and values in every table, as redb's `stored_bytes` counts them.
    stored: AtomicU64,
    /// Bytes of pages per stored byte at the last count, in millionths.
    ratio_ppm: AtomicU64,
    /// The pages in use at the last commit: counted while the file is tiny, else estimated.
    in_use: AtomicU64,
}

/// One count of the pages in use (a walk over every tree).
struct Counted {
    page_bytes: u64,
    stored: u64,
}

const PPM: u64 = 1_000_000;

impl Usage {
    fn set_counted(&self, c: &Counted) {
        self.stored.store(c.stored, Ordering::Relaxed);
        if c.stored > 0 {
            let ratio = (c.page_bytes as u128 * PPM as u128 / c.stored as u128) as u64;
            self.ratio_ppm.store(ratio.max(PPM), Ordering::Relaxed);
        }
        self.in_use.store(c.page_bytes, Ordering::Relaxed);
    }

    fn add(&self, delta: i64) {
        let _ = self
            .stored
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_add_signed(delta))
            });
    }

    fn estimate(&self) -> u64 {
        let stored = self.stored.load(Ordering::Relaxed) as u128;
        (stored * self.ratio_ppm.load(Ordering::Relaxed) as u128 / PPM as u128) as u64
    }

    /// Writes both figures into the transaction about to commit.
    fn persist(&self, tx: &redb::WriteTransaction) -> Result<(), BackendError> {
        let mut t = tx.open_table(USAGE)?;
        t.insert(USAGE_STORED, self.stored.load(Ordering::Relaxed))?;
        t.insert(USAGE_RATIO, self.ratio_ppm.load(Ordering::Relaxed))?;
        Ok(())
    }
}

/// Below this file size every commit also counts the pages in use (`stats` walks every tree,
/// a few hundred pages at most here). A redb file never shrinks below about 72 KiB where an
/// empty bbolt file is 20 KiB, so for a tiny store the pages in use, not the file, are what a
/// small quota counts; above it that fixed floor no longer matters and the file is counted.
const COUNT_PAGES_BELOW: u64 = 1 << 20;

/// Bytes in the pages a transaction's database has allocated, and of the keys and values
/// they hold: a walk over every page.
fn count_pages(tx: &redb::WriteTransaction) -> Option<Counted> {
    let s = tx.stats().ok()?;
    Some(Counted {
        page_bytes: s.allocated_pages() * s.page_size() as u64,
        stored: s.stored_bytes(),
    })
}

/// The pages in use of a file just written whole (an import, a defragmentation's copy), which
/// holds `stored` bytes of rows: counted while it is small, else all of it, for it has no free
/// pages to speak of. Walking the pages of a large one read the whole file again (1.5 GB).
fn fresh_file_usage(tx: &redb::WriteTransaction, path: &Path, stored: u64) -> Option<Counted> {
    let file = std::fs::metadata(path).map_or(0, |m| physical_len(&m));
    if file <= COUNT_PAGES_BELOW {
        return count_pages(tx);
    }
    Some(Counted {
        page_bytes: file,
        stored,
    })
}

/// The bytes a file takes on disk (etcd's dbSize is "physically allocated"): redb grows its
/// file by doubling, and the tail it has not written yet is a hole that takes no space.
fn physical_len(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    match m.blocks() * 512 {
        0 => m.len(),
        blocks => blocks.min(m.len()),
    }
}

/// The size figures a previous commit stored, if any.
fn stored_usage(tx: &redb::WriteTransaction) -> Result<Option<(u64, u64)>, BackendError> {
    let t = tx.open_table(USAGE)?;
    let stored = t.get(USAGE_STORED)?.map(|g| g.value());
    let ratio = t.get(USAGE_RATIO)?.map(|g| g.value());
    Ok(stored.zip(ratio))
}

impl Backend {
    /// Opens (or creates) the database at `path` with the caller's `tables` besides `kv` and
    /// `meta`.
    pub fn open(path: &Path, tables: &'static [Table]) -> Result<Backend, BackendError> {
        Backend::open_cached(path, tables, crate::limits::STORE_CACHE_BYTES)
    }

    /// [`Backend::open`] with `cache` bytes of redb page cache.
    fn open_cached(
        path: &Path,
        tables: &'static [Table],
        cache: usize,
    ) -> Result<Backend, BackendError> {
        for (i, t) in tables.iter().enumerate() {
            let reserved = [SNAP_KV, SNAP_META, SNAP_END].contains(&t.tag);
            let taken = tables[..i]
                .iter()
                .any(|o| o.tag == t.tag || o.name == t.name);
            if reserved || taken || t.name == "kv" || t.name == "meta" {
                return Err(BackendError::BadTable(t.name));
            }
        }
        let db = create_db(path, cache)?;
        let tx = durable_write(&db, path)?;
        tx.open_table(KV)?;
        tx.open_table(split::PAGES)?;
        tx.open_table(split::PIECES)?;
        tx.open_table(META)?;
        for t in tables {
            match tx.open_table(t.def()) {
                Ok(_) => {}
                Err(redb::TableError::TableTypeMismatch { .. }) => upgrade_table(&tx, *t)?,
                Err(e) => return Err(e.into()),
            }
        }
        let b = Core {
            db: RwLock::new(Arc::new(db)),
            tables,
            path: path.to_path_buf(),
            updates: Mutex::new(()),
            writer: Mutex::new(()),
            open: RwLock::default(),
            sealed: RwLock::default(),
            flow: Mutex::new(Flow::new()),
            wake: Condvar::new(),
            moved: Condvar::new(),
            removals: AtomicU64::new(0),
            file_size: AtomicU64::new(0),
            quota_size: AtomicU64::new(0),
            usage: Usage {
                stored: AtomicU64::new(0),
                ratio_ppm: AtomicU64::new(PPM),
                in_use: AtomicU64::new(0),
            },
        };
        let small = std::fs::metadata(path).map_or(true, |m| physical_len(&m) <= COUNT_PAGES_BELOW);
        // A store written before its figures were kept is counted once, here.
        let in_use = match stored_usage(&tx)? {
            Some((stored, ratio)) if !small => {
                b.usage.stored.store(stored, Ordering::Relaxed);
                b.usage.ratio_ppm.store(ratio.max(PPM), Ordering::Relaxed);
                None
            }
            _ => count_pages(&tx).map(|c| {
                b.usage.set_counted(&c);
                c.page_bytes
            }),
        };
        b.usage.persist(&tx)?;
        tx.commit()?;
        b.refresh_size(in_use);
        let core = Arc::new(b);
        let writer = core.clone();
        let writer_thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run_writer())
            .map_err(io_error("start the store writer"))?;
        Ok(Backend {
            core,
            writer_thread: Some(writer_thread),
        })
    }

    /// Builds a new database at `path` from an [`Backend::export`] stream, committing in
    /// batches (bounded memory) and durably at the end. Malformed input is an error, never a
    /// partial database left in use: the caller swaps the file in only on success.
    pub fn import(
        path: &Path,
        tables: &'static [Table],
        input: impl std::io::Read,
    ) -> Result<(), BackendError> {
        Backend::import_filtered(path, tables, input, &mut |r| Ok(Some(r)))
    }

    /// [`Backend::import`], passing each record through `keep`, which may drop or rewrite it
    /// (a restore drops the old membership), or refuse it and so end the import.
    pub fn import_filtered(
        path: &Path,
        tables: &'static [Table],
        input: impl std::io::Read,
        keep: &mut dyn FnMut(SnapRecord) -> Result<Option<SnapRecord>, BackendError>,
    ) -> Result<(), BackendError> {
        let _ = std::fs::remove_file(path);
        let b = Backend::open_cached(path, tables, crate::limits::IMPORT_CACHE_BYTES)?;
        let mut reader = SnapshotReader::new(input, tables);
        let mut done = false;
        let mut unsynced = 0u64;
        let mut stored = 0i64;
        let writeback = Writeback::start(path);
        while !done {
            let mut tx = b.db().begin_write()?;
            // Durable once, at the end; meanwhile the file is written back as it grows, beside
            // the import (see `SNAPSHOT_SYNC_BYTES`).
            tx.set_durability(Durability::None)?;
            {
                let mut rows = split::Writer::open(&tx)?;
                let mut kv = split::Appender::open(&mut rows)?;
                let mut meta = tx.open_table(META)?;
                let mut small = Vec::with_capacity(tables.len());
                for t in tables {
                    small.push((t.tag, tx.open_table(t.def())?));
                }
                let start = reader.bytes;
                while reader.bytes - start < IMPORT_BATCH_BYTES as u64 {
                    let Some(rec) = reader.next_record()? else {
                        done = true;
                        break;
                    };
                    match keep(rec)? {
                        None => {}
                        Some(SnapRecord::Kv(k, v)) => {
                            let rev = Rev::from_bytes(&k).ok_or_else(|| bad("revision key"))?;
                            stored += kv.append(rev, &v)?;
                        }
                        Some(SnapRecord::Meta(name, v)) => {
                            meta.insert(name.as_str(), v)?;
                        }
                        Some(SnapRecord::Row(tag, k, v)) => {
                            let t = small
                                .iter_mut()
                                .find(|(t, _)| *t == tag)
                                .map(|(_, t)| t)
                                .ok_or_else(|| bad("unknown table"))?;
                            t.insert(k.as_slice(), v.as_slice())?;
                            stored += row_bytes(k.len(), v.len());
                        }
                    }
                }
                kv.close()?;
                unsynced += reader.bytes - start;
            }
            tx.commit()?;
            if unsynced >= crate::limits::SNAPSHOT_SYNC_BYTES as u64 {
                unsynced = 0;
                writeback.nudge();
            }
        }
        drop(writeback);
        // The rows went in around the accounting: count them once.
        let tx = durable_write(&b.db(), path)?;
        if let Some(c) = fresh_file_usage(&tx, path, u64::try_from(stored).unwrap_or(0)) {
            b.usage.set_counted(&c);
        }
        b.usage.persist(&tx)?;
        tx.commit()?;
        b.update(true, |_| Ok::<_, BackendError>(()))
    }
}

/// Writes a file back beside the thread that writes it: each nudge starts an `fdatasync` on a
/// thread of its own (nudges while one runs are merged), so the writer never waits for the
/// disk before its own durable commit. Durable commits every 16 MiB of a snapshot import made
/// its stream wait on each: 8.6 s for 1.2 GB, 2.3 s of it on the disk. Dropping it waits for
/// the sync in progress.
struct Writeback(Option<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<()>)>);

impl Writeback {
    /// Without the file or a thread, nudges do nothing: the final durable commit writes it all.
    fn start(path: &Path) -> Writeback {
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::fs::File::open(path).ok().and_then(|file| {
            std::thread::Builder::new()
                .name("writeback".into())
                .spawn(move || {
                    while rx.recv().is_ok() {
                        // An I/O error here is the final durable commit's to report.
                        let _ = file.sync_data();
                    }
                })
                .ok()
        });
        Writeback(thread.map(|t| (tx, t)))
    }

    fn nudge(&self) {
        if let Some((tx, _)) = &self.0 {
            let _ = tx.try_send(());
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        if let Some((tx, thread)) = self.0.take() {
            drop(tx);
            let _ = thread.join();
        }
    }
}

impl Core {
    /// Re-reads the file's length; `in_use` is the pages in use when the caller counted them
    /// (else they are estimated, see [`Usage`]).
    fn refresh_size(&self, in_use: Option<u64>) {
        let len = std::fs::metadata(&self.path).map_or(0, |m| physical_len(&m));
        self.file_size.store(len, Ordering::Relaxed);
        let counted = in_use.filter(|_| len <= COUNT_PAGES_BELOW).unwrap_or(len);
        self.quota_size.store(counted, Ordering::Relaxed);
        let in_use = in_use.unwrap_or_else(|| self.usage.estimate());
        self.usage.in_use.store(in_use.min(len), Ordering::Relaxed);
    }

    fn db(&self) -> Arc<Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flow(&self) -> MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_gen(&self) -> RwLockReadGuard<'_, Gen> {
        self.open.read().unwrap_or_else(|p| p.into_inner())
    }

    fn sealed_gen(&self) -> RwLockReadGuard<'_, Arc<Gen>> {
        self.sealed.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` as one update: its writes are staged together or, if it fails, not at all,
    /// and seen by every view from when this returns. The store writer commits them with the
    /// updates around them (see the `staging` module); `durable` waits until a durable commit
    /// holds them. A commit that fails stops the writer, and every update after it fails:
    /// callers treat that as fatal (the applier stops the member).
    pub fn update<R, E: From<BackendError>>(
        &self,
        durable: bool,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let _serial = self.updates.lock().unwrap_or_else(|p| p.into_inner());
        self.wait_for_room()?;
        let (out, staged) = {
            let open = self.open_gen();
            let sealed = self.sealed_gen();
            let tx = self.db().begin_read().map_err(BackendError::from)?;
            let mut w = WriteTx {
                staged: Gen::default(),
                view: ReadTx::new(&tx, [&open.rows, &sealed.rows])?,
                tables: self.tables,
                removals: &self.removals,
            };
            let out = f(&mut w)?;
            (out, w.staged)
        };
        let seq = {
            let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
            open.absorb(staged);
            let mut flow = self.flow();
            flow.staged += 1;
            let first = flow.since.is_none();
            flow.since.get_or_insert_with(Instant::now);
            flow.writes = open.writes;
            flow.bytes = open.bytes;
            if durable {
                flow.want_durable = flow.staged;
            }
            let full = flow.writes >= HOLD_WRITES || flow.bytes >= HOLD_BYTES;
            // An idle writer waits without a deadline: the first update after it wakes it,
            // whatever it wrote (an entry may only move the applied index).
            if durable || first || full {
                self.wake.notify_one();
            }
            flow.staged
        };
        if durable {
            self.wait_until(|f| f.durable >= seq)?;
        }
        Ok(out)
    }

    /// Waits while the staged writes are at their bound ([`STAGED_MAX_WRITES`],
    /// [`STAGED_MAX_BYTES`]), so memory stays bounded when the disk is slower than updates.
    fn wait_for_room(&self) -> Result<(), BackendError> {
        // Not once the writer has failed: the wait then ends in its error.
        self.wait_until(|f| {
            f.failed.is_none() && f.writes < STAGED_MAX_WRITES && f.bytes < STAGED_MAX_BYTES
        })
    }

    /// Waits for the writer until `done` holds (or it failed).
    fn wait_until(&self, done: impl Fn(&Flow) -> bool) -> Result<(), BackendError> {
        let mut flow = self.flow();
        loop {
            if done(&flow) {
                return Ok(());
            }
            if let Some(e) = &flow.failed {
                return Err(BackendError::Stopped(e.clone()));
            }
            self.wake.notify_one();
            flow = self.moved.wait(flow).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until everything staged so far is committed (durably, if asked), so redb's own
    /// read transactions see it.
    fn flush(&self, durable: bool) -> Result<(), BackendError> {
        let target = {
            let mut flow = self.flow();
            let target = flow.staged;
            if durable {
                flow.want_durable = flow.want_durable.max(target);
            } else {
                flow.want_written = flow.want_written.max(target);
            }
            target
        };
        self.wake.notify_one();
        if durable {
            self.wait_until(|f| f.durable >= target)
        } else {
            self.wait_until(|f| f.written >= target)
        }
    }

    /// The store writer: commits what updates staged, when a durable update or a reader asks,
    /// when [`HOLD_FOR`] has passed since the oldest staged update, or at [`HOLD_WRITES`] /
    /// [`HOLD_BYTES`], and commits durably at least every [`SYNC_EVERY`] (the WAL covers the
    /// rest after a crash). Ends, after a last durable commit, when the backend is dropped.
    fn run_writer(&self) {
        loop {
            let (target, durable) = {
                let mut flow = self.flow();
                let durable = loop {
                    if flow.failed.is_some() {
                        return;
                    }
                    let now = Instant::now();
                    let pending = flow.staged > flow.written;
                    let unsynced = flow.written > flow.durable || pending;
                    let held_out = flow.since.is_some_and(|s| now >= s + HOLD_FOR);
                    let full = flow.writes >= HOLD_WRITES || flow.bytes >= HOLD_BYTES;
                    let asked =
                        flow.want_written > flow.written || flow.want_durable > flow.durable;
                    let sync_due = unsynced && now >= flow.last_durable + SYNC_EVERY;
                    if asked || sync_due || (pending && (held_out || full)) {
                        break flow.want_durable > flow.durable || sync_due || flow.stop;
                    }
                    if flow.stop {
                        if !unsynced {
                            return;
                        }
                        break true;
                    }
                    let mut wait: Option<std::time::Duration> = None;
                    if let Some(s) = flow.since {
                        wait = Some((s + HOLD_FOR).saturating_duration_since(now));
                    }
                    if unsynced {
                        let sync = (flow.last_durable + SYNC_EVERY).saturating_duration_since(now);
                        wait = Some(wait.map_or(sync, |w| w.min(sync)));
                    }
                    flow = match wait {
                        Some(d) => self
                            .wake
                            .wait_timeout(flow, d)
                            .map_or_else(|p| p.into_inner().0, |r| r.0),
                        None => self.wake.wait(flow).unwrap_or_else(|p| p.into_inner()),
                    };
                };
                flow.since = None;
                flow.writes = 0;
                flow.bytes = 0;
                (flow.staged, durable)
            };
            // Everything staged up to `target` is in `open` now (updates stage, then count).
            let gen = {
                let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
                let mut sealed = self.sealed.write().unwrap_or_else(|p| p.into_inner());
                let gen = Arc::new(std::mem::take(&mut *open));
                *sealed = gen.clone();
                gen
            };
            self.moved.notify_all();
            match self.write_gen(&gen, durable) {
                Ok(()) => {
                    // Committed: readers find it in redb from now on.
                    *self.sealed.write().unwrap_or_else(|p| p.into_inner()) = Arc::default();
                    let mut flow = self.flow();
                    flow.written = flow.written.max(target);
                    if durable {
                        flow.durable = flow.durable.max(target);
                        flow.last_durable = Instant::now();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "store commit failed; no later update is kept");
                    self.flow().failed = Some(e.to_string());
                }
            }
            self.moved.notify_all();
        }
    }

    /// Writes one generation into a redb transaction and commits it.
    fn write_gen(&self, gen: &Gen, durable: bool) -> Result<(), BackendError> {
        let _writer = self.lock_writer();
        let tx = self.db().begin_write()?;
        let mut stored = 0i64;
        {
            let mut rows = split::Writer::open(&tx)?;
            let gone: Vec<Rev> = gen.rows.gone_revs().collect();
            stored += rows.remove_rows(&gone)?;
            for (rev, row) in gen.rows.live() {
                stored += rows.insert(rev, row)?;
            }
            let mut meta = tx.open_table(META)?;
            for (name, v) in &gen.rows.meta {
                if meta.insert(*name, *v)?.is_none() {
                    stored += row_bytes(name.len(), 8);
                }
            }
            // Ordered by table, so each is opened once.
            let mut open: Option<(usize, BytesTable<'_>)> = None;
            for ((t, key), value) in &gen.tables {
                let table = match &mut open {
                    Some((o, table)) if o == t => table,
                    _ => {
                        let def = self
                            .tables
                            .get(*t)
                            .ok_or(BackendError::BadTable("?"))?
                            .def();
                        &mut open.insert((*t, tx.open_table(def)?)).1
                    }
                };
                let old = match value {
                    Some(v) => {
                        stored += row_bytes(key.len(), v.len());
                        table.insert(key.as_slice(), v.as_slice())?
                    }
                    None => table.remove(key.as_slice())?,
                };
                stored -= old.map_or(0, |o| row_bytes(key.len(), o.value().len()));
            }
        }
        self.usage.add(stored);
        self.commit(tx, durable)
    }

    fn commit(&self, mut tx: redb::WriteTransaction, durable: bool) -> Result<(), BackendError> {
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        // A durable commit records redb's allocator state (one more fsync, on the store
        // writer): without it, opening the file after a crash, or after a stop that left the
        // database unclosed, walked every page to rebuild that state (0.3 s of 330 MiB). A
        // tiny store is walked at once, and the state's pages would count against a quota
        // of a few pages (see `durable_write`).
        tx.set_quick_repair(durable && self.size() > COUNT_PAGES_BELOW);
        let in_use = (self.size() <= COUNT_PAGES_BELOW)
            .then(|| count_pages(&tx))
            .flatten()
            .map(|c| {
                self.usage.set_counted(&c);
                c.page_bytes
            });
        self.usage.persist(&tx)?;
        let started = Instant::now();
        crate::failpoint::io("backend-commit").map_err(io_error("commit"))?;
        tx.commit()?;
        crate::stats::BACKEND_COMMIT.observe(started.elapsed());
        self.refresh_size(in_use);
        Ok(())
    }

    /// A read transaction over everything written so far.
    fn begin_read_all(&self) -> Result<redb::ReadTransaction, BackendError> {
        self.flush(false)?;
        Ok(self.db().begin_read()?)
    }

    /// Runs `f` over a consistent read-only snapshot.
    pub fn view<R, E: From<BackendError>>(
        &self,
        f: impl FnOnce(&ReadTx) -> Result<R, E>,
    ) -> Result<R, E> {
        let open = self.open_gen();
        let sealed = self.sealed_gen();
        let tx = self.db().begin_read().map_err(BackendError::from)?;
        f(&ReadTx::new(&tx, [&open.rows, &sealed.rows])?)
    }

    /// A read-only snapshot of everything written so far, which can be walked any number of
    /// times and always shows the same rows (writers are not blocked meanwhile).
    pub fn read_snapshot(&self) -> Result<ReadSnapshot, BackendError> {
        Ok(ReadSnapshot {
            tx: self.begin_read_all()?,
        })
    }

    /// Every row of `table`, in key order (sees every update made so far).
    pub fn rows(&self, table: Table) -> Result<TableRows, BackendError> {
        self.read_snapshot()?.rows(table)
    }

    /// Streams every table as snapshot records (`table u8 | klen u32 | key | vlen u32 | value`,
    /// little endian) from one consistent read transaction: writers are never blocked, and
    /// memory stays bounded by what `out` buffers.
    pub fn export(
        &self,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), BackendError> {
        self.export_sized(&mut |_| Ok(()), out)
    }

    /// [`Backend::export`], first telling `size` how many bytes the stream will hold (one
    /// extra pass over the same read transaction, so the number is exact).
    pub fn export_sized(
        &self,
        size: &mut dyn FnMut(u64) -> std::io::Result<()>,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), BackendError> {
        let tx = self.begin_read_all()?;
        let io = io_error("snapshot export");
        let mut total = 9 + 8 + 4;
        walk(&tx, self.tables, &mut |_, k, v| {
            total += 9 + k.len() as u64 + v.len() as u64;
            Ok(())
        })?;
        size(total).map_err(io)?;
        let mut rec = Vec::new();
        let (mut count, mut crc) = (0u64, 0u32);
        let mut put = |table: u8, k: &[u8], v: &[u8]| {
            // The end record carries the count and checksum of everything before it.
            let (n, sum) = (count.to_le_bytes(), crc.to_le_bytes());
            let (k, v) = if table == SNAP_END {
                (&n[..], &sum[..])
            } else {
                (k, v)
            };
            rec.clear();
            rec.push(table);
            rec.extend_from_slice(&(k.len() as u32).to_le_bytes());
            rec.extend_from_slice(k);
            rec.extend_from_slice(&(v.len() as u32).to_le_bytes());
            rec.extend_from_slice(v);
            if table != SNAP_END {
                count += 1;
                crc = crc32c::crc32c_append(crc, &rec);
            }
            out(&rec)
        };
        walk(&tx, self.tables, &mut |table, k, v| put(table, k, v))?;
        put(SNAP_END, &[], &[]).map_err(io)
    }

    /// Rewrites the database into a fresh, compact file and switches to it, without stopping
    /// readers or (but for a short final step) writers: the bulk is copied from a read
    /// snapshot while writes go on; then, holding the writer lock, only what changed since is
    /// copied — revisions past the last one copied (revision keys only grow), rows removed
    /// meanwhile (compaction), and the small tables whole. The new file is fsynced and renamed
    /// over the old. Returns the file size before and after.
    pub fn defragment(&self) -> Result<(u64, u64), BackendError> {
        let before = self.size();
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".defrag.tmp");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let dst = create_db(&tmp, crate::limits::STORE_CACHE_BYTES)?;
        let removals = self.removals.load(Ordering::Relaxed);
        let last = {
            // Deletions the held transaction counted in `removals` must be in this snapshot,
            // or the catch-up below would see no new removals and keep their rows.
            let src = self.begin_read_all()?;
            copy_kv(&src, &dst, None)?
        };
        // What is staged after this flush is written into the new file once it is in place.
        self.flush(false)?;
        let _writer = self.lock_writer();
        let src = self.db().begin_read()?;
        copy_kv(&src, &dst, last.as_deref())?;
        let mut tx = durable_write(&dst, &tmp)?;
        {
            let kv_src = src.open_table(KV)?;
            if self.removals.load(Ordering::Relaxed) != removals {
                let mut rows = split::Writer::open(&tx)?;
                let mut gone = Vec::new();
                for row in rows.kv.iter()? {
                    let k = row?.0.value().to_vec();
                    if kv_src.get(k.as_slice())?.is_none() {
                        gone.push(
                            Rev::from_bytes(&k).ok_or(BackendError::Malformed(Rev::default()))?,
                        );
                    }
                }
                for rev in gone {
                    rows.remove_row(rev)?;
                }
            }
            replace_table(&src, &mut tx, META)?;
            for t in self.tables {
                replace_table(&src, &mut tx, t.def())?;
            }
        }
        tx.commit()?;
        drop(src);
        let io = io_error("defragment");
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            crate::wal::sync_dir(dir).map_err(io)?;
        }
        // The copy went around the accounting: count the new file once (its rows are what
        // the old one held when the writer lock was taken, so the stored bytes are unchanged).
        let in_use = match durable_write(&dst, &self.path) {
            Ok(tx) => {
                let stored = self.usage.stored.load(Ordering::Relaxed);
                let c = fresh_file_usage(&tx, &self.path, stored);
                if let Some(c) = &c {
                    self.usage.set_counted(c);
                    self.usage.persist(&tx)?;
                }
                tx.commit()?;
                c.map(|c| c.page_bytes)
            }
            Err(_) => None,
        };
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(dst);
        self.refresh_size(in_use);
        Ok((before, self.size()))
    }

    /// What `--quota-backend-bytes` counts, as of the last commit: the file's size, or for a
    /// store under `COUNT_PAGES_BELOW` the bytes of its pages in use (so a quota as small as
    /// etcd's minimum working set holds data, as it does on etcd).
    pub fn quota_size(&self) -> u64 {
        self.quota_size.load(Ordering::Relaxed)
    }

    /// Bytes the database file occupies on disk, as of the last commit.
    pub fn size(&self) -> u64 {
        self.file_size.load(Ordering::Relaxed)
    }

    /// Row writes staged and not yet taken by the store writer.
    pub fn staged_writes(&self) -> usize {
        self.flow().writes
    }

    /// Bytes holding live data (the rest of [`Backend::size`] is free pages), as of the last
    /// commit: counted while the store is tiny, else estimated (see [`Usage`]).
    pub fn size_in_use(&self) -> u64 {
        self.usage.in_use.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // The writer commits everything staged, durably, and ends.
        self.flow().stop = true;
        self.wake.notify_one();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// What a walk over stored revisions hands each one: revision, tombstone flag, stored value.
pub type SnapshotRevVisitor<'a> = dyn FnMut(Rev, bool, &[u8]) -> std::io::Result<()> + 'a;

/// See [`Backend::read_snapshot`].
pub struct ReadSnapshot {
    tx: redb::ReadTransaction,
}

impl ReadSnapshot {
    /// Every stored revision in order: revision, tombstone flag, the stored value.
    pub fn for_each_rev(&self, f: &mut SnapshotRevVisitor<'_>) -> Result<(), BackendError> {
        self.for_each_rev_from(Rev::default(), f)
    }

    /// [`ReadSnapshot::for_each_rev`] from revision `from` on.
    pub fn for_each_rev_from(
        &self,
        from: Rev,
        f: &mut SnapshotRevVisitor<'_>,
    ) -> Result<(), BackendError> {
        whole_rows(&self.tx, from, &mut |rev, row| {
            let (tombstone, kv) = unflag(row).ok_or(BackendError::Malformed(rev))?;
            f(rev, tombstone, kv).map_err(io_error("reading stored revisions"))
        })
    }

    pub fn meta(&self, name: &str) -> Result<Option<u64>, BackendError> {
        Ok(self.tx.open_table(META)?.get(name)?.map(|g| g.value()))
    }

    /// Every row of the caller's `table`, in key order.
    pub fn rows(&self, table: Table) -> Result<TableRows, BackendError> {
        let mut out = Vec::new();
        for row in self.tx.open_table(table.def())?.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

/// One update: what it writes is staged here, and reads see it first, then what earlier
/// updates staged, then the committed store.
pub struct WriteTx<'a> {
    removals: &'a AtomicU64,
    staged: Gen,
    view: ReadTx<'a>,
    tables: &'static [Table],
}

/// A row's bytes as the size accounting counts them (redb's stored bytes: key and value).
pub(crate) fn row_bytes(key: usize, value: usize) -> i64 {
    i64::try_from(key + value).unwrap_or(i64::MAX)
}

impl WriteTx<'_> {
    /// Committed and staged revisions in `[from, to)`, in revision order, until `f` returns
    /// false. This update's own writes are not among them.
    pub fn for_each_rev_between(
        &self,
        from: Rev,
        to: Rev,
        f: impl FnMut(Rev, Stored) -> Result<bool, BackendError>,
    ) -> Result<(), BackendError> {
        self.view.for_each_rev_between(from, to, f)
    }

    /// [`ReadTx::for_each_head_between`] over committed and staged revisions (not this
    /// update's own writes).
    pub fn for_each_head_between(
        &self,
        from: Rev,
        to: Rev,
        f: impl FnMut(Rev, Head<'_>) -> Result<bool, BackendError>,
    ) -> Result<(), BackendError> {
        self.view.for_each_head_between(from, to, f)
    }

    fn table_index(&self, t: Table) -> Result<usize, BackendError> {
        // A table the backend was not opened with: the caller's mistake, not a panic.
        self.tables
            .iter()
            .position(|o| o.name == t.name)
            .ok_or(BackendError::BadTable(t.name))
    }

    /// Stores `value` under `key` in the caller's table `t`.
    pub fn put(&mut self, t: Table, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        let i = self.table_index(t)?;
        self.staged.writes += 1;
        self.staged.bytes += key.len() + value.len();
        self.staged
            .tables
            .insert((i, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    /// Removes `key` from the caller's table `t` (nothing if absent).
    pub fn delete(&mut self, t: Table, key: &[u8]) -> Result<(), BackendError> {
        let i = self.table_index(t)?;
        self.staged.writes += 1;
        self.staged.bytes += key.len();
        self.staged.tables.insert((i, key.to_vec()), None);
        Ok(())
    }

    pub fn put_rev(&mut self, rev: Rev, tombstone: bool, kv: &[u8]) -> Result<(), BackendError> {
        self.put_rev_with(rev, tombstone, kv.len(), |v| v.extend_from_slice(kv))
    }

    /// [`WriteTx::put_rev`] with the record written by `encode` (about `len` bytes) straight
    /// into the staged row, saving a buffer and a copy per write on the apply path.
    pub fn put_rev_with(
        &mut self,
        rev: Rev,
        tombstone: bool,
        len: usize,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), BackendError> {
        let row = self.staged.rows.push_with(rev, |v| {
            v.reserve(len + 1);
            v.push(if tombstone { TOMBSTONE } else { 0 });
            encode(v);
            // A disk that silently flips a bit: the last byte of an encoded KeyValue without a
            // lease is its value's last byte, so the record still decodes, wrongly.
            if crate::failpoint::enabled("break-corrupt-writes") {
                if let Some(last) = v.last_mut() {
                    *last ^= 1;
                }
            }
        });
        self.staged.bytes += row.len();
        self.staged.writes += 1;
        Ok(())
    }

    pub fn delete_rev(&mut self, rev: Rev) -> Result<(), BackendError> {
        self.staged.rows.delete(rev);
        self.staged.writes += 1;
        self.removals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn set_meta(&mut self, name: &'static str, v: u64) -> Result<(), BackendError> {
        self.staged.rows.meta.insert(name, v);
        Ok(())
    }
}

impl RevRead for WriteTx<'_> {
    fn get_rev(&self, rev: Rev) -> Result<Option<Stored>, BackendError> {
        match self.staged.rows.get(rev) {
            Some(row) => row.map(|r| decode_stored(rev, r)).transpose(),
            None => self.view.get_rev(rev),
        }
    }

    fn kv_len(&self, rev: Rev) -> Result<Option<usize>, BackendError> {
        match self.staged.rows.get(rev) {
            Some(row) => row.map(|r| stored_len(rev, r)).transpose(),
            None => self.view.kv_len(rev),
        }
    }

    fn meta(&self, name: &str) -> Result<Option<u64>, BackendError> {
        match self.staged.rows.meta.get(name) {
            Some(&v) => Ok(Some(v)),
            None => self.view.meta(name),
        }
    }
}

type ReadOnlyBytes = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// A consistent view: the staged generations (newest first) over a committed snapshot.
pub struct ReadTx<'a> {
    kv: ReadOnlyBytes,
    pages: ReadOnlyBytes,
    pieces: ReadOnlyBytes,
    meta: redb::ReadOnlyTable<&'static str, u64>,
    overlays: [&'a Rows; 2],
}

/// A row a walk meets: a whole row (`flags | kv`) an update staged, or a committed row as the
/// `kv` table holds it (whole or split, see `split`).
enum Met<'r> {
    Staged(&'r [u8]),
    Committed(&'r [u8]),
}

/// Visits one row a walk meets; returns whether to go on.
type RevVisitor<'f> = dyn FnMut(Rev, Met<'_>) -> Result<bool, BackendError> + 'f;

/// The start of a stored revision, as [`ReadTx::for_each_head_between`] reads it.
pub struct Head<'r> {
    /// The encoded key-value, or when `whole` is false its first bytes (at least
    /// `split::FIRST_PART_MIN`).
    pub kv: &'r [u8],
    pub whole: bool,
}

impl<'r> Head<'r> {
    fn of_whole(rev: Rev, row: &'r [u8]) -> Result<Self, BackendError> {
        let kv = row.get(1..).ok_or(BackendError::Malformed(rev))?;
        Ok(Head { kv, whole: true })
    }
}

/// The overlays' next revision in a walk, if any.
fn next_staged<'r, I: Iterator<Item = (Rev, &'r [u8])>>(
    walks: &mut [std::iter::Peekable<I>],
) -> Option<Rev> {
    walks.iter_mut().filter_map(|w| w.peek().map(|e| e.0)).min()
}

/// Moves every overlay walk past `rev`.
fn skip_staged<'r, I: Iterator<Item = (Rev, &'r [u8])>>(
    walks: &mut [std::iter::Peekable<I>],
    rev: Rev,
) {
    for w in walks {
        while w.next_if(|e| e.0 <= rev).is_some() {}
    }
}

impl<'a> ReadTx<'a> {
    fn new(tx: &redb::ReadTransaction, overlays: [&'a Rows; 2]) -> Result<Self, BackendError> {
        Ok(ReadTx {
            kv: tx.open_table(KV)?,
            pages: tx.open_table(split::PAGES)?,
            pieces: tx.open_table(split::PIECES)?,
            meta: tx.open_table(META)?,
            overlays,
        })
    }

    /// Visits every stored revision in revision order (used to rebuild the in-memory index).
    pub fn for_each_rev(
        &self,
        mut f: impl FnMut(Rev, Stored) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        self.visit_whole(Rev::default(), None, &mut |rev, stored| {
            f(rev, stored)?;
            Ok(true)
        })
    }

    /// Visits stored revisions in `[from, to)` in revision order until `f` returns false.
    pub fn for_each_rev_between(
        &self,
        from: Rev,
        to: Rev,
        mut f: impl FnMut(Rev, Stored) -> Result<bool, BackendError>,
    ) -> Result<(), BackendError> {
        self.visit_whole(from, Some(to), &mut f)
    }

    /// Like [`ReadTx::for_each_rev_between`], but of a split row only its first part is read
    /// (where the encoding starts: the key): a walk that wants keys reads kilobytes per row,
    /// not whole values, and copies nothing.
    pub fn for_each_head_between(
        &self,
        from: Rev,
        to: Rev,
        mut f: impl FnMut(Rev, Head<'_>) -> Result<bool, BackendError>,
    ) -> Result<(), BackendError> {
        self.visit(from, Some(to), &mut |rev, met| match met {
            Met::Committed(row) if split::is_split(row) => {
                let first = split::first_part(rev, row, &self.pages, &self.pieces)?;
                debug_assert!(first.value().len() >= split::FIRST_PART_MIN);
                f(
                    rev,
                    Head {
                        kv: first.value(),
                        whole: false,
                    },
                )
            }
            Met::Committed(row) | Met::Staged(row) => f(rev, Head::of_whole(rev, row)?),
        })
    }

    /// [`ReadTx::visit`] with every row whole and decoded.
    fn visit_whole(
        &self,
        from: Rev,
        to: Option<Rev>,
        f: &mut dyn FnMut(Rev, Stored) -> Result<bool, BackendError>,
    ) -> Result<(), BackendError> {
        let mut buf = Vec::new();
        let mut joiner = split::Joiner::new(&self.pages, &self.pieces, from)?;
        self.visit(from, to, &mut |rev, met| {
            let row = match met {
                Met::Staged(row) => row,
                Met::Committed(row) => joiner.whole(rev, row, &mut buf)?,
            };
            f(rev, decode_stored(rev, row)?)
        })
    }

    /// The committed rows from `from` (to `to`, exclusive) merged with the staged ones: the
    /// newest overlay that knows a revision decides (its row replaces, its deletion hides).
    fn visit(
        &self,
        from: Rev,
        to: Option<Rev>,
        f: &mut RevVisitor<'_>,
    ) -> Result<(), BackendError> {
        let lo = from.to_bytes();
        let hi = to.map(Rev::to_bytes);
        let committed = match &hi {
            Some(hi) => self.kv.range(lo.as_slice()..hi.as_slice())?,
            None => self.kv.range(lo.as_slice()..)?,
        };
        let mut walks = self.overlays.map(|o| o.range(from, to).peekable());
        let overlays = &self.overlays;
        // Emits what the overlays say of `rev`, if they know it; `None`: they do not.
        let staged = |rev: Rev, f: &mut RevVisitor<'_>| -> Result<Option<bool>, BackendError> {
            match staging::resolve(overlays, rev) {
                Some(Some(row)) => Ok(Some(f(rev, Met::Staged(row))?)),
                Some(None) => Ok(Some(true)),
                None => Ok(None),
            }
        };
        for item in committed {
            let (k, v) = item?;
            let rev = Rev::from_bytes(k.value()).ok_or(BackendError::Malformed(Rev::default()))?;
            while let Some(r) = next_staged(&mut walks).filter(|r| *r < rev) {
                skip_staged(&mut walks, r);
                if staged(r, f)? == Some(false) {
                    return Ok(());
                }
            }
            skip_staged(&mut walks, rev);
            let go_on = match staged(rev, f)? {
                Some(go_on) => go_on,
                None => f(rev, Met::Committed(v.value()))?,
            };
            if !go_on {
                return Ok(());
            }
        }
        while let Some(r) = next_staged(&mut walks) {
            skip_staged(&mut walks, r);
            if staged(r, f)? == Some(false) {
                break;
            }
        }
        Ok(())
    }
}

impl RevRead for ReadTx<'_> {
    fn get_rev(&self, rev: Rev) -> Result<Option<Stored>, BackendError> {
        if let Some(row) = staging::resolve(&self.overlays, rev) {
            return row.map(|r| decode_stored(rev, r)).transpose();
        }
        let Some(row) = self.kv.get(rev.to_bytes().as_slice())? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        let row = split::whole(rev, row.value(), &self.pages, &self.pieces, &mut buf)?;
        Ok(Some(decode_stored(rev, row)?))
    }

    fn kv_len(&self, rev: Rev) -> Result<Option<usize>, BackendError> {
        if let Some(row) = staging::resolve(&self.overlays, rev) {
            return row.map(|r| stored_len(rev, r)).transpose();
        }
        match self.kv.get(rev.to_bytes().as_slice())? {
            Some(g) => Ok(Some(split::value_len(rev, g.value())?)),
            None => Ok(None),
        }
    }

    fn meta(&self, name: &str) -> Result<Option<u64>, BackendError> {
        if let Some(v) = staging::resolve_meta(&self.overlays, name) {
            return Ok(Some(v));
        }
        Ok(self.meta.get(name)?.map(|g| g.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Tables a caller might name, as the state machine names its own.
    const MEMBERS: Table = Table {
        name: "members",
        tag: 2,
    };
    const REMOVED: Table = Table {
        name: "members_removed",
        tag: 3,
    };
    const LEASES: Table = Table {
        name: "leases",
        tag: 4,
    };
    const T: &[Table] = &[MEMBERS, REMOVED, LEASES];

    #[test]
    fn revisions_roundtrip_and_failed_update_is_rolled_back() {
        let d = tempfile::tempdir().unwrap();
        let b = Backend::open(&d.path().join("db"), T).unwrap();
        b.update(true, |w| {
            w.put_rev(Rev::new(2, 0), false, b"v")?;
            w.set_meta("ci", 7)?;
            Ok::<_, BackendError>(())
        })
        .unwrap();
        let r: Result<(), BackendError> = b.update(false, |w| {
            w.put_rev(Rev::new(3, 0), false, b"x")?;
            Err(BackendError::Malformed(Rev::new(3, 0)))
        });
        assert!(r.is_err());
        b.view(|r| {
            assert_eq!(r.get_rev(Rev::new(2, 0))?.unwrap().kv, b"v");
            assert!(r.get_rev(Rev::new(3, 0))?.is_none());
            assert_eq!(r.meta("ci")?, Some(7));
            Ok::<_, BackendError>(())
        })
        .unwrap();
    }

    /// The rows of a walk over `[from, to)`; checks that a walk of heads meets the same ones.
    fn revs_in(b: &Backend, from: i64, to: i64) -> Vec<(i64, Vec<u8>)> {
        let (mut got, mut heads) = (Vec::new(), Vec::new());
        let (from, to) = (Rev::new(from, 0), Rev::new(to, 0));
        b.view(|r| {
            r.for_each_rev_between(from, to, |rev, s| {
                got.push((rev.main, s.kv));
                Ok(true)
            })?;
            r.for_each_head_between(from, to, |rev, h| {
                heads.push((rev.main, h.kv.to_vec(), h.whole));
                Ok(true)
            })
        })
        .unwrap();
        assert_eq!(got.len(), heads.len());
        for ((rev, kv), (at, head, whole)) in got.iter().zip(&heads) {
            assert_eq!(rev, at);
            assert!(kv.starts_with(head) && *whole == (kv == head), "{rev}");
        }
        got
    }

    /// Waits (up to 10 s) until `done` holds of the writer's progress.
    fn eventually(b: &Backend, what: &str, done: impl Fn(&Flow) -> bool) {
        let until = Instant::now() + std::time::Duration::from_secs(10);
        while !done(&b.flow()) {
            assert!(Instant::now() < until, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Views see what updates staged, whether the writer has taken it (sealed, being
    /// committed) or not (open), merged with the committed rows: rows, deletions, meta values.
    #[test]
    fn views_see_what_updates_staged_before_the_writer_commits_it() {
        let d = tempfile::tempdir().unwrap();
        let b = Backend::open(&d.path().join("db"), T).unwrap();
        b.update(true, |w| {
            (1..=4).try_for_each(|m| w.put_rev(Rev::new(m, 0), false, b"old"))?;
            w.set_meta("rev", 4)
        })
        .unwrap();
        // A commit that takes long: the writer takes what is staged, then waits here.
        let slow = b.lock_writer();
        b.update(false, |w| {
            w.put_rev(Rev::new(5, 0), false, b"new")?;
            w.delete_rev(Rev::new(2, 0))?;
            w.set_meta("rev", 5)
        })
        .unwrap();
        let until = Instant::now() + std::time::Duration::from_secs(10);
        while b.sealed_gen().writes == 0 {
            assert!(
                Instant::now() < until,
                "the writer never took the staged writes"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        b.update(false, |w| {
            w.put_rev(Rev::new(6, 0), true, b"gone")?;
            w.delete_rev(Rev::new(3, 0))
        })
        .unwrap();
        assert!(b.open_gen().writes > 0 && b.sealed_gen().writes > 0);
        let check = |b: &Backend| {
            b.view(|r| {
                assert!(r.get_rev(Rev::new(2, 0))?.is_none());
                assert_eq!(r.get_rev(Rev::new(5, 0))?.unwrap().kv, b"new");
                assert_eq!(r.kv_len(Rev::new(5, 0))?, Some(3));
                assert!(r.get_rev(Rev::new(6, 0))?.unwrap().tombstone);
                assert_eq!(r.meta("rev")?, Some(5));
                Ok::<_, BackendError>(())
            })
            .unwrap();
            let all: Vec<i64> = revs_in(b, 0, 100).into_iter().map(|(m, _)| m).collect();
            assert_eq!(all, [1, 4, 5, 6]);
            assert_eq!(
                revs_in(b, 4, 6),
                [(4, b"old".to_vec()), (5, b"new".to_vec())]
            );
        };
        check(&b);
        // An update reads what earlier ones staged too.
        b.update(false, |w| {
            assert_eq!(w.get_rev(Rev::new(5, 0))?.unwrap().kv, b"new");
            assert!(w.get_rev(Rev::new(3, 0))?.is_none());
            assert_eq!(w.meta("rev")?, Some(5));
            Ok::<_, BackendError>(())
        })
        .unwrap();
        // An early stop is honoured in the staged part too.
        let mut seen = 0;
        b.view(|r| {
            r.for_each_rev_between(Rev::new(4, 0), Rev::new(9, 0), |_, _| {
                seen += 1;
                Ok(seen < 2)
            })
        })
        .unwrap();
        assert_eq!(seen, 2);
        drop(slow);
        // Reading the other tables waits for everything to be committed.
        b.rows(MEMBERS).unwrap();
        assert_eq!(b.open_gen().writes + b.sealed_gen().writes, 0);
        check(&b);
    }

    /// Updates stage and return while a commit is in progress: nothing an update does waits
    /// for the disk, until the staged writes reach their bound.
    #[test]
    fn updates_do_not_wait_for_a_commit_until_the_staged_writes_are_at_their_bound() {
        let d = tempfile::tempdir().unwrap();
        let b = Arc::new(Backend::open(&d.path().join("db"), T).unwrap());
        let slow = b.lock_writer();
        for m in 1..=1000 {
            b.update(false, |w| w.put_rev(Rev::new(m, 0), false, b"v"))
                .unwrap();
        }
        assert_eq!(revs_in(&b, 0, 2000).len(), 1000);
        let more = {
            let b = b.clone();
            std::thread::spawn(move || {
                for m in 0..(2 * STAGED_MAX_WRITES as i64 / 1000 + 2) {
                    b.update(false, |w| {
                        (0..1000).try_for_each(|i| {
                            w.put_rev(Rev::new(10_000 + m * 1000 + i, 0), false, b"w")
                        })
                    })
                    .unwrap();
                }
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!more.is_finished(), "staging went past its bound");
        drop(slow);
        more.join().unwrap();
        b.update(true, |_| Ok::<_, BackendError>(())).unwrap();
        let f = b.flow();
        assert_eq!((f.written, f.durable), (f.staged, f.staged));
    }

    #[test]
    fn staged_writes_are_committed_when_asked_after_a_while_and_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        let b = Backend::open(&path, T).unwrap();
        b.update(false, |w| w.put_rev(Rev::new(1, 0), false, b"a"))
            .unwrap();
        b.update(true, |w| w.set_meta("rev", 1)).unwrap();
        {
            let f = b.flow();
            assert_eq!(
                f.durable, f.staged,
                "a durable update returns once it is durable"
            );
        }
        b.update(false, |w| w.put_rev(Rev::new(2, 0), false, b"b"))
            .unwrap();
        eventually(&b, "committed once held for long enough", |f| {
            f.written == f.staged
        });
        eventually(&b, "made durable within a second or so", |f| {
            f.durable == f.staged
        });
        b.update(false, |w| {
            (3..3 + HOLD_WRITES as i64).try_for_each(|m| w.put_rev(Rev::new(m, 0), false, b"x"))
        })
        .unwrap();
        eventually(&b, "committed at the write limit", |f| {
            f.written == f.staged
        });
        b.update(false, |w| w.put_rev(Rev::new(20_002, 0), false, b"last"))
            .unwrap();
        drop(b);
        let b = Backend::open(&path, T).unwrap();
        assert_eq!(revs_in(&b, 20_000, 30_000).len(), 1);
        assert_eq!(revs_in(&b, 0, 3).len(), 2);
        assert_eq!(b.view(|r| r.meta("rev")).unwrap(), Some(1));
    }

    /// An idle writer is woken by the first update after it, whatever that update wrote
    /// (an entry that only moves the applied index, then puts).
    #[test]
    fn the_first_update_after_a_quiet_spell_wakes_the_writer_even_with_no_rows() {
        let d = tempfile::tempdir().unwrap();
        let b = Backend::open(&d.path().join("db"), T).unwrap();
        b.update(true, |w| w.set_meta("rev", 1)).unwrap();
        b.update(false, |w| w.set_meta("rev", 2)).unwrap();
        b.update(false, |w| w.put_rev(Rev::new(3, 0), false, b"c"))
            .unwrap();
        eventually(&b, "committed within the batch interval", |f| {
            f.written == f.staged
        });
        eventually(&b, "made durable within a second or so", |f| {
            f.durable == f.staged
        });
    }

    /// A failed update stages nothing; what earlier updates staged stands.
    #[test]
    fn a_failed_update_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let b = Backend::open(&d.path().join("db"), T).unwrap();
        b.update(false, |w| w.put_rev(Rev::new(1, 0), false, b"a"))
            .unwrap();
        let r: Result<(), BackendError> = b.update(false, |w| {
            w.put_rev(Rev::new(2, 0), false, b"b")?;
            w.put(MEMBERS, b"k", b"v")?;
            Err(BackendError::Malformed(Rev::new(2, 0)))
        });
        assert!(r.is_err());
        assert_eq!(revs_in(&b, 0, 10), [(1, b"a".to_vec())]);
        assert!(b.rows(MEMBERS).unwrap().is_empty());
    }

    /// A tiny store's quota counts its pages in use (below redb's fixed file size), growing
    /// with data and falling back after a defragmentation; a large one counts its file.
    #[test]
    fn quota_size_counts_pages_in_use_while_the_store_is_tiny() {
        let d = tempfile::tempdir().unwrap();
        let b = Backend::open(&d.path().join("db"), T).unwrap();
        let empty = b.quota_size();
        assert!(empty > 0 && empty < b.size(), "{empty} of {}", b.size());
        for i in 1..20 {
            b.update(true, |w| w.put_rev(Rev::new(i, 0), false, &[7u8; 3000]))
                .unwrap();
        }
        let full = b.quota_size();
        assert!(full > empty + 19 * 3000, "{full}");
        b.update(true, |w| {
            for i in 1..20 {
                w.delete_rev(Rev::new(i, 0))?;
            }
            Ok::<_, BackendError>(())
        })
        .unwrap();
        b.defragment().unwrap();
        assert!(b.quota_size() < full / 2, "{} of {full}", b.quota_size());
        for i in 20..600 {
            b.update(false, |w| w.put_rev(Rev::new(i, 0), false, &[7u8; 3000]))
                .unwrap();
        }
        b.update(true, |_| Ok::<_, BackendError>(())).unwrap();
        assert!(b.size() > COUNT_PAGES_BELOW);
        assert_eq!(b.quota_size(), b.size());
    }

    /// Above the size where pages are counted, the bytes in use follow what is written and
    /// removed (estimated, with no walk over the file), survive a restart, and are counted
    /// again by a defragmentation.
    #[test]
    fn size_in_use_follows_writes_and_deletes_without_counting_pages() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        let b = Backend::open(&path, T).unwrap();
        for i in 1..=1000 {
            b.update(false, |w| w.put_rev(Rev::new(i, 0), false, &[7u8; 3000]))
                .unwrap();
        }
        b.update(true, |_| Ok::<_, BackendError>(())).unwrap();
        assert!(b.size() > COUNT_PAGES_BELOW);
        let full = b.size_in_use();
        assert!(
            full >= 1000 * 3000 && full <= b.size(),
            "{full} of {}",
            b.size()
        );
        b.update(true, |w| {
            for i in 1..=500 {
                w.delete_rev(Rev::new(i, 0))?;
            }
            Ok::<_, BackendError>(())
        })
        .unwrap();
        let half = b.size_in_use();
        assert!(
            half > full * 4 / 10 && half < full * 6 / 10,
            "{half} of {full}"
        );
        // The figure never waits for the writer (it used to walk the file holding it).
        std::thread::scope(|s| {
            let writer = b.lock_writer();
            let (tx, rx) = std::sync::mpsc::channel();
            let b = &b;
            s.spawn(move || tx.send(b.size_in_use()));
            let got = rx.recv_timeout(std::time::Duration::from_secs(5));
            drop(writer);
            assert_eq!(got, Ok(half));
        });
        drop(b);
        let b = Backend::open(&path, T).unwrap();
        assert_eq!(b.size_in_use(), half);
        b.defragment().unwrap();
        let counted = b.size_in_use();
        assert!(
            counted > half / 2 && counted < half * 2,
            "{counted} vs {half}"
        );
        assert!(counted <= b.size());
    }

    /// Long values are stored in parts (`split`): they read back whole from the held
    /// transaction, committed views, snapshot walks and an export/import, and take about
    /// their own size in pages (whole, 2 kB values took 2x, 20 kB 1.6x).
    #[test]
    fn long_values_read_back_whole_and_take_about_their_size() {
        for (len, most) in [(2_100usize, 1.3), (20_060, 1.05), (100_060, 1.05)] {
            let d = tempfile::tempdir().unwrap();
            let b = Backend::open(&d.path().join("db"), T).unwrap();
            let empty = count_pages(&b.db().begin_write().unwrap())
                .unwrap()
                .page_bytes;
            let n = (8usize << 20) / len;
            let value = |m: usize| -> Vec<u8> { (0..len).map(|i| (i * 7 + m) as u8).collect() };
            for m in 1..=n {
                b.update(false, |w| {
                    w.put_rev(Rev::new(m as i64, 0), false, &value(m))
                })
                .unwrap();
            }
            let check = |b: &Backend| {
                let rows = revs_in(b, 1, n as i64 + 1);
                assert_eq!(rows.len(), n);
                for (m, kv) in rows {
                    assert!(kv == value(m as usize), "{len}: revision {m}");
                }
                b.view(|r| {
                    assert_eq!(r.kv_len(Rev::new(3, 0))?, Some(len));
                    assert_eq!(r.get_rev(Rev::new(3, 0))?.map(|s| s.kv), Some(value(3)));
                    Ok::<_, BackendError>(())
                })
                .unwrap();
            };
            check(&b);
            b.update(true, |_| Ok::<_, BackendError>(())).unwrap();
            check(&b);
            let mut walked = 0;
            b.read_snapshot()
                .unwrap()
                .for_each_rev(&mut |rev, _, kv| {
                    assert!(kv == value(rev.main as usize));
                    walked += 1;
                    Ok(())
                })
                .unwrap();
            assert_eq!(walked, n);
            let pages = count_pages(&b.db().begin_write().unwrap())
                .unwrap()
                .page_bytes
                - empty;
            let ratio = pages as f64 / (n * len) as f64;
            assert!(
                ratio <= most,
                "{len}-byte values: {ratio:.3}x their size in pages"
            );
            let exported = dump(&b);
            let copy = d.path().join("copy");
            Backend::import(&copy, T, exported.as_slice()).unwrap();
            let c = Backend::open(&copy, T).unwrap();
            check(&c);
            assert!(dump(&c) == exported);
        }
    }

    fn dump(b: &Backend) -> Vec<u8> {
        let mut out = Vec::new();
        b.export(&mut |r| {
            out.extend_from_slice(r);
            Ok(())
        })
        .unwrap();
        out
    }

    /// Defragmenting while a writer keeps adding and removing rows loses nothing, keeps
    /// nothing removed, shrinks the file, and survives reopening.
    #[test]
    fn defragment_under_concurrent_writes_keeps_exactly_the_live_rows() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        let b = Arc::new(Backend::open(&path, T).unwrap());
        let big = vec![7u8; 4096];
        for main in 1..=2000 {
            b.update(false, |w| w.put_rev(Rev::new(main, 0), false, &big))
                .unwrap();
        }
        // In the file before they are deleted (deleting rows still staged writes nothing).
        b.update(true, |_| Ok::<_, BackendError>(())).unwrap();
        b.update(true, |w| {
            (1..=1800).try_for_each(|main| w.delete_rev(Rev::new(main, 0)))
        })
        .unwrap();
        let writer = {
            let b = b.clone();
            std::thread::spawn(move || {
                for main in 2001..=2300 {
                    b.update(false, |w| {
                        w.put_rev(Rev::new(main, 0), false, b"new")?;
                        w.delete_rev(Rev::new(main - 200, 0))?;
                        w.set_meta("rev", main as u64)
                    })
                    .unwrap();
                }
            })
        };
        let (before, after) = b.defragment().unwrap();
        writer.join().unwrap();
        assert!(after < before, "{before} -> {after}");
        let expected: Vec<i64> = (2101..=2300).collect();
        let live = |b: &Backend| {
            let mut got = Vec::new();
            b.view(|r| {
                r.for_each_rev(|rev, _| {
                    got.push(rev.main);
                    Ok(())
                })
            })
            .unwrap();
            got
        };
        assert_eq!(live(&b), expected);
        assert_eq!(b.view(|r| r.meta("rev")).unwrap(), Some(2300));
        let snapshot = dump(&b);
        drop(b);
        let reopened = Backend::open(&path, T).unwrap();
        assert_eq!(live(&reopened), expected);
        assert_eq!(dump(&reopened), snapshot);
    }

    #[test]
    fn integer_keyed_tables_of_earlier_builds_are_upgraded_to_bytes() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        {
            // As builds before named tables wrote them.
            let db = create_db(&path, crate::limits::STORE_CACHE_BYTES).unwrap();
            let tx = db.begin_write().unwrap();
            let members: TableDefinition<u64, &[u8]> = TableDefinition::new("members");
            let removed: TableDefinition<u64, u64> = TableDefinition::new("members_removed");
            let leases: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
            tx.open_table(members)
                .unwrap()
                .insert(7, b"m".as_slice())
                .unwrap();
            tx.open_table(removed).unwrap().insert(9, 0).unwrap();
            tx.open_table(leases)
                .unwrap()
                .insert(-3, [1u8; 16].as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let b = Backend::open(&path, T).unwrap();
        let le = |x: u64| x.to_le_bytes().to_vec();
        assert_eq!(b.rows(MEMBERS).unwrap(), vec![(le(7), b"m".to_vec())]);
        assert_eq!(b.rows(REMOVED).unwrap(), vec![(le(9), le(0))]);
        assert_eq!(
            b.rows(LEASES).unwrap(),
            vec![((-3i64).to_le_bytes().to_vec(), vec![1u8; 16])]
        );
        drop(b);
        // Once upgraded, the file opens as it is.
        assert_eq!(
            Backend::open(&path, T)
                .unwrap()
                .rows(MEMBERS)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn export_import_roundtrip_and_garbage_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let b = Backend::open(&d.path().join("db"), T).unwrap();
        b.update(true, |w| {
            w.put_rev(Rev::new(2, 0), false, b"v2")?;
            w.put_rev(Rev::new(3, 1), true, b"v3")?;
            w.set_meta("consistent_index", 42)?;
            w.put(MEMBERS, &7u64.to_le_bytes(), b"m")?;
            Ok::<_, BackendError>(())
        })
        .unwrap();
        let stream = export_bytes(&b);
        let copy = d.path().join("copy");
        Backend::import(&copy, T, stream.as_slice()).unwrap();
        let c = Backend::open(&copy, T).unwrap();
        c.view(|r| {
            assert_eq!(r.get_rev(Rev::new(2, 0))?.unwrap().kv, b"v2");
            assert!(r.get_rev(Rev::new(3, 1))?.unwrap().tombstone);
            assert_eq!(r.meta("consistent_index")?, Some(42));
            Ok::<_, BackendError>(())
        })
        .unwrap();
        assert_eq!(
            c.rows(MEMBERS).unwrap(),
            vec![(7u64.to_le_bytes().to_vec(), b"m".to_vec())]
        );
        let cut = &stream[..stream.len() - 1];
        assert!(Backend::import(&d.path().join("bad"), T, cut).is_err());
        assert!(Backend::import(
            &d.path().join("bad2"),
            T,
            &[9u8, 0, 0, 0, 0, 0, 0, 0, 0][..]
        )
        .is_err());
    }

    fn sample_export() -> Vec<u8> {
        let d = tempfile::tempdir().unwrap();
        let b = Backend::open(&d.path().join("db"), T).unwrap();
        b.update(true, |w| {
            for i in 1..20 {
                w.put_rev(Rev::new(i, 0), i % 5 == 0, format!("value {i}").as_bytes())?;
            }
            w.set_meta("consistent_index", 19)?;
            w.put(MEMBERS, &7u64.to_le_bytes(), b"m")?;
            w.put(LEASES, &3i64.to_le_bytes(), &[1; 16])?;
            w.put(REMOVED, &9u64.to_le_bytes(), &0u64.to_le_bytes())?;
            Ok::<_, BackendError>(())
        })
        .unwrap();
        export_bytes(&b)
    }

    fn export_bytes(b: &Backend) -> Vec<u8> {
        let mut stream = Vec::new();
        b.export(&mut |c| {
            stream.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        stream
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any truncation of a snapshot stream is refused, never imported as a smaller store.
        #[test]
        fn truncated_snapshot_is_refused(cut in 0usize..10_000) {
            let stream = sample_export();
            let cut = cut % stream.len();
            let d = tempfile::tempdir().unwrap();
            proptest::prop_assert!(Backend::import(&d.path().join("db"), T, &stream[..cut]).is_err());
        }

        /// Any single flipped byte is refused (the end record's checksum covers every byte).
        #[test]
        fn corrupted_snapshot_is_refused(at in 0usize..10_000, flip in 1u8..=255) {
            let mut stream = sample_export();
            let at = at % stream.len();
            stream[at] ^= flip;
            let d = tempfile::tempdir().unwrap();
            proptest::prop_assert!(Backend::import(&d.path().join("db"), T, stream.as_slice()).is_err());
        }

        /// Random bytes never panic the decoder.
        #[test]
        fn random_snapshot_bytes_never_panic(junk in proptest::collection::vec(0u8..=255, 0..512)) {
            let d = tempfile::tempdir().unwrap();
            let _ = Backend::import(&d.path().join("db"), T, junk.as_slice());
        }
    }

    #[test]
    fn rev_ordering_matches_byte_ordering() {
        let a = Rev::new(1, 5).to_bytes();
        let b = Rev::new(2, 0).to_bytes();
        assert!(a < b);
        assert_eq!(Rev::from_bytes(&b), Some(Rev::new(2, 0)));
    }
}

/// Receives (table tag, key, value) of each row.
type RowVisitor<'a> = dyn FnMut(u8, &[u8], &[u8]) -> std::io::Result<()> + 'a;

/// Visits one stored revision's whole row (`flags | value`).
type WholeRowVisitor<'a> = dyn FnMut(Rev, &[u8]) -> Result<(), BackendError> + 'a;

/// Visits every stored revision in order, with its whole row.
fn whole_rows(
    tx: &redb::ReadTransaction,
    from: Rev,
    f: &mut WholeRowVisitor<'_>,
) -> Result<(), BackendError> {
    let (pages, pieces) = (tx.open_table(split::PAGES)?, tx.open_table(split::PIECES)?);
    let mut joiner = split::Joiner::new(&pages, &pieces, from)?;
    let mut buf = Vec::new();
    let from = from.to_bytes();
    for row in tx.open_table(KV)?.range(from.as_slice()..)? {
        let (k, v) = row?;
        let rev = Rev::from_bytes(k.value()).ok_or(BackendError::Malformed(Rev::default()))?;
        f(rev, joiner.whole(rev, v.value(), &mut buf)?)?;
    }
    Ok(())
}

/// Visits every row of every table as raw snapshot fields, in the order the stream holds them.
fn walk(
    tx: &redb::ReadTransaction,
    tables: &[Table],
    f: &mut RowVisitor<'_>,
) -> Result<(), BackendError> {
    let io = io_error("snapshot export");
    whole_rows(tx, Rev::default(), &mut |rev, row| {
        f(SNAP_KV, &rev.to_bytes(), row).map_err(io)
    })?;
    for row in tx.open_table(META)?.iter()? {
        let (k, v) = row?;
        f(SNAP_META, k.value().as_bytes(), &v.value().to_le_bytes()).map_err(io)?;
    }
    for t in tables {
        for row in tx.open_table(t.def())?.iter()? {
            let (k, v) = row?;
            f(t.tag, k.value(), v.value()).map_err(io)?;
        }
    }
    Ok(())
}

/// One record of a snapshot stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapRecord {
    /// A stored revision: the 16-byte revision key and the flagged value.
    Kv(Vec<u8>, Vec<u8>),
    Meta(String, u64),
    /// A row of the caller's table with this tag.
    Row(u8, Vec<u8>, Vec<u8>),
}

impl SnapRecord {
    /// The revision of a stored key-value record.
    pub fn kv_rev(&self) -> Option<Rev> {
        match self {
            SnapRecord::Kv(k, _) => Rev::from_bytes(k),
            _ => None,
        }
    }

    /// A stored key-value record's revision, tombstone flag and encoded `KeyValue`; `None`
    /// for other records, and for a malformed one (which the import refuses).
    pub fn kv_row(&self) -> Option<(Rev, bool, &[u8])> {
        match self {
            SnapRecord::Kv(k, v) => {
                let (tombstone, kv) = unflag(v)?;
                Some((Rev::from_bytes(k)?, tombstone, kv))
            }
            _ => None,
        }
    }
}

/// Reads a snapshot stream record by record, checking sizes before allocating and the end
/// record's count and checksum; anything after the end record is an error.
pub struct SnapshotReader<R> {
    input: R,
    /// The caller's tables: rows with any other tag are refused.
    tables: &'static [Table],
    count: u64,
    crc: u32,
    /// Bytes consumed so far.
    pub bytes: u64,
}

impl<R: std::io::Read> SnapshotReader<R> {
    pub fn new(input: R, tables: &'static [Table]) -> Self {
        SnapshotReader {
            input,
            tables,
            count: 0,
            crc: 0,
            bytes: 0,
        }
    }

    /// CRC32C of every record read so far (after the end: the stream's checksum).
    pub fn checksum(&self) -> u32 {
        self.crc
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<bool, BackendError> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.bytes += buf.len() as u64;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(BackendError::Io {
                what: "snapshot import",
                source: e,
            }),
        }
    }

    fn field(&mut self) -> Result<Vec<u8>, BackendError> {
        let mut len = [0u8; 4];
        if !self.read_exact(&mut len)? {
            return Err(bad("truncated record"));
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_SNAPSHOT_FIELD {
            return Err(bad("field too long"));
        }
        let mut v = vec![0u8; n];
        if !self.read_exact(&mut v)? {
            return Err(bad("truncated record"));
        }
        self.crc = crc32c::crc32c_append(self.crc, &len);
        self.crc = crc32c::crc32c_append(self.crc, &v);
        Ok(v)
    }

    /// The next record; `None` once the end record has been read and verified.
    pub fn next_record(&mut self) -> Result<Option<SnapRecord>, BackendError> {
        let mut table = [0u8; 1];
        if !self.read_exact(&mut table)? {
            return Err(bad("truncated: no end record"));
        }
        let (count, crc) = (self.count, self.crc);
        self.crc = crc32c::crc32c_append(self.crc, &table);
        let k = self.field()?;
        let v = self.field()?;
        let word8 = |b: Vec<u8>, what: &str| -> Result<[u8; 8], BackendError> {
            b.try_into().map_err(|_| bad(what))
        };
        let rec = match table[0] {
            SNAP_END => {
                let n = word8(k, "end record")?;
                let sum: [u8; 4] = v.try_into().map_err(|_| bad("end record"))?;
                if u64::from_le_bytes(n) != count || u32::from_le_bytes(sum) != crc {
                    return Err(bad("checksum mismatch"));
                }
                // Zeros may follow (a file padded to a block size); anything else may not.
                let mut rest = [0u8; 4096];
                loop {
                    let n = match self.input.read(&mut rest) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(io_error("snapshot import")(e)),
                    };
                    if rest[..n].iter().any(|b| *b != 0) {
                        return Err(bad("data after the end record"));
                    }
                }
                self.crc = crc;
                return Ok(None);
            }
            SNAP_KV => SnapRecord::Kv(k, v),
            SNAP_META => {
                let name = String::from_utf8(k).map_err(|_| bad("meta name"))?;
                SnapRecord::Meta(name, u64::from_le_bytes(word8(v, "meta value")?))
            }
            tag if self.tables.iter().any(|t| t.tag == tag) => SnapRecord::Row(tag, k, v),
            _ => return Err(bad("unknown table")),
        };
        self.count += 1;
        Ok(Some(rec))
    }
}

fn bad(what: &str) -> BackendError {
    BackendError::BadSnapshot(what.to_string())
}

/// Builds before the caller named its tables kept some with integer keys and values; such a
/// table is rewritten in place as bytes, integers little endian (as snapshot streams have
/// always carried them), in the transaction that opens the database.
fn upgrade_table(tx: &redb::WriteTransaction, t: Table) -> Result<(), BackendError> {
    fn rows<K, V>(
        tx: &redb::WriteTransaction,
        name: &'static str,
        key: impl Fn(K::SelfType<'_>) -> Vec<u8>,
        value: impl Fn(V::SelfType<'_>) -> Vec<u8>,
    ) -> Result<Option<TableRows>, BackendError>
    where
        K: redb::Key + 'static,
        V: redb::Value + 'static,
    {
        let def: TableDefinition<K, V> = TableDefinition::new(name);
        let table = match tx.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableTypeMismatch { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((key(k.value()), value(v.value())));
        }
        drop(table);
        tx.delete_table(def)?;
        Ok(Some(out))
    }
    let le_u64 = |x: u64| x.to_le_bytes().to_vec();
    let le_i64 = |x: i64| x.to_le_bytes().to_vec();
    let bytes = |x: &[u8]| x.to_vec();
    let found = match rows::<u64, &[u8]>(tx, t.name, le_u64, bytes)? {
        Some(r) => Some(r),
        None => match rows::<u64, u64>(tx, t.name, le_u64, le_u64)? {
            Some(r) => Some(r),
            None => rows::<i64, &[u8]>(tx, t.name, le_i64, bytes)?,
        },
    };
    let Some(found) = found else {
        return Err(BackendError::BadTable(t.name));
    };
    let mut table = tx.open_table(t.def())?;
    for (k, v) in &found {
        table.insert(k.as_slice(), v.as_slice())?;
    }
    tracing::info!(
        table = t.name,
        rows = found.len(),
        "upgraded an integer-keyed table to bytes"
    );
    Ok(())
}

/// A durable write transaction on the database in the file at `path` that records redb's
/// allocator state when the file is past `COUNT_PAGES_BELOW`, as durable commits do (see
/// `Core::commit`): a commit without it leaves the next open after a crash a walk of every
/// page.
fn durable_write(db: &Database, path: &Path) -> Result<redb::WriteTransaction, BackendError> {
    let mut tx = db.begin_write()?;
    let big = std::fs::metadata(path).is_ok_and(|m| physical_len(&m) > COUNT_PAGES_BELOW);
    tx.set_quick_repair(big);
    Ok(tx)
}

fn create_db(path: &Path, cache: usize) -> Result<Database, BackendError> {
    // redb creates its file world-readable; made first, it is owner-only.
    crate::private::touch(path).map_err(|e| BackendError::Open {
        path: path.to_path_buf(),
        source: redb::StorageError::from(e).into(),
    })?;
    Database::builder()
        .set_cache_size(cache)
        .create(path)
        .map_err(|source| BackendError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Copies the `kv` rows of `src` after `after` (all if `None`) into `dst`, which holds none
/// after it, committing every [`IMPORT_BATCH_BYTES`] so memory stays bounded. Returns the
/// last key copied.
fn copy_kv(
    src: &redb::ReadTransaction,
    dst: &Database,
    after: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, BackendError> {
    let table = src.open_table(KV)?;
    let (pages, pieces) = (
        src.open_table(split::PAGES)?,
        src.open_table(split::PIECES)?,
    );
    let from = after.and_then(Rev::from_bytes).unwrap_or_default();
    let mut joiner = split::Joiner::new(&pages, &pieces, from)?;
    let mut buf = Vec::new();
    let mut rows = match after {
        Some(k) => {
            table.range::<&[u8]>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))?
        }
        None => table.range::<&[u8]>(..)?,
    };
    let mut last = after.map(<[u8]>::to_vec);
    loop {
        let mut tx = dst.begin_write()?;
        tx.set_durability(Durability::None)?;
        let mut batch = 0usize;
        let mut more = false;
        {
            let mut w = split::Writer::open(&tx)?;
            let mut out = split::Appender::open(&mut w)?;
            for row in rows.by_ref() {
                let (k, v) = row?;
                let rev =
                    Rev::from_bytes(k.value()).ok_or(BackendError::Malformed(Rev::default()))?;
                let whole = joiner.whole(rev, v.value(), &mut buf)?;
                out.append(rev, whole)?;
                batch += k.value().len() + whole.len();
                last = Some(k.value().to_vec());
                if batch >= IMPORT_BATCH_BYTES {
                    more = true;
                    break;
                }
            }
            out.close()?;
        }
        tx.commit()?;
        if !more {
            return Ok(last);
        }
    }
}

/// Makes `def` in `tx` an exact copy of the same table in `src`.
fn replace_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &redb::ReadTransaction,
    tx: &mut redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<(), BackendError> {
    tx.delete_table(def)?;
    let mut out = tx.open_table(def)?;
    for row in src.open_table(def)?.iter()? {
        let (k, v) = row?;
        out.insert(k.value(), v.value())?;
    }
    Ok(())
}
