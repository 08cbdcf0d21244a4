//! `POST /v1/pairings`, `GET /v1/pairings`, `DELETE /v1/pairings/{id}`:
//! web consoles paired with this daemon ([`crate::pairing`]). On the Unix
//! socket only: a console cannot pair itself.

use super::problem::ApiError;
use super::{Json, Shared};
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

/// `POST /v1/pairings`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRequest {
    /// The console's origin (`https://console.example`).
    pub origin: String,
}

/// A pairing as the API shows it (never the token's hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingView {
    /// Its id.
    pub id: String,
    /// The console's origin.
    pub origin: String,
    /// When it was issued.
    pub created: i64,
    /// The token: only in the answer that issues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn view(p: &crate::pairing::Pairing) -> PairingView {
    PairingView {
        id: p.id.clone(),
        origin: p.origin.clone(),
        created: p.created,
        token: None,
    }
}

/// `POST /v1/pairings`: a token for `origin`, shown once.
pub async fn pair(
    State(s): State<Shared>,
    Json(req): Json<PairRequest>,
) -> Result<Json<PairingView>, ApiError> {
    let (p, token) = s
        .pairings
        .pair(&req.origin, s.clock.now())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    tracing::info!(id = %p.id, origin = %p.origin, "console paired");
    let mut v = view(&p);
    v.token = Some(token);
    Ok(Json(v))
}

/// `GET /v1/pairings`
pub async fn list(State(s): State<Shared>) -> Json<Vec<PairingView>> {
    Json(s.pairings.list().iter().map(view).collect())
}

/// `DELETE /v1/pairings/{id_or_origin}`
pub async fn revoke(
    State(s): State<Shared>,
    Path(which): Path<String>,
) -> Result<Json<Vec<PairingView>>, ApiError> {
    let gone = s
        .pairings
        .revoke(&which)
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    for p in &gone {
        tracing::info!(id = %p.id, origin = %p.origin, "console pairing revoked");
    }
    Ok(Json(gone.iter().map(view).collect()))
}
