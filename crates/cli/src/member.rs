//! `member list|add|remove|update|promote` and `move-leader`, printed as etcdctl prints them.

use std::time::Duration;

use ballast_api::etcdserverpb::{
    cluster_client::ClusterClient, maintenance_client::MaintenanceClient, Member, MemberAddRequest,
    MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest,
    MoveLeaderRequest, ResponseHeader, StatusRequest,
};
use clap::Subcommand;
use serde_json::{Map, Value};

use crate::output::{header_json, table, Format, Printer};
use crate::{call, connect, connect_any, Cli, Failure};

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// Lists all members in the cluster
    List {
        /// Linearizable(l) or Serializable(s)
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// Adds a member into the cluster
    Add {
        #[arg(
            long = "peer-urls",
            default_value = "",
            help = "comma separated peer URLs for the new member."
        )]
        peer_urls: String,
        /// indicates if the new member is raft learner
        #[arg(long)]
        learner: bool,
        args: Vec<String>,
    },
    /// Removes a member from the cluster
    Remove { args: Vec<String> },
    /// Updates a member in the cluster
    Update {
        #[arg(
            long = "peer-urls",
            default_value = "",
            help = "comma separated peer URLs for the updated member."
        )]
        peer_urls: String,
        args: Vec<String>,
    },
    /// Promotes a non-voting member in the cluster
    Promote { args: Vec<String> },
}

/// A member ID argument, parsed and rejected as etcdctl does.
fn member_id(args: &[String]) -> Result<u64, Failure> {
    let [arg] = args else {
        return Err(Failure::BadArgs("member ID is not provided".into()));
    };
    u64::from_str_radix(arg, 16).map_err(|_| {
        Failure::BadArgs(format!(
            "bad member ID arg (strconv.ParseUint: parsing {arg:?}: invalid syntax), expecting ID in Hex"
        ))
    })
}

/// etcd's `types.NewURLs` checks on `--peer-urls`.
fn peer_urls(s: &str) -> Result<Vec<String>, Failure> {
    if s.is_empty() {
        return Err(Failure::BadArgs("member peer urls not provided".into()));
    }
    let mut urls = Vec::new();
    for u in s.split(',') {
        let Some((scheme, rest)) = u.split_once("://") else {
            return Err(Failure::Other(format!(
                "URL scheme must be http, https, unix, or unixs: {u}"
            )));
        };
        if !["http", "https", "unix", "unixs"].contains(&scheme) {
            return Err(Failure::Other(format!(
                "URL scheme must be http, https, unix, or unixs: {u}"
            )));
        }
        let host = rest.split('/').next().unwrap_or("");
        if !host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !p.is_empty())
        {
            return Err(Failure::Other(format!(
                "URL address does not have the form \"host:port\": {u}"
            )));
        }
        urls.push(u.to_string());
    }
    urls.sort();
    Ok(urls)
}

fn member_json(m: &Member) -> Value {
    let mut o = Map::new();
    if m.id != 0 {
        o.insert("ID".into(), m.id.into());
    }
    if !m.name.is_empty() {
        o.insert("name".into(), m.name.clone().into());
    }
    if !m.peer_ur_ls.is_empty() {
        o.insert("peerURLs".into(), m.peer_ur_ls.clone().into());
    }
    if !m.client_ur_ls.is_empty() {
        o.insert("clientURLs".into(), m.client_ur_ls.clone().into());
    }
    if m.is_learner {
        o.insert("isLearner".into(), true.into());
    }
    Value::Object(o)
}

fn response_json(h: &Option<ResponseHeader>, member: Option<&Member>, members: &[Member]) -> Value {
    let mut o = Map::new();
    if let Some(h) = header_json(h) {
        o.insert("header".into(), h);
    }
    if let Some(m) = member {
        o.insert("member".into(), member_json(m));
    }
    if !members.is_empty() {
        o.insert("members".into(), members.iter().map(member_json).collect());
    }
    Value::Object(o)
}

fn status_word(m: &Member) -> &'static str {
    if m.name.is_empty() {
        "unstarted"
    } else {
        "started"
    }
}

fn print_list(p: &Printer, h: &Option<ResponseHeader>, members: &[Member]) {
    match p.format {
        Format::Json => println!("{}", response_json(h, None, members)),
        Format::Fields => {
            p.header_fields(h);
            for m in members {
                println!("\"ID\" : {}", m.id);
                println!("\"Name\" : {:?}", m.name);
                for u in &m.peer_ur_ls {
                    println!("\"PeerURL\" : {u:?}");
                }
                for u in &m.client_ur_ls {
                    println!("\"ClientURL\" : {u:?}");
                }
                println!("\"IsLearner\" : {}", m.is_learner);
                println!();
            }
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| {
                    vec![
                        format!("{:x}", m.id),
                        status_word(m).into(),
                        m.name.clone(),
                        m.peer_ur_ls.join(","),
                        m.client_ur_ls.join(","),
                        m.is_learner.to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "STATUS",
                    "NAME",
                    "PEER ADDRS",
                    "CLIENT ADDRS",
                    "IS LEARNER",
                ],
                &rows,
            );
        }
        Format::Simple => {
            for m in members {
                println!(
                    "{:x}, {}, {}, {}, {}, {}",
                    m.id,
                    status_word(m),
                    m.name,
                    m.peer_ur_ls.join(","),
                    m.client_ur_ls.join(","),
                    m.is_learner
                );
            }
        }
    }
}

/// etcdctl prints a change, or (after making it) reports the format as unsupported.
fn print_change(
    p: &Printer,
    h: &Option<ResponseHeader>,
    member: Option<&Member>,
    members: &[Member],
    line: String,
) -> Result<(), Failure> {
    match p.format {
        Format::Json => println!("{}", response_json(h, member, members)),
        Format::Simple => println!("{line}"),
        Format::Table | Format::Fields => return Err(p.unsupported()),
    }
    Ok(())
}

pub async fn run(
    cli: &Cli,
    p: &Printer,
    timeout: Duration,
    cmd: &MemberCmd,
) -> Result<(), Failure> {
    // Arguments are checked before dialling, as etcdctl does.
    match cmd {
        MemberCmd::Add {
            peer_urls: urls,
            args,
            ..
        } => {
            if args.len() != 1 {
                return Err(Failure::BadArgs("member name not provided".into()));
            }
            peer_urls(urls)?;
        }
        MemberCmd::Update {
            peer_urls: urls,
            args,
        } => {
            member_id(args)?;
            peer_urls(urls)?;
        }
        MemberCmd::Remove { args } | MemberCmd::Promote { args } => {
            member_id(args)?;
        }
        MemberCmd::List { consistency } => {
            if consistency != "l" && consistency != "s" {
                return Err(Failure::Exit(
                    crate::EXIT_BAD_FEATURE,
                    format!("unknown consistency flag {consistency:?}"),
                ));
            }
        }
    }
    let mut c = crate::limited!(ClusterClient::new(connect_any(cli).await?));
    match cmd {
        MemberCmd::List { consistency } => {
            let req = MemberListRequest {
                linearizable: consistency == "l",
            };
            let r = call(timeout, c.member_list(req)).await?.into_inner();
            print_list(p, &r.header, &r.members);
            Ok(())
        }
        MemberCmd::Add {
            peer_urls: urls,
            learner,
            args,
        } => {
            let urls = peer_urls(urls)?;
            let r = call(
                timeout,
                c.member_add(MemberAddRequest {
                    peer_ur_ls: urls.clone(),
                    is_learner: *learner,
                }),
            )
            .await?
            .into_inner();
            let m = r.member.clone().unwrap_or_default();
            let cluster = r.header.map(|h| h.cluster_id).unwrap_or(0);
            print_change(
                p,
                &r.header,
                Some(&m),
                &r.members,
                // etcdctl 3.5+ names a learner as such.
                format!(
                    "Member {:16x} added {}to cluster {cluster:16x}",
                    m.id,
                    if m.is_learner { "as learner " } else { "" }
                ),
            )?;
            if p.format == Format::Simple {
                let name = &args[0];
                let conf: Vec<String> = r
                    .members
                    .iter()
                    .flat_map(|x| {
                        let n = if x.id == m.id { name } else { &x.name };
                        x.peer_ur_ls.iter().map(move |u| format!("{n}={u}"))
                    })
                    .collect();
                println!();
                println!("ETCD_NAME={name:?}");
                println!("ETCD_INITIAL_CLUSTER={:?}", conf.join(","));
                println!("ETCD_INITIAL_ADVERTISE_PEER_URLS={:?}", urls.join(","));
                println!("ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
            }
            Ok(())
        }
        MemberCmd::Remove { args } => {
            let id = member_id(args)?;
            let r = call(timeout, c.member_remove(MemberRemoveRequest { id }))
                .await?
                .into_inner();
            let cluster = r.header.map(|h| h.cluster_id).unwrap_or(0);
            let line = format!("Member {id:16x} removed from cluster {cluster:16x}");
            print_change(p, &r.header, None, &r.members, line)
        }
        MemberCmd::Update {
            peer_urls: urls,
            args,
        } => {
            let id = member_id(args)?;
            let req = MemberUpdateRequest {
                id,
                peer_ur_ls: peer_urls(urls)?,
            };
            let r = call(timeout, c.member_update(req)).await?.into_inner();
            let cluster = r.header.map(|h| h.cluster_id).unwrap_or(0);
            let line = format!("Member {id:16x} updated in cluster {cluster:16x}");
            print_change(p, &r.header, None, &r.members, line)
        }
        MemberCmd::Promote { args } => {
            let id = member_id(args)?;
            let r = call(timeout, c.member_promote(MemberPromoteRequest { id }))
                .await?
                .into_inner();
            let cluster = r.header.map(|h| h.cluster_id).unwrap_or(0);
            let line = format!("Member {id:16x} promoted in cluster {cluster:16x}");
            print_change(p, &r.header, None, &r.members, line)
        }
    }
}

/// Client URLs of every member, for `--cluster`.
pub async fn cluster_endpoints(cli: &Cli, timeout: Duration) -> Result<Vec<String>, Failure> {
    let mut c = crate::limited!(ClusterClient::new(connect_any(cli).await?));
    let r = call(timeout, c.member_list(MemberListRequest::default()))
        .await?
        .into_inner();
    Ok(r.members.into_iter().flat_map(|m| m.client_ur_ls).collect())
}

/// `move-leader`: finds the leader among the endpoints and asks it to hand over.
pub async fn move_leader(
    cli: &Cli,
    p: &Printer,
    timeout: Duration,
    args: &[String],
) -> Result<(), Failure> {
    let [arg] = args else {
        return Err(Failure::BadArgs(
            "move-leader command needs 1 argument".into(),
        ));
    };
    let target = u64::from_str_radix(arg, 16).map_err(|_| {
        Failure::BadArgs(format!(
            "strconv.ParseUint: parsing {arg:?}: invalid syntax"
        ))
    })?;
    for ep in &cli.endpoints {
        let ch = connect(cli, ep).await?;
        let mut m = crate::limited!(MaintenanceClient::new(ch));
        let st = call(timeout, m.status(StatusRequest {}))
            .await?
            .into_inner();
        let me = st.header.map(|h| h.member_id).unwrap_or(0);
        if me != st.leader {
            continue;
        }
        let r = call(
            timeout,
            m.move_leader(MoveLeaderRequest { target_id: target }),
        )
        .await?
        .into_inner();
        match p.format {
            Format::Json => {
                let mut o = Map::new();
                if let Some(h) = header_json(&r.header) {
                    o.insert("header".into(), h);
                }
                println!("{}", Value::Object(o));
            }
            _ => println!("Leadership transferred from {me:x} to {target:x}"),
        }
        return Ok(());
    }
    Err(Failure::BadArgs(format!(
        "no leader endpoint given at [{}]",
        cli.endpoints.join(" ")
    )))
}
