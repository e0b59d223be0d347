//! The peer-link fault proxy. Each member advertises a proxy's port as its peer URL and
//! listens on a port of its own behind it, so every raft message between members passes
//! through here.
//!
//! The proxy reads Ballast's peer handshake (magic, cluster, sender, receiver) to know which
//! link a connection carries, then forwards message connections frame by frame (`len | crc |
//! body`), so it can drop whole messages — a black-hole partition, random loss — or hold them
//! back for a delay without ever corrupting the stream. Snapshot and membership connections
//! are copied as bytes and cut when their link is blocked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast_net::peer::{self, Handshake, Kind, HANDSHAKE_LEN};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Larger frames are not Ballast's; the connection is cut.
const MAX_FRAME: usize = 64 << 20;
/// Frames held back for a delay, per connection; beyond this they are dropped (loss).
const DELAY_QUEUE: usize = 8192;

/// What happens to messages on one directed link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Link {
    pub blocked: bool,
    pub delay: Duration,
    /// Probability in [0, 1] that a message is dropped.
    pub drop: f64,
}

/// The state of every directed link, by (sender, receiver) member ID.
#[derive(Default)]
pub struct Net {
    links: Mutex<HashMap<(u64, u64), Link>>,
    /// Applied to links with no entry of their own.
    default: Mutex<Link>,
}

impl Net {
    pub fn link(&self, from: u64, to: u64) -> Link {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        match links.get(&(from, to)) {
            Some(l) => *l,
            None => *self.default.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    pub fn set(&self, from: u64, to: u64, link: Link) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.insert((from, to), link);
    }

    /// Applies `link` to every link without an entry of its own.
    pub fn set_default(&self, link: Link) {
        *self.default.lock().unwrap_or_else(|p| p.into_inner()) = link;
    }

    /// Every link back to normal.
    pub fn heal(&self) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.set_default(Link::default());
    }
}

/// Serves connections arriving on `listener` by forwarding them to the loopback port in
/// `upstream` (read per connection: a member may move to another port) through `net`.
pub async fn run(listener: TcpListener, upstream: Arc<AtomicU16>, net: Arc<Net>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let net = net.clone();
        let upstream: std::net::SocketAddr =
            ([127, 0, 0, 1], upstream.load(Ordering::Relaxed)).into();
        tokio::spawn(async move {
            let _ = serve(conn, upstream, net).await;
        });
    }
}

async fn serve(
    mut down: TcpStream,
    upstream: std::net::SocketAddr,
    net: Arc<Net>,
) -> std::io::Result<()> {
    let _ = down.set_nodelay(true);
    let mut raw = [0u8; HANDSHAKE_LEN];
    down.read_exact(&mut raw).await?;
    // Not a member's greeting: nothing to forward.
    let Some(hs) = Handshake::decode(&raw) else {
        return Ok(());
    };
    let (from, to) = (hs.from, hs.to);
    if net.link(from, to).blocked {
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream).await?;
    let _ = up.set_nodelay(true);
    up.write_all(&raw).await?;
    if hs.kind == Kind::Messages {
        let (up_r, up_w) = up.into_split();
        let (down_r, down_w) = down.into_split();
        // Nothing flows back on a message connection, but a close must still propagate.
        tokio::spawn(copy_back(up_r, down_w));
        forward_frames(down_r, up_w, from, to, net).await
    } else {
        forward_bytes(down, up, from, to, net).await
    }
}

async fn copy_back(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

async fn forward_frames(
    mut down: tokio::net::tcp::OwnedReadHalf,
    mut up: tokio::net::tcp::OwnedWriteHalf,
    from: u64,
    to: u64,
    net: Arc<Net>,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(DELAY_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some((at, buf)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if up.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = up.shutdown().await;
    });
    loop {
        let mut head = [0u8; peer::FRAME_HEADER_LEN];
        if down.read_exact(&mut head).await.is_err() {
            break;
        }
        let (len, _) = peer::parse_frame_head(&head);
        if len > MAX_FRAME {
            break;
        }
        let mut buf = vec![0u8; head.len() + len];
        buf[..head.len()].copy_from_slice(&head);
        if down.read_exact(&mut buf[head.len()..]).await.is_err() {
            break;
        }
        let link = net.link(from, to);
        if link.blocked || (link.drop > 0.0 && rand::thread_rng().gen_bool(link.drop.min(1.0))) {
            continue;
        }
        let at = Instant::now() + link.delay;
        if tx.try_send((at, buf)).is_err() && tx.is_closed() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// Copies a snapshot or membership connection both ways until it ends or its link is blocked.
async fn forward_bytes(
    down: TcpStream,
    up: TcpStream,
    from: u64,
    to: u64,
    net: Arc<Net>,
) -> std::io::Result<()> {
    let (mut down_r, mut down_w) = down.into_split();
    let (mut up_r, mut up_w) = up.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut up_r, &mut down_w).await;
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = down_r.read(&mut buf).await?;
        if n == 0 || net.link(from, to).blocked {
            break;
        }
        up_w.write_all(&buf[..n]).await?;
    }
    let _ = up_w.shutdown().await;
    let _ = back.await;
    Ok(())
}
