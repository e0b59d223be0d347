//! Connections to endpoints, and what etcdctl 3.7's client log says about a failed call: the
//! method last called and both ends of the connection it went over.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll};

use tonic::transport::Channel;

use crate::{tls, Cli, Failure};

/// The last call made (`/etcdserverpb.KV/Put`) and the connection's two ends, for the log.
static LAST: Mutex<Last> = Mutex::new(Last {
    method: String::new(),
    peer: None,
    local: None,
    tls: false,
});

#[derive(Clone)]
pub struct Last {
    pub method: String,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub tls: bool,
}

pub fn last() -> Last {
    LAST.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn record(f: impl FnOnce(&mut Last)) {
    f(&mut LAST.lock().unwrap_or_else(|p| p.into_inner()));
}

/// A channel that notes each call's method before sending it.
#[derive(Clone, Debug)]
pub struct Recorded(Channel);

impl tower::Service<http::Request<tonic::body::Body>> for Recorded {
    type Response = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Response;
    type Error = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Error;
    type Future = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let method = req.uri().path().to_string();
        record(|l| l.method = method);
        self.0.call(req)
    }
}

fn deadline() -> Failure {
    Failure::Other("context deadline exceeded".into())
}

/// A connection to `endpoint` (`host:port`, `http(s)://host:port`, `unix(s)://path`).
pub async fn dial(cli: &Cli, endpoint: &str) -> Result<Recorded, Failure> {
    let dial = cli.dial_timeout;
    let tls = tls::ClientTls {
        cacert: cli.cacert.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        skip_verify: cli.insecure_skip_tls_verify,
        insecure_transport: cli.insecure_transport,
    };
    if let Some((path, secure)) = ballast_net::urls::unix_socket(endpoint) {
        let cfg = match secure {
            true => Some(std::sync::Arc::new(
                tls::client_config(&tls).map_err(|e| Failure::Other(e.to_string()))?,
            )),
            false => None,
        };
        return ballast_net::tls::connect_unix_lazy(path, cfg, dial, None)
            .map(Recorded)
            .map_err(|e| Failure::Other(e.to_string()));
    }
    let (secure, hostport) = match endpoint.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some((_, rest)) => (false, rest),
        None => (tls.configured(), endpoint),
    };
    let (host, port) = ballast_net::tls::host_port(hostport)
        .ok_or_else(|| Failure::Other(format!("bad endpoint {endpoint:?}")))?;
    let uri = format!("http://{host}:{port}");
    let ep = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| Failure::Other(e.to_string()))?
        .connect_timeout(dial)
        // etcd's client pings an idle connection every --keepalive-time and drops it when a
        // ping goes unanswered for --keepalive-timeout.
        .http2_keep_alive_interval(cli.keepalive_time)
        .keep_alive_timeout(cli.keepalive_timeout);
    let channel = if secure {
        let cfg = tls::client_config(&tls).map_err(|e| Failure::Other(e.to_string()))?;
        let inner = ballast_net::tls::connector(host, port, std::sync::Arc::new(cfg))
            .map_err(|e| Failure::Other(e.to_string()))?;
        let connector = tower::service_fn(move |uri: http::Uri| {
            let mut inner = inner.clone();
            async move {
                let io = tower::Service::call(&mut inner, uri).await?;
                let tcp = io.inner().get_ref().0;
                note_ends(tcp.peer_addr().ok(), tcp.local_addr().ok(), true);
                Ok::<_, std::io::Error>(io)
            }
        });
        ep.connect_with_connector(connector).await
    } else {
        let addr = format!("{host}:{port}");
        let connector = tower::service_fn(move |_: http::Uri| {
            let addr = addr.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let _ = tcp.set_nodelay(true);
                note_ends(tcp.peer_addr().ok(), tcp.local_addr().ok(), false);
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
            }
        });
        ep.connect_with_connector(connector).await
    };
    channel.map(Recorded).map_err(|_| deadline())
}

fn note_ends(peer: Option<SocketAddr>, local: Option<SocketAddr>, tls: bool) {
    record(|l| {
        l.peer = peer;
        l.local = local;
        l.tls = tls;
    });
}
