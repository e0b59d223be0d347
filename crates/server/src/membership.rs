//! Cluster membership: the Cluster API's changes. (Who the members are at start-up is
//! `member::bootstrap`.)
//!
//! Member records live in the state machine (applied from the log, so every member agrees);
//! raft's own configuration follows from the same log entries. A change is validated here
//! against the applied records, then proposed; ADD, REMOVE and PROMOTE as raft configuration
//! changes, UPDATE as a normal entry.

use std::time::Duration;

use ballast_api::ballast::internal::{member_change::Kind, raft_request, MemberChange};
use ballast_api::etcdserverpb::{Member, MemberListResponse, ResponseHeader};
use ballast_net::ids;
use ballast_raft::ConfKind;
use ballast_state::Applied;
use prost::Message;

use crate::server::{EtcdServer, ServerError};

/// A new member's id, as etcd makes one (see [`ids::added_member_id`]).
fn new_member_id(peer_urls: &[String], token: &str) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ids::added_member_id(peer_urls, token, now)
}

fn valid_urls(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|u| {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"));
            rest.is_some_and(|r| {
                r.rsplit_once(':')
                    // Go's URL parser wants a numeric port, not one in range.
                    .is_some_and(|(h, p)| {
                        !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
                    })
            })
        })
}

fn members_of(a: Applied) -> Result<Vec<Member>, ServerError> {
    match a {
        Applied::Members(m) => Ok(m),
        _ => Err(ServerError::Stopped),
    }
}

fn change(kind: Kind, member: Member) -> raft_request::Request {
    raft_request::Request::MemberChange(MemberChange {
        kind: kind as i32,
        member: Some(member),
    })
}

impl EtcdServer {
    fn find_member(&self, id: u64) -> Result<Member, ServerError> {
        self.mvcc()
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or(ServerError::MemberNotFound)
    }

    fn check_urls_free(&self, urls: &[String], except: u64) -> Result<(), ServerError> {
        if !valid_urls(urls) {
            return Err(ServerError::BadUrls);
        }
        let taken = self
            .mvcc()
            .members()
            .iter()
            .filter(|m| m.id != except)
            .any(|m| m.peer_ur_ls.iter().any(|u| urls.contains(u)));
        if taken {
            return Err(ServerError::PeerUrlExists);
        }
        Ok(())
    }

    /// Adds a voter or a learner; returns it and the members after the change.
    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        learner: bool,
    ) -> Result<(Member, Vec<Member>), ServerError> {
        self.check_urls_free(&peer_urls, 0)?;
        let members = self.mvcc().members();
        if learner && members.iter().filter(|m| m.is_learner).count() >= self.cfg.max_learners {
            return Err(ServerError::TooManyLearners);
        }
        let id = new_member_id(&peer_urls, &self.cfg.initial_cluster_token);
        if members.iter().any(|m| m.id == id) {
            return Err(ServerError::MemberExists);
        }
        // Same URLs re-added within the same second give the removed member's ID back; etcd
        // refuses it (as "member not found") rather than let a removed member's data return.
        if self.mvcc().is_removed(id) {
            return Err(ServerError::MemberNotFound);
        }
        let m = Member {
            id,
            name: String::new(),
            peer_ur_ls: peer_urls,
            client_ur_ls: vec![],
            is_learner: learner,
        };
        if !learner {
            self.may_add_voter(&members).await?;
        }
        let kind = if learner {
            ConfKind::AddLearner
        } else {
            ConfKind::AddVoter
        };
        let applied = self
            .proposer()
            .propose_conf(change(Kind::Add, m.clone()), kind, id)
            .await?;
        Ok((m, members_of(applied)?))
    }

    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>, ServerError> {
        let m = self.find_member(id)?;
        let members = self.mvcc().members();
        let voters = members.iter().filter(|m| !m.is_learner).count();
        if !m.is_learner && voters <= 1 {
            return Err(ServerError::NotEnoughStarted);
        }
        if !m.is_learner {
            self.may_remove_voter(&members, id).await?;
        }
        members_of(
            self.proposer()
                .propose_conf(change(Kind::Remove, m), ConfKind::Remove, id)
                .await?,
        )
    }

    /// etcd's `--strict-reconfig-check` for a new voter: enough started members for the grown
    /// quorum, and (seen from the leader) every voter heard from recently.
    async fn may_add_voter(&self, members: &[Member]) -> Result<(), ServerError> {
        if !self.cfg.strict_reconfig_check {
            return Ok(());
        }
        let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
        let started = voters.iter().filter(|m| !m.name.is_empty()).count();
        let grown = voters.len() + 1;
        // Growing a one-member cluster (restoring data onto a new member) is always allowed.
        if !(started == 1 && grown == 2) && started < grown / 2 + 1 {
            return Err(ServerError::NotEnoughStarted);
        }
        if let Some(active) = self.active_voters(&voters).await {
            if active.iter().any(|(_, up)| !up) {
                return Err(ServerError::Unhealthy);
            }
        }
        Ok(())
    }

    /// etcd's `--strict-reconfig-check` for removing voter `id`: the rest keep enough started
    /// members for their quorum, and removing a reachable voter leaves a reachable quorum.
    async fn may_remove_voter(&self, members: &[Member], id: u64) -> Result<(), ServerError> {
        if !self.cfg.strict_reconfig_check {
            return Ok(());
        }
        let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
        let rest: Vec<&&Member> = voters.iter().filter(|m| m.id != id).collect();
        let started = rest.iter().filter(|m| !m.name.is_empty()).count();
        if started < rest.len() / 2 + 1 {
            return Err(ServerError::NotEnoughStarted);
        }
        let Some(active) = self.active_voters(&voters).await else {
            return Ok(());
        };
        // A member that is down is not part of the active quorum: removing it is safe.
        if id != self.member_id() && active.iter().any(|(m, up)| *m == id && !up) {
            return Ok(());
        }
        let up = active.iter().filter(|(_, up)| *up).count();
        if up.saturating_sub(1) < 1 + (voters.len() - 1) / 2 {
            return Err(ServerError::Unhealthy);
        }
        Ok(())
    }

    /// Which voters the leader heard from within an election timeout; `None` on a follower,
    /// which has no such view (its change is checked for started members only).
    async fn active_voters(&self, voters: &[&Member]) -> Option<Vec<(u64, bool)>> {
        let peers = self.active_peers().await.ok()?;
        Some(
            voters
                .iter()
                .map(|m| (m.id, peers.iter().any(|(id, up)| *id == m.id && *up)))
                .collect(),
        )
    }

    pub async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<Vec<Member>, ServerError> {
        let mut m = self.find_member(id)?;
        self.check_urls_free(&peer_urls, id)?;
        m.peer_ur_ls = peer_urls;
        members_of(
            self.propose(change(Kind::Update, m), &crate::auth::member())
                .await?,
        )
    }

    /// Promotes a learner. Must run on the leader, which alone knows how far the learner is.
    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>, ServerError> {
        let m = self.find_member(id)?;
        if !m.is_learner {
            return Err(ServerError::MemberNotLearner);
        }
        if !self.learner_ready(id).await? {
            return Err(ServerError::LearnerNotReady);
        }
        members_of(
            self.proposer()
                .propose_conf(change(Kind::Promote, m), ConfKind::AddVoter, id)
                .await?,
        )
    }

    /// Publishes this member's name and client URLs through raft until they are applied.
    pub async fn publish_attributes(&self) {
        let mut delay = Duration::from_millis(100);
        loop {
            let Ok(me) = self.find_member(self.member_id()) else {
                // Not applied yet (a joiner catching up) or removed.
                tokio::time::sleep(delay).await;
                continue;
            };
            if me.name == self.cfg.name && me.client_ur_ls == self.cfg.advertise_client_urls {
                tracing::info!(
                    name = %self.cfg.name,
                    client_urls = ?self.cfg.advertise_client_urls,
                    "published local member to cluster through raft"
                );
                return;
            }
            let attr = Member {
                id: me.id,
                name: self.cfg.name.clone(),
                client_ur_ls: self.cfg.advertise_client_urls.clone(),
                ..Default::default()
            };
            if let Err(e) = self
                .propose(change(Kind::Attr, attr), &crate::auth::member())
                .await
            {
                tracing::debug!(error = %e, "publishing member attributes failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }

    /// The answer to a joining member's membership query.
    pub fn membership_answer(&self) -> Vec<u8> {
        MemberListResponse {
            header: Some(ResponseHeader {
                cluster_id: self.cluster_id(),
                member_id: self.member_id(),
                ..Default::default()
            }),
            members: self.mvcc().members(),
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_validation_follows_etcd() {
        assert!(valid_urls(&["http://127.0.0.1:2380".into()]));
        assert!(valid_urls(&["https://a.example:12".into()]));
        assert!(!valid_urls(&[]));
        assert!(!valid_urls(&["127.0.0.1:2380".into()]));
        assert!(!valid_urls(&["http://host".into()]));
    }

    #[test]
    fn added_ids_depend_on_urls() {
        let a = new_member_id(&["http://a:1".into()], "t");
        let b = new_member_id(&["http://b:1".into()], "t");
        assert_ne!(a, b);
    }
}
