//! The Auth service. Changes go through raft (passwords hashed here first, so applying never
//! runs bcrypt) and are permission-checked as they apply; reads wait for a ReadIndex round and
//! answer from the applied auth store with the same checks etcd makes.

use std::sync::Arc;

use ballast_api::ballast::internal::raft_request::Request as Raft;
use ballast_api::ballast::internal::Authenticate;
use ballast_api::etcdserverpb::auth_server::Auth;
use ballast_api::etcdserverpb::*;
use ballast_state::{Applied, AuthInfo, KvError};
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

    /// Who is asking, once a ReadIndex round says this member's auth store is current.
    async fn read<T>(&self, req: &Request<T>) -> Result<AuthInfo, Status> {
        let who = self.server.caller(req).await.map_err(status)?;
        self.server.refuse_learner().map_err(status)?;
        self.server.linearizable_barrier().await.map_err(status)?;
        Ok(who)
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
        let who = self.read(&req).await?;
        let mvcc = self.server.mvcc();
        let (enabled, auth_revision) = mvcc
            .with_auth(|a| {
                a.check_admin(&who)?;
                Ok::<_, KvError>((a.enabled(), a.revision()))
            })
            .map_err(kv_status)?;
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
                let stored = a.user(&r.name).map(|u| {
                    let no_password = u.options.as_ref().is_some_and(|o| o.no_password);
                    (!no_password).then(|| u.password.clone())
                });
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
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password && r.hashed_password.is_empty() {
            let pw = std::mem::take(&mut r.password);
            r.hashed_password = self
                .server
                .authenticator()
                .hash(pw)
                .await
                .map_err(kv_status)?;
        }
        r.password.clear();
        self.propose(Raft::UserAdd(r), &who).await?;
        Ok(Response::new(AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let who = self.read(&req).await?;
        let name = req.into_inner().name;
        let roles = self
            .server
            .mvcc()
            .with_auth(|a| {
                // A user may read its own record; anything else needs root.
                if let Err(e) = a.check_admin(&who) {
                    if name != who.user {
                        return Err(e);
                    }
                }
                a.user(&name)
                    .map(|u| u.roles.clone())
                    .ok_or(KvError::UserNotFound)
            })
            .map_err(kv_status)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let who = self.read(&req).await?;
        let users = self
            .server
            .mvcc()
            .with_auth(|a| a.check_admin(&who).map(|_| a.user_names()))
            .map_err(kv_status)?;
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
        if r.hashed_password.is_empty() {
            let pw = std::mem::take(&mut r.password);
            r.hashed_password = self
                .server
                .authenticator()
                .hash(pw)
                .await
                .map_err(kv_status)?;
        }
        r.password.clear();
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
        let who = self.read(&req).await?;
        let role = req.into_inner().role;
        let perm = self
            .server
            .mvcc()
            .with_auth(|a| {
                // Holders of a role may read it; anything else needs root.
                if let Err(e) = a.check_admin(&who) {
                    if !a.has_role(&who.user, &role) {
                        return Err(e);
                    }
                }
                a.role(&role)
                    .map(|r| r.key_permission.clone())
                    .ok_or(KvError::RoleNotFound)
            })
            .map_err(kv_status)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let who = self.read(&req).await?;
        let roles = self
            .server
            .mvcc()
            .with_auth(|a| a.check_admin(&who).map(|_| a.role_names()))
            .map_err(kv_status)?;
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
