//! The peer transport: raft messages between members over TCP (or TLS for `https` peer URLs).
//! The protocol — handshake, frames, snapshot and query connections — is `docs/peer-protocol.md`;
//! its wire layout is `ballast_net::peer`.
//!
//! - Frames larger than `max_frame` are refused before anything is allocated for them (the
//!   protobuf 2 decoder raft-rs uses is not trusted with unbounded input) and end the stream.
//! - Each peer has its own writer task and a bounded queue: a slow or partitioned peer loses
//!   messages (raft retransmits) and is reported unreachable, but never blocks the driver or
//!   other peers. Reconnection backs off from 50 ms to 1 s.
//! - A snapshot is staged in a file and fsynced before the receiver acknowledges it and hands
//!   the message to raft.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_storage::stats::Histogram;

use crate::limits::{PEER_QUEUE, SNAPSHOT_CHUNK};
use ballast_net::peer::{self, frame_head, parse_frame_head, Handshake, Kind, HANDSHAKE_LEN};
use protobuf::Message as _;
use raft::eraftpb::Message;

/// The extension of a snapshot received from the leader (`<index>-<from>.ballast-snap`,
/// `.ballast-snap.tmp` while it arrives): not etcd's `.snap`, which may sit in the same
/// directory on a member converted from etcd.
const SNAPSHOT_EXT: &str = "ballast-snap";
/// The extension of a received snapshot the state machine's builder made into a store as it
/// arrived (see [`Transport::set_snapshot_builder`]).
const STORE_EXT: &str = "ballast-store";
/// Frames of a snapshot stream waiting for the builder: the stream is read no faster than the
/// store is built, so the leader's send is paced by the learner's disk.
const BUILD_QUEUE: usize = 4;

/// Where received snapshots are staged, and how many may wait there at once.
pub struct SnapshotStage {
    pub dir: std::path::PathBuf,
    /// `--max-snapshots`; 0: no bound.
    pub max_files: usize,
}

/// Whether `name` is a received snapshot, whole or partial, as stream bytes or built into a
/// store, in the snap directory.
pub fn is_received_snapshot_file(name: &str) -> bool {
    [SNAPSHOT_EXT, STORE_EXT]
        .iter()
        .any(|ext| name.ends_with(&format!(".{ext}")) || name.ends_with(&format!(".{ext}.tmp")))
}

/// Whether a staged snapshot (from [`Transport::take_received`]) is a store the builder made,
/// rather than the stream's bytes.
pub fn is_built_snapshot(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == STORE_EXT)
}
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// What the transport tells the driver.
pub enum Inbound {
    /// A message from a peer, to step into raft.
    Message(Box<Message>),
    /// A peer could not be reached; raft should slow its replication to it.
    Unreachable(u64),
    /// A snapshot stream to a peer ended: delivered (true) or failed.
    SnapshotSent(u64, bool),
}

/// Writes the state machine's export through the given sink.
pub type SnapshotSource = Arc<
    dyn Fn(&mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> Result<(), SourceError> + Send + Sync,
>;

/// Why the state machine could not export a snapshot (its own error, kept as the source).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the state machine's store at a path from a snapshot stream (what a
/// [`SnapshotSource`] wrote), durably, on a blocking thread.
pub type SnapshotBuilder =
    Arc<dyn Fn(&std::path::Path, &mut dyn std::io::Read) -> Result<(), SourceError> + Send + Sync>;

/// Why sending a snapshot to a peer failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("no snapshot source")]
    NoSource,
    #[error("peer unreachable")]
    Unreachable,
    #[error("cannot encode the snapshot message: {0}")]
    Encode(#[from] protobuf::ProtobufError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot export: {0}")]
    Source(SourceError),
    #[error("snapshot export task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("snapshot stream closed")]
    Closed,
    #[error("no acknowledgement")]
    NoAck,
}

#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// A peer connection: plain TCP, or TLS over it.
pub trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> PeerIo for T {}
type Conn = Box<dyn PeerIo>;

/// TLS on the peer port (`--peer-*` flags): how to dial and how to accept. The server side is
/// asked for its configuration on every handshake, so certificates can rotate.
#[derive(Clone)]
pub struct PeerTls {
    pub client: Arc<rustls::ClientConfig>,
    pub server: Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>,
}

/// How long a peer may take to finish its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Dials a peer URL's address: `host:port` over TCP, or a unix socket path, with TLS when
/// configured (`https`, `unixs`).
async fn connect(url: &str, tls: Option<&PeerTls>) -> Option<Conn> {
    let (stream, host): (Conn, &str) = match ballast_net::urls::unix_socket(url) {
        Some((path, _)) => {
            let s = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::UnixStream::connect(path))
                .await
                .ok()?
                .ok()?;
            (Box::new(s), ballast_net::urls::unix_server_name(path))
        }
        None => {
            let addr = host_port(url)?;
            let s = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
                .await
                .ok()?
                .ok()?;
            let _ = s.set_nodelay(true);
            (Box::new(s), ballast_net::tls::host_port(addr)?.0)
        }
    };
    let Some(tls) = tls else {
        return Some(stream);
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).ok()?;
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    match tokio::time::timeout(TLS_HANDSHAKE, connector.connect(name, stream)).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            tracing::warn!(peer = %url, error = %e, "peer TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

struct Inner {
    member_id: u64,
    cluster_id: u64,
    max_frame: usize,
    inbound: mpsc::Sender<Inbound>,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<u64, Peer>>,
    membership: Mutex<Option<MembershipFn>>,
    query: Mutex<Option<QueryFn>>,
    snapshot_source: Mutex<Option<SnapshotSource>>,
    snapshot_builder: Mutex<Option<SnapshotBuilder>>,
    snap_dir: std::path::PathBuf,
    received: Mutex<Staged>,
    /// Peers with a snapshot stream in flight (one at a time each).
    sending: Mutex<std::collections::HashSet<u64>>,
    stats: Mutex<HashMap<u64, Arc<PeerStats>>>,
    tls: Option<PeerTls>,
}

/// What `/metrics` reports per peer (etcd's `etcd_network_peer_*`).
pub struct PeerStats {
    pub sent_bytes: AtomicU64,
    /// Frame bytes read from the peer's message stream.
    pub received_bytes: AtomicU64,
    /// 1 while this member's message stream to the peer is connected.
    pub active: AtomicU64,
    /// Heartbeats that could not be queued for the peer.
    pub heartbeat_failures: AtomicU64,
    /// Heartbeat to heartbeat response, measured by whoever leads.
    pub round_trip: Histogram,
    heartbeat_sent: Mutex<Option<Instant>>,
}

impl Inner {
    fn stats(&self, peer: u64) -> Arc<PeerStats> {
        lock(&self.stats)
            .entry(peer)
            .or_insert_with(|| {
                Arc::new(PeerStats {
                    sent_bytes: AtomicU64::new(0),
                    received_bytes: AtomicU64::new(0),
                    active: AtomicU64::new(0),
                    heartbeat_failures: AtomicU64::new(0),
                    round_trip: Histogram::exponential(0.0001, 2.0, 14),
                    heartbeat_sent: Mutex::new(None),
                })
            })
            .clone()
    }
}

/// Snapshots received and staged, by index, until raft installs one.
struct Staged {
    /// How many may wait at once (`--max-snapshots`; 0: no bound).
    max_files: usize,
    files: std::collections::BTreeMap<u64, std::path::PathBuf>,
}

impl Staged {
    /// Whether one more may be staged. A full stage turns the leader's stream away (it
    /// reports the snapshot failed and sends again later), never drops one raft may install.
    fn has_room(&self) -> bool {
        self.max_files == 0 || self.files.len() < self.max_files
    }

    /// The file of the snapshot raft installs, and those staged before it: raft's snapshots
    /// only move forward, so the older ones are never needed and go to be deleted.
    fn take(&mut self, index: u64) -> (Option<std::path::PathBuf>, Vec<std::path::PathBuf>) {
        let from_index = self.files.split_off(&index);
        let older = std::mem::replace(&mut self.files, from_index);
        (self.files.remove(&index), older.into_values().collect())
    }
}

type MembershipFn = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;
type QueryFn = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

struct Peer {
    urls: Vec<String>,
    queue: mpsc::Sender<Message>,
}

impl Transport {
    /// `inbound` receives everything peers send; `runtime` runs the reader and writer tasks.
    pub fn new(
        member_id: u64,
        cluster_id: u64,
        max_frame: usize,
        inbound: mpsc::Sender<Inbound>,
        runtime: tokio::runtime::Handle,
        snapshots: SnapshotStage,
        tls: Option<PeerTls>,
    ) -> Transport {
        Transport {
            inner: Arc::new(Inner {
                member_id,
                cluster_id,
                max_frame,
                inbound,
                runtime,
                peers: Mutex::new(HashMap::new()),
                membership: Mutex::new(None),
                query: Mutex::new(None),
                snapshot_source: Mutex::new(None),
                snapshot_builder: Mutex::new(None),
                snap_dir: snapshots.dir,
                received: Mutex::new(Staged {
                    max_files: snapshots.max_files,
                    files: Default::default(),
                }),
                sending: Mutex::new(Default::default()),
                stats: Mutex::new(HashMap::new()),
                tls,
            }),
        }
    }

    /// Every peer's traffic figures, by member id.
    pub fn peer_stats(&self) -> Vec<(u64, Arc<PeerStats>)> {
        let mut v: Vec<_> = lock(&self.inner.stats)
            .iter()
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// Where snapshot data for lagging peers comes from.
    pub fn set_snapshot_source(&self, f: SnapshotSource) {
        *lock(&self.inner.snapshot_source) = Some(f);
    }

    /// How received snapshots become stores as they arrive. Without one they are staged as
    /// the stream's bytes, which the state machine then imports: twice the writes.
    pub fn set_snapshot_builder(&self, f: SnapshotBuilder) {
        *lock(&self.inner.snapshot_builder) = Some(f);
    }

    /// The staged file of a received snapshot, once raft installs it; the files staged
    /// before it are deleted.
    pub fn take_received(&self, index: u64) -> Option<std::path::PathBuf> {
        let (path, superseded) = lock(&self.inner.received).take(index);
        for old in superseded {
            let _ = std::fs::remove_file(old);
        }
        path
    }

    /// What this member answers to a joining member's membership query.
    pub fn set_membership(&self, f: impl Fn() -> Vec<u8> + Send + Sync + 'static) {
        *lock(&self.inner.membership) = Some(Arc::new(f));
    }

    /// What this member answers to another member's query (run on a blocking thread).
    pub fn set_query(&self, f: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static) {
        *lock(&self.inner.query) = Some(Arc::new(f));
    }

    /// Asks peer `to` one question over the peer port; `None` if it cannot be reached or
    /// does not answer within `timeout`.
    pub async fn query(&self, to: u64, body: &[u8], timeout: Duration) -> Option<Vec<u8>> {
        let urls = self.peers().get(&to)?.urls.clone();
        let inner = self.inner.clone();
        let body = body.to_vec();
        tokio::time::timeout(timeout, async move {
            let mut conn = dial(&inner, to, &urls, Kind::Query).await?;
            conn.write_all(&frame(&body)).await.ok()?;
            conn.flush().await.ok()?;
            read_frame(conn.get_mut(), inner.max_frame).await.ok()
        })
        .await
        .ok()?
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Peer>> {
        lock(&self.inner.peers)
    }

    /// Adds or re-addresses a peer; its writer task starts at once.
    pub fn set_peer(&self, id: u64, urls: Vec<String>) {
        if id == self.inner.member_id {
            return;
        }
        let mut peers = self.peers();
        if peers.get(&id).is_some_and(|p| p.urls == urls) {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        // Replacing the sender ends the old writer task once its queue drains.
        peers.insert(
            id,
            Peer {
                urls: urls.clone(),
                queue: tx,
            },
        );
        let inner = self.inner.clone();
        self.inner
            .runtime
            .spawn(async move { writer(inner, id, urls, rx).await });
    }

    /// Forgets peers no longer in the cluster; their writer tasks end.
    pub fn retain_peers(&self, keep: impl Fn(u64) -> bool) {
        self.peers().retain(|id, _| keep(*id));
    }

    /// Queues messages for their peers without blocking. Returns the peers whose queue was
    /// full or unknown, so the driver can report them unreachable.
    pub fn send(&self, msgs: Vec<Message>) -> Vec<u64> {
        let peers = self.peers();
        let mut unreachable = Vec::new();
        for m in msgs {
            let to = m.to;
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat {
                *lock(&self.inner.stats(to).heartbeat_sent) = Some(Instant::now());
            }
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                let urls = peers.get(&to).map(|p| p.urls.clone()).unwrap_or_default();
                self.send_snapshot(m, urls);
                continue;
            }
            let heartbeat = m.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat;
            let ok = peers.get(&to).is_some_and(|p| p.queue.try_send(m).is_ok());
            if !ok && heartbeat {
                self.inner
                    .stats(to)
                    .heartbeat_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            if !ok && !unreachable.contains(&to) {
                unreachable.push(to);
            }
        }
        unreachable
    }

    fn send_snapshot(&self, m: Message, urls: Vec<String>) {
        let to = m.to;
        if !lock(&self.inner.sending).insert(to) {
            // One stream per peer; raft asks again after this one reports.
            let _ = self
                .inner
                .inbound
                .try_send(Inbound::SnapshotSent(to, false));
            return;
        }
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move {
            let ok = match stream_snapshot(&inner, &m, &urls).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(peer = %format!("{to:x}"), error = %e, "sending snapshot failed");
                    false
                }
            };
            lock(&inner.sending).remove(&to);
            let _ = inner.inbound.send(Inbound::SnapshotSent(to, ok)).await;
        });
    }

    /// Accepts peer connections until the listener fails.
    pub async fn serve<L: ballast_net::listen::Accept>(self, listener: L) {
        loop {
            match listener.next().await {
                Ok((stream, addr)) => {
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        let conn: Conn = match &inner.tls {
                            None => Box::new(stream),
                            Some(tls) => {
                                let acceptor = tokio_rustls::TlsAcceptor::from((tls.server)());
                                match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream))
                                    .await
                                {
                                    Ok(Ok(s)) => Box::new(s),
                                    Ok(Err(e)) => {
                                        tracing::warn!(remote = %addr, error = %e, "rejected peer connection");
                                        return;
                                    }
                                    Err(_) => return,
                                }
                            }
                        };
                        if let Err(e) = reader(inner, conn).await {
                            tracing::debug!(remote = %addr, error = %e, "peer stream closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "peer listener accept failed");
                    tokio::time::sleep(BACKOFF_MIN).await;
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(peer::FRAME_HEADER_LEN + body.len());
    f.extend_from_slice(&frame_head(body));
    f.extend_from_slice(body);
    f
}

async fn stream_snapshot(
    inner: &Arc<Inner>,
    m: &Message,
    urls: &[String],
) -> Result<(), SendError> {
    let source = lock(&inner.snapshot_source)
        .clone()
        .ok_or(SendError::NoSource)?;
    let mut conn = dial(inner, m.to, urls, Kind::Snapshot)
        .await
        .ok_or(SendError::Unreachable)?;
    let body = m.write_to_bytes()?;
    conn.write_all(&frame(&body)).await?;
    // The export runs on a blocking thread; a small channel bounds what is in memory.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(SNAPSHOT_CHUNK);
        let mut sink = |rec: &[u8]| -> std::io::Result<()> {
            buf.extend_from_slice(rec);
            if buf.len() >= SNAPSHOT_CHUNK {
                let chunk = std::mem::replace(&mut buf, Vec::with_capacity(SNAPSHOT_CHUNK));
                tx.blocking_send(chunk)
                    .map_err(|_| std::io::Error::other("snapshot stream closed"))?;
            }
            Ok(())
        };
        source(&mut sink).map_err(SendError::Source)?;
        if !buf.is_empty() {
            tx.blocking_send(buf).map_err(|_| SendError::Closed)?;
        }
        Ok::<(), SendError>(())
    });
    let mut sent = 0usize;
    while let Some(chunk) = rx.recv().await {
        // Records can exceed a chunk; split so every frame stays within the receiver's limit.
        for part in chunk.chunks(SNAPSHOT_CHUNK) {
            conn.write_all(&frame(part)).await?;
            sent += part.len();
        }
    }
    producer.await??;
    conn.write_all(&frame(&[])).await?;
    conn.flush().await?;
    let mut ack = [0u8; 1];
    let stream = conn.get_mut();
    tokio::time::timeout(Duration::from_secs(60), stream.read_exact(&mut ack))
        .await
        .map_err(|_| SendError::NoAck)??;
    tracing::info!(peer = %format!("{:x}", m.to), bytes = sent, "sent snapshot");
    Ok(())
}

/// Receives a snapshot stream into a staged, durable file (a store the builder makes as the
/// stream arrives, or else the stream's bytes), then hands the message to raft.
async fn receive_snapshot(inner: &Arc<Inner>, stream: Conn, from: u64) -> Result<(), StreamError> {
    let mut stream = tokio::io::BufReader::with_capacity(64 * 1024, stream);
    let body = read_frame(&mut stream, inner.max_frame).await?;
    let m = Message::parse_from_bytes(&body).map_err(|e| StreamError::Decode(e.to_string()))?;
    if m.from != from
        || m.to != inner.member_id
        || m.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot
    {
        return Err(StreamError::Handshake(
            "not a snapshot for this member".into(),
        ));
    }
    let index = m.get_snapshot().get_metadata().index;
    if !lock(&inner.received).has_room() {
        return Err(StreamError::Busy);
    }
    let builder = lock(&inner.snapshot_builder).clone();
    let built = builder.is_some();
    let ext = if built { STORE_EXT } else { SNAPSHOT_EXT };
    let path = inner
        .snap_dir
        .join(format!("{index:016x}-{from:016x}.{ext}"));
    let tmp = path.with_extension(format!("{ext}.tmp"));
    let staged = match builder {
        Some(b) => build_staged(&mut stream, b, &tmp).await,
        None => write_staged(&mut stream, &tmp).await,
    };
    let total = match staged {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    tokio::fs::rename(&tmp, &path).await?;
    ballast_storage::wal::sync_dir(&inner.snap_dir)?;
    {
        let mut staged = lock(&inner.received);
        if !staged.has_room() {
            drop(staged);
            let _ = std::fs::remove_file(&path);
            return Err(StreamError::Busy);
        }
        staged.files.insert(index, path);
    }
    tracing::info!(index, bytes = total, built, "received snapshot");
    stream.get_mut().write_all(&[1]).await?;
    inner
        .inbound
        .send(Inbound::Message(Box::new(m)))
        .await
        .map_err(|_| StreamError::Closed)
}

/// The stream's bytes into `tmp`, fsynced; returns how many.
async fn write_staged(
    stream: &mut (impl AsyncReadExt + Unpin),
    tmp: &std::path::Path,
) -> Result<usize, StreamError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(ballast_storage::private::FILE_MODE)
        .open(tmp)
        .await?;
    let mut total = 0usize;
    let mut unsynced = 0usize;
    loop {
        let chunk = read_frame(stream, SNAPSHOT_CHUNK).await?;
        if chunk.is_empty() {
            break;
        }
        total += chunk.len();
        unsynced += chunk.len();
        file.write_all(&chunk).await?;
        // Written back as it comes, not in one burst at the end: a burst of hundreds of MiB
        // queues the other members' WAL fsyncs behind it when they share a disk.
        if unsynced >= ballast_storage::limits::SNAPSHOT_SYNC_BYTES {
            file.sync_data().await?;
            unsynced = 0;
        }
    }
    file.sync_all().await?;
    Ok(total)
}

/// The stream built into a store at `tmp` by `builder` as its frames arrive; returns how many
/// bytes it carried. The builder sees the end of the stream only after its last frame, and a
/// broken stream as a cut one (which it refuses).
async fn build_staged(
    stream: &mut (impl AsyncReadExt + Unpin),
    builder: SnapshotBuilder,
    tmp: &std::path::Path,
) -> Result<usize, StreamError> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(BUILD_QUEUE);
    let out = tmp.to_path_buf();
    let task = tokio::task::spawn_blocking(move || {
        let mut reader = ChunkReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        };
        builder(&out, &mut reader).map_err(|e| e.to_string())
    });
    let mut total = 0usize;
    let mut read = Ok(());
    loop {
        match read_frame(stream, SNAPSHOT_CHUNK).await {
            Ok(chunk) if chunk.is_empty() => break,
            Ok(chunk) => {
                total += chunk.len();
                if tx.send(chunk).await.is_err() {
                    // The builder ended before the stream did: its error says why, or the
                    // stream goes on past its end record.
                    read = Err(StreamError::Build(
                        "the stream continues past its end".into(),
                    ));
                    break;
                }
            }
            Err(e) => {
                read = Err(e);
                break;
            }
        }
    }
    drop(tx);
    let built = task
        .await
        .map_err(|e| StreamError::Build(e.to_string()))?
        .map_err(StreamError::Build);
    built?;
    read?;
    Ok(total)
}

/// The frames of a snapshot stream, read by a blocking builder as they arrive.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    max: usize,
) -> Result<Vec<u8>, StreamError> {
    let mut head = [0u8; peer::FRAME_HEADER_LEN];
    stream.read_exact(&mut head).await?;
    let (len, crc) = parse_frame_head(&head);
    if len > max {
        return Err(StreamError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    if crc32c::crc32c(&body) != crc {
        return Err(StreamError::Checksum);
    }
    Ok(body)
}

fn host_port(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().filter(|h| !h.is_empty())
}

async fn dial(inner: &Inner, to: u64, urls: &[String], kind: Kind) -> Option<BufWriter<Conn>> {
    let hs = Handshake {
        kind,
        cluster: inner.cluster_id,
        from: inner.member_id,
        to,
    }
    .encode();
    for url in urls {
        let secure = url.starts_with("https://") || url.starts_with("unixs://");
        let tls = inner.tls.as_ref().filter(|_| secure);
        let Some(stream) = connect(url, tls).await else {
            continue;
        };
        let mut w = BufWriter::with_capacity(64 * 1024, stream);
        if w.write_all(&hs).await.is_ok() {
            return Some(w);
        }
    }
    None
}

/// Drains one peer's queue onto a connection, redialling with backoff when it breaks.
async fn writer(inner: Arc<Inner>, to: u64, urls: Vec<String>, mut rx: mpsc::Receiver<Message>) {
    let mut backoff = BACKOFF_MIN;
    let mut conn: Option<BufWriter<Conn>> = None;
    let mut reported = false;
    let stats = inner.stats(to);
    while let Some(first) = rx.recv().await {
        if conn.is_none() {
            conn = dial(&inner, to, &urls, Kind::Messages).await;
            if conn.is_none() {
                if !reported {
                    tracing::warn!(peer = %format!("{to:x}"), "peer unreachable");
                    reported = true;
                }
                let _ = inner.inbound.try_send(Inbound::Unreachable(to));
                // Drop what queued up meanwhile: raft resends from its own state.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            if reported {
                tracing::info!(peer = %format!("{to:x}"), "peer connection established");
                reported = false;
            }
            stats.active.store(1, Ordering::Relaxed);
            backoff = BACKOFF_MIN;
        }
        let Some(w) = conn.as_mut() else { continue };
        let mut sent = write_frame(w, &first).await;
        // Batch whatever else is queued into the same flush.
        while let Some(n) = sent {
            stats.sent_bytes.fetch_add(n, Ordering::Relaxed);
            match rx.try_recv() {
                Ok(m) => sent = write_frame(w, &m).await,
                Err(_) => break,
            }
        }
        let ok = sent.is_some();
        if !ok || w.flush().await.is_err() {
            conn = None;
            stats.active.store(0, Ordering::Relaxed);
            let _ = inner.inbound.try_send(Inbound::Unreachable(to));
        }
    }
}

/// Buffers one message; returns the bytes written, or `None` if the connection broke.
async fn write_frame(w: &mut BufWriter<Conn>, m: &Message) -> Option<u64> {
    let Ok(body) = m.write_to_bytes() else {
        return Some(0);
    };
    if u32::try_from(body.len()).is_err() {
        return Some(0);
    }
    // Header and body go to the buffer separately: no copy of the body on the hot path.
    let head = frame_head(&body);
    let ok = w.write_all(&head).await.is_ok() && w.write_all(&body).await.is_ok();
    ok.then_some((head.len() + body.len()) as u64)
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad handshake: {0}")]
    Handshake(String),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("frame checksum mismatch")]
    Checksum,
    #[error("frame does not decode: {0}")]
    Decode(String),
    #[error("driver stopped")]
    Closed,
    #[error("--max-snapshots received snapshots already wait to be installed")]
    Busy,
    #[error("building the received snapshot: {0}")]
    Build(String),
}

async fn reader(inner: Arc<Inner>, mut stream: Conn) -> Result<(), StreamError> {
    let mut hs = [0u8; HANDSHAKE_LEN];
    stream.read_exact(&mut hs).await?;
    let Some(hs) = Handshake::decode(&hs) else {
        return Err(StreamError::Handshake("not a ballast peer".into()));
    };
    if hs.kind == Kind::Members {
        let f = lock(&inner.membership).clone();
        let body = f.map(|f| f()).unwrap_or_default();
        stream.write_all(&frame(&body)).await?;
        return Ok(());
    }
    let (cluster, from, to) = (hs.cluster, hs.from, hs.to);
    if cluster != inner.cluster_id || to != inner.member_id {
        tracing::warn!(
            remote_member = %format!("{from:x}"),
            remote_cluster = %format!("{cluster:x}"),
            addressed_to = %format!("{to:x}"),
            "rejected peer connection: cluster or member ID mismatch"
        );
        return Err(StreamError::Handshake(
            "cluster or member ID mismatch".into(),
        ));
    }
    if hs.kind == Kind::Snapshot {
        return receive_snapshot(&inner, stream, from).await;
    }
    if hs.kind == Kind::Query {
        let body = read_frame(&mut stream, inner.max_frame).await?;
        let f = lock(&inner.query).clone().ok_or(StreamError::Closed)?;
        let answer = tokio::task::spawn_blocking(move || f(&body))
            .await
            .map_err(|_| StreamError::Closed)?;
        stream.write_all(&frame(&answer)).await?;
        stream.flush().await?;
        return Ok(());
    }
    let mut stream = tokio::io::BufReader::with_capacity(64 * 1024, stream);
    let stats = inner.stats(from);
    loop {
        let body = read_frame(&mut stream, inner.max_frame).await?;
        stats.received_bytes.fetch_add(
            (ballast_net::peer::FRAME_HEADER_LEN + body.len()) as u64,
            Ordering::Relaxed,
        );
        let m = Message::parse_from_bytes(&body).map_err(|e| StreamError::Decode(e.to_string()))?;
        if m.from != from || m.to != inner.member_id {
            return Err(StreamError::Handshake(
                "message names another sender".into(),
            ));
        }
        if m.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeatResponse {
            let sent = lock(&stats.heartbeat_sent).take();
            if let Some(t) = sent {
                stats.round_trip.observe(t.elapsed());
            }
        }
        inner
            .inbound
            .send(Inbound::Message(Box::new(m)))
            .await
            .map_err(|_| StreamError::Closed)?;
    }
}

/// Asks the members at `urls` (in turn) for their membership answer; blocking, for startup.
pub fn fetch_membership(
    urls: &[String],
    timeout: Duration,
    max: usize,
    tls: Option<&PeerTls>,
) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    for url in urls {
        let secure = url.starts_with("https://") || url.starts_with("unixs://");
        // Each address the URL names, connected in turn: a unix socket, or what its host
        // resolves to.
        type Targets = Box<dyn Iterator<Item = Box<dyn ReadWrite>>>;
        let (targets, host): (Targets, String) = match ballast_net::urls::unix_socket(url) {
            Some((path, _)) => {
                let s = std::os::unix::net::UnixStream::connect(path).ok().map(|s| {
                    let _ = s.set_read_timeout(Some(timeout));
                    let _ = s.set_write_timeout(Some(timeout));
                    Box::new(s) as Box<dyn ReadWrite>
                });
                let host = ballast_net::urls::unix_server_name(path).to_string();
                (Box::new(s.into_iter()), host)
            }
            None => {
                let Some(addr) = host_port(url) else {
                    continue;
                };
                let Ok(addrs) = std::net::ToSocketAddrs::to_socket_addrs(addr) else {
                    continue;
                };
                let Some((host, _)) = ballast_net::tls::host_port(addr) else {
                    continue;
                };
                let host = host.to_string();
                let streams = addrs
                    .filter_map(move |sa| std::net::TcpStream::connect_timeout(&sa, timeout).ok())
                    .map(move |tcp| {
                        let _ = tcp.set_read_timeout(Some(timeout));
                        let _ = tcp.set_write_timeout(Some(timeout));
                        Box::new(tcp) as Box<dyn ReadWrite>
                    });
                (Box::new(streams), host)
            }
        };
        for base in targets {
            let mut s: Box<dyn ReadWrite> = match tls.filter(|_| secure) {
                None => base,
                Some(t) => {
                    let Ok(name) = rustls::pki_types::ServerName::try_from(host.clone()) else {
                        continue;
                    };
                    let Ok(conn) = rustls::ClientConnection::new(t.client.clone(), name) else {
                        continue;
                    };
                    Box::new(rustls::StreamOwned::new(conn, base))
                }
            };
            let hs = Handshake {
                kind: Kind::Members,
                cluster: 0,
                from: 0,
                to: 0,
            };
            let mut head = [0u8; peer::FRAME_HEADER_LEN];
            if s.write_all(&hs.encode()).is_err() || s.read_exact(&mut head).is_err() {
                continue;
            }
            let (len, crc) = parse_frame_head(&head);
            if len > max || len == 0 {
                continue;
            }
            let mut body = vec![0u8; len];
            if s.read_exact(&mut body).is_ok() && crc32c::crc32c(&body) == crc {
                return Some(body);
            }
        }
    }
    None
}

/// A blocking connection, plain or TLS.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::MessageType;
    use tokio::net::TcpListener;

    fn msg(from: u64, to: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.term = term;
        m
    }

    fn stage() -> SnapshotStage {
        SnapshotStage {
            dir: std::env::temp_dir(),
            max_files: 5,
        }
    }

    #[test]
    fn staged_snapshots_are_bounded_and_superseded_ones_go_when_a_newer_is_installed() {
        let mut s = Staged {
            max_files: 2,
            files: Default::default(),
        };
        let p = |i: u64| std::path::PathBuf::from(format!("{i}"));
        assert!(s.has_room());
        s.files.insert(10, p(10));
        s.files.insert(30, p(30));
        assert!(!s.has_room(), "a third waiting snapshot is turned away");
        assert_eq!(s.take(20), (None, vec![p(10)]));
        assert!(s.has_room());
        s.files.insert(40, p(40));
        assert_eq!(s.take(40), (Some(p(40)), vec![p(30)]));
        assert!(s.files.is_empty());
        let unbounded = Staged {
            max_files: 0,
            files: (0..100).map(|i| (i, p(i))).collect(),
        };
        assert!(unbounded.has_room());
    }

    #[tokio::test]
    async fn delivers_between_members_and_rejects_strangers() {
        let rt = tokio::runtime::Handle::current();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (in_b, mut rx_b) = mpsc::channel(16);
        let b = Transport::new(2, 9, 1 << 20, in_b, rt.clone(), stage(), None);
        tokio::spawn(b.serve(listener));

        let (in_a, _rx_a) = mpsc::channel(16);
        let a = Transport::new(1, 9, 1 << 20, in_a, rt.clone(), stage(), None);
        a.set_peer(2, vec![format!("http://{addr}")]);
        assert!(a.send(vec![msg(1, 2, 7), msg(1, 2, 8)]).is_empty());
        for term in [7, 8] {
            let got = tokio::time::timeout(Duration::from_secs(5), rx_b.recv())
                .await
                .unwrap()
                .unwrap();
            match got {
                Inbound::Message(m) => assert_eq!((m.from, m.term), (1, term)),
                Inbound::Unreachable(_) | Inbound::SnapshotSent(..) => panic!("unexpected report"),
            }
        }

        // Same member id, other cluster: the receiver drops the stream.
        let (in_c, _rx_c) = mpsc::channel(16);
        let c = Transport::new(1, 10, 1 << 20, in_c, rt, stage(), None);
        c.set_peer(2, vec![format!("http://{addr}")]);
        c.send(vec![msg(1, 2, 99)]);
        let got = tokio::time::timeout(Duration::from_millis(300), rx_b.recv()).await;
        assert!(got.is_err(), "a message from another cluster was delivered");
    }

    /// A snapshot built into a store as it arrives: the builder reads the whole stream and
    /// the staged file is what it made; a builder's failure stages nothing and fails the send.
    #[tokio::test]
    async fn a_received_snapshot_is_built_as_it_arrives() {
        use std::sync::atomic::AtomicBool;
        let rt = tokio::runtime::Handle::current();
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (in_b, mut rx_b) = mpsc::channel(16);
        let stage_b = SnapshotStage {
            dir: dir.path().to_path_buf(),
            max_files: 5,
        };
        let b = Transport::new(2, 9, 1 << 20, in_b, rt.clone(), stage_b, None);
        tokio::spawn(b.clone().serve(listener));
        let refuse = Arc::new(AtomicBool::new(false));
        let r = refuse.clone();
        b.set_snapshot_builder(Arc::new(move |path, input| {
            let mut got = Vec::new();
            input.read_to_end(&mut got)?;
            if r.load(Ordering::Relaxed) {
                return Err("refused".into());
            }
            std::fs::write(path, &got)?;
            Ok(())
        }));
        // Larger than a frame and than the builder's queue.
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (in_a, mut rx_a) = mpsc::channel(16);
        let a = Transport::new(1, 9, 1 << 20, in_a, rt, stage(), None);
        a.set_peer(2, vec![format!("http://{addr}")]);
        let p = payload.clone();
        a.set_snapshot_source(Arc::new(move |out| {
            for c in p.chunks(100_000) {
                out(c)?;
            }
            Ok(())
        }));
        let snap = |index: u64| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgSnapshot);
            m.from = 1;
            m.to = 2;
            m.mut_snapshot().mut_metadata().index = index;
            m
        };
        let within = Duration::from_secs(10);
        a.send(vec![snap(10)]);
        match tokio::time::timeout(within, rx_a.recv()).await.unwrap() {
            Some(Inbound::SnapshotSent(2, true)) => {}
            _ => panic!("the snapshot was not delivered"),
        }
        match tokio::time::timeout(within, rx_b.recv()).await.unwrap() {
            Some(Inbound::Message(m)) => {
                assert_eq!(m.get_msg_type(), MessageType::MsgSnapshot);
                assert_eq!(m.get_snapshot().get_metadata().index, 10);
            }
            _ => panic!("raft was not handed the snapshot"),
        }
        let path = b.take_received(10).unwrap();
        assert!(is_built_snapshot(&path));
        assert!(std::fs::read(&path).unwrap() == payload);

        refuse.store(true, Ordering::Relaxed);
        a.send(vec![snap(20)]);
        match tokio::time::timeout(within, rx_a.recv()).await.unwrap() {
            Some(Inbound::SnapshotSent(2, false)) => {}
            _ => panic!("a snapshot the builder refused was reported delivered"),
        }
        assert!(rx_b.try_recv().is_err());
        assert!(b.take_received(20).is_none());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, vec![path], "the refused build left a file");
    }

    #[tokio::test]
    async fn oversize_and_corrupt_frames_end_the_stream() {
        let rt = tokio::runtime::Handle::current();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (in_b, mut rx_b) = mpsc::channel(16);
        tokio::spawn(Transport::new(2, 9, 64, in_b, rt, stage(), None).serve(listener));
        for frame in [
            // Claims 1 GiB.
            [(1u32 << 30).to_le_bytes(), 0u32.to_le_bytes()].concat(),
            // Right size, wrong checksum.
            [4u32.to_le_bytes(), 1u32.to_le_bytes(), *b"abcd"].concat(),
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let hs = Handshake {
                kind: Kind::Messages,
                cluster: 9,
                from: 1,
                to: 2,
            };
            s.write_all(&hs.encode()).await.unwrap();
            s.write_all(&frame).await.unwrap();
            let mut buf = [0u8; 1];
            // The receiver closes the connection rather than allocate or step anything.
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
        assert!(rx_b.try_recv().is_err());
    }
}
