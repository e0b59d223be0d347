//! watch-latency's watchers: many watch streams on one HTTP/2 connection, read by one task
//! straight from the socket.
//!
//! Through `h2`, every event cost the client a frame dispatch, a stream lookup, a waker and a
//! poll of the stream's reader: about 1.5 µs, so 1.5 ms of CPU per put for 1,000 watchers, on
//! the cores the servers under test share. Here one read takes every frame the kernel holds
//! and each DATA frame is cut into messages in place. Only the HTTP/2 this workload needs is
//! spoken: the client preface, SETTINGS and their acks, PING acks, WINDOW_UPDATE to keep the
//! server sending, and request HEADERS made of literal fields. Those never touch the HPACK
//! dynamic table, and the server's header blocks are skipped unread (the table they may fill
//! is only needed to decode them).

use std::time::{Duration, Instant};

use ballast_net::http2::flag::{ACK, END_HEADERS, END_STREAM, PADDED};
use ballast_net::http2::frame::{DATA, GOAWAY, HEADERS, PING, RST_STREAM, SETTINGS, WINDOW_UPDATE};
use ballast_net::http2::setting::{
    ENABLE_PUSH as SETTINGS_ENABLE_PUSH, INITIAL_WINDOW_SIZE as SETTINGS_INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS as SETTINGS_MAX_CONCURRENT_STREAMS,
};
use ballast_net::http2::{self, DEFAULT_WINDOW, FRAME_HEADER, PREFACE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest frame a server may send us: HTTP/2's default, which we never raise.
const MAX_FRAME: usize = http2::DEFAULT_MAX_FRAME;

/// HTTP/2's largest window, for the connection and every stream: the server never waits on
/// the client, and a top-up is due only every [`TOP_UP`] bytes.
const WINDOW: u32 = http2::MAX_WINDOW;
const TOP_UP: u32 = 1 << 24;

/// One connection's watch streams.
pub struct WatchConn {
    sock: TcpStream,
    /// Bytes read and not yet parsed start at the front.
    buf: Vec<u8>,
    /// Frames to send once this batch is parsed.
    out: Vec<u8>,
    streams: Vec<Stream>,
    /// Received DATA not yet given back to the connection window.
    unacked: u32,
    created: usize,
    /// The server's SETTINGS arrived.
    settled: bool,
    max_streams: u32,
}

#[derive(Default)]
struct Stream {
    /// The start of a message cut across DATA frames.
    partial: Vec<u8>,
    unacked: u32,
    created: bool,
}

/// `url` (`http://host:port`) as the `host:port` to dial.
pub fn authority(url: &str) -> Result<&str, String> {
    url.strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .ok_or_else(|| format!("unsupported endpoint {url} (the benchmark speaks plain http)"))
}

impl WatchConn {
    /// Dials `authority`, opens `n` streams at `path` that each send `first` (protobuf,
    /// unframed) and keep their request side open, and returns once every stream has its first
    /// response (a watch's "created").
    pub async fn open(
        authority: &str,
        path: &str,
        first: &[u8],
        n: usize,
        timeout: Duration,
    ) -> Result<WatchConn, String> {
        Self::open_each(authority, path, &vec![first.to_vec(); n], timeout).await
    }

    /// [`WatchConn::open`] with a stream per request of `firsts`, each sending its own.
    pub async fn open_each(
        authority: &str,
        path: &str,
        firsts: &[Vec<u8>],
        timeout: Duration,
    ) -> Result<WatchConn, String> {
        let n = firsts.len();
        let work = async {
            let sock = TcpStream::connect(authority)
                .await
                .map_err(|e| format!("dial error: {authority}: {e}"))?;
            sock.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut c = WatchConn {
                sock,
                buf: Vec::with_capacity(256 << 10),
                out: Vec::new(),
                streams: (0..n).map(|_| Stream::default()).collect(),
                unacked: 0,
                created: 0,
                settled: false,
                max_streams: u32::MAX,
            };
            c.out.extend_from_slice(PREFACE);
            let mut settings = Vec::new();
            for (id, v) in [
                (SETTINGS_ENABLE_PUSH, 0),
                (SETTINGS_INITIAL_WINDOW_SIZE, WINDOW),
            ] {
                settings.extend_from_slice(&id.to_be_bytes());
                settings.extend_from_slice(&v.to_be_bytes());
            }
            frame(&mut c.out, SETTINGS, 0, 0, &settings);
            frame(
                &mut c.out,
                WINDOW_UPDATE,
                0,
                0,
                &(WINDOW - DEFAULT_WINDOW).to_be_bytes(),
            );
            c.flush().await?;
            // The server's SETTINGS come first; they say how many streams it takes.
            while !c.settled {
                c.read(&mut |_, _| {}).await?;
            }
            if n as u64 > u64::from(c.max_streams) {
                return Err(format!(
                    "{authority} allows {} streams per connection; use more --conns",
                    c.max_streams
                ));
            }
            let msgs: Vec<Vec<u8>> = firsts.iter().map(|f| grpc_message(f)).collect();
            // Request data is sent within the server's initial connection window, never
            // waiting for it to grow.
            if msgs.iter().map(Vec::len).sum::<usize>() > DEFAULT_WINDOW as usize {
                return Err(format!(
                    "{n} watch streams on one connection send more than one window; use more --conns"
                ));
            }
            let headers = request_headers(authority, path);
            for (i, msg) in msgs.iter().enumerate() {
                let id = stream_id(i);
                frame(&mut c.out, HEADERS, END_HEADERS, id, &headers);
                frame(&mut c.out, DATA, 0, id, msg);
            }
            c.flush().await?;
            while c.created < n {
                c.read(&mut |_, _| {}).await?;
            }
            Ok(c)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("watch streams on {authority}: timed out"))?
    }

    /// Reads until `stop` turns true or the connection ends, handing each response after the
    /// first of every stream to `on_msg` with when its read returned.
    pub async fn run(
        mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
        mut on_msg: impl FnMut(&[u8], Instant),
    ) -> Result<(), String> {
        loop {
            tokio::select! {
                biased;
                r = self.read(&mut on_msg) => r?,
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    /// One read from the socket, every whole frame in it handled, replies sent.
    async fn read(&mut self, on_msg: &mut impl FnMut(&[u8], Instant)) -> Result<(), String> {
        if self.buf.capacity() - self.buf.len() < MAX_FRAME {
            self.buf.reserve(256 << 10);
        }
        let got = self
            .sock
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| e.to_string())?;
        if got == 0 {
            return Err("connection closed by the server".into());
        }
        let now = Instant::now();
        let used = self.parse(now, on_msg)?;
        self.buf.drain(..used);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), String> {
        if !self.out.is_empty() {
            self.sock
                .write_all(&self.out)
                .await
                .map_err(|e| e.to_string())?;
            self.out.clear();
        }
        Ok(())
    }

    /// Handles every whole frame at the front of `buf`; returns how many bytes they took.
    fn parse(
        &mut self,
        now: Instant,
        on_msg: &mut impl FnMut(&[u8], Instant),
    ) -> Result<usize, String> {
        let mut at = 0;
        let buf = std::mem::take(&mut self.buf);
        let res = loop {
            let Some((len, ty, flags, id)) = http2::parse_frame_header(&buf[at..]) else {
                break Ok(at);
            };
            if len > MAX_FRAME {
                break Err(format!("frame of {len} bytes (limit {MAX_FRAME})"));
            }
            let Some(payload) = buf.get(at + FRAME_HEADER..at + FRAME_HEADER + len) else {
                break Ok(at);
            };
            if let Err(e) = self.frame(ty, flags, id, payload, now, on_msg) {
                break Err(e);
            }
            at += FRAME_HEADER + len;
        };
        self.buf = buf;
        res
    }

    fn frame(
        &mut self,
        ty: u8,
        flags: u8,
        id: u32,
        payload: &[u8],
        now: Instant,
        on_msg: &mut impl FnMut(&[u8], Instant),
    ) -> Result<(), String> {
        match ty {
            DATA => {
                let len = payload.len() as u32;
                give_back(&mut self.out, 0, &mut self.unacked, len);
                let data = unpad(flags, payload)?;
                let Some(s) = stream_index(id).and_then(|i| self.streams.get_mut(i)) else {
                    return Ok(());
                };
                give_back(&mut self.out, id, &mut s.unacked, len);
                if s.messages(data, now, on_msg)? {
                    self.created += 1;
                }
                if flags & END_STREAM != 0 {
                    self.end(id)?;
                }
            }
            HEADERS if flags & END_STREAM != 0 => self.end(id)?,
            RST_STREAM => self.end(id)?,
            SETTINGS if flags & ACK == 0 => {
                for s in payload.chunks_exact(6) {
                    let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    if u16::from_be_bytes([s[0], s[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS {
                        self.max_streams = v;
                    }
                }
                frame(&mut self.out, SETTINGS, ACK, 0, &[]);
                self.settled = true;
            }
            PING if flags & ACK == 0 => frame(&mut self.out, PING, ACK, 0, payload),
            GOAWAY => return Err("the server closed the connection (GOAWAY)".into()),
            // Response headers, CONTINUATION, WINDOW_UPDATE (nothing more to send), others.
            _ => {}
        }
        Ok(())
    }

    /// A stream ended. Before its first response that is a refusal; after it, the others
    /// keep going and the events it misses are counted as missing.
    fn end(&self, id: u32) -> Result<(), String> {
        match stream_index(id).and_then(|i| self.streams.get(i)) {
            Some(s) if !s.created => Err(format!("watch stream {id} refused by the server")),
            _ => Ok(()),
        }
    }
}

impl Stream {
    /// Cuts `data` into gRPC messages; the stream's first one only marks it created. Returns
    /// whether that happened now.
    fn messages(
        &mut self,
        data: &[u8],
        now: Instant,
        on_msg: &mut impl FnMut(&[u8], Instant),
    ) -> Result<bool, String> {
        let was = self.created;
        let created = &mut self.created;
        let mut take = |m: &[u8]| {
            if *created {
                on_msg(m, now);
            } else {
                *created = true;
            }
        };
        if self.partial.is_empty() {
            let rest = split(data, &mut take)?;
            self.partial.extend_from_slice(rest);
        } else {
            let mut partial = std::mem::take(&mut self.partial);
            partial.extend_from_slice(data);
            let used = partial.len() - split(&partial, &mut take)?.len();
            partial.drain(..used);
            self.partial = partial;
        }
        Ok(!was && self.created)
    }
}

/// Hands each whole gRPC message at the front of `b` to `take`; returns what is left.
fn split<'a>(mut b: &'a [u8], take: &mut impl FnMut(&[u8])) -> Result<&'a [u8], String> {
    while b.len() >= 5 {
        if b[0] != 0 {
            return Err("compressed gRPC message (none was asked for)".into());
        }
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        let Some(m) = b.get(5..5 + len) else {
            break;
        };
        take(m);
        b = &b[5 + len..];
    }
    Ok(b)
}

/// A DATA frame's data, its padding (if flagged) removed.
fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], String> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or("empty padded frame")?;
    rest.len()
        .checked_sub(pad as usize)
        .map(|n| &rest[..n])
        .ok_or_else(|| "padding longer than its frame".into())
}

/// Our streams are the odd ids, in the order they were opened.
fn stream_id(i: usize) -> u32 {
    2 * i as u32 + 1
}

fn stream_index(id: u32) -> Option<usize> {
    (id % 2 == 1).then_some((id / 2) as usize)
}

/// Counts `len` received bytes of stream `id` (0: the connection) against its window; once
/// [`TOP_UP`] have come, queues a WINDOW_UPDATE giving them back.
fn give_back(out: &mut Vec<u8>, id: u32, unacked: &mut u32, len: u32) {
    *unacked += len;
    if *unacked >= TOP_UP {
        let n = std::mem::take(unacked);
        frame(out, WINDOW_UPDATE, 0, id, &n.to_be_bytes());
    }
}

fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, id: u32, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_FRAME);
    http2::push_frame(out, ty, flags, id, payload);
}

fn grpc_message(msg: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(5 + msg.len());
    b.push(0);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    b
}

/// A gRPC request's header block in HPACK: indexed `:method POST` and `:scheme http`, the
/// rest literal without indexing (RFC 7541 6.1, 6.2.2).
fn request_headers(authority: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86];
    for (index, value) in [(4, path), (1, authority), (31, "application/grpc")] {
        hpack_int(&mut b, 0x00, 4, index);
        hpack_str(&mut b, value);
    }
    b.push(0x00);
    hpack_str(&mut b, "te");
    hpack_str(&mut b, "trailers");
    b
}

/// An HPACK integer with an `n`-bit prefix after `first`'s high bits (RFC 7541 5.1), by the
/// codec the server's `authority` shim uses.
fn hpack_int(b: &mut Vec<u8>, first: u8, n: u8, v: usize) {
    // Writing to a Vec cannot fail.
    let _ = fluke_hpack::encoder::encode_integer_into(v, n, first, b);
}

/// An HPACK string literal, not Huffman coded.
fn hpack_str(b: &mut Vec<u8>, s: &str) {
    hpack_int(b, 0x00, 7, s.len());
    b.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cut_anywhere_across_frames_come_out_whole_and_the_first_only_creates() {
        let mut wire = Vec::new();
        for m in [&b"created"[..], b"one", b"", b"three!"] {
            wire.extend_from_slice(&grpc_message(m));
        }
        let now = Instant::now();
        for cut in 0..=wire.len() {
            let mut s = Stream::default();
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut newly = 0;
            for part in [&wire[..cut], &wire[cut..]] {
                if s.messages(part, now, &mut |m, _| got.push(m.to_vec()))
                    .unwrap()
                {
                    newly += 1;
                }
            }
            assert_eq!(got, [&b"one"[..], b"", b"three!"], "cut at {cut}");
            assert_eq!(newly, 1);
            assert!(s.partial.is_empty());
        }
        assert!(split(&[1, 0, 0, 0, 0], &mut |_| {}).is_err());
    }

    #[test]
    fn padding_is_removed_and_overlong_padding_refused() {
        assert_eq!(unpad(PADDED, &[2, b'a', b'b', 0, 0]).unwrap(), b"ab");
        assert_eq!(unpad(0, b"ab").unwrap(), b"ab");
        assert!(unpad(PADDED, &[3, 0, 0]).is_err());
        assert!(unpad(PADDED, &[]).is_err());
    }

    /// An `h2` server on a loopback port taking `max_streams` streams per connection; `serve`
    /// gets its one connection.
    async fn h2_server<F, Fut>(
        max_streams: u32,
        serve: F,
    ) -> (String, tokio::task::JoinHandle<Fut::Output>)
    where
        F: FnOnce(h2::server::Connection<TcpStream, bytes::Bytes>) -> Fut + Send + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (sock, _) = l.accept().await.unwrap();
            let conn = h2::server::Builder::new()
                .max_concurrent_streams(max_streams)
                .handshake::<_, bytes::Bytes>(sock)
                .await
                .unwrap();
            serve(conn).await
        });
        (addr, task)
    }

    /// Against a real HTTP/2 server (the `h2` crate's): the preface and settings are accepted,
    /// the request headers decode to a gRPC call, a PING is answered, and responses come back
    /// per stream.
    #[tokio::test]
    async fn speaks_enough_http2_to_a_real_server() {
        let (addr, server) = h2_server(10, |mut conn| async move {
            let ping = conn.ping_pong();
            let mut sends = Vec::new();
            for _ in 0..3 {
                let (req, mut respond) = conn.accept().await.unwrap().unwrap();
                assert_eq!(req.method(), http::Method::POST);
                assert_eq!(req.uri().path(), "/etcdserverpb.Watch/Watch");
                assert_eq!(req.headers()["content-type"], "application/grpc");
                assert_eq!(req.headers()["te"], "trailers");
                let resp = http::Response::new(());
                let mut send = respond.send_response(resp, false).unwrap();
                send.send_data(grpc_message(b"created").into(), false)
                    .unwrap();
                sends.push((req.into_body(), send));
            }
            let mut ping = ping.unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            ping.ping(h2::Ping::opaque()).await.unwrap();
            for (i, (body, send)) in sends.iter_mut().enumerate() {
                let got = body.data().await.unwrap().unwrap();
                assert_eq!(&got[..], &grpc_message(b"hello")[..]);
                let msg = format!("event {i}");
                send.send_data(grpc_message(msg.as_bytes()).into(), false)
                    .unwrap();
            }
            // Kept open: dropped, the streams would be reset.
            sends
        })
        .await;
        let c = WatchConn::open(
            &addr,
            "/etcdserverpb.Watch/Watch",
            b"hello",
            3,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        let run = tokio::spawn(c.run(stopped, move |m, _| g.lock().unwrap().push(m.to_vec())));
        let _open = server.await.unwrap();
        for _ in 0..100 {
            if got.lock().unwrap().len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.send(true).unwrap();
        run.await.unwrap().unwrap();
        let mut got = got.lock().unwrap().clone();
        got.sort();
        assert_eq!(
            got,
            [
                b"event 0".to_vec(),
                b"event 1".to_vec(),
                b"event 2".to_vec()
            ]
        );
    }

    #[tokio::test]
    async fn more_streams_than_the_server_takes_are_refused_up_front() {
        let (addr, _server) = h2_server(2, |mut conn| async move {
            while conn.accept().await.is_some() {}
        })
        .await;
        let e = WatchConn::open(&addr, "/x", b"", 3, Duration::from_secs(10))
            .await
            .err()
            .unwrap();
        assert!(e.contains("allows 2 streams"), "{e}");
    }
}
