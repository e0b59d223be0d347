//! Configuration in two layers: etcd's flags, `ETCD_*` variables and YAML config file are parsed
//! into [`Flags`], then resolved and validated into one [`Config`] the server runs on. Nothing
//! touches the disk until resolution succeeded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ballast_net::urls::{
    check_local_member, parse_initial_cluster, parse_url, split_urls, FlagError,
};
use clap::Parser;
use serde::Deserialize;

pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1536 * 1024;
/// etcd's default backend quota when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Flags(String),
    #[error("cannot read config file {path}: {reason}")]
    File { path: String, reason: String },
    /// A flag's value refused (in etcd's words where etcd has them).
    #[error(transparent)]
    Flag(#[from] FlagError),
}

/// etcd 3.4–3.7 server flags Ballast accepts without acting on them, their `ETCD_*` variables,
/// and whether each takes a value (Go's booleans are `--flag` or `--flag=false`). Given, each
/// is named in a warning. Refused rather than ignored: `--force-new-cluster` (ignoring it would
/// start the old membership where the operator asked for a new one) and restrictions Ballast
/// does not enforce (`--host-whitelist`, `--cors` other than `*`).
const IGNORED_FLAGS: &[(&str, &str, bool)] = &[
    (
        "backend-batch-interval",
        "ETCD_BACKEND_BATCH_INTERVAL",
        true,
    ),
    ("backend-batch-limit", "ETCD_BACKEND_BATCH_LIMIT", true),
    (
        "backend-bbolt-freelist-type",
        "ETCD_BACKEND_BBOLT_FREELIST_TYPE",
        true,
    ),
    (
        "bootstrap-defrag-threshold-megabytes",
        "ETCD_BOOTSTRAP_DEFRAG_THRESHOLD_MEGABYTES",
        true,
    ),
    (
        "compact-hash-check-time",
        "ETCD_COMPACT_HASH_CHECK_TIME",
        true,
    ),
    ("cors", "ETCD_CORS", true),
    ("discovery", "ETCD_DISCOVERY", true),
    ("discovery-cacert", "ETCD_DISCOVERY_CACERT", true),
    ("discovery-cert", "ETCD_DISCOVERY_CERT", true),
    (
        "discovery-dial-timeout",
        "ETCD_DISCOVERY_DIAL_TIMEOUT",
        true,
    ),
    ("discovery-endpoints", "ETCD_DISCOVERY_ENDPOINTS", true),
    ("discovery-fallback", "ETCD_DISCOVERY_FALLBACK", true),
    (
        "discovery-insecure-skip-tls-verify",
        "ETCD_DISCOVERY_INSECURE_SKIP_TLS_VERIFY",
        false,
    ),
    (
        "discovery-insecure-transport",
        "ETCD_DISCOVERY_INSECURE_TRANSPORT",
        false,
    ),
    (
        "discovery-keepalive-time",
        "ETCD_DISCOVERY_KEEPALIVE_TIME",
        true,
    ),
    (
        "discovery-keepalive-timeout",
        "ETCD_DISCOVERY_KEEPALIVE_TIMEOUT",
        true,
    ),
    ("discovery-key", "ETCD_DISCOVERY_KEY", true),
    ("discovery-password", "ETCD_DISCOVERY_PASSWORD", true),
    ("discovery-proxy", "ETCD_DISCOVERY_PROXY", true),
    (
        "discovery-request-timeout",
        "ETCD_DISCOVERY_REQUEST_TIMEOUT",
        true,
    ),
    ("discovery-srv", "ETCD_DISCOVERY_SRV", true),
    ("discovery-srv-name", "ETCD_DISCOVERY_SRV_NAME", true),
    ("discovery-token", "ETCD_DISCOVERY_TOKEN", true),
    ("discovery-user", "ETCD_DISCOVERY_USER", true),
    (
        "distributed-tracing-address",
        "ETCD_DISTRIBUTED_TRACING_ADDRESS",
        true,
    ),
    (
        "distributed-tracing-instance-id",
        "ETCD_DISTRIBUTED_TRACING_INSTANCE_ID",
        true,
    ),
    (
        "distributed-tracing-sampling-rate",
        "ETCD_DISTRIBUTED_TRACING_SAMPLING_RATE",
        true,
    ),
    (
        "distributed-tracing-service-name",
        "ETCD_DISTRIBUTED_TRACING_SERVICE_NAME",
        true,
    ),
    ("downgrade-check-time", "ETCD_DOWNGRADE_CHECK_TIME", true),
    (
        "enable-distributed-tracing",
        "ETCD_ENABLE_DISTRIBUTED_TRACING",
        false,
    ),
    ("enable-log-rotation", "ETCD_ENABLE_LOG_ROTATION", false),
    ("enable-pprof", "ETCD_ENABLE_PPROF", false),
    ("enable-v2", "ETCD_ENABLE_V2", false),
    (
        "experimental-backend-bbolt-freelist-type",
        "ETCD_EXPERIMENTAL_BACKEND_BBOLT_FREELIST_TYPE",
        true,
    ),
    (
        "experimental-enable-lease-checkpoint",
        "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT",
        false,
    ),
    (
        "experimental-enable-v2v3",
        "ETCD_EXPERIMENTAL_ENABLE_V2V3",
        true,
    ),
    (
        "experimental-peer-skip-client-san-verification",
        "ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION",
        false,
    ),
    ("force-new-cluster", "ETCD_FORCE_NEW_CLUSTER", false),
    (
        "grpc-keepalive-min-time",
        "ETCD_GRPC_KEEPALIVE_MIN_TIME",
        true,
    ),
    ("host-whitelist", "ETCD_HOST_WHITELIST", true),
    (
        "initial-election-tick-advance",
        "ETCD_INITIAL_ELECTION_TICK_ADVANCE",
        false,
    ),
    ("log-package-levels", "ETCD_LOG_PACKAGE_LEVELS", true),
    (
        "log-rotation-config-json",
        "ETCD_LOG_ROTATION_CONFIG_JSON",
        true,
    ),
    ("memory-mlock", "ETCD_MEMORY_MLOCK", false),
    ("metrics", "ETCD_METRICS", true),
    (
        "peer-skip-client-san-verification",
        "ETCD_PEER_SKIP_CLIENT_SAN_VERIFICATION",
        false,
    ),
    ("pre-vote", "ETCD_PRE_VOTE", false),
    ("proxy", "ETCD_PROXY", true),
    ("proxy-dial-timeout", "ETCD_PROXY_DIAL_TIMEOUT", true),
    ("proxy-failure-wait", "ETCD_PROXY_FAILURE_WAIT", true),
    ("proxy-read-timeout", "ETCD_PROXY_READ_TIMEOUT", true),
    (
        "proxy-refresh-interval",
        "ETCD_PROXY_REFRESH_INTERVAL",
        true,
    ),
    ("proxy-write-timeout", "ETCD_PROXY_WRITE_TIMEOUT", true),
    ("raft-read-timeout", "ETCD_RAFT_READ_TIMEOUT", true),
    ("raft-write-timeout", "ETCD_RAFT_WRITE_TIMEOUT", true),
    ("unsafe-no-fsync", "ETCD_UNSAFE_NO_FSYNC", false),
    ("v2-deprecation", "ETCD_V2_DEPRECATION", true),
    (
        "warning-unary-request-duration",
        "ETCD_WARNING_UNARY_REQUEST_DURATION",
        true,
    ),
];

/// `IGNORED_FLAGS` as arguments of the parser, each with its `ETCD_*` variable.
fn with_ignored_flags(mut cmd: clap::Command) -> clap::Command {
    for (name, env, takes_value) in IGNORED_FLAGS {
        let mut arg = clap::Arg::new(*name)
            .long(*name)
            .env(*env)
            .help("Accepted for etcd compatibility; no effect in Ballast");
        if !takes_value {
            arg = arg
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true");
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

/// etcd 3.6 renamed `--experimental-*` flags to plain names, each read from its own `ETCD_*`
/// variable as well (`ETCD_WARNING_APPLY_DURATION`). clap reads one variable per flag (the
/// experimental name's), so a plain name's variable becomes its flag when neither the flag
/// nor the experimental variable was given.
fn renamed_env_args(cmd: &clap::Command, m: &clap::ArgMatches) -> Vec<String> {
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        let unset = matches!(
            m.value_source(arg.get_id().as_str()),
            None | Some(clap::parser::ValueSource::DefaultValue)
        );
        if !long.starts_with("experimental-") || !unset {
            continue;
        }
        for alias in arg.get_all_aliases().unwrap_or_default() {
            let var = format!("ETCD_{}", alias.to_uppercase().replace('-', "_"));
            if let Ok(v) = std::env::var(&var) {
                out.push(format!("--{alias}={v}"));
                break;
            }
        }
    }
    out
}

/// Warnings for the ignored flags that were given; an error for a forced new cluster.
fn ignored_given(m: &clap::ArgMatches) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for (name, _, _) in IGNORED_FLAGS {
        let given = matches!(
            m.value_source(name),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        );
        if !given {
            continue;
        }
        let value = m.get_one::<String>(name).cloned().unwrap_or_default();
        // Restrictions Ballast does not enforce are refused: ignoring one would let in what
        // the operator meant to keep out.
        let any = value.is_empty() || value == "*";
        let restriction = match *name {
            "host-whitelist" if !any => Some("--host-whitelist"),
            "cors" if !any => Some("--cors"),
            _ => None,
        };
        if let Some(flag) = restriction {
            return Err(invalid(
                flag,
                &value,
                "not enforced by Ballast yet, so not accepted",
            ));
        }
        match (*name, value.as_str()) {
            ("force-new-cluster", "true") => {
                return Err(invalid(
                    "--force-new-cluster",
                    &value,
                    "not supported by Ballast: restore a snapshot into a new cluster instead",
                ))
            }
            ("pre-vote", "false") => {
                out.push("flag --pre-vote=false has no effect: Ballast always uses pre-vote".into())
            }
            ("unsafe-no-fsync", "true") => {
                out.push("flag --unsafe-no-fsync has no effect: Ballast always fsyncs".into())
            }
            _ => out.push(format!("flag --{name} has no effect in Ballast; ignored")),
        }
    }
    Ok(out)
}

/// etcd's server flags, with `ETCD_*` environment fallbacks.
#[derive(Debug, Parser)]
#[command(
    name = "ballast",
    version,
    about = "Ballast: an etcd-compatible key-value store"
)]
pub struct Flags {
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    #[arg(long = "data-dir", env = "ETCD_DATA_DIR")]
    pub data_dir: Option<String>,
    #[arg(long = "wal-dir", env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<String>,
    #[arg(
        long = "listen-client-urls",
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,
    /// etcd's HTTP-only client listeners; given, `--listen-client-urls` serve gRPC only.
    #[arg(
        long = "listen-client-http-urls",
        env = "ETCD_LISTEN_CLIENT_HTTP_URLS",
        default_value = ""
    )]
    pub listen_client_http_urls: String,
    /// Extra URLs serving /metrics and the health endpoints only (plain HTTP).
    #[arg(
        long = "listen-metrics-urls",
        env = "ETCD_LISTEN_METRICS_URLS",
        default_value = ""
    )]
    pub listen_metrics_urls: String,
    #[arg(
        long = "advertise-client-urls",
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,
    #[arg(
        long = "listen-peer-urls",
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,
    #[arg(
        long = "initial-advertise-peer-urls",
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    #[arg(long = "initial-cluster", env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    #[arg(
        long = "initial-cluster-state",
        env = "ETCD_INITIAL_CLUSTER_STATE",
        default_value = "new"
    )]
    pub initial_cluster_state: String,
    #[arg(
        long = "initial-cluster-token",
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    #[arg(long = "max-request-bytes", env = "ETCD_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: u64,
    #[arg(long = "max-txn-ops", env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,
    /// HTTP/2 streams one client connection may hold open (etcd's default: no limit).
    #[arg(
        long = "max-concurrent-streams",
        env = "ETCD_MAX_CONCURRENT_STREAMS",
        default_value_t = u32::MAX
    )]
    pub max_concurrent_streams: u32,
    #[arg(
        long = "snapshot-count",
        env = "ETCD_SNAPSHOT_COUNT",
        default_value_t = 10_000
    )]
    pub snapshot_count: u64,
    #[arg(
        long = "experimental-snapshot-catchup-entries",
        alias = "snapshot-catchup-entries",
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5000
    )]
    pub snapshot_catchup_entries: u64,
    /// Keys and revisions a compaction deletes per step (0: etcd's default, 1000).
    #[arg(
        long = "experimental-compaction-batch-limit",
        alias = "compaction-batch-limit",
        env = "ETCD_EXPERIMENTAL_COMPACTION_BATCH_LIMIT",
        default_value_t = 1000
    )]
    pub compaction_batch_limit: i64,
    /// How long an idle member waits between compaction steps (0: etcd's default, 10ms).
    #[arg(
        long = "experimental-compaction-sleep-interval",
        alias = "compaction-sleep-interval",
        env = "ETCD_EXPERIMENTAL_COMPACTION_SLEEP_INTERVAL",
        default_value = "10ms"
    )]
    pub compaction_sleep_interval: String,
    /// Received snapshots that may wait to be installed at once (0: no bound).
    #[arg(
        long = "max-snapshots",
        env = "ETCD_MAX_SNAPSHOTS",
        default_value_t = 5
    )]
    pub max_snapshots: usize,
    /// WAL segment files kept, superseded ones included (0: every one).
    #[arg(long = "max-wals", env = "ETCD_MAX_WALS", default_value_t = 5)]
    pub max_wals: usize,
    #[arg(long = "max-learners", env = "ETCD_MAX_LEARNERS", default_value_t = 1)]
    pub max_learners: usize,
    #[arg(
        long = "quota-backend-bytes",
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0
    )]
    pub quota_backend_bytes: i64,
    #[arg(
        long = "heartbeat-interval",
        env = "ETCD_HEARTBEAT_INTERVAL",
        default_value_t = 100
    )]
    pub heartbeat_interval: u64,
    #[arg(
        long = "election-timeout",
        env = "ETCD_ELECTION_TIMEOUT",
        default_value_t = 1000
    )]
    pub election_timeout: u64,
    #[arg(
        long = "experimental-watch-progress-notify-interval",
        alias = "watch-progress-notify-interval",
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m"
    )]
    pub watch_progress_notify_interval: String,
    #[arg(
        long = "experimental-lease-checkpoint-interval",
        env = "ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL",
        default_value = "5s"
    )]
    pub lease_checkpoint_interval: String,
    #[arg(
        long = "auto-compaction-mode",
        env = "ETCD_AUTO_COMPACTION_MODE",
        default_value = "periodic"
    )]
    pub auto_compaction_mode: String,
    #[arg(
        long = "auto-compaction-retention",
        env = "ETCD_AUTO_COMPACTION_RETENTION",
        default_value = "0"
    )]
    pub auto_compaction_retention: String,
    /// Start-up comparison of this member's history with its peers' (on by default here).
    #[arg(
        long = "experimental-initial-corrupt-check",
        env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK",
        default_value = "true",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub initial_corrupt_check: bool,
    /// Log at debug level (etcd 3.4's switch; `--log-level=debug` since).
    #[arg(
        long = "debug",
        env = "ETCD_DEBUG",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub debug: bool,
    /// Serve the JSON gateway (`/v3/...`) on the client URLs.
    #[arg(
        long = "enable-grpc-gateway",
        env = "ETCD_ENABLE_GRPC_GATEWAY",
        default_value = "true",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub enable_grpc_gateway: bool,
    /// SO_REUSEADDR on the listeners: always on, as Go's listeners set it on Unix.
    #[arg(
        long = "socket-reuse-address",
        env = "ETCD_SOCKET_REUSE_ADDRESS",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub socket_reuse_address: bool,
    /// SO_REUSEPORT on the listeners.
    #[arg(
        long = "socket-reuse-port",
        env = "ETCD_SOCKET_REUSE_PORT",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub socket_reuse_port: bool,
    /// Frequency duration of server-to-client ping to check if a connection is alive.
    #[arg(
        long = "grpc-keepalive-interval",
        env = "ETCD_GRPC_KEEPALIVE_INTERVAL",
        default_value = "2h"
    )]
    pub grpc_keepalive_interval: String,
    /// Additional duration of wait before closing a non-responsive connection.
    #[arg(
        long = "grpc-keepalive-timeout",
        env = "ETCD_GRPC_KEEPALIVE_TIMEOUT",
        default_value = "20s"
    )]
    pub grpc_keepalive_timeout: String,
    /// Years an `--auto-tls`/`--peer-auto-tls` certificate is valid.
    #[arg(
        long = "self-signed-cert-validity",
        env = "ETCD_SELF_SIGNED_CERT_VALIDITY",
        default_value_t = 1
    )]
    pub self_signed_cert_validity: u32,
    /// An apply slower than this is logged and counted (`etcd_server_slow_apply_total`).
    #[arg(
        long = "experimental-warning-apply-duration",
        alias = "warning-apply-duration",
        env = "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION",
        default_value = "100ms"
    )]
    pub warning_apply_duration: String,
    /// Refuse membership changes that would leave too few started or reachable members.
    #[arg(
        long = "strict-reconfig-check",
        env = "ETCD_STRICT_RECONFIG_CHECK",
        default_value = "true",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub strict_reconfig_check: bool,
    /// etcd 3.7's `--feature-gates` (`Name=true|false,...`).
    #[arg(long = "feature-gates", env = "ETCD_FEATURE_GATES", default_value = "")]
    pub feature_gates: String,
    /// How often the leader compares histories; 0 turns it off.
    #[arg(
        long = "experimental-corrupt-check-time",
        alias = "corrupt-check-time",
        env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "5m"
    )]
    pub corrupt_check_time: String,
    /// `simple`, or `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m` as in etcd.
    #[arg(long = "auth-token", env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple token lives after its last use.
    #[arg(
        long = "auth-token-ttl",
        env = "ETCD_AUTH_TOKEN_TTL",
        default_value_t = 300
    )]
    pub auth_token_ttl: u64,
    #[arg(long = "bcrypt-cost", env = "ETCD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// Client TLS: the server's certificate and key (PEM).
    #[arg(long = "cert-file", env = "ETCD_CERT_FILE", default_value = "")]
    pub cert_file: String,
    #[arg(long = "key-file", env = "ETCD_KEY_FILE", default_value = "")]
    pub key_file: String,
    #[arg(
        long = "trusted-ca-file",
        env = "ETCD_TRUSTED_CA_FILE",
        default_value = ""
    )]
    pub trusted_ca_file: String,
    #[arg(
        long = "client-cert-auth",
        env = "ETCD_CLIENT_CERT_AUTH",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub client_cert_auth: bool,
    #[arg(
        long = "auto-tls",
        env = "ETCD_AUTO_TLS",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub auto_tls: bool,
    #[arg(
        long = "client-crl-file",
        env = "ETCD_CLIENT_CRL_FILE",
        default_value = ""
    )]
    pub client_crl_file: String,
    #[arg(long = "cipher-suites", env = "ETCD_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,
    #[arg(
        long = "tls-min-version",
        env = "ETCD_TLS_MIN_VERSION",
        default_value = ""
    )]
    pub tls_min_version: String,
    #[arg(
        long = "tls-max-version",
        env = "ETCD_TLS_MAX_VERSION",
        default_value = ""
    )]
    pub tls_max_version: String,
    /// Peer TLS: this member's peer certificate and key, also its identity when dialling.
    #[arg(
        long = "peer-cert-file",
        env = "ETCD_PEER_CERT_FILE",
        default_value = ""
    )]
    pub peer_cert_file: String,
    #[arg(long = "peer-key-file", env = "ETCD_PEER_KEY_FILE", default_value = "")]
    pub peer_key_file: String,
    /// The identity this member presents when dialling peers, if not its peer certificate
    /// (for a peer certificate made for server use only).
    #[arg(
        long = "peer-client-cert-file",
        env = "ETCD_PEER_CLIENT_CERT_FILE",
        default_value = ""
    )]
    pub peer_client_cert_file: String,
    #[arg(
        long = "peer-client-key-file",
        env = "ETCD_PEER_CLIENT_KEY_FILE",
        default_value = ""
    )]
    pub peer_client_key_file: String,
    /// The identity this member presents when dialling other members' client URLs (leader
    /// forwarding, corruption checks), if not its client certificate.
    #[arg(
        long = "client-cert-file",
        env = "ETCD_CLIENT_CERT_FILE",
        default_value = ""
    )]
    pub client_cert_file: String,
    #[arg(
        long = "client-key-file",
        env = "ETCD_CLIENT_KEY_FILE",
        default_value = ""
    )]
    pub client_key_file: String,
    #[arg(
        long = "peer-trusted-ca-file",
        env = "ETCD_PEER_TRUSTED_CA_FILE",
        default_value = ""
    )]
    pub peer_trusted_ca_file: String,
    #[arg(
        long = "peer-client-cert-auth",
        env = "ETCD_PEER_CLIENT_CERT_AUTH",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub peer_client_cert_auth: bool,
    #[arg(
        long = "peer-auto-tls",
        env = "ETCD_PEER_AUTO_TLS",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub peer_auto_tls: bool,
    #[arg(long = "peer-crl-file", env = "ETCD_PEER_CRL_FILE", default_value = "")]
    pub peer_crl_file: String,
    #[arg(
        long = "peer-cert-allowed-cn",
        env = "ETCD_PEER_CERT_ALLOWED_CN",
        default_value = ""
    )]
    pub peer_cert_allowed_cn: String,
    #[arg(
        long = "peer-cert-allowed-hostname",
        env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME",
        default_value = ""
    )]
    pub peer_cert_allowed_hostname: String,
    #[arg(
        long = "client-cert-allowed-hostname",
        env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME",
        default_value = ""
    )]
    pub client_cert_allowed_hostname: String,
    /// `client-transport-security.allowed-cn`: a config-file key only, as in etcd.
    #[arg(skip)]
    pub client_cert_allowed_cn: String,
    /// Where the leader writes scheduled backups (Ballast's own flag; empty = none).
    #[arg(long = "backup-dir", env = "BALLAST_BACKUP_DIR", default_value = "")]
    pub backup_dir: String,
    #[arg(
        long = "backup-interval",
        env = "BALLAST_BACKUP_INTERVAL",
        default_value = "30m"
    )]
    pub backup_interval: String,
    /// How many backups to keep.
    #[arg(
        long = "backup-retention",
        env = "BALLAST_BACKUP_RETENTION",
        default_value = "24"
    )]
    pub backup_retention: usize,
    /// Where the leader writes scheduled backups: `s3://bucket/prefix` or `file:///path`
    /// (Ballast's own flag; empty = none). Credentials come from the standard AWS places.
    #[arg(long = "backup-url", env = "BALLAST_BACKUP_URL", default_value = "")]
    pub backup_url: String,
    /// Drop backups older than this, never the newest (0: keep by count only).
    #[arg(
        long = "backup-max-age",
        env = "BALLAST_BACKUP_MAX_AGE",
        default_value = "0"
    )]
    pub backup_max_age: String,
    /// The S3 endpoint (else `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`; else AWS).
    #[arg(
        long = "backup-endpoint",
        env = "BALLAST_BACKUP_ENDPOINT",
        default_value = ""
    )]
    pub backup_endpoint: String,
    /// The S3 region (else `AWS_REGION` or `AWS_DEFAULT_REGION`; else us-east-1).
    #[arg(
        long = "backup-region",
        env = "BALLAST_BACKUP_REGION",
        default_value = ""
    )]
    pub backup_region: String,
    /// `path`, `virtual` or `auto` (path style with a custom endpoint).
    #[arg(
        long = "backup-addressing-style",
        env = "BALLAST_BACKUP_ADDRESSING_STYLE",
        default_value = "auto"
    )]
    pub backup_addressing_style: String,
    /// Extra CA certificates (PEM) for the S3 endpoint (else `AWS_CA_BUNDLE`).
    #[arg(
        long = "backup-ca-file",
        env = "BALLAST_BACKUP_CA_FILE",
        default_value = ""
    )]
    pub backup_ca_file: String,
    /// Also archive every committed entry beside the snapshots, for restores to any revision.
    #[arg(
        long = "backup-archive",
        env = "BALLAST_BACKUP_ARCHIVE",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub backup_archive: bool,
    /// The longest a committed entry waits before the archive holds it.
    #[arg(
        long = "backup-archive-interval",
        env = "BALLAST_BACKUP_ARCHIVE_INTERVAL",
        default_value = "5s"
    )]
    pub backup_archive_interval: String,
    /// The most raft log entries the archive may keep from compaction while it catches up
    /// (they stay in the WAL); past that, a gap.
    #[arg(
        long = "backup-archive-log-hold",
        env = "BALLAST_BACKUP_ARCHIVE_LOG_HOLD",
        default_value_t = 100_000
    )]
    pub backup_archive_log_hold: u64,
    #[arg(long = "log-level", env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[arg(long = "logger", env = "ETCD_LOGGER", default_value = "zap")]
    pub logger: String,
    /// etcd 3.5+: `json` or `console` (text) for the zap logger.
    #[arg(long = "log-format", env = "ETCD_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// Where logs go: `default`/`stderr`, `stdout`, or file paths, comma-separated.
    #[arg(
        long = "log-outputs",
        env = "ETCD_LOG_OUTPUTS",
        default_value = "default"
    )]
    pub log_outputs: String,
    #[arg(long = "config-file", env = "ETCD_CONFIG_FILE")]
    pub config_file: Option<String>,
    /// What the config file held that Ballast does not use, for the log.
    #[arg(skip)]
    pub file_warnings: Vec<String>,
}

/// Every top-level key etcd 3.4 to 3.7 reads from a config file (from their `embed.Config`
/// and 3.4's flags). A key here that Ballast does not read is accepted with a warning; etcd
/// itself ignores any key it does not know, so an unknown one is only warned about too.
const ETCD_FILE_KEYS: &[&str] = &[
    "-",
    "advertise-client-urls",
    "auth-token",
    "auth-token-ttl",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "backend-batch-interval",
    "backend-batch-limit",
    "backend-bbolt-freelist-type",
    "bcrypt-cost",
    "bootstrap-defrag-threshold-megabytes",
    "cipher-suites",
    "client-transport-security",
    "compact-hash-check-time",
    "compaction-batch-limit",
    "compaction-sleep-interval",
    "corrupt-check-time",
    "cors",
    "data-dir",
    "debug",
    "discovery",
    "discovery-config",
    "discovery-fallback",
    "discovery-proxy",
    "discovery-srv",
    "discovery-srv-name",
    "distributed-tracing-address",
    "distributed-tracing-instance-id",
    "distributed-tracing-sampling-rate",
    "distributed-tracing-service-name",
    "downgrade-check-time",
    "election-timeout",
    "enable-distributed-tracing",
    "enable-grpc-gateway",
    "enable-log-rotation",
    "enable-pprof",
    "enable-v2",
    "experimental-backend-bbolt-freelist-type",
    "experimental-bootstrap-defrag-threshold-megabytes",
    "experimental-compact-hash-check-enabled",
    "experimental-compact-hash-check-time",
    "experimental-compaction-batch-limit",
    "experimental-compaction-sleep-interval",
    "experimental-corrupt-check-time",
    "experimental-distributed-tracing-address",
    "experimental-distributed-tracing-instance-id",
    "experimental-distributed-tracing-sampling-rate",
    "experimental-distributed-tracing-service-name",
    "experimental-downgrade-check-time",
    "experimental-enable-distributed-tracing",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
    "experimental-enable-v2v3",
    "experimental-initial-corrupt-check",
    "experimental-memory-mlock",
    "experimental-peer-skip-client-san-verification",
    "experimental-snapshot-catch-up-entries",
    "experimental-stop-grpc-service-on-defrag",
    "experimental-txn-mode-write-with-shared-buffer",
    "experimental-warning-apply-duration",
    "experimental-warning-unary-request-duration",
    "experimental-watch-progress-notify-interval",
    "feature-gates",
    "force-new-cluster",
    "grpc-additional-server-options",
    "grpc-keepalive-interval",
    "grpc-keepalive-min-time",
    "grpc-keepalive-timeout",
    "heartbeat-interval",
    "host-whitelist",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "initial-election-tick-advance",
    "listen-client-http-urls",
    "listen-client-urls",
    "listen-metrics-urls",
    "listen-peer-urls",
    "log-format",
    "log-level",
    "log-output",
    "log-outputs",
    "log-package-levels",
    "log-rotation-config-json",
    "logger",
    "max-concurrent-streams",
    "max-learners",
    "max-request-bytes",
    "max-snapshots",
    "max-txn-ops",
    "max-wals",
    "memory-mlock",
    "metrics",
    "name",
    "peer-transport-security",
    "pre-vote",
    "proxy",
    "proxy-dial-timeout",
    "proxy-failure-wait",
    "proxy-read-timeout",
    "proxy-refresh-interval",
    "proxy-write-timeout",
    "quota-backend-bytes",
    "self-signed-cert-validity",
    "snapshot-catchup-entries",
    "snapshot-count",
    "socket-options",
    "strict-reconfig-check",
    "tls-max-version",
    "tls-min-version",
    "unsafe-no-fsync",
    "v2-deprecation",
    "wal-dir",
    "warning-apply-duration",
    "warning-unary-request-duration",
    "watch-progress-notify-interval",
];

/// etcd's `client-transport-security` / `peer-transport-security` sections.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SecurityConfig {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_cert_file: Option<String>,
    client_key_file: Option<String>,
    client_cert_auth: Option<bool>,
    trusted_ca_file: Option<String>,
    auto_tls: Option<bool>,
    /// A name (etcd 3.4) or a list of names (3.5+); likewise `allowed-hostname`.
    allowed_cn: Option<serde_yaml::Value>,
    allowed_hostname: Option<serde_yaml::Value>,
    crl_file: Option<String>,
    #[serde(flatten)]
    other: std::collections::BTreeMap<String, serde_yaml::Value>,
}

/// etcd's `socket-options` section.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SocketOptions {
    reuse_port: Option<bool>,
    reuse_address: Option<bool>,
}

/// etcd's YAML config file: the keys Ballast reads; the rest are collected in `other`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileConfig {
    name: Option<String>,
    data_dir: Option<String>,
    wal_dir: Option<String>,
    listen_client_urls: Option<String>,
    listen_client_http_urls: Option<String>,
    listen_metrics_urls: Option<String>,
    advertise_client_urls: Option<String>,
    listen_peer_urls: Option<String>,
    initial_advertise_peer_urls: Option<String>,
    initial_cluster: Option<String>,
    initial_cluster_state: Option<String>,
    initial_cluster_token: Option<String>,
    max_request_bytes: Option<u64>,
    max_txn_ops: Option<u32>,
    max_concurrent_streams: Option<u32>,
    snapshot_count: Option<u64>,
    experimental_snapshot_catchup_entries: Option<u64>,
    experimental_compaction_batch_limit: Option<i64>,
    compaction_batch_limit: Option<i64>,
    /// Go's `time.Duration` in a config file: nanoseconds.
    experimental_compaction_sleep_interval: Option<u64>,
    compaction_sleep_interval: Option<u64>,
    max_snapshots: Option<usize>,
    max_wals: Option<usize>,
    max_learners: Option<usize>,
    quota_backend_bytes: Option<i64>,
    heartbeat_interval: Option<u64>,
    election_timeout: Option<u64>,
    experimental_watch_progress_notify_interval: Option<String>,
    experimental_lease_checkpoint_interval: Option<String>,
    auto_compaction_mode: Option<String>,
    backup_dir: Option<String>,
    cert_file: Option<String>,
    peer_cert_file: Option<String>,
    peer_key_file: Option<String>,
    peer_trusted_ca_file: Option<String>,
    peer_client_cert_auth: Option<bool>,
    peer_auto_tls: Option<bool>,
    peer_crl_file: Option<String>,
    peer_cert_allowed_cn: Option<String>,
    peer_cert_allowed_hostname: Option<String>,
    client_cert_allowed_hostname: Option<String>,
    key_file: Option<String>,
    trusted_ca_file: Option<String>,
    client_cert_auth: Option<bool>,
    auto_tls: Option<bool>,
    client_crl_file: Option<String>,
    cipher_suites: Option<Vec<String>>,
    tls_min_version: Option<String>,
    tls_max_version: Option<String>,
    backup_interval: Option<String>,
    backup_retention: Option<usize>,
    backup_url: Option<String>,
    backup_max_age: Option<String>,
    backup_endpoint: Option<String>,
    backup_region: Option<String>,
    backup_addressing_style: Option<String>,
    backup_ca_file: Option<String>,
    backup_archive: Option<bool>,
    backup_archive_interval: Option<String>,
    backup_archive_log_hold: Option<u64>,
    experimental_initial_corrupt_check: Option<bool>,
    feature_gates: Option<String>,
    strict_reconfig_check: Option<bool>,
    enable_grpc_gateway: Option<bool>,
    socket_options: Option<SocketOptions>,
    self_signed_cert_validity: Option<u32>,
    /// Go's `time.Duration` in a config file: nanoseconds.
    grpc_keepalive_interval: Option<u64>,
    grpc_keepalive_timeout: Option<u64>,
    experimental_warning_apply_duration: Option<u64>,
    warning_apply_duration: Option<u64>,
    experimental_corrupt_check_time: Option<String>,
    auth_token: Option<String>,
    auth_token_ttl: Option<u64>,
    bcrypt_cost: Option<u32>,
    auto_compaction_retention: Option<String>,
    log_level: Option<String>,
    logger: Option<String>,
    log_format: Option<String>,
    log_outputs: Option<Vec<String>>,
    client_transport_security: Option<SecurityConfig>,
    peer_transport_security: Option<SecurityConfig>,
    #[serde(flatten)]
    other: std::collections::BTreeMap<String, serde_yaml::Value>,
}

/// What a config file held that Ballast does not use, as warnings for the log.
fn unused_keys(c: &FileConfig) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in &c.other {
        if v.is_null() {
            continue;
        }
        out.push(if ETCD_FILE_KEYS.contains(&k.as_str()) {
            format!("config key {k:?} has no effect in Ballast; ignored")
        } else {
            format!("unknown config key {k:?}; ignored, as etcd ignores it")
        });
    }
    for (section, s) in [
        ("client-transport-security", &c.client_transport_security),
        ("peer-transport-security", &c.peer_transport_security),
    ] {
        for (k, v) in s.iter().flat_map(|s| &s.other) {
            if !v.is_null() {
                out.push(format!(
                    "config key {section}.{k} has no effect in Ballast; ignored"
                ));
            }
        }
    }
    out
}

/// An `allowed-cn`/`allowed-hostname` value (a string, or a list of them) as the flag's
/// comma-separated form.
fn names(v: &Option<serde_yaml::Value>) -> Option<String> {
    match v.as_ref()? {
        serde_yaml::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_yaml::Value::Sequence(l) => {
            let l: Vec<&str> = l.iter().filter_map(|x| x.as_str()).collect();
            (!l.is_empty()).then(|| l.join(","))
        }
        _ => None,
    }
}

/// etcd 3.7's feature gates: (name, stage, etcd's default, Ballast's behaviour). Ballast's
/// behaviour is fixed for all but `InitialCorruptCheck`, which the gate sets.
pub const FEATURE_GATES: &[(&str, &str, bool, bool)] = &[
    ("AllAlpha", "ALPHA", false, false),
    ("AllBeta", "BETA", false, false),
    ("CompactHashCheck", "ALPHA", false, false),
    ("FastLeaseKeepAlive", "BETA", true, true),
    ("InitialCorruptCheck", "ALPHA", false, true),
    ("LeaseCheckpoint", "ALPHA", false, true),
    ("LeaseCheckpointPersist", "ALPHA", false, true),
    ("PriorityRequest", "ALPHA", false, false),
    ("SetMemberLocalAddr", "ALPHA", false, false),
    // Ballast keeps serving during a defragmentation.
    ("StopGRPCServiceOnDefrag", "ALPHA", false, false),
    ("TxnModeWriteWithSharedBuffer", "BETA", true, true),
];

type Gates = std::collections::BTreeMap<&'static str, bool>;

/// `--feature-gates` as etcd 3.7 parses it (its messages for an unknown gate or a bad value),
/// and a warning for each gate set against Ballast's fixed behaviour.
fn feature_gates(s: &str) -> Result<(Gates, Vec<String>), ConfigError> {
    let (mut gates, mut warnings) = (Gates::new(), Vec::new());
    let bad = |reason: String| invalid("--feature-gates", s, reason);
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = match pair.split_once('=') {
            Some((n, v)) => (n.trim(), v.trim()),
            None => return Err(bad(format!("missing bool value for {pair}"))),
        };
        let Some(&(known, _, _, fixed)) = FEATURE_GATES.iter().find(|g| g.0 == name) else {
            return Err(bad(format!("unrecognized feature gate: {name}")));
        };
        let on = go_bool(value).ok_or_else(|| {
            bad(format!(
                "invalid value of {name}={value}, err: strconv.ParseBool: parsing {value:?}: invalid syntax"
            ))
        })?;
        if known != "InitialCorruptCheck" && on != fixed {
            warnings.push(format!(
                "feature gate {known}={on} has no effect in Ballast, which behaves as {known}={fixed}"
            ));
        }
        gates.insert(known, on);
    }
    Ok((gates, warnings))
}

/// Go's `strconv.ParseBool`.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// etcd's allowed-CN and allowed-hostname lists (comma-separated flags) as one `Allowed`.
fn allowed(cns: &str, hostnames: &str) -> Result<ballast_net::tls::Allowed, ConfigError> {
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    };
    ballast_net::tls::Allowed::from_lists(list(cns), list(hostnames)).map_err(etcd_error)
}

/// One `--log-outputs` destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stderr,
    Stdout,
    /// Appended to; created if missing.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// The resolved configuration the server runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub wal_dir: PathBuf,
    /// Plain HTTP client listeners.
    pub listen_client: Vec<SocketAddr>,
    /// HTTPS client listeners (served with `client_tls`).
    pub listen_client_https: Vec<SocketAddr>,
    /// `--listen-client-http-urls` (plain, then TLS): HTTP only; when any is given the
    /// `--listen-client-urls` listeners serve gRPC only, as in etcd.
    pub listen_client_http: Vec<SocketAddr>,
    pub listen_client_http_https: Vec<SocketAddr>,
    /// Unix-socket client listeners of `--listen-client-urls` and `--listen-client-http-urls`.
    pub listen_client_unix: Vec<UnixListen>,
    pub listen_client_http_unix: Vec<UnixListen>,
    /// Unix-socket peer listeners.
    pub listen_peer_unix: Vec<UnixListen>,
    /// The client port's TLS, if any (`--auto-tls` is resolved at start, in the data dir).
    pub client_tls: Option<crate::conn::tls::TlsFiles>,
    pub auto_tls: bool,
    pub listen_metrics: Vec<SocketAddr>,
    pub listen_peer: Vec<SocketAddr>,
    /// Whether the peer listeners are `https` (then `peer_tls` or `peer_auto_tls` is set).
    pub peer_https: bool,
    pub peer_tls: Option<crate::conn::tls::TlsFiles>,
    pub peer_auto_tls: bool,
    /// `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`.
    pub peer_allowed: ballast_net::tls::Allowed,
    pub advertise_client_urls: Vec<String>,
    pub advertise_peer_urls: Vec<String>,
    /// (name, peer URLs) of every initial member, in flag order.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_token: String,
    pub new_cluster: bool,
    pub max_request_bytes: u64,
    pub max_txn_ops: usize,
    pub max_concurrent_streams: u32,
    /// Applied entries between state-machine snapshots (and raft log compactions).
    pub snapshot_count: u64,
    /// Log entries kept behind a snapshot so slightly lagging followers need no snapshot.
    pub snapshot_catchup_entries: u64,
    /// Keys and revisions per compaction step (`--compaction-batch-limit`).
    pub compaction_batch_limit: usize,
    /// An idle member's wait between compaction steps (`--compaction-sleep-interval`).
    pub compaction_sleep_interval: Duration,
    /// Received snapshots staged at once (`--max-snapshots`; 0: no bound).
    pub max_snapshots: usize,
    /// WAL segment files kept, superseded ones included (`--max-wals`; 0: all).
    pub max_wals: usize,
    /// Learners the membership may hold (`--max-learners`).
    pub max_learners: usize,
    /// 0: no quota.
    pub quota_backend_bytes: u64,
    pub heartbeat: Duration,
    /// How often idle watchers that asked for progress notifications get one.
    pub watch_progress_interval: Duration,
    /// How often the leader records remaining lease TTLs through raft.
    pub lease_checkpoint_interval: Duration,
    pub auto_compaction: AutoCompaction,
    /// Scheduled backups: where, how often, how many and how old to keep.
    pub backup: Option<BackupConfig>,
    pub initial_corrupt_check: bool,
    /// `--strict-reconfig-check`: refuse membership changes that would break quorum.
    /// Serve the JSON gateway on the client URLs (`--enable-grpc-gateway`).
    pub enable_grpc_gateway: bool,
    /// SO_REUSEPORT on the listeners (`--socket-reuse-port`). SO_REUSEADDR is always on, as
    /// Go's listeners set it whatever `--socket-reuse-address` says.
    pub socket_reuse_port: bool,
    /// `--grpc-keepalive-interval` (`None`: 0, no pings) and `--grpc-keepalive-timeout`.
    pub grpc_keepalive_interval: Option<Duration>,
    pub grpc_keepalive_timeout: Duration,
    /// Years an auto-TLS certificate is valid (`--self-signed-cert-validity`).
    pub self_signed_cert_validity: u32,
    /// An apply slower than this is logged and counted (`--experimental-warning-apply-duration`).
    pub warning_apply_duration: Duration,
    pub strict_reconfig_check: bool,
    /// `None`: no periodic check.
    pub corrupt_check: Option<Duration>,
    pub election_ticks: usize,
    pub log_level: tracing::Level,
    pub log_format: LogFormat,
    pub log_outputs: Vec<LogOutput>,
    pub auth_token: AuthTokenConfig,
    /// Simple tokens expire this long after their last use.
    pub auth_token_ttl: Duration,
    pub bcrypt_cost: u32,
    /// Config file keys accepted but not used, logged once the logger is up.
    pub warnings: Vec<String>,
}

/// `--auth-token`, parsed as etcd parses it (the key files are read at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthTokenConfig {
    Simple,
    Jwt {
        public_key: PathBuf,
        /// Without it the member verifies tokens but cannot issue them.
        private_key: Option<PathBuf>,
        method: String,
        ttl: Duration,
    },
}

fn auth_token(s: &str) -> Result<AuthTokenConfig, ConfigError> {
    let bad = |why: &str| invalid("--auth-token", s, why);
    let mut parts = s.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut opts = std::collections::HashMap::new();
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            return Err(bad("invalid auth options"));
        };
        if opts.insert(k, v).is_some() {
            return Err(bad("invalid auth options"));
        }
    }
    match kind {
        "simple" => Ok(AuthTokenConfig::Simple),
        "jwt" => {
            let public_key = opts
                .get("pub-key")
                .ok_or_else(|| bad("jwt needs pub-key=PATH"))?;
            let method = opts
                .get("sign-method")
                .ok_or_else(|| bad("jwt needs sign-method"))?;
            let ttl = match opts.get("ttl") {
                Some(t) => {
                    simple_duration(t).ok_or_else(|| bad("ttl must be a duration such as 5m"))?
                }
                None => Duration::from_secs(300),
            };
            Ok(AuthTokenConfig::Jwt {
                public_key: PathBuf::from(public_key),
                private_key: opts.get("priv-key").map(PathBuf::from),
                method: method.to_string(),
                ttl,
            })
        }
        _ => Err(bad("unknown token type (simple or jwt)")),
    }
}

/// A duration flag as etcd writes them (`500ms`, `10s`, `10m`, `1h`); one unit.
/// `--auto-compaction-mode` with its `--auto-compaction-retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep this much history (a bare number is hours, as in etcd).
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

fn auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, ConfigError> {
    let bad = |why: &str| invalid("--auto-compaction-retention", retention, why);
    match mode {
        "periodic" => {
            let d = match retention.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours * 3600),
                Err(_) => simple_duration(retention)
                    .ok_or_else(|| bad("must be hours or a duration such as 30m"))?,
            };
            Ok(if d.is_zero() {
                AutoCompaction::Off
            } else {
                AutoCompaction::Periodic(d)
            })
        }
        "revision" => match retention.parse::<i64>() {
            Ok(0) => Ok(AutoCompaction::Off),
            Ok(n) if n > 0 => Ok(AutoCompaction::Revision(n)),
            _ => Err(bad("must be a number of revisions")),
        },
        other => Err(etcd_error(format!(
            "unknown auto-compaction-mode {other:?}"
        ))),
    }
}

/// A config file's Go `time.Duration` (nanoseconds) as the flag's text.
fn file_duration(ns: u64) -> String {
    format!("{ns}ns")
}

/// A duration as Go's `time.ParseDuration` reads it: a sequence of decimal numbers, each with
/// a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), such as `2h0m0s`, `1.5s` or `500ms`; `0`
/// alone is zero. Negative durations are not accepted here.
fn simple_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * nanos;
    }
    (total.is_finite() && total < u64::MAX as f64).then(|| Duration::from_nanos(total as u64))
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Flag(FlagError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    })
}

/// A duration flag in Go's syntax.
fn duration(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    simple_duration(value).ok_or_else(|| invalid(flag, value, "must be a duration such as 20s"))
}

/// A duration flag that must be positive; `example` completes the error's hint.
fn positive_duration(
    flag: &'static str,
    value: &str,
    example: &str,
) -> Result<Duration, ConfigError> {
    simple_duration(value)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            invalid(
                flag,
                value,
                format!("must be a positive duration such as {example}"),
            )
        })
}

/// A message etcd prints word for word.
fn etcd_error(msg: String) -> ConfigError {
    ConfigError::Flag(FlagError::Etcd(msg))
}

/// The client side's listeners, TLS and advertised URLs.
/// A `unix://` (or, with TLS, `unixs://`) listener: its socket file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListen {
    pub path: PathBuf,
    pub tls: bool,
}

struct ClientSide {
    listen: Vec<SocketAddr>,
    listen_https: Vec<SocketAddr>,
    listen_unix: Vec<UnixListen>,
    listen_http_only: Vec<SocketAddr>,
    listen_http_only_https: Vec<SocketAddr>,
    listen_http_only_unix: Vec<UnixListen>,
    tls: Option<crate::conn::tls::TlsFiles>,
    advertise: Vec<String>,
    listen_metrics: Vec<SocketAddr>,
}

/// The plain and TLS listeners a client URL flag names, and its unix sockets.
type Listeners = (Vec<SocketAddr>, Vec<SocketAddr>, Vec<UnixListen>);

fn client_listeners(f: &Flags, flag: &'static str, urls: &str) -> Result<Listeners, ConfigError> {
    let has_cert = !f.cert_file.is_empty() && !f.key_file.is_empty();
    let (mut plain, mut tls, mut unix) = (Vec::new(), Vec::new(), Vec::new());
    for u in &split_urls(flag, urls)? {
        if let Some((path, secure)) = ballast_net::urls::unix_socket(u) {
            if secure && !has_cert && !f.auto_tls {
                return Err(etcd_error(format!(
                    "TLS key/cert (--cert-file, --key-file) must be provided for client url {u} with HTTPS scheme"
                )));
            }
            unix.push(UnixListen {
                path: PathBuf::from(path),
                tls: secure,
            });
            continue;
        }
        let addr = listen_addr(flag, u)?;
        if u.starts_with("https://") {
            if !has_cert && !f.auto_tls {
                return Err(etcd_error(format!(
                    "TLS key/cert (--cert-file, --key-file) must be provided for client url {u} with HTTPS scheme"
                )));
            }
            tls.push(addr);
        } else {
            plain.push(addr);
        }
    }
    Ok((plain, tls, unix))
}

fn client_side(f: &Flags) -> Result<ClientSide, ConfigError> {
    let (listen_client, listen_client_https, listen_unix) =
        client_listeners(f, "--listen-client-urls", &f.listen_client_urls)?;
    let (listen_http_only, listen_http_only_https, listen_http_only_unix) =
        if f.listen_client_http_urls.is_empty() {
            (vec![], vec![], vec![])
        } else {
            client_listeners(f, "--listen-client-http-urls", &f.listen_client_http_urls)?
        };
    let has_cert = !f.cert_file.is_empty() && !f.key_file.is_empty();
    let opt = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    let suites: Vec<String> = f
        .cipher_suites
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    crate::conn::tls::validate_cipher_suites(&suites).map_err(|e| etcd_error(e.to_string()))?;
    let client_allowed = allowed(&f.client_cert_allowed_cn, &f.client_cert_allowed_hostname)?;
    let client_tls = has_cert.then(|| crate::conn::tls::TlsFiles {
        allowed: client_allowed,
        client_identity: identity(&f.client_cert_file, &f.client_key_file),
        cert: PathBuf::from(&f.cert_file),
        key: PathBuf::from(&f.key_file),
        trusted_ca: opt(&f.trusted_ca_file),
        client_cert_auth: f.client_cert_auth,
        crl: opt(&f.client_crl_file),
        cipher_suites: suites.clone(),
        min_version: f.tls_min_version.clone(),
        max_version: f.tls_max_version.clone(),
    });
    if let Some(t) = &client_tls {
        crate::conn::tls::validate(t).map_err(|e| etcd_error(e.to_string()))?;
    }
    if f.client_cert_auth && f.trusted_ca_file.is_empty() && has_cert {
        return Err(invalid(
            "--client-cert-auth",
            "true",
            "needs --trusted-ca-file to verify client certificates",
        ));
    }
    let advertise_client_urls = split_urls("--advertise-client-urls", &f.advertise_client_urls)?;
    let listen_metrics = if f.listen_metrics_urls.is_empty() {
        vec![]
    } else {
        split_urls("--listen-metrics-urls", &f.listen_metrics_urls)?
            .iter()
            .map(|u| listen_addr("--listen-metrics-urls", u))
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(ClientSide {
        listen: listen_client,
        listen_https: listen_client_https,
        listen_unix,
        listen_http_only,
        listen_http_only_https,
        listen_http_only_unix,
        tls: client_tls,
        advertise: advertise_client_urls,
        listen_metrics,
    })
}

/// A separate dialling identity, when both its files are given (as etcd's `TLSInfo` uses
/// `ClientCertFile`/`ClientKeyFile`).
fn identity(cert: &str, key: &str) -> Option<(PathBuf, PathBuf)> {
    (!cert.is_empty() && !key.is_empty()).then(|| (PathBuf::from(cert), PathBuf::from(key)))
}

/// The peer side's listeners and TLS.
struct PeerSide {
    listen: Vec<SocketAddr>,
    listen_unix: Vec<UnixListen>,
    https: bool,
    tls: Option<crate::conn::tls::TlsFiles>,
    allowed: ballast_net::tls::Allowed,
}

fn peer_side(f: &Flags) -> Result<PeerSide, ConfigError> {
    let peer_urls = split_urls("--listen-peer-urls", &f.listen_peer_urls)?;
    let (mut listen_peer, mut listen_unix) = (Vec::new(), Vec::new());
    for u in &peer_urls {
        match ballast_net::urls::unix_socket(u) {
            Some((path, tls)) => listen_unix.push(UnixListen {
                path: PathBuf::from(path),
                tls,
            }),
            None => listen_peer.push(listen_addr("--listen-peer-urls", u)?),
        }
    }
    let peer_has_cert = !f.peer_cert_file.is_empty() && !f.peer_key_file.is_empty();
    let secure = |u: &&String| u.starts_with("https://") || u.starts_with("unixs://");
    let peer_https = peer_urls.iter().any(|u| secure(&u));
    if let Some(u) = peer_urls.iter().find(secure) {
        if !peer_has_cert && !f.peer_auto_tls {
            return Err(etcd_error(format!(
                "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url {u} with HTTPS scheme"
            )));
        }
    }
    let peer_allowed = allowed(&f.peer_cert_allowed_cn, &f.peer_cert_allowed_hostname)?;
    let peer_tls = peer_has_cert.then(|| crate::conn::tls::TlsFiles {
        cert: PathBuf::from(&f.peer_cert_file),
        key: PathBuf::from(&f.peer_key_file),
        trusted_ca: (!f.peer_trusted_ca_file.is_empty())
            .then(|| PathBuf::from(&f.peer_trusted_ca_file)),
        client_cert_auth: f.peer_client_cert_auth,
        crl: (!f.peer_crl_file.is_empty()).then(|| PathBuf::from(&f.peer_crl_file)),
        cipher_suites: vec![],
        min_version: String::new(),
        max_version: String::new(),
        allowed: peer_allowed.clone(),
        client_identity: identity(&f.peer_client_cert_file, &f.peer_client_key_file),
    });
    Ok(PeerSide {
        listen: listen_peer,
        listen_unix,
        https: peer_https,
        tls: peer_tls,
        allowed: peer_allowed,
    })
}

/// Who this member is among the first members, and whether the cluster is new.
struct Cluster {
    advertise_peer_urls: Vec<String>,
    initial_cluster: Vec<(String, Vec<String>)>,
    new_cluster: bool,
}

fn cluster(f: &Flags, bootstrapping: bool) -> Result<Cluster, ConfigError> {
    let advertise_peer_urls = split_urls(
        "--initial-advertise-peer-urls",
        &f.initial_advertise_peer_urls,
    )?;
    let initial_cluster = match &f.initial_cluster {
        Some(s) => parse_initial_cluster(s)?,
        None => vec![(f.name.clone(), advertise_peer_urls.clone())],
    };
    if bootstrapping {
        check_local_member(&f.name, &initial_cluster, &advertise_peer_urls)?;
    }
    let new_cluster = match f.initial_cluster_state.as_str() {
        "new" => true,
        "existing" => false,
        other => {
            return Err(invalid(
                "--initial-cluster-state",
                other,
                "must be \"new\" or \"existing\"",
            ))
        }
    };
    Ok(Cluster {
        advertise_peer_urls,
        initial_cluster,
        new_cluster,
    })
}

/// Sizes and timings that must be positive, and etcd's election-to-heartbeat rule.
fn check_sizes(f: &Flags) -> Result<(), ConfigError> {
    if f.max_request_bytes == 0 {
        return Err(invalid("--max-request-bytes", "0", "must be positive"));
    }
    if f.snapshot_count == 0 {
        return Err(invalid("--snapshot-count", "0", "must be positive"));
    }
    if f.max_txn_ops == 0 {
        return Err(invalid("--max-txn-ops", "0", "must be positive"));
    }
    if f.heartbeat_interval == 0 {
        return Err(invalid("--heartbeat-interval", "0", "must be positive"));
    }
    if f.election_timeout < 5 * f.heartbeat_interval {
        return Err(invalid(
            "--election-timeout",
            &f.election_timeout.to_string(),
            "must be at least 5 times --heartbeat-interval",
        ));
    }
    Ok(())
}

/// The watch progress and lease checkpoint intervals.
fn intervals(f: &Flags) -> Result<(Duration, Duration), ConfigError> {
    let watch_progress_interval = positive_duration(
        "--experimental-watch-progress-notify-interval",
        &f.watch_progress_notify_interval,
        "10m or 500ms",
    )?;
    let lease_checkpoint_interval = positive_duration(
        "--experimental-lease-checkpoint-interval",
        &f.lease_checkpoint_interval,
        "5s",
    )?;
    Ok((watch_progress_interval, lease_checkpoint_interval))
}

/// Scheduled backups (`--backup-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    pub location: ballast_backup::Location,
    pub s3: ballast_backup::S3Settings,
    pub every: Duration,
    pub keep: usize,
    pub max_age: Option<Duration>,
    /// `--backup-archive`: how long a committed entry may wait for the archive.
    pub archive: Option<Duration>,
    /// `--backup-archive-log-hold`: raft log entries the archive may keep from compaction.
    pub log_hold: u64,
}

/// `--backup-url` (or `--backup-dir`, which is `file://` for it), `--backup-interval`,
/// `--backup-retention`, `--backup-max-age` and the S3 endpoint flags over the AWS CLI's
/// variables.
fn backup(f: &Flags) -> Result<Option<BackupConfig>, ConfigError> {
    let location = match (f.backup_url.is_empty(), f.backup_dir.is_empty()) {
        (true, true) if f.backup_archive => {
            return Err(invalid(
                "--backup-archive",
                "true",
                "needs --backup-url or --backup-dir",
            ))
        }
        (true, true) => return Ok(None),
        (false, false) => {
            return Err(invalid(
                "--backup-dir",
                &f.backup_dir,
                "use --backup-dir or --backup-url, not both",
            ))
        }
        (true, false) => ballast_backup::Location::Dir(PathBuf::from(&f.backup_dir)),
        (false, true) => ballast_backup::Location::parse(&f.backup_url)
            .map_err(|e| invalid("--backup-url", &f.backup_url, e.to_string()))?,
    };
    let every = positive_duration("--backup-interval", &f.backup_interval, "30m")?;
    if f.backup_retention == 0 {
        return Err(invalid("--backup-retention", "0", "must be positive"));
    }
    let max_age = match f.backup_max_age.as_str() {
        "0" | "" => None,
        v => Some(positive_duration("--backup-max-age", v, "168h")?),
    };
    let mut s3 = ballast_backup::S3Settings::from_env();
    if !f.backup_endpoint.is_empty() {
        s3.endpoint = Some(f.backup_endpoint.clone());
    }
    if !f.backup_region.is_empty() {
        s3.region = f.backup_region.clone();
    }
    s3.addressing = f
        .backup_addressing_style
        .parse()
        .map_err(|e: String| invalid("--backup-addressing-style", &f.backup_addressing_style, e))?;
    if !f.backup_ca_file.is_empty() {
        s3.ca_file = Some(PathBuf::from(&f.backup_ca_file));
    }
    let archive = if f.backup_archive {
        Some(positive_duration(
            "--backup-archive-interval",
            &f.backup_archive_interval,
            "5s",
        )?)
    } else {
        None
    };
    Ok(Some(BackupConfig {
        location,
        s3,
        every,
        keep: f.backup_retention,
        max_age,
        archive,
        log_hold: f.backup_archive_log_hold,
    }))
}

/// `--experimental-corrupt-check-time` (0: off).
fn corrupt_check(f: &Flags) -> Result<Option<Duration>, ConfigError> {
    let corrupt_check = match f.corrupt_check_time.as_str() {
        "0" => None,
        t => Some(simple_duration(t).ok_or_else(|| {
            invalid(
                "--experimental-corrupt-check-time",
                t,
                "must be a duration such as 5m, or 0",
            )
        })?),
    }
    .filter(|d| !d.is_zero());
    Ok(corrupt_check)
}

/// `--log-level`, `--log-outputs`, `--logger`.
fn logging(f: &Flags) -> Result<(tracing::Level, LogFormat, Vec<LogOutput>), ConfigError> {
    // etcd 3.4's `--debug` turns debug logging on whatever `--log-level` says.
    let level = if f.debug {
        "debug"
    } else {
        f.log_level.as_str()
    };
    let log_level = match level {
        "debug" => tracing::Level::DEBUG,
        "info" => tracing::Level::INFO,
        "warn" => tracing::Level::WARN,
        "error" | "panic" | "fatal" => tracing::Level::ERROR,
        other => {
            return Err(invalid(
                "--log-level",
                other,
                "must be debug, info, warn, error, panic or fatal",
            ))
        }
    };
    let mut log_outputs: Vec<LogOutput> = f
        .log_outputs
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| match o {
            "default" | "stderr" => LogOutput::Stderr,
            "stdout" => LogOutput::Stdout,
            path => LogOutput::File(PathBuf::from(path)),
        })
        .collect();
    log_outputs.dedup();
    if log_outputs.is_empty() {
        log_outputs.push(LogOutput::Stderr);
    }
    let log_format = match (f.logger.as_str(), f.log_format.as_str()) {
        ("zap", "json" | "") => LogFormat::Json,
        ("zap", "console") => LogFormat::Text,
        ("zap", other) => {
            return Err(etcd_error(format!(
                "unknown log format: {other}, supported values json, console"
            )))
        }
        ("capnslog" | "text", _) => LogFormat::Text,
        (other, _) => return Err(invalid("--logger", other, "must be zap or capnslog")),
    };
    Ok((log_level, log_format, log_outputs))
}

fn listen_addr(flag: &'static str, u: &str) -> Result<SocketAddr, ConfigError> {
    let (host, port) = parse_url(flag, u)?;
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    let ip: std::net::IpAddr = host.parse().map_err(|_| {
        invalid(
            flag,
            u,
            "listen URL host must be an IP address or localhost",
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

fn apply_file(f: &mut Flags, path: &str) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    let c: FileConfig = serde_yaml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    let file_warnings = unused_keys(&c);
    let cs = c.client_transport_security.unwrap_or_default();
    let ps = c.peer_transport_security.unwrap_or_default();
    // As in etcd, a config file replaces flags and environment entirely.
    let d = Flags::parse_from(["ballast"]);
    *f = Flags {
        name: c.name.unwrap_or(d.name),
        data_dir: c.data_dir,
        wal_dir: c.wal_dir,
        listen_client_urls: c.listen_client_urls.unwrap_or(d.listen_client_urls),
        listen_client_http_urls: c
            .listen_client_http_urls
            .unwrap_or(d.listen_client_http_urls),
        listen_metrics_urls: c.listen_metrics_urls.unwrap_or(d.listen_metrics_urls),
        advertise_client_urls: c.advertise_client_urls.unwrap_or(d.advertise_client_urls),
        listen_peer_urls: c.listen_peer_urls.unwrap_or(d.listen_peer_urls),
        initial_advertise_peer_urls: c
            .initial_advertise_peer_urls
            .unwrap_or(d.initial_advertise_peer_urls),
        initial_cluster: c.initial_cluster,
        initial_cluster_state: c.initial_cluster_state.unwrap_or(d.initial_cluster_state),
        initial_cluster_token: c.initial_cluster_token.unwrap_or(d.initial_cluster_token),
        max_request_bytes: c.max_request_bytes.unwrap_or(d.max_request_bytes),
        max_txn_ops: c.max_txn_ops.unwrap_or(d.max_txn_ops),
        max_concurrent_streams: c.max_concurrent_streams.unwrap_or(d.max_concurrent_streams),
        snapshot_count: c.snapshot_count.unwrap_or(d.snapshot_count),
        snapshot_catchup_entries: c
            .experimental_snapshot_catchup_entries
            .unwrap_or(d.snapshot_catchup_entries),
        compaction_batch_limit: c
            .compaction_batch_limit
            .or(c.experimental_compaction_batch_limit)
            .unwrap_or(d.compaction_batch_limit),
        compaction_sleep_interval: c
            .compaction_sleep_interval
            .or(c.experimental_compaction_sleep_interval)
            .map(file_duration)
            .unwrap_or(d.compaction_sleep_interval),
        max_snapshots: c.max_snapshots.unwrap_or(d.max_snapshots),
        max_wals: c.max_wals.unwrap_or(d.max_wals),
        max_learners: c.max_learners.unwrap_or(d.max_learners),
        quota_backend_bytes: c.quota_backend_bytes.unwrap_or(d.quota_backend_bytes),
        heartbeat_interval: c.heartbeat_interval.unwrap_or(d.heartbeat_interval),
        election_timeout: c.election_timeout.unwrap_or(d.election_timeout),
        auto_compaction_mode: c.auto_compaction_mode.unwrap_or(d.auto_compaction_mode),
        backup_dir: c.backup_dir.unwrap_or(d.backup_dir),
        // etcd's sections first; the flat names are Ballast's own earlier spelling.
        cert_file: cs.cert_file.or(c.cert_file).unwrap_or(d.cert_file),
        peer_cert_file: ps
            .cert_file
            .or(c.peer_cert_file)
            .unwrap_or(d.peer_cert_file),
        peer_key_file: ps.key_file.or(c.peer_key_file).unwrap_or(d.peer_key_file),
        peer_client_cert_file: ps.client_cert_file.unwrap_or(d.peer_client_cert_file),
        peer_client_key_file: ps.client_key_file.unwrap_or(d.peer_client_key_file),
        client_cert_file: cs.client_cert_file.unwrap_or(d.client_cert_file),
        client_key_file: cs.client_key_file.unwrap_or(d.client_key_file),
        peer_trusted_ca_file: ps
            .trusted_ca_file
            .or(c.peer_trusted_ca_file)
            .unwrap_or(d.peer_trusted_ca_file),
        peer_client_cert_auth: ps
            .client_cert_auth
            .or(c.peer_client_cert_auth)
            .unwrap_or(d.peer_client_cert_auth),
        peer_auto_tls: ps.auto_tls.or(c.peer_auto_tls).unwrap_or(d.peer_auto_tls),
        peer_crl_file: ps.crl_file.or(c.peer_crl_file).unwrap_or(d.peer_crl_file),
        peer_cert_allowed_cn: names(&ps.allowed_cn)
            .or(c.peer_cert_allowed_cn)
            .unwrap_or(d.peer_cert_allowed_cn),
        peer_cert_allowed_hostname: names(&ps.allowed_hostname)
            .or(c.peer_cert_allowed_hostname)
            .unwrap_or(d.peer_cert_allowed_hostname),
        client_cert_allowed_hostname: names(&cs.allowed_hostname)
            .or(c.client_cert_allowed_hostname)
            .unwrap_or(d.client_cert_allowed_hostname),
        client_cert_allowed_cn: names(&cs.allowed_cn).unwrap_or_default(),
        key_file: cs.key_file.or(c.key_file).unwrap_or(d.key_file),
        trusted_ca_file: cs
            .trusted_ca_file
            .or(c.trusted_ca_file)
            .unwrap_or(d.trusted_ca_file),
        client_cert_auth: cs
            .client_cert_auth
            .or(c.client_cert_auth)
            .unwrap_or(d.client_cert_auth),
        auto_tls: cs.auto_tls.or(c.auto_tls).unwrap_or(d.auto_tls),
        client_crl_file: cs
            .crl_file
            .or(c.client_crl_file)
            .unwrap_or(d.client_crl_file),
        cipher_suites: c
            .cipher_suites
            .map(|v| v.join(","))
            .unwrap_or(d.cipher_suites),
        tls_min_version: c.tls_min_version.unwrap_or(d.tls_min_version),
        tls_max_version: c.tls_max_version.unwrap_or(d.tls_max_version),
        backup_interval: c.backup_interval.unwrap_or(d.backup_interval),
        backup_retention: c.backup_retention.unwrap_or(d.backup_retention),
        backup_url: c.backup_url.unwrap_or(d.backup_url),
        backup_max_age: c.backup_max_age.unwrap_or(d.backup_max_age),
        backup_endpoint: c.backup_endpoint.unwrap_or(d.backup_endpoint),
        backup_region: c.backup_region.unwrap_or(d.backup_region),
        backup_addressing_style: c
            .backup_addressing_style
            .unwrap_or(d.backup_addressing_style),
        backup_ca_file: c.backup_ca_file.unwrap_or(d.backup_ca_file),
        backup_archive: c.backup_archive.unwrap_or(d.backup_archive),
        backup_archive_interval: c
            .backup_archive_interval
            .unwrap_or(d.backup_archive_interval),
        backup_archive_log_hold: c
            .backup_archive_log_hold
            .unwrap_or(d.backup_archive_log_hold),
        initial_corrupt_check: c
            .experimental_initial_corrupt_check
            .unwrap_or(d.initial_corrupt_check),
        feature_gates: c.feature_gates.unwrap_or(d.feature_gates),
        strict_reconfig_check: c.strict_reconfig_check.unwrap_or(d.strict_reconfig_check),
        debug: d.debug,
        enable_grpc_gateway: c.enable_grpc_gateway.unwrap_or(d.enable_grpc_gateway),
        socket_reuse_address: c
            .socket_options
            .as_ref()
            .and_then(|o| o.reuse_address)
            .unwrap_or(d.socket_reuse_address),
        socket_reuse_port: c
            .socket_options
            .as_ref()
            .and_then(|o| o.reuse_port)
            .unwrap_or(d.socket_reuse_port),
        grpc_keepalive_interval: c
            .grpc_keepalive_interval
            .map(file_duration)
            .unwrap_or(d.grpc_keepalive_interval),
        grpc_keepalive_timeout: c
            .grpc_keepalive_timeout
            .map(file_duration)
            .unwrap_or(d.grpc_keepalive_timeout),
        self_signed_cert_validity: c
            .self_signed_cert_validity
            .unwrap_or(d.self_signed_cert_validity),
        warning_apply_duration: c
            .warning_apply_duration
            .or(c.experimental_warning_apply_duration)
            // A threshold of 0 warns of every apply, as the shortest one does.
            .map(|ns| file_duration(ns.max(1)))
            .unwrap_or(d.warning_apply_duration),
        corrupt_check_time: c
            .experimental_corrupt_check_time
            .unwrap_or(d.corrupt_check_time),
        auth_token: c.auth_token.unwrap_or(d.auth_token),
        auth_token_ttl: c.auth_token_ttl.unwrap_or(d.auth_token_ttl),
        bcrypt_cost: c.bcrypt_cost.unwrap_or(d.bcrypt_cost),
        auto_compaction_retention: c
            .auto_compaction_retention
            .unwrap_or(d.auto_compaction_retention),
        watch_progress_notify_interval: c
            .experimental_watch_progress_notify_interval
            .unwrap_or(d.watch_progress_notify_interval),
        lease_checkpoint_interval: c
            .experimental_lease_checkpoint_interval
            .unwrap_or(d.lease_checkpoint_interval),
        log_level: c.log_level.unwrap_or(d.log_level),
        logger: c.logger.unwrap_or(d.logger),
        log_format: c.log_format.unwrap_or(d.log_format),
        log_outputs: c.log_outputs.map(|v| v.join(",")).unwrap_or(d.log_outputs),
        config_file: Some(path.to_string()),
        file_warnings,
    };
    Ok(())
}

/// Go's flag package accepts `-name`; clap wants `--name`. Rewrite single-dash long flags.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i > 0 && a.starts_with('-') && !a.starts_with("--") && a.len() > 2 {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

/// `ballast --help`: every flag in etcd 3.7's groups with its default, etcd 3.4's older names,
/// then Ballast's own.
pub const HELP: &str = include_str!("help.txt");

/// `ballast --version`, in etcd's layout: the etcd version a script reads first is the API
/// Ballast implements.
pub fn version_text() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    format!(
        "etcd Version: {}\nBallast Version: {}\nOS/Arch: {}/{arch}",
        crate::version::ETCD_API_VERSION,
        crate::version::BALLAST_VERSION,
        std::env::consts::OS
    )
}

impl Config {
    pub fn from_args(args: Vec<String>) -> Result<Config, ConfigError> {
        use clap::{CommandFactory, FromArgMatches};
        let flag_error = |e: clap::Error| {
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) {
                e.exit()
            }
            ConfigError::Flags(e.to_string().trim_end().to_string())
        };
        let cmd = with_ignored_flags(Flags::command()).override_help(HELP);
        let mut args = normalize_args(args);
        let mut matches = cmd
            .clone()
            .try_get_matches_from(&args)
            .map_err(flag_error)?;
        let renamed = renamed_env_args(&cmd, &matches);
        if !renamed.is_empty() {
            args.extend(renamed);
            matches = cmd.try_get_matches_from(&args).map_err(flag_error)?;
        }
        let mut f = Flags::from_arg_matches(&matches).map_err(flag_error)?;
        let ignored = ignored_given(&matches)?;
        if let Some(path) = f.config_file.clone() {
            // A config file replaces every flag, the ignored ones too.
            apply_file(&mut f, &path)?;
        } else {
            f.file_warnings = ignored;
        }
        Self::resolve(f)
    }

    fn resolve(f: Flags) -> Result<Config, ConfigError> {
        if f.name.is_empty() {
            return Err(invalid("--name", &f.name, "name must not be empty"));
        }
        let data_dir = PathBuf::from(
            f.data_dir
                .clone()
                .unwrap_or_else(|| format!("{}.ballast", f.name)),
        );
        let wal_dir = f
            .wal_dir
            .clone()
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("member").join("wal"));
        let client = client_side(&f)?;
        let peer = peer_side(&f)?;
        // As etcd's VerifyBootstrap: the initial cluster is checked against this member's
        // peer URLs only when it bootstraps; a member with a log (or an etcd directory to
        // convert) takes its identity from disk and may be restarted with other flags.
        let has_member = ballast_raft::Node::log_exists(&wal_dir)
            || ballast_state::layout::etcd_db_path(&data_dir).exists();
        let cluster = cluster(&f, !has_member)?;
        check_sizes(&f)?;
        let (watch_progress_interval, lease_checkpoint_interval) = intervals(&f)?;
        let (gates, gate_warnings) = feature_gates(&f.feature_gates)?;
        let logging = logging(&f)?;
        Ok(Config {
            name: f.name.clone(),
            data_dir,
            wal_dir,
            listen_client: client.listen,
            listen_client_https: client.listen_https,
            listen_client_http: client.listen_http_only,
            listen_client_http_https: client.listen_http_only_https,
            listen_client_unix: client.listen_unix,
            listen_client_http_unix: client.listen_http_only_unix,
            listen_peer_unix: peer.listen_unix,
            client_tls: client.tls,
            auto_tls: f.auto_tls,
            listen_metrics: client.listen_metrics,
            listen_peer: peer.listen,
            peer_https: peer.https,
            peer_tls: peer.tls,
            peer_auto_tls: f.peer_auto_tls,
            peer_allowed: peer.allowed,
            advertise_client_urls: client.advertise,
            advertise_peer_urls: cluster.advertise_peer_urls,
            initial_cluster: cluster.initial_cluster,
            initial_cluster_token: f.initial_cluster_token.clone(),
            new_cluster: cluster.new_cluster,
            max_request_bytes: f.max_request_bytes,
            max_txn_ops: f.max_txn_ops as usize,
            // grpc-go reads 0 as no limit.
            max_concurrent_streams: match f.max_concurrent_streams {
                0 => u32::MAX,
                n => n,
            },
            snapshot_count: f.snapshot_count,
            snapshot_catchup_entries: f.snapshot_catchup_entries,
            // 0 (or less) is etcd's default, as etcd's store reads it.
            compaction_batch_limit: usize::try_from(f.compaction_batch_limit)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(1000),
            compaction_sleep_interval: Some(duration(
                "--experimental-compaction-sleep-interval",
                &f.compaction_sleep_interval,
            )?)
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_millis(10)),
            max_snapshots: f.max_snapshots,
            max_wals: f.max_wals,
            max_learners: f.max_learners,
            // As in etcd: 0 is the default quota, negative disables it (kept here as 0).
            quota_backend_bytes: match f.quota_backend_bytes {
                0 => DEFAULT_QUOTA_BYTES,
                q if q < 0 => 0,
                q => q as u64,
            },
            heartbeat: Duration::from_millis(f.heartbeat_interval),
            watch_progress_interval,
            lease_checkpoint_interval,
            auto_compaction: auto_compaction(
                &f.auto_compaction_mode,
                &f.auto_compaction_retention,
            )?,
            backup: backup(&f)?,
            strict_reconfig_check: f.strict_reconfig_check,
            enable_grpc_gateway: f.enable_grpc_gateway,
            socket_reuse_port: f.socket_reuse_port,
            // 0 turns the pings off; a timeout of 0 is gRPC's default, 20 s.
            grpc_keepalive_interval: Some(duration(
                "--grpc-keepalive-interval",
                &f.grpc_keepalive_interval,
            )?)
            .filter(|d| !d.is_zero()),
            grpc_keepalive_timeout: Some(duration(
                "--grpc-keepalive-timeout",
                &f.grpc_keepalive_timeout,
            )?)
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(20)),
            // 0 is refused only where a certificate is made, as etcd does.
            self_signed_cert_validity: f.self_signed_cert_validity,
            warning_apply_duration: positive_duration(
                "--experimental-warning-apply-duration",
                &f.warning_apply_duration,
                "100ms",
            )?,
            initial_corrupt_check: gates
                .get("InitialCorruptCheck")
                .copied()
                .unwrap_or(f.initial_corrupt_check),
            corrupt_check: corrupt_check(&f)?,
            election_ticks: (f.election_timeout / f.heartbeat_interval) as usize,
            log_level: logging.0,
            log_format: logging.1,
            log_outputs: logging.2,
            auth_token: auth_token(&f.auth_token)?,
            auth_token_ttl: Duration::from_secs(f.auth_token_ttl.max(1)),
            bcrypt_cost: match f.bcrypt_cost {
                4..=31 => f.bcrypt_cost,
                c => return Err(invalid("--bcrypt-cost", &c.to_string(), "must be 4 to 31")),
            },
            warnings: f
                .file_warnings
                .iter()
                .cloned()
                .chain(gate_warnings)
                .collect(),
        })
    }

    /// Whether client certificates are verified (then a certificate's CN names the user).
    pub fn client_cert_auth(&self) -> bool {
        self.client_tls.as_ref().is_some_and(|t| t.client_cert_auth)
    }

    /// etcd's default request timeout: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + self.heartbeat * (2 * self.election_ticks as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["ballast".to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        Config::from_args(v)
    }

    #[test]
    fn defaults_match_etcd() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.ballast"));
        assert_eq!(c.listen_client, vec!["127.0.0.1:2379".parse().unwrap()]);
        assert_eq!(
            c.initial_cluster,
            vec![("default".into(), vec!["http://localhost:2380".into()])]
        );
        assert_eq!(c.max_request_bytes, 1536 * 1024);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.max_concurrent_streams, u32::MAX);
        // grpc-go reads 0 as no limit.
        let c = parse(&["--max-concurrent-streams", "0"]).unwrap();
        assert_eq!(c.max_concurrent_streams, u32::MAX);
    }

    #[test]
    fn backup_flags_name_a_directory_or_a_bucket() {
        assert_eq!(parse(&[]).unwrap().backup, None);
        let c = parse(&["--backup-dir", "/var/backups/b"]).unwrap();
        let b = c.backup.unwrap();
        assert_eq!(
            b.location,
            ballast_backup::Location::Dir("/var/backups/b".into())
        );
        assert_eq!((b.keep, b.max_age), (24, None));
        let c = parse(&[
            "--backup-url",
            "s3://bucket-1/prod/etcd",
            "--backup-endpoint",
            "http://127.0.0.1:9000",
            "--backup-region",
            "eu-west-1",
            "--backup-max-age",
            "168h",
            "--backup-addressing-style",
            "virtual",
        ])
        .unwrap();
        let b = c.backup.unwrap();
        assert_eq!(
            b.location,
            ballast_backup::Location::S3 {
                bucket: "bucket-1".into(),
                prefix: "prod/etcd".into()
            }
        );
        assert_eq!(b.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(b.s3.region, "eu-west-1");
        assert!(!b.s3.path_style());
        assert_eq!(b.max_age, Some(Duration::from_secs(168 * 3600)));
        for (args, flag) in [
            (&["--backup-url", "s3://b"][..], "--backup-url"),
            (&["--backup-url", "ftp://x/y"][..], "--backup-url"),
            (
                &["--backup-url", "s3://bucket/p", "--backup-dir", "/x"][..],
                "--backup-dir",
            ),
            (
                &[
                    "--backup-url",
                    "s3://bucket/p",
                    "--backup-addressing-style",
                    "odd",
                ][..],
                "--backup-addressing-style",
            ),
            (
                &["--backup-url", "s3://bucket/p", "--backup-max-age", "soon"][..],
                "--backup-max-age",
            ),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }

    #[test]
    fn go_style_single_dash_flags() {
        let c = parse(&[
            "-name",
            "n1",
            "-initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "-initial-cluster",
            "n1=http://127.0.0.1:2380",
        ])
        .unwrap();
        assert_eq!(c.name, "n1");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = parse(&["--max-txn-ops", "abc"]).unwrap_err().to_string();
        assert!(e.contains("--max-txn-ops"), "{e}");
        let e = parse(&["--bogus"]).unwrap_err().to_string();
        assert!(e.contains("--bogus"), "{e}");
        let e = parse(&["--initial-cluster-state", "old"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--initial-cluster-state"), "{e}");
        let e = parse(&["--listen-client-urls", "tcp://1.2.3.4:1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--listen-client-urls"), "{e}");
    }

    /// etcd's compaction pacing, by 3.4's and 3.6+'s names, in flags and a file; 0 is
    /// etcd's default, as etcd's store reads it.
    #[test]
    fn compaction_batch_limit_and_sleep_interval() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.compaction_batch_limit, 1000);
        assert_eq!(c.compaction_sleep_interval, Duration::from_millis(10));
        let c = parse(&[
            "--experimental-compaction-batch-limit=50",
            "--compaction-sleep-interval=1s",
        ])
        .unwrap();
        assert_eq!(c.compaction_batch_limit, 50);
        assert_eq!(c.compaction_sleep_interval, Duration::from_secs(1));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = parse(&[
            "--compaction-batch-limit=0",
            "--compaction-sleep-interval=0",
        ])
        .unwrap();
        assert_eq!(c.compaction_batch_limit, 1000);
        assert_eq!(c.compaction_sleep_interval, Duration::from_millis(10));
        assert!(parse(&["--compaction-sleep-interval=soon"]).is_err());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.yaml");
        std::fs::write(
            &p,
            "compaction-batch-limit: 20\nexperimental-compaction-sleep-interval: 5000000\n",
        )
        .unwrap();
        let c = parse(&["--config-file", p.to_str().unwrap()]).unwrap();
        assert_eq!(c.compaction_batch_limit, 20);
        assert_eq!(c.compaction_sleep_interval, Duration::from_millis(5));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // etcd 3.6+'s variables for the plain names (no other test reads these two); a flag
        // still wins over a variable.
        std::env::set_var("ETCD_COMPACTION_BATCH_LIMIT", "30");
        std::env::set_var("ETCD_COMPACTION_SLEEP_INTERVAL", "2ms");
        let c = parse(&[]).unwrap();
        let flagged = parse(&["--experimental-compaction-batch-limit=40"]).unwrap();
        std::env::remove_var("ETCD_COMPACTION_BATCH_LIMIT");
        std::env::remove_var("ETCD_COMPACTION_SLEEP_INTERVAL");
        assert_eq!(c.compaction_batch_limit, 30);
        assert_eq!(c.compaction_sleep_interval, Duration::from_millis(2));
        assert_eq!(flagged.compaction_batch_limit, 40);
    }

    #[test]
    fn config_file_uses_etcd_keys() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.yaml");
        std::fs::write(&p, "name: m1\ndata-dir: /tmp/x\nmax-txn-ops: 7\nmax-concurrent-streams: 300\ninitial-cluster: m1=http://localhost:2380\n").unwrap();
        let c = parse(&["--config-file", p.to_str().unwrap()]).unwrap();
        assert_eq!((c.name.as_str(), c.max_txn_ops), ("m1", 7));
        assert_eq!(c.max_concurrent_streams, 300);
        // etcd ignores a key it does not know; Ballast warns about it.
        std::fs::write(&p, "nme: typo\n").unwrap();
        let c = parse(&["--config-file", p.to_str().unwrap()]).unwrap();
        assert_eq!(
            c.warnings,
            vec![r#"unknown config key "nme"; ignored, as etcd ignores it"#.to_string()]
        );
    }

    /// Durations in a config file are Go's nanoseconds: kept exact, and a keepalive interval
    /// of 0 turns the pings off as the flag's 0 does.
    #[test]
    fn config_file_durations_are_nanoseconds() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("etcd.conf.yml");
        std::fs::write(
            &p,
            "grpc-keepalive-interval: 0\ngrpc-keepalive-timeout: 3000000000\n\
             experimental-warning-apply-duration: 500000\n",
        )
        .unwrap();
        let c = parse(&["--config-file", p.to_str().unwrap()]).unwrap();
        assert_eq!(c.grpc_keepalive_interval, None);
        assert_eq!(c.grpc_keepalive_timeout, Duration::from_secs(3));
        assert_eq!(c.warning_apply_duration, Duration::from_micros(500));
    }

    /// A config file laid out as etcd's sample is: every key etcd 3.4 knows, TLS in the
    /// `*-transport-security` sections, empty values left out. It starts Ballast, the TLS
    /// settings apply, and what Ballast does not use is named in warnings.
    #[test]
    fn an_etcd_style_config_file_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("etcd.conf.yml");
        let yaml = r#"name: 'default'
data-dir:
wal-dir:
snapshot-count: 10000
heartbeat-interval: 100
election-timeout: 1000
quota-backend-bytes: 0
listen-peer-urls: https://localhost:2380
listen-client-urls: https://localhost:2379
max-snapshots: 5
max-wals: 5
cors:
initial-advertise-peer-urls: https://localhost:2380
advertise-client-urls: https://localhost:2379
discovery:
discovery-fallback: 'proxy'
discovery-proxy:
discovery-srv:
initial-cluster: default=https://localhost:2380
initial-cluster-token: 'etcd-cluster'
initial-cluster-state: 'new'
strict-reconfig-check: false
enable-v2: true
enable-pprof: true
proxy: 'off'
proxy-failure-wait: 5000
proxy-refresh-interval: 30000
proxy-dial-timeout: 1000
proxy-write-timeout: 5000
proxy-read-timeout: 0
client-transport-security:
  cert-file: /c/server.crt
  key-file: /c/server.key
  client-cert-auth: true
  trusted-ca-file: /c/ca.crt
  auto-tls: false
peer-transport-security:
  cert-file: /c/peer.crt
  key-file: /c/peer.key
  client-cert-auth: true
  trusted-ca-file: /c/ca.crt
  auto-tls: false
  allowed-cn: member
self-signed-cert-validity: 1
log-level: debug
logger: zap
log-outputs: [stderr]
force-new-cluster: false
auto-compaction-mode: periodic
auto-compaction-retention: "1"
"#;
        std::fs::write(&p, yaml).unwrap();
        let c = parse(&["--config-file", p.to_str().unwrap()]).unwrap();
        let client = c.client_tls.as_ref().expect("client TLS from the section");
        assert_eq!(client.cert, PathBuf::from("/c/server.crt"));
        assert!(client.client_cert_auth);
        let peer = c.peer_tls.as_ref().expect("peer TLS from the section");
        assert_eq!(peer.key, PathBuf::from("/c/peer.key"));
        assert_eq!(
            c.peer_allowed,
            ballast_net::tls::Allowed::Cns(vec!["member".into()])
        );
        assert_eq!(c.snapshot_count, 10000);
        assert!(!c.strict_reconfig_check);
        assert_eq!((c.max_snapshots, c.max_wals, c.max_learners), (5, 5, 1));
        for key in ["enable-v2", "proxy"] {
            assert!(
                c.warnings
                    .iter()
                    .any(|w| w.contains(&format!("{key:?} has no effect"))),
                "{key}: {:?}",
                c.warnings
            );
        }
        // Empty values (`cors:`) warn about nothing.
        assert!(
            !c.warnings.iter().any(|w| w.contains("cors")),
            "{:?}",
            c.warnings
        );
    }

    /// Every etcd 3.4/3.7 flag Ballast does not act on is accepted, named in a warning, in
    /// Go's spellings (`--flag`, `--flag=false`, `--flag value`, `-flag`); 3.6's plain names
    /// reach the flags they renamed; what ignoring would make unsafe is refused.
    #[test]
    fn etcds_other_flags_are_accepted_with_a_warning() {
        let c = parse(&[
            "--strict-reconfig-check=false",
            "--enable-pprof",
            "--max-snapshots",
            "3",
            "-max-wals=2",
            "--pre-vote=false",
            "--proxy",
            "off",
            "--log-format",
            "console",
            "--snapshot-catchup-entries",
            "7",
            "--cors",
            "*",
        ])
        .unwrap();
        assert_eq!(c.snapshot_catchup_entries, 7);
        assert!(!c.strict_reconfig_check);
        assert_eq!((c.max_snapshots, c.max_wals), (3, 2));
        assert_eq!(
            parse(&["--debug"]).unwrap().log_level,
            tracing::Level::DEBUG
        );
        assert_eq!(
            parse(&["--debug=false", "--log-level=warn"])
                .unwrap()
                .log_level,
            tracing::Level::WARN
        );
        assert_eq!(simple_duration("2h0m0s"), Some(Duration::from_secs(7200)));
        assert_eq!(simple_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(simple_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(simple_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(simple_duration("0"), Some(Duration::ZERO));
        for bad in ["", "5", "5x", "s", "-1s", "1.2.3s"] {
            assert_eq!(simple_duration(bad), None, "{bad}");
        }
        let k = parse(&[
            "--grpc-keepalive-interval=1m30s",
            "--grpc-keepalive-timeout",
            "3s",
        ])
        .unwrap();
        assert_eq!(
            (k.grpc_keepalive_interval, k.grpc_keepalive_timeout),
            (Some(Duration::from_secs(90)), Duration::from_secs(3))
        );
        let off = parse(&["--grpc-keepalive-interval=0", "--grpc-keepalive-timeout=0"]).unwrap();
        assert_eq!(
            (off.grpc_keepalive_interval, off.grpc_keepalive_timeout),
            (None, Duration::from_secs(20))
        );
        let g = parse(&[
            "--enable-grpc-gateway=false",
            "--warning-apply-duration=5ms",
        ])
        .unwrap();
        assert!(!g.enable_grpc_gateway);
        assert_eq!(g.warning_apply_duration, Duration::from_millis(5));
        assert!(
            c.warnings
                .contains(&"flag --enable-pprof has no effect in Ballast; ignored".to_string()),
            "{:?}",
            c.warnings
        );
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("always uses pre-vote")));
        assert!(parse(&["--force-new-cluster=false"]).is_ok());
        for refused in [
            &["--force-new-cluster"][..],
            &["--host-whitelist", "example.com"],
            &["--cors", "http://example.com"],
        ] {
            let e = parse(refused).expect_err("refused").to_string();
            assert!(e.contains(refused[0]), "{e}");
        }
        // --feature-gates as etcd 3.7 reads it; InitialCorruptCheck is Ballast's to follow.
        let c = parse(&["--feature-gates=InitialCorruptCheck=false,LeaseCheckpoint=true"]).unwrap();
        assert!(!c.initial_corrupt_check);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = parse(&["--feature-gates=StopGRPCServiceOnDefrag=true"]).unwrap();
        assert!(c.warnings[0].contains("StopGRPCServiceOnDefrag=true has no effect"));
        for (gates, msg) in [
            ("Foo=true", "unrecognized feature gate: Foo"),
            (
                "InitialCorruptCheck",
                "missing bool value for InitialCorruptCheck",
            ),
            (
                "InitialCorruptCheck=maybe",
                r#"invalid value of InitialCorruptCheck=maybe, err: strconv.ParseBool: parsing "maybe": invalid syntax"#,
            ),
        ] {
            let e = parse(&[&format!("--feature-gates={gates}")])
                .expect_err(gates)
                .to_string();
            assert!(e.contains(msg), "{e}");
        }
        // etcd 3.7's lists; names and CNs exclude each other, in etcd's words.
        let c = parse(&["--peer-cert-allowed-hostname=a.example,b.example"]).unwrap();
        assert_eq!(
            c.peer_allowed,
            ballast_net::tls::Allowed::Hostnames(vec!["a.example".into(), "b.example".into()])
        );
        let e = parse(&["--peer-cert-allowed-cn=a", "--peer-cert-allowed-hostname=b"])
            .expect_err("exclusive")
            .to_string();
        assert!(
            e.contains(r#"AllowedCNs and AllowedHostnames are mutually exclusive (cns=["a"], hostnames=["b"])"#),
            "{e}"
        );
        // A boolean takes its value only after `=`, as Go's flag package has it.
        assert!(parse(&["--enable-pprof", "false"]).is_err());
        assert!(parse(&["--no-such-flag"]).is_err());
    }

    /// `ballast --help` lists every flag the parser accepts (etcd's, their 3.4 and 3.6 names,
    /// Ballast's own), and every flag it lists is accepted.
    #[test]
    fn help_lists_exactly_the_accepted_flags() {
        use clap::CommandFactory;
        let mut listed: std::collections::BTreeSet<&str> = HELP
            .lines()
            .filter_map(|l| l.strip_prefix("  --"))
            .map(|l| l.split([' ', '=']).next().unwrap_or(l))
            .collect();
        // Described in the usage lines at the top, as etcd does.
        assert!(HELP.contains("\n  ballast --config-file\n"));
        listed.insert("config-file");
        let cmd = with_ignored_flags(Flags::command());
        let mut accepted = std::collections::BTreeSet::new();
        for a in cmd.get_arguments() {
            if a.is_hide_set() {
                continue;
            }
            accepted.extend(a.get_long());
            accepted.extend(a.get_all_aliases().into_iter().flatten());
        }
        let unlisted: Vec<_> = accepted.difference(&listed).collect();
        assert!(
            unlisted.is_empty(),
            "accepted but not in --help: {unlisted:?}"
        );
        let unknown: Vec<_> = listed.difference(&accepted).collect();
        assert!(unknown.is_empty(), "in --help but refused: {unknown:?}");
    }

    /// `--cipher-suites` takes every name Go's TLS knows (TLS 1.3's, the ChaCha20 spellings and
    /// the suites rustls leaves out included) and refuses others in etcd's words, with or
    /// without TLS listeners, as etcd checks them.
    #[test]
    fn cipher_suite_names_are_etcds() {
        let all =
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,\
                   TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_AES_128_GCM_SHA256,\
                   TLS_CHACHA20_POLY1305_SHA256,TLS_RSA_WITH_AES_128_CBC_SHA";
        assert!(parse(&["--cipher-suites", all]).is_ok());
        let e = parse(&["--cipher-suites", "TLS_BOGUS"])
            .expect_err("unknown suite")
            .to_string();
        assert!(
            e.contains(r#"unexpected TLS cipher suite "TLS_BOGUS""#),
            "{e}"
        );
    }

    /// `--log-format console` gives text logs under zap, as etcd 3.5+; other values are refused
    /// in etcd's words.
    #[test]
    fn log_format_is_etcds() {
        assert_eq!(parse(&[]).unwrap().log_format, LogFormat::Json);
        assert_eq!(
            parse(&["--log-format", "console"]).unwrap().log_format,
            LogFormat::Text
        );
        let e = parse(&["--log-format", "xml"])
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("unknown log format: xml, supported values json, console"),
            "{e}"
        );
    }
}
