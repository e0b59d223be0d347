//! The Auth service. Changes go through raft (passwords hashed here first, so applying never
//! runs bcrypt) and are permission-checked as they apply; reads wait for a ReadIndex round and
//! answer from the applied auth store with the same checks etcd makes.

use std::sync::Arc;

use ballast_api::ballast::internal::raft_request::Request as Raft;
use ballast_api::ballast::internal::Authenticate;
use ballast_api::etcdserverpb::auth_server::Auth;
use ballast_api::etcdserverpb::*;
use ballast_state::auth::no_password;
use ballast_state::{Applied, AuthInfo, AuthState, KvError};
use tonic::{Request, Response, Status};

use super::{kv_status, status, unexpected};
use crate::server::EtcdServer;

pub struct AuthService {
    pub server: Arc<EtcdServer>,
}

/// An Authenticate whose password check raced an auth change is retried this many times.
const AUTHENTICATE_ATTEMPTS: usize = 3;

impl AuthService {
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.server.header(self.server.mvcc().current_rev()))
    }

    /// Proposes an auth change as the caller; the applier checks the caller is root.
    async fn change<T>(&self, req: Request<T>, make: impl FnOnce(T) -> Raft) -> Result<(), Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        self.propose(make(req.into_inner()), &who).await
    }

    async fn propose(&self, r: Raft, who: &AuthInfo) -> Result<(), Status> {
        self.server.refuse_learner().map_err(status)?;
        match self.server.propose(r, who).await.map_err(status)? {
            Applied::Auth(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Reads the auth store for the caller, once a ReadIndex round says this member's copy
    /// is current; `f` applies etcd's rule for who may read what.
    async fn read<T, R>(
        &self,
        req: &Request<T>,
        f: impl FnOnce(&AuthState, &AuthInfo) -> Result<R, KvError>,
    ) -> Result<R, Status> {
        let who = self.server.caller(req).await.map_err(status)?;
        self.server.refuse_learner().map_err(status)?;
        self.server.linearizable_barrier().await.map_err(status)?;
        self.server
            .mvcc()
            .with_auth(|a| f(a, &who))
            .map_err(kv_status)
    }

    /// etcd proposes the bcrypt hash, never the password: hash it here unless the client
    /// sent a hash already, and drop the plain text either way.
    async fn hash_password(
        &self,
        password: &mut String,
        hashed: &mut String,
    ) -> Result<(), Status> {
        let plain = std::mem::take(password);
        if hashed.is_empty() {
            *hashed = self
                .server
                .authenticator()
                .hash(plain)
                .await
                .map_err(kv_status)?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        self.change(req, Raft::AuthEnable).await?;
        Ok(Response::new(AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.change(req, Raft::AuthDisable).await?;
        Ok(Response::new(AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let (enabled, auth_revision) = self
            .read(&req, |a, who| {
                a.check_admin(who)?;
                Ok((a.enabled(), a.revision()))
            })
            .await?;
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        let s = &self.server;
        let auth = s.authenticator();
        for _ in 0..AUTHENTICATE_ATTEMPTS {
            let mvcc = s.mvcc();
            if !mvcc.auth_enabled() {
                return Err(kv_status(KvError::AuthNotEnabled));
            }
            let (stored, revision) = mvcc.with_auth(|a| {
                let stored = a
                    .user(&r.name)
                    .map(|u| (!no_password(&u.options)).then(|| u.password.clone()));
                (stored, a.revision())
            });
            auth.check_password(&r.name, &r.password, stored)
                .await
                .map_err(kv_status)?;
            let prefix = auth.token_prefix();
            let applied = s
                .propose(
                    Raft::Authenticate(Authenticate {
                        name: r.name.clone(),
                        simple_token_prefix: prefix,
                    }),
                    &crate::auth::nobody(),
                )
                .await
                .map_err(status)?;
            let Applied::Authenticated { user, token } = applied else {
                return Err(unexpected(applied));
            };
            // The password was checked against the store at `revision`; if it changed
            // meanwhile (a password change, say), check again as etcd does.
            if s.mvcc().with_auth(|a| a.revision()) != revision {
                continue;
            }
            let token = if auth.is_jwt() {
                auth.sign(&user, revision).map_err(kv_status)?
            } else {
                token
            };
            return Ok(Response::new(AuthenticateResponse {
                header: self.header(),
                token,
            }));
        }
        Err(kv_status(KvError::AuthFailed))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        let mut r = req.into_inner();
        if no_password(&r.options) {
            r.password.clear();
        } else {
            self.hash_password(&mut r.password, &mut r.hashed_password)
                .await?;
        }
        self.propose(Raft::UserAdd(r), &who).await?;
        Ok(Response::new(AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let name = &req.get_ref().name;
        let roles = self
            .read(&req, |a, who| {
                // A user may read its own record; anything else needs root.
                if let Err(e) = a.check_admin(who) {
                    if *name != who.user {
                        return Err(e);
                    }
                }
                a.user(name)
                    .map(|u| u.roles.clone())
                    .ok_or(KvError::UserNotFound)
            })
            .await?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let users = self
            .read(&req, |a, who| a.check_admin(who).map(|_| a.user_names()))
            .await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        self.change(req, Raft::UserDelete).await?;
        Ok(Response::new(AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let who = self.server.caller(&req).await.map_err(status)?;
        let mut r = req.into_inner();
        self.hash_password(&mut r.password, &mut r.hashed_password)
            .await?;
        self.propose(Raft::UserChangePassword(r), &who).await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        self.change(req, Raft::UserGrantRole).await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        self.change(req, Raft::UserRevokeRole).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        self.change(req, Raft::RoleAdd).await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let role = &req.get_ref().role;
        let perm = self
            .read(&req, |a, who| {
                // Holders of a role may read it; anything else needs root.
                if let Err(e) = a.check_admin(who) {
                    if !a.has_role(&who.user, role) {
                        return Err(e);
                    }
                }
                a.role(role)
                    .map(|r| r.key_permission.clone())
                    .ok_or(KvError::RoleNotFound)
            })
            .await?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let roles = self
            .read(&req, |a, who| a.check_admin(who).map(|_| a.role_names()))
            .await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        self.change(req, Raft::RoleDelete).await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        self.change(req, Raft::RoleGrantPermission).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        self.change(req, Raft::RoleRevokePermission).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}
