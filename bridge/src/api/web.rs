//! The loopback listener for web consoles (`keybridge serve --http
//! 127.0.0.1:PORT --allow-origin https://console.example`): the same
//! signing interface as the Unix socket — status, keys, unlock, sign (one
//! device, or a batch streamed) — for
//! a page in a browser, behind four gates, in this order:
//!
//! 1. **Host**: `127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT`, nothing
//!    else (a DNS-rebinding page reaches the port under its own host name).
//!    Refused: `bad_host`, no CORS headers.
//! 2. **Origin**: exactly one of the allowed origins. A request without
//!    one (curl, another program) or with another is refused
//!    (`origin_not_allowed`, no CORS headers: the page cannot even read
//!    why).
//! 3. **Preflight** (`OPTIONS`): answered for allowed origins only —
//!    `Access-Control-Allow-Origin` with the exact origin, methods `GET,
//!    POST`, headers `authorization, content-type`, and
//!    `Access-Control-Allow-Private-Network: true` when asked (older
//!    Chrome's Private Network Access; Chrome 142's Local Network Access
//!    asks the user instead, and CORS stays).
//! 4. **Pairing**: `Authorization: Bearer kbp_…` issued to this very
//!    origin ([`crate::pairing`]): none or unknown → `not_paired` (401),
//!    another origin's → `token_other_origin` (403). These answers carry
//!    CORS headers, so the console can tell the agent what to do.
//!
//! Every answer to an allowed origin has `Access-Control-Allow-Origin:
//! ORIGIN`, `Vary: Origin` and `Cache-Control: no-store`; never
//! `Access-Control-Allow-Credentials` (no cookies are used). Key creation,
//! key-log events, pairing itself and the audit stay on the Unix socket.

use super::problem::ApiError;
use super::{MAX_BODY, Shared, batch, body_in_time, keys, sign, status};
use crate::pairing::{Pairings, Refusal};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

/// The listener's configuration.
pub struct Web {
    /// The port it listens on (for the `Host` check).
    pub port: u16,
    /// Allowed origins, normalized ([`crate::pairing::check_origin`]).
    pub origins: Vec<String>,
    /// The pairings.
    pub pairings: Arc<Pairings>,
}

/// The loopback listener's router.
pub fn router(state: Shared, web: Arc<Web>) -> Router {
    Router::new()
        .route("/v1/status", get(status::status))
        .route("/v1/keys", get(keys::list))
        .route("/v1/keys/{kid}/unlock", post(keys::unlock))
        .route("/v1/sign", post(sign::sign))
        .route("/v1/sign/batch", post(batch::sign_batch))
        .fallback(|| async {
            ApiError::NotFound(
                "not on the loopback listener (status, keys, unlock and sign are)".into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), body_in_time))
        .layer(middleware::from_fn_with_state(web, gate))
        .with_state(state)
}

/// The four gates (module documentation), and the CORS headers after.
async fn gate(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = text(headers, header::HOST).unwrap_or_default();
    if !loopback_host(&host, web.port) {
        tracing::warn!(host = %host, "refused a request for another host (DNS rebinding?)");
        return ApiError::BadHost(host).into_response();
    }
    let Some(origin) = text(headers, header::ORIGIN).filter(|o| web.origins.contains(o)) else {
        let origin = text(headers, header::ORIGIN);
        tracing::warn!(origin = ?origin, "refused a request from an origin that is not allowed");
        return ApiError::OriginNotAllowed(match origin {
            None => "no Origin header: the loopback listener serves allowed web consoles only (use the Unix socket)".into(),
            Some(o) => format!("origin {o:?} is not allowed: keybridge serve --allow-origin {o}"),
        })
        .into_response();
    };
    let private_network = headers
        .get("access-control-request-private-network")
        .is_some_and(|v| v == "true");
    if request.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert("access-control-max-age", HeaderValue::from_static("600"));
        if private_network {
            h.insert(
                "access-control-allow-private-network",
                HeaderValue::from_static("true"),
            );
        }
        return with_cors(r, &origin);
    }
    let token = text(request.headers(), header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
    let response = match web.pairings.check(&origin, token.as_deref()) {
        Ok(()) => next.run(request).await,
        Err(Refusal::Missing) => ApiError::NotPaired(format!(
            "this console is not paired with keybridge: run `keybridge pair --origin {origin}` and give it the token"
        ))
        .into_response(),
        Err(Refusal::Unknown) => ApiError::NotPaired(format!(
            "keybridge knows no such pairing token (revoked?): run `keybridge pair --origin {origin}` again"
        ))
        .into_response(),
        Err(Refusal::OtherOrigin) => {
            tracing::warn!(%origin, "refused a pairing token issued to another origin");
            ApiError::TokenOtherOrigin(origin.clone()).into_response()
        }
    };
    with_cors(response, &origin)
}

/// A header as text, if it is one.
fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Whether `host` (a `Host` header) names this listener on loopback.
fn loopback_host(host: &str, port: u16) -> bool {
    let host = host.to_ascii_lowercase();
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|name| host == format!("{name}:{port}"))
}

fn with_cors(mut r: Response, origin: &str) -> Response {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_loopback_names_of_the_port_are_this_host() {
        for ok in [
            "127.0.0.1:8787",
            "localhost:8787",
            "LOCALHOST:8787",
            "[::1]:8787",
        ] {
            assert!(loopback_host(ok, 8787), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:8788",
            "evil.example:8787",
            "127.0.0.1.evil.example:8787",
            "0.0.0.0:8787",
            "",
        ] {
            assert!(!loopback_host(bad, 8787), "{bad}");
        }
    }
}
