//! `GET /v1/status`: the daemon, its policy and its keys.

use super::Json;
use super::Shared;
use axum::extract::State;
use serde_json::{Value, json};

/// `GET /v1/status`
pub async fn status(State(s): State<Shared>) -> Json<Value> {
    let now = s.clock.now();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "socket": s.socket.display().to_string(),
        "started": s.started,
        "now": now,
        "audit_log": s.audit.path().display().to_string(),
        "policy": s.policy,
        "keys": s.keys.all().iter().map(|e| super::keys::key_json(e, &s.clock)).collect::<Vec<_>>(),
    }))
}
