//! `GET /v1/status`: the daemon, its policy and its keys.

use super::Json;
use super::Shared;
use crate::wire::Status;
use axum::extract::State;

/// `GET /v1/status`
pub async fn status(State(s): State<Shared>) -> Json<Status> {
    Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        socket: s.socket.display().to_string(),
        started: s.started,
        now: s.clock.now(),
        audit_log: s.audit.path().display().to_string(),
        touch_pending: s.keys.all().iter().any(|e| e.touch_pending()),
        policy: serde_json::to_value(&s.policy).expect("the policy serializes"),
        keys: s
            .keys
            .all()
            .iter()
            .map(|e| super::keys::key_view(e, &s.clock, &s.policy))
            .collect(),
    })
}
