//! `auth`, `user` and `role`, and `--user`/`--password`: etcdctl's commands, messages, output
//! (simple and json; table and fields refused after the call, as etcdctl does) and exit codes.

use std::io::BufRead;
use std::time::Duration;

use ballast_api::authpb::{permission::Type as PermType, Permission, UserAddOptions};
use ballast_api::etcdserverpb::auth_client::AuthClient;
use ballast_api::etcdserverpb::*;
use ballast_net::keys::prefix_end;
use base64::Engine;
use clap::Subcommand;
use serde_json::{Map, Value};
use tonic::metadata::{Ascii, MetadataValue};

use crate::output::{header_json, Format, Printer};
use crate::{call, connect_any, Cli, Conn, Failure};

/// etcdctl's exit code when the client cannot be set up (a failed `--user` login included).
const EXIT_BAD_CONNECTION: u8 = 2;

/// Puts the login token, if any, on every call.
#[derive(Clone, Default)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// Reads a password as etcdctl's prompt does (without hiding it: there may be no terminal).
fn prompt(text: &str) -> String {
    eprint!("{text}");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line.trim_end_matches(['\r', '\n']).to_string()
}

/// Logs in with `--user`/`--password` if given, as etcdctl's client does when it dials: a
/// cluster without auth ignores the credentials; wrong ones end the command with exit 2.
pub async fn login(cli: &Cli, ch: crate::dial::Recorded) -> Result<Conn, Failure> {
    if cli.user.is_empty() {
        return Ok(Conn::new(ch, Token::default()));
    }
    let (name, password) = if !cli.password.is_empty() {
        (cli.user.clone(), cli.password.clone())
    } else {
        match cli.user.split_once(':') {
            Some((u, p)) => (u.to_string(), p.to_string()),
            None => (cli.user.clone(), prompt("Password: ")),
        }
    };
    let req = AuthenticateRequest { name, password };
    let resp = tokio::time::timeout(
        cli.dial_timeout + cli.command_timeout,
        crate::limited!(AuthClient::new(ch.clone())).authenticate(req),
    )
    .await
    .map_err(|_| Failure::Exit(EXIT_BAD_CONNECTION, "context deadline exceeded".into()))?;
    match resp {
        Ok(r) => {
            let token = r.into_inner().token.parse().ok();
            Ok(Conn::new(ch, Token(token)))
        }
        Err(s) if s.message() == "etcdserver: authentication is not enabled" => {
            crate::retry_warning(cli, &s);
            Ok(Conn::new(ch, Token::default()))
        }
        Err(s) => {
            crate::retry_warning(cli, &s);
            Err(Failure::Exit(EXIT_BAD_CONNECTION, s.message().to_string()))
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum AuthCmd {
    /// Enables authentication
    Enable { args: Vec<String> },
    /// Disables authentication
    Disable { args: Vec<String> },
    /// Returns authentication status
    Status { args: Vec<String> },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Adds a new user
    Add {
        args: Vec<String>,
        /// Read password from stdin instead of interactive terminal
        #[arg(long, action = clap::ArgAction::Set, default_value = "true", default_missing_value = "true", num_args = 0..=1, require_equals = true, value_parser = crate::usage::go_bool)]
        interactive: bool,
        /// Supply password from the command line flag
        #[arg(long = "new-user-password", default_value = "")]
        new_user_password: String,
        /// Create a user without password (CN based auth only)
        #[arg(long = "no-password")]
        no_password: bool,
    },
    /// Deletes a user
    Delete { args: Vec<String> },
    /// Gets detailed information of a user
    Get {
        args: Vec<String>,
        /// Show permissions of roles granted to the user
        #[arg(long)]
        detail: bool,
    },
    /// Lists all users
    List { args: Vec<String> },
    /// Changes password of user
    Passwd {
        args: Vec<String>,
        /// If true, read password from stdin instead of interactive terminal
        #[arg(long, action = clap::ArgAction::Set, default_value = "true", default_missing_value = "true", num_args = 0..=1, require_equals = true, value_parser = crate::usage::go_bool)]
        interactive: bool,
    },
    /// Grants a role to a user
    GrantRole { args: Vec<String> },
    /// Revokes a role from a user
    RevokeRole { args: Vec<String> },
}

#[derive(Subcommand, Debug)]
pub enum RoleCmd {
    /// Adds a new role
    Add { args: Vec<String> },
    /// Deletes a role
    Delete { args: Vec<String> },
    /// Gets detailed information of a role
    Get { args: Vec<String> },
    /// Lists all roles
    List { args: Vec<String> },
    /// Grants a key to a role
    GrantPermission {
        args: Vec<String>,
        /// grant a prefix permission
        #[arg(long)]
        prefix: bool,
        /// grant a permission of keys that are greater than or equal to the given key using byte compare
        #[arg(long = "from-key")]
        from_key: bool,
    },
    /// Revokes a key from a role
    RevokePermission {
        args: Vec<String>,
        /// revoke a prefix permission
        #[arg(long)]
        prefix: bool,
        /// revoke a permission of keys that are greater than or equal to the given key using byte compare
        #[arg(long = "from-key")]
        from_key: bool,
    },
}

fn bad(msg: &str) -> Failure {
    Failure::BadArgs(msg.into())
}

async fn client(cli: &Cli) -> Result<AuthClient<Conn>, Failure> {
    Ok(crate::limited!(AuthClient::new(connect_any(cli).await?)))
}

/// etcdctl prints the JSON of the response (Go's encoding of the gogo struct); simple output
/// is the command's own text; table and fields are refused once the call has succeeded.
fn emit(p: &Printer, json: impl FnOnce() -> Value, simple: impl FnOnce()) -> Result<(), Failure> {
    match p.format {
        Format::Json => {
            println!("{}", json());
            Ok(())
        }
        Format::Simple => {
            simple();
            Ok(())
        }
        _ => Err(p.unsupported()),
    }
}

fn with_header(h: &Option<ResponseHeader>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(h) = header_json(h) {
        m.insert("header".into(), h);
    }
    m
}

fn header_only(h: &Option<ResponseHeader>) -> Value {
    Value::Object(with_header(h))
}

fn strings(m: &mut Map<String, Value>, k: &str, v: &[String]) {
    if !v.is_empty() {
        m.insert(k.into(), v.to_vec().into());
    }
}

pub async fn auth(cli: &Cli, p: &Printer, t: Duration, cmd: &AuthCmd) -> Result<(), Failure> {
    match cmd {
        AuthCmd::Enable { args } => {
            if !args.is_empty() {
                return Err(bad("auth enable command does not accept any arguments"));
            }
            let mut c = client(cli).await?;
            // etcdctl creates the root role and grants it to root when that is all that is
            // missing.
            loop {
                match call(t, c.auth_enable(AuthEnableRequest {})).await {
                    Ok(_) => break,
                    Err(Failure::Grpc(s))
                        if s.message() == "etcdserver: root user does not have root role" =>
                    {
                        crate::retry_warning(cli, &s);
                        call(
                            t,
                            c.role_add(AuthRoleAddRequest {
                                name: "root".into(),
                            }),
                        )
                        .await?;
                        let g = AuthUserGrantRoleRequest {
                            user: "root".into(),
                            role: "root".into(),
                        };
                        call(t, c.user_grant_role(g)).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            println!("Authentication Enabled");
            Ok(())
        }
        AuthCmd::Disable { args } => {
            if !args.is_empty() {
                return Err(bad("auth disable command does not accept any arguments"));
            }
            call(t, client(cli).await?.auth_disable(AuthDisableRequest {})).await?;
            println!("Authentication Disabled");
            Ok(())
        }
        AuthCmd::Status { args } => {
            if !args.is_empty() {
                return Err(bad("auth status command does not accept any arguments"));
            }
            let r = call(t, client(cli).await?.auth_status(AuthStatusRequest {}))
                .await?
                .into_inner();
            emit(
                p,
                || {
                    let mut m = with_header(&r.header);
                    if r.enabled {
                        m.insert("enabled".into(), true.into());
                    }
                    if r.auth_revision != 0 {
                        m.insert("authRevision".into(), r.auth_revision.into());
                    }
                    Value::Object(m)
                },
                || {
                    println!("Authentication Status: {}", r.enabled);
                    println!("AuthRevision: {}", r.auth_revision);
                },
            )
        }
    }
}

/// The password a `user add` or `user passwd` reads: from stdin's first word with
/// `--interactive=false` (as Go's `fmt.Scanf("%s")`), else asked twice.
fn read_password(name: &str, interactive: bool) -> Result<String, Failure> {
    if !interactive {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        return Ok(line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string());
    }
    let first = prompt(&format!("Password of {name}: "));
    if first.is_empty() {
        return Err(bad("empty password"));
    }
    let again = prompt(&format!("Type password of {name} again for confirmation: "));
    if first != again {
        return Err(bad("given passwords are different"));
    }
    Ok(first)
}

pub async fn user(cli: &Cli, p: &Printer, t: Duration, cmd: &UserCmd) -> Result<(), Failure> {
    match cmd {
        UserCmd::Add {
            args,
            interactive,
            new_user_password,
            no_password,
        } => {
            let [arg] = args.as_slice() else {
                return Err(bad("user add command requires user name as its argument"));
            };
            let (name, password) = if *no_password {
                (arg.clone(), String::new())
            } else if !new_user_password.is_empty() {
                (arg.clone(), new_user_password.clone())
            } else {
                match arg.split_once(':') {
                    Some(("", _)) => return Err(bad("empty user name is not allowed")),
                    Some((u, pw)) => (u.to_string(), pw.to_string()),
                    None => (arg.clone(), read_password(arg, *interactive)?),
                }
            };
            let req = AuthUserAddRequest {
                name: name.clone(),
                password,
                options: Some(UserAddOptions {
                    no_password: *no_password,
                }),
                ..Default::default()
            };
            let r = call(t, client(cli).await?.user_add(req))
                .await?
                .into_inner();
            emit(
                p,
                || header_only(&r.header),
                || println!("User {name} created"),
            )
        }
        UserCmd::Delete { args } => {
            let [name] = args.as_slice() else {
                return Err(bad(
                    "user delete command requires user name as its argument",
                ));
            };
            let req = AuthUserDeleteRequest { name: name.clone() };
            let r = call(t, client(cli).await?.user_delete(req))
                .await?
                .into_inner();
            emit(
                p,
                || header_only(&r.header),
                || println!("User {name} deleted"),
            )
        }
        UserCmd::Get { args, detail } => {
            let [name] = args.as_slice() else {
                return Err(bad("user get command requires user name as its argument"));
            };
            let mut c = client(cli).await?;
            let req = AuthUserGetRequest { name: name.clone() };
            let r = call(t, c.user_get(req)).await?.into_inner();
            if *detail {
                println!("User: {name}");
                for role in &r.roles {
                    println!();
                    let req = AuthRoleGetRequest { role: role.clone() };
                    let rr = call(t, c.role_get(req)).await?.into_inner();
                    print_role(p, role, &rr)?;
                }
                return Ok(());
            }
            emit(
                p,
                || {
                    let mut m = with_header(&r.header);
                    strings(&mut m, "roles", &r.roles);
                    Value::Object(m)
                },
                || {
                    println!("User: {name}");
                    let roles: String = r.roles.iter().map(|x| format!(" {x}")).collect();
                    println!("Roles:{roles}");
                },
            )
        }
        UserCmd::List { args } => {
            if !args.is_empty() {
                return Err(bad("user list command requires no arguments"));
            }
            let r = call(t, client(cli).await?.user_list(AuthUserListRequest {}))
                .await?
                .into_inner();
            emit(
                p,
                || {
                    let mut m = with_header(&r.header);
                    strings(&mut m, "users", &r.users);
                    Value::Object(m)
                },
                || r.users.iter().for_each(|u| println!("{u}")),
            )
        }
        UserCmd::Passwd { args, interactive } => {
            let [name] = args.as_slice() else {
                return Err(bad(
                    "user passwd command requires user name as its argument",
                ));
            };
            let password = read_password(name, *interactive)?;
            let req = AuthUserChangePasswordRequest {
                name: name.clone(),
                password,
                ..Default::default()
            };
            let r = call(t, client(cli).await?.user_change_password(req))
                .await?
                .into_inner();
            emit(
                p,
                || header_only(&r.header),
                || println!("Password updated"),
            )
        }
        UserCmd::GrantRole { args } => {
            let [user, role] = args.as_slice() else {
                return Err(bad(
                    "user grant command requires user name and role name as its argument",
                ));
            };
            let req = AuthUserGrantRoleRequest {
                user: user.clone(),
                role: role.clone(),
            };
            let r = call(t, client(cli).await?.user_grant_role(req))
                .await?
                .into_inner();
            emit(
                p,
                || header_only(&r.header),
                || println!("Role {role} is granted to user {user}"),
            )
        }
        UserCmd::RevokeRole { args } => {
            let [name, role] = args.as_slice() else {
                return Err(bad(
                    "user revoke-role requires user name and role name as its argument",
                ));
            };
            let req = AuthUserRevokeRoleRequest {
                name: name.clone(),
                role: role.clone(),
            };
            let r = call(t, client(cli).await?.user_revoke_role(req))
                .await?
                .into_inner();
            emit(
                p,
                || header_only(&r.header),
                || println!("Role {role} is revoked from user {name}"),
            )
        }
    }
}

/// The range end `--prefix`/`--from-key` or an explicit end key give a permission.
fn perm_range_end(args: &[String], prefix: bool, from_key: bool) -> Result<Vec<u8>, Failure> {
    match args {
        [key] => match (prefix, from_key) {
            (true, true) => Err(bad("--from-key and --prefix flags are mutually exclusive")),
            (true, false) => Ok(prefix_end(key.as_bytes())),
            (false, true) => Ok(vec![0]),
            (false, false) => Ok(vec![]),
        },
        [_, end, ..] => {
            if prefix {
                return Err(bad("unexpected endkey argument with --prefix flag"));
            }
            if from_key {
                return Err(bad("unexpected endkey argument with --from-key flag"));
            }
            Ok(end.as_bytes().to_vec())
        }
        [] => Ok(vec![]),
    }
}

fn b64(b: &[u8]) -> Value {
    base64::engine::general_purpose::STANDARD.encode(b).into()
}

fn perm_json(x: &Permission) -> Value {
    let mut m = Map::new();
    if x.perm_type != 0 {
        m.insert("permType".into(), x.perm_type.into());
    }
    if !x.key.is_empty() {
        m.insert("key".into(), b64(&x.key));
    }
    if !x.range_end.is_empty() {
        m.insert("range_end".into(), b64(&x.range_end));
    }
    Value::Object(m)
}

/// A role's permissions as etcdctl prints them: reads, then writes, each range as
/// `[key, end)`, `[key, <open ended>` or the single key, noting prefixes.
fn print_role(p: &Printer, name: &str, r: &AuthRoleGetResponse) -> Result<(), Failure> {
    emit(
        p,
        || {
            let mut m = with_header(&r.header);
            if !r.perm.is_empty() {
                m.insert("perm".into(), r.perm.iter().map(perm_json).collect());
            }
            Value::Object(m)
        },
        || {
            println!("Role {name}");
            let line = |x: &Permission| {
                let (key, end) = (p.bytes(&x.key), p.bytes(&x.range_end));
                if x.range_end.is_empty() {
                    return format!("\t{key}");
                }
                let mut s = if x.range_end == [0] {
                    format!("\t[{key}, <open ended>")
                } else {
                    format!("\t[{key}, {end})")
                };
                if prefix_end(&x.key) == x.range_end {
                    s.push_str(&format!(" (prefix {key})"));
                }
                s
            };
            for (title, kind) in [("KV Read:", PermType::Read), ("KV Write:", PermType::Write)] {
                println!("{title}");
                for x in &r.perm {
                    let t = PermType::try_from(x.perm_type).ok();
                    if t == Some(kind) || t == Some(PermType::Readwrite) {
                        println!("{}", line(x));
                    }
                }
            }
        },
    )
}

pub async fn role(cli: &Cli, p: &Printer, t: Duration, cmd: &RoleCmd) -> Result<(), Failure> {
    match cmd {
        RoleCmd::Add { args } => {
            let [name] = args.as_slice() else {
                return Err(bad("role add command requires role name as its argument"));
            };
            let req = AuthRoleAddRequest { name: name.clone() };
            let r = call(t, client(cli).await?.role_add(req))
                .await?
                .into_inner();
            emit(
                p,
                || header_only(&r.header),
                || println!("Role {name} created"),
            )
        }
        RoleCmd::Delete { args } => {
            let [name] = args.as_slice() else {
                return Err(bad(
                    "role delete command requires role name as its argument",
                ));
            };
            let req = AuthRoleDeleteRequest { role: name.clone() };
            let r = call(t, client(cli).await?.role_delete(req))
                .await?
                .into_inner();
            emit(
                p,
                || header_only(&r.header),
                || println!("Role {name} deleted"),
            )
        }
        RoleCmd::Get { args } => {
            let [name] = args.as_slice() else {
                return Err(bad("role get command requires role name as its argument"));
            };
            let req = AuthRoleGetRequest { role: name.clone() };
            let r = call(t, client(cli).await?.role_get(req))
                .await?
                .into_inner();
            print_role(p, name, &r)
        }
        RoleCmd::List { args } => {
            if !args.is_empty() {
                return Err(bad("role list command requires no arguments"));
            }
            let r = call(t, client(cli).await?.role_list(AuthRoleListRequest {}))
                .await?
                .into_inner();
            emit(
                p,
                || {
                    let mut m = with_header(&r.header);
                    strings(&mut m, "roles", &r.roles);
                    Value::Object(m)
                },
                || r.roles.iter().for_each(|x| println!("{x}")),
            )
        }
        RoleCmd::GrantPermission {
            args,
            prefix,
            from_key,
        } => {
            if args.len() < 3 {
                return Err(bad("role grant command requires role name, permission type, and key [endkey] as its argument"));
            }
            let perm_type = match args[1].to_uppercase().as_str() {
                "READ" => PermType::Read,
                "WRITE" => PermType::Write,
                "READWRITE" => PermType::Readwrite,
                _ => return Err(bad(&format!("invalid permission type: {}", args[1]))),
            };
            let range_end = perm_range_end(&args[2..], *prefix, *from_key)?;
            let req = AuthRoleGrantPermissionRequest {
                name: args[0].clone(),
                perm: Some(Permission {
                    perm_type: perm_type as i32,
                    key: args[2].as_bytes().to_vec(),
                    range_end,
                }),
            };
            let r = call(t, client(cli).await?.role_grant_permission(req))
                .await?
                .into_inner();
            emit(
                p,
                || header_only(&r.header),
                || println!("Role {} updated", args[0]),
            )
        }
        RoleCmd::RevokePermission {
            args,
            prefix,
            from_key,
        } => {
            if args.len() < 2 {
                return Err(bad("role revoke-permission command requires role name and key [endkey] as its argument"));
            }
            let range_end = perm_range_end(&args[1..], *prefix, *from_key)?;
            let req = AuthRoleRevokePermissionRequest {
                role: args[0].clone(),
                key: args[1].as_bytes().to_vec(),
                range_end: range_end.clone(),
            };
            let r = call(t, client(cli).await?.role_revoke_permission(req))
                .await?
                .into_inner();
            let (role, key) = (&args[0], &args[1]);
            emit(
                p,
                || header_only(&r.header),
                || {
                    let end = String::from_utf8_lossy(&range_end);
                    if range_end.is_empty() {
                        println!("Permission of key {key} is revoked from role {role}");
                    } else if range_end == [0] {
                        println!(
                            "Permission of range [{key}, <open ended> is revoked from role {role}"
                        );
                    } else {
                        println!("Permission of range [{key}, {end}) is revoked from role {role}");
                    }
                },
            )
        }
    }
}
