//! Accepts the `:authority` etcd's Go clients send when given endpoints with a scheme.
//!
//! etcdctl 3.4 dials `passthrough:///http://host:port` for `endpoint status`, `--cluster` and
//! any `--endpoints=http://...`, and sends `:authority: http://host:port`. grpc-go (etcd)
//! ignores it; the Rust HTTP/2 stack resets the stream as malformed. This connection wrapper
//! sits below HTTP/2: on connections whose first request carries such an authority it
//! decodes every header block (HPACK), strips the scheme, and re-encodes the block for the
//! server. Connections whose first authority is well formed are passed through untouched, so
//! ordinary clients pay nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use ballast_net::http2::{self, flag, frame, push_frame, FRAME_HEADER, PREFACE};

use crate::conn::coalesce::Coalesce;
use crate::limits::AUTHORITY_MAX_HEADER_BLOCK;

/// Frames we emit stay within HTTP/2's default maximum frame size.
const MAX_OUT_FRAME: usize = http2::DEFAULT_MAX_FRAME;

enum Mode {
    /// Waiting for enough bytes to tell HTTP/2 from HTTP/1.
    Detect,
    /// Watching frames until the first header block decides.
    Frames,
    /// Re-encoding every header block on this connection.
    Rewrite(Box<(fluke_hpack::Decoder<'static>, fluke_hpack::Encoder<'static>)>),
    /// Nothing to change on this connection.
    Pass,
}

/// A header block being gathered from HEADERS + CONTINUATION frames.
struct Block {
    stream: u32,
    flags: u8,
    priority: Vec<u8>,
    fragment: Vec<u8>,
    /// The frames as received, forwarded unchanged if the block needs no rewriting.
    raw: Vec<u8>,
}

pub struct FixAuthority<T> {
    inner: T,
    mode: Mode,
    /// Bytes read from the socket, not yet examined.
    input: Vec<u8>,
    /// Bytes ready for the HTTP server.
    output: Vec<u8>,
    out_pos: usize,
    block: Option<Block>,
    eof: bool,
}

impl<T> FixAuthority<T> {
    pub fn new(inner: T) -> FixAuthority<T> {
        FixAuthority {
            inner,
            mode: Mode::Detect,
            input: Vec::new(),
            output: Vec::new(),
            out_pos: 0,
            block: None,
            eof: false,
        }
    }

    /// Moves as much of `input` to `output` as can be decided now.
    fn process(&mut self) {
        loop {
            match &self.mode {
                Mode::Pass => {
                    self.output.append(&mut self.input);
                    return;
                }
                Mode::Detect => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.mode = Mode::Pass;
                        continue;
                    }
                    if n < PREFACE.len() {
                        if self.eof {
                            self.mode = Mode::Pass;
                            continue;
                        }
                        return;
                    }
                    self.output.extend(self.input.drain(..PREFACE.len()));
                    self.mode = Mode::Frames;
                }
                Mode::Frames | Mode::Rewrite(_) => {
                    if !self.next_frame() {
                        if self.eof {
                            self.flush_block_raw();
                            self.output.append(&mut self.input);
                        }
                        return;
                    }
                }
            }
        }
    }

    /// Handles one complete frame from `input`; false when none is complete yet.
    fn next_frame(&mut self) -> bool {
        let Some((len, kind, flags, stream)) = http2::parse_frame_header(&self.input) else {
            return false;
        };
        if self.input.len() < FRAME_HEADER + len {
            return false;
        }
        let bytes: Vec<u8> = self.input.drain(..FRAME_HEADER + len).collect();
        let payload = &bytes[FRAME_HEADER..];
        match kind {
            frame::HEADERS => {
                self.flush_block_raw();
                let Some((priority, fragment)) = split_headers_payload(flags, payload) else {
                    self.output.extend_from_slice(&bytes);
                    return true;
                };
                self.block = Some(Block {
                    stream,
                    flags,
                    priority,
                    fragment,
                    raw: bytes.clone(),
                });
            }
            frame::CONTINUATION if self.block.as_ref().is_some_and(|b| b.stream == stream) => {
                if let Some(b) = self.block.as_mut() {
                    b.fragment.extend_from_slice(payload);
                    b.raw.extend_from_slice(&bytes);
                    b.flags |= flags & flag::END_HEADERS;
                }
            }
            _ => {
                self.flush_block_raw();
                self.output.extend_from_slice(&bytes);
                return true;
            }
        }
        let complete = self.block.as_ref().is_some_and(|b| {
            b.flags & flag::END_HEADERS != 0 || b.fragment.len() > AUTHORITY_MAX_HEADER_BLOCK
        });
        if complete {
            if let Some(b) = self.block.take() {
                self.finish_block(b);
            }
        }
        true
    }

    fn flush_block_raw(&mut self) {
        if let Some(b) = self.block.take() {
            self.output.extend_from_slice(&b.raw);
        }
    }

    fn finish_block(&mut self, b: Block) {
        if matches!(self.mode, Mode::Frames) {
            // The first request decides for the whole connection.
            let mut probe = fluke_hpack::Decoder::new();
            let bad = match probe.decode(&b.fragment) {
                Ok(headers) => headers
                    .iter()
                    .any(|(n, v)| n == b":authority" && fixed_authority(v).is_some()),
                Err(_) => false,
            };
            if !bad {
                self.output.extend_from_slice(&b.raw);
                self.mode = Mode::Pass;
                return;
            }
            self.mode = Mode::Rewrite(Box::new((
                fluke_hpack::Decoder::new(),
                fluke_hpack::Encoder::new(),
            )));
        }
        let Mode::Rewrite(codec) = &mut self.mode else {
            self.output.extend_from_slice(&b.raw);
            return;
        };
        let (dec, enc) = &mut **codec;
        let Ok(mut headers) = dec.decode(&b.fragment) else {
            // Undecodable: let HTTP/2 see it as sent and fail the connection itself.
            self.output.extend_from_slice(&b.raw);
            self.mode = Mode::Pass;
            return;
        };
        for (n, v) in headers.iter_mut() {
            if n == b":authority" {
                if let Some(fixed) = fixed_authority(v) {
                    *v = fixed;
                }
            }
        }
        let block = enc.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut first = b.priority;
        let flags = b.flags & !(flag::PADDED | flag::END_HEADERS);
        let mut rest: &[u8] = &block;
        let take = rest.len().min(MAX_OUT_FRAME - first.len());
        first.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        let end = if rest.is_empty() {
            flag::END_HEADERS
        } else {
            0
        };
        push_frame(
            &mut self.output,
            frame::HEADERS,
            flags | end,
            b.stream,
            &first,
        );
        while !rest.is_empty() {
            let take = rest.len().min(MAX_OUT_FRAME);
            let end = if take == rest.len() {
                flag::END_HEADERS
            } else {
                0
            };
            push_frame(
                &mut self.output,
                frame::CONTINUATION,
                end,
                b.stream,
                &rest[..take],
            );
            rest = &rest[take..];
        }
    }
}

/// `http://host:port[/...]` → `host:port`; None for an authority that needs no fixing.
fn fixed_authority(v: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(v).ok()?;
    let (_, rest) = s.split_once("://")?;
    let host = rest.split('/').next().unwrap_or("");
    Some(host.as_bytes().to_vec())
}

/// A HEADERS payload without padding: (priority bytes, header block fragment).
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & flag::PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    let mut priority = Vec::new();
    if flags & flag::PRIORITY != 0 {
        priority = p.get(..5)?.to_vec();
        p = &p[5..];
    }
    let end = p.len().checked_sub(pad)?;
    Some((priority, p[..end].to_vec()))
}

impl<T: AsyncRead + Unpin> AsyncRead for FixAuthority<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.out_pos);
                buf.put_slice(&this.output[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.output.len() {
                    this.output.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::Pass) && this.input.is_empty() {
                // Steady state for most connections: no copying at all.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    }
                    this.input.extend_from_slice(rb.filled());
                    this.process();
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FixAuthority<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The client listener (TCP, or a unix socket): every accepted connection goes through
/// [`FixAuthority`], its writes through [`Coalesce`].
pub struct Listener<L = tokio::net::TcpListener>(pub L);

impl axum::serve::Listener for Listener<tokio::net::UnixListener> {
    type Io = FixAuthority<Coalesce<tokio::net::UnixStream>>;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, a)) => return (FixAuthority::new(Coalesce::new(s)), a),
                Err(e) => {
                    tracing::warn!(error = %e, "client accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl axum::serve::Listener for Listener {
    type Io = FixAuthority<Coalesce<tokio::net::TcpStream>>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, a)) => {
                    let _ = s.set_nodelay(true);
                    return (FixAuthority::new(Coalesce::new(s)), a);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "client accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn headers_frame(stream: u32, block: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        push_frame(&mut f, frame::HEADERS, flag::END_HEADERS, stream, block);
        f
    }

    async fn pass(input: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        FixAuthority::new(input.as_slice())
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    #[tokio::test]
    async fn schemed_authority_is_rewritten_on_every_block() {
        let mut client = fluke_hpack::Encoder::new();
        let h1 = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.KV/Range"),
        ]);
        // The second block refers to the client's dynamic table.
        let h2 = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.KV/Put"),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, &h1));
        input.extend([0, 0, 1, 0, 0, 0, 0, 0, 1, 7]); // a DATA frame, untouched
        input.extend(headers_frame(3, &h2));
        let out = pass(input).await;
        assert!(out.starts_with(PREFACE));
        let mut server = fluke_hpack::Decoder::new();
        let mut rest = &out[PREFACE.len()..];
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (f, tail) = rest.split_at(FRAME_HEADER + len);
            if f[3] == frame::HEADERS {
                for (n, v) in server.decode(&f[FRAME_HEADER..]).unwrap() {
                    if n == b":authority" || n == b":path" {
                        seen.push(String::from_utf8(v).unwrap());
                    }
                }
            } else {
                assert_eq!(f, [0, 0, 1, 0, 0, 0, 0, 0, 1, 7]);
            }
            rest = tail;
        }
        assert_eq!(
            seen,
            [
                "127.0.0.1:2379",
                "/etcdserverpb.KV/Range",
                "127.0.0.1:2379",
                "/etcdserverpb.KV/Put"
            ]
        );
    }

    #[tokio::test]
    async fn good_authority_and_http1_pass_unchanged() {
        let mut client = fluke_hpack::Encoder::new();
        let h = client.encode([(&b":authority"[..], &b"127.0.0.1:2379"[..])]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, &h));
        assert_eq!(pass(input.clone()).await, input);
        let http1 = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(pass(http1.clone()).await, http1);
        assert_eq!(pass(b"PRI".to_vec()).await, b"PRI".to_vec());
    }
}
