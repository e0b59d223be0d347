//! A lean HTTP/2 connection for tonic's generated clients.
//!
//! tonic's `Channel` sends every call through a buffer task and hyper's dispatcher, which
//! spawns a task to stream each request body and writes its headers and its one data frame
//! in two syscalls. The benchmark shares the machine's CPU with the servers it measures, so
//! its own cost per request compresses every ratio. Here a unary call's headers and message
//! go to `h2` together (one write when the connection flushes) and nothing is spawned; a
//! streaming request body (watch) is piped by a task as hyper would.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per-stream and per-connection receive windows (hyper's client defaults), so large range
/// responses and watch bursts are not throttled by HTTP/2's 64 KiB default.
const STREAM_WINDOW: u32 = 2 << 20;
const CONN_WINDOW: u32 = 5 << 20;

#[derive(Clone)]
pub struct Conn {
    send: h2::client::SendRequest<Bytes>,
    authority: http::uri::Authority,
}

impl Conn {
    /// Dials `url` (`http://host:port`) and completes the HTTP/2 handshake.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Conn, BoxError> {
        let uri: http::Uri = url.parse()?;
        if uri.scheme_str() != Some("http") {
            return Err(
                format!("unsupported scheme in {url} (the benchmark speaks plain http)").into(),
            );
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or("endpoint without host:port")?;
        let dial = tokio::net::TcpStream::connect(authority.as_str());
        let tcp = if timeout.is_zero() {
            dial.await?
        } else {
            tokio::time::timeout(timeout, dial)
                .await
                .map_err(|_| "dial timed out")??
        };
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .handshake::<_, Bytes>(tcp)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { send, authority })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Conn {
    type Response = http::Response<RecvBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness (the peer's stream limit) is awaited per call, on a clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let send = self.send.clone();
        let authority = self.authority.clone();
        Box::pin(call(send, authority, req))
    }
}

async fn call(
    send: h2::client::SendRequest<Bytes>,
    authority: http::uri::Authority,
    req: http::Request<tonic::body::Body>,
) -> Result<http::Response<RecvBody>, BoxError> {
    let (mut parts, mut body) = req.into_parts();
    // tonic gives the path only; HTTP/2 needs the scheme and authority too.
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = parts.uri.path_and_query().cloned();
    parts.uri = http::Uri::from_parts(uri)?;
    // What the body has ready now: all of it for a unary call, the first messages of a
    // stream.
    let mut ready = Vec::new();
    let mut ended = false;
    loop {
        match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    ready.push(d);
                }
            }
            Poll::Ready(Some(Err(e))) => return Err(e.into()),
            Poll::Ready(None) => {
                ended = true;
                break;
            }
            Poll::Pending => break,
        }
    }
    let mut send = send.ready().await?;
    let (resp, mut stream) = send.send_request(http::Request::from_parts(parts, ()), false)?;
    let last = ready.len();
    for (i, d) in ready.into_iter().enumerate() {
        stream.send_data(d, ended && i + 1 == last)?;
    }
    if ended && last == 0 {
        stream.send_data(Bytes::new(), true)?;
    }
    if !ended {
        tokio::spawn(async move {
            while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                let Ok(f) = f else {
                    stream.send_reset(h2::Reason::CANCEL);
                    return;
                };
                if let Ok(d) = f.into_data() {
                    if stream.send_data(d, false).is_err() {
                        return;
                    }
                }
            }
            let _ = stream.send_data(Bytes::new(), true);
        });
    }
    let resp = resp.await?;
    Ok(resp.map(|recv| RecvBody {
        recv,
        data_done: false,
        done: false,
    }))
}

/// A response body: DATA frames (their flow-control capacity given back as they are read),
/// then the trailers that carry the gRPC status.
pub struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(d)) => {
                    let _ = self.recv.flow_control().release_capacity(d.len());
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => self.data_done = true,
            }
        }
        let t = std::task::ready!(self.recv.poll_trailers(cx));
        self.done = true;
        match t {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// One unary gRPC call to `path` with `message` (encoded), its answer drained without being
/// kept: returns the bytes of the answer's message(s) and the call's `grpc-status`. For reads
/// too large for a client to decode, whose cost to the server is what is measured.
pub async fn unary_drained(
    url: &str,
    path: &str,
    message: &[u8],
) -> Result<(u64, String), BoxError> {
    let conn = Conn::connect(url, Duration::ZERO).await?;
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    framed.extend_from_slice(message);
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Once(Some(Bytes::from(framed)))))?;
    let resp = tower::Service::call(&mut conn.clone(), req).await?;
    let (parts, mut body) = resp.into_parts();
    let mut status = parts
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut bytes = 0u64;
    while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match f?.into_data() {
            Ok(d) => bytes += d.len() as u64,
            Err(f) => {
                if let Some(t) = f.trailers_ref() {
                    status = t
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                }
            }
        }
    }
    Ok((bytes, status.unwrap_or_default()))
}

/// A request body of one data frame.
struct Once(Option<Bytes>);

impl Body for Once {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|d| Ok(Frame::data(d))))
    }
}
