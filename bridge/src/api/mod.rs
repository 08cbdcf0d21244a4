//! The HTTP/1.1 JSON API (DESIGN.md §6): one module per route group.
//!
//! | route | module |
//! |---|---|
//! | `GET /v1/status` | [`status`] |
//! | `GET, POST /v1/keys`, `GET /v1/keys/{kid}`, `POST /v1/keys/{kid}/unlock`, `POST /v1/keys/{kid}/lock` | [`keys`] |
//! | `POST /v1/sign` | [`sign`] |
//! | `POST /v1/sign/batch` (streamed) | [`batch`] |
//! | `POST /v1/account/init` | [`account`] |
//! | `POST /v1/keys/{kid}/request`, `POST /v1/log/approve`, `…/reject`, `…/revoke`, `…/threshold` | [`log`] |
//! | `GET /v1/backends/{backend}/tokens?location=…` | [`keys`] |
//! | `GET, POST /v1/pairings`, `DELETE /v1/pairings/{id}` | [`pair`] |
//!
//! The loopback listener for web consoles serves status, keys, unlock and
//! sign behind its own gates ([`web`]).

pub mod account;
mod args;
pub mod batch;
pub mod keys;
pub mod log;
pub mod pair;
pub mod problem;
pub mod sign;
pub mod status;
pub mod web;

use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::keys::Keys;
use crate::policy::Policy;
use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use problem::ApiError;
use std::path::PathBuf;
use std::sync::Arc;

/// What every handler can reach.
pub struct AppState {
    /// The keys.
    pub keys: Arc<Keys>,
    /// The effective policy.
    pub policy: Policy,
    /// The audit log.
    pub audit: AuditLog,
    /// Time.
    pub clock: Clock,
    /// The user this daemon serves.
    pub uid: u32,
    /// Where it listens.
    pub socket: PathBuf,
    /// When it started.
    pub started: i64,
    /// Longest wait for a request's body.
    pub body_read: std::time::Duration,
    /// Longest a client may stop reading a streamed answer.
    pub stream_stall: std::time::Duration,
    /// The web consoles paired with this daemon.
    pub pairings: Arc<crate::pairing::Pairings>,
}

/// Largest request body (a sign request for a batch of devices is the
/// largest there is), but for the key-log routes.
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// Largest body of a `/v1/log/…` route, which carries a whole key log in
/// base64 (a device reads logs of up to 16 MiB).
pub const MAX_LOG_BODY: usize = 24 * 1024 * 1024;

/// Shared state.
pub type Shared = Arc<AppState>;

/// The connecting process's uid, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy)]
pub struct PeerUid(pub Option<u32>);

/// Refuses any peer that is not the daemon's own user (the socket is 0600,
/// but root or a leaked descriptor could still connect).
async fn same_user_only(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerUid>,
    request: Request,
    next: Next,
) -> Response {
    if peer.0 != Some(state.uid) {
        tracing::warn!(peer_uid = ?peer.0, "refused a connection from another user");
        return ApiError::Forbidden.into_response();
    }
    next.run(request).await
}

/// Reads the whole body before the handler runs, within the body deadline
/// and the size limit: a client that sends headers and then trickles (or
/// never sends) its body is cut off instead of holding a connection — and
/// the daemon's shutdown — forever. The streamed batch route reads its
/// body itself, under limits of its own ([`batch`]).
async fn body_in_time(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/v1/sign/batch" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let limit = if parts.uri.path().starts_with("/v1/log/") {
        MAX_LOG_BODY
    } else {
        MAX_BODY
    };
    match tokio::time::timeout(state.body_read, axum::body::to_bytes(body, limit)).await {
        Err(_) => ApiError::RequestTimeout.into_response(),
        Ok(Err(_)) => ApiError::BadRequest(format!(
            "the request body is unreadable or larger than {limit} bytes"
        ))
        .into_response(),
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
    }
}

/// The router.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/status", get(status::status))
        .route("/v1/keys", get(keys::list).post(keys::create))
        .route("/v1/keys/{kid}", get(keys::show))
        .route("/v1/keys/{kid}/unlock", post(keys::unlock))
        .route("/v1/keys/{kid}/lock", post(keys::lock))
        .route("/v1/keys/{kid}/request", post(log::request))
        .route("/v1/log/approve", post(log::approve))
        .route("/v1/log/reject", post(log::reject))
        .route("/v1/log/revoke", post(log::revoke))
        .route("/v1/log/threshold", post(log::threshold))
        .route("/v1/sign", post(sign::sign))
        .route("/v1/sign/batch", post(batch::sign_batch))
        .route("/v1/account/init", post(account::init))
        .route("/v1/backends/{backend}/tokens", get(keys::tokens))
        .route("/v1/pairings", get(pair::list).post(pair::pair))
        .route("/v1/pairings/{which}", axum::routing::delete(pair::revoke))
        .fallback(|| async { ApiError::BadRequest("no such route".into()) })
        // A route asked with another method: a problem too, not axum's
        // empty 405.
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::MethodNotAllowed(method.to_string())
        })
        // `body_in_time` enforces each route's limit; axum's own 2 MB
        // default would cut the key-log routes short.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_LOG_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), body_in_time))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            same_user_only,
        ))
        .with_state(state)
}

/// JSON body extraction whose failures are `bad_request` problems.
pub struct Json<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
