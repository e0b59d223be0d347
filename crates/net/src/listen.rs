//! What a member accepts connections on: TCP (Nagle off, as every Ballast stream wants) or a
//! unix socket (`unix://`, `unixs://` URLs). The peer transport and the client port's TLS
//! listener both take any `Accept`.

use std::future::Future;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// The address a unix-socket connection reports: it has none.
pub const UNIX_PEER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

pub trait Accept: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and its remote address.
    fn next(&self) -> impl Future<Output = std::io::Result<(Self::Stream, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn next(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let (s, a) = self.accept().await?;
        let _ = s.set_nodelay(true);
        Ok((s, a))
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    async fn next(&self) -> std::io::Result<(UnixStream, SocketAddr)> {
        let (s, _) = self.accept().await?;
        Ok((s, UNIX_PEER))
    }
}
