//! etcd's auth store: users, roles, their key-range permissions, the enabled flag and the
//! auth revision, applied from the log like the keys and kept in the backend beside them.
//!
//! Invariants: every change that applies bumps `revision` by one (etcd's `commitRevision`),
//! so a credential checked at an older revision is refused as stale; a user's roles stay
//! sorted and unique; a role's permissions stay sorted by key; `merged` always matches the
//! users and roles (it is rebuilt after every change, which are rare).

use std::collections::{BTreeMap, HashMap};

use ballast_api::authpb::{permission::Type as PermType, Permission, Role, User, UserAddOptions};
use ballast_api::ballast::internal::{raft_request::Request, Authenticate};
use ballast_api::etcdserverpb::{
    AuthRoleAddRequest, AuthRoleDeleteRequest, AuthRoleGrantPermissionRequest,
    AuthRoleRevokePermissionRequest, AuthUserAddRequest, AuthUserChangePasswordRequest,
    AuthUserDeleteRequest, AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest, RequestOp,
    TxnRequest,
};
use ballast_storage::backend::WriteTx;
use ballast_storage::BackendError;

use crate::schema::{self, AUTH_ROLE, AUTH_USER};
use prost::Message;

use crate::KvError;

pub(crate) const META_AUTH_ENABLED: &str = "auth_enabled";
pub(crate) const META_AUTH_REVISION: &str = "auth_revision";

const ROOT: &str = "root";

/// Who is asking, as the server resolved it from a token or a client certificate.
/// `revision` 0 means no credentials at all (etcd's empty `AuthInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

/// What an applied auth change means for issued tokens (the server keeps those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthEffect {
    /// Nothing to do for tokens.
    None,
    /// The user's tokens are void (deleted, or the password changed).
    InvalidateUser(String),
    /// Auth was turned off: every token is void.
    Disabled,
    /// Auth was turned on.
    Enabled,
}

/// A set of key intervals `[start, end)`, `end` `None` meaning to the end of the keyspace;
/// sorted, disjoint and never touching (touching ones are merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Intervals(Vec<(Vec<u8>, Option<Vec<u8>>)>);

/// The interval a permission or request names: an empty end is the single key, `"\0"` is
/// everything from the key on.
fn interval(key: &[u8], end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    if end.is_empty() {
        let mut e = key.to_vec();
        e.push(0);
        (key.to_vec(), Some(e))
    } else if end == [0] {
        (key.to_vec(), None)
    } else {
        (key.to_vec(), Some(end.to_vec()))
    }
}

/// `a <= b` for interval ends, `None` being infinity.
fn end_le(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> bool {
    match (a, b) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a <= b,
    }
}

impl Intervals {
    fn from_unsorted(mut v: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Intervals {
        v.retain(|(s, e)| e.as_ref().is_none_or(|e| e > s));
        v.sort();
        let mut out: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match out.last_mut() {
                Some(last) if last.1.as_ref().is_none_or(|le| *le >= s) => {
                    if !end_le(&e, &last.1) {
                        last.1 = e;
                    }
                }
                _ => out.push((s, e)),
            }
        }
        Intervals(out)
    }

    /// Whether one interval of the set covers `[start, end)` whole.
    fn covers(&self, start: &[u8], end: &Option<Vec<u8>>) -> bool {
        let i = self.0.partition_point(|(s, _)| s.as_slice() <= start);
        let Some((_, e)) = i.checked_sub(1).map(|i| &self.0[i]) else {
            return false;
        };
        end_le(end, e) && e.as_ref().is_none_or(|e| e.as_slice() > start)
    }
}

/// A user's permissions merged over all of its roles.
#[derive(Debug, Clone, Default)]
struct Merged {
    read: Intervals,
    write: Intervals,
}

#[derive(Debug, Default)]
pub struct AuthState {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    merged: HashMap<String, Merged>,
}

impl AuthState {
    /// Loads the auth store from its backend rows and the two meta values.
    pub(crate) fn load(
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        enabled: Option<u64>,
        revision: Option<u64>,
    ) -> Result<AuthState, KvError> {
        let mut st = AuthState {
            enabled: enabled.unwrap_or(0) != 0,
            // A new etcd store starts at auth revision 1.
            revision: revision.unwrap_or(1).max(1),
            ..Default::default()
        };
        for (k, v) in rows {
            let (kind, name) = k
                .split_first()
                .ok_or_else(|| KvError::Corrupt("empty auth row key".into()))?;
            let name = String::from_utf8_lossy(name).into_owned();
            let bad = |e: prost::DecodeError| KvError::Corrupt(format!("auth row {name}: {e}"));
            match *kind {
                AUTH_USER => {
                    st.users
                        .insert(name.clone(), User::decode(v.as_slice()).map_err(bad)?);
                }
                AUTH_ROLE => {
                    st.roles
                        .insert(name.clone(), Role::decode(v.as_slice()).map_err(bad)?);
                }
                _ => return Err(KvError::Corrupt(format!("auth row of kind {kind}"))),
            }
        }
        st.remerge();
        Ok(st)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    fn remerge(&mut self) {
        self.merged.clear();
        for (name, u) in &self.users {
            let (mut read, mut write) = (Vec::new(), Vec::new());
            for p in u.roles.iter().filter_map(|r| self.roles.get(r)) {
                for perm in &p.key_permission {
                    let ivl = interval(&perm.key, &perm.range_end);
                    match PermType::try_from(perm.perm_type) {
                        Ok(PermType::Read) => read.push(ivl),
                        Ok(PermType::Write) => write.push(ivl),
                        Ok(PermType::Readwrite) => {
                            read.push(ivl.clone());
                            write.push(ivl);
                        }
                        Err(_) => {}
                    }
                }
            }
            self.merged.insert(
                name.clone(),
                Merged {
                    read: Intervals::from_unsorted(read),
                    write: Intervals::from_unsorted(write),
                },
            );
        }
    }

    /// etcd's `isOpPermitted`: with auth on, the caller must have credentials at the current
    /// auth revision and a role covering the whole range (root covers everything).
    pub fn check(
        &self,
        who: &AuthInfo,
        key: &[u8],
        end: &[u8],
        write: bool,
    ) -> Result<(), KvError> {
        if !self.enabled {
            return Ok(());
        }
        if who.revision == 0 {
            return Err(KvError::UserEmpty);
        }
        if who.revision < self.revision {
            return Err(KvError::AuthOldRevision);
        }
        let Some(user) = self.users.get(&who.user) else {
            return Err(KvError::PermissionDenied);
        };
        if has_root(user) {
            return Ok(());
        }
        let Some(m) = self.merged.get(&who.user) else {
            return Err(KvError::PermissionDenied);
        };
        let set = if write { &m.write } else { &m.read };
        let (start, stop) = interval(key, end);
        // A range ending at or before its start reads nothing; only its first key counts.
        let stop = if stop.as_ref().is_some_and(|e| *e <= start) {
            interval(key, b"").1
        } else {
            stop
        };
        if set.covers(&start, &stop) {
            Ok(())
        } else {
            Err(KvError::PermissionDenied)
        }
    }

    /// etcd's `IsAdminPermitted`: the caller must hold the root role.
    pub fn check_admin(&self, who: &AuthInfo) -> Result<(), KvError> {
        if !self.enabled {
            return Ok(());
        }
        if who.user.is_empty() {
            return Err(KvError::UserEmpty);
        }
        match self.users.get(&who.user) {
            None => Err(KvError::UserNotFound),
            Some(u) if has_root(u) => Ok(()),
            Some(_) => Err(KvError::PermissionDenied),
        }
    }

    /// The permission checks etcd's auth applier makes for a transaction.
    pub fn check_txn(&self, who: &AuthInfo, t: &TxnRequest) -> Result<(), KvError> {
        for c in &t.compare {
            self.check(who, &c.key, &c.range_end, false)?;
        }
        self.check_ops(who, &t.success)?;
        self.check_ops(who, &t.failure)
    }

    fn check_ops(&self, who: &AuthInfo, ops: &[RequestOp]) -> Result<(), KvError> {
        use ballast_api::etcdserverpb::request_op::Request as Op;
        for op in ops {
            match &op.request {
                Some(Op::RequestRange(r)) => self.check(who, &r.key, &r.range_end, false)?,
                Some(Op::RequestPut(p)) => self.check(who, &p.key, b"", true)?,
                Some(Op::RequestDeleteRange(d)) => {
                    if d.prev_kv {
                        self.check(who, &d.key, &d.range_end, false)?;
                    }
                    self.check(who, &d.key, &d.range_end, true)?;
                }
                Some(Op::RequestTxn(t)) => self.check_txn(who, t)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Applies one auth request (already checked for admin rights by the caller when auth
    /// is on). Returns what it means for issued tokens.
    pub(crate) fn apply(
        &mut self,
        w: &mut WriteTx<'_>,
        r: &Request,
    ) -> Result<AuthEffect, KvError> {
        let effect = match r {
            Request::AuthEnable(_) => {
                if self.enabled {
                    // Already on: etcd ignores the request without bumping the revision.
                    return Ok(AuthEffect::None);
                }
                match self.users.get(ROOT) {
                    None => return Err(KvError::RootUserNotExist),
                    Some(u) if !has_root(u) => return Err(KvError::RootRoleNotExist),
                    Some(_) => {}
                }
                self.enabled = true;
                w.set_meta(META_AUTH_ENABLED, 1)?;
                // Enabling does not bump the revision in etcd.
                return Ok(AuthEffect::Enabled);
            }
            Request::AuthDisable(_) => {
                if !self.enabled {
                    return Ok(AuthEffect::None);
                }
                self.enabled = false;
                w.set_meta(META_AUTH_ENABLED, 0)?;
                AuthEffect::Disabled
            }
            Request::UserAdd(a) => {
                self.user_add(w, a)?;
                AuthEffect::None
            }
            Request::UserDelete(d) => {
                self.user_delete(w, d)?;
                AuthEffect::InvalidateUser(d.name.clone())
            }
            Request::UserChangePassword(c) => {
                self.change_password(w, c)?;
                AuthEffect::InvalidateUser(c.name.clone())
            }
            Request::UserGrantRole(g) => {
                if !self.grant_role(w, g)? {
                    // Already granted: etcd answers success without a new revision.
                    return Ok(AuthEffect::None);
                }
                AuthEffect::None
            }
            Request::UserRevokeRole(r) => {
                self.revoke_role(w, r)?;
                AuthEffect::None
            }
            Request::RoleAdd(a) => {
                self.role_add(w, a)?;
                AuthEffect::None
            }
            Request::RoleGrantPermission(g) => {
                self.grant_permission(w, g)?;
                AuthEffect::None
            }
            Request::RoleRevokePermission(r) => {
                self.revoke_permission(w, r)?;
                AuthEffect::None
            }
            Request::RoleDelete(d) => {
                self.role_delete(w, d)?;
                AuthEffect::None
            }
            _ => return Ok(AuthEffect::None),
        };
        self.revision += 1;
        w.set_meta(META_AUTH_REVISION, self.revision)?;
        self.remerge();
        Ok(effect)
    }

    /// Whether an Authenticate entry may issue a token: auth on, the user exists and has a
    /// password (the password itself was checked by the proposer).
    pub(crate) fn authenticate(&self, a: &Authenticate) -> Result<(), KvError> {
        if !self.enabled {
            return Err(KvError::AuthNotEnabled);
        }
        match self.users.get(&a.name) {
            Some(u) if !no_password(&u.options) => Ok(()),
            _ => Err(KvError::AuthFailed),
        }
    }

    fn put_user(&mut self, w: &mut WriteTx<'_>, u: User) -> Result<(), BackendError> {
        schema::put_auth(w, AUTH_USER, &u.name, Some(&u.encode_to_vec()))?;
        self.users
            .insert(String::from_utf8_lossy(&u.name).into_owned(), u);
        Ok(())
    }

    fn put_role(&mut self, w: &mut WriteTx<'_>, r: Role) -> Result<(), BackendError> {
        schema::put_auth(w, AUTH_ROLE, &r.name, Some(&r.encode_to_vec()))?;
        self.roles
            .insert(String::from_utf8_lossy(&r.name).into_owned(), r);
        Ok(())
    }

    fn user_add(&mut self, w: &mut WriteTx<'_>, a: &AuthUserAddRequest) -> Result<(), KvError> {
        if a.name.is_empty() {
            return Err(KvError::UserEmpty);
        }
        if self.users.contains_key(&a.name) {
            return Err(KvError::UserAlreadyExist);
        }
        let password = if no_password(&a.options) {
            Vec::new()
        } else {
            decode_hash(&a.hashed_password)?
        };
        self.put_user(
            w,
            User {
                name: a.name.as_bytes().to_vec(),
                password,
                roles: vec![],
                options: a.options,
            },
        )?;
        Ok(())
    }

    fn user_delete(
        &mut self,
        w: &mut WriteTx<'_>,
        d: &AuthUserDeleteRequest,
    ) -> Result<(), KvError> {
        if self.enabled && d.name == ROOT {
            return Err(KvError::InvalidAuthMgmt);
        }
        if self.users.remove(&d.name).is_none() {
            return Err(KvError::UserNotFound);
        }
        schema::put_auth(w, AUTH_USER, d.name.as_bytes(), None)?;
        Ok(())
    }

    fn change_password(
        &mut self,
        w: &mut WriteTx<'_>,
        c: &AuthUserChangePasswordRequest,
    ) -> Result<(), KvError> {
        let Some(mut u) = self.users.get(&c.name).cloned() else {
            return Err(KvError::UserNotFound);
        };
        if !no_password(&u.options) {
            u.password = decode_hash(&c.hashed_password)?;
        }
        self.put_user(w, u)?;
        Ok(())
    }

    /// Returns false when the user already had the role (etcd answers success and changes
    /// nothing, not even the revision).
    fn grant_role(
        &mut self,
        w: &mut WriteTx<'_>,
        g: &AuthUserGrantRoleRequest,
    ) -> Result<bool, KvError> {
        let Some(mut u) = self.users.get(&g.user).cloned() else {
            return Err(KvError::UserNotFound);
        };
        // etcd lets root be granted before a root role exists.
        if g.role != ROOT && !self.roles.contains_key(&g.role) {
            return Err(KvError::RoleNotFound);
        }
        match u.roles.binary_search(&g.role) {
            Ok(_) => Ok(false),
            Err(i) => {
                u.roles.insert(i, g.role.clone());
                self.put_user(w, u)?;
                Ok(true)
            }
        }
    }

    fn revoke_role(
        &mut self,
        w: &mut WriteTx<'_>,
        r: &AuthUserRevokeRoleRequest,
    ) -> Result<(), KvError> {
        if self.enabled && r.name == ROOT && r.role == ROOT {
            return Err(KvError::InvalidAuthMgmt);
        }
        let Some(mut u) = self.users.get(&r.name).cloned() else {
            return Err(KvError::UserNotFound);
        };
        let before = u.roles.len();
        u.roles.retain(|x| *x != r.role);
        if u.roles.len() == before {
            return Err(KvError::RoleNotGranted);
        }
        self.put_user(w, u)?;
        Ok(())
    }

    fn role_add(&mut self, w: &mut WriteTx<'_>, a: &AuthRoleAddRequest) -> Result<(), KvError> {
        if a.name.is_empty() {
            return Err(KvError::RoleEmpty);
        }
        if self.roles.contains_key(&a.name) {
            return Err(KvError::RoleAlreadyExist);
        }
        self.put_role(
            w,
            Role {
                name: a.name.as_bytes().to_vec(),
                key_permission: vec![],
            },
        )?;
        Ok(())
    }

    fn grant_permission(
        &mut self,
        w: &mut WriteTx<'_>,
        g: &AuthRoleGrantPermissionRequest,
    ) -> Result<(), KvError> {
        let Some(perm) = &g.perm else {
            return Err(KvError::PermissionNotGiven);
        };
        let Some(mut role) = self.roles.get(&g.name).cloned() else {
            return Err(KvError::RoleNotFound);
        };
        let i = role
            .key_permission
            .partition_point(|p| p.key.as_slice() < perm.key.as_slice());
        match role.key_permission.get_mut(i) {
            Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                p.perm_type = perm.perm_type;
            }
            _ => {
                role.key_permission.push(Permission {
                    perm_type: perm.perm_type,
                    key: perm.key.clone(),
                    range_end: perm.range_end.clone(),
                });
                // Stable, like Go's sort of etcd's (key-only) ordering after an append.
                role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.put_role(w, role)?;
        Ok(())
    }

    fn revoke_permission(
        &mut self,
        w: &mut WriteTx<'_>,
        r: &AuthRoleRevokePermissionRequest,
    ) -> Result<(), KvError> {
        let Some(mut role) = self.roles.get(&r.role).cloned() else {
            return Err(KvError::RoleNotFound);
        };
        let before = role.key_permission.len();
        role.key_permission
            .retain(|p| p.key != r.key || p.range_end != r.range_end);
        if role.key_permission.len() == before {
            return Err(KvError::PermissionNotGranted);
        }
        self.put_role(w, role)?;
        Ok(())
    }

    fn role_delete(
        &mut self,
        w: &mut WriteTx<'_>,
        d: &AuthRoleDeleteRequest,
    ) -> Result<(), KvError> {
        if self.enabled && d.role == ROOT {
            return Err(KvError::InvalidAuthMgmt);
        }
        if self.roles.remove(&d.role).is_none() {
            return Err(KvError::RoleNotFound);
        }
        schema::put_auth(w, AUTH_ROLE, d.role.as_bytes(), None)?;
        let holders: Vec<User> = self
            .users
            .values()
            .filter(|u| u.roles.contains(&d.role))
            .cloned()
            .collect();
        for mut u in holders {
            u.roles.retain(|r| *r != d.role);
            self.put_user(w, u)?;
        }
        Ok(())
    }
}

/// Whether a user was added with `--no-password` (certificate-only).
pub fn no_password(options: &Option<UserAddOptions>) -> bool {
    options.as_ref().is_some_and(|o| o.no_password)
}

fn has_root(u: &User) -> bool {
    u.roles.binary_search_by(|r| r.as_str().cmp(ROOT)).is_ok()
}

/// The stored hash from a request's `hashedPassword` (base64 of the bcrypt string, as etcd
/// proposes it).
fn decode_hash(b64: &str) -> Result<Vec<u8>, KvError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| KvError::NoPasswordUser)
}

/// Whether a request changes the auth store (applied by [`AuthState::apply`]).
pub fn is_auth_change(r: &Request) -> bool {
    needs_admin(r)
}

/// Whether a request is auth management that needs the root role when auth is on.
pub fn needs_admin(r: &Request) -> bool {
    matches!(
        r,
        Request::AuthEnable(_)
            | Request::AuthDisable(_)
            | Request::UserAdd(_)
            | Request::UserDelete(_)
            | Request::UserChangePassword(_)
            | Request::UserGrantRole(_)
            | Request::UserRevokeRole(_)
            | Request::RoleAdd(_)
            | Request::RoleGrantPermission(_)
            | Request::RoleRevokePermission(_)
            | Request::RoleDelete(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn perms(v: &[(&[u8], &[u8])]) -> Intervals {
        Intervals::from_unsorted(v.iter().map(|(k, e)| interval(k, e)).collect())
    }

    #[test]
    fn intervals_merge_and_cover() {
        let s = perms(&[(b"a", b"c"), (b"c", b"e"), (b"k", b"\0"), (b"foo", b"")]);
        assert!(s.covers(b"a", &Some(b"e".to_vec())));
        assert!(s.covers(b"b", &Some(b"d".to_vec())));
        assert!(!s.covers(b"b", &Some(b"f".to_vec())));
        assert!(s.covers(b"foo", &Some(b"foo\0".to_vec())));
        assert!(!s.covers(b"foo", &Some(b"fop".to_vec())));
        assert!(s.covers(b"zzz", &None));
        assert!(s.covers(b"k", &None));
        assert!(!s.covers(b"j", &None));
        assert!(!s.covers(b"e", &Some(b"e\0".to_vec())));
    }

    fn model_covers(p: &[(Vec<u8>, Option<Vec<u8>>)], s: &[u8], e: &Option<Vec<u8>>) -> bool {
        // Every key of [s, e) over a small alphabet must fall in some interval.
        let keys = all_keys();
        keys.iter()
            .filter(|k| k.as_slice() >= s && e.as_ref().is_none_or(|e| k.as_slice() < e.as_slice()))
            .all(|k| {
                p.iter()
                    .any(|(ps, pe)| k >= ps && pe.as_ref().is_none_or(|pe| k < pe))
            })
    }

    fn all_keys() -> Vec<Vec<u8>> {
        let mut out = vec![vec![]];
        for a in 0..3u8 {
            out.push(vec![a]);
            for b in 0..3u8 {
                out.push(vec![a, b]);
                for c in 0..3u8 {
                    out.push(vec![a, b, c]);
                }
            }
        }
        out
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..3, 0..3)
    }

    proptest! {
        // Over a 3-letter alphabet with keys up to 3 long, "covered" means every modelled key
        // of the request range lies in a granted interval.
        #[test]
        fn cover_matches_a_brute_force_model(
            grants in proptest::collection::vec((key(), proptest::option::of(key())), 0..5),
            start in key(),
            end in proptest::option::of(key()),
        ) {
            let raw: Vec<_> = grants.iter().map(|(s, e)| (s.clone(), e.clone())).collect();
            let set = Intervals::from_unsorted(raw.clone());
            prop_assume!(end.as_ref().is_none_or(|e| *e > start));
            // Sound: whatever the merged set admits, the raw grants cover key by key.
            if set.covers(&start, &end) {
                prop_assert!(model_covers(&raw, &start, &end));
            }
            // Complete for what one grant covers: merging never loses a grant.
            for (s, e) in &raw {
                if e.as_ref().is_none_or(|e| e > s) {
                    prop_assert!(set.covers(s, e));
                }
            }
        }
    }
}

#[cfg(test)]
mod apply_tests {
    use super::*;
    use crate::{Applied, Mvcc};
    use ballast_api::ballast::internal::RaftRequest;
    use ballast_api::etcdserverpb::{AuthEnableRequest, PutRequest};

    struct Log {
        m: Mvcc,
        index: u64,
        _dir: tempfile::TempDir,
    }

    impl Log {
        fn new() -> Log {
            let dir = tempfile::tempdir().unwrap();
            let m = Mvcc::open(&dir.path().join("db")).unwrap();
            Log {
                m,
                index: 0,
                _dir: dir,
            }
        }

        fn apply_as(&mut self, user: &str, rev: u64, r: Request) -> Result<Applied, KvError> {
            self.index += 1;
            let req = RaftRequest {
                id: self.index,
                request: Some(r),
                username: user.into(),
                auth_revision: rev,
            };
            let mut out = self
                .m
                .apply_batch(&[(self.index, Some(req))], false)
                .unwrap();
            out.results.remove(0)
        }

        fn admin(&mut self, r: Request) -> Result<Applied, KvError> {
            let rev = self.m.with_auth(|a| a.revision());
            self.apply_as("root", rev, r)
        }

        fn put_as(&mut self, user: &str, key: &str) -> Result<Applied, KvError> {
            let rev = self.m.with_auth(|a| a.revision());
            self.apply_as(
                user,
                rev,
                Request::Put(PutRequest {
                    key: key.into(),
                    value: b"v".to_vec(),
                    ..Default::default()
                }),
            )
        }
    }

    fn hash(p: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("hash-of-{p}"))
    }

    fn user_add(name: &str) -> Request {
        Request::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: hash("pw"),
            ..Default::default()
        })
    }

    fn grant(user: &str, role: &str) -> Request {
        Request::UserGrantRole(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
    }

    fn perm(role: &str, t: PermType, key: &str, end: &str) -> Request {
        Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(Permission {
                perm_type: t as i32,
                key: key.into(),
                range_end: end.into(),
            }),
        })
    }

    fn enable(l: &mut Log) {
        l.admin(user_add("root")).unwrap();
        assert!(matches!(
            l.admin(Request::AuthEnable(AuthEnableRequest {})),
            Err(KvError::RootRoleNotExist)
        ));
        l.admin(grant("root", "root")).unwrap();
        l.admin(Request::AuthEnable(AuthEnableRequest {})).unwrap();
    }

    #[test]
    fn revision_starts_at_one_and_counts_changes_like_etcd() {
        let mut l = Log::new();
        assert_eq!(l.m.with_auth(|a| a.revision()), 1);
        assert!(matches!(
            l.admin(Request::AuthEnable(AuthEnableRequest {})),
            Err(KvError::RootUserNotExist)
        ));
        enable(&mut l);
        // user add + grant; enabling and the refused enable count nothing.
        assert_eq!(l.m.with_auth(|a| a.revision()), 3);
        // A grant of a role already held changes nothing.
        l.admin(grant("root", "root")).unwrap();
        assert_eq!(l.m.with_auth(|a| a.revision()), 3);
    }

    #[test]
    fn writes_are_checked_against_roles_as_they_apply() {
        let mut l = Log::new();
        enable(&mut l);
        l.admin(user_add("alice")).unwrap();
        l.admin(Request::RoleAdd(AuthRoleAddRequest { name: "w".into() }))
            .unwrap();
        l.admin(perm("w", PermType::Write, "a", "c")).unwrap();
        assert!(matches!(
            l.put_as("alice", "b"),
            Err(KvError::PermissionDenied)
        ));
        l.admin(grant("alice", "w")).unwrap();
        assert!(l.put_as("alice", "b").is_ok());
        assert!(matches!(
            l.put_as("alice", "c"),
            Err(KvError::PermissionDenied)
        ));
        assert!(l.put_as("root", "zzz").is_ok());
        // No credentials at all, and credentials from before the last auth change.
        assert!(matches!(
            l.apply_as("", 0, user_add("x")),
            Err(KvError::UserEmpty)
        ));
        let old = l.m.with_auth(|a| a.revision()) - 1;
        assert!(matches!(
            l.apply_as(
                "alice",
                old,
                Request::Put(PutRequest {
                    key: b"b".to_vec(),
                    ..Default::default()
                })
            ),
            Err(KvError::AuthOldRevision)
        ));
        // Auth management needs root.
        assert!(matches!(
            l.apply_as("alice", l.m.with_auth(|a| a.revision()), user_add("y")),
            Err(KvError::PermissionDenied)
        ));
        // Deleting the role takes it from alice too.
        l.admin(Request::RoleDelete(AuthRoleDeleteRequest {
            role: "w".into(),
        }))
        .unwrap();
        assert_eq!(l.m.with_auth(|a| a.user("alice").unwrap().roles.len()), 0);
        assert!(matches!(
            l.put_as("alice", "b"),
            Err(KvError::PermissionDenied)
        ));
    }

    #[test]
    fn root_rules_and_management_errors() {
        let mut l = Log::new();
        enable(&mut l);
        assert!(matches!(
            l.admin(Request::UserDelete(AuthUserDeleteRequest {
                name: "root".into()
            })),
            Err(KvError::InvalidAuthMgmt)
        ));
        assert!(matches!(
            l.admin(Request::UserRevokeRole(AuthUserRevokeRoleRequest {
                name: "root".into(),
                role: "root".into()
            })),
            Err(KvError::InvalidAuthMgmt)
        ));
        assert!(matches!(
            l.admin(user_add("root")),
            Err(KvError::UserAlreadyExist)
        ));
        assert!(matches!(l.admin(user_add("")), Err(KvError::UserEmpty)));
        assert!(matches!(
            l.admin(grant("nobody", "root")),
            Err(KvError::UserNotFound)
        ));
        assert!(matches!(
            l.admin(grant("root", "nope")),
            Err(KvError::RoleNotFound)
        ));
        l.admin(Request::RoleAdd(AuthRoleAddRequest { name: "r".into() }))
            .unwrap();
        assert!(matches!(
            l.admin(Request::RoleRevokePermission(
                AuthRoleRevokePermissionRequest {
                    role: "r".into(),
                    key: b"k".to_vec(),
                    range_end: vec![],
                }
            )),
            Err(KvError::PermissionNotGranted)
        ));
        // Permissions stay sorted by key; granting the same range again updates its type.
        l.admin(perm("r", PermType::Read, "m", "")).unwrap();
        l.admin(perm("r", PermType::Read, "b", "")).unwrap();
        l.admin(perm("r", PermType::Readwrite, "m", "")).unwrap();
        let perms =
            l.m.with_auth(|a| a.role("r").unwrap().key_permission.clone());
        assert_eq!(perms.len(), 2);
        assert_eq!(perms[0].key, b"b");
        assert_eq!(perms[1].perm_type, PermType::Readwrite as i32);
    }

    #[test]
    fn auth_survives_reopen_and_snapshot() {
        let mut l = Log::new();
        enable(&mut l);
        l.admin(user_add("alice")).unwrap();
        l.m.sync().unwrap();
        let mut snap = Vec::new();
        l.m.export(&mut |b| {
            snap.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        Mvcc::import(&path, snap.as_slice()).unwrap();
        let copy = Mvcc::open(&path).unwrap();
        assert!(copy.auth_enabled());
        assert_eq!(copy.with_auth(|a| a.user_names()), vec!["alice", "root"]);
        assert_eq!(
            copy.with_auth(|a| a.revision()),
            l.m.with_auth(|a| a.revision())
        );
    }
}
