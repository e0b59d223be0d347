//! Credentials: who a request comes from (a token in the `token` or `authorization` metadata,
//! else the client certificate's CN under `--client-cert-auth`), the tokens this member
//! accepts (etcd's simple tokens, issued through raft and valid on every member, or JWTs), and
//! the guard against password guessing. What a caller may do is the state machine's business
//! (`ballast_state::auth`); this module only says who the caller is.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ballast_state::{AuthEffect, AuthInfo, KvError};
use tokio::sync::Semaphore;

use crate::config::AuthTokenConfig;
use crate::limits::AUTH_TRACKED_USERS;

/// A request's claimed identity before it is resolved.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    pub token: Option<String>,
    /// Subject CN of a verified client certificate (set only under `--client-cert-auth`).
    pub cn: Option<String>,
}

impl Credentials {
    /// From a gRPC request: etcd's `token` metadata, or `authorization` (the gateway's).
    pub fn of<T>(req: &tonic::Request<T>) -> Credentials {
        let md = req.metadata();
        let token = md
            .get("token")
            .or_else(|| md.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let cn = req
            .extensions()
            .get::<axum::extract::ConnectInfo<crate::conn::tls::ClientAddr>>()
            .and_then(|c| c.0.cn.clone());
        Credentials { token, cn }
    }
}

struct SimpleToken {
    user: String,
    last_used: Instant,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

struct Jwt {
    encode: Option<jsonwebtoken::EncodingKey>,
    decode: jsonwebtoken::DecodingKey,
    algorithm: jsonwebtoken::Algorithm,
    ttl: Duration,
}

/// Failed password checks per user name, for the guessing guard.
struct Failures {
    count: u32,
    last: Instant,
}

/// Consecutive failures allowed before attempts for that user are slowed down.
const FREE_FAILURES: u32 = 3;
/// The slowdown doubles per failure from this, up to [`MAX_DELAY`].
const BASE_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

pub struct Authenticator {
    simple: Mutex<HashMap<String, SimpleToken>>,
    ttl: Duration,
    jwt: Option<Jwt>,
    pub bcrypt_cost: u32,
    failures: Mutex<HashMap<String, Failures>>,
    /// bcrypt is deliberately slow: this many checks at a time, so guessing cannot starve
    /// the member's CPU.
    checks: Semaphore,
    /// A hash of a random password at the configured cost, checked for unknown users.
    dummy: std::sync::Arc<std::sync::OnceLock<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why `--auth-token`'s JWT keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthTokenError {
    #[error("auth: invalid auth signature method {0:?}")]
    Method(String),
    #[error("auth: cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("auth: bad key for {method}: {source}")]
    Key {
        method: String,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}

impl Authenticator {
    pub fn new(
        cfg: &AuthTokenConfig,
        ttl: Duration,
        bcrypt_cost: u32,
    ) -> Result<Self, AuthTokenError> {
        let jwt = match cfg {
            AuthTokenConfig::Simple => None,
            AuthTokenConfig::Jwt {
                public_key,
                private_key,
                method,
                ttl,
            } => Some(jwt_keys(public_key, private_key.as_deref(), method, *ttl)?),
        };
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Authenticator {
            simple: Mutex::default(),
            ttl,
            jwt,
            bcrypt_cost,
            failures: Mutex::default(),
            checks: Semaphore::new(cpus.max(1)),
            dummy: Default::default(),
        })
    }

    pub fn is_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    /// A fresh simple-token prefix (16 random letters, as etcd's); empty for JWT.
    pub fn token_prefix(&self) -> String {
        if self.jwt.is_some() {
            return String::new();
        }
        Self::random_letters(16)
    }

    fn random_letters(n: usize) -> String {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..n)
            .map(|_| {
                let c = rng.gen_range(0..52u8);
                (if c < 26 { b'a' + c } else { b'A' + c - 26 }) as char
            })
            .collect()
    }

    /// Signs a JWT for `user` at auth revision `revision`.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, KvError> {
        let Some(j) = &self.jwt else {
            return Err(KvError::AuthFailed);
        };
        let Some(key) = &j.encode else {
            tracing::warn!("jwt token signing attempted with a verify-only key");
            return Err(KvError::AuthFailed);
        };
        let exp = (std::time::SystemTime::now() + j.ttl)
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp,
        };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(j.algorithm), &claims, key).map_err(|e| {
            tracing::warn!(error = %e, "jwt signing failed");
            KvError::AuthFailed
        })
    }

    /// Called by the applier on every member for each issued simple token.
    pub fn assign(&self, token: String, user: String) {
        lock(&self.simple).insert(
            token,
            SimpleToken {
                user,
                last_used: Instant::now(),
            },
        );
    }

    /// What an applied auth change does to issued tokens.
    pub fn apply_effect(&self, e: &AuthEffect) {
        match e {
            AuthEffect::InvalidateUser(u) => lock(&self.simple).retain(|_, t| t.user != *u),
            AuthEffect::Disabled => lock(&self.simple).clear(),
            AuthEffect::Enabled | AuthEffect::None => {}
        }
    }

    /// Drops simple tokens unused for longer than the TTL.
    pub fn expire(&self) {
        let ttl = self.ttl;
        lock(&self.simple).retain(|_, t| t.last_used.elapsed() < ttl);
    }

    /// The user a token names (`None`: not a valid token), and for JWT the auth revision
    /// it was issued at. A simple token's use keeps it alive for another TTL.
    pub fn token_user(&self, token: &str) -> Option<(String, Option<u64>)> {
        if let Some(j) = &self.jwt {
            let mut v = jsonwebtoken::Validation::new(j.algorithm);
            v.leeway = 0;
            v.validate_aud = false;
            let data = jsonwebtoken::decode::<Claims>(token, &j.decode, &v).ok()?;
            return Some((data.claims.username, Some(data.claims.revision)));
        }
        let mut tokens = lock(&self.simple);
        let t = tokens.get_mut(token)?;
        if t.last_used.elapsed() >= self.ttl {
            tokens.remove(token);
            return None;
        }
        t.last_used = Instant::now();
        Some((t.user.clone(), None))
    }

    /// The raft index a simple token was issued at (`prefix.index`), if it is one.
    pub fn token_index(token: &str) -> Option<u64> {
        token.rsplit_once('.')?.1.parse().ok()
    }

    /// Checks a password against the stored bcrypt hash, slowed down for a user name that
    /// keeps failing and bounded in how many run at once. `stored` is `None` for an unknown
    /// user (a dummy hash is checked anyway, so timing does not tell which names exist) and
    /// `Some(None)` for a user without a password.
    pub async fn check_password(
        &self,
        user: &str,
        password: &str,
        stored: Option<Option<Vec<u8>>>,
    ) -> Result<(), KvError> {
        let wait = {
            let f = lock(&self.failures);
            f.get(user).and_then(|f| {
                let over = f.count.checked_sub(FREE_FAILURES)?;
                let delay = BASE_DELAY
                    .saturating_mul(1u32 << over.min(16))
                    .min(MAX_DELAY);
                delay.checked_sub(f.last.elapsed())
            })
        };
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
        let ok = {
            let _permit = self
                .checks
                .acquire()
                .await
                .map_err(|_| KvError::AuthFailed)?;
            let password = password.to_string();
            let (hash, real) = match stored {
                Some(Some(h)) => (Some(String::from_utf8_lossy(&h).into_owned()), true),
                _ => (None, false),
            };
            let (dummy, cost) = (self.dummy.clone(), self.bcrypt_cost);
            let matched = tokio::task::spawn_blocking(move || {
                let hash = hash.unwrap_or_else(|| {
                    dummy
                        .get_or_init(|| {
                            let secret = Authenticator::random_letters(32);
                            bcrypt::hash(secret, cost).unwrap_or_default()
                        })
                        .clone()
                });
                bcrypt::verify(password, &hash).unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            matched && real
        };
        let mut f = lock(&self.failures);
        if ok {
            f.remove(user);
            return Ok(());
        }
        if f.len() >= AUTH_TRACKED_USERS && !f.contains_key(user) {
            if let Some(stalest) = f.iter().min_by_key(|(_, v)| v.last).map(|(k, _)| k.clone()) {
                f.remove(&stalest);
            }
        }
        let e = f.entry(user.to_string()).or_insert(Failures {
            count: 0,
            last: Instant::now(),
        });
        e.count = e.count.saturating_add(1);
        e.last = Instant::now();
        tracing::info!(user, failures = e.count, "invalid password");
        Err(KvError::AuthFailed)
    }

    /// bcrypt as etcd stores it (`$2a$`), base64 as etcd proposes `hashedPassword`.
    pub async fn hash(&self, password: String) -> Result<String, KvError> {
        let cost = self.bcrypt_cost;
        let _permit = self
            .checks
            .acquire()
            .await
            .map_err(|_| KvError::AuthFailed)?;
        tokio::task::spawn_blocking(move || hash_password(&password, cost))
            .await
            .map_err(|_| KvError::AuthFailed)?
    }
}

fn jwt_keys(
    public: &std::path::Path,
    private: Option<&std::path::Path>,
    method: &str,
    ttl: Duration,
) -> Result<Jwt, AuthTokenError> {
    use jsonwebtoken::{Algorithm as A, DecodingKey, EncodingKey};
    let algorithm: A = method
        .parse()
        .map_err(|_| AuthTokenError::Method(method.to_string()))?;
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| AuthTokenError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let bad = |source| AuthTokenError::Key {
        method: method.to_string(),
        source,
    };
    let pem = read(public)?;
    let decode = match algorithm {
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
            DecodingKey::from_rsa_pem(&pem)
        }
        A::ES256 | A::ES384 => DecodingKey::from_ec_pem(&pem),
        A::EdDSA => DecodingKey::from_ed_pem(&pem),
        _ => return Err(AuthTokenError::Method(method.to_string())),
    }
    .map_err(bad)?;
    let encode = match private {
        None => None,
        Some(p) => {
            let pem = read(p)?;
            Some(
                match algorithm {
                    A::ES256 | A::ES384 => EncodingKey::from_ec_pem(&pem),
                    A::EdDSA => EncodingKey::from_ed_pem(&pem),
                    _ => EncodingKey::from_rsa_pem(&pem),
                }
                .map_err(bad)?,
            )
        }
    };
    Ok(Jwt {
        encode,
        decode,
        algorithm,
        ttl,
    })
}

/// The caller with no credentials (etcd's empty `AuthInfo`).
pub fn nobody() -> AuthInfo {
    AuthInfo::default()
}

/// The member itself (lease expiry, compaction, alarms, membership): etcd runs these as root.
/// Never use it for a client's request.
pub fn member() -> AuthInfo {
    AuthInfo {
        user: "root".into(),
        revision: u64::MAX,
    }
}

/// bcrypt as etcd stores it (`$2a$`), base64 as etcd proposes `hashedPassword`. Slow by
/// design: call it off the async runtime.
pub fn hash_password(password: &str, cost: u32) -> Result<String, KvError> {
    let hashed = bcrypt::hash_with_result(password, cost)
        .map(|h| h.format_for_version(bcrypt::Version::TwoA))
        .map_err(|e| KvError::Corrupt(format!("bcrypt: {e}")))?;
    use base64::Engine;
    Ok(base64::engine::general_purpose::STANDARD.encode(hashed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_index_is_the_part_after_the_last_dot() {
        assert_eq!(Authenticator::token_index("abcDEF.42"), Some(42));
        assert_eq!(Authenticator::token_index("abc"), None);
        assert_eq!(Authenticator::token_index("a.b.c"), None);
    }

    #[tokio::test]
    async fn repeated_failures_slow_down_guessing() {
        let a = Authenticator::new(&AuthTokenConfig::Simple, Duration::from_secs(60), 4).unwrap();
        let hash = bcrypt::hash("right", 4).unwrap().into_bytes();
        for _ in 0..FREE_FAILURES + 2 {
            assert!(a
                .check_password("u", "wrong", Some(Some(hash.clone())))
                .await
                .is_err());
        }
        // Two failures past the free ones: the next attempt waits BASE_DELAY * 4.
        let t = Instant::now();
        a.check_password("u", "right", Some(Some(hash.clone())))
            .await
            .unwrap();
        assert!(t.elapsed() >= BASE_DELAY * 3);
        // Unknown users fail the same way (a dummy hash is checked).
        assert!(a.check_password("ghost", "x", None).await.is_err());
        assert!(a.check_password("u", "x", Some(None)).await.is_err());
    }

    #[test]
    fn simple_tokens_expire_after_the_ttl_and_die_with_their_user() {
        let a = Authenticator::new(&AuthTokenConfig::Simple, Duration::from_millis(50), 4).unwrap();
        a.assign("t.1".into(), "alice".into());
        a.assign("t.2".into(), "bob".into());
        assert_eq!(a.token_user("t.1").map(|t| t.0), Some("alice".into()));
        a.apply_effect(&AuthEffect::InvalidateUser("alice".into()));
        assert!(a.token_user("t.1").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(a.token_user("t.2").is_none());
    }
}
