//! `ballastctl`: etcdctl's commands, flags, `ETCDCTL_*` variables, output and exit codes.
//! Flags are parsed into [`Cli`], then resolved into a client setup and one command to run.

mod alarm;
mod auth;
mod backup;
mod check;
mod concurrency;
mod dial;
mod downgrade;
mod lease;
mod member;
mod output;
mod restore;
mod snapshot;
mod tls;
mod txn;
mod usage;
mod watch;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ballast_api::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, range_request::SortOrder,
    range_request::SortTarget, CompactionRequest, DefragmentRequest, DeleteRangeRequest,
    HashKvRequest, PutRequest, RangeRequest, RangeResponse, StatusRequest, StatusResponse,
};
use ballast_net::keys::prefix_end;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use output::{table, Format, Printer};

/// A connection that carries the `--user`'s token on every call, as etcdctl's does.
pub type Conn = tonic::service::interceptor::InterceptedService<dial::Recorded, auth::Token>;

/// `--max-recv-bytes` and `--max-request-bytes`, as etcd's Go client applies them (0: its
/// defaults, `math.MaxInt32` and 2 MiB).
static MSG_LIMITS: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();

pub fn msg_limits() -> (usize, usize) {
    MSG_LIMITS
        .get()
        .copied()
        .unwrap_or((i32::MAX as usize, 2 << 20))
}

/// A gRPC client under the message size limits of [`msg_limits`].
#[macro_export]
macro_rules! limited {
    ($client:expr) => {{
        let (recv, send) = $crate::msg_limits();
        $client
            .max_decoding_message_size(recv)
            .max_encoding_message_size(send)
    }};
}

/// etcdctl's exit codes.
const EXIT_ERROR: u8 = 1;
const EXIT_BAD_ARGS: u8 = 128;
pub const EXIT_BAD_FEATURE: u8 = 4;

#[derive(Parser, Debug)]
#[command(
    name = "ballastctl",
    about = "A simple command line client for etcd3 and Ballast.",
    disable_version_flag = true,
    disable_help_subcommand = true
)]
struct Cli {
    /// gRPC endpoints
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// dial timeout for client connections
    #[arg(
        long = "dial-timeout",
        global = true,
        env = "ETCDCTL_DIAL_TIMEOUT",
        default_value = "2s",
        value_parser = parse_duration
    )]
    dial_timeout: Duration,
    /// timeout for short running command (excluding dial timeout)
    #[arg(
        long = "command-timeout",
        global = true,
        env = "ETCDCTL_COMMAND_TIMEOUT",
        default_value = "5s",
        value_parser = parse_duration
    )]
    command_timeout: Duration,
    /// set the output format (fields, json, protobuf, simple, table)
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        env = "ETCDCTL_WRITE_OUT",
        default_value = "simple"
    )]
    write_out: String,
    /// print byte strings as hex encoded strings
    #[arg(long, global = true, env = "ETCDCTL_HEX")]
    hex: bool,
    /// verify certificates of TLS-enabled secure servers using this CA bundle
    #[arg(long, global = true, env = "ETCDCTL_CACERT", default_value = "")]
    cacert: String,
    /// identify secure client using this TLS certificate file
    #[arg(long, global = true, env = "ETCDCTL_CERT", default_value = "")]
    cert: String,
    /// identify secure client using this TLS key file
    #[arg(long, global = true, env = "ETCDCTL_KEY", default_value = "")]
    key: String,
    /// skip server certificate verification (CAUTION: this option should be enabled only for testing purposes)
    #[arg(
        long = "insecure-skip-tls-verify",
        global = true,
        env = "ETCDCTL_INSECURE_SKIP_TLS_VERIFY"
    )]
    insecure_skip_tls_verify: bool,
    /// disable transport security for client connections
    #[arg(
        long = "insecure-transport",
        global = true,
        env = "ETCDCTL_INSECURE_TRANSPORT",
        action = clap::ArgAction::Set,
        default_value = "true",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    insecure_transport: bool,
    /// username[:password] for authentication (prompt if password is not supplied)
    #[arg(long, global = true, env = "ETCDCTL_USER", default_value = "")]
    user: String,
    /// password for authentication (if this option is used, --user option shouldn't include password)
    #[arg(long, global = true, env = "ETCDCTL_PASSWORD", default_value = "")]
    password: String,
    /// enable client-side debug logging
    #[arg(long, global = true, env = "ETCDCTL_DEBUG")]
    debug: bool,
    /// keepalive time for client connections
    #[arg(
        long = "keepalive-time",
        global = true,
        env = "ETCDCTL_KEEPALIVE_TIME",
        default_value = "2s",
        value_parser = parse_duration
    )]
    keepalive_time: Duration,
    /// keepalive timeout for client connections
    #[arg(
        long = "keepalive-timeout",
        global = true,
        env = "ETCDCTL_KEEPALIVE_TIMEOUT",
        default_value = "6s",
        value_parser = parse_duration
    )]
    keepalive_timeout: Duration,
    /// client-side request send limit in bytes (if 0, it defaults to 2.0 MiB (2 * 1024 * 1024).)
    #[arg(
        long = "max-request-bytes",
        global = true,
        env = "ETCDCTL_MAX_REQUEST_BYTES",
        default_value = "0",
        value_parser = usage::go_i64
    )]
    max_request_bytes: i64,
    /// client-side response receive limit in bytes (if 0, it defaults to "math.MaxInt32")
    #[arg(
        long = "max-recv-bytes",
        global = true,
        env = "ETCDCTL_MAX_RECV_BYTES",
        default_value = "0",
        value_parser = usage::go_i64
    )]
    max_recv_bytes: i64,
    /// accept insecure SRV records describing cluster endpoints
    #[arg(
        long = "insecure-discovery",
        global = true,
        env = "ETCDCTL_INSECURE_DISCOVERY",
        action = clap::ArgAction::Set,
        default_value = "true",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    insecure_discovery: bool,
    /// JWT token used for authentication (if this option is used, --user and --password should not be set)
    #[arg(
        long = "auth-jwt-token",
        global = true,
        env = "ETCDCTL_AUTH_JWT_TOKEN",
        default_value = ""
    )]
    auth_jwt_token: String,
    /// domain name to query for SRV records describing cluster endpoints
    #[arg(
        short = 'd',
        long = "discovery-srv",
        global = true,
        env = "ETCDCTL_DISCOVERY_SRV",
        default_value = ""
    )]
    discovery_srv: String,
    /// service name to query when using DNS discovery
    #[arg(
        long = "discovery-srv-name",
        global = true,
        env = "ETCDCTL_DISCOVERY_SRV_NAME",
        default_value = ""
    )]
    discovery_srv_name: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Gets the key or a range of keys
    Get(GetArgs),
    /// Puts the given key into the store
    Put(PutArgs),
    /// Removes the specified key or range of keys [key, range_end)
    Del(DelArgs),
    /// Txn processes all the requests in one transaction
    Txn {
        /// Input transaction in interactive mode
        #[arg(short = 'i', long)]
        interactive: bool,
    },
    /// Compacts the event history in etcd
    Compaction {
        /// 'true' to wait for compaction to physically remove all old revisions
        #[arg(long)]
        physical: bool,
        args: Vec<String>,
    },
    /// Endpoint related commands
    Endpoint {
        /// use all endpoints from the cluster member list
        #[arg(long, global = true)]
        cluster: bool,
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Watches events stream on keys or prefixes
    Watch(watch::WatchArgs),
    /// Acquires a named lock
    Lock(concurrency::LockArgs),
    /// Observes and participates in leader election
    Elect(concurrency::ElectArgs),
    /// Lease related commands
    Lease {
        #[command(subcommand)]
        cmd: lease::LeaseCmd,
    },
    /// Membership related commands
    Member {
        #[command(subcommand)]
        cmd: member::MemberCmd,
    },
    /// Transfers leadership to another etcd cluster member.
    MoveLeader { args: Vec<String> },
    /// Downgrade related commands
    Downgrade {
        #[command(subcommand)]
        cmd: downgrade::DowngradeCmd,
    },
    /// Defragments the storage of the etcd members with given endpoints
    Defrag {
        /// use all endpoints from the cluster member list
        #[arg(long)]
        cluster: bool,
        /// Optional. If present, defragments a data directory not in use by etcd (etcdutl's
        /// since 3.6; kept, unlisted).
        #[arg(long = "data-dir", default_value = "", hide = true)]
        data_dir: String,
    },
    /// commands for checking properties of the etcd cluster
    Check {
        #[command(subcommand)]
        cmd: check::CheckCmd,
    },
    /// Alarm related commands
    Alarm {
        #[command(subcommand)]
        cmd: alarm::AlarmCmd,
    },
    /// Lists the scheduled backups in a directory or S3-compatible bucket (Ballast's own)
    Backup {
        #[command(subcommand)]
        cmd: backup::BackupCmd,
    },
    /// Manages etcd node snapshots
    Snapshot {
        #[command(subcommand)]
        cmd: snapshot::SnapshotCmd,
    },
    /// Prints the version of ballastctl
    Version,
    /// Show the global command-line flags
    Options,
    /// Enable or disable authentication
    Auth {
        #[command(subcommand)]
        cmd: auth::AuthCmd,
    },
    /// User related commands
    User {
        #[command(subcommand)]
        cmd: auth::UserCmd,
    },
    /// Role related commands
    Role {
        #[command(subcommand)]
        cmd: auth::RoleCmd,
    },
}

#[derive(Subcommand, Debug)]
enum EndpointCmd {
    /// Checks the healthiness of endpoints specified in `--endpoints` flag
    Health,
    /// Prints out the status of endpoints specified in `--endpoints` flag
    Status,
    /// Prints the KV history hash for each endpoint in --endpoints
    Hashkv {
        /// maximum revision to hash (default: latest revision)
        #[arg(long, default_value = "0", value_parser = usage::go_i64)]
        rev: i64,
    },
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct GetArgs {
    /// Linearizable(l) or Serializable(s)
    #[arg(long, default_value = "l")]
    consistency: String,
    /// Get keys that are greater than or equal to the given key using byte compare
    #[arg(long = "from-key")]
    from_key: bool,
    /// Get only the keys
    #[arg(long = "keys-only")]
    keys_only: bool,
    /// Get only the count
    #[arg(long = "count-only")]
    count_only: bool,
    /// Maximum number of results
    #[arg(long, default_value = "0", value_parser = usage::go_i64)]
    limit: i64,
    /// Order of results; ASCEND or DESCEND (ASCEND by default)
    #[arg(long, default_value = "")]
    order: String,
    /// Get keys with matching prefix
    #[arg(long)]
    prefix: bool,
    /// Only write values when using the "simple" output format
    #[arg(long = "print-value-only")]
    print_value_only: bool,
    /// Specify the kv revision
    #[arg(long, default_value = "0", value_parser = usage::go_i64)]
    rev: i64,
    /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION
    #[arg(long = "sort-by", default_value = "")]
    sort_by: String,
    /// Minimum create revision
    #[arg(long = "min-create-rev", default_value = "0", value_parser = usage::go_i64)]
    min_create_rev: i64,
    /// Maximum create revision
    #[arg(long = "max-create-rev", default_value = "0", value_parser = usage::go_i64)]
    max_create_rev: i64,
    /// Minimum modification revision
    #[arg(long = "min-mod-rev", default_value = "0", value_parser = usage::go_i64)]
    min_mod_rev: i64,
    /// Maximum modification revision
    #[arg(long = "max-mod-rev", default_value = "0", value_parser = usage::go_i64)]
    max_mod_rev: i64,
    /// Use the RangeStream RPC
    #[arg(long)]
    stream: bool,
    args: Vec<String>,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PutArgs {
    /// lease ID (in hexadecimal) to attach to the key
    #[arg(long, default_value = "0")]
    lease: String,
    /// return the previous key-value pair before modification
    #[arg(long = "prev-kv")]
    prev_kv: bool,
    /// updates the key using its current value
    #[arg(long = "ignore-value")]
    ignore_value: bool,
    /// updates the key using its current lease
    #[arg(long = "ignore-lease")]
    ignore_lease: bool,
    args: Vec<String>,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct DelArgs {
    /// delete keys with matching prefix
    #[arg(long)]
    prefix: bool,
    /// return deleted key-value pairs
    #[arg(long = "prev-kv")]
    prev_kv: bool,
    /// delete keys that are greater than or equal to the given key using byte compare
    #[arg(long = "from-key")]
    from_key: bool,
    /// delete range of keys
    #[arg(long)]
    range: bool,
    args: Vec<String>,
}

/// A command failure, printed as etcdctl prints it.
pub enum Failure {
    BadArgs(String),
    /// An output format the command cannot print (etcdctl exits 4).
    BadFeature(String),
    /// Any other etcdctl exit code, with its message.
    Exit(u8, String),
    /// A failed call that etcdctl reports as "`context` (message)".
    GrpcIn(tonic::Status, &'static str),
    Grpc(tonic::Status),
    Other(String),
}

/// Parses Go durations such as `2s`, `500ms`, `1m30s`.
fn go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_digit() || n == '.' {
                break;
            }
            unit.push(n);
            chars.next();
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        total += v * match unit.as_str() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// A duration flag value, rejected with Go's message.
fn parse_duration(s: &str) -> Result<Duration, String> {
    go_duration(s).ok_or_else(|| format!("time: invalid duration {s:?}"))
}

/// Go's `time.Duration.String()` for the durations etcdctl prints.
fn go_duration_string(d: Duration) -> String {
    let ns = d.as_nanos();
    let trim = |v: f64, unit: &str| {
        let s = format!("{v:.9}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        format!("{s}{unit}")
    };
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        trim(ns as f64 / 1e3, "µs")
    } else if ns < 1_000_000_000 {
        trim(ns as f64 / 1e6, "ms")
    } else {
        trim(ns as f64 / 1e9, "s")
    }
}

/// go-humanize's SI byte sizes, as etcdctl prints DB sizes.
fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let v = n as f64 / 1000f64.powi(e as i32);
    let v = (v * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1} {}", units[e])
    } else {
        format!("{v:.0} {}", units[e])
    }
}

/// `--prefix` and `--from-key` as etcdctl applies them; an empty key means every key.
fn widen(key: &mut Vec<u8>, end: &mut Vec<u8>, prefix: bool, from_key: bool) {
    if (prefix || from_key) && key.is_empty() {
        *key = vec![0];
        *end = vec![0];
    } else if prefix {
        *end = prefix_end(key);
    } else if from_key {
        *end = vec![0];
    }
}

pub fn range_request(a: &GetArgs) -> Result<RangeRequest, Failure> {
    if a.args.is_empty() || a.args.len() > 2 {
        return Err(Failure::BadArgs(
            "get command needs one argument as key and an optional argument as range_end".into(),
        ));
    }
    if a.prefix && a.from_key {
        return Err(Failure::BadArgs(
            "`--prefix` and `--from-key` cannot be set at the same time, choose one".into(),
        ));
    }
    if a.keys_only && a.count_only {
        return Err(Failure::BadArgs(
            "`--keys-only` and `--count-only` cannot be set at the same time, choose one".into(),
        ));
    }
    let key = a.args[0].as_bytes().to_vec();
    let mut r = RangeRequest {
        key: key.clone(),
        limit: a.limit,
        revision: a.rev,
        keys_only: a.keys_only,
        count_only: a.count_only,
        ..Default::default()
    };
    if a.args.len() == 2 {
        if a.prefix || a.from_key {
            return Err(Failure::BadArgs(format!(
                "too many arguments, only accept one argument when `--{}` is set",
                if a.prefix { "prefix" } else { "from-key" }
            )));
        }
        r.range_end = a.args[1].as_bytes().to_vec();
    }
    widen(&mut r.key, &mut r.range_end, a.prefix, a.from_key);
    // etcdctl 3.7's checks and their exit code (ExitBadFeature).
    let bad = |m: String| Failure::Exit(EXIT_BAD_FEATURE, m);
    r.serializable = match a.consistency.as_str() {
        "l" => false,
        "s" => true,
        other => return Err(bad(format!("unknown consistency flag {other:?}"))),
    };
    r.sort_order = match a.order.to_uppercase().as_str() {
        "" => SortOrder::None,
        "ASCEND" => SortOrder::Ascend,
        "DESCEND" => SortOrder::Descend,
        _ => return Err(bad(format!("bad sort order {}", a.order))),
    } as i32;
    r.sort_target = match a.sort_by.to_uppercase().as_str() {
        "" | "KEY" => SortTarget::Key,
        "CREATE" => SortTarget::Create,
        "MODIFY" => SortTarget::Mod,
        "VALUE" => SortTarget::Value,
        "VERSION" => SortTarget::Version,
        _ => return Err(bad(format!("bad sort target {}", a.sort_by))),
    } as i32;
    if r.sort_target != SortTarget::Key as i32 && r.sort_order == SortOrder::None as i32 {
        r.sort_order = SortOrder::Ascend as i32;
    }
    r.min_create_revision = a.min_create_rev.max(0);
    if a.max_create_rev > 0 {
        if a.min_create_rev > a.max_create_rev {
            return Err(bad(format!(
                "getMinCreateRev(={}) > getMaxCreateRev(={})",
                a.min_create_rev, a.max_create_rev
            )));
        }
        r.max_create_revision = a.max_create_rev;
    }
    r.min_mod_revision = a.min_mod_rev.max(0);
    if a.max_mod_rev > 0 {
        if a.min_mod_rev > a.max_mod_rev {
            return Err(bad(format!(
                "getMinModRev(={}) > getMaxModRev(={})",
                a.min_mod_rev, a.max_mod_rev
            )));
        }
        r.max_mod_revision = a.max_mod_rev;
    }
    Ok(r)
}

/// `get --stream`: the RangeStream chunks merged as the Go client merges them (kvs appended,
/// the last chunk's header, `more` and `count`).
async fn get_streamed(kv: &mut KvClient<Conn>, r: RangeRequest) -> Result<RangeResponse, Failure> {
    let mut stream = kv
        .range_stream(r)
        .await
        .map_err(Failure::Grpc)?
        .into_inner();
    let mut out = RangeResponse::default();
    while let Some(chunk) = stream.message().await.map_err(Failure::Grpc)? {
        let Some(part) = chunk.range_response else {
            continue;
        };
        out.kvs.extend(part.kvs);
        if part.header.is_some() {
            out.header = part.header;
        }
        out.more |= part.more;
        if part.count != 0 {
            out.count = part.count;
        }
    }
    Ok(out)
}

pub fn put_request(
    a: &PutArgs,
    stdin_value: impl FnOnce() -> Option<String>,
) -> Result<PutRequest, Failure> {
    let usage = || {
        Failure::BadArgs("put command needs 1 argument and input from stdin or 2 arguments".into())
    };
    let key = a.args.first().ok_or_else(usage)?.clone();
    let value = match a.args.get(1) {
        Some(v) => v.clone(),
        None if a.ignore_value => String::new(),
        None => stdin_value().ok_or_else(usage)?,
    };
    if a.args.len() > 2 {
        return Err(usage());
    }
    let lease = i64::from_str_radix(&a.lease, 16)
        .map_err(|e| Failure::BadArgs(format!("bad lease ID ({e}), expecting ID in Hex")))?;
    Ok(PutRequest {
        key: key.into_bytes(),
        value: value.into_bytes(),
        lease,
        prev_kv: a.prev_kv,
        ignore_value: a.ignore_value,
        ignore_lease: a.ignore_lease,
    })
}

pub fn delete_request(a: &DelArgs) -> Result<DeleteRangeRequest, Failure> {
    if a.args.is_empty() || a.args.len() > 2 {
        return Err(Failure::BadArgs(
            "del command needs one argument as key and an optional argument as range_end".into(),
        ));
    }
    if a.prefix && a.from_key {
        return Err(Failure::BadArgs(
            "`--prefix` and `--from-key` cannot be set at the same time, choose one".into(),
        ));
    }
    let key = a.args[0].as_bytes().to_vec();
    let mut r = DeleteRangeRequest {
        key: key.clone(),
        prev_kv: a.prev_kv,
        ..Default::default()
    };
    if a.args.len() == 2 {
        if a.prefix || a.from_key {
            return Err(Failure::BadArgs(
                "too many arguments, only accept one argument when `--prefix` or `--from-key` is set"
                    .into(),
            ));
        }
        r.range_end = a.args[1].as_bytes().to_vec();
        // etcdctl 3.7 gives an operator two seconds to interrupt a range delete.
        if !a.range {
            eprintln!(
                "Warning: Keys between {:?} and {:?} will be deleted. Please interrupt the command within next 2 seconds to cancel. You can provide `--range` flag to avoid the delay.",
                a.args[0], a.args[1]
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    widen(&mut r.key, &mut r.range_end, a.prefix, a.from_key);
    Ok(r)
}

/// One unary call under `--command-timeout`, with etcdctl's error for a missed deadline.
async fn call<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, Failure> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Failure::Other("context deadline exceeded".into()))?
        .map_err(Failure::Grpc)
}

/// The first of `--endpoints` that accepts a connection, as etcdctl's balancer picks one.
async fn connect_any(cli: &Cli) -> Result<Conn, Failure> {
    let mut last = Failure::Other("context deadline exceeded".into());
    for ep in &cli.endpoints {
        match connect(cli, ep).await {
            Ok(ch) => return Ok(ch),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A connection to one endpoint, authenticated when `--user` is given.
async fn connect(cli: &Cli, endpoint: &str) -> Result<Conn, Failure> {
    let ch = dial::dial(cli, endpoint).await?;
    auth::login(cli, ch).await
}

fn read_stdin() -> Option<String> {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).ok()?;
    Some(s)
}

async fn run(cli: &Cli, p: &Printer) -> Result<(), Failure> {
    let timeout = cli.command_timeout;
    match &cli.cmd {
        Cmd::Auth { cmd } => auth::auth(cli, p, timeout, cmd).await,
        Cmd::User { cmd } => auth::user(cli, p, timeout, cmd).await,
        Cmd::Role { cmd } => auth::role(cli, p, timeout, cmd).await,
        Cmd::Version => {
            println!("ballastctl version: {}", env!("CARGO_PKG_VERSION"));
            println!("API version: 3.7");
            Ok(())
        }
        Cmd::Options => Ok(()),
        Cmd::Get(a) => {
            let r = range_request(a)?;
            let mut kv = crate::limited!(KvClient::new(connect_any(cli).await?));
            let resp = if a.stream {
                tokio::time::timeout(timeout, get_streamed(&mut kv, r))
                    .await
                    .map_err(|_| Failure::Other("context deadline exceeded".into()))??
            } else {
                call(timeout, kv.range(r)).await?.into_inner()
            };
            // etcdctl 3.7 checks these after the call.
            if a.count_only && p.format != Format::Fields {
                return Err(Failure::BadArgs(
                    "--count-only is only for `--write-out=fields`".into(),
                ));
            }
            if a.print_value_only && p.format != Format::Simple {
                return Err(Failure::BadArgs(
                    "print-value-only is only for `--write-out=simple`".into(),
                ));
            }
            p.range(&resp, a.print_value_only);
            Ok(())
        }
        Cmd::Put(a) => {
            let r = put_request(a, read_stdin)?;
            let mut kv = crate::limited!(KvClient::new(connect_any(cli).await?));
            let resp = call(timeout, kv.put(r)).await?;
            p.put(resp.get_ref());
            Ok(())
        }
        Cmd::Del(a) => {
            let r = delete_request(a)?;
            let mut kv = crate::limited!(KvClient::new(connect_any(cli).await?));
            let resp = call(timeout, kv.delete_range(r)).await?;
            p.delete(resp.get_ref());
            Ok(())
        }
        Cmd::Txn { interactive } => {
            let r = txn::read_txn(*interactive)?;
            let mut kv = crate::limited!(KvClient::new(connect_any(cli).await?));
            let resp = call(timeout, kv.txn(r)).await?;
            p.txn(resp.get_ref());
            Ok(())
        }
        Cmd::Compaction { physical, args } => {
            if args.len() != 1 {
                return Err(Failure::BadArgs(
                    "compaction command needs 1 argument".into(),
                ));
            }
            let rev: i64 = args[0].parse().map_err(|_| {
                Failure::Other(format!(
                    "strconv.ParseInt: parsing {:?}: invalid syntax",
                    args[0]
                ))
            })?;
            let mut kv = crate::limited!(KvClient::new(connect_any(cli).await?));
            tokio::time::timeout(
                timeout,
                kv.compact(CompactionRequest {
                    revision: rev,
                    physical: *physical,
                }),
            )
            .await
            .map_err(|_| Failure::Other("context deadline exceeded".into()))?
            .map_err(Failure::Grpc)?;
            println!("compacted revision {rev}");
            Ok(())
        }
        Cmd::Endpoint { cluster, cmd } => {
            let eps = if *cluster {
                member::cluster_endpoints(cli, timeout).await?
            } else {
                cli.endpoints.clone()
            };
            match cmd {
                EndpointCmd::Health => endpoint_health(cli, &eps, p, timeout).await,
                EndpointCmd::Status => endpoint_status(cli, &eps, p, timeout).await,
                EndpointCmd::Hashkv { rev } => endpoint_hashkv(cli, &eps, p, timeout, *rev).await,
            }
        }
        Cmd::Member { cmd } => member::run(cli, p, timeout, cmd).await,
        Cmd::Lease { cmd } => lease::run(cli, p, timeout, cmd).await,
        Cmd::Watch(a) => watch::run(cli, p, a).await,
        Cmd::Lock(a) => concurrency::lock(cli, a).await,
        Cmd::Elect(a) => concurrency::elect(cli, p, a).await,
        Cmd::MoveLeader { args } => member::move_leader(cli, p, timeout, args).await,
        Cmd::Downgrade { cmd } => downgrade::run(cli, p, timeout, cmd).await,
        Cmd::Snapshot { cmd } => snapshot::run(cli, p, cmd).await,
        Cmd::Backup { cmd } => backup::run(p, cmd).await,
        Cmd::Alarm { cmd } => alarm::run(cli, p, timeout, cmd).await,
        Cmd::Check { cmd } => check::run(cli, cmd).await,
        Cmd::Defrag { cluster, data_dir } => {
            if !data_dir.is_empty() {
                return defrag_offline(data_dir);
            }
            let eps = if *cluster {
                member::cluster_endpoints(cli, timeout).await?
            } else {
                cli.endpoints.clone()
            };
            defrag(cli, &eps, timeout).await
        }
    }
}

async fn endpoint_health(
    cli: &Cli,
    eps: &[String],
    p: &Printer,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut results = Vec::new();
    let mut all_ok = true;
    for ep in eps {
        let start = Instant::now();
        let res = match connect(cli, ep).await {
            Ok(ch) => {
                let mut kv = crate::limited!(KvClient::new(ch));
                let req = RangeRequest {
                    key: b"health".to_vec(),
                    ..Default::default()
                };
                match tokio::time::timeout(timeout, kv.range(req)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(s)) if s.message() == "etcdserver: permission denied" => Ok(()),
                    Ok(Err(s)) => {
                        retry_warning_from(cli, &s, "client");
                        Err(s.message().to_string())
                    }
                    Err(_) => Err("context deadline exceeded".into()),
                }
            }
            Err(_) => Err("context deadline exceeded".into()),
        };
        let took = go_duration_string(start.elapsed());
        all_ok &= res.is_ok();
        results.push((ep.clone(), res, took));
    }
    if p.format == Format::Json {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|(ep, r, took)| {
                let mut m = serde_json::json!({"endpoint": ep, "health": r.is_ok(), "took": took});
                if let Err(e) = r {
                    m["error"] = e.clone().into();
                }
                m
            })
            .collect();
        println!("{}", serde_json::Value::from(v));
    } else {
        for (ep, r, took) in &results {
            // etcdctl 3.7: the healthy on stdout, the unhealthy on stderr.
            match r {
                Ok(()) => {
                    println!("{ep} is healthy: successfully committed proposal: took = {took}")
                }
                Err(e) => eprintln!("{ep} is unhealthy: failed to commit proposal: {e}"),
            }
        }
    }
    if all_ok {
        Ok(())
    } else {
        Err(Failure::Other("unhealthy cluster".into()))
    }
}

async fn endpoint_status(
    cli: &Cli,
    eps: &[String],
    p: &Printer,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut got = Vec::new();
    for ep in eps {
        let mut m = crate::limited!(MaintenanceClient::new(connect(cli, ep).await?));
        let st = call(timeout, m.status(StatusRequest {}))
            .await?
            .into_inner();
        got.push((ep.clone(), st));
    }
    // etcdctl 3.7's columns (makeEndpointStatusTable).
    let rows: Vec<Vec<String>> = got
        .iter()
        .map(|(ep, st)| {
            let id = st.header.as_ref().map(|h| h.member_id).unwrap_or(0);
            let unused = match st.db_size {
                0 => 0,
                size => 100 - st.db_size_in_use * 100 / size,
            };
            let dg = st.downgrade_info.clone().unwrap_or_default();
            vec![
                ep.clone(),
                format!("{id:x}"),
                st.version.clone(),
                st.storage_version.clone(),
                human_bytes(st.db_size as u64),
                human_bytes(st.db_size_in_use as u64),
                format!("{unused}%"),
                human_bytes(st.db_size_quota as u64),
                (st.leader == id).to_string(),
                st.is_learner.to_string(),
                st.raft_term.to_string(),
                st.raft_index.to_string(),
                st.raft_applied_index.to_string(),
                st.errors.join(", "),
                dg.target_version,
                dg.enabled.to_string(),
            ]
        })
        .collect();
    match p.format {
        Format::Json => {
            let json: Vec<serde_json::Value> = got
                .iter()
                .map(|(ep, st)| serde_json::json!({"Endpoint": ep, "Status": status_json(st)}))
                .collect();
            println!("{}", serde_json::Value::from(json));
        }
        Format::Table => table(
            &[
                "ENDPOINT",
                "ID",
                "VERSION",
                "STORAGE VERSION",
                "DB SIZE",
                "IN USE",
                "PERCENTAGE NOT IN USE",
                "QUOTA",
                "IS LEADER",
                "IS LEARNER",
                "RAFT TERM",
                "RAFT INDEX",
                "RAFT APPLIED INDEX",
                "ERRORS",
                "DOWNGRADE TARGET VERSION",
                "DOWNGRADE ENABLED",
            ],
            &rows,
        ),
        Format::Fields => {
            for (ep, st) in &got {
                let dg = st.downgrade_info.clone().unwrap_or_default();
                p.header_fields(&st.header);
                println!("\"Version\" : {:?}", st.version);
                println!("\"StorageVersion\" : {:?}", st.storage_version);
                println!("\"DBSize\" : {}", st.db_size);
                println!("\"DBSizeInUse\" : {}", st.db_size_in_use);
                println!("\"DBSizeQuota\" : {}", st.db_size_quota);
                println!("\"Leader\" : {}", st.leader);
                println!("\"IsLearner\" : {}", st.is_learner);
                println!("\"RaftIndex\" : {}", st.raft_index);
                println!("\"RaftAppliedIndex\" : {}", st.raft_applied_index);
                println!("\"Errors\" : [{}]", st.errors.join(" "));
                println!("\"Endpoint\" : {ep:?}");
                println!("\"DowngradeTargetVersion\" : {:?}", dg.target_version);
                println!("\"DowngradeEnabled\" : {}", dg.enabled);
                println!();
            }
        }
        Format::Simple => {
            for r in rows {
                println!("{}", r.join(", "));
            }
        }
    }
    Ok(())
}

/// A `StatusResponse` as etcdctl 3.7 marshals it (Go's encoding/json over the generated
/// struct: fields in proto order, zero values omitted, `downgradeInfo` whenever sent).
fn status_json(st: &StatusResponse) -> serde_json::Value {
    let mut s = serde_json::Map::new();
    if let Some(h) = output::header_json(&st.header) {
        s.insert("header".into(), h);
    }
    let mut put = |k: &str, v: serde_json::Value, zero: bool| {
        if !zero {
            s.insert(k.into(), v);
        }
    };
    put("version", st.version.clone().into(), st.version.is_empty());
    put("dbSize", st.db_size.into(), st.db_size == 0);
    put("leader", st.leader.into(), st.leader == 0);
    put("raftIndex", st.raft_index.into(), st.raft_index == 0);
    put("raftTerm", st.raft_term.into(), st.raft_term == 0);
    put(
        "raftAppliedIndex",
        st.raft_applied_index.into(),
        st.raft_applied_index == 0,
    );
    put("errors", st.errors.clone().into(), st.errors.is_empty());
    put(
        "dbSizeInUse",
        st.db_size_in_use.into(),
        st.db_size_in_use == 0,
    );
    put("isLearner", st.is_learner.into(), !st.is_learner);
    put(
        "storageVersion",
        st.storage_version.clone().into(),
        st.storage_version.is_empty(),
    );
    put(
        "dbSizeQuota",
        st.db_size_quota.into(),
        st.db_size_quota == 0,
    );
    if let Some(dg) = &st.downgrade_info {
        let mut d = serde_json::Map::new();
        if !dg.target_version.is_empty() {
            d.insert("targetVersion".into(), dg.target_version.clone().into());
        }
        if dg.enabled {
            d.insert("enabled".into(), true.into());
        }
        s.insert("downgradeInfo".into(), d.into());
    }
    serde_json::Value::Object(s)
}

/// The message etcdctl prints for one endpoint's failure (logging a failed call first, as its
/// client does).
fn per_endpoint_error(cli: &Cli, e: &Failure) -> String {
    match e {
        Failure::Grpc(s) => {
            retry_warning(cli, s);
            s.message().to_string()
        }
        Failure::Other(m) => m.clone(),
        _ => String::new(),
    }
}

/// `defrag`: each endpoint in turn; a failure is reported and the rest still run.
async fn defrag(cli: &Cli, eps: &[String], timeout: Duration) -> Result<(), Failure> {
    let mut failed = false;
    for ep in eps {
        let start = Instant::now();
        let res = match connect(cli, ep).await {
            Ok(ch) => call(
                timeout,
                crate::limited!(MaintenanceClient::new(ch)).defragment(DefragmentRequest {}),
            )
            .await
            .map(|_| ()),
            Err(e) => Err(e),
        };
        let took = go_duration_string(start.elapsed());
        match res {
            Ok(()) => println!("Finished defragmenting etcd member[{ep}]. took {took}"),
            Err(e) => {
                let msg = per_endpoint_error(cli, &e);
                eprintln!("Failed to defragment etcd member[{ep}]. took {took}. ({msg})");
                failed = true;
            }
        }
    }
    if failed {
        // etcdctl just exits 1 after the per-member reports.
        Err(Failure::Exit(EXIT_ERROR, String::new()))
    } else {
        Ok(())
    }
}

/// `defrag --data-dir`: a stopped member's store, in place.
fn defrag_offline(data_dir: &str) -> Result<(), Failure> {
    let db = ballast_state::layout::store_path(std::path::Path::new(data_dir));
    if let Err(e) = std::fs::metadata(&db) {
        let e = e.to_string();
        let e = e.split(" (os error").next().unwrap_or(&e).to_lowercase();
        return Err(Failure::Other(format!(
            "cannot open database at {} (open {}: {e})",
            db.display(),
            db.display()
        )));
    }
    ballast_storage::Backend::open(&db, ballast_state::schema::TABLES)
        .and_then(|b| b.defragment())
        .map(|_| ())
        .map_err(|e| Failure::Other(e.to_string()))
}

/// `endpoint hashkv`: every endpoint's hash; failures are reported and the rest still print.
async fn endpoint_hashkv(
    cli: &Cli,
    eps: &[String],
    p: &Printer,
    timeout: Duration,
    rev: i64,
) -> Result<(), Failure> {
    let mut got = Vec::new();
    let mut failed = None;
    for ep in eps {
        let res = match connect(cli, ep).await {
            Ok(ch) => {
                let mut m = crate::limited!(MaintenanceClient::new(ch));
                call(timeout, m.hash_kv(HashKvRequest { revision: rev }))
                    .await
                    .map(|r| r.into_inner())
            }
            Err(e) => Err(e),
        };
        match res {
            Ok(r) => got.push((ep.clone(), r)),
            Err(e) => {
                let msg = per_endpoint_error(cli, &e);
                eprintln!("Failed to get the hash of endpoint {ep} ({msg})");
                failed = Some(Failure::Other(msg));
            }
        }
    }
    match p.format {
        Format::Json => {
            let rows: Vec<serde_json::Value> = got
                .iter()
                .map(|(ep, r)| {
                    let mut h = serde_json::Map::new();
                    if let Some(hd) = output::header_json(&r.header) {
                        h.insert("header".into(), hd);
                    }
                    if r.hash != 0 {
                        h.insert("hash".into(), r.hash.into());
                    }
                    if r.compact_revision != 0 {
                        h.insert("compact_revision".into(), r.compact_revision.into());
                    }
                    if r.hash_revision != 0 {
                        h.insert("hash_revision".into(), r.hash_revision.into());
                    }
                    serde_json::json!({"Endpoint": ep, "HashKV": h})
                })
                .collect();
            println!("{}", serde_json::Value::from(rows));
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = got
                .iter()
                .map(|(ep, r)| vec![ep.clone(), r.hash.to_string(), r.hash_revision.to_string()])
                .collect();
            table(&["ENDPOINT", "HASH", "HASH REVISION"], &rows);
        }
        Format::Fields => {
            for (ep, r) in &got {
                p.header_fields(&r.header);
                println!("\"Endpoint\" : {ep:?}");
                println!("\"Hash\" : {}", r.hash);
                println!("\"HashRevision\" : {}", r.hash_revision);
                println!();
            }
        }
        Format::Simple => {
            for (ep, r) in &got {
                println!("{ep}, {}, {}", r.hash, r.hash_revision);
            }
        }
    }
    match failed {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// A message over `--max-recv-bytes` / `--max-request-bytes` is refused by the client itself;
/// grpc-go words that error so, and etcdctl prints it whole.
fn size_limit_error(s: &tonic::Status) -> Option<String> {
    // tonic reports these as OutOfRange; grpc-go as ResourceExhausted.
    if !matches!(
        s.code(),
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
    ) {
        return None;
    }
    let m = s.message();
    let (verb, rest) = if let Some(r) = m.strip_prefix("Error, decoded message length too large: ")
    {
        ("received", r)
    } else if let Some(r) = m.strip_prefix("Error, encoded message length too large: ") {
        ("trying to send", r)
    } else {
        return None;
    };
    let found = rest.strip_prefix("found ")?.split(' ').next()?;
    let limit = rest.split("the limit is: ").nth(1)?.split(' ').next()?;
    Some(format!(
        "rpc error: code = ResourceExhausted desc = grpc: {verb} message larger than max ({found} vs. {limit})"
    ))
}

/// etcdctl 3.7's client logs each failed unary call before the error itself: the method, the
/// connection's two ends and gRPC's error text.
fn retry_warning(cli: &Cli, s: &tonic::Status) {
    retry_warning_from(cli, s, "etcd-client");
}

/// [`retry_warning`] from a client whose logger has another name (`endpoint health` makes one
/// named "client" per endpoint).
fn retry_warning_from(cli: &Cli, s: &tonic::Status, logger: &str) {
    let ep = cli.endpoints.first().cloned().unwrap_or_default();
    let last = dial::last();
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    let line = serde_json::json!({
    "level": "warn",
    "ts": zap_timestamp(std::time::SystemTime::now()),
    "logger": logger,
    "caller": "v3@v3.7.3/retry_interceptor.go:68",
    "msg": "retrying of unary invoker failed",
    "target": format!("etcd-endpoints://0x{:012x}/{ep}", client_tag()),
    "peer": format!(
        "Peer{{Addr: '{}', LocalAddr: '{}', AuthInfo: '{}'}}",
        addr(last.peer),
        addr(last.local),
        if last.tls { "tls" } else { "insecure" }
    ),
    "method": last.method,
    "attempt": 0,
    "error": ballast_net::go::error_text(s),
    });
    eprintln!("{line}");
}

/// etcd's zap timestamp: ISO-8601 UTC with microseconds.
fn zap_timestamp(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (y, mo, day, h, mi, s) = ballast_net::time::utc_civil(d.as_secs());
    format!(
        "{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
        d.subsec_micros()
    )
}

/// A pointer-shaped number naming this client, as the balancer target of etcd's Go client
/// carries its address.
fn client_tag() -> u64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    // splitmix64 finaliser; uniqueness per process is all that matters here.
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) & 0xffff_ffff_fff0
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let root = usage::go_flags(Cli::command());
    let parsed = root
        .clone()
        .try_get_matches_from(&argv)
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            // cobra prints errors and usage to stderr and help to stdout.
            return match usage::outcome(&root, &argv, &e) {
                usage::Outcome::Help(u) => {
                    print!("{u}");
                    ExitCode::SUCCESS
                }
                usage::Outcome::FlagError { usage, msg } => {
                    eprintln!("Error: {msg}");
                    eprintln!("{usage}");
                    ExitCode::from(EXIT_ERROR)
                }
                // cobra's `help [command]`.
                usage::Outcome::UnknownCommand(c) if c == "help" => {
                    let (out, err) = usage::help_command(&root, &argv);
                    print!("{out}");
                    eprint!("{err}");
                    ExitCode::SUCCESS
                }
                usage::Outcome::UnknownCommand(c) => {
                    eprint!("{}", usage::unknown_command(&root, &c));
                    ExitCode::from(EXIT_ERROR)
                }
            };
        }
    };
    let positive = |n: i64, default: usize| match n {
        n if n > 0 => n as usize,
        _ => default,
    };
    let _ = MSG_LIMITS.set((
        positive(cli.max_recv_bytes, i32::MAX as usize),
        positive(cli.max_request_bytes, 2 << 20),
    ));
    if matches!(cli.cmd, Cmd::Options) {
        print!("{}", usage::options(&root));
        return ExitCode::SUCCESS;
    }
    let format = match cli.write_out.as_str() {
        "simple" => Format::Simple,
        "json" => Format::Json,
        "fields" => Format::Fields,
        "table" => Format::Table,
        other => {
            eprintln!("Error: unknown output format {other:?}");
            return ExitCode::from(EXIT_BAD_ARGS);
        }
    };
    let kv_cmd = matches!(
        cli.cmd,
        Cmd::Get(_)
            | Cmd::Put(_)
            | Cmd::Del(_)
            | Cmd::Txn { .. }
            | Cmd::Compaction { .. }
            | Cmd::Watch(_)
    );
    if format == Format::Table && kv_cmd {
        eprintln!("Error: table not supported as output format");
        return ExitCode::from(EXIT_BAD_FEATURE);
    }
    let printer = Printer {
        format,
        hex: cli.hex,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match rt.block_on(run(&cli, &printer)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadArgs(m)) => {
            eprintln!("Error: {m}");
            ExitCode::from(EXIT_BAD_ARGS)
        }
        Err(Failure::BadFeature(m)) => {
            eprintln!("Error: {m}");
            ExitCode::from(EXIT_BAD_FEATURE)
        }
        Err(Failure::Exit(code, m)) => {
            if !m.is_empty() {
                eprintln!("Error: {m}");
            }
            ExitCode::from(code)
        }
        Err(Failure::Other(m)) => {
            eprintln!("Error: {m}");
            ExitCode::from(EXIT_ERROR)
        }
        Err(Failure::Grpc(s)) => {
            match size_limit_error(&s) {
                Some(go) => eprintln!("Error: {go}"),
                None => {
                    retry_warning(&cli, &s);
                    eprintln!("Error: {}", s.message());
                }
            }
            ExitCode::from(EXIT_ERROR)
        }
        Err(Failure::GrpcIn(s, context)) => {
            retry_warning(&cli, &s);
            eprintln!("Error: {context} ({})", s.message());
            ExitCode::from(EXIT_ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zap_timestamps_are_utc_iso8601_with_micros() {
        let t = std::time::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(zap_timestamp(t), "2023-11-14T22:13:20.123456Z");
        let leap = std::time::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(zap_timestamp(leap), "2000-02-29T00:00:00.000000Z");
    }
}
