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
        .route("/version", get(version))
        .with_state(server)
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
        match s.linearizable_barrier().await {
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
