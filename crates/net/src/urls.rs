//! Member URLs and `--initial-cluster` as etcd reads them. The server's flags and
//! `snapshot restore` both resolve through here, so both refuse the same input with the same
//! words.

/// Why a flag's value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("invalid value {value:?} for {flag}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    /// A message etcd prints word for word.
    #[error("{0}")]
    Etcd(String),
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> FlagError {
    FlagError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// URLs in sorted order: how etcd compares a member's URL sets.
pub fn sorted(urls: &[String]) -> Vec<String> {
    let mut v = urls.to_vec();
    v.sort();
    v
}

/// A `unix://` or `unixs://` URL's socket path (etcd's host and path joined, so
/// `unix://localhost:2379` is the file `localhost:2379`), and whether it carries TLS.
pub fn unix_socket(u: &str) -> Option<(&str, bool)> {
    let (path, tls) = match u.split_once("://")? {
        ("unix", rest) => (rest, false),
        ("unixs", rest) => (rest, true),
        _ => return None,
    };
    let path = path.trim_end_matches('/');
    (!path.is_empty()).then_some((path, tls))
}

/// The TLS server name of a `unixs://host:port` URL: its host, as Go's URL parser reads it;
/// an absolute socket path names no host, so the certificate must name localhost.
pub fn unix_server_name(path: &str) -> &str {
    let host = path.split('/').next().unwrap_or(path);
    match host.rsplit_once(':').map_or(host, |(h, _)| h) {
        "" => "localhost",
        h => h,
    }
}

/// Splits `scheme://host:port[/]` into host and port; etcd accepts http and https here, and
/// unix sockets (`unix://`, `unixs://`), which have no port: (path, 0).
pub fn parse_url(flag: &'static str, u: &str) -> Result<(String, u16), FlagError> {
    if let Some((path, _)) = unix_socket(u) {
        return Ok((path.to_string(), 0));
    }
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| invalid(flag, u, "URL scheme must be http or https"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| invalid(flag, u, "URL must include a port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(flag, u, "port is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid(flag, u, "URL has no host"));
    }
    Ok((host.to_string(), port))
}

/// A comma-separated URL list; at least one, each well formed.
pub fn split_urls(flag: &'static str, s: &str) -> Result<Vec<String>, FlagError> {
    let urls: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect();
    if urls.is_empty() {
        return Err(invalid(flag, s, "no URL given"));
    }
    for u in &urls {
        parse_url(flag, u)?;
    }
    Ok(urls)
}

/// `name=url,name=url,...` into members in order of first mention, each with its URLs.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, FlagError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| invalid("--initial-cluster", s, format!("{part:?} is not name=url")))?;
        parse_url("--initial-cluster", url)?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if out.is_empty() {
        return Err(invalid("--initial-cluster", s, "no members given"));
    }
    Ok(out)
}

/// etcd's check that this member appears in the initial cluster with exactly the peer URLs it
/// advertises, in etcd's own words (which etcd and etcdctl's restore both print).
pub fn check_local_member(
    name: &str,
    initial_cluster: &[(String, Vec<String>)],
    advertise_peer_urls: &[String],
) -> Result<(), FlagError> {
    let Some((_, urls)) = initial_cluster.iter().find(|(n, _)| n == name) else {
        return Err(FlagError::Etcd(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        )));
    };
    let (a, b) = (sorted(urls), sorted(advertise_peer_urls));
    if a != b {
        return Err(FlagError::Etcd(format!(
            "--initial-cluster has {name}={} but missing from \
             --initial-advertise-peer-urls={} (resolved urls: {:?} != {:?})",
            a.join(","),
            b.join(","),
            b.join(","),
            a.join(",")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_groups_urls_by_name() {
        let c = parse_initial_cluster("a=http://h:1, b=https://[::1]:2,a=http://h:3").unwrap();
        assert_eq!(
            c,
            vec![
                (
                    "a".to_string(),
                    vec!["http://h:1".to_string(), "http://h:3".into()]
                ),
                ("b".to_string(), vec!["https://[::1]:2".to_string()]),
            ]
        );
        assert!(parse_initial_cluster("").is_err());
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=ftp://x:1").is_err());
        assert!(parse_initial_cluster("a=unix://x:1").is_ok());
    }

    #[test]
    fn the_local_member_must_match_its_advertised_urls() {
        let c = parse_initial_cluster("a=http://h:1").unwrap();
        assert_eq!(check_local_member("a", &c, &["http://h:1".into()]), Ok(()));
        let e = check_local_member("b", &c, &["http://h:1".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "couldn't find local name \"b\" in the initial cluster configuration"
        );
        assert!(check_local_member("a", &c, &["http://h:2".into()]).is_err());
    }

    #[test]
    fn urls_need_a_scheme_host_and_port() {
        assert_eq!(parse_url("--x", "http://h:80/"), Ok(("h".into(), 80)));
        assert_eq!(parse_url("--x", "https://[::1]:2"), Ok(("::1".into(), 2)));
        assert_eq!(
            parse_url("--x", "unix://localhost:2379"),
            Ok(("localhost:2379".into(), 0))
        );
        assert_eq!(
            super::unix_socket("unixs:///run/etcd.sock"),
            Some(("/run/etcd.sock", true))
        );
        assert_eq!(super::unix_server_name("localhost:2379"), "localhost");
        assert_eq!(super::unix_server_name("/run/etcd.sock"), "localhost");
        assert_eq!(super::unix_socket("unix://"), None);
        for bad in ["h:80", "http://h", "http://:80", "http://h:port"] {
            assert!(parse_url("--x", bad).is_err(), "{bad}");
        }
        assert!(split_urls("--x", " , ").is_err());
    }
}
