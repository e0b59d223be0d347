//! Plain HTTP endpoints served on the client port beside gRPC, as etcd does.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::Router;
use ballast_api::etcdserverpb::AlarmType;
use serde_json::json;

use crate::server::EtcdServer;
use crate::version::{BALLAST_VERSION, ETCD_API_VERSION};

pub fn router(server: Arc<EtcdServer>) -> Router {
    health_routes(Router::new())
        .route("/version", get(version))
        .route("/metrics", get(crate::metrics::metrics))
        .with_state(server)
}

/// What `--listen-metrics-urls` serve: metrics and the health endpoints, nothing else.
pub fn metrics_router(server: Arc<EtcdServer>) -> Router {
    health_routes(Router::new())
        .route("/metrics", get(crate::metrics::metrics))
        .with_state(server)
}

/// `/health`, `/livez`, `/readyz` and each check's own path (`/readyz/non_learner`), as etcd
/// 3.7 registers them; anything but GET gets etcd's 405.
fn health_routes(r: Router<Arc<EtcdServer>>) -> Router<Arc<EtcdServer>> {
    let mut r = r.route("/health", any(health));
    for (kind, names) in [("livez", &LIVEZ[..]), ("readyz", &READYZ[..])] {
        r = r.route(
            &format!("/{kind}"),
            any(move |s, q, m| registry(s, q, m, kind, names, true)),
        );
        for name in names {
            let one = std::slice::from_ref(name);
            r = r.route(
                &format!("/{kind}/{name}"),
                any(move |s, q, m| registry(s, q, m, kind, one, false)),
            );
        }
    }
    r
}

/// etcd's checks, in a fixed order (etcd's own order is its map's, different each time).
const LIVEZ: [&str; 1] = ["serializable_read"];
const READYZ: [&str; 4] = [
    "data_corruption",
    "serializable_read",
    "linearizable_read",
    "non_learner",
];

type Query = axum::extract::RawQuery;

/// The values of a query parameter, as Go's `URL.Query()[name]` reads them.
fn query_values(q: &Query, name: &str) -> Vec<String> {
    let Some(q) = q.0.as_deref() else {
        return Vec::new();
    };
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_string())
        })
        .collect()
}

fn has_param(q: &Query, name: &str) -> bool {
    q.0.as_deref()
        .is_some_and(|q| q.split('&').any(|kv| kv.split('=').next() == Some(name)))
}

/// etcd's answer to anything but GET.
fn method_not_allowed() -> axum::response::Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [
            (header::ALLOW, "GET"),
            (header::CONTENT_TYPE, TEXT),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "Method Not Allowed\n",
    )
        .into_response()
}

const TEXT: &str = "text/plain; charset=utf-8";

/// etcd's `/livez`/`/readyz` answer: `ok` (each check's line first with `?verbose`), or, when
/// one fails, every check's line and a 503 (Go's `http.Error` adds the last newline).
fn checks(results: Vec<(&str, Result<(), String>)>, verbose: bool) -> axum::response::Response {
    let mut lines = String::new();
    for (name, r) in &results {
        match r {
            Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
            Err(e) => lines.push_str(&format!("[-]{name} failed: {e}\n")),
        }
    }
    let headers = [
        (header::CONTENT_TYPE, TEXT),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    if results.iter().any(|(_, r)| r.is_err()) {
        lines.push('\n');
        return (StatusCode::SERVICE_UNAVAILABLE, headers, lines).into_response();
    }
    let body = if verbose {
        lines + "ok\n"
    } else {
        "ok\n".into()
    };
    (StatusCode::OK, headers, body).into_response()
}

fn serializable_read(s: &EtcdServer) -> Result<(), String> {
    s.mvcc()
        .range(&ballast_api::etcdserverpb::RangeRequest {
            key: b"health".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Health checks answer within a second, as etcd's do, rather than the request timeout.
async fn quick_barrier(s: &EtcdServer) -> Result<(), String> {
    match tokio::time::timeout(HEALTH_TIMEOUT, s.linearizable_barrier()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("etcdserver: request timed out".into()),
    }
}

const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// One named check, as etcd 3.7 words its failures.
async fn run_check(s: &EtcdServer, name: &str) -> Result<(), String> {
    match name {
        "serializable_read" => serializable_read(s),
        "linearizable_read" => quick_barrier(s).await,
        "data_corruption" => {
            let corrupt = s
                .mvcc()
                .alarms()
                .iter()
                .any(|a| a.alarm == AlarmType::Corrupt as i32);
            if corrupt {
                Err("alarm activated: CORRUPT".into())
            } else {
                Ok(())
            }
        }
        "non_learner" if s.is_learner() => Err("not supported for learner".into()),
        _ => Ok(()),
    }
}

/// A `/livez` or `/readyz` path: its checks, each run and recorded for `/metrics` as etcd
/// records them; on the root path less those `?exclude=` names (names it does not have are
/// ignored, as etcd ignores them).
async fn registry(
    State(s): State<Arc<EtcdServer>>,
    q: Query,
    m: Method,
    kind: &'static str,
    names: &'static [&'static str],
    root: bool,
) -> axum::response::Response {
    if m != Method::GET {
        return method_not_allowed();
    }
    let excluded = if root {
        query_values(&q, "exclude")
    } else {
        Vec::new()
    };
    let mut results = Vec::new();
    for name in names {
        if !excluded.iter().any(|e| e == name) {
            let r = run_check(&s, name).await;
            s.counters().check_ran(kind, name, r.is_ok());
            results.push((*name, r));
        }
    }
    checks(results, has_param(&q, "verbose"))
}

/// etcd's `/health`: alarms first (`?exclude=NOSPACE` ignores one), then a leader (skipped
/// with `?serializable=true`), then a read (local with `?serializable=true`).
async fn health(State(s): State<Arc<EtcdServer>>, q: Query, m: Method) -> axum::response::Response {
    if m != Method::GET {
        return method_not_allowed();
    }
    let excluded = query_values(&q, "exclude");
    let serializable = query_values(&q, "serializable").first().map(String::as_str) == Some("true");
    let alarm = s.mvcc().alarms().iter().find_map(|a| {
        let name = AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
        (!excluded.iter().any(|e| e == name)).then(|| match a.alarm {
            x if x == AlarmType::Nospace as i32 => "ALARM NOSPACE".to_string(),
            x if x == AlarmType::Corrupt as i32 => "ALARM CORRUPT".to_string(),
            _ => "ALARM UNKNOWN".to_string(),
        })
    });
    let failure = if let Some(reason) = alarm {
        Some(reason)
    } else if !serializable && s.raft_status().leader == 0 {
        Some("RAFT NO LEADER".to_string())
    } else {
        let read = if serializable {
            serializable_read(&s)
        } else {
            quick_barrier(&s).await
        };
        read.err().map(|e| format!("RANGE ERROR:{e}"))
    };
    let counter = match failure {
        Some(_) => &s.counters().health_failures,
        None => &s.counters().health_success,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = json!({"health": if failure.is_some() { "false" } else { "true" }, "reason": failure.clone().unwrap_or_default()})
        .to_string();
    match failure {
        // Go's http.Error: text, nosniff, and a newline after the JSON.
        Some(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, TEXT),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body + "\n",
        )
            .into_response(),
        None => (StatusCode::OK, [(header::CONTENT_TYPE, TEXT)], body).into_response(),
    }
}

async fn version() -> impl IntoResponse {
    axum::Json(json!({
        "etcdserver": ETCD_API_VERSION,
        "etcdcluster": ETCD_API_VERSION,
        "storage": ETCD_API_VERSION,
        "ballast": BALLAST_VERSION,
    }))
}
