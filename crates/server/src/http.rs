//! Plain HTTP endpoints served on the client port beside gRPC, as etcd does.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use ballast_api::etcdserverpb::AlarmType;
use serde_json::json;

use crate::server::EtcdServer;
use crate::version::{BALLAST_VERSION, ETCD_API_VERSION};

pub fn router(server: Arc<EtcdServer>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(crate::metrics::metrics))
        .with_state(server)
}

/// What `--listen-metrics-urls` serve: metrics and the health endpoints, nothing else.
pub fn metrics_router(server: Arc<EtcdServer>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::metrics))
        .with_state(server)
}

/// etcd's `/livez`/`/readyz` answer: `ok`, or each check's outcome and a 503.
fn checks(
    kind: &str,
    results: Vec<(&str, Result<(), String>)>,
    verbose: bool,
) -> (StatusCode, String) {
    let failed = results.iter().any(|(_, r)| r.is_err());
    let mut body = String::new();
    if verbose || failed {
        for (name, r) in &results {
            match r {
                Ok(()) => body.push_str(&format!("[+]{name} ok\n")),
                Err(e) => body.push_str(&format!("[-]{name} failed: {e}\n")),
            }
        }
    }
    if failed {
        body.push_str(&format!("{kind} check failed\n"));
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else {
        body.push_str("ok\n");
        (StatusCode::OK, body)
    }
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

/// Alive: the process answers and its store can be read locally.
async fn livez(State(s): State<Arc<EtcdServer>>, q: axum::extract::RawQuery) -> impl IntoResponse {
    let verbose = q.0.is_some_and(|q| q.contains("verbose"));
    checks(
        "livez",
        vec![("serializable_read", serializable_read(&s))],
        verbose,
    )
}

/// Ready: no corruption alarm, local reads work, and a linearizable read completes.
async fn readyz(State(s): State<Arc<EtcdServer>>, q: axum::extract::RawQuery) -> impl IntoResponse {
    let verbose = q.0.is_some_and(|q| q.contains("verbose"));
    let corrupt = s
        .mvcc()
        .alarms()
        .iter()
        .any(|a| a.alarm == AlarmType::Corrupt as i32);
    let results = vec![
        (
            "data_corruption",
            if corrupt {
                Err("alarm activated: CORRUPT".to_string())
            } else {
                Ok(())
            },
        ),
        ("serializable_read", serializable_read(&s)),
        ("linearizable_read", quick_barrier(&s).await),
    ];
    checks("readyz", results, verbose)
}

async fn health(State(s): State<Arc<EtcdServer>>) -> impl IntoResponse {
    let alarm = s.mvcc().alarms().first().map(|a| {
        let name = AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
        format!("ALARM {name}")
    });
    let (code, healthy, reason) = if let Some(reason) = alarm {
        (StatusCode::SERVICE_UNAVAILABLE, "false", reason)
    } else if s.raft_status().leader == 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "false",
            "RAFT NO LEADER".into(),
        )
    } else {
        match quick_barrier(&s).await {
            Ok(()) => (StatusCode::OK, "true", String::new()),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "false",
                "QGET ERROR".into(),
            ),
        }
    };
    (
        code,
        axum::Json(json!({"health": healthy, "reason": reason})),
    )
}

async fn version() -> impl IntoResponse {
    axum::Json(json!({
        "etcdserver": ETCD_API_VERSION,
        "etcdcluster": ETCD_API_VERSION,
        "storage": ETCD_API_VERSION,
        "ballast": BALLAST_VERSION,
    }))
}
