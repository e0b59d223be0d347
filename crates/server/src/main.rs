//! `ballast`: start one member from etcd's flags, environment and config file.

use std::process::ExitCode;

use std::io::Write;

use std::sync::Arc;

use ballast_server::background::{backup, compactor, corrupt};
use ballast_server::config::{Config, LogFormat, LogOutput};
use ballast_server::conn::tls::{self, Reloading, TlsListener};
use ballast_server::rpc::dispatch::Serves;
use ballast_server::server::EtcdServer;
use ballast_server::version::{BALLAST_VERSION, ETCD_API_VERSION};

/// Every `--log-outputs` destination; a line goes to each.
struct Outputs(Vec<Box<dyn Write + Send>>);

impl Write for Outputs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for o in &mut self.0 {
            o.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.iter_mut().try_for_each(|o| o.flush())
    }
}

fn init_logging(cfg: &Config) -> Result<(), String> {
    let mut outs: Vec<Box<dyn Write + Send>> = Vec::new();
    for o in &cfg.log_outputs {
        outs.push(match o {
            LogOutput::Stderr => Box::new(std::io::stderr()),
            LogOutput::Stdout => Box::new(std::io::stdout()),
            LogOutput::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open log output {}: {e}", path.display()))?,
            ),
        });
    }
    let writer = std::sync::Mutex::new(Outputs(outs));
    let builder = tracing_subscriber::fmt()
        .with_max_level(cfg.log_level)
        .with_writer(writer);
    match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        // Colour codes only for a terminal: log files and journald get plain text.
        LogFormat::Text => {
            use std::io::IsTerminal;
            let terminal =
                cfg.log_outputs == [LogOutput::Stderr] && std::io::stderr().is_terminal();
            builder.with_ansi(terminal).init()
        }
    }
    Ok(())
}

/// glibc malloc arenas (its default: eight per core). Every thread that allocates under
/// contention gets an arena of its own, and memory freed in one is not reused by another:
/// twenty concurrent large reads of 256 MiB grew RSS by 92-128 MiB with the default, 32 MiB
/// with four, 18 MiB with two; two cost the put path a sixth of its rate, four nothing.
const MALLOC_ARENAS: &str = "4";

/// Caps glibc's arenas unless the operator set `MALLOC_ARENA_MAX` (which then wins): glibc
/// reads it only at start, so the process executes itself again, same pid, with it set.
/// `mallopt` would need `unsafe`, which the workspace forbids.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        use std::os::unix::process::CommandExt;
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new(exe);
        if let Some(argv0) = args.next() {
            cmd.arg0(argv0);
        }
        // Returns only if the exec failed: run on with glibc's default.
        let _ = cmd.args(args).env("MALLOC_ARENA_MAX", MALLOC_ARENAS).exec();
    }
}

fn main() -> ExitCode {
    cap_malloc_arenas();
    // Go's flag package takes one dash or two.
    if std::env::args()
        .skip(1)
        .any(|a| a == "--version" || a == "-version")
    {
        println!("{}", ballast_server::config::version_text());
        return ExitCode::SUCCESS;
    }
    let cfg = match Config::from_args(std::env::args().collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ballast: error verifying flags, {e}. See 'ballast --help'.");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = init_logging(&cfg) {
        eprintln!("ballast: {e}");
        return ExitCode::from(1);
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    // tokio's own variable still decides when set.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        b.worker_threads(worker_threads(cores));
    }
    let rt = match b.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ballast: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ballast stopped");
            ExitCode::from(1)
        }
    }
}

/// Serves one client listener among `tasks`.
fn serve_client<L>(
    tasks: &mut tokio::task::JoinSet<std::io::Result<()>>,
    listener: L,
    app: &ballast_server::rpc::dispatch::ClientService,
    http2: ballast_server::rpc::dispatch::Http2,
    serves: Serves,
) where
    L: axum::serve::Listener,
    L::Addr: ballast_server::rpc::dispatch::ConnPeer,
{
    tasks.spawn(ballast_server::rpc::dispatch::serve(
        listener,
        app.clone(),
        http2,
        serves,
    ));
}

/// Binds a unix socket at `path`, removing a stale socket first as etcd does (but never a
/// file that is not a socket).
fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_socket() {
            std::fs::remove_file(path)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        }
    }
    tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))
}

/// Binds a TCP listener as tokio's `bind` does (SO_REUSEADDR on, as Go sets it too), with
/// SO_REUSEPORT for `--socket-reuse-port` so several processes may share the port.
fn bind_tcp(
    addr: std::net::SocketAddr,
    reuse_port: bool,
) -> Result<tokio::net::TcpListener, String> {
    let err = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    if reuse_port {
        socket.set_reuseport(true).map_err(err)?;
    }
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// tokio's `TcpListener::bind` backlog.
const LISTEN_BACKLOG: u32 = 1024;

/// Why the member stops when its applier did: its storage failure, or, when it ended without
/// one because the raft driver had stopped (the driver's failure is set before its entries
/// channel closes), the driver's.
fn applier_stopped(reason: Option<String>, driver_failed: bool) -> String {
    match reason {
        Some(r) => r,
        None if driver_failed => "raft driver stopped on a storage failure".into(),
        None => "the applier stopped".into(),
    }
}

/// Request work runs on tokio's workers; the raft driver and the applier are threads of their
/// own, busy under the same load. A worker per core besides one left for them keeps the busy
/// threads within the cores: on 2 cores, one worker instead of two served the same puts (1 and
/// 3 members) and ranges with 10-15% less CPU, and fewer wake-ups between threads.
fn worker_threads(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// The client port's TLS: the configured files, or `--auto-tls`'s self-signed certificate
/// (kept in `<data-dir>/fixtures/client`, as etcd keeps it).
fn client_tls(cfg: &Config) -> Result<Option<Arc<Reloading>>, String> {
    let dir = cfg.data_dir.join("fixtures").join("client");
    let files = tls::port_files(
        cfg.client_tls.as_ref(),
        cfg.auto_tls,
        &dir,
        &cfg.listen_client_https,
        cfg.self_signed_cert_validity,
    )
    .map_err(|e| e.to_string())?;
    let Some(files) = files else {
        return Ok(None);
    };
    Reloading::new(files)
        .map(|r| Some(Arc::new(r)))
        .map_err(|e| e.to_string())
}

async fn run(cfg: Config) -> Result<(), String> {
    tracing::info!(
        name = %cfg.name,
        data_dir = %cfg.data_dir.display(),
        etcd_api_version = ETCD_API_VERSION,
        ballast_version = BALLAST_VERSION,
        "starting ballast"
    );
    let listen = cfg.listen_client.clone();
    let listen_peer = cfg.listen_peer.clone();
    let reuse_port = cfg.socket_reuse_port;
    let server = EtcdServer::start(cfg).map_err(|e| e.to_string())?;
    // As etcd's, the start-up check is of the data a member starts with: one that starts
    // empty and is then sent a snapshot has only what the leader had moments ago, and hashing
    // it (and the leader hashing its own) held its clients back 3.5 s per 1.2 GB.
    let started_with_history = server.store().current().current_rev() > 1;
    for u in &server.cfg.listen_peer_unix {
        let listener = bind_unix(&u.path)?;
        tracing::info!(path = %u.path.display(), tls = u.tls, "serving peer traffic on a unix socket");
        tokio::spawn(server.transport().serve(listener));
    }
    let peer_tls = server.cfg.peer_https;
    for addr in listen_peer {
        let listener = bind_tcp(addr, reuse_port)?;
        let addr = listener.local_addr().unwrap_or(addr);
        if peer_tls {
            tracing::info!(address = %addr, "serving peer traffic securely");
        } else {
            tracing::info!(address = %addr, "serving peer traffic insecurely");
        }
        tokio::spawn(server.transport().serve(listener));
    }
    // Like etcd, bind the client ports now (connections queue in the backlog) but answer
    // nothing until this member knows a leader and its own client URLs are applied: a client
    // that gets an answer can then find every serving member through `member list`.
    // Metrics and health answer from the start, ready or not: that is what they are for.
    let mut tasks = tokio::task::JoinSet::new();
    for addr in server.cfg.listen_metrics.clone() {
        let listener = bind_tcp(addr, reuse_port)?;
        tracing::info!(address = %addr, "serving metrics");
        let app = ballast_server::http::metrics_router(server.clone());
        tasks.spawn(async move { axum::serve(listener, app).await });
    }
    let mut listeners = Vec::new();
    for addr in listen {
        let listener = bind_tcp(addr, reuse_port)?;
        listeners.push((addr, listener));
    }
    let client_tls = client_tls(&server.cfg)?;
    let mut tls_listeners = Vec::new();
    for addr in server.cfg.listen_client_https.clone() {
        let listener = bind_tcp(addr, reuse_port)?;
        tls_listeners.push((addr, listener));
    }
    // `--listen-client-http-urls`: HTTP here, and then gRPC only on the client URLs.
    let mut http_listeners = Vec::new();
    for (addr, tls) in server
        .cfg
        .listen_client_http
        .iter()
        .map(|a| (*a, false))
        .chain(
            server
                .cfg
                .listen_client_http_https
                .iter()
                .map(|a| (*a, true)),
        )
    {
        let listener = bind_tcp(addr, reuse_port)?;
        http_listeners.push((addr, tls, listener));
    }
    let mut unix_listeners = Vec::new();
    for (u, serves) in server
        .cfg
        .listen_client_unix
        .iter()
        .map(|u| (u, None))
        .chain(
            server
                .cfg
                .listen_client_http_unix
                .iter()
                .map(|u| (u, Some(Serves::Http))),
        )
    {
        unix_listeners.push((u.clone(), bind_unix(&u.path)?, serves));
    }
    let http_only = !http_listeners.is_empty() || !server.cfg.listen_client_http_unix.is_empty();
    let split = if !http_only {
        Serves::All
    } else {
        Serves::Grpc
    };
    let mut status = server.raft_status_watch();
    let fatal = status
        .wait_for(|s| s.leader != 0 || s.fatal.is_some())
        .await
        .ok()
        .and_then(|s| s.fatal.clone());
    if let Some(f) = fatal {
        return Err(f);
    }
    let lessor = server.lessor().clone();
    let proposer = server.proposer().clone();
    tokio::spawn(lessor.run(move |req| {
        let p = proposer.clone();
        async move {
            p.propose(req, &ballast_server::auth::member())
                .await
                .map(|_| ())
        }
    }));
    let mut removed = server.removed_watch();
    let mut apply_failed = server.apply_failed_watch();
    tokio::select! {
        _ = server.publish_attributes() => {}
        r = apply_failed.wait_for(|f| f.is_some()) => {
            let driver_failed = server.raft_status().fatal.is_some();
            return Err(applier_stopped(r.ok().and_then(|f| f.clone()), driver_failed));
        }
        _ = status.wait_for(|s| s.fatal.is_some()) => {
            return Err("raft driver stopped on a storage failure".into());
        }
        _ = removed.wait_for(|r| *r) => {
            return Err("this member was removed from the cluster".into());
        }
    }
    let checker = corrupt::Checker {
        store: server.store().clone(),
        transport: server.transport(),
        member_id: server.member_id(),
        proposer: server.proposer().clone(),
        status: server.raft_status_watch(),
    };
    if server.cfg.initial_corrupt_check && started_with_history {
        corrupt::initial_check(&checker)
            .await
            .map_err(|e| e.to_string())?;
    }
    if let Some(every) = server.cfg.corrupt_check {
        tokio::spawn(corrupt::run(checker, every));
    }
    tokio::spawn(compactor::run(
        server.cfg.auto_compaction,
        server.proposer().clone(),
        server.store().clone(),
        server.raft_status_watch(),
    ));
    if let Some(config) = server.cfg.backup.clone() {
        tokio::spawn(backup::run(
            backup::Schedule {
                config,
                scratch: server.cfg.data_dir.clone(),
                member_id: server.member_id(),
                cluster_id: server.cluster_id(),
            },
            server.store().clone(),
            server.raft_node(),
            server.raft_status_watch(),
            server.backup_stats().clone(),
        ));
    }
    let app = ballast_server::client_service(server.clone());
    let http2 = ballast_server::rpc::dispatch::Http2 {
        max_streams: server.cfg.max_concurrent_streams,
        keepalive_interval: server.cfg.grpc_keepalive_interval,
        keepalive_timeout: server.cfg.grpc_keepalive_timeout,
    };
    let all = listeners
        .into_iter()
        .map(|(a, l)| (a, false, l, split))
        .chain(tls_listeners.into_iter().map(|(a, l)| (a, true, l, split)))
        .chain(
            http_listeners
                .into_iter()
                .map(|(a, tls, l)| (a, tls, l, Serves::Http)),
        );
    let secure = |what: &str| {
        client_tls
            .clone()
            .ok_or_else(|| format!("{what} client URL without TLS configuration"))
    };
    for (addr, tls, listener, serves) in all {
        let addr = listener.local_addr().unwrap_or(addr);
        if tls {
            tracing::info!(address = %addr, "serving client traffic securely");
            let listener =
                TlsListener::new(listener, secure("https")?).map_err(|e| e.to_string())?;
            serve_client(&mut tasks, listener, &app, http2, serves);
        } else {
            tracing::info!(address = %addr, "serving client traffic insecurely");
            let listener = ballast_server::conn::authority::Listener(listener);
            serve_client(&mut tasks, listener, &app, http2, serves);
        }
    }
    for (u, listener, serves) in unix_listeners {
        let serves = serves.unwrap_or(split);
        tracing::info!(path = %u.path.display(), tls = u.tls, "serving client traffic on a unix socket");
        if u.tls {
            let listener = TlsListener::new_unix(listener, secure("unixs")?);
            serve_client(&mut tasks, listener, &app, http2, serves);
        } else {
            let listener = ballast_server::conn::authority::Listener(listener);
            serve_client(&mut tasks, listener, &app, http2, serves);
        }
    }
    tracing::info!(
        member_id = %format!("{:x}", server.member_id()),
        cluster_id = %format!("{:x}", server.cluster_id()),
        "ready to serve client requests"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        Some(r) = tasks.join_next() => {
            return Err(format!("client listener stopped: {r:?}"));
        }
        _ = status.wait_for(|s| s.fatal.is_some()) => {
            return Err("raft driver stopped on a storage failure".into());
        }
        r = apply_failed.wait_for(|f| f.is_some()) => {
            let driver_failed = server.raft_status().fatal.is_some();
            return Err(applier_stopped(r.ok().and_then(|f| f.clone()), driver_failed));
        }
        _ = removed.wait_for(|r| *r) => {
            // Let the reply to the MemberRemove that removed us leave before stopping.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            server.mvcc().sync().map_err(|e| e.to_string())?;
            tracing::warn!("stopping: this member was removed; its data dir must be removed before it rejoins");
            return Ok(());
        }
    }
    tracing::info!("received signal; shutting down");
    // The next start reads the index instead of rebuilding it from every stored revision.
    ballast_server::member::checkpoint::write(&server.mvcc());
    server.mvcc().sync().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_core_is_left_to_the_raft_and_apply_threads() {
        assert_eq!(super::worker_threads(1), 1);
        assert_eq!(super::worker_threads(2), 1);
        assert_eq!(super::worker_threads(8), 7);
    }
}
