//! `lock` and `elect`: a session lease kept alive in the background, then the Lock or
//! Election service; held until the command ends or a signal arrives, as etcdctl does.

use std::time::Duration;

use ballast_api::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
};
use ballast_api::v3electionpb::{
    election_client::ElectionClient, CampaignRequest, LeaderRequest, ResignRequest,
};
use ballast_api::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use tokio_stream::StreamExt;

use crate::output::Printer;
use crate::{connect_any, Cli, Failure};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct LockArgs {
    /// timeout for session
    #[arg(long, default_value = "10", value_parser = crate::usage::go_i64)]
    ttl: i64,
    args: Vec<String>,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ElectArgs {
    /// observation mode
    #[arg(short = 'l', long)]
    listen: bool,
    /// Session TTL: etcdctl has no flag and uses the client's default, 60 s (kept, unlisted).
    #[arg(long, default_value = "60", value_parser = crate::usage::go_i64, hide = true)]
    ttl: i64,
    args: Vec<String>,
}

/// A lease renewed every third of its TTL until dropped.
struct Session {
    lease: i64,
    keeper: tokio::task::JoinHandle<()>,
}

async fn session(ch: crate::Conn, ttl: i64) -> Result<Session, Failure> {
    let mut c = crate::limited!(LeaseClient::new(ch));
    let lease = c
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .map_err(Failure::Grpc)?
        .into_inner()
        .id;
    let keeper = tokio::spawn(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let Ok(resp) = c
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        else {
            return;
        };
        let mut acks = resp.into_inner();
        loop {
            if tx.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
                return;
            }
            match acks.next().await {
                Some(Ok(a)) if a.ttl > 0 => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_secs((ttl / 3).max(1) as u64)).await;
        }
    });
    Ok(Session { lease, keeper })
}

impl Session {
    async fn close(self, ch: crate::Conn) {
        self.keeper.abort();
        let _ = crate::limited!(LeaseClient::new(ch))
            .lease_revoke(LeaseRevokeRequest { id: self.lease })
            .await;
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub async fn lock(cli: &Cli, a: &LockArgs) -> Result<(), Failure> {
    let Some((name, command)) = a.args.split_first() else {
        return Err(Failure::BadArgs(
            "lock takes a lock name argument and an optional command to execute.".into(),
        ));
    };
    let ch = connect_any(cli).await?;
    let s = session(ch.clone(), a.ttl).await?;
    let req = LockRequest {
        name: name.as_bytes().to_vec(),
        lease: s.lease,
    };
    let mut locker = crate::limited!(LockClient::new(ch.clone()));
    let locked = tokio::select! {
        r = locker.lock(req) => r.map_err(Failure::Grpc)?.into_inner(),
        _ = interrupted() => {
            s.close(ch).await;
            return Ok(());
        }
    };
    let key = String::from_utf8_lossy(&locked.key).into_owned();
    let result = if let Some((prog, args)) = command.split_first() {
        let rev = locked.header.as_ref().map(|h| h.revision).unwrap_or(0);
        let status = tokio::process::Command::new(prog)
            .args(args)
            .env("ETCD_LOCK_KEY", &key)
            .env("ETCD_LOCK_REV", rev.to_string())
            .status()
            .await;
        match status {
            Ok(st) if st.success() => Ok(()),
            Ok(st) => Err(Failure::Other(format!(
                "exit status {}",
                st.code().unwrap_or(1)
            ))),
            Err(e) => Err(Failure::Other(e.to_string())),
        }
    } else {
        // etcdctl prints the key and an empty line, then holds the lock.
        println!("{key}\n");
        interrupted().await;
        Ok(())
    };
    let _ = crate::limited!(LockClient::new(ch.clone()))
        .unlock(UnlockRequest { key: locked.key })
        .await;
    s.close(ch).await;
    result
}

pub async fn elect(cli: &Cli, p: &Printer, a: &ElectArgs) -> Result<(), Failure> {
    let Some(name) = a.args.first() else {
        return Err(Failure::BadArgs(
            "elect takes one election name argument and an optional proposal argument.".into(),
        ));
    };
    if a.args.len() > 2 {
        return Err(Failure::BadArgs(
            "elect takes one election name argument and an optional proposal argument.".into(),
        ));
    }
    let ch = connect_any(cli).await?;
    if a.listen {
        let req = LeaderRequest {
            name: name.as_bytes().to_vec(),
        };
        let mut leaders = crate::limited!(ElectionClient::new(ch))
            .observe(req)
            .await
            .map_err(Failure::Grpc)?
            .into_inner();
        loop {
            tokio::select! {
                r = leaders.next() => match r {
                    Some(Ok(l)) => {
                        if let Some(kv) = &l.kv {
                            p.kv_simple(kv, false);
                        }
                    }
                    Some(Err(s)) => return Err(Failure::Grpc(s)),
                    None => return Err(Failure::Other("observing leader failed".into())),
                },
                _ = interrupted() => return Ok(()),
            }
        }
    }
    let Some(proposal) = a.args.get(1) else {
        return Err(Failure::BadArgs(
            "no proposal argument but -l not set".into(),
        ));
    };
    let s = session(ch.clone(), a.ttl).await?;
    let req = CampaignRequest {
        name: name.as_bytes().to_vec(),
        lease: s.lease,
        value: proposal.as_bytes().to_vec(),
    };
    let mut elections = crate::limited!(ElectionClient::new(ch.clone()));
    let won = tokio::select! {
        r = elections.campaign(req) => r.map_err(Failure::Grpc)?.into_inner(),
        _ = interrupted() => {
            s.close(ch).await;
            return Err(Failure::Other("context canceled".into()));
        }
    };
    if let Some(leader) = &won.leader {
        println!("{}", String::from_utf8_lossy(&leader.key));
        println!("{proposal}");
    }
    interrupted().await;
    let _ = crate::limited!(ElectionClient::new(ch.clone()))
        .resign(ResignRequest { leader: won.leader })
        .await;
    s.close(ch).await;
    Ok(())
}
