//! `lease grant|revoke|timetolive|list|keep-alive`, printed as etcdctl prints them.
//!
//! etcdctl's JSON for leases is its Go client's structs: the response header's fields sit at
//! the top level (`cluster_id`, ...), then the lease fields with the client's own names.

use std::time::Duration;

use ballast_api::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, ResponseHeader,
};
use base64::Engine;
use clap::Subcommand;
use serde_json::{Map, Value};
use tokio_stream::StreamExt;

use crate::output::{header_json, Format, Printer};
use crate::{call, connect_any, Cli, Failure};

/// etcdctl's exit code when a keep-alive cannot reach the cluster.
pub const EXIT_BAD_CONNECTION: u8 = 2;

#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// Creates leases
    Grant { args: Vec<String> },
    /// Revokes leases
    Revoke { args: Vec<String> },
    /// Get lease information
    Timetolive {
        /// Get keys attached to this lease
        #[arg(long)]
        keys: bool,
        args: Vec<String>,
    },
    /// List all active leases
    List,
    /// Keeps leases alive (renew)
    #[command(name = "keep-alive")]
    KeepAlive {
        // etcdctl's text, typo included.
        #[arg(
            long,
            help = "Resets the keep-alive time to its original value and cobrautl.Exits immediately"
        )]
        once: bool,
        args: Vec<String>,
    },
}

fn lease_id(args: &[String], missing: &str) -> Result<i64, Failure> {
    let [arg] = args else {
        return Err(Failure::BadArgs(missing.into()));
    };
    i64::from_str_radix(arg, 16).map_err(|_| {
        Failure::BadArgs(format!(
            "bad lease ID arg (strconv.ParseInt: parsing {arg:?}: invalid syntax), expecting ID in Hex"
        ))
    })
}

/// The Go client's flattened header: the header's fields at the top of the object.
fn flat(h: &Option<ResponseHeader>) -> Map<String, Value> {
    match header_json(h) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

pub async fn run(cli: &Cli, p: &Printer, timeout: Duration, cmd: &LeaseCmd) -> Result<(), Failure> {
    // Arguments first, as etcdctl checks them before dialling.
    let id = match cmd {
        LeaseCmd::Grant { args } => {
            let [ttl] = args.as_slice() else {
                return Err(Failure::BadArgs(
                    "lease grant command needs TTL argument".into(),
                ));
            };
            ttl.parse::<i64>().map_err(|_| {
                Failure::BadArgs(format!(
                    "bad TTL (strconv.ParseInt: parsing {ttl:?}: invalid syntax)"
                ))
            })?
        }
        LeaseCmd::Revoke { args } => lease_id(args, "lease revoke command needs 1 argument")?,
        LeaseCmd::Timetolive { args, .. } => {
            lease_id(args, "lease timetolive command needs lease ID as argument")?
        }
        LeaseCmd::KeepAlive { args, .. } => {
            lease_id(args, "lease keep-alive command needs lease ID as argument")?
        }
        LeaseCmd::List => 0,
    };
    let mut c = crate::limited!(LeaseClient::new(connect_any(cli).await?));
    match cmd {
        LeaseCmd::Grant { .. } => {
            let r = call(timeout, c.lease_grant(LeaseGrantRequest { ttl: id, id: 0 }))
                .await
                .map_err(|f| prefixed(f, "failed to grant lease"))?
                .into_inner();
            match p.format {
                Format::Json => {
                    let mut m = flat(&r.header);
                    m.insert("ID".into(), r.id.into());
                    m.insert("TTL".into(), r.ttl.into());
                    m.insert("Error".into(), r.error.into());
                    println!("{}", Value::Object(m));
                }
                Format::Fields => {
                    p.header_fields(&r.header);
                    println!("\"ID\" : {}", r.id);
                    println!("\"TTL\" : {}", r.ttl);
                }
                Format::Simple => println!("lease {:016x} granted with TTL({}s)", r.id, r.ttl),
                Format::Table => return Err(p.unsupported()),
            }
        }
        LeaseCmd::Revoke { .. } => {
            let r = call(timeout, c.lease_revoke(LeaseRevokeRequest { id }))
                .await
                .map_err(|f| prefixed(f, "failed to revoke lease"))?
                .into_inner();
            match p.format {
                Format::Json => {
                    let mut m = Map::new();
                    if let Some(h) = header_json(&r.header) {
                        m.insert("header".into(), h);
                    }
                    println!("{}", Value::Object(m));
                }
                Format::Fields => p.header_fields(&r.header),
                Format::Simple => println!("lease {id:016x} revoked"),
                Format::Table => return Err(p.unsupported()),
            }
        }
        LeaseCmd::Timetolive { keys, .. } => {
            let req = LeaseTimeToLiveRequest { id, keys: *keys };
            let r = call(timeout, c.lease_time_to_live(req)).await?.into_inner();
            match p.format {
                Format::Json => {
                    let mut m = flat(&r.header);
                    m.insert("id".into(), r.id.into());
                    m.insert("ttl".into(), r.ttl.into());
                    m.insert("granted-ttl".into(), r.granted_ttl.into());
                    let ks: Vec<Value> = r
                        .keys
                        .iter()
                        .map(|k| base64::engine::general_purpose::STANDARD.encode(k).into())
                        .collect();
                    m.insert(
                        "keys".into(),
                        if ks.is_empty() {
                            Value::Null
                        } else {
                            ks.into()
                        },
                    );
                    println!("{}", Value::Object(m));
                }
                Format::Fields => {
                    p.header_fields(&r.header);
                    println!("\"ID\" : {}", r.id);
                    println!("\"TTL\" : {}", r.ttl);
                    println!("\"GrantedTTL\" : {}", r.granted_ttl);
                    for k in &r.keys {
                        println!("\"Key\" : {:?}", String::from_utf8_lossy(k));
                    }
                }
                Format::Simple if r.granted_ttl == 0 && r.ttl == -1 => {
                    println!("lease {id:016x} already expired");
                }
                Format::Simple => {
                    let mut line = format!(
                        "lease {id:016x} granted with TTL({}s), remaining({}s)",
                        r.granted_ttl, r.ttl
                    );
                    if *keys {
                        let ks: Vec<String> = r
                            .keys
                            .iter()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .collect();
                        line.push_str(&format!(", attached keys([{}])", ks.join(" ")));
                    }
                    println!("{line}");
                }
                Format::Table => return Err(p.unsupported()),
            }
        }
        LeaseCmd::List => {
            let r = call(timeout, c.lease_leases(LeaseLeasesRequest {}))
                .await
                .map_err(|f| prefixed(f, "failed to list leases"))?
                .into_inner();
            match p.format {
                Format::Json => {
                    let mut m = flat(&r.header);
                    let ls: Vec<Value> = r
                        .leases
                        .iter()
                        .map(|l| serde_json::json!({ "id": l.id }))
                        .collect();
                    m.insert("leases".into(), ls.into());
                    println!("{}", Value::Object(m));
                }
                Format::Fields => {
                    p.header_fields(&r.header);
                    for l in &r.leases {
                        println!("\"ID\" : {}", l.id);
                    }
                }
                Format::Simple => {
                    println!("found {} leases", r.leases.len());
                    for l in &r.leases {
                        println!("{:016x}", l.id);
                    }
                }
                Format::Table => return Err(p.unsupported()),
            }
        }
        LeaseCmd::KeepAlive { once, .. } => keep_alive(&mut c, p, id, *once, timeout).await?,
    }
    Ok(())
}

fn prefixed(f: Failure, what: &'static str) -> Failure {
    match f {
        Failure::Grpc(s) => Failure::GrpcIn(s, what),
        other => other,
    }
}

fn print_keep_alive(p: &Printer, h: &Option<ResponseHeader>, id: i64, ttl: i64) {
    match p.format {
        Format::Json => {
            let mut m = flat(h);
            m.insert("ID".into(), id.into());
            m.insert("TTL".into(), ttl.into());
            println!("{}", Value::Object(m));
        }
        Format::Fields => {
            p.header_fields(h);
            println!("\"ID\" : {id}");
            println!("\"TTL\" : {ttl}");
        }
        _ => println!("lease {id:016x} keepalived with TTL({ttl})"),
    }
}

/// Renews every third of the TTL, as etcd's client does, until the lease is gone.
async fn keep_alive(
    c: &mut LeaseClient<crate::Conn>,
    p: &Printer,
    id: i64,
    once: bool,
    timeout: Duration,
) -> Result<(), Failure> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _ = tx.send(LeaseKeepAliveRequest { id }).await;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut resps = tokio::time::timeout(timeout, c.lease_keep_alive(stream))
        .await
        .map_err(|_| Failure::Exit(EXIT_BAD_CONNECTION, "context deadline exceeded".into()))?
        .map_err(|s| Failure::Exit(EXIT_BAD_CONNECTION, s.message().to_string()))?
        .into_inner();
    loop {
        let r = match resps.next().await {
            Some(Ok(r)) => r,
            Some(Err(s)) => return Err(Failure::Exit(EXIT_BAD_CONNECTION, s.message().into())),
            None => return Ok(()),
        };
        if r.ttl <= 0 {
            if once {
                return Err(Failure::Exit(
                    EXIT_BAD_CONNECTION,
                    "etcdserver: requested lease not found".into(),
                ));
            }
            println!("lease {id:016x} expired or revoked.");
            return Ok(());
        }
        print_keep_alive(p, &r.header, id, r.ttl);
        if once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs((r.ttl / 3).max(1) as u64)).await;
        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
            return Ok(());
        }
    }
}
