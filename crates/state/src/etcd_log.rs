//! etcd's raft entries as Ballast's: what a converted etcd member replays from etcd's WAL.
//!
//! A normal entry holds an `etcdserverpb.InternalRaftRequest` (etcd 3.4 also proposes bare v2
//! `etcdserverpb.Request`s to publish member attributes and the cluster version); a
//! configuration change holds a `raftpb.ConfChange` whose context is the member as JSON. Each
//! becomes the Ballast entry that applies the same change: a `RaftRequest` (the same
//! `etcdserverpb` requests, with the header's user and auth revision), or a configuration
//! change whose context is a `MemberChange`. What changes nothing Ballast keeps (reads, the
//! cluster version, downgrades, simple-token logins, which etcd forgets on restart too)
//! becomes an empty entry, so indices stay etcd's.
//!
//! Invariant: entries are untrusted; one that does not decode is an error, never skipped.

use ballast_api::ballast::internal::{
    member_change::Kind, raft_request::Request, MemberChange, RaftRequest,
};
use ballast_api::etcdserverpb::{
    AlarmRequest, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest, CompactionRequest, DeleteRangeRequest, LeaseCheckpointRequest,
    LeaseGrantRequest, LeaseRevokeRequest, Member, PutRequest, TxnRequest,
};
use prost::Message;

use crate::etcd_wal::Entry;

const ENTRY_NORMAL: i32 = 0;
const ENTRY_CONF_CHANGE: i32 = 1;

#[derive(Clone, PartialEq, Message)]
struct RequestHeader {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    username: String,
    #[prost(uint64, tag = "3")]
    auth_revision: u64,
}

/// etcd 3.4's v2 request (only what publishing member attributes uses).
#[derive(Clone, PartialEq, Message)]
struct V2Request {
    #[prost(uint64, optional, tag = "1")]
    id: Option<u64>,
    #[prost(string, optional, tag = "2")]
    method: Option<String>,
    #[prost(string, optional, tag = "3")]
    path: Option<String>,
    #[prost(string, optional, tag = "4")]
    val: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Attributes {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, repeated, tag = "2")]
    client_urls: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct MemberAttrSet {
    #[prost(uint64, tag = "1")]
    member_id: u64,
    #[prost(message, optional, tag = "2")]
    attributes: Option<Attributes>,
}

/// `etcdserverpb.InternalRaftRequest`, the requests that change state; the rest (reads, the
/// cluster version, downgrades, auth reads) are skipped fields and change nothing here.
#[derive(Clone, PartialEq, Message)]
struct InternalRaftRequest {
    #[prost(message, optional, tag = "100")]
    header: Option<RequestHeader>,
    #[prost(message, optional, tag = "2")]
    v2: Option<V2Request>,
    #[prost(message, optional, tag = "4")]
    put: Option<PutRequest>,
    #[prost(message, optional, tag = "5")]
    delete_range: Option<DeleteRangeRequest>,
    #[prost(message, optional, tag = "6")]
    txn: Option<TxnRequest>,
    #[prost(message, optional, tag = "7")]
    compaction: Option<CompactionRequest>,
    #[prost(message, optional, tag = "8")]
    lease_grant: Option<LeaseGrantRequest>,
    #[prost(message, optional, tag = "9")]
    lease_revoke: Option<LeaseRevokeRequest>,
    #[prost(message, optional, tag = "10")]
    alarm: Option<AlarmRequest>,
    #[prost(message, optional, tag = "11")]
    lease_checkpoint: Option<LeaseCheckpointRequest>,
    #[prost(message, optional, tag = "1000")]
    auth_enable: Option<AuthEnableRequest>,
    #[prost(message, optional, tag = "1011")]
    auth_disable: Option<AuthDisableRequest>,
    #[prost(message, optional, tag = "1100")]
    user_add: Option<AuthUserAddRequest>,
    #[prost(message, optional, tag = "1101")]
    user_delete: Option<AuthUserDeleteRequest>,
    #[prost(message, optional, tag = "1103")]
    user_change_password: Option<AuthUserChangePasswordRequest>,
    #[prost(message, optional, tag = "1104")]
    user_grant_role: Option<AuthUserGrantRoleRequest>,
    #[prost(message, optional, tag = "1105")]
    user_revoke_role: Option<AuthUserRevokeRoleRequest>,
    #[prost(message, optional, tag = "1200")]
    role_add: Option<AuthRoleAddRequest>,
    #[prost(message, optional, tag = "1201")]
    role_delete: Option<AuthRoleDeleteRequest>,
    #[prost(message, optional, tag = "1203")]
    role_grant_permission: Option<AuthRoleGrantPermissionRequest>,
    #[prost(message, optional, tag = "1204")]
    role_revoke_permission: Option<AuthRoleRevokePermissionRequest>,
    #[prost(message, optional, tag = "1301")]
    member_attr_set: Option<MemberAttrSet>,
}

/// `raftpb.ConfChange`. Types: 0 add, 1 remove, 2 update, 3 add learner.
#[derive(Clone, PartialEq, Message)]
struct ConfChange {
    #[prost(uint64, optional, tag = "1")]
    id: Option<u64>,
    #[prost(int32, optional, tag = "2")]
    kind: Option<i32>,
    #[prost(uint64, optional, tag = "3")]
    node_id: Option<u64>,
    #[prost(bytes = "vec", optional, tag = "4")]
    context: Option<Vec<u8>>,
}

/// etcd's member as its configuration changes carry it (`ConfigChangeContext`: the member's
/// fields, and whether an add is a promotion).
#[derive(serde::Deserialize)]
struct MemberJson {
    id: u64,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(default)]
    name: String,
    #[serde(rename = "clientURLs", default)]
    client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
    #[serde(rename = "isPromote", default)]
    is_promote: bool,
}

impl From<MemberJson> for Member {
    fn from(m: MemberJson) -> Member {
        Member {
            id: m.id,
            name: m.name,
            peer_ur_ls: m.peer_urls,
            client_ur_ls: m.client_urls,
            is_learner: m.is_learner,
        }
    }
}

/// Parses one member record of etcd's `members` bucket (or a configuration change's context).
pub fn member_from_json(json: &[u8]) -> Result<Member, EtcdLogError> {
    let m: MemberJson =
        serde_json::from_slice(json).map_err(|e| EtcdLogError::Member(e.to_string()))?;
    Ok(m.into())
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdLogError {
    #[error("etcd entry {index} does not decode: {reason}")]
    Decode { index: u64, reason: String },
    #[error("etcd entry {index} is of a kind Ballast does not read ({kind})")]
    Unsupported { index: u64, kind: String },
    #[error("etcd member record does not parse: {0}")]
    Member(String),
    #[error("etcd entry {index}: cannot hash its password: {reason}")]
    Hash { index: u64, reason: String },
}

/// A raft configuration change, as Ballast's raft takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfChangeKind {
    AddVoter,
    AddLearner,
    Remove,
}

/// An etcd entry as Ballast's.
#[derive(Debug, Clone, PartialEq)]
pub enum Converted {
    /// A normal entry's data: an encoded `RaftRequest`, empty when nothing applies.
    Normal(Vec<u8>),
    /// A configuration change and its context (an encoded `RaftRequest`).
    Conf {
        kind: ConfChangeKind,
        node_id: u64,
        context: Vec<u8>,
    },
}

/// What an entry does, before it is encoded.
enum Decoded {
    Nothing,
    Request(RaftRequest),
    Conf(ConfChangeKind, u64, RaftRequest),
}

fn member_change(kind: Kind, member: Member) -> RaftRequest {
    RaftRequest {
        request: Some(Request::MemberChange(MemberChange {
            kind: kind as i32,
            member: Some(member),
        })),
        ..Default::default()
    }
}

fn decode(e: &Entry) -> Result<Decoded, EtcdLogError> {
    let index = e.index();
    let bad = |reason: String| EtcdLogError::Decode { index, reason };
    match e.kind() {
        ENTRY_NORMAL => normal(e.data()).map_err(bad),
        ENTRY_CONF_CHANGE => {
            let cc = ConfChange::decode(e.data()).map_err(|x| bad(x.to_string()))?;
            let node = cc.node_id();
            let ctx = cc.context();
            let parsed = || member_from_json(ctx).map_err(|x| bad(x.to_string()));
            Ok(match cc.kind() {
                0 => {
                    let m: MemberJson =
                        serde_json::from_slice(ctx).map_err(|x| bad(x.to_string()))?;
                    if m.is_promote {
                        let id = m.id;
                        let promote = Member {
                            id,
                            ..Default::default()
                        };
                        Decoded::Conf(
                            ConfChangeKind::AddVoter,
                            node,
                            member_change(Kind::Promote, promote),
                        )
                    } else {
                        let member = Member {
                            is_learner: false,
                            ..m.into()
                        };
                        Decoded::Conf(
                            ConfChangeKind::AddVoter,
                            node,
                            member_change(Kind::Add, member),
                        )
                    }
                }
                1 => {
                    let gone = Member {
                        id: node,
                        ..Default::default()
                    };
                    Decoded::Conf(
                        ConfChangeKind::Remove,
                        node,
                        member_change(Kind::Remove, gone),
                    )
                }
                // Ballast's raft has no update change: new peer URLs are a normal entry.
                2 => Decoded::Request(member_change(Kind::Update, parsed()?)),
                3 => {
                    let member = Member {
                        is_learner: true,
                        ..parsed()?
                    };
                    Decoded::Conf(
                        ConfChangeKind::AddLearner,
                        node,
                        member_change(Kind::Add, member),
                    )
                }
                other => {
                    return Err(EtcdLogError::Unsupported {
                        index,
                        kind: format!("configuration change type {other}"),
                    })
                }
            })
        }
        other => Err(EtcdLogError::Unsupported {
            index,
            kind: format!("entry type {other}"),
        }),
    }
}

/// A normal entry: an `InternalRaftRequest`, or etcd 3.4's bare v2 request when it is not one
/// (as etcd itself tells them apart).
fn normal(data: &[u8]) -> Result<Decoded, String> {
    let r = match InternalRaftRequest::decode(data) {
        Ok(r) => r,
        Err(first) => match V2Request::decode(data) {
            Ok(v2) => return v2_request(&v2),
            Err(_) => return Err(first.to_string()),
        },
    };
    if let Some(v2) = &r.v2 {
        return v2_request(v2);
    }
    let header = r.header.unwrap_or_default();
    let request = if let Some(a) = r.member_attr_set {
        let attrs = a.attributes.unwrap_or_default();
        return Ok(Decoded::Request(member_change(
            Kind::Attr,
            Member {
                id: a.member_id,
                name: attrs.name,
                client_ur_ls: attrs.client_urls,
                ..Default::default()
            },
        )));
    } else if let Some(x) = r.put {
        Request::Put(x)
    } else if let Some(x) = r.delete_range {
        Request::DeleteRange(x)
    } else if let Some(x) = r.txn {
        Request::Txn(x)
    } else if let Some(x) = r.compaction {
        Request::Compaction(x)
    } else if let Some(x) = r.lease_grant {
        Request::LeaseGrant(x)
    } else if let Some(x) = r.lease_revoke {
        Request::LeaseRevoke(x)
    } else if let Some(x) = r.alarm {
        Request::Alarm(x)
    } else if let Some(x) = r.lease_checkpoint {
        Request::LeaseCheckpoint(x)
    } else if let Some(x) = r.auth_enable {
        Request::AuthEnable(x)
    } else if let Some(x) = r.auth_disable {
        Request::AuthDisable(x)
    } else if let Some(x) = r.user_add {
        Request::UserAdd(x)
    } else if let Some(x) = r.user_delete {
        Request::UserDelete(x)
    } else if let Some(x) = r.user_change_password {
        Request::UserChangePassword(x)
    } else if let Some(x) = r.user_grant_role {
        Request::UserGrantRole(x)
    } else if let Some(x) = r.user_revoke_role {
        Request::UserRevokeRole(x)
    } else if let Some(x) = r.role_add {
        Request::RoleAdd(x)
    } else if let Some(x) = r.role_delete {
        Request::RoleDelete(x)
    } else if let Some(x) = r.role_grant_permission {
        Request::RoleGrantPermission(x)
    } else if let Some(x) = r.role_revoke_permission {
        Request::RoleRevokePermission(x)
    } else {
        return Ok(Decoded::Nothing);
    };
    Ok(Decoded::Request(RaftRequest {
        id: 0,
        request: Some(request),
        username: header.username,
        auth_revision: header.auth_revision,
    }))
}

/// etcd 3.4's v2 requests: a member publishing its name and client URLs is kept; the rest
/// (the cluster version, v2 keys) Ballast does not serve.
fn v2_request(v2: &V2Request) -> Result<Decoded, String> {
    let path = v2.path.as_deref().unwrap_or("");
    let attrs = path
        .strip_prefix("/0/members/")
        .and_then(|p| p.strip_suffix("/attributes"));
    match (v2.method.as_deref(), attrs) {
        (Some("PUT"), Some(id)) => {
            let id = u64::from_str_radix(id, 16).map_err(|e| format!("member id {id}: {e}"))?;
            #[derive(serde::Deserialize)]
            struct Attrs {
                #[serde(default)]
                name: String,
                #[serde(rename = "clientURLs", default)]
                client_urls: Vec<String>,
            }
            let a: Attrs = serde_json::from_str(v2.val.as_deref().unwrap_or(""))
                .map_err(|e| format!("member attributes: {e}"))?;
            Ok(Decoded::Request(member_change(
                Kind::Attr,
                Member {
                    id,
                    name: a.name,
                    client_ur_ls: a.client_urls,
                    ..Default::default()
                },
            )))
        }
        _ => Ok(Decoded::Nothing),
    }
}

/// The membership change an entry makes, if any (for rebuilding membership from a log).
pub fn membership_change(e: &Entry) -> Result<Option<MemberChange>, EtcdLogError> {
    let request = match decode(e)? {
        Decoded::Nothing => return Ok(None),
        Decoded::Request(r) | Decoded::Conf(_, _, r) => r,
    };
    Ok(match request.request {
        Some(Request::MemberChange(c)) => Some(c),
        _ => None,
    })
}

/// Converts one etcd entry. etcd 3.4 proposed new passwords in clear text (3.5 hashes them
/// first, as Ballast does): `hash` makes the base64 bcrypt hash Ballast's entries carry.
pub fn convert(
    e: &Entry,
    hash: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Converted, EtcdLogError> {
    let index = e.index();
    let mut hash = |p: &str| hash(p).map_err(|reason| EtcdLogError::Hash { index, reason });
    Ok(match decode(e)? {
        Decoded::Nothing => Converted::Normal(Vec::new()),
        Decoded::Request(mut r) => {
            match &mut r.request {
                Some(Request::UserAdd(a)) if a.hashed_password.is_empty() => {
                    if !a.password.is_empty() {
                        a.hashed_password = hash(&a.password)?;
                    }
                    a.password.clear();
                }
                Some(Request::UserChangePassword(c)) if c.hashed_password.is_empty() => {
                    c.hashed_password = hash(&c.password)?;
                    c.password.clear();
                }
                _ => {}
            }
            Converted::Normal(r.encode_to_vec())
        }
        Decoded::Conf(kind, node_id, context) => Converted::Conf {
            kind,
            node_id,
            context: context.encode_to_vec(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, kind: i32, data: Vec<u8>) -> Entry {
        Entry {
            kind: Some(kind),
            term: Some(2),
            index: Some(index),
            data: Some(data),
        }
    }

    fn no_hash(_: &str) -> Result<String, String> {
        unreachable!("no clear-text password here")
    }

    fn request(c: Converted) -> RaftRequest {
        match c {
            Converted::Normal(d) => RaftRequest::decode(d.as_slice()).expect("request"),
            other => panic!("not a normal entry: {other:?}"),
        }
    }

    #[test]
    fn puts_keep_their_request_and_header() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 7,
            ..Default::default()
        };
        let r = InternalRaftRequest {
            header: Some(RequestHeader {
                id: 99,
                username: "alice".into(),
                auth_revision: 4,
            }),
            put: Some(put.clone()),
            ..Default::default()
        };
        let got = request(convert(&entry(5, 0, r.encode_to_vec()), &mut no_hash).expect("ok"));
        assert_eq!(got.request, Some(Request::Put(put)));
        assert_eq!((got.username.as_str(), got.auth_revision), ("alice", 4));
    }

    #[test]
    fn etcd_34_v2_attributes_and_34_clear_passwords_convert() {
        let v2 = V2Request {
            id: Some(1),
            method: Some("PUT".into()),
            path: Some("/0/members/886b03c4ae679a15/attributes".into()),
            val: Some(r#"{"name":"default","clientURLs":["http://127.0.0.1:2379"]}"#.into()),
        };
        let got = request(convert(&entry(3, 0, v2.encode_to_vec()), &mut no_hash).expect("ok"));
        let Some(Request::MemberChange(c)) = got.request else {
            panic!("not a member change: {got:?}")
        };
        let m = c.member.expect("member");
        assert_eq!(c.kind, Kind::Attr as i32);
        assert_eq!(
            (m.id, m.name.as_str(), m.client_ur_ls),
            (
                0x886b03c4ae679a15,
                "default",
                vec!["http://127.0.0.1:2379".into()]
            )
        );
        let version = V2Request {
            method: Some("PUT".into()),
            path: Some("/0/version".into()),
            val: Some("3.4.0".into()),
            ..Default::default()
        };
        let got = convert(&entry(4, 0, version.encode_to_vec()), &mut no_hash).expect("ok");
        assert_eq!(got, Converted::Normal(vec![]));

        let add = InternalRaftRequest {
            user_add: Some(AuthUserAddRequest {
                name: "u".into(),
                password: "pw".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut hashed = |p: &str| Ok(format!("hash-of-{p}"));
        let got = request(convert(&entry(6, 0, add.encode_to_vec()), &mut hashed).expect("ok"));
        let Some(Request::UserAdd(a)) = got.request else {
            panic!("not a user add")
        };
        assert_eq!(
            (a.password.as_str(), a.hashed_password.as_str()),
            ("", "hash-of-pw")
        );
    }

    #[test]
    fn configuration_changes_carry_ballasts_member_changes() {
        let cc = |kind: i32, ctx: &str| ConfChange {
            id: Some(1),
            kind: Some(kind),
            node_id: Some(5),
            context: Some(ctx.as_bytes().to_vec()),
        };
        let add = cc(3, r#"{"id":5,"peerURLs":["http://a:2380"],"name":"m5"}"#);
        let Converted::Conf {
            kind,
            node_id,
            context,
        } = convert(&entry(9, 1, add.encode_to_vec()), &mut no_hash).expect("ok")
        else {
            panic!("not a configuration change")
        };
        assert_eq!((kind, node_id), (ConfChangeKind::AddLearner, 5));
        let r = RaftRequest::decode(context.as_slice()).expect("context");
        let Some(Request::MemberChange(c)) = r.request else {
            panic!("no member change")
        };
        let m = c.member.expect("member");
        assert!(m.is_learner && m.peer_ur_ls == vec!["http://a:2380".to_string()]);

        let promote = cc(0, r#"{"id":5,"peerURLs":[],"isPromote":true}"#);
        let got = membership_change(&entry(10, 1, promote.encode_to_vec())).expect("ok");
        assert_eq!(got.map(|c| c.kind), Some(Kind::Promote as i32));
        let remove = cc(1, "");
        let got = membership_change(&entry(11, 1, remove.encode_to_vec())).expect("ok");
        assert_eq!(got.and_then(|c| c.member).map(|m| m.id), Some(5));
        let update = cc(2, r#"{"id":5,"peerURLs":["http://b:2380"]}"#);
        let got = convert(&entry(12, 1, update.encode_to_vec()), &mut no_hash).expect("ok");
        assert!(matches!(got, Converted::Normal(_)), "{got:?}");
    }

    #[test]
    fn undecodable_entries_are_errors() {
        let junk = entry(3, 0, b"/0/junk\xff\xff".to_vec());
        assert!(convert(&junk, &mut no_hash).is_err());
        let v2 = entry(3, 2, vec![]);
        assert!(matches!(
            convert(&v2, &mut no_hash),
            Err(EtcdLogError::Unsupported { .. })
        ));
        let bad_json = ConfChange {
            kind: Some(0),
            node_id: Some(1),
            context: Some(b"{".to_vec()),
            ..Default::default()
        };
        assert!(convert(&entry(4, 1, bad_json.encode_to_vec()), &mut no_hash).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_convert_or_fail_without_panic(kind in 0i32..4, data in proptest::collection::vec(0u8..=255, 0..200)) {
            let _ = convert(&entry(1, kind, data), &mut |p: &str| Ok(p.to_string()));
        }
    }
}
